#pragma once
// Multipath TCP where the server speaks it (paper §3, issue 6 item 8): relayed upstream
// connections opened as MPTCP sockets, their initial subflow on the path the selector
// chose, and the in-kernel path manager's endpoints (`ip mptcp endpoint`) from which the
// kernel opens one more subflow on each other path. A server without MPTCP gets plain TCP:
// the kernel falls back within the same handshake.
//
// Two parts: the pure ones (the fallback decision, the limits, the planning of endpoint
// changes, the generic netlink messages and their parsing; unit-tested with literal
// values) and the I/O (sockets; a libmnl generic netlink socket for the "mptcp_pm" family).

#include <linux/netlink.h>

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/system/error_code.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/expected.hpp"

namespace fleety::net {

/// IPPROTO_MPTCP (Linux 5.6+; <netinet/in.h> names it from glibc 2.32).
inline constexpr int ipproto_mptcp = 262;

/// Whether socket(..., IPPROTO_MPTCP) failing with errno `error` means this kernel has no
/// MPTCP here, so that plain TCP is used instead: EPROTONOSUPPORT (not built in), ENOPROTOOPT
/// (net.mptcp.enabled = 0 in this network namespace), EINVAL and EAFNOSUPPORT (kernels
/// that know no such protocol number for the family). Any other error (EMFILE, ENOBUFS, EPERM)
/// would fail a TCP socket as well: false. Pure.
bool mptcp_unavailable(int error);

/// How an upstream socket was opened.
enum class upstream_kind {
  mptcp,         ///< an MPTCP socket (it may still speak plain TCP: a server without MPTCP)
  tcp_fallback,  ///< plain TCP: this kernel has no MPTCP here (mptcp_unavailable)
};

/// Opens `socket` for `protocol` as an MPTCP socket with what open_bound gives a TCP one:
/// TCP_NODELAY, the own mark (set_own_socket_mark; the kernel copies it to every subflow,
/// so the interception rules let them all pass) and SO_BINDTODEVICE to `interface`. On an
/// MPTCP socket SO_BINDTODEVICE binds the initial subflow only (checked on Linux 6.18:
/// subflows the path manager adds leave from their endpoint's device), so the connection
/// starts on the chosen path. When the kernel has no MPTCP, opens plain TCP (open_bound)
/// and says so in the log once per process. Needs CAP_NET_RAW (and CAP_NET_ADMIN for the
/// mark). `kind`, when given, tells which it opened. The socket is closed on failure.
boost::system::error_code open_bound_mptcp(boost::asio::ip::tcp::socket& socket,
                                           const boost::asio::ip::tcp& protocol,
                                           const std::string& interface,
                                           upstream_kind* kind = nullptr);

/// TCP_IS_MPTCP: true when the connected socket `fd` speaks MPTCP with its peer; false for
/// plain TCP sockets and MPTCP sockets that fell back to TCP (a server without MPTCP).
bool speaks_mptcp(int fd);

/// Flags of an endpoint (MPTCP_PM_ADDR_FLAG_*, linux/mptcp.h).
namespace mptcp_flag {
inline constexpr std::uint32_t signal = 1U << 0;   ///< announced to the peer (servers)
inline constexpr std::uint32_t subflow = 1U << 1;  ///< a subflow is opened from it (clients)
inline constexpr std::uint32_t backup = 1U << 2;   ///< its subflows carry data only when no
                                                   ///< other subflow can (RFC 8684 §3.3.8)
inline constexpr std::uint32_t fullmesh = 1U << 3;
}  // namespace mptcp_flag

/// An endpoint of the in-kernel path manager (`ip mptcp endpoint`).
struct mptcp_endpoint {
  std::uint8_t id = 0;  ///< 1-255, unique in the network namespace
  boost::asio::ip::address address;
  std::uint16_t port = 0;   ///< 0: any
  int ifindex = 0;          ///< the device its subflows are bound to; 0: none
  std::uint32_t flags = 0;  ///< mptcp_flag::*

  bool operator==(const mptcp_endpoint&) const = default;
};

/// The path manager's limits (`ip mptcp limits`), per connection.
struct mptcp_limits {
  std::uint32_t subflows = 0;           ///< additional subflows it may open or accept
  std::uint32_t add_addr_accepted = 0;  ///< addresses announced by the peer it may use

  bool operator==(const mptcp_limits&) const = default;
};

/// The most the kernel allows for either limit (MPTCP_PM_ADDR_MAX).
inline constexpr std::uint32_t mptcp_max_limit = 8;

/// The limits fleetyd needs with `paths` paths: `current` with at least one subflow per path
/// besides the initial one (paths − 1, at most mptcp_max_limit); never lowered. Pure.
mptcp_limits limits_for_paths(const mptcp_limits& current, std::size_t paths);

/// Whether `address` can be an endpoint's: not unspecified, loopback, multicast, IPv4-mapped
/// or IPv6 link-local (a subflow from it would reach no server). Pure.
bool endpoint_address(const boost::asio::ip::address& address);

/// An endpoint fleetyd wants: one per usable address of each path's interface.
struct wanted_endpoint {
  boost::asio::ip::address address;
  int ifindex = 0;
  bool backup = false;  ///< the path is `mptcp_backup` (by default: cellular paths)

