#pragma once
// Uplink discovery (issue 19): with no [[path]] in the config, every interface that has a
// default route, in any routing table, is a path, and its kind comes from what sysfs says
// of the device. The decisions are pure (facts in, uplinks out: unit-tested with literal
// facts); reading the kernel (an rtnetlink route dump, /sys/class/net) is the thin I/O.

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

// ---- I/O ---------------------------------------------------------------------------

/// Every default route (IPv4 and IPv6, every table) of this network namespace, by an
/// rtnetlink dump; multipath routes give each next hop's interface.
core::expected<std::vector<default_route>> read_default_routes();

/// The facts of `name` under `sysfs` (default /sys/class/net).
interface_facts read_interface_facts(const std::string& name,
                                     const std::string& sysfs = "/sys/class/net");

/// Both: the uplinks of this machine now.
core::expected<std::vector<uplink>> discover_uplinks();

/// The uplinks of this machine as [[path]]s (paths_of, each with its reason in
/// `discovered`); an error that says what to do when there is none.
core::expected<std::vector<core::path_config>> discover_paths();

}  // namespace fleety::path
