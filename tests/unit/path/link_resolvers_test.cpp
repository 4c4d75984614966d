#include "path/link_resolvers.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <vector>

namespace fleety::path {
namespace {

namespace fs = std::filesystem;
using servers = std::vector<std::string>;

// ---- normalized_server -------------------------------------------------------------

TEST(LinkResolversNormalizedServer, EveryWrittenFormBecomesOurs) {
  const std::vector<std::pair<const char*, std::optional<std::string>>> table = {
      // written                              ours
      {"192.168.1.1", "192.168.1.1"},
      {"  192.168.1.1\n", "192.168.1.1"},
      {"198.18.0.53:5353", "198.18.0.53:5353"},
      {"198.18.0.53:53", "198.18.0.53"},  // the default port is left out
      {"8.8.8.8%2", "8.8.8.8"},
      {"1.1.1.1#cloudflare-dns.com", "1.1.1.1"},
      {"1.1.1.1:53#cloudflare-dns.com", "1.1.1.1"},
      {"1.1.1.1:853%3#cloudflare-dns.com", "1.1.1.1:853"},
      {"2001:db8::1", "2001:db8::1"},
      {"2001:DB8:0:0::1", "2001:db8::1"},  // inet_ntop's canonical form
      {"[2001:db8::1]", "2001:db8::1"},
      {"[2001:db8::1]:53", "2001:db8::1"},
      {"[2001:db8::1]:5353", "[2001:db8::1]:5353"},
      {"[2001:db8::1]:5353%3#dns.example", "[2001:db8::1]:5353"},
      {"[2001:db8::1%3]:5353", "[2001:db8::1]:5353"},
      {"2001:db8::1%3", "2001:db8::1"},
      {"2001:db8::1#dns.example", "2001:db8::1"},
      {"::ffff:192.0.2.1", "192.0.2.1"},  // IPv4-mapped
      {"[::ffff:192.0.2.1]:5353", "192.0.2.1:5353"},
      {"169.254.1.1", "169.254.1.1"},  // IPv4 link-local needs no scope
      // Link-local IPv6: needs a scope our resolver cannot take.
      {"fe80::1", std::nullopt},
      {"fe80::1%3", std::nullopt},
      {"[fe80::1]:53%3#name", std::nullopt},
      {"febf::1", std::nullopt},
      // Loopback: a local stub, not the link's server.
      {"127.0.0.53", std::nullopt},
      {"127.0.0.1:5353", std::nullopt},
      {"::1", std::nullopt},
      {"[::1]:53", std::nullopt},
      {"::ffff:127.0.0.1", std::nullopt},
      // Nobody's server.
      {"0.0.0.0", std::nullopt},
      {"::", std::nullopt},
      {"255.255.255.255", std::nullopt},
      {"224.0.0.251", std::nullopt},
      {"ff02::fb", std::nullopt},
      // Garbage.
      {"", std::nullopt},
      {"   ", std::nullopt},
      {"#name", std::nullopt},
      {"dns.example", std::nullopt},
      {"192.168.1", std::nullopt},
      {"192.168.1.256", std::nullopt},
      {"192.168.01.1", std::nullopt},
      {"192.168.1.1:", std::nullopt},
      {"192.168.1.1:0", std::nullopt},
      {"192.168.1.1:65536", std::nullopt},
      {"192.168.1.1:-53", std::nullopt},
      {"192.168.1.1:+53", std::nullopt},
      {"192.168.1.1:53x", std::nullopt},
      {"[192.168.1.1]:53", std::nullopt},  // brackets are for IPv6
      {"[2001:db8::1", std::nullopt},
      {"[2001:db8::1]53", std::nullopt},
      {"[2001:db8::1]:", std::nullopt},
      {"2001:db8::1::2", std::nullopt},
      {"[]:53", std::nullopt},
  };
  for (const auto& [written, ours] : table)
    EXPECT_EQ(normalized_server(written), ours) << '"' << written << '"';
}

// ---- systemd ---------------------------------------------------------------------

TEST(LinkResolversParse, ResolvedLinkServersLine) {
  // /run/systemd/resolve/netif/2, as systemd-resolved 252 writes it.
  constexpr std::string_view state =
      "# This is private data. Do not parse.\n"
      "LLMNR=yes\n"
      "MDNS=no\n"
      "DNSSEC=no\n"
      "SERVERS=192.168.1.1 [2001:db8::1]:53#dns.example 8.8.8.8%2\n"
      "DOMAINS=lan\n";
  EXPECT_EQ(servers_of_resolved_link(state), (servers{"192.168.1.1", "2001:db8::1", "8.8.8.8"}));
  // No SERVERS= line, or one that names nothing usable.
  EXPECT_EQ(servers_of_resolved_link("# This is private data. Do not parse.\nLLMNR=yes\n"),
            servers{});
  EXPECT_EQ(servers_of_resolved_link("SERVERS=\n"), servers{});
  EXPECT_EQ(servers_of_resolved_link("SERVERS=127.0.0.53 fe80::1%2 router.lan\n"), servers{});
  // A commented-out line and a key that only starts like it do not count.
  EXPECT_EQ(servers_of_resolved_link("#SERVERS=9.9.9.9\nSERVERS_X=9.9.9.9\n"), servers{});
  EXPECT_EQ(servers_of_resolved_link(""), servers{});
}

TEST(LinkResolversParse, NetworkdLinkAndLeaseDnsLine) {
  // /run/systemd/netif/links/2: DNSSEC= and DNS_... must not pass for DNS=.
  constexpr std::string_view link =
      "# This is private data. Do not parse.\n"
      "ADMIN_STATE=configured\n"
      "OPER_STATE=routable\n"
      "CARRIER_STATE=carrier\n"
      "ADDRESS_STATE=routable\n"
      "REQUIRED_FOR_ONLINE=yes\n"
      "NETWORK_FILE=/etc/systemd/network/20-wired.network\n"
      "NETWORK_FILE_DROPINS=\"\"\n"
      "DNSSEC=no\n"
      "DNS=192.168.1.1 fe80::1%2 [2001:db8::53]:5353#dns.example 192.168.1.1:53\n"
      "NTP=192.168.1.1\n"
      "SIP=\n"
      "DOMAINS=lan\n"
      "ROUTE_DOMAINS=\n"
      "LLMNR=yes\n"
      "MDNS=no\n"
      "DHCP_LEASE=/run/systemd/netif/leases/2\n";
  EXPECT_EQ(servers_of_networkd_link(link), (servers{"192.168.1.1", "[2001:db8::53]:5353"}));
  // /run/systemd/netif/leases/2.
  constexpr std::string_view lease =
      "# This is private data. Do not parse.\n"
      "ADDRESS=192.168.1.23\n"
      "NETMASK=255.255.255.0\n"
      "ROUTER=192.168.1.1\n"
      "SERVER_ADDRESS=192.168.1.1\n"
      "T1=43200\n"
      "T2=75600\n"
      "LIFETIME=86400\n"
      "DNS=192.168.1.1 1.1.1.1\n"
      "DOMAINNAME=lan\n"
      "CLIENTID=ff0a1b2c3d000100012d1e894a52540012345600\n";
  EXPECT_EQ(servers_of_networkd_link(lease), (servers{"192.168.1.1", "1.1.1.1"}));
  EXPECT_EQ(servers_of_networkd_link("ADMIN_STATE=configured\nDNS=\nNTP=\n"), servers{});
}

TEST(LinkResolversParse, DuplicatesGoAndEightAreKept) {
  EXPECT_EQ(servers_of_resolved_link("SERVERS=9.9.9.9 9.9.9.9:53 9.9.9.9%3 9.9.9.9#quad9 "
                                     "9.9.9.9:5353\n"),
            (servers{"9.9.9.9", "9.9.9.9:5353"}));
  EXPECT_EQ(servers_of_networkd_link("DNS=10.0.0.1 10.0.0.2 10.0.0.3 10.0.0.4 10.0.0.5 10.0.0.6 "
                                     "127.0.0.1 10.0.0.7 10.0.0.8 10.0.0.9 10.0.0.10\n"),
            (servers{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6",
                     "10.0.0.7", "10.0.0.8"}));
}

// ---- NetworkManager ------------------------------------------------------------------

TEST(LinkResolversParse, NetworkManagerDeviceDhcpSections) {
  // /run/NetworkManager/devices/3.
  constexpr std::string_view device =
      "[device]\n"
      "managed=true\n"
      "perm-hw-addr-fake=\n"
      "connection-uuid=2b0f8a0c-5f8e-4d41-9a2f-1c2d3e4f5a6b\n"
      "nm-owned=false\n"
      "route-metric-default-aspired=600\n"
      "route-metric-default-effective=600\n"
      "domain_name_servers=203.0.113.9\n"  // not in [dhcp4]: not a lease option
      "\n"
      "[dhcp4]\n"
      "broadcast_address=192.168.1.255\n"
      "dhcp_lease_time=86400\n"
      "dhcp_server_identifier=192.168.1.1\n"
      "domain_name=lan\n"
      "domain_name_servers=192.168.1.1 9.9.9.9\n"
      "expiry=1733460000\n"
      "ip_address=192.168.1.23\n"
      "routers=192.168.1.1\n"
      "subnet_mask=255.255.255.0\n"
      "\n"
      "[dhcp6]\n"
      "# a comment\n"
      "dhcp6_name_servers = 2001:db8::53 fe80::1\n";
  EXPECT_EQ(servers_of_networkmanager_device(device),
            (servers{"192.168.1.1", "9.9.9.9", "2001:db8::53"}));
  // Only [device]: NM does not run DHCP on this link.
  EXPECT_EQ(servers_of_networkmanager_device("[device]\nmanaged=true\n"), servers{});
  // [dhcp6] alone.
  EXPECT_EQ(servers_of_networkmanager_device("[dhcp6]\ndhcp6_name_servers=2001:db8::53\n"),
            servers{"2001:db8::53"});
  // A broken section header ends the [dhcp4] section.
  EXPECT_EQ(servers_of_networkmanager_device("[dhcp4\ndomain_name_servers=192.168.1.1\n"),
            servers{});
}

// ---- dhclient ----------------------------------------------------------------------

constexpr std::string_view two_interfaces =
    "lease {\n"
    "  interface \"eth0\";\n"
    "  fixed-address 192.168.1.100;\n"
    "  option subnet-mask 255.255.255.0;\n"
    "  option routers 192.168.1.1;\n"
    "  option dhcp-lease-time 86400;\n"
    "  option dhcp-message-type 5;\n"
    "  option domain-name-servers 192.168.1.1,8.8.8.8;\n"
    "  option dhcp-server-identifier 192.168.1.1;\n"
    "  option domain-name \"home.example\";\n"
    "  renew 2 2024/12/03 10:16:41;\n"
    "  rebind 3 2024/12/04 06:12:10;\n"
    "  expire 3 2024/12/04 09:12:10;\n"
    "}\n"
    "lease {\n"
    "  interface \"wlan0\";\n"
    "  fixed-address 10.0.0.23;\n"
    "  option domain-name-servers 10.0.0.1;\n"
    "  renew 2 2024/12/03 11:00:00;\n"
    "}\n"
    "lease {\n"
    "  interface \"eth0\";\n"
    "  fixed-address 192.168.1.100;\n"
    "  # the newest lease of eth0\n"
    "  option domain-name \"tricky; } { \\\"quoted\\\" #\";\n"
    "  option domain-name-servers 192.168.1.254, 9.9.9.9;\n"
    "}\n";

TEST(LinkResolversParse, DhclientTakesTheLastLeaseOfTheInterface) {
  EXPECT_EQ(servers_of_dhclient_leases(two_interfaces, "eth0", /*per_interface_file=*/false),
            (servers{"192.168.1.254", "9.9.9.9"}));
  EXPECT_EQ(servers_of_dhclient_leases(two_interfaces, "wlan0", /*per_interface_file=*/false),
            servers{"10.0.0.1"});
  EXPECT_EQ(servers_of_dhclient_leases(two_interfaces, "wwan0", /*per_interface_file=*/false),
            servers{});
  // The interface's newest lease has no DNS option: the older one's servers are stale.
  const std::string newest_without_dns = std::string(two_interfaces) +
                                         "lease {\n  interface \"wlan0\";\n"
                                         "  fixed-address 10.0.0.24;\n}\n";
  EXPECT_EQ(servers_of_dhclient_leases(newest_without_dns, "wlan0", false), servers{});
}

TEST(LinkResolversParse, DhclientBlocksWithoutInterfaceCountOnlyInTheirOwnFile) {
  constexpr std::string_view own_file =
      "default-duid \"\\000\\001\\000\\001\\055\\036\\211\\112RT\\000\\0224V\";\n"
      "lease {\n"
      "  fixed-address 10.1.2.3;\n"
      "  option domain-name-servers 10.1.0.1;\n"
      "}\n";
  EXPECT_EQ(servers_of_dhclient_leases(own_file, "eth0", /*per_interface_file=*/true),
            servers{"10.1.0.1"});
  EXPECT_EQ(servers_of_dhclient_leases(own_file, "eth0", /*per_interface_file=*/false), servers{});
  // An interface line still rules in an interface's own file.
  EXPECT_EQ(servers_of_dhclient_leases(two_interfaces, "eth1", /*per_interface_file=*/true),
            servers{});
}

TEST(LinkResolversParse, DhclientIpv4ThenIpv6Leases) {
  constexpr std::string_view leases =
      "lease6 {\n"
      "  interface \"eth0\";\n"
      "  ia-na 1e:34:56:78 {\n"
      "    starts 1733400000;\n"
      "    option dhcp6.name-servers 2001:db8::99;\n"  // nested: not the lease's option
      "    iaaddr 2001:db8::100 {\n"
      "      starts 1733400000;\n"
      "      preferred-life 3600;\n"
      "      max-life 7200;\n"
      "    }\n"
      "  }\n"
      "  option dhcp6.client-id 0:1:0:1:2d:1e:89:4a:52:54:0:12:34:56;\n"
      "  option dhcp6.name-servers 2001:db8::53,2001:db8::54;\n"
      "}\n"
      "lease {\n"
      "  interface \"eth0\";\n"
      "  option domain-name-servers 192.168.1.1;\n"
      "}\n";
  EXPECT_EQ(servers_of_dhclient_leases(leases, "eth0", false),
            (servers{"192.168.1.1", "2001:db8::53", "2001:db8::54"}));
}

TEST(LinkResolversParse, DhclientLeaseCutShortDoesNotCount) {
  const std::string cut = std::string(two_interfaces) +
                          "lease {\n  interface \"eth0\";\n"
                          "  option domain-name-servers 172.16.0.1;\n";
  EXPECT_EQ(servers_of_dhclient_leases(cut, "eth0", false), (servers{"192.168.1.254", "9.9.9.9"}));
  // Stray braces and an unterminated string: no crash, nothing made up.
  EXPECT_EQ(servers_of_dhclient_leases("}}} lease { interface \"eth0", "eth0", true), servers{});
}

TEST(LinkResolversParse, EveryPrefixOfAStateFileIsSafe) {
  // Files cut anywhere (a write in progress): no crash, and never a server that the whole
  // file does not name.
  const auto whole = servers_of_dhclient_leases(two_interfaces, "eth0", false);
  for (std::size_t n = 0; n <= two_interfaces.size(); ++n) {
    for (const auto& s : servers_of_dhclient_leases(two_interfaces.substr(0, n), "eth0", false))
      EXPECT_TRUE(s == "192.168.1.1" || s == "8.8.8.8" ||
                  std::find(whole.begin(), whole.end(), s) != whole.end())
          << n << ": " << s;
  }
  constexpr std::string_view keyfile = "[dhcp4]\ndomain_name_servers=192.168.1.1 9.9.9.9\n";
  for (std::size_t n = 0; n <= keyfile.size(); ++n)
    EXPECT_LE(servers_of_networkmanager_device(keyfile.substr(0, n)).size(), 2U) << n;
}

// ---- DHCP messages (dhcpcd leases) ---------------------------------------------------

/// A DHCPACK as dhcpcd saves it: the BOOTP header, the magic cookie, then `options`.
std::vector<unsigned char> dhcp_message(std::initializer_list<unsigned char> options,
                                        std::initializer_list<unsigned char> cookie = {99, 130, 83,
                                                                                       99}) {
  std::vector<unsigned char> message(236, 0);
  message[0] = 2;     // op: BOOTREPLY
  message[1] = 1;     // htype: Ethernet
  message[2] = 6;     // hlen
  message[16] = 192;  // yiaddr 192.168.1.23
  message[17] = 168;
  message[18] = 1;
  message[19] = 23;
  message.insert(message.end(), cookie);
  message.insert(message.end(), options);
  return message;
}

TEST(LinkResolversDhcpMessage, OptionSixOfAnAck) {
  const auto ack = dhcp_message({53,  1,  5,                 // DHCPACK
                                 54,  4,  192, 168, 1,   1,  // server id
                                 1,   4,  255, 255, 255, 0,  // subnet mask
                                 0,   0,                     // pad
                                 6,   12, 192, 168, 1,   1, 8, 8, 8, 8, 127, 0, 0, 53,  // DNS
                                 255, 0,  0,   0});  // end, padding
  EXPECT_EQ(servers_of_dhcp_message(ack), (servers{"192.168.1.1", "8.8.8.8"}));
  // Split into two instances (RFC 3396): joined.
  EXPECT_EQ(servers_of_dhcp_message(dhcp_message({6, 4, 192, 168, 1, 1, 6, 4, 1, 1, 1, 1, 255})),
            (servers{"192.168.1.1", "1.1.1.1"}));
  // No end option, the last option ending with the file: fine.
  EXPECT_EQ(servers_of_dhcp_message(dhcp_message({6, 4, 9, 9, 9, 9})), servers{"9.9.9.9"});
  // What follows the end option is not an option.
  EXPECT_EQ(servers_of_dhcp_message(dhcp_message({255, 6, 4, 9, 9, 9, 9})), servers{});
  // No option 6.
  EXPECT_EQ(servers_of_dhcp_message(dhcp_message({53, 1, 5, 255})), servers{});
}

TEST(LinkResolversDhcpMessage, MalformedMessagesGiveNoServers) {
  // An option whose value runs past the end.
  EXPECT_EQ(servers_of_dhcp_message(dhcp_message({6, 8, 192, 168, 1, 1, 8, 8})), servers{});
  // An option with no length byte, after a good option 6.
  EXPECT_EQ(servers_of_dhcp_message(dhcp_message({6, 4, 9, 9, 9, 9, 53})), servers{});
  // Another option's length lies, after a good option 6.
  EXPECT_EQ(servers_of_dhcp_message(dhcp_message({6, 4, 9, 9, 9, 9, 15, 200, 'l', 'a', 'n'})),
            servers{});
  // No magic cookie.
  EXPECT_EQ(servers_of_dhcp_message(dhcp_message({6, 4, 9, 9, 9, 9, 255}, {0, 0, 0, 0})),
            servers{});
  EXPECT_EQ(servers_of_dhcp_message(dhcp_message({6, 4, 9, 9, 9, 9, 255}, {99, 130, 83, 98})),
            servers{});
  // Option 6 whose length is not a multiple of 4 (RFC 2132 §3.8).
  EXPECT_EQ(servers_of_dhcp_message(dhcp_message({6, 6, 192, 168, 1, 1, 8, 8, 255})), servers{});
  EXPECT_EQ(servers_of_dhcp_message(dhcp_message({6, 0, 255})), servers{});
  EXPECT_EQ(servers_of_dhcp_message(dhcp_message({6, 4, 9, 9, 9, 9, 6, 2, 1, 1, 255})), servers{});
  // Shorter than the header and cookie.
  EXPECT_EQ(servers_of_dhcp_message({}), servers{});
  const auto ack = dhcp_message({6, 4, 9, 9, 9, 9, 255});
  EXPECT_EQ(servers_of_dhcp_message(std::span(ack).first(239)), servers{});
}

TEST(LinkResolversDhcpMessage, EveryTruncationIsSafe) {
  const auto ack =
      dhcp_message({53, 1, 5, 6, 8, 192, 168, 1, 1, 8, 8, 8, 8, 3, 4, 192, 168, 1, 1, 255});
  const servers whole{"192.168.1.1", "8.8.8.8"};
  ASSERT_EQ(servers_of_dhcp_message(ack), whole);
  for (std::size_t n = 0; n < ack.size(); ++n) {
    // Copied, so that ASan sees a read past the cut as one past the buffer.
    const std::vector<unsigned char> cut(ack.begin(), ack.begin() + static_cast<std::ptrdiff_t>(n));
    const auto found = servers_of_dhcp_message(cut);
    EXPECT_TRUE(found.empty() || found == whole) << n;
    if (n < 253) {
      EXPECT_TRUE(found.empty()) << n;  // option 6 not yet whole
    }
  }
}

TEST(LinkResolversDhcpMessage, AtMostEightServers) {
  std::vector<unsigned char> options = {6, 40};
  for (unsigned char i = 1; i <= 10; ++i) options.insert(options.end(), {10, 0, 0, i});
  options.push_back(255);
  auto message = dhcp_message({});
  message.insert(message.end(), options.begin(), options.end());
  const auto found = servers_of_dhcp_message(message);
  ASSERT_EQ(found.size(), max_link_servers);
  EXPECT_EQ(found.front(), "10.0.0.1");
  EXPECT_EQ(found.back(), "10.0.0.8");
}

// ---- find_link_resolvers over a directory tree ----------------------------------------

class LinkResolversFind : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string dir = fs::temp_directory_path() / "fleety-resolvers-XXXXXX";
    ASSERT_NE(::mkdtemp(dir.data()), nullptr);
    root_ = dir;
  }
  void TearDown() override { fs::remove_all(root_); }

