#pragma once
// Moving bytes from one TCP socket to another without copying them through user space:
// splice(2) through a pipe. For relays that don't look at the bytes (the path
// selector's flows, a response body of known length relayed on one path).

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/system/error_code.hpp>
#include <chrono>
#include <cstdint>
#include <optional>

namespace fleety::net {

struct splice_result {
  std::uint64_t moved = 0;
  /// operation_aborted when cancelled, timed_out when a wait exceeded `wait_timeout`,
  /// eof when `from` ended before `limit`; none when `limit` bytes moved or (no limit)
  /// `from` ended, whose end is then passed on (`to`'s sending half shut).
  boost::system::error_code ec;
};

/// Moves `limit` bytes (all until `from` ends, without one) from `from` to `to`. Both
/// sockets are switched to non-blocking mode. Each wait for readiness is bounded by
/// `wait_timeout` when given; `last_activity`, when given, is set whenever bytes move
/// (for a caller that watches several directions for idleness).
boost::asio::awaitable<splice_result> async_splice(
    boost::asio::ip::tcp::socket& from, boost::asio::ip::tcp::socket& to,
    std::optional<std::uint64_t> limit,
    std::optional<std::chrono::steady_clock::duration> wait_timeout,
    std::chrono::steady_clock::time_point* last_activity = nullptr);

}  // namespace fleety::net
