#include "path/monitor.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <charconv>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>

#include "net/bound_socket.hpp"
#include "net/connect.hpp"
#include "net/kernel_tcp_info.hpp"
#include "net/task_group.hpp"
#include "path/history.hpp"

namespace fleety::path {
namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

/// What one probe costs on the wire, both ways: SYN, SYN-ACK (or RST), RST, with IP and
/// TCP headers and options (the figure the cellular probe budget is spent in).
constexpr std::uint64_t probe_bytes = 200;
/// Samples go to the history once a second, not every round: a day of two paths is then
/// about 170 000 rows instead of 860 000.
constexpr auto history_every = std::chrono::seconds(1);
/// A probe that gets no answer within this is lost.
constexpr auto probe_timeout = std::chrono::seconds(2);

}  // namespace

struct monitor::state {
  state(asio::any_io_executor ex, core::monitor_config cfg, std::vector<path_spec> specs,
        history* store_in, round_handler handler)
      : executor(std::move(ex)),
        config(cfg),
        paths(std::move(specs)),
        store(store_in),
        on_round(std::move(handler)),
        timer(executor),
        probes_in_flight(executor),
        per_path(paths.size()) {}

  struct socket_watch {
    std::size_t path = 0;
    int fd = -1;
    std::optional<net::kernel_tcp_sample> last;
  };
  struct path_state {
    quality_tracker tracker;
    bool up = false;
    std::uint64_t bytes_received = 0;  ///< what its watched sockets received, in total
    clock_type::time_point last_activity{};
    clock_type::time_point next_probe{};
    bool probing = false;
    std::uint64_t probes = 0;
    std::optional<double> signal_dbm;
    /// The HTTP node the path last fetched from (watch_socket, peer_use::probe_target): its
    /// probes go there while it is recent.
    std::optional<tcp::endpoint> node;
    clock_type::time_point node_at{};
  };

  asio::any_io_executor executor;
  core::monitor_config config;
  std::vector<path_spec> paths;
  history* store;
  round_handler on_round;
  asio::steady_timer timer;
  /// Owns the probes in flight; joined by async_stop.
  net::task_group probes_in_flight;
  std::vector<path_state> per_path;
  std::map<std::uint64_t, socket_watch> sockets;
  std::uint64_t next_watch_id = 1;
  std::unique_ptr<link_watcher> links;
  bool links_ok = false;
  /// The subscribers to link changes, by subscription id (link_subscription removes its own).
  std::map<std::uint64_t, link_handler> link_listeners;
  std::uint64_t next_listener_id = 1;
  bool running = false;
  clock_type::time_point last_history{};
  clock_type::time_point last_signal{};
  bool history_failed_logged = false;
  std::weak_ptr<state> self;

  /// The last ten minutes' quality from the history seeds path `i` until it is measured.
  void seed_from_history(std::size_t i, clock_type::time_point now) {
    if (store == nullptr || paths[i].name.empty()) return;
    if (auto known = store->latest(paths[i].name, std::chrono::minutes(10), wall_clock::now());
        known && *known)
      per_path[i].tracker.seed(**known, now);
  }

  /// "path wifi: up (wlan0), probes to ...": what a path is when it starts being watched.
  void log_watched(std::size_t i, clock_type::time_point now) const {
    spdlog::info("path {}: {} ({}), probes {}", paths[i].name, per_path[i].up ? "up" : "down",
                 paths[i].interface, describe_probes(i, now));
  }

  std::string describe_probes(std::size_t i, clock_type::time_point now) const {
    const auto choice = target_of(i, now);
    if (!choice.target) return "off until it fetches from a node (no probe target, no DNS server)";
    const auto& address = choice.target->address();
    const auto host = address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
    return fmt::format("to {}:{} every {} ms while idle ({})", host, choice.target->port(),
                       probe_interval(i).count() / 1000, choice.why);
  }

  /// Watches the interfaces of the paths as they are now (a slot taken or freed).
  void rewatch_links() {
    if (!running || !links_ok) return;
    links->stop();
    links.reset();
    start_links();
  }

