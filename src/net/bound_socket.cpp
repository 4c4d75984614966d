#include "net/bound_socket.hpp"

#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <boost/asio/io_context.hpp>
#include <cstddef>

#include "net/kernel_tcp_info.hpp"

namespace fleety::net {
namespace {
std::uint32_t own_socket_mark = 0;
}  // namespace

void set_own_socket_mark(std::uint32_t mark) {
  own_socket_mark = mark;
}

boost::system::error_code apply_own_socket_mark(int fd) {
  boost::system::error_code ec;
  if (own_socket_mark == 0) return ec;
  if (::setsockopt(fd, SOL_SOCKET, SO_MARK, &own_socket_mark, sizeof own_socket_mark) != 0)
    ec.assign(errno, boost::system::system_category());
  return ec;
}

boost::system::error_code open_bound(boost::asio::ip::tcp::socket& socket,
                                     const boost::asio::ip::tcp& protocol,
                                     const std::string& interface) {
  boost::system::error_code ec;
  socket.open(protocol, ec);
  if (ec) return ec;
  // Requests and relayed messages are written whole: Nagle would only delay their last
  // segment behind the peer's delayed ACK.
  socket.set_option(boost::asio::ip::tcp::no_delay(true), ec);
  if (ec || (ec = apply_own_socket_mark(socket.native_handle()))) {
    boost::system::error_code ignored;
    socket.close(ignored);
    return ec;
  }
  if (interface.empty()) return ec;
  if (::setsockopt(socket.native_handle(), SOL_SOCKET, SO_BINDTODEVICE, interface.data(),
                   static_cast<socklen_t>(interface.size())) != 0) {
    ec.assign(errno, boost::system::system_category());
    boost::system::error_code ignored;
    socket.close(ignored);
  }
  return ec;
}

void close_with_reset(boost::asio::ip::tcp::socket& socket) {
  if (!socket.is_open()) return;
  boost::system::error_code ignored;
  socket.set_option(boost::asio::socket_base::linger(true, 0), ignored);
  socket.close(ignored);
}

std::optional<tcp_metrics> read_tcp_metrics(boost::asio::ip::tcp::socket& socket) {
  if (!socket.is_open()) return std::nullopt;
  kernel_tcp_sample sample;
  if (!read_kernel_tcp_info(socket.native_handle(), sample)) return std::nullopt;
  tcp_metrics metrics;
  metrics.smoothed_rtt = std::chrono::microseconds(sample.rtt_us);
  metrics.min_rtt = std::chrono::microseconds(sample.min_rtt_us);
  metrics.delivery_rate_bps = sample.delivery_rate_Bps * 8;
  metrics.retransmits = sample.total_retrans;
  return metrics;
}

bool interface_exists(const std::string& interface) {
  return ::if_nametoindex(interface.c_str()) != 0;
}

std::string bind_permission_problem(const std::vector<std::string>& interfaces) {
  for (const auto& interface : interfaces) {
    if (!interface_exists(interface)) continue;
    boost::asio::io_context io;
    boost::asio::ip::tcp::socket probe(io);
    if (open_bound(probe, boost::asio::ip::tcp::v4(), interface) !=
        boost::system::errc::operation_not_permitted)
      return {};
    return "not allowed to bind sockets to " + interface +
           " (SO_BINDTODEVICE needs CAP_NET_RAW on this kernel): run it as root, or give it "
           "CAP_NET_RAW and CAP_NET_ADMIN (the systemd unit does)";
  }
  return {};
}

}  // namespace fleety::net
