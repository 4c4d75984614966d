#include "dns/path_resolver.hpp"

#include <ares.h>
#include <net/if.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <list>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>

#include "net/bound_socket.hpp"

namespace fleety::dns {

namespace asio = boost::asio;

namespace {

using clock = std::chrono::steady_clock;
using resolve_result = boost::system::result<resolution>;
using resolve_signature = void(resolve_result);
using resolve_handler = asio::any_completion_handler<resolve_signature>;
using raw_result = boost::system::result<std::vector<std::uint8_t>>;
using raw_signature = void(raw_result);
using raw_handler = asio::any_completion_handler<raw_signature>;

// boost::system::error_category's destructor is protected and non-virtual by design
// (categories are never deleted through a base pointer); -Wnon-virtual-dtor cannot tell.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnon-virtual-dtor"
class dns_category final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "fleety.dns"; }

  std::string message(int ev) const override {
    switch (static_cast<errc>(ev)) {
      case errc::not_found:
        return "host not found";
      case errc::timed_out:
        return "no resolver answered before the deadline";
      case errc::server_failure:
        return "resolver failure";
      case errc::bad_name:
        return "invalid host name";
      case errc::setup_failed:
        return "resolver setup failed";
      case errc::cancelled:
        return "resolution cancelled";
    }
    return "unknown dns error";
  }
};
#pragma GCC diagnostic pop

/// c-ares status → our error. ARES_ECONNREFUSED also covers "no socket could be opened"
/// (e.g. the path's interface is gone, see on_socket_configure), which we report as a
/// server failure: no resolver of this path is usable.
errc from_ares_status(int status) {
  switch (status) {
    case ARES_ENOTFOUND:
    case ARES_ENODATA:
      return errc::not_found;
    case ARES_ETIMEOUT:
      return errc::timed_out;
    case ARES_EBADNAME:
      return errc::bad_name;
    case ARES_ECANCELLED:
    case ARES_EDESTRUCTION:
      return errc::cancelled;
    case ARES_ENOMEM:
    case ARES_ENOTINITIALIZED:
      return errc::setup_failed;
    default:  // ESERVFAIL, EREFUSED, EBADRESP, EFORMERR, ENOTIMP, ECONNREFUSED, EOF, ...
      return errc::server_failure;
  }
}

/// "[::1]" → ::1, "198.18.0.1" → 198.18.0.1; nullopt when `host` is not an address literal.
std::optional<asio::ip::address> parse_literal(std::string_view host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  boost::system::error_code ec;
  auto address = asio::ip::make_address(std::string(host), ec);
  if (ec) return std::nullopt;
  return address;
}

/// Validates a host name (RFC 1035 §2.3.4 lengths, RFC 952/1123 letters-digits-hyphen
/// plus '_', which real names use) and returns its cache key: lower case, without the
/// root dot. nullopt when the name must not be sent.
std::optional<std::string> normalise_name(std::string_view host) {
  if (!host.empty() && host.back() == '.') host.remove_suffix(1);
  if (host.empty() || host.size() > 253) return std::nullopt;
  std::string key;
  key.reserve(host.size());
  std::size_t label_bytes = 0;
  for (char c : host) {
    if (c == '.') {
      if (label_bytes == 0) return std::nullopt;  // empty label: "a..b", ".a"
      label_bytes = 0;
      key.push_back(c);
      continue;
    }
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_';
    if (!ok || ++label_bytes > 63) return std::nullopt;
    key.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c);
  }
  return key;
}