  void start_links() {
    std::vector<std::string> interfaces;
    for (const auto& p : paths) {
      if (!p.interface.empty()) interfaces.push_back(p.interface);
    }
    links = std::make_unique<link_watcher>(
        executor, interfaces, [weak = self](const link_state& before, const link_state& after) {
          if (auto me = weak.lock()) me->on_link_change(before, after);
        });
    if (auto started = links->start(); !started) {
      spdlog::warn("path monitor: {}: interfaces are polled every {} ms instead", started.error(),
                   config.interval.count() / 1000);
      links.reset();
      links_ok = false;
    } else {
      links_ok = true;
    }
  }

  bool link_up(std::size_t i) const {
    if (paths[i].interface.empty()) return false;
    if (links_ok) return usable(links->state(paths[i].interface));
    return net::interface_exists(paths[i].interface);
  }

  void read_sockets(clock_type::time_point now) {
    struct busiest {
      std::uint64_t segs = 0;
      net::kernel_tcp_sample sample;
    };
    std::vector<std::optional<busiest>> rtt_source(paths.size());
    for (auto& [id, w] : sockets) {
      net::kernel_tcp_sample sample;
      if (!net::read_kernel_tcp_info(w.fd, sample)) continue;
      auto& p = per_path[w.path];
      if (w.last) {
        const std::uint64_t segs = sample.segs_out - w.last->segs_out;  // wraps like the kernel's
        const std::uint64_t retrans = sample.total_retrans - w.last->total_retrans;
        const std::uint64_t received = sample.bytes_received >= w.last->bytes_received
                                           ? sample.bytes_received - w.last->bytes_received
                                           : 0;
        p.tracker.on_segments(segs, retrans, now);
        p.bytes_received += received;
        if (segs > 0 || received > 0) {
          p.last_activity = now;
          auto& source = rtt_source[w.path];
          if (!source || segs > source->segs) source = busiest{segs, sample};
        }
      } else {
        p.last_activity = now;
        if (sample.rtt_us > 0 && !rtt_source[w.path]) rtt_source[w.path] = busiest{0, sample};
      }
      w.last = sample;
    }
    for (std::size_t i = 0; i < paths.size(); ++i) {
      if (rtt_source[i] && rtt_source[i]->sample.rtt_us > 0) {
        per_path[i].tracker.on_smoothed_rtt(
            std::chrono::microseconds(rtt_source[i]->sample.rtt_us),
            std::chrono::microseconds(rtt_source[i]->sample.rttvar_us), now);
      }
      per_path[i].tracker.on_bytes_received(per_path[i].bytes_received, now);
    }
  }

  std::chrono::microseconds probe_interval(std::size_t i) const {
    auto interval = config.probe_interval;
    if (paths[i].cellular && config.cellular_probe_budget_Bps > 0) {
      const auto within_budget = std::chrono::microseconds(
          static_cast<std::int64_t>(probe_bytes * 1'000'000 / config.cellular_probe_budget_Bps));
      interval = std::max(interval, within_budget);
    }
    return interval;
  }

  probe_choice target_of(std::size_t i, clock_type::time_point now) const {
    const auto& p = per_path[i];
    return choose_probe_target(paths[i], p.node, now - p.node_at);
  }

  void maybe_probe(std::size_t i, clock_type::time_point now) {
    auto& p = per_path[i];
    if (!p.up || p.probing || now < p.next_probe) return;
    if (paths[i].cellular && config.cellular_probe_budget_Bps == 0) return;
    // A path that carried traffic lately is measured by that traffic.
    if (now - p.last_activity < probe_interval(i)) return;
    const auto target = target_of(i, now).target;
    if (!target) return;
    p.probing = true;
    p.next_probe = now + probe_interval(i);
    ++p.probes;
    probes_in_flight.spawn(probe(self, i, paths[i].name, *target, paths[i].interface),
                           "probe on " + paths[i].name);
  }

