#pragma once
// The path monitor (paper §4.4, issue 6): which paths are up (netlink, at once), and every
// `interval` each path's RTT, jitter, loss and throughput from fleetyd's own sockets on it
// (TCP_INFO), plus a light probe (a TCP connect) while a path carries nothing. It keeps
// what it measured in the path history, and calls back after each round so that the
// selector can act on it.

#include <boost/asio/any_io_executor.hpp>
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
    /// Where idle probes connect to; nullopt: the path is not probed.
    std::optional<boost::asio::ip::tcp::endpoint> probe;
  };
  /// After every round of measurements, and at once when a path goes up or down.
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
  void stop();

  bool up(std::size_t path) const;
  quality current(std::size_t path) const;
  const std::vector<path_spec>& paths() const;
  std::uint64_t probes_sent(std::size_t path) const;

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
  [[nodiscard]] watch watch_socket(std::size_t path, int fd);

 private:
  /// Shared with the probes and handlers in flight and with the watches (weakly), so
  /// that whichever ends last touches nothing freed.
  std::shared_ptr<state> state_;
};

/// Where a path's probes go when its config names no `probe`: its first DNS server on
/// TCP port 53 ("198.18.0.53" or "[::1]:5353" → port 53 of that address). nullopt when
/// neither gives a literal address.
std::optional<boost::asio::ip::tcp::endpoint> probe_target(const core::path_config& path);

}  // namespace fleety::path