/// "198.18.0.53", "198.18.0.53:5353", "::1", "[::1]", "[::1]:53" → the canonical
/// "addr:port" / "[addr]:port" form. We parse ourselves instead of handing the user's
/// text to ares_set_servers_ports_csv: c-ares 1.18 rejects "[::1]" without a port,
/// truncates ports above 65535 and reports only ARES_EBADSTR for the whole list.
std::optional<std::string> normalise_server(std::string_view text, std::string& why) {
  std::string_view host = text;
  std::string_view port;
  bool bracketed = false;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos) {
      why = "missing ']'";
      return std::nullopt;
    }
    host = text.substr(1, close - 1);
    const auto rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') {
        why = "unexpected text after ']'";
        return std::nullopt;
      }
      port = rest.substr(1);
      if (port.empty()) {
        why = "empty port";
        return std::nullopt;
      }
    }
    bracketed = true;
  } else if (std::count(text.begin(), text.end(), ':') == 1) {  // IPv4:port
    const auto colon = text.find(':');
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (port.empty()) {
      why = "empty port";
      return std::nullopt;
    }
  }
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(std::string(host), ec);
  if (ec) {
    why = "not an IP address";
    return std::nullopt;
  }
  if (bracketed && !address.is_v6()) {
    why = "brackets are for IPv6 addresses";
    return std::nullopt;
  }
  if (address.is_v6() && address.to_v6().scope_id() != 0) {
    why = "c-ares 1.18 cannot use an IPv6 scope id";
    return std::nullopt;
  }
  unsigned long port_number = 53;
  if (!port.empty()) {
    if (port.size() > 5 ||
        !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      why = "port is not a number";
      return std::nullopt;
    }
    port_number = std::stoul(std::string(port));
    if (port_number == 0 || port_number > 65535) {
      why = "port out of range 1-65535";
      return std::nullopt;
    }
  }
  const auto address_text = address.to_string();
  return (address.is_v6() ? "[" + address_text + "]" : address_text) + ":" +
         std::to_string(port_number);
}

/// c-ares 1.18 sends attempt k (k = 0 .. tries-1) to each server in turn and waits
/// `timeout << k` for it (ares_process.c, ares__send_query), so the last answer can come
/// as late as servers * timeout * (2^tries - 1). We pick the per-attempt timeout that
/// makes this fit the whole-query deadline.
int per_try_timeout_ms(std::chrono::milliseconds whole, int tries, int servers) {
  std::int64_t rounds = 0;
  for (int k = 0; k < tries && k < 31; ++k) rounds += std::int64_t{1} << k;
  const std::int64_t divisor = rounds * std::max(servers, 1);
  const std::int64_t per_try = whole.count() / divisor;
  return static_cast<int>(std::clamp<std::int64_t>(per_try, 1, std::numeric_limits<int>::max()));
}

std::runtime_error setup_error(const std::string& what) {
  return std::runtime_error("fleety::dns::path_resolver: " + what);
}

/// Builds a resolution from c-ares' answer: IPv4 first, then IPv6, duplicates removed;
/// TTL is the smallest among the address and CNAME records.
resolve_result to_resolution(const ares_addrinfo* info) {
  if (info == nullptr) return make_error_code(errc::not_found);
  resolution out;
  std::optional<int> ttl_s;
  for (const ares_addrinfo_node* node = info->nodes; node != nullptr; node = node->ai_next) {
    asio::ip::address address;
    if (node->ai_family == AF_INET && node->ai_addrlen >= sizeof(sockaddr_in)) {
      sockaddr_in sa{};
      std::memcpy(&sa, node->ai_addr, sizeof sa);
      asio::ip::address_v4::bytes_type bytes;
      std::memcpy(bytes.data(), &sa.sin_addr, bytes.size());
      address = asio::ip::address_v4(bytes);
    } else if (node->ai_family == AF_INET6 && node->ai_addrlen >= sizeof(sockaddr_in6)) {
      sockaddr_in6 sa{};
      std::memcpy(&sa, node->ai_addr, sizeof sa);
      asio::ip::address_v6::bytes_type bytes;
      std::memcpy(bytes.data(), &sa.sin6_addr, bytes.size());
      address = asio::ip::address_v6(bytes);
    } else {
      continue;
    }
    if (std::find(out.addresses.begin(), out.addresses.end(), address) == out.addresses.end()) {
      out.addresses.push_back(address);
    }
    ttl_s = std::min(ttl_s.value_or(node->ai_ttl), node->ai_ttl);
  }
  if (out.addresses.empty()) return make_error_code(errc::not_found);
  for (const ares_addrinfo_cname* cname = info->cnames; cname != nullptr; cname = cname->next) {
    ttl_s = std::min(ttl_s.value_or(cname->ttl), cname->ttl);
  }
  std::stable_partition(out.addresses.begin(), out.addresses.end(),
                        [](const asio::ip::address& a) { return a.is_v4(); });
  // A TTL with the top bit set is read by c-ares as a negative int; RFC 2181 §8 says
  // to treat it as zero.
  out.ttl = std::chrono::seconds(std::max(ttl_s.value_or(0), 0));
  return out;
}

}  // namespace

const boost::system::error_category& error_category() {
  static const dns_category category;
  return category;
}

boost::system::error_code make_error_code(errc e) {
  return {static_cast<int>(e), error_category()};
}