  /// One probe: a TCP connect on the path, bound to its interface. Holds the monitor
  /// weakly (it may be stopped meanwhile; its task group waits for the probe).
  static asio::awaitable<void> probe(std::weak_ptr<state> weak, std::size_t i, std::string name,
                                     tcp::endpoint target, std::string interface) {
    tcp::socket socket(co_await asio::this_coro::executor);
    const auto started = clock_type::now();
    const auto ec = co_await net::async_connect_on_path(socket, target, interface, probe_timeout);
    // A refusal (RST) came back over the path as fast as a SYN-ACK would have.
    const bool answered = !ec || ec == asio::error::connection_refused;
    const auto rtt =
        std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - started);
    net::close_with_reset(socket);
    auto me = weak.lock();
    if (!me) co_return;
    auto& p = me->per_path[i];
    p.probing = false;
    // (The slot may have become another path meanwhile: its sample is not this one's.)
    if (!me->running || me->paths[i].name != name || me->paths[i].interface != interface) co_return;
    const auto now = clock_type::now();
    p.tracker.on_probe(answered, now);
    const bool confirm = answered && p.tracker.on_probe_rtt(rtt, now);
    // What the status shows now, the selector acts on now: not up to a round later, when
    // a flow placed meanwhile would go by the path's quality before this probe.
    if (me->on_round) me->on_round(now);
    if (!confirm || !me->running) co_return;
    // A step to confirm: at once, where probes are free; a cellular path's budget keeps its
    // interval.
    if (me->paths[i].cellular) co_return;
    p.next_probe = now;
    me->maybe_probe(i, now);
  }

  /// Wi-Fi signal levels, where the kernel lists the interface (wireless extensions).
  void read_signal(clock_type::time_point now) {
    if (now - last_signal < std::chrono::seconds(1)) return;
    last_signal = now;
    std::ifstream file("/proc/net/wireless");
    if (!file) return;
    std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    for (std::size_t i = 0; i < paths.size(); ++i)
      per_path[i].signal_dbm = wireless_signal_dbm(text, paths[i].interface);
  }

  quality measured(std::size_t i, clock_type::time_point now) const {
    auto q = per_path[i].tracker.current(per_path[i].up, now);
    q.signal_dbm = per_path[i].signal_dbm;
    return q;
  }

  void record_history(clock_type::time_point now) {
    if (store == nullptr || now - last_history < history_every) return;
    last_history = now;
    std::vector<named_sample> samples;
    const auto wall = wall_clock::now();
    for (std::size_t i = 0; i < paths.size(); ++i) {
      if (!paths[i].interface.empty()) samples.push_back({paths[i].name, wall, measured(i, now)});
    }
    if (auto ok = store->record_samples(samples); !ok && !history_failed_logged) {
      history_failed_logged = true;
      spdlog::warn("path history: {} (samples are not kept; said once)", ok.error());
    }
  }

  void round() {
    const auto now = clock_type::now();
    for (std::size_t i = 0; i < paths.size(); ++i) per_path[i].up = link_up(i);
    read_sockets(now);
    read_signal(now);
    for (std::size_t i = 0; i < paths.size(); ++i) maybe_probe(i, now);
    record_history(now);
    if (on_round) on_round(now);
  }

  void schedule() {
    timer.expires_after(config.interval);
    timer.async_wait([weak = self](boost::system::error_code ec) {
      auto me = weak.lock();
      if (ec || !me || !me->running) return;
      me->round();
      me->schedule();
    });
  }

  void on_link_change(const link_state& before, const link_state& after) {
    for (std::size_t i = 0; i < paths.size(); ++i) {
      if (paths[i].interface != after.name) continue;
      const bool now_up = usable(after);
      if (usable(before) != now_up) {
        spdlog::info("path {}: {} ({} {}{})", paths[i].name, now_up ? "up" : "down", after.name,
                     after.exists ? (after.running ? "running" : "no carrier") : "gone",
                     after.addresses.empty() ? ", no address" : "");
      } else if (before.addresses != after.addresses) {
        spdlog::info("path {}: {} now has {} address(es)", paths[i].name, after.name,
                     after.addresses.size());
      }
    }
    // Act at once: flows on a path that went down move now, not at the next round.
    if (running) round();
    tell_link_listeners(before, after);
  }

  void tell_link_listeners(const link_state& before, const link_state& after) {
    // A listener may drop its own subscription (or another's) while it is told: walk a
    // copy of the ids and look each up again.
    std::vector<std::uint64_t> ids;
    for (const auto& [id, handler] : link_listeners) ids.push_back(id);
    for (const auto id : ids) {
      if (!running) return;
      auto it = link_listeners.find(id);
      if (it == link_listeners.end()) continue;
      auto handler = it->second;  // (a copy: the call may erase the entry)
      handler(before, after);
    }
  }
};

