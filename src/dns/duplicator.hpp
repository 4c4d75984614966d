#pragma once
// The DNS duplicator (paper §4.1): an intercepted app's query is sent as it is on every
// path that is up, through that path's resolvers; the app gets the preferred path's
// reply (or the first good one when the preferred path fails or times out: choose_reply);
// every path's answer goes into the DNS information database and into that path's
// resolver cache, so that MPHTTP sends each path's requests to that path's own server.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/udp.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dns/info_db.hpp"
#include "dns/path_resolver.hpp"
#include "net/task_group.hpp"
#include "path/liveness.hpp"

namespace fleety::dns {

/// Asks an app's query on every path. Owns the per-path queries (they may outlive the
/// answer to the app: a late reply still goes into the database); its owner awaits
/// async_stop() before destroying it. Not thread-safe: one io_context thread.
class duplicator {
 public:
  struct path {
    std::string name;
    path_resolver* resolver{};  ///< not owned; outlives the duplicator
  };
  struct counters {
    std::uint64_t queries = 0;
    std::uint64_t malformed = 0;
    std::uint64_t answered_by_fallback = 0;  ///< the preferred path failed or was down
    std::uint64_t failed = 0;                ///< no path gave a usable reply
  };

  /// `paths` in preference order; `executor` runs the per-path queries; `up` says which
  /// paths are up (by index into `paths`; the path monitor's answer), empty: all of them.
  duplicator(const boost::asio::any_io_executor& executor, std::vector<path> paths, info_db& db,
             fleety::path::liveness up = {})
      : paths_(std::move(paths)), db_(db), up_(std::move(up)), queries_(executor) {}

  /// The reply for the app; nullopt for a message too short to answer at all. After
  /// async_stop: SERVFAIL.
  boost::asio::awaitable<std::optional<std::vector<std::uint8_t>>> async_answer(
      std::vector<std::uint8_t> query);

  /// Cancels the per-path queries under way and waits for them.
  boost::asio::awaitable<void> async_stop();

  const counters& stats() const { return stats_; }
  info_db& db() { return db_; }
  /// Path `index` has another name from now on (an uplink took its slot).
  void rename_path(std::size_t index, std::string name) {
    if (index < paths_.size()) paths_[index].name = std::move(name);
  }

 private:
  std::vector<path> paths_;
  info_db& db_;
  fleety::path::liveness up_;
  counters stats_;
  net::task_group queries_;  ///< owns the per-path queries
};

/// Serves DNS over UDP on `socket` until it is closed or the coroutine is cancelled: at
/// most `max_in_flight` queries at once (more are dropped: the app retries), replies
/// truncated (TC) to what the app can take. Owns its queries: when it ends it cancels
/// them and waits for them.
boost::asio::awaitable<void> run_dns_udp(boost::asio::ip::udp::socket socket, duplicator& dns,
                                         std::size_t max_in_flight = 256);

/// Serves DNS over TCP (RFC 7766: length-prefixed messages, several per connection) until
/// the acceptor is closed or the coroutine is cancelled; owns its connections as above.
boost::asio::awaitable<void> run_dns_tcp(boost::asio::ip::tcp::acceptor acceptor, duplicator& dns,
                                         std::size_t max_connections = 64);

}  // namespace fleety::dns
