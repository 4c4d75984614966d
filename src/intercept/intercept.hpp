#pragma once
// Transparent interception (paper §5): the enabled apps' TCP and DNS are redirected to
// fleetyd by an nftables table of its own, and the redirected connections are taken
// over with their original destination. The rules are built by a pure function; the
// table is applied atomically with libnftables, owned by the daemon's netlink socket and
// removed on exit — by the kernel when the daemon dies (fail open).

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/config.hpp"
#include "core/expected.hpp"
#include "net/bound_socket.hpp"
#include "path/liveness.hpp"

struct nft_ctx;  // libnftables

namespace fleety::mphttp {
struct proxy_context;
}
namespace fleety::select {
class selector;
class flow_table;
}  // namespace fleety::select
namespace fleety::path {
class monitor;
}

namespace fleety::intercept {

/// The nftables table fleetyd owns (family inet).
inline constexpr std::string_view table_name = "fleety";
/// The cgroup (below the cgroup2 mount) under which `fleety run` puts apps.
inline constexpr std::string_view run_cgroup = "fleety";
/// Whether `name` may name an app of `fleety run` (its cgroup fleety/NAME, a word in the
/// nftables rules): letters, digits, '.', '_' and '-', at most 64, not starting with '.'
/// or '-' — so that no name climbs out of fleety/ ("..") or into the rules' syntax.
bool valid_app_name(std::string_view name);
/// Apps `fleety run` may add beyond the configured ones (each has rules while fleetyd runs).
inline constexpr std::size_t max_run_apps = 256;
/// IPv6 link-local unicast (RFC 4291): destinations only meaningful with their interface.
inline constexpr std::string_view link_local_net = "fe80::/10";

/// An app the rules select: every given selector is a separate match.
struct app_match {
  std::string name;
  std::string cgroup;  ///< below the cgroup2 mount ("fleety/curl"); empty: none
  std::optional<std::uint32_t> uid;
  std::optional<std::uint32_t> gid;
};

struct ruleset_spec {
  std::uint16_t tcp_port = 0;
  std::uint16_t dns_port = 0;
  bool redirect_dns = false;  ///< only once something answers on dns_port
  std::uint32_t own_mark = 0;
  /// Where the cgroup2 hierarchy is, relative to /sys/fs/cgroup ("" on a pure v2 host,
  /// "unified" on a hybrid one): nft resolves cgroup paths from /sys/fs/cgroup.
  std::string cgroup2_prefix;
  std::vector<app_match> apps;
  /// Cgroups (below the mount) of disabled apps inside an enabled one's, e.g. a
  /// disabled `fleety run --app X` below "fleety": they pass before any app rule.
  std::vector<std::string> excluded_cgroups;
  /// `flags owner`: the table lives only as long as the netlink socket that loads it
  /// (nft_session). Off only on a kernel that refuses it (before Linux 5.12).
  bool owned = true;
};

/// The nft script that replaces fleety's table in one transaction: the table is
/// created (so that deleting it cannot fail), deleted, and built again (removal_script). The
/// selected apps' TCP (and DNS) go to 127.0.0.1 / ::1 (redirect), to a link-local IPv6 destination
/// to the app's own address on that link (dnat to its source address: the listener must take IPv6
/// on [::]); an input chain drops what reaches these ports from outside this host.
std::string build_ruleset(const ruleset_spec& spec);

/// The script that removes the table `table` (inet; after creating it, so it never fails);
/// `owned`: the table is ours with `flags owner` (only our nft_session may run this then).
std::string removal_script(bool owned = false, std::string_view table = table_name);

/// The mount point of the cgroup2 hierarchy in a /proc/self/mountinfo text
/// ("/sys/fs/cgroup" or "/sys/fs/cgroup/unified"); nullopt if there is none.
std::optional<std::string> cgroup2_mount_in(std::string_view mountinfo);

/// The cgroup2 mount of this process (reads /proc/self/mountinfo).
core::expected<std::string> cgroup2_mount();

/// The nftables table that keeps fleetyd's local ports to the users [access] allows.
inline constexpr std::string_view access_table_name = "fleety_access";

/// Who may connect to fleetyd's ports from this host (issue 18 item 5).
struct access_spec {
  std::vector<std::uint16_t> tcp_ports;  ///< proxy, intercept, DNS, metrics
  std::vector<std::uint16_t> udp_ports;  ///< DNS
  std::vector<std::uint32_t> uids;       ///< allowed besides root (the group's members)
  std::optional<std::uint32_t> gid;      ///< processes running with this group
  std::string who;                       ///< the rule's comment: "root and group fleety"
  bool owned = true;                     ///< `flags owner`, as the interception table
  bool redirects = false;                ///< interception is on: its redirected connections pass
};

/// The nft script that replaces the access table: in the output hook, a connection's SYN
/// (or a datagram) to one of the ports at a local address from a socket whose owner is
/// not root, not an allowed uid and not the group is refused (TCP reset, EPERM for UDP).
/// With `redirects`, connections the interception table redirected (enrolled apps) pass
/// (`ct status dnat`); without, no rule needs conntrack.
std::string build_access_rules(const access_spec& spec);

/// A group and its members as the system's databases (NSS) say.
struct group_members {
  std::string name;
  std::uint32_t gid = 0;
  std::vector<std::uint32_t> uids;  ///< the members listed in the group (supplementary)
  std::vector<std::string> users;
};
/// Looks `name` up (getgrnam_r, then each member with getpwnam_r). Blocking: at start.
core::expected<group_members> members_of_group(const std::string& name);

/// Runs an nft script through libnftables, on a context of its own. The error is nft's
/// own message.
core::expected<bool> run_nft(const std::string& script);

/// A libnftables context kept open for the daemon's life. Its netlink socket owns the
/// tables it creates with `flags owner` (Linux 5.12): when the socket closes — the daemon
/// exits, crashes, is killed or hung and killed by the watchdog — the kernel deletes them
/// at once, so intercepted apps go direct (fail open). Only this socket may change or
/// delete such a table; others may list it.
class nft_session {
 public:
  nft_session();
  ~nft_session();
  nft_session(const nft_session&) = delete;
  nft_session& operator=(const nft_session&) = delete;

