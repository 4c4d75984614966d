#include "net/bound_socket.hpp"

#include <net/if.h>
#include <netinet/in.h>
#include <pwd.h>
#include <spdlog/spdlog.h>
#include <sys/fsuid.h>
#include <sys/socket.h>

#include <boost/asio/io_context.hpp>
#include <cstddef>
#include <map>
#include <vector>

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

std::optional<socket_user> socket_user_of(std::uint32_t uid) {
  if (uid == 0) return std::nullopt;
  // One lookup per uid for the daemon's life; bounded (a host has few users).
  static std::map<std::uint32_t, std::uint32_t> primary_group;
  if (auto it = primary_group.find(uid); it != primary_group.end())
    return socket_user{uid, it->second};
  std::uint32_t gid = uid;
  std::vector<char> buffer(16 * 1024);
  ::passwd entry{};
  ::passwd* found = nullptr;
  if (::getpwuid_r(uid, &entry, buffer.data(), buffer.size(), &found) == 0 && found != nullptr)
    gid = entry.pw_gid;
  if (primary_group.size() >= 4096) primary_group.clear();
  primary_group.emplace(uid, gid);
  return socket_user{uid, gid};
}

scoped_socket_user::scoped_socket_user(const std::optional<socket_user>& user) {
  if (!user) return;
  // setfsgid first: with a user's fsuid, changing the group is still allowed (CAP_SETGID is
  // no file capability), but the order keeps the restore symmetric.
  previous_gid_ = static_cast<std::uint32_t>(::setfsgid(user->gid));
  previous_uid_ = static_cast<std::uint32_t>(::setfsuid(user->uid));
  active_ = true;
  // setfsuid says nothing of failure: ask what it is now.
  if (static_cast<std::uint32_t>(::setfsuid(static_cast<uid_t>(-1))) != user->uid) {
    static bool warned = false;
    if (!warned) {
      warned = true;
      spdlog::warn(
          "upstream sockets cannot take their user's identity (no CAP_SETUID/CAP_SETGID): "
          "they stay root's, and the users' owner-based firewall rules do not see them");
    }
  }
}

scoped_socket_user::~scoped_socket_user() {
  if (!active_) return;
  ::setfsuid(previous_uid_);
  ::setfsgid(previous_gid_);
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
