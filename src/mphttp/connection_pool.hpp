#pragma once
// Warm connections (issue 16 item 3, issue 17 item 1): each path keeps its idle
// keep-alive connections to each host's node, for the next request of any app to the
// same place on the same path — no handshake and no slow start from zero per object —
// and counts the connections it has open per host and path, so that fleety never opens
// more to one node than a browser would. Internal to src/mphttp; the daemon owns one
// pool (proxy_context), sessions reach it through a pooled_connector.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "mphttp/upstream.hpp"

namespace fleety::mphttp::detail {

/// Where an idle connection may serve again: the same path, the same host and port, the
/// same server (the app's own destination, or the path's own node for the host).
struct pool_key {
  std::string path;
  std::string host;
  std::uint16_t port = 0;
  std::string destination;  ///< the app's destination it went to; empty: the path's own node
  /// Whose socket it is (0: fleetyd's): a connection serves only its own user again, so
  /// that one user's traffic never leaves on a socket another user's rules apply to.
  std::uint32_t uid = 0;

  friend bool operator<(const pool_key& a, const pool_key& b) {
    return std::tie(a.path, a.host, a.port, a.destination, a.uid) <
           std::tie(b.path, b.host, b.port, b.destination, b.uid);
  }
};

/// `user`: whose connection it is (the connector's user(); none: fleetyd's own).
pool_key pool_key_of(const path_runtime& path, const proxy_target& target, bool to_destination,
                     const std::optional<net::socket_user>& user = std::nullopt);

/// What the pool allows.
struct pool_limits {
  /// Connections fleety opens itself (ranges on other nodes, early connections) per host
  /// and path at most; the app's own connections to its destination are the app's.
  std::size_t connections_per_host = 6;
  /// Idle connections kept at most, in all (the oldest closes first).
  std::size_t idle_connections = 32;
  /// An idle connection closes after this long unused (servers close theirs after 5 s
  /// (Apache) to 75 s (nginx): one closed meanwhile is noticed before it is reused).
  std::chrono::steady_clock::duration idle_timeout = std::chrono::seconds(30);
};

/// Counts, for `fleety status` and the metrics.
struct pool_counts {
  std::size_t idle = 0;
  std::uint64_t reused = 0;  ///< connections taken idle for another request
  std::uint64_t parked = 0;  ///< connections kept idle after a request
  std::uint64_t refused_over_limit = 0;
};

class connection_pool {
 public:
  using clock = std::chrono::steady_clock;
  explicit connection_pool(pool_limits limits = {}) : limits_(limits) {}
  connection_pool(const connection_pool&) = delete;
  connection_pool& operator=(const connection_pool&) = delete;

  /// An idle connection for `key` that is still open and quiet (a server that closed it,
  /// or sent bytes nobody asked for, loses it here), the most recently used first; null
  /// if none.
  std::unique_ptr<upstream> take(const pool_key& key, clock::time_point now);
  /// Keeps `up` (reusable: its last response read to its end) idle for `key`; closes it
  /// instead when the pool is full of newer ones.
  void park(const pool_key& key, upstream& up, clock::time_point now);
  /// Whether fleety may open one more connection to `host` on `path`; false counts a
  /// refusal.
  bool may_open(const std::string& path, const std::string& host);
  /// Counts a new connection against its host's limit on its path, while it is open.
  connection_slot count(const std::string& path, const std::string& host);
  /// Closes the connections idle for longer than the timeout, and forgets hosts with no
  /// connection.
  void expire(clock::time_point now);
  /// Closes every idle connection (shutdown: before the executor goes).
  void clear();

  pool_counts counts() const;
  /// Whether an idle connection is kept for `key` (not checked for being alive).
  bool has_idle(const pool_key& key) const { return idle_.contains(key); }
  const pool_limits& limits() const { return limits_; }
  void set_limits(const pool_limits& limits) { limits_ = limits; }
  /// Open connections counted for `host` on `path`.
  std::size_t open_count(const std::string& path, const std::string& host) const;

 private:
  struct idle_connection {
    std::unique_ptr<upstream> up;
    clock::time_point parked;
  };
  void close_oldest();
  /// Not too old, still open and quiet (else logged when the server closed it).
  bool still_usable(const pool_key& key, idle_connection& entry, clock::time_point now) const;

  pool_limits limits_;
  std::map<pool_key, std::deque<idle_connection>> idle_;  ///< newest at the back
  std::size_t idle_total_ = 0;
  std::map<std::pair<std::string, std::string>, std::shared_ptr<std::size_t>> open_;
  std::uint64_t reused_ = 0;
  std::uint64_t parked_ = 0;
  std::uint64_t refused_ = 0;
};

/// `up`, done with, parked in `pool` for the next request to the same place on the path,
/// for `user` (a TLS connection is closed instead: its session tickets arrive as unread
/// bytes).
void release_to_pool(connection_pool& pool, upstream& up, const path_runtime& path,
                     const proxy_target& target, bool to_destination,
                     const std::optional<net::socket_user>& user);

/// The error of a connection fleety may not open: the host's limit on the path.
boost::system::error_code connection_limit_error();

/// A connector through the pool: an idle connection to the same place when there is one,
/// else `inner`'s new connection, counted (and, except to the app's own destination,
/// limited) per host and path; released connections go back to the pool. Not for TLS
/// connections (their session tickets arrive as unread bytes): release closes those.
class pooled_connector final : public upstream_connector {
 public:
  /// `take_idle` false: new connections only (still counted, and kept when released).
  /// `limited` false: for the app's own request, which a direct app would have sent on a
  /// connection of its own: never refused by connections_per_host (still counted), also
  /// when it goes to another path's node because its own path is down.
  pooled_connector(upstream_connector& inner, connection_pool& pool, bool take_idle = true,
                   bool limited = true)
      : inner_(inner), pool_(pool), take_idle_(take_idle), limited_(limited) {}
  awaitable<error_code> async_connect(upstream& up, path_runtime& path, const proxy_target& target,
                                      bool to_destination) override;
  void release(upstream& up, path_runtime& path, const proxy_target& target,
               bool to_destination) override;
  std::optional<net::socket_user> user() const override { return inner_.user(); }

 private:
  upstream_connector& inner_;
  connection_pool& pool_;
  bool take_idle_;
  bool limited_;
};

/// The pool's limits from [proxy].
pool_limits pool_limits_of(const core::config& config);

}  // namespace fleety::mphttp::detail