  /// Runs an nft script. The error is nft's own message.
  core::expected<bool> run(const std::string& script);

 private:
  ::nft_ctx* ctx_;
};

/// Owns the access table for the daemon's life (its own netlink socket, so that the
/// table goes with the process as the interception table does).
class access_guard {
 public:
  /// Loads the rules; the error is nft's (no CAP_NET_ADMIN: "Operation not permitted").
  static core::expected<std::unique_ptr<access_guard>> start(access_spec spec);
  /// The group's members again (a user added to it since): the table is replaced in one
  /// transaction; on an error the rules in force stay.
  core::expected<bool> update_members(std::vector<std::uint32_t> uids,
                                      std::optional<std::uint32_t> gid);
  ~access_guard();
  access_guard(const access_guard&) = delete;
  access_guard& operator=(const access_guard&) = delete;

 private:
  explicit access_guard(access_spec spec);
  access_spec spec_;
  nft_session nft_;
  bool loaded_ = false;
};

/// Why a connection that reached the intercept listener must not be relayed, or empty.
/// `original`: its destination before the redirect (none: SO_ORIGINAL_DST had none);
/// `local`: where it reached us; `own_ports`: every port fleetyd listens on;
/// `is_local`: whether an address is this host's (net::is_local_address), asked only of
/// a destination on one of those ports.
/// Refused: a connection that was not redirected (someone connected to the listener
/// itself: we are no open relay), and one whose destination is one of fleetyd's own
/// listeners on this host, any local address (relaying it would come back to fleetyd,
/// again and again, until the connection cap).
std::string refusal_of_intercepted(
    const std::optional<boost::asio::ip::tcp::endpoint>& original,
    const boost::asio::ip::tcp::endpoint& local, const std::vector<std::uint16_t>& own_ports,
    const std::function<bool(const boost::asio::ip::address&)>& is_local);

/// Every TCP port fleetyd listens on (proxy, intercept, DNS, metrics when on).
std::vector<std::uint16_t> own_tcp_ports(const core::config& config);

/// The destination the app connected to before the redirect (SO_ORIGINAL_DST); a
/// link-local IPv6 one carries its scope (the app's interface).
std::optional<boost::asio::ip::tcp::endpoint> original_destination(
    boost::asio::ip::tcp::socket& socket);

/// Which configured app a redirected connection is, and its QoS class.
struct app_identity {
  std::string app;  ///< empty: no configured app (the class is then the default)
  std::string qos;
  /// The owner of the app's socket: fleetyd's upstream sockets for it are theirs too
  /// (net::scoped_socket_user); none for root or when the kernel did not say.
  std::optional<net::socket_user> user;
};

/// Names the app behind a connection from what the kernel says of its socket: the
/// configured app whose cgroup is the socket's (a `fleety run --app NAME` program's is
/// `fleety/NAME`), else the one whose uid owns it; its class is the app's `class`, else
/// `default_class`. Cgroup ids are looked up again (at most once a second) when one is
/// not known, so apps started later are named.
class app_directory {
 public:
  /// `cgroup2_mount`: "/sys/fs/cgroup" or "/sys/fs/cgroup/unified"; empty: by uid only.
  app_directory(std::vector<core::app_config> apps, std::string cgroup2_mount,
                std::string default_class);
  app_identity identify(std::optional<std::uint64_t> cgroup_id, std::uint32_t uid);
  /// The app behind a redirected connection from its local endpoint `app` (the accepted
  /// socket's peer) and its original destination: the kernel names the socket's owner
  /// (net::find_tcp_socket_owner, one sock_diag request), identify() the app. An owner
  /// not found is no app, of the default class.
  app_identity identify_connection(const boost::asio::ip::tcp::endpoint& app,
                                   const boost::asio::ip::tcp::endpoint& destination);

