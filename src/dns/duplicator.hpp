#pragma once
// The DNS duplicator (paper §4.1): an intercepted app's query is sent as it is on every
// path that is up, through that path's resolvers; the app gets the preferred path's
// reply (or the first good one when the preferred path fails or times out); every
// path's answer goes into the DNS information database and into that path's resolver
// cache, so that MPHTTP sends each path's requests to that path's own server.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/udp.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dns/info_db.hpp"
#include "dns/path_resolver.hpp"

namespace fleety::dns {

class duplicator {
 public:
  struct path {
    std::string name;
    std::string interface;      ///< the path is up while this interface exists
    path_resolver* resolver{};  ///< not owned; outlives the duplicator
  };
  struct counters {
    std::uint64_t queries = 0;
    std::uint64_t malformed = 0;
    std::uint64_t answered_by_fallback = 0;  ///< the preferred path failed or was down
    std::uint64_t failed = 0;                ///< no path gave a usable reply
  };

  /// `paths` in preference order.
  duplicator(std::vector<path> paths, info_db& db) : paths_(std::move(paths)), db_(db) {}

  /// The reply for the app; nullopt for a message too short to answer at all.
  boost::asio::awaitable<std::optional<std::vector<std::uint8_t>>> async_answer(
      std::vector<std::uint8_t> query);

  const counters& stats() const { return stats_; }
  info_db& db() { return db_; }

 private:
  std::vector<path> paths_;
  info_db& db_;
  counters stats_;
};

/// Serves DNS over UDP on `socket` until it is closed: at most `max_in_flight` queries
/// at once (more are dropped: the app retries), replies truncated (TC) to what the
/// app can take.
boost::asio::awaitable<void> run_dns_udp(boost::asio::ip::udp::socket socket, duplicator& dns,
                                         std::size_t max_in_flight = 256);

/// Serves DNS over TCP (RFC 7766: length-prefixed messages, several per connection).
boost::asio::awaitable<void> run_dns_tcp(boost::asio::ip::tcp::acceptor acceptor, duplicator& dns,
                                         std::size_t max_connections = 64);

}  // namespace fleety::dns
