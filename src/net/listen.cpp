#include "net/listen.hpp"

#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/ip/udp.hpp>
#include <boost/asio/ip/v6_only.hpp>

namespace fleety::net {

namespace asio = boost::asio;

std::string address_text(const asio::ip::address& address) {
  return address.is_v6() ? fmt::format("[{}]", address.to_string()) : address.to_string();
}

core::expected<asio::ip::tcp::acceptor> listen_on(asio::io_context& io,
                                                  const asio::ip::tcp::endpoint& endpoint,
                                                  std::string_view setting, bool v6_only) {
  asio::ip::tcp::acceptor acceptor(io);
  boost::system::error_code ec;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec && v6_only && endpoint.address().is_v6())
    acceptor.set_option(asio::ip::v6_only(true), ec);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return core::make_error(fmt::format(
        "cannot listen on {}:{}: {}{}", address_text(endpoint.address()), endpoint.port(),
        ec.message(),
        ec == asio::error::address_in_use
            ? fmt::format(" (another program uses this port: pick another {} or stop it)", setting)
            : ""));
  }
  return acceptor;
}

core::expected<asio::ip::tcp::acceptor> listen_on(asio::io_context& io, const std::string& address,
                                                  std::uint16_t port, std::string_view setting) {
  boost::system::error_code ec;
  const auto ip = asio::ip::make_address(address, ec);
  if (ec) return core::make_error(fmt::format("{}: '{}' is not an IP address", setting, address));
  return listen_on(io, asio::ip::tcp::endpoint(ip, port), setting);
}

bool is_local_address(const asio::ip::address& address) {
  if (address.is_loopback()) return true;
  if (address.is_unspecified() || address.is_multicast()) return false;
  // bind() takes only an address of this host (without IP_FREEBIND): EADDRNOTAVAIL else.
  const asio::ip::udp::endpoint endpoint(address, 0);
  const int fd = ::socket(address.is_v4() ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const bool local = ::bind(fd, endpoint.data(), static_cast<socklen_t>(endpoint.size())) == 0;
  ::close(fd);
  return local;
}

}  // namespace fleety::net
