#pragma once
// The one way fleetyd connects upstream on a path: a socket bound to the path's interface
// (plain TCP, or MPTCP whose initial subflow leaves there), connected within a deadline.
// The proxy's upstreams, the relayed flows and the monitor's probes all connect so.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/system/error_code.hpp>
#include <chrono>
#include <optional>
#include <string>

#include "net/bound_socket.hpp"

namespace fleety::net {

/// How connect_on_path opens its socket.
enum class transport {
  tcp,    ///< plain TCP (open_bound)
  mptcp,  ///< MPTCP, plain TCP where the kernel has none (open_bound_mptcp)
};

/// Opens `socket` bound to `interface` (empty: unbound) and connects it to `endpoint`,
/// giving up after `timeout` with asio::error::timed_out. Cancellation of the caller's
/// await ends the connect with operation_aborted. On any failure the socket is closed.
/// Needs CAP_NET_RAW for the binding. `user`: the local user whose flow this is; the
/// socket is theirs (scoped_socket_user), so that their owner rules apply to it.
boost::asio::awaitable<boost::system::error_code> async_connect_on_path(
    boost::asio::ip::tcp::socket& socket, const boost::asio::ip::tcp::endpoint& endpoint,
    const std::string& interface, std::chrono::steady_clock::duration timeout,
    transport kind = transport::tcp, std::optional<socket_user> user = std::nullopt);

}  // namespace fleety::net
