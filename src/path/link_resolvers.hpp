#pragma once
// Per-link DNS resolver discovery: each uplink has its own DNS servers (the Wi-Fi LAN's
// router is not reachable over cellular), and the machine's network managers write them
// down per link. The parsers are pure (file text in, servers out: unit-tested with literal
// files); reading the state files under a root is the thin I/O.

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace fleety::path {

/// A link's DNS servers and where they were found.
struct link_resolvers {
  /// In our `dns_servers` form ("192.168.1.1", "[2001:db8::53]:5353"), at most
  /// max_link_servers, without duplicates, in the order the source lists them.
  std::vector<std::string> servers;
  std::string source;  ///< "systemd-resolved", ... (see find_link_resolvers); empty: none
  std::string file;    ///< the file they came from, under the root; empty when none
  /// Files passed over and why ("/run/...: more than 1048576 bytes"); missing files are
  /// normal and not listed.
  std::vector<std::string> ignored;
};

/// The most servers kept per link (the parsers drop the rest).
inline constexpr std::size_t max_link_servers = 8;

/// The largest state or lease file read; a bigger one is ignored (listed in `ignored`).
inline constexpr std::size_t max_state_file_bytes = std::size_t{1} << 20;

/// One server as a state file writes it (`ADDR`, `ADDR:PORT`, `[V6ADDR]:PORT`,
/// `ADDR%IFINDEX`, `ADDR#server.name`, or combinations such as `[fe80::1]:53%3#name`) in
/// our form: "198.18.0.53", "198.18.0.53:5353", "2001:db8::1", "[2001:db8::1]:5353"
/// (port 53, the default, is left out; IPv4-mapped IPv6 becomes IPv4). nullopt for what
/// our resolver cannot use: not an IP address, a bad port, loopback (127.0.0.0/8, ::1: a
/// local stub is no per-link server), link-local IPv6 (fe80::/10: needs a scope), the
/// unspecified, broadcast and multicast addresses.
std::optional<std::string> normalized_server(std::string_view written);

/// The servers of a systemd-resolved per-link state file (/run/systemd/resolve/netif/N):
/// its `SERVERS=` line, space-separated.
std::vector<std::string> servers_of_resolved_link(std::string_view state_file_text);

/// The servers of a systemd-networkd link state file (/run/systemd/netif/links/N) or DHCP
/// lease (/run/systemd/netif/leases/N): its `DNS=` line, space-separated.
std::vector<std::string> servers_of_networkd_link(std::string_view state_file_text);

/// The servers of a NetworkManager device file (/run/NetworkManager/devices/N, an INI
/// keyfile): `domain_name_servers` of [dhcp4], then `dhcp6_name_servers` of [dhcp6].
std::vector<std::string> servers_of_networkmanager_device(std::string_view keyfile_text);

/// The servers of dhclient's leases for `interface`: `option domain-name-servers` of the
/// last `lease { }` block whose `interface "NAME";` is `interface`, then `option
/// dhcp6.name-servers` of the last such `lease6 { }` block. A block with no interface line
/// counts only when `per_interface_file` (a file of that interface's leases alone).
std::vector<std::string> servers_of_dhclient_leases(std::string_view text,
                                                    std::string_view interface,
                                                    bool per_interface_file);

/// The servers of a raw DHCP message (a dhcpcd lease file): the 4-byte IPv4 addresses of
/// option 6 (RFC 2132 §3.8; split instances are joined, RFC 3396). Empty when the message
/// is shorter than its header, lacks the magic cookie (RFC 2131 §3), has an option that
/// runs past its end, or has an option 6 whose length is not a multiple of 4. Every read is
/// bounds-checked: any bytes are safe.
std::vector<std::string> servers_of_dhcp_message(std::span<const unsigned char> message);

// ---- I/O ---------------------------------------------------------------------------

/// The DNS servers of the link `interface` (kernel index `ifindex`), from the machine's
/// state files under `root` ("/" on a real machine), first source that names a server wins:
///   1. "systemd-resolved": run/systemd/resolve/netif/IFINDEX;
///   2. "systemd-networkd": run/systemd/netif/links/IFINDEX, then "systemd-networkd lease":
///      run/systemd/netif/leases/IFINDEX;
///   3. "NetworkManager": run/NetworkManager/devices/IFINDEX;
///   4. "dhclient lease": var/lib/dhcp/dhclient.IFACE.leases, var/lib/dhcp/dhclient-*-IFACE.lease
///      (newest first), var/lib/dhcp/dhclient.leases, var/lib/dhclient/dhclient-*-IFACE.lease,
///      var/lib/dhclient/dhclient.leases;
///   5. "dhcpcd lease": var/lib/dhcpcd/IFACE.lease, var/lib/dhcpcd5/dhcpcd-IFACE.lease,
///      var/db/dhcpcd/IFACE.lease, var/db/dhcpcd-IFACE.lease.
/// ifindex 0 skips 1-3; an interface name Linux would refuse (empty, "..", "a/b", longer
/// than 15) skips 4-5, so that no name leads out of those directories.
/// Blocking file reads (each at most max_state_file_bytes): call it at start-up or off the
/// io_context thread. Never throws for what the files hold or lack.
link_resolvers find_link_resolvers(const std::string& interface, unsigned ifindex,
                                   const std::string& root = "/");

}  // namespace fleety::path