  /// Writes `text` to `relative` under the root, making its directories.
  void write(const std::string& relative, std::string_view text) {
    const auto file = fs::path(root_) / relative;
    fs::create_directories(file.parent_path());
    std::ofstream(file, std::ios::binary)
        .write(text.data(), static_cast<std::streamsize>(text.size()));
  }
  void write(const std::string& relative, const std::vector<unsigned char>& bytes) {
    write(relative, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  }
  void remove(const std::string& relative) { fs::remove(fs::path(root_) / relative); }
  std::string path(const std::string& relative) const {
    return (fs::path(root_) / relative).string();
  }

  /// One file of each source for wlan0 (ifindex 3), each naming its own server.
  void every_source_names_a_server() {
    write("run/systemd/resolve/netif/3",
          "# This is private data. Do not parse.\nLLMNR=yes\n"
          "SERVERS=10.0.0.1\n");
    write("run/systemd/netif/links/3",
          "ADMIN_STATE=configured\nOPER_STATE=routable\n"
          "DNS=10.0.0.2\nNTP=\nDOMAINS=\n");
    write("run/systemd/netif/leases/3", "ADDRESS=10.0.0.23\nDNS=10.0.0.3\n");
    write("run/NetworkManager/devices/3",
          "[device]\nmanaged=true\n\n[dhcp4]\n"
          "domain_name_servers=10.0.0.4\n");
    write("var/lib/dhcp/dhclient.leases",
          "lease {\n  interface \"wlan0\";\n  option domain-name-servers 10.0.0.5;\n}\n");
    write("var/lib/dhcpcd/wlan0.lease", dhcp_message({6, 4, 10, 0, 0, 6, 255}));
  }

  std::string root_;  ///< the temporary root (owned: removed at the end)
};

TEST_F(LinkResolversFind, EachSourceWinsOverTheNextOnes) {
  every_source_names_a_server();
  const std::vector<std::tuple<std::string, std::string, std::string>> expected = {
      // server     source                    file
      {"10.0.0.1", "systemd-resolved", "run/systemd/resolve/netif/3"},
      {"10.0.0.2", "systemd-networkd", "run/systemd/netif/links/3"},
      {"10.0.0.3", "systemd-networkd lease", "run/systemd/netif/leases/3"},
      {"10.0.0.4", "NetworkManager", "run/NetworkManager/devices/3"},
      {"10.0.0.5", "dhclient lease", "var/lib/dhcp/dhclient.leases"},
      {"10.0.0.6", "dhcpcd lease", "var/lib/dhcpcd/wlan0.lease"},
  };
  for (const auto& [server, source, file] : expected) {
    const auto found = find_link_resolvers("wlan0", /*ifindex=*/3, root_);
    EXPECT_EQ(found.servers, servers{server}) << source;
    EXPECT_EQ(found.source, source);
    EXPECT_EQ(found.file, path(file));
    EXPECT_TRUE(found.ignored.empty());
    remove(file);  // the next source's turn
  }
  const auto none = find_link_resolvers("wlan0", 3, root_);
  EXPECT_TRUE(none.servers.empty());
  EXPECT_EQ(none.source, "");
  EXPECT_EQ(none.file, "");
}

TEST_F(LinkResolversFind, ASourceWithoutServersFallsThrough) {
  every_source_names_a_server();
  // resolved knows the link but lists only what we drop; networkd's state names none.
  write("run/systemd/resolve/netif/3", "LLMNR=yes\nSERVERS=127.0.0.53 fe80::1%3\n");
  write("run/systemd/netif/links/3", "ADMIN_STATE=configured\nDNS=\n");
  const auto found = find_link_resolvers("wlan0", 3, root_);
  EXPECT_EQ(found.source, "systemd-networkd lease");
  EXPECT_EQ(found.servers, servers{"10.0.0.3"});
}

TEST_F(LinkResolversFind, NothingFoundLeavesTheSourceEmpty) {
  const auto found = find_link_resolvers("wlan0", 3, root_);
  EXPECT_TRUE(found.servers.empty());
  EXPECT_TRUE(found.source.empty());
  EXPECT_TRUE(found.file.empty());
  EXPECT_TRUE(found.ignored.empty());  // missing files are normal
  // Another link's files are not this one's.
  every_source_names_a_server();
  const auto other = find_link_resolvers("eth0", 2, root_);
  EXPECT_TRUE(other.servers.empty());
  EXPECT_TRUE(other.source.empty());
}

TEST_F(LinkResolversFind, AnOversizedFileIsIgnoredWithTheReason) {
  every_source_names_a_server();
  std::string big = "SERVERS=10.9.9.9\n";
  big.resize(max_state_file_bytes + 1, '#');
  write("run/systemd/resolve/netif/3", big);
  const auto found = find_link_resolvers("wlan0", 3, root_);
  EXPECT_EQ(found.source, "systemd-networkd");
  ASSERT_EQ(found.ignored.size(), 1U);
  EXPECT_EQ(found.ignored[0],
            path("run/systemd/resolve/netif/3") + ": more than 1048576 bytes (ignored)");
  // Exactly the cap is read.
  big.resize(max_state_file_bytes);
  write("run/systemd/resolve/netif/3", big);
  EXPECT_EQ(find_link_resolvers("wlan0", 3, root_).servers, servers{"10.9.9.9"});
}

TEST_F(LinkResolversFind, ADirectoryInPlaceOfAFileIsIgnored) {
  every_source_names_a_server();
  remove("run/systemd/resolve/netif/3");
  fs::create_directories(path("run/systemd/resolve/netif/3"));
  const auto found = find_link_resolvers("wlan0", 3, root_);
  EXPECT_EQ(found.source, "systemd-networkd");
  ASSERT_EQ(found.ignored.size(), 1U);
  EXPECT_EQ(found.ignored[0], path("run/systemd/resolve/netif/3") + ": not a regular file");
}

TEST_F(LinkResolversFind, DhclientFilesInTheirOrder) {
  const auto lease = [](const char* interface, const char* server) {
    return std::string("lease {\n") + (interface ? "  interface \"" : "") +
           (interface ? interface : "") + (interface ? "\";\n" : "") +
           "  option domain-name-servers " + server + ";\n}\n";
  };
  write("var/lib/dhclient/dhclient.leases", lease("wlan0", "10.0.5.5"));
  EXPECT_EQ(find_link_resolvers("wlan0", 3, root_).file, path("var/lib/dhclient/dhclient.leases"));
  // NetworkManager's dhclient: a file per connection and interface, no interface line.
  write("var/lib/dhclient/dhclient-2b0f8a0c-5f8e-4d41-9a2f-1c2d3e4f5a6b-wlan0.lease",
        lease(nullptr, "10.0.4.4"));
  write("var/lib/dhclient/dhclient-2b0f8a0c-5f8e-4d41-9a2f-1c2d3e4f5a6b-xwlan0.lease",
        lease(nullptr, "10.0.4.99"));
  EXPECT_EQ(find_link_resolvers("wlan0", 3, root_).servers, servers{"10.0.4.4"});
  write("var/lib/dhcp/dhclient.leases", lease("wlan0", "10.0.3.3"));
  EXPECT_EQ(find_link_resolvers("wlan0", 3, root_).servers, servers{"10.0.3.3"});
  write("var/lib/dhcp/dhclient-9d8c7b6a-wlan0.lease", lease(nullptr, "10.0.2.2"));
  EXPECT_EQ(find_link_resolvers("wlan0", 3, root_).servers, servers{"10.0.2.2"});
  write("var/lib/dhcp/dhclient.wlan0.leases", lease(nullptr, "10.0.1.1"));
  const auto found = find_link_resolvers("wlan0", 3, root_);
  EXPECT_EQ(found.servers, servers{"10.0.1.1"});
  EXPECT_EQ(found.source, "dhclient lease");
  EXPECT_EQ(found.file, path("var/lib/dhcp/dhclient.wlan0.leases"));
  // The shared files' blocks without an interface line are nobody's.
  EXPECT_TRUE(find_link_resolvers("eth0", 2, root_).servers.empty());
}

TEST_F(LinkResolversFind, DhcpcdLeasesInTheirOrder) {
  write("var/db/dhcpcd-wlan0.lease", dhcp_message({6, 4, 10, 0, 4, 4, 255}));
  EXPECT_EQ(find_link_resolvers("wlan0", 3, root_).servers, servers{"10.0.4.4"});
  write("var/db/dhcpcd/wlan0.lease", dhcp_message({6, 4, 10, 0, 3, 3, 255}));
  EXPECT_EQ(find_link_resolvers("wlan0", 3, root_).servers, servers{"10.0.3.3"});
  write("var/lib/dhcpcd5/dhcpcd-wlan0.lease", dhcp_message({6, 4, 10, 0, 2, 2, 255}));
  EXPECT_EQ(find_link_resolvers("wlan0", 3, root_).servers, servers{"10.0.2.2"});
  // A hostile first file falls through to the next.
  write("var/lib/dhcpcd/wlan0.lease", dhcp_message({6, 200, 10, 0, 1, 1}));
  const auto found = find_link_resolvers("wlan0", 3, root_);
  EXPECT_EQ(found.servers, servers{"10.0.2.2"});
  EXPECT_EQ(found.source, "dhcpcd lease");
  EXPECT_EQ(found.file, path("var/lib/dhcpcd5/dhcpcd-wlan0.lease"));
}

TEST_F(LinkResolversFind, NoInterfaceNameLeadsOutOfTheDirectories) {
  // var/lib/dhcpcd/../x.lease would be var/lib/x.lease.
  write("var/lib/x.lease", dhcp_message({6, 4, 10, 0, 0, 6, 255}));
  write("var/lib/dhcpcd/wlan0.lease", dhcp_message({6, 4, 10, 0, 0, 7, 255}));
  for (const char* name : {"../x", "", ".", "..", "a/b", "wlan0:1", "wlan 0", "averyveryverylong0"})
    EXPECT_TRUE(find_link_resolvers(name, 0, root_).servers.empty()) << name;
  EXPECT_EQ(find_link_resolvers("wlan0", 0, root_).servers, servers{"10.0.0.7"});
}

TEST_F(LinkResolversFind, IfindexZeroSkipsTheIndexedFiles) {
  write("run/systemd/resolve/netif/0", "SERVERS=10.0.0.1\n");
  EXPECT_TRUE(find_link_resolvers("wlan0", 0, root_).servers.empty());
}

}  // namespace
}  // namespace fleety::path