 private:
  void refresh_cgroups(std::chrono::steady_clock::time_point now);
  std::string class_of(const std::string& app) const;

  std::vector<core::app_config> apps_;
  std::string mount_;
  std::string default_class_;
  std::map<std::uint64_t, std::string> cgroup_apps_;  ///< cgroup id → app name
  std::chrono::steady_clock::time_point refreshed_{};
};

/// Where relayed flows (TLS, other TCP) go and how they are followed (issue 6). Owned by
/// fleetyd; outlives the listener. Every member may be empty: then a flow takes the first
/// path that is up and nobody follows it.
struct flow_placement {
  select::selector* selector = nullptr;
  select::flow_table* flows = nullptr;
  /// Measures each relayed flow's socket toward its path.
  path::monitor* monitor = nullptr;
  /// Which paths are up (the monitor's answer); empty: every path is tried.
  path::liveness up;
  /// The app behind a connection: its local endpoint (the accepted socket's peer) and
  /// its original destination.
  std::function<app_identity(const boost::asio::ip::tcp::endpoint& app,
                             const boost::asio::ip::tcp::endpoint& destination)>
      identify;
  /// Over the cellular budget: cellular only when nothing else is up.
  std::function<bool()> cellular_capped;
  /// A relayed flow of `who` ended having received `bytes` on path `path`.
  std::function<void(const app_identity& who, std::size_t path, std::uint64_t bytes)> count;
};

/// Accepts the redirected connections on `acceptor` until it is closed: each is
/// classified on its first bytes (or relayed as bytes when the app says nothing within
/// the peek timeout), HTTP goes to the MPHTTP session, the rest is relayed on the path
/// the selector picks, to the app's original destination.
boost::asio::awaitable<void> run_intercept_listener(boost::asio::ip::tcp::acceptor acceptor,
                                                    mphttp::proxy_context& context,
                                                    flow_placement& placement);

}  // namespace fleety::intercept