// ---------------------------------------------------------------------------------------
// impl: one c-ares channel, the Asio objects that drive it, and the answer cache.
//
// Lifetime rules (all on the executor's single thread):
//  - c-ares calls on_addrinfo exactly once per ares_getaddrinfo, at the latest from
//    ares_destroy in ~impl, so a query record never outlives the impl.
//  - Asio handlers may run after the object they were started for is gone (a handler
//    already queued with success is not turned into operation_aborted by cancel()), so
//    every handler holds a weak_ptr and re-checks it.
//  - Waiters are resumed with asio::post, never from inside a c-ares call: the resumed
//    coroutine may start a query or destroy the resolver, which c-ares forbids from its
//    own callbacks.

struct path_resolver::impl {
  /// One ares_getaddrinfo call and the coroutine waiting for it.
  struct query {
    query(impl* owner_in, std::string name_in, resolve_handler handler_in,
          const asio::any_io_executor& executor)
        : owner(owner_in),
          name(std::move(name_in)),
          handler(std::move(handler_in)),
          deadline(executor) {}

    impl* owner;                   ///< not owned; outlives the query (see above)
    std::string name;              ///< normalised host name, also the cache key
    resolve_handler handler;       ///< empty once the waiter was completed or gave up
    asio::cancellation_slot slot;  ///< the waiter's slot, cleared before completing
    asio::steady_timer deadline;   ///< whole-query deadline (options::timeout)
  };

  /// One ares_send of a whole DNS message and the coroutine waiting for its reply.
  struct raw_query {
    raw_query(impl* owner_in, raw_handler handler_in, std::uint16_t id_in,
              const asio::any_io_executor& executor)
        : owner(owner_in), handler(std::move(handler_in)), id(id_in), deadline(executor) {}
    impl* owner;
    raw_handler handler;  ///< empty once completed
    std::uint16_t id;     ///< the caller's message ID, put back into the reply
    asio::steady_timer deadline;
  };

  /// Asio's view of one socket c-ares opened. Non-owning: c-ares closes the fd.
  struct socket_watcher {
    socket_watcher(impl* owner_in, ares_socket_t fd_in, const asio::any_io_executor& executor)
        : owner(owner_in), fd(fd_in), descriptor(executor) {}
    ~socket_watcher() {
      // release() deregisters the fd from epoll without closing it: c-ares closes it
      // right after telling us (ares__close_sockets).
      if (descriptor.is_open()) descriptor.release();
    }
    socket_watcher(const socket_watcher&) = delete;
    socket_watcher& operator=(const socket_watcher&) = delete;

    impl* owner;                                ///< not owned; outlives the watcher
    ares_socket_t fd;                           ///< owned by c-ares
    asio::posix::stream_descriptor descriptor;  ///< wraps fd, never closes it
    bool want_read = false;                     ///< c-ares' last wish, from on_socket_state
    bool want_write = false;
    bool read_pending = false;  ///< an async_wait(read) is outstanding
    bool write_pending = false;
  };

  /// One cached answer, in LRU order.
  struct cache_entry {
    std::string key;
    resolution value;
    clock::time_point expiry;
  };

  impl(asio::any_io_executor executor, options opts);
  ~impl();
  impl(const impl&) = delete;
  impl& operator=(const impl&) = delete;

  ares_channel make_channel(int servers);
  std::optional<resolution> cache_get(const std::string& key);
  void cache_put(const std::string& key, const resolution& value);
  void start_query(resolve_handler handler, std::string name);
  void complete(query& q, resolve_result result);
  void abandon(query& q, errc why);
  void watch(ares_socket_t fd, bool readable, bool writable);
  void arm(const std::shared_ptr<socket_watcher>& watcher);
  void on_ready(ares_socket_t fd, bool readable, bool writable);
  void update_timer();

  void start_raw_query(raw_handler handler, std::vector<std::uint8_t> message);
  void complete_raw(raw_query& q, raw_result result);

  static void on_addrinfo(void* arg, int status, int timeouts, ares_addrinfo* info);
  static void on_raw_reply(void* arg, int status, int timeouts, unsigned char* reply, int length);
  static void on_socket_state(void* data, ares_socket_t fd, int readable, int writable);
  static int on_socket_configure(ares_socket_t fd, int type, void* data);

