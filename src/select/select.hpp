#pragma once
// The path selector (paper §4.4) for flows that are not split: TLS, other TCP, and
// HTTP the feature rules keep on one path. Which path a new flow takes, and the relay
// that carries it. The choice is a pure function; the relay is thin I/O (splice(2)).

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <optional>
#include <vector>

namespace fleety::select {

/// What the selector knows of a path when a flow starts.
struct path_state {
  bool up = true;  ///< its interface exists and the last connect on it didn't fail
};

/// The path a new flow tries first: the first up path in preference order (cheapest
/// first); nullopt when none is up. (QoS classes refine this: issue 6.)
std::optional<std::size_t> choose_path(const std::vector<path_state>& paths);

/// Bytes a relay carried each way.
struct relay_totals {
  std::uint64_t app_to_server = 0;
  std::uint64_t server_to_app = 0;
  bool idle_timeout = false;  ///< ended because nothing moved for `idle_timeout`
  bool reset = false;         ///< a side failed: the other was reset to say so
};

/// Relays bytes both ways with splice(2) (no copy through user space) until both
/// sides have closed their sending half, either side fails (the other is then reset),
/// or nothing moves for `idle_timeout`. Bytes the app sent already but fleetyd only
/// peeked at are still in its socket and go first.
boost::asio::awaitable<relay_totals> async_relay(boost::asio::ip::tcp::socket& app,
                                                 boost::asio::ip::tcp::socket& server,
                                                 std::chrono::steady_clock::duration idle_timeout);

}  // namespace fleety::select
