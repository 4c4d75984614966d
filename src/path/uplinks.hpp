#pragma once
// Uplink discovery (issue 19): with no [[path]] in the config, every interface that has a
// default route, in any routing table, is a path, and its kind comes from what sysfs says
// of the device. The decisions are pure (facts in, uplinks out: unit-tested with literal
// facts); reading the kernel (an rtnetlink route dump, /sys/class/net) is the thin I/O.

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/config.hpp"
#include "core/expected.hpp"

namespace fleety::path {

/// What sysfs says of one interface (/sys/class/net/NAME).
struct interface_facts {
  std::string name;
  bool present = false;   ///< the sysfs directory exists (not in another /sys)
  bool wireless = false;  ///< has wireless/ or phy80211/ (a Wi-Fi station)
  std::string devtype;    ///< DEVTYPE= of its uevent ("wlan", "wwan", "bridge", ...)
  std::string driver;     ///< its device's driver (device/driver's name): "rndis_host", ...
};

/// A discovered uplink: the interface, its kind and the reason for the kind.
struct uplink {
  std::string interface;
  core::path_kind kind = core::path_kind::wired;
  std::string why;  ///< "sysfs: wireless", "driver cdc_ncm (USB tethering)", "name wlan0"...
  /// Not a path: a tunnel or VPN (tun*, tap*, wg*, DEVTYPE=wireguard), whose packets
  /// leave over an uplink anyway, or a container bridge (docker*, br-*, virbr*).
  bool excluded = false;
  friend bool operator==(const uplink&, const uplink&) = default;
};

/// The kind of an interface: wifi when sysfs shows a wireless device (or DEVTYPE=wlan);
/// cellular when DEVTYPE=wwan or its driver is one of a phone's USB tethering or a
/// modem's (rndis_host, cdc_ether, cdc_ncm, ipheth, qmi_wwan, cdc_mbim); else, from the
/// name (wl*, wlan* → wifi; wwan*, rmnet*, ww*, usb* → cellular); else wired.
uplink classify_uplink(const interface_facts& facts);

/// One default route as the kernel lists it: its interface and table.
struct default_route {
  std::string interface;
  unsigned table = 0;
  unsigned metric = 0;
};

/// The uplinks behind `routes` (each interface once, loopback and fleety's own lab-less
/// virtual devices left out), in preference order: wired, then Wi-Fi, then cellular,
/// then by lowest metric. `facts_of` gives each interface's sysfs facts.
std::vector<uplink> uplinks_from(const std::vector<default_route>& routes,
                                 const std::vector<interface_facts>& facts);

/// The [[path]] a discovered uplink becomes: named by its kind ("wifi", "cellular",
/// "wired"; "wifi-2" for a second one), cost 10 for cellular (0 else), MPTCP backup for
/// cellular, the system's resolvers; `discovered` says why.
std::vector<core::path_config> paths_of(const std::vector<uplink>& uplinks);

// ---- Hot-plug ----------------------------------------------------------------------
// fleetyd keeps a fixed set of path slots while it follows the uplinks: every part of the
// daemon indexes its paths, an index is a preference (cheapest first), and a slot keeps
// both for the daemon's life. So slots have a kind: a new uplink takes a free slot of its
// kind, and one that is gone frees its slot (its path is down meanwhile).

/// The slots fleetyd starts with: the paths found now, and a free slot (empty interface
/// and name) for each kind none was found of, in preference order: wired, Wi-Fi, cellular.
std::vector<core::path_config> slot_layout(const std::vector<core::path_config>& found);

/// One path slot as the hot-plug planner sees it.
struct uplink_slot {
  core::path_kind kind = core::path_kind::wired;
  std::string interface;       ///< empty: free
  std::string name;            ///< the path's name while taken
  std::string last_interface;  ///< who held it last: the same uplink back takes it again
  friend bool operator==(const uplink_slot&, const uplink_slot&) = default;
};

/// A slot taken by a new uplink (`take`), or freed (nullopt).
struct slot_change {
  std::size_t slot = 0;
  std::optional<core::path_config> take;
};

struct slot_plan {
  std::vector<slot_change> changes;  ///< frees first, then takes
  std::vector<uplink> without_slot;  ///< found, but no free slot of their kind is left
};

/// What changes when `found` (uplinks_from, preference order) differs from `slots`: an
/// uplink no longer found frees its slot; a new one takes a free slot of its kind, the one
/// it held last if that is free, else the first, with a name by its kind that no taken
/// slot has ("wifi", then "wifi-2"; paths_of's names and defaults).
slot_plan plan_slots(const std::vector<uplink_slot>& slots, const std::vector<uplink>& found);

// ---- I/O ---------------------------------------------------------------------------

/// Every default route (IPv4 and IPv6, every table) of this network namespace, by an
/// rtnetlink dump; multipath routes give each next hop's interface.
core::expected<std::vector<default_route>> read_default_routes();

/// Whether traffic of a socket bound to `interface` has a route (IPv4) to the Internet: the
/// kernel's answer to `ip route get fibmatch 192.0.2.1 oif INTERFACE` (a default route in a
/// table no rule leads to for it is none). "" when there is one; else what is wrong and how to fix
/// it.
std::string route_problem(const std::string& interface);

/// The facts of `name` under `sysfs` (default /sys/class/net).
interface_facts read_interface_facts(const std::string& name,
                                     const std::string& sysfs = "/sys/class/net");

/// Both: the uplinks of this machine now.
core::expected<std::vector<uplink>> discover_uplinks();

/// The uplinks of this machine as [[path]]s (paths_of, each with its reason in
/// `discovered`, and its link's DNS servers under `root`: with_link_resolvers); none when
/// no interface has a default route (the caller says what that means for it); an error
/// when the routes cannot be read.
core::expected<std::vector<core::path_config>> discover_paths(const std::string& root = "/");

/// `path` with its interface's own DNS servers (link_resolvers.hpp: systemd-resolved,
/// networkd, NetworkManager, DHCP leases under `root`) and `dns_found` saying where they
/// came from; with none found, the system's resolvers (still queried through the
/// interface) and a `dns_found` that says so. A path whose config names servers keeps them.
core::path_config with_link_resolvers(core::path_config path, const std::string& root = "/");

}  // namespace fleety::path
