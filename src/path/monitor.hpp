#pragma once
// The path monitor (paper §4.4, issue 6): which paths are up (netlink, at once), and every
// `interval` each path's RTT, jitter, loss and throughput from fleetyd's own sockets on it
// (TCP_INFO), plus a light probe (a TCP connect) while a path carries nothing. It keeps
// what it measured in the path history, and calls back after each round so that the
// selector can act on it. Its link watcher is the daemon's only one: whoever else follows
// the interfaces (the MPTCP endpoints) subscribes to its link changes.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "core/expected.hpp"
#include "path/link_watcher.hpp"
#include "path/liveness.hpp"
#include "path/quality.hpp"

namespace fleety::path {

class history;

class monitor {
  struct state;  // what the monitor knows (monitor.cpp)

 public:
  struct path_spec {
    std::string name;
    std::string interface;
    bool cellular = false;
    /// Where idle probes connect to when no node it fetched from is known (its first DNS
    /// server's port 53), or always (`probe_configured`: the config's `probe`); nullopt
    /// with no node known: the path is not probed.
    std::optional<boost::asio::ip::tcp::endpoint> probe;
    bool probe_configured = false;
  };
  /// After every round of measurements, at once when a path goes up or down, and when a
  /// probe's answer (or its loss) changed what is known of a path.
  using round_handler = std::function<void(clock_type::time_point now)>;

  /// `store` (may be null) must outlive the monitor.
  monitor(boost::asio::any_io_executor executor, core::monitor_config config,
          std::vector<path_spec> paths, history* store, round_handler on_round);
  ~monitor();
  monitor(const monitor&) = delete;
  monitor& operator=(const monitor&) = delete;

  /// Starts watching links (rtnetlink; if that fails, interfaces are polled each round
  /// and the error is logged) and the rounds.
  void start();
  /// Stops the rounds and the link watcher, and cancels the probes in flight (they end
  /// soon after; async_stop waits for them). Idempotent.
  void stop();
  /// stop(), then waits until no probe is in flight. The owner awaits it before it
  /// destroys the monitor (a monitor destroyed with probes in flight aborts: its task
  /// group would outlive them).
  boost::asio::awaitable<void> async_stop();

  /// Whether path `path` is up: its interface exists, is up, has carrier and an address
  /// that is not IPv6 link-local (path::usable), as of the last link event or round.
  /// False before start(). The daemon's one notion of liveness (path/liveness.hpp).
  bool up(std::size_t path) const;
  /// up(), as a path::liveness to hand to those who must not know the monitor. It holds
  /// the monitor weakly: once the monitor is gone every path is down.
  liveness as_liveness() const;
  quality current(std::size_t path) const;
  const std::vector<path_spec>& paths() const;
  std::uint64_t probes_sent(std::size_t path) const;
  /// Where `path`'s idle probes go now and why ("198.18.1.80:80, a node it fetched from
  /// 3 s ago"); empty when it is not probed.
  std::string probe_description(std::size_t path) const;

  /// Slot `path` is another path from now on (uplink hot-plug: a new uplink in a free
  /// slot, or a slot freed with an empty interface): what was measured on it is
  /// forgotten, the history seeds it by its new name, and its interface is watched.
  void assign(std::size_t path, path_spec spec);

  /// While it lives, the socket's TCP_INFO counts toward `path`'s RTT, loss and
  /// throughput (and the path is not idle, so it isn't probed). Move-only.
  class watch {
   public:
    watch() = default;
    watch(watch&& other) noexcept;
    watch& operator=(watch&& other) noexcept;
    watch(const watch&) = delete;
    watch& operator=(const watch&) = delete;
    ~watch();

   private:
    friend class monitor;
    watch(std::weak_ptr<state> s, std::uint64_t id) : monitor_(std::move(s)), id_(id) {}
    std::weak_ptr<state> monitor_;
    std::uint64_t id_ = 0;
  };
  /// What a watched socket is to the path's probes.
  enum class peer_use {
    /// Not a probe target: a relayed app flow's server (a game server, SSH) must never see
    /// connections the app did not make.
    none,
    /// An HTTP node fleetyd itself fetches from (port 80 or 443): the path's idle probes
    /// go there while it is recent (choose_probe_target).
    probe_target,
  };
  [[nodiscard]] watch watch_socket(std::size_t path, int fd, peer_use use = peer_use::none);

  /// Told of every change of a watched interface (existence, flags, addresses), after the
  /// monitor itself acted on it; never after stop(). It may drop its subscription.
  using link_handler = std::function<void(const link_state& before, const link_state& after)>;

  /// A listener of the monitor's link changes, for as long as it lives. Move-only;
  /// harmless after the monitor is gone.
  class link_subscription {
   public:
    link_subscription() = default;
    link_subscription(link_subscription&& other) noexcept;
    link_subscription& operator=(link_subscription&& other) noexcept;
    link_subscription(const link_subscription&) = delete;
    link_subscription& operator=(const link_subscription&) = delete;
    ~link_subscription();

   private:
    friend class monitor;
    link_subscription(std::weak_ptr<state> s, std::uint64_t id) : monitor_(std::move(s)), id_(id) {}
    std::weak_ptr<state> monitor_;
    std::uint64_t id_ = 0;
  };
  /// Subscribes `on_change` to link changes (one link watcher, several listeners).
  [[nodiscard]] link_subscription subscribe_links(link_handler on_change);
  /// Whether link changes are being watched (rtnetlink): false before start() and when
  /// the link watcher could not start (then interfaces are polled and listeners hear
  /// nothing).
  bool watching_links() const;

 private:
  /// Shared with the probes and handlers in flight and with the watches (weakly), so
  /// that whichever ends last touches nothing freed.
  std::shared_ptr<state> state_;
};

/// Where a path's probes go when its config names no `probe`: its first DNS server on
/// TCP port 53 ("198.18.0.53" or "[::1]:5353" → port 53 of that address). nullopt when
/// neither gives a literal address.
std::optional<boost::asio::ip::tcp::endpoint> probe_target(const core::path_config& path);

/// A path's monitor spec from its config: probe_target, and whether the config named it.
monitor::path_spec spec_of(const core::path_config& path);

/// How long a node a path fetched from stays its probe target after the last socket to it.
inline constexpr std::chrono::minutes learned_node_lifetime{10};

/// Where an idle path's probes go (issue 19), and why: the config's `probe`; else the node
/// the path last fetched from, for learned_node_lifetime after — the probe then crosses
/// what the path's traffic crosses, not only the home router; else the fallback (its
/// first DNS server).
struct probe_choice {
  std::optional<boost::asio::ip::tcp::endpoint> target;
  std::string why;  ///< "the config's probe", "a node it fetched from", "its DNS server"
};
probe_choice choose_probe_target(const monitor::path_spec& spec,
                                 const std::optional<boost::asio::ip::tcp::endpoint>& node,
                                 clock_type::duration node_age);

}  // namespace fleety::path
