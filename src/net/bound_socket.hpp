#pragma once
// Sockets that belong to one path: opened bound to the path's interface so that
// they leave through it whatever the routing table says, plus what the kernel
// knows of a connection (TCP_INFO).

#include <boost/asio/ip/tcp.hpp>
#include <boost/system/error_code.hpp>
#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace fleety::net {

/// The mark (SO_MARK) every socket fleetyd opens upstream carries from now on, so that
/// its interception rules let them pass; 0 (the default) marks nothing. Set once at start.
void set_own_socket_mark(std::uint32_t mark);

/// Applies the mark set above to a socket opened elsewhere (c-ares). Needs CAP_NET_ADMIN.
boost::system::error_code apply_own_socket_mark(int fd);

/// Opens `socket` for `protocol` with TCP_NODELAY, marks it (set_own_socket_mark) and binds it to
/// `interface` (SO_BINDTODEVICE). Needs CAP_NET_RAW. An empty interface leaves the socket unbound.
/// The socket is closed again when binding fails.
boost::system::error_code open_bound(boost::asio::ip::tcp::socket& socket,
                                     const boost::asio::ip::tcp& protocol,
                                     const std::string& interface);

/// A local user whose traffic fleetyd relays (the owner of the app's socket).
struct socket_user {
  std::uint32_t uid = 0;
  std::uint32_t gid = 0;
};

/// The user `uid` with their primary group (getpwuid_r, remembered: at most one NSS lookup
/// per uid); nullopt for root, whose sockets need nothing. A uid without a passwd entry
/// keeps gid = uid's own number as its group (as the sock_diag answer gives no gid).
std::optional<socket_user> socket_user_of(std::uint32_t uid);

/// While it lives, the sockets this thread creates belong to `user` (the thread's fsuid and
/// fsgid, what the kernel records as a socket's owner): the firewall's owner rules (nft
/// `meta skuid/skgid`, iptables `-m owner`) and uid routing apply to fleetyd's upstream
/// sockets for a user's flow as they would to the user's own. Nothing for nullopt. Needs
/// CAP_SETUID and CAP_SETGID; without them the sockets stay root's (warned once).
class scoped_socket_user {
 public:
  explicit scoped_socket_user(const std::optional<socket_user>& user);
  ~scoped_socket_user();
  scoped_socket_user(const scoped_socket_user&) = delete;
  scoped_socket_user& operator=(const scoped_socket_user&) = delete;

 private:
  bool active_ = false;
  std::uint32_t previous_uid_ = 0;
  std::uint32_t previous_gid_ = 0;
};

/// Closes with an RST instead of a FIN (SO_LINGER 0): used to stop a response we no
/// longer want without reading the rest of it (paper §4.2: "we reset the connection").
void close_with_reset(boost::asio::ip::tcp::socket& socket);

/// The kernel's view of a TCP connection.
struct tcp_metrics {
  std::chrono::microseconds smoothed_rtt{0};
  std::chrono::microseconds min_rtt{0};
  std::uint64_t delivery_rate_bps = 0;  ///< bits per second; 0 if the kernel gives none
  std::uint32_t retransmits = 0;
};

/// Reads TCP_INFO; nullopt if the socket is not a connected TCP socket.
std::optional<tcp_metrics> read_tcp_metrics(boost::asio::ip::tcp::socket& socket);

/// True when a network interface of that name exists in this network namespace.
bool interface_exists(const std::string& interface);

/// Why this process may not bind sockets to the first of `interfaces` that exists (no
/// CAP_NET_RAW: every upstream socket would fail, one request at a time), with what to do;
/// empty when it may (or none exists).
std::string bind_permission_problem(const std::vector<std::string>& interfaces);

}  // namespace fleety::net