  asio::any_io_executor executor_;  ///< runs every handler below; not thread-safe
  options options_;                 ///< as given; timeout is the whole-query deadline
  ares_channel channel_ = nullptr;  ///< owned; ares_destroy in ~impl
  asio::steady_timer ares_timer_;   ///< fires at ares_timeout() to drive c-ares' retries
  std::shared_ptr<impl*> self_;     ///< liveness token: handlers hold a weak_ptr to it
  /// Sockets c-ares has open, by fd.
  std::unordered_map<ares_socket_t, std::shared_ptr<socket_watcher>> watchers_;
  /// Queries c-ares still runs, keyed by the pointer c-ares gives back as `arg`.
  std::unordered_map<query*, std::shared_ptr<query>> queries_;
  std::unordered_map<raw_query*, std::shared_ptr<raw_query>> raw_queries_;
  /// Names being asked now, for callers that come while the answer is on its way: they
  /// wait for it (cancelled timer) instead of sending the same query again.
  std::unordered_map<std::string, std::shared_ptr<asio::steady_timer>> in_flight_;
  std::list<cache_entry> lru_;  ///< front: most recently used; at most max_cache_entries
  std::unordered_map<std::string, std::list<cache_entry>::iterator> cache_;  ///< key → lru_
};

path_resolver::impl::impl(asio::any_io_executor executor, options opts)
    : executor_(std::move(executor)),
      options_(std::move(opts)),
      ares_timer_(executor_),
      self_(std::make_shared<impl*>(this)) {
  if (options_.timeout <= std::chrono::milliseconds::zero()) {
    throw setup_error("timeout must be positive");
  }
  if (options_.tries < 1) throw setup_error("tries must be at least 1");
  if (options_.interface.size() >= IFNAMSIZ) {
    throw setup_error("interface name \"" + options_.interface + "\" is longer than " +
                      std::to_string(IFNAMSIZ - 1) + " characters");
  }
  std::string csv;
  for (const auto& server : options_.servers) {
    std::string why;
    auto canonical = normalise_server(server, why);
    if (!canonical) {
      throw setup_error("bad DNS server \"" + server + "\": " + why +
                        " (expected e.g. \"198.18.0.53\", \"127.0.0.1:5353\", \"[::1]:53\")");
    }
    if (!csv.empty()) csv += ',';
    csv += *canonical;
  }

  if (const int status = ares_library_init(ARES_LIB_INIT_ALL); status != ARES_SUCCESS) {
    throw setup_error(std::string("ares_library_init: ") + ares_strerror(status));
  }
  try {
    const int configured = static_cast<int>(options_.servers.size());
    channel_ = make_channel(configured);
    if (configured > 0) {
      if (const int status = ares_set_servers_ports_csv(channel_, csv.c_str());
          status != ARES_SUCCESS) {
        throw setup_error("ares_set_servers_ports_csv(\"" + csv + "\"): " + ares_strerror(status));
      }
    } else {
      // The system's servers (/etc/resolv.conf) are known only once the channel exists;
      // redo it if their count changes the per-attempt timeout.
      ares_addr_port_node* list = nullptr;
      int system_servers = 0;
      if (ares_get_servers_ports(channel_, &list) == ARES_SUCCESS) {
        for (auto* node = list; node != nullptr; node = node->next) ++system_servers;
        ares_free_data(list);
      }
      if (system_servers > 1) {
        ares_destroy(channel_);
        channel_ = nullptr;
        channel_ = make_channel(system_servers);
      }
    }
    if (!options_.interface.empty()) {
      // SO_BINDTODEVICE on every socket c-ares opens, UDP and TCP (configure_socket).
      // c-ares ignores a failure; on_socket_configure checks it.
      ares_set_local_dev(channel_, options_.interface.c_str());
    }
    ares_set_socket_configure_callback(channel_, &impl::on_socket_configure, this);
  } catch (...) {
    if (channel_ != nullptr) ares_destroy(channel_);
    ares_library_cleanup();
    throw;
  }
}

ares_channel path_resolver::impl::make_channel(int servers) {
  ares_options ao{};
  const int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_DOMAINS;
  ao.sock_state_cb = &impl::on_socket_state;
  ao.sock_state_cb_data = this;
  ao.timeout = per_try_timeout_ms(options_.timeout, options_.tries, servers);
  ao.tries = options_.tries;
  // No search list: we resolve the names clients connected to, which are fully
  // qualified; "host.example" must not also be tried as "host.example.corp.lan".
  // (ARES_FLAG_NOSEARCH is ignored by ares_getaddrinfo in 1.18.)
  ao.domains = nullptr;
  ao.ndomains = 0;
  ares_channel channel = nullptr;
  if (const int status = ares_init_options(&channel, &ao, mask); status != ARES_SUCCESS) {
    throw setup_error(std::string("ares_init_options: ") + ares_strerror(status));
  }
  return channel;
}