monitor::monitor(asio::any_io_executor executor, core::monitor_config config,
                 std::vector<path_spec> paths, history* store, round_handler on_round)
    : state_(std::make_shared<state>(std::move(executor), config, std::move(paths), store,
                                     std::move(on_round))) {
  state_->self = state_;
}

monitor::~monitor() {
  stop();
}

void monitor::start() {
  auto& s = *state_;
  if (s.running) return;
  s.running = true;
  s.start_links();
  const auto started = clock_type::now();
  for (std::size_t i = 0; i < s.paths.size(); ++i) {
    s.per_path[i].up = s.link_up(i);
    s.seed_from_history(i, started);
    if (!s.paths[i].interface.empty()) s.log_watched(i, started);  // (not a free slot)
  }
  s.schedule();
}

void monitor::stop() {
  if (!state_) return;
  state_->probes_in_flight.cancel();
  if (!state_->running) return;
  state_->running = false;
  state_->timer.cancel();
  if (state_->links) state_->links->stop();
}

asio::awaitable<void> monitor::async_stop() {
  stop();
  // (The state stays alive while we wait: this frame holds it.)
  const auto keep = state_;
  co_await keep->probes_in_flight.async_join();
}

bool monitor::up(std::size_t path) const {
  return state_->per_path.at(path).up;
}

liveness monitor::as_liveness() const {
  return [weak = std::weak_ptr<state>(state_)](std::size_t path) {
    const auto me = weak.lock();
    return me && path < me->per_path.size() && me->per_path[path].up;
  };
}

bool monitor::watching_links() const {
  return state_->running && state_->links_ok;
}

monitor::link_subscription monitor::subscribe_links(link_handler on_change) {
  const auto id = state_->next_listener_id++;
  state_->link_listeners[id] = std::move(on_change);
  return link_subscription(state_, id);
}

monitor::link_subscription::link_subscription(link_subscription&& other) noexcept
    : monitor_(std::move(other.monitor_)), id_(std::exchange(other.id_, 0)) {}

monitor::link_subscription& monitor::link_subscription::operator=(
    link_subscription&& other) noexcept {
  if (this != &other) {
    if (auto s = monitor_.lock()) s->link_listeners.erase(id_);
    monitor_ = std::move(other.monitor_);
    id_ = std::exchange(other.id_, 0);
  }
  return *this;
}

monitor::link_subscription::~link_subscription() {
  if (auto s = monitor_.lock()) s->link_listeners.erase(id_);
}

quality monitor::current(std::size_t path) const {
  return state_->measured(path, clock_type::now());
}

const std::vector<monitor::path_spec>& monitor::paths() const {
  return state_->paths;
}

std::uint64_t monitor::probes_sent(std::size_t path) const {
  return state_->per_path.at(path).probes;
}

std::string monitor::probe_description(std::size_t path) const {
  const auto& s = *state_;
  if (path >= s.paths.size() || s.paths[path].interface.empty()) return {};
  if (s.paths[path].cellular && s.config.cellular_probe_budget_Bps == 0)
    return "off ([monitor] cellular_probe_budget = 0)";
  return s.describe_probes(path, clock_type::now());
}

