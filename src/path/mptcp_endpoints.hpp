#pragma once
// [mptcp] (issue 6, item 8): the endpoints of the kernel's MPTCP path manager from which
// relayed MPTCP connections get a subflow on each other path. One per path's interface and
// address family, for its primary address (flags subflow, plus backup for mptcp_backup
// paths: by default the cellular ones), bound to that interface; kept in step with address
// changes, which it hears from the path monitor's link watcher (the daemon has one); the
// subflow limit raised to paths − 1. Endpoints someone else configured are left as they
// are. With the object go fleetyd's own endpoints, and the limits it raised come back
// (unless changed meanwhile).
//
// The planning is pure (wanted_endpoints here, net::plan_endpoint_changes); the class is
// the I/O (generic netlink through net::mptcp_path_manager, getifaddrs).

#include <boost/asio/ip/address.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/config.hpp"
#include "net/mptcp.hpp"
#include "path/link_watcher.hpp"
#include "path/monitor.hpp"

namespace fleety::path {

/// A path's interface as the endpoints need it.
struct path_addresses {
  std::string path;     ///< its name, for logs
  int ifindex = 0;      ///< 0: the interface does not exist now
  bool backup = false;  ///< the path is mptcp_backup
  /// The interface's addresses, primary first (in the kernel's order).
  std::vector<boost::asio::ip::address> addresses;
};

/// An endpoint fleetyd wants, with the path it is for.
struct planned_endpoint {
  net::wanted_endpoint endpoint;
  std::string path;
};

/// The endpoints the paths need now: per existing interface, one per address family for
/// its first address that can be an endpoint's (net::endpoint_address). Pure.
std::vector<planned_endpoint> wanted_endpoints(const std::vector<path_addresses>& paths);

/// Whether a link change can change the wanted endpoints: the interface came or went, or
/// its addresses changed (flags alone don't). Pure.
bool changes_endpoints(const link_state& before, const link_state& after);

/// Of `ours` (the ids fleetyd added), those still in `existing` (someone may have removed
/// one meanwhile). Pure.
std::vector<std::uint8_t> still_ours(const std::vector<net::mptcp_endpoint>& existing,
                                     const std::vector<std::uint8_t>& ours);

/// Keeps the kernel's endpoints in line with the paths' addresses. Not thread-safe.
class mptcp_endpoints {
 public:
  /// Raises the limits, adds the endpoints, and subscribes to `links`' link changes (the
  /// monitor must be started and outlive the object). Null (after a warning) when the path
  /// manager cannot be used: relayed flows are then MPTCP on their initial path only.
  static std::unique_ptr<mptcp_endpoints> start(monitor& links, const core::config& config);

  /// Removes fleetyd's endpoints; restores the limits it raised.
  ~mptcp_endpoints();
  mptcp_endpoints(const mptcp_endpoints&) = delete;
  mptcp_endpoints& operator=(const mptcp_endpoints&) = delete;

  /// A watched interface changed (the monitor's link_handler): syncs when it matters.
  void on_link_change(const link_state& before, const link_state& after);

 private:
  mptcp_endpoints(const core::config& config, std::unique_ptr<net::mptcp_path_manager> manager);
  void raise_limits();
  /// Brings the kernel's endpoints in line with the paths' addresses now.
  void sync();

  const core::config& config_;
  std::unique_ptr<net::mptcp_path_manager> manager_;  ///< owned; the kernel's path manager
  monitor::link_subscription links_;                  ///< dropped first: no sync after that
  std::vector<std::uint8_t> ours_;                    ///< ids of the endpoints fleetyd added
  std::set<std::uint8_t> reported_;                   ///< someone else's endpoints already logged
  /// The limits before and after fleetyd raised them; empty when it did not.
  std::optional<std::pair<net::mptcp_limits, net::mptcp_limits>> raised_;
};

}  // namespace fleety::path