path_resolver::impl::~impl() {
  // Ends every query with ARES_EDESTRUCTION (on_addrinfo posts errc::cancelled to its
  // waiter) and closes c-ares' sockets, telling on_socket_state first, which releases
  // our descriptors. Everything it calls back into is still alive here.
  ares_destroy(channel_);
  channel_ = nullptr;
  watchers_.clear();  // normally already empty
  queries_.clear();   // likewise
  raw_queries_.clear();
  self_.reset();
  ares_library_cleanup();
}

std::optional<resolution> path_resolver::impl::cache_get(const std::string& key) {
  const auto it = cache_.find(key);
  if (it == cache_.end()) return std::nullopt;
  const auto now = clock::now();
  if (it->second->expiry <= now) {
    lru_.erase(it->second);
    cache_.erase(it);
    return std::nullopt;
  }
  lru_.splice(lru_.begin(), lru_, it->second);
  resolution out = it->second->value;
  // What is left of the TTL, rounded up so a live entry never reports 0.
  out.ttl = std::chrono::ceil<std::chrono::seconds>(it->second->expiry - now);
  return out;
}

void path_resolver::impl::cache_put(const std::string& key, const resolution& value) {
  if (options_.max_cache_entries == 0 || value.ttl <= std::chrono::seconds::zero()) return;
  const auto now = clock::now();
  const auto expiry = now + value.ttl;
  if (const auto it = cache_.find(key); it != cache_.end()) {
    it->second->value = value;
    it->second->expiry = expiry;
    lru_.splice(lru_.begin(), lru_, it->second);
    return;
  }
  if (cache_.size() >= options_.max_cache_entries) {
    // Expired entries go first; if none, the least recently used one.
    for (auto it = lru_.begin(); it != lru_.end();) {
      if (it->expiry <= now) {
        cache_.erase(it->key);
        it = lru_.erase(it);
      } else {
        ++it;
      }
    }
    while (cache_.size() >= options_.max_cache_entries) {
      cache_.erase(lru_.back().key);
      lru_.pop_back();
    }
  }
  lru_.push_front(cache_entry{key, value, expiry});
  cache_.emplace(key, lru_.begin());
}

void path_resolver::impl::start_query(resolve_handler handler, std::string name) {
  auto q = std::make_shared<query>(this, std::move(name), std::move(handler), executor_);
  queries_.emplace(q.get(), q);
  const std::weak_ptr<query> weak = q;

  // Per-operation cancellation (e.g. `||` with a timer, or a task group's cancel): the
  // slot handler runs inside cancellation_signal::emit, so defer the work to a post.
  q->slot = asio::get_associated_cancellation_slot(q->handler);
  if (q->slot.is_connected()) {
    q->slot.assign([executor = executor_, weak](asio::cancellation_type) {
      asio::post(executor, [weak] {
        if (auto locked = weak.lock()) locked->owner->abandon(*locked, errc::cancelled);
      });
    });
  }

  q->deadline.expires_after(options_.timeout);
  q->deadline.async_wait([weak](boost::system::error_code ec) {
    if (ec == asio::error::operation_aborted) return;
    if (auto locked = weak.lock()) locked->owner->abandon(*locked, errc::timed_out);
  });

  ares_addrinfo_hints hints{};
  hints.ai_family = AF_UNSPEC;      // A and AAAA, in parallel
  hints.ai_flags = ARES_AI_NOSORT;  // we order IPv4 first ourselves
  spdlog::debug("dns[{}]: query {}", options_.interface, q->name);
  // May call on_addrinfo before it returns (e.g. no usable socket): `q` keeps the record
  // alive until the end of this function either way.
  ares_getaddrinfo(channel_, q->name.c_str(), nullptr, &hints, &impl::on_addrinfo, q.get());
  update_timer();
}

void path_resolver::impl::complete(query& q, resolve_result result) {
  q.deadline.cancel();
  if (!q.handler) return;
  q.slot.clear();
  auto handler = std::move(q.handler);
  q.handler = nullptr;
  // Queued on our executor, then run on the waiter's own associated executor (post
  // dispatches through it), never inline: we may be inside a c-ares call.
  asio::post(executor_, asio::append(std::move(handler), std::move(result)));
}