void monitor::assign(std::size_t path, path_spec spec) {
  auto& s = *state_;
  if (path >= s.paths.size()) return;
  // Its sockets were on the old interface: they no longer count for this slot.
  std::erase_if(s.sockets, [path](const auto& entry) { return entry.second.path == path; });
  s.paths[path] = std::move(spec);
  s.per_path[path] = state::path_state{};
  const auto now = clock_type::now();
  s.seed_from_history(path, now);
  s.rewatch_links();
  s.per_path[path].up = s.running && s.link_up(path);
  if (!s.paths[path].interface.empty() && s.running) s.log_watched(path, now);
  if (s.running) s.round();
}

monitor::watch monitor::watch_socket(std::size_t path, int fd, peer_use use) {
  auto& s = *state_;
  const auto id = s.next_watch_id++;
  s.sockets[id] = state::socket_watch{path, fd, std::nullopt};
  // Where the path's downloads go: its idle probes go there too (choose_probe_target).
  sockaddr_storage peer{};
  socklen_t length = sizeof peer;
  if (use == peer_use::probe_target && path < s.per_path.size() &&
      ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &length) == 0) {
    tcp::endpoint node;
    if (length <= node.capacity()) {
      std::memcpy(node.data(), &peer, length);
      node.resize(length);
      if ((node.port() == 80 || node.port() == 443) && !node.address().is_loopback()) {
        s.per_path[path].node = node;
        s.per_path[path].node_at = clock_type::now();
      }
    }
  }
  return watch(state_, id);
}

monitor::watch::watch(watch&& other) noexcept
    : monitor_(std::move(other.monitor_)), id_(std::exchange(other.id_, 0)) {}

monitor::watch& monitor::watch::operator=(watch&& other) noexcept {
  if (this != &other) {
    if (auto s = monitor_.lock()) s->sockets.erase(id_);
    monitor_ = std::move(other.monitor_);
    id_ = std::exchange(other.id_, 0);
  }
  return *this;
}

monitor::watch::~watch() {
  if (auto s = monitor_.lock()) s->sockets.erase(id_);
}

monitor::path_spec spec_of(const core::path_config& path) {
  return {path.name, path.interface, path.kind == core::path_kind::cellular, probe_target(path),
          !path.probe.empty()};
}

probe_choice choose_probe_target(const monitor::path_spec& spec,
                                 const std::optional<tcp::endpoint>& node,
                                 clock_type::duration node_age) {
  if (spec.probe_configured && spec.probe) return {spec.probe, "the config's probe"};
  if (node && node_age <= learned_node_lifetime) return {node, "a node it fetched from"};
  if (spec.probe) return {spec.probe, "its DNS server; no node fetched from lately"};
  return {};
}

std::optional<tcp::endpoint> probe_target(const core::path_config& path) {
  auto parse = [](std::string text, std::uint16_t default_port) -> std::optional<tcp::endpoint> {
    std::uint16_t port = default_port;
    auto read_port = [&port](std::string_view digits) {
      std::uint16_t value = 0;
      const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
      if (ec == std::errc{} && end == digits.data() + digits.size() && value > 0) port = value;
    };
    if (!text.empty() && text.front() == '[') {
      const auto close = text.find(']');
      if (close == std::string::npos) return std::nullopt;
      if (close + 2 < text.size() && text[close + 1] == ':')
        read_port(std::string_view(text).substr(close + 2));
      text = text.substr(1, close - 1);
    } else if (const auto colon = text.rfind(':');
               colon != std::string::npos && text.find(':') == colon) {
      read_port(std::string_view(text).substr(colon + 1));
      text = text.substr(0, colon);
    }
    boost::system::error_code ec;
    const auto address = asio::ip::make_address(text, ec);
    if (ec || port == 0) return std::nullopt;
    return tcp::endpoint(address, port);
  };
  if (!path.probe.empty()) return parse(path.probe, 0);
  if (path.dns_servers.empty()) return std::nullopt;
  // A resolver's own port may be another than 53 ("127.0.0.1:5353"): probes go to TCP 53.
  auto target = parse(path.dns_servers.front(), 53);
  if (target) target->port(53);
  return target;
}

}  // namespace fleety::path
