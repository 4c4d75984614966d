#include "mphttp/connection_pool.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <cerrno>

namespace fleety::mphttp::detail {

namespace {

/// Whether an idle connection is still open and has nothing to read: a FIN (the server
/// closed it while idle) or bytes nobody asked for make it useless.
bool open_and_quiet(upstream& up) {
  if (!up.is_open()) return false;
  char byte = 0;
  const auto n = ::recv(up.stream.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

class pool_error_category final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "fleety.pool"; }
  std::string message(int) const override {
    return "connection limit for this host on this path reached";
  }
};

}  // namespace

boost::system::error_code connection_limit_error() {
  static const pool_error_category category;
  return {1, category};
}

pool_limits pool_limits_of(const core::config& config) {
  return {config.proxy.connections_per_host, config.proxy.idle_connections,
          config.proxy.idle_connection_timeout};
}

pool_key pool_key_of(const path_runtime& path, const proxy_target& target, bool to_destination,
                     const std::optional<net::socket_user>& user) {
  pool_key key{path.config.name, target.host, target.port, {}, user ? user->uid : 0};
  if (to_destination && target.destination) key.destination = target.destination->to_string();
  return key;
}

std::unique_ptr<upstream> connection_pool::take(const pool_key& key, clock::time_point now) {
  auto it = idle_.find(key);
  if (it == idle_.end()) return nullptr;
  auto& list = it->second;
  std::unique_ptr<upstream> found;
  while (!list.empty() && !found) {
    auto entry = std::move(list.back());
    list.pop_back();
    --idle_total_;
    if (still_usable(key, entry, now)) {
      found = std::move(entry.up);
    } else {
      entry.up->reset();
    }
  }
  if (list.empty()) idle_.erase(it);
  if (found) {
    found->reused = true;
    ++reused_;
  }
  return found;
}

bool connection_pool::still_usable(const pool_key& key, idle_connection& entry,
                                   clock::time_point now) const {
  if (now - entry.parked > limits_.idle_timeout) return false;
  if (open_and_quiet(*entry.up)) return true;
  spdlog::debug("warm connection to {} on {} was closed by the server while idle: not reused",
                key.host, key.path);
  return false;
}

void connection_pool::park(const pool_key& key, upstream& up, clock::time_point now) {
  if (limits_.idle_connections == 0 || !up.reusable_after(nullptr)) {
    up.reset();
    return;
  }
  if (idle_total_ >= limits_.idle_connections) close_oldest();
  auto kept = std::make_unique<upstream>(up.stream.get_executor());
  kept->adopt(up);
  idle_[key].push_back({std::move(kept), now});
  ++idle_total_;
  ++parked_;
}

void connection_pool::close_oldest() {
  auto oldest = idle_.end();
  for (auto it = idle_.begin(); it != idle_.end(); ++it) {
    if (oldest == idle_.end() || it->second.front().parked < oldest->second.front().parked)
      oldest = it;
  }
  if (oldest == idle_.end()) return;
  oldest->second.front().up->reset();
  oldest->second.pop_front();
  --idle_total_;
  if (oldest->second.empty()) idle_.erase(oldest);
}

bool connection_pool::may_open(const std::string& path, const std::string& host) {
  if (open_count(path, host) < limits_.connections_per_host) return true;
  ++refused_;
  return false;
}

connection_slot connection_pool::count(const std::string& path, const std::string& host) {
  auto& counter = open_[{path, host}];
  if (!counter) counter = std::make_shared<std::size_t>(0);
  return connection_slot(counter);
}

std::size_t connection_pool::open_count(const std::string& path, const std::string& host) const {
  auto it = open_.find({path, host});
  return it == open_.end() ? 0 : *it->second;
}

void connection_pool::expire(clock::time_point now) {
  for (auto it = idle_.begin(); it != idle_.end();) {
    auto& list = it->second;
    while (!list.empty() && !still_usable(it->first, list.front(), now)) {
      list.front().up->reset();
      list.pop_front();
      --idle_total_;
    }
    // (Older ones sit at the front; a newer closed one is found when taken.)
    it = list.empty() ? idle_.erase(it) : std::next(it);
  }
  for (auto it = open_.begin(); it != open_.end();)
    it = (*it->second == 0 && it->second.use_count() == 1) ? open_.erase(it) : std::next(it);
}

void connection_pool::clear() {
  for (auto& [key, list] : idle_) {
    for (auto& entry : list) entry.up->reset();
  }
  idle_.clear();
  idle_total_ = 0;
}

pool_counts connection_pool::counts() const {
  return {idle_total_, reused_, parked_, refused_};
}

awaitable<error_code> pooled_connector::async_connect(upstream& up, path_runtime& path,
                                                      const proxy_target& target,
                                                      bool to_destination) {
  if (auto idle = take_idle_ ? pool_.take(pool_key_of(path, target, to_destination, user()),
                                          clock_type::now())
                             : nullptr) {
    up.adopt(*idle);
    co_return error_code{};
  }
  // The app's own connection to its destination is the app's to open; what fleety adds
  // on other nodes is limited.
  if (limited_ && !to_destination && !pool_.may_open(path.config.name, target.host))
    co_return connection_limit_error();
  auto ec = co_await inner_.async_connect(up, path, target, to_destination);
  if (!ec) {
    up.slot = pool_.count(path.config.name, target.host);
    up.reused = false;
  }
  co_return ec;
}

void release_to_pool(connection_pool& pool, upstream& up, const path_runtime& path,
                     const proxy_target& target, bool to_destination,
                     const std::optional<net::socket_user>& user) {
  if (up.stream.has_tls()) {
    up.reset();
    return;
  }
  pool.park(pool_key_of(path, target, to_destination, user), up, clock_type::now());
}

void pooled_connector::release(upstream& up, path_runtime& path, const proxy_target& target,
                               bool to_destination) {
  release_to_pool(pool_, up, path, target, to_destination, user());
}

}  // namespace fleety::mphttp::detail