void path_resolver::impl::abandon(query& q, errc why) {
  if (!q.handler) return;
  spdlog::debug("dns[{}]: {} abandoned: {}", options_.interface, q.name,
                make_error_code(why).message());
  complete(q, make_error_code(why));
  // c-ares cannot cancel a single query (ares_cancel ends them all). Leave the others
  // running while someone waits for them; their answers may still fill the cache. Once
  // nobody waits, end them all so no socket or timer stays busy for nothing.
  const bool anyone_waiting = std::any_of(queries_.begin(), queries_.end(), [](const auto& entry) {
    return static_cast<bool>(entry.second->handler);
  });
  if (!anyone_waiting) {
    ares_cancel(channel_);
    update_timer();
  }
}

void path_resolver::impl::on_addrinfo(void* arg, int status, int /*timeouts*/,
                                      ares_addrinfo* info) {
  const std::unique_ptr<ares_addrinfo, void (*)(ares_addrinfo*)> owned(info, &ares_freeaddrinfo);
  auto* raw = static_cast<query*>(arg);
  impl& self = *raw->owner;
  auto node = self.queries_.extract(raw);
  if (node.empty()) return;  // cannot happen: c-ares calls back once per query
  const std::shared_ptr<query> q = std::move(node.mapped());

  resolve_result result = status == ARES_SUCCESS
                              ? to_resolution(info)
                              : resolve_result(make_error_code(from_ares_status(status)));
  if (result) {
    auto vetted = vet_answer(q->name, std::move(result.value().addresses), result.value().ttl,
                             self.options_.rules);
    if (vetted.dropped > 0) {
      spdlog::warn(
          "dns[{}]: {} answered {} loopback, private or link-local address(es) for a "
          "public name: left out ([dns] allow_internal_answers)",
          self.options_.interface, q->name, vetted.dropped);
    }
    if (vetted.addresses.empty()) {
      result = make_error_code(errc::not_found);
    } else {
      result = resolution{std::move(vetted.addresses), vetted.ttl};
    }
  }
  if (result) {
    const resolution& value = result.value();
    spdlog::debug("dns[{}]: {} → {} address(es), ttl {}s", self.options_.interface, q->name,
                  value.addresses.size(), value.ttl.count());
    // Also when the waiter has left (deadline, cancellation): the next caller benefits.
    self.cache_put(q->name, value);
  } else if (q->handler) {
    spdlog::debug("dns[{}]: {} failed: {} ({})", self.options_.interface, q->name,
                  result.error().message(), ares_strerror(status));
  }
  self.complete(*q, std::move(result));
}

void path_resolver::impl::start_raw_query(raw_handler handler, std::vector<std::uint8_t> message) {
  const auto id = static_cast<std::uint16_t>((message[0] << 8) | message[1]);
  auto q = std::make_shared<raw_query>(this, std::move(handler), id, executor_);
  raw_queries_.emplace(q.get(), q);
  const std::weak_ptr<raw_query> weak = q;
  q->deadline.expires_after(options_.timeout);
  q->deadline.async_wait([weak](boost::system::error_code ec) {
    if (ec == asio::error::operation_aborted) return;
    if (auto locked = weak.lock()) {
      locked->owner->complete_raw(*locked, make_error_code(errc::timed_out));
    }
  });
  // c-ares gives the message an ID of its own; the reply gets ours back.
  ares_send(channel_, message.data(), static_cast<int>(message.size()), &impl::on_raw_reply,
            q.get());
  update_timer();
}

void path_resolver::impl::complete_raw(raw_query& q, raw_result result) {
  q.deadline.cancel();
  if (!q.handler) return;
  auto handler = std::move(q.handler);
  q.handler = nullptr;
  asio::post(executor_, asio::append(std::move(handler), std::move(result)));
}

void path_resolver::impl::on_raw_reply(void* arg, int status, int /*timeouts*/,
                                       unsigned char* reply, int length) {
  auto* raw = static_cast<raw_query*>(arg);
  impl& self = *raw->owner;
  auto node = self.raw_queries_.extract(raw);
  if (node.empty()) return;
  const std::shared_ptr<raw_query> q = std::move(node.mapped());
  // A reply with an error code (NXDOMAIN, SERVFAIL) is still the reply to relay: c-ares
  // reports those as a status but hands the message over too.
  if (reply != nullptr && length >= 12) {
    std::vector<std::uint8_t> message(reply, reply + length);
    message[0] = static_cast<std::uint8_t>(q->id >> 8);
    message[1] = static_cast<std::uint8_t>(q->id & 0xff);
    self.complete_raw(*q, std::move(message));
    return;
  }
  self.complete_raw(*q, make_error_code(from_ares_status(status)));
}