  bool operator==(const wanted_endpoint&) const = default;
};

/// What to change in the kernel so that fleetyd's own endpoints are the wanted ones.
struct endpoint_changes {
  std::vector<std::uint8_t> remove;     ///< ids of fleetyd's endpoints no longer wanted
  std::vector<mptcp_endpoint> add;      ///< new endpoints, with free ids chosen
  std::vector<mptcp_endpoint> foreign;  ///< someone else's endpoints on a wanted address:
                                        ///< left as they are, and not fleetyd's
};

/// Plans endpoint changes. `existing`: every endpoint in the kernel now; `ours`: the ids of
/// those fleetyd added (ids no longer in `existing` are forgotten); `wanted`: what the paths
/// need now. An own endpoint stays when a wanted one has its address, device and flags;
/// otherwise it is removed. A wanted endpoint whose address someone else already configured
/// is left to them (never changed or removed); the others are added with flags subflow
/// (plus backup), each with the lowest id in 1-255 that no existing endpoint holds. Pure.
endpoint_changes plan_endpoint_changes(const std::vector<mptcp_endpoint>& existing,
                                       const std::vector<std::uint8_t>& ours,
                                       const std::vector<wanted_endpoint>& wanted);

/// Generic netlink messages (a nlmsghdr, a genlmsghdr, attributes), each a whole request
/// with NLM_F_REQUEST | NLM_F_ACK (dumps: NLM_F_DUMP). `family`: the id of "mptcp_pm" that
/// get_family's reply gives. Pure.
namespace mptcp_message {
/// CTRL_CMD_GETFAMILY for "mptcp_pm".
std::vector<char> get_family(std::uint32_t seq);
/// MPTCP_PM_CMD_ADD_ADDR with the endpoint's id, family, address, port, device and flags.
std::vector<char> add_endpoint(std::uint16_t family, std::uint32_t seq,
                               const mptcp_endpoint& endpoint);
/// MPTCP_PM_CMD_DEL_ADDR by id.
std::vector<char> remove_endpoint(std::uint16_t family, std::uint32_t seq, std::uint8_t id);
/// MPTCP_PM_CMD_GET_ADDR, dumped: one reply per endpoint.
std::vector<char> dump_endpoints(std::uint16_t family, std::uint32_t seq);
/// MPTCP_PM_CMD_GET_LIMITS.
std::vector<char> get_limits(std::uint16_t family, std::uint32_t seq);
/// MPTCP_PM_CMD_SET_LIMITS with both limits.
std::vector<char> set_limits(std::uint16_t family, std::uint32_t seq, const mptcp_limits& limits);

/// The family id in a CTRL_CMD_GETFAMILY reply; nullopt if it has none (or is malformed).
std::optional<std::uint16_t> parse_family_id(const nlmsghdr& message);
/// The endpoint in a MPTCP_PM_CMD_GET_ADDR reply; nullopt if malformed or without an
/// address.
std::optional<mptcp_endpoint> parse_endpoint(const nlmsghdr& message);
/// The limits in a MPTCP_PM_CMD_GET_LIMITS reply; nullopt if malformed.
std::optional<mptcp_limits> parse_limits(const nlmsghdr& message);
}  // namespace mptcp_message

/// The in-kernel path manager of this network namespace, through generic netlink. Each
/// call is one request and its reply (the kernel answers inside the send; a lost reply
/// times out after half a second): blocking, meant for start, exit and link changes.
/// Changes need CAP_NET_ADMIN. Not thread-safe.
class mptcp_path_manager {
 public:
  /// Opens the netlink socket and looks the family up; the error says why not (no MPTCP in
  /// this kernel: the family is unknown).
  static core::expected<std::unique_ptr<mptcp_path_manager>> open();
  ~mptcp_path_manager();
  mptcp_path_manager(const mptcp_path_manager&) = delete;
  mptcp_path_manager& operator=(const mptcp_path_manager&) = delete;

  core::expected<std::vector<mptcp_endpoint>> endpoints();
  core::expected<bool> add(const mptcp_endpoint& endpoint);
  core::expected<bool> remove(std::uint8_t id);
  core::expected<mptcp_limits> limits();
  core::expected<bool> set_limits(const mptcp_limits& limits);

 private:
  struct impl;
  explicit mptcp_path_manager(std::unique_ptr<impl> state);
  std::unique_ptr<impl> impl_;  ///< owned: the socket and the family id
};

/// "198.18.2.2 dev 4 subflow backup (id 2)": an endpoint for logs.
std::string describe(const mptcp_endpoint& endpoint);

}  // namespace fleety::net
