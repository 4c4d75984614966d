#pragma once
// Listening sockets for fleetyd's own servers (proxy, interception, metrics), with an
// error that names the address and what to do about it.

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <string>
#include <string_view>

#include "core/expected.hpp"

namespace fleety::net {

/// "127.0.0.1" or "[::]": an address as it is written before ":port".
std::string address_text(const boost::asio::ip::address& address);

/// Opens a listening TCP socket on `endpoint` (SO_REUSEADDR). The error names the address
/// and, when the port is taken, the setting to change (`setting`: "proxy.listen").
/// `v6_only`: an IPv6 socket takes no IPv4 (IPV6_V6ONLY; IPv4 has a listener of its own).
core::expected<boost::asio::ip::tcp::acceptor> listen_on(
    boost::asio::io_context& io, const boost::asio::ip::tcp::endpoint& endpoint,
    std::string_view setting, bool v6_only = false);

/// listen_on for an address written in the config (`address`: "127.0.0.1", "::1"); one
/// that is not an IP address is an error too ("proxy.listen: 'x' is not an IP address").
core::expected<boost::asio::ip::tcp::acceptor> listen_on(boost::asio::io_context& io,
                                                         const std::string& address,
                                                         std::uint16_t port,
                                                         std::string_view setting);

/// Whether `address` is one of this host's own (in this network namespace): loopback, or
/// assigned to an interface, IPv6 link-local ones with their scope. Asked of the kernel
/// (a socket bound to it), so it is right the moment an address comes or goes.
bool is_local_address(const boost::asio::ip::address& address);

}  // namespace fleety::net
