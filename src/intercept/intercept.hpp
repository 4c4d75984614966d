#pragma once
// Transparent interception (paper §5): the enabled apps' TCP and DNS are redirected to
// fleetyd by an nftables table of its own, and the redirected connections are taken
// over with their original destination. The rules are built by a pure function; the
// table is applied atomically with libnftables and removed on exit.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/expected.hpp"

namespace fleety::mphttp {
struct proxy_context;
}

namespace fleety::intercept {

/// The nftables table fleetyd owns (family inet).
inline constexpr std::string_view table_name = "fleety";
/// The cgroup (below the cgroup2 mount) under which `fleety run` puts apps.
inline constexpr std::string_view run_cgroup = "fleety";

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
};

/// The nft script that replaces fleety's table in one transaction: the table is
/// created (so that deleting it cannot fail), deleted, and built again.
std::string build_ruleset(const ruleset_spec& spec);

/// The script that removes the table (after creating it, so it never fails).
std::string removal_script();

/// The mount point of the cgroup2 hierarchy in a /proc/self/mountinfo text
/// ("/sys/fs/cgroup" or "/sys/fs/cgroup/unified"); nullopt if there is none.
std::optional<std::string> cgroup2_mount_in(std::string_view mountinfo);

/// The cgroup2 mount of this process (reads /proc/self/mountinfo).
core::expected<std::string> cgroup2_mount();

/// Runs an nft script through libnftables. The error is nft's own message.
core::expected<bool> run_nft(const std::string& script);

/// The destination the app connected to before the redirect (SO_ORIGINAL_DST).
std::optional<boost::asio::ip::tcp::endpoint> original_destination(
    boost::asio::ip::tcp::socket& socket);

/// Accepts the redirected connections on `acceptor` until it is closed: each is
/// classified on its first bytes (or relayed as bytes when the app says nothing within
/// the peek timeout), HTTP goes to the MPHTTP session, the rest is relayed on the path
/// the selector picks, to the app's original destination.
boost::asio::awaitable<void> run_intercept_listener(boost::asio::ip::tcp::acceptor acceptor,
                                                    mphttp::proxy_context& context);

}  // namespace fleety::intercept