void path_resolver::impl::on_socket_state(void* data, ares_socket_t fd, int readable,
                                          int writable) {
  static_cast<impl*>(data)->watch(fd, readable != 0, writable != 0);
}

int path_resolver::impl::on_socket_configure(ares_socket_t fd, int /*type*/, void* data) {
  const auto& self = *static_cast<const impl*>(data);
  // fleetyd's own queries must pass its interception rules, not loop back into it.
  if (auto ec = net::apply_own_socket_mark(fd)) {
    spdlog::warn("dns[{}]: cannot mark the DNS socket: {}", self.options_.interface, ec.message());
    return -1;
  }
  if (self.options_.interface.empty()) return 0;
  // c-ares' configure_socket ignores a failed SO_BINDTODEVICE ("only root can do this");
  // a query that silently leaves through the default route would give another path's
  // answer, so refuse the socket instead (c-ares then reports ARES_ECONNREFUSED).
  char bound[IFNAMSIZ] = {};
  socklen_t length = sizeof bound;
  if (getsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, bound, &length) == 0 &&
      self.options_.interface == bound) {
    return 0;
  }
  if (setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, self.options_.interface.c_str(),
                 static_cast<socklen_t>(self.options_.interface.size())) == 0) {
    return 0;
  }
  spdlog::warn("dns[{}]: cannot bind the DNS socket to interface {}: {}", self.options_.interface,
               self.options_.interface, std::strerror(errno));
  return -1;
}

void path_resolver::impl::watch(ares_socket_t fd, bool readable, bool writable) {
  if (!readable && !writable) {
    // c-ares closes fd right after this returns.
    watchers_.erase(fd);
    return;
  }
  auto& slot = watchers_[fd];
  if (!slot) {
    auto watcher = std::make_shared<socket_watcher>(this, fd, executor_);
    boost::system::error_code ec;
    watcher->descriptor.assign(fd, ec);
    if (ec) {
      // The query on this socket will end by c-ares' own timeout.
      spdlog::warn("dns[{}]: cannot watch c-ares socket {}: {}", options_.interface, fd,
                   ec.message());
      watchers_.erase(fd);
      return;
    }
    slot = std::move(watcher);
  }
  slot->want_read = readable;
  slot->want_write = writable;
  arm(slot);
}

void path_resolver::impl::arm(const std::shared_ptr<socket_watcher>& watcher) {
  const std::weak_ptr<socket_watcher> weak = watcher;
  if (watcher->want_read && !watcher->read_pending) {
    watcher->read_pending = true;
    watcher->descriptor.async_wait(asio::posix::descriptor_base::wait_read,
                                   [weak](boost::system::error_code ec) {
                                     auto locked = weak.lock();
                                     if (!locked) return;  // c-ares closed the socket
                                     locked->read_pending = false;
                                     if (ec == asio::error::operation_aborted) return;
                                     locked->owner->on_ready(locked->fd, true, false);
                                   });
  }
  if (watcher->want_write && !watcher->write_pending) {
    watcher->write_pending = true;
    watcher->descriptor.async_wait(asio::posix::descriptor_base::wait_write,
                                   [weak](boost::system::error_code ec) {
                                     auto locked = weak.lock();
                                     if (!locked) return;
                                     locked->write_pending = false;
                                     if (ec == asio::error::operation_aborted) return;
                                     locked->owner->on_ready(locked->fd, false, true);
                                   });
  }
}

void path_resolver::impl::on_ready(ares_socket_t fd, bool readable, bool writable) {
  ares_process_fd(channel_, readable ? fd : ARES_SOCKET_BAD, writable ? fd : ARES_SOCKET_BAD);
  // c-ares may have closed the socket, or closed it and opened another with the same
  // number (already armed by watch()); arm() skips waits that are outstanding.
  if (const auto it = watchers_.find(fd); it != watchers_.end()) arm(it->second);
  update_timer();
}

void path_resolver::impl::update_timer() {
  timeval storage{};
  const timeval* next = ares_timeout(channel_, nullptr, &storage);
  if (next == nullptr) {
    ares_timer_.cancel();  // no query in flight
    return;
  }
  ares_timer_.expires_after(std::chrono::seconds(next->tv_sec) +
                            std::chrono::microseconds(next->tv_usec));
  ares_timer_.async_wait([weak = std::weak_ptr<impl*>(self_)](boost::system::error_code ec) {
    if (ec == asio::error::operation_aborted) return;
    const auto locked = weak.lock();
    if (!locked) return;
    impl& self = **locked;
    // Retransmits, moves on to the next server, or ends queries with ARES_ETIMEOUT.
    ares_process_fd(self.channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    self.update_timer();
  });
}

// ---------------------------------------------------------------------------------------

path_resolver::path_resolver(asio::any_io_executor executor, options opts)
    : impl_(std::make_unique<impl>(std::move(executor), std::move(opts))) {}

path_resolver::~path_resolver() = default;

void path_resolver::rebind(std::string interface, std::vector<std::string> servers) {
  auto rebound = impl_->options_;
  rebound.interface = std::move(interface);
  rebound.servers = std::move(servers);
  // Built before the old one goes: a setup that fails leaves the resolver as it was. The
  // old one's queries end with errc::cancelled (their coroutines check `alive`).
  impl_ = std::make_unique<impl>(impl_->executor_, std::move(rebound));
}

asio::awaitable<raw_result> path_resolver::async_query(std::vector<std::uint8_t> message) {
  if (message.size() < 12 || message.size() > 65535) co_return make_error_code(errc::bad_name);
  impl* const state = impl_.get();
  co_return co_await asio::async_initiate<const asio::use_awaitable_t<>, raw_signature>(
      [state](raw_handler handler, std::vector<std::uint8_t> query) {
        state->start_raw_query(std::move(handler), std::move(query));
      },
      asio::use_awaitable, std::move(message));
}

void path_resolver::remember(std::string_view host, const resolution& answer) {
  if (answer.addresses.empty()) return;
  auto key = normalise_name(host);
  if (!key) return;
  auto vetted = vet_answer(*key, answer.addresses, answer.ttl, impl_->options_.rules);
  if (!vetted.addresses.empty())
    impl_->cache_put(*key, resolution{std::move(vetted.addresses), vetted.ttl});
}

asio::awaitable<boost::system::result<resolution>> path_resolver::async_resolve(std::string host) {
  // 1. An address literal needs no query. Its TTL is 0: there is nothing to refresh.
  if (auto literal = parse_literal(host)) co_return resolution{{*literal}, std::chrono::seconds(0)};

  // 2. Refuse what is not a host name before it reaches the wire.
  auto key = normalise_name(host);
  if (!key) co_return make_error_code(errc::bad_name);

  // 3. A live cached answer.
  if (auto cached = impl_->cache_get(*key)) co_return std::move(*cached);

  // 4. The same name is being asked already (e.g. a prefetch): wait for that answer. The
  //    wait is bounded by that query's own deadline; `this` is only used again if alive.
  impl* const state = impl_.get();
  const std::weak_ptr<impl*> alive = state->self_;
  if (auto it = state->in_flight_.find(*key); it != state->in_flight_.end()) {
    const std::shared_ptr<asio::steady_timer> answer = it->second;
    co_await answer->async_wait(asio::as_tuple(asio::use_awaitable));
    if (alive.expired()) co_return make_error_code(errc::cancelled);
    if (auto cached = state->cache_get(*key)) co_return std::move(*cached);
    // That query failed (or its answer can't be cached): ask ourselves.
  }

  // 5. Ask this path's resolvers. `this` must not be touched after the co_await unless
  //    `alive`: the resolver may have been destroyed meanwhile (errc::cancelled then).
  auto answer =
      std::make_shared<asio::steady_timer>(state->executor_, asio::steady_timer::time_point::max());
  state->in_flight_.insert_or_assign(*key, answer);
  const std::string name = *key;
  auto result = co_await asio::async_initiate<const asio::use_awaitable_t<>, resolve_signature>(
      [state](resolve_handler handler, std::string query_name) {
        state->start_query(std::move(handler), std::move(query_name));
      },
      asio::use_awaitable, std::move(*key));
  answer->cancel();  // wakes the waiters
  if (!alive.expired()) {
    auto it = state->in_flight_.find(name);
    if (it != state->in_flight_.end() && it->second == answer) state->in_flight_.erase(it);
  }
  co_return result;
}

}  // namespace fleety::dns
