#include <gtest/gtest.h>

#include "intercept/intercept.hpp"

namespace fleety::intercept {
namespace {

TEST(BuildRuleset, ReplacesTheTableAtomicallyAndSelectsEachApp) {
  ruleset_spec spec;
  spec.tcp_port = 3129;
  spec.dns_port = 3053;
  spec.redirect_dns = true;
  spec.own_mark = 0xf1ee7;
  spec.cgroup2_prefix = "unified";
  spec.apps = {{"run", "fleety", {}, {}},
               {"browser", "user.slice/browser.scope", 1000, {}},
               {"player", "", {}, 2000}};
  const std::string rules = build_ruleset(spec);
  // One transaction: create (so the delete never fails), delete, define — owned by the
  // netlink socket that loads it, so that it goes when fleetyd dies.
  EXPECT_EQ(rules.rfind("add table inet fleety { flags owner; }\ndelete table inet fleety\n"
                        "table inet fleety {\n  flags owner;\n",
                        0),
            0U)
      << rules;
  spec.owned = false;  // a kernel before 5.12
  EXPECT_EQ(build_ruleset(spec).rfind("add table inet fleety\ndelete table inet fleety\n"
                                      "table inet fleety {\n  chain output {\n",
                                      0),
            0U);
  EXPECT_NE(rules.find("type nat hook output priority -100; policy accept;"), std::string::npos);
  // Our own sockets pass before any app rule.
  const auto mark = rules.find("meta mark 0xf1ee7 return");
  const auto first_app = rules.find("goto app");
  ASSERT_NE(mark, std::string::npos);
  EXPECT_LT(mark, first_app);
  // An app's DNS is taken even to a loopback resolver; its other loopback traffic is not.
  const auto dns = rules.find("udp dport 53 redirect to :3053");
  const auto loopback = rules.find("ip daddr 127.0.0.0/8 return");
  const auto tcp = rules.find("meta l4proto tcp redirect to :3129");
  ASSERT_NE(loopback, std::string::npos);
  EXPECT_LT(dns, loopback);
  EXPECT_LT(loopback, tcp);
  EXPECT_LT(rules.find("ip6 daddr ::1 return"), tcp);
  EXPECT_NE(rules.find("socket cgroupv2 level 1 \"unified/fleety\" goto app comment \"run\""),
            std::string::npos)
      << rules;
  EXPECT_NE(rules.find("socket cgroupv2 level 2 \"unified/user.slice/browser.scope\" goto app"),
            std::string::npos);
  EXPECT_NE(rules.find("meta skuid 1000 goto app comment \"browser\""), std::string::npos);
  EXPECT_NE(rules.find("meta skgid 2000 goto app comment \"player\""), std::string::npos);
  EXPECT_NE(rules.find("udp dport 53 redirect to :3053"), std::string::npos);
  EXPECT_NE(rules.find("tcp dport 53 redirect to :3053"), std::string::npos);
  // DNS is redirected before the catch-all TCP rule.
  EXPECT_LT(rules.find("tcp dport 53 redirect"), rules.find("meta l4proto tcp redirect to :3129"));
}

TEST(BuildRuleset, LinkLocalIPv6GoesToTheAppsOwnAddressAndThePortsAreLocalOnly) {
  ruleset_spec spec;
  spec.tcp_port = 3129;
  spec.dns_port = 3053;
  spec.redirect_dns = true;
  spec.apps = {{"run", "fleety", {}, {}}};
  const std::string rules = build_ruleset(spec);
  // A socket tied to its link by the scope id has no route to ::1: it is DNATed to its
  // own source address (the [::] listener), before the catch-all redirect.
  const auto link_local_tcp =
      rules.find("ip6 daddr fe80::/10 meta l4proto tcp dnat ip6 to ip6 saddr : 3129\n");
  ASSERT_NE(link_local_tcp, std::string::npos) << rules;
  EXPECT_LT(rules.find("ip6 daddr ::1 return"), link_local_tcp);
  EXPECT_LT(link_local_tcp, rules.find("meta l4proto tcp redirect to :3129"));
  // Its DNS too, to a link-local resolver, before the other DNS rules.
  const auto link_local_dns = rules.find(
      "ip6 daddr fe80::/10 meta l4proto { tcp, udp } th dport 53 dnat ip6 to ip6 saddr : 3053\n");
  ASSERT_NE(link_local_dns, std::string::npos) << rules;
  EXPECT_LT(link_local_dns, rules.find("udp dport 53 redirect to :3053"));
  // Only this host reaches fleetyd's ports.
  const auto input =
      rules.find("chain input {\n    type filter hook input priority 0; policy accept;\n");
  ASSERT_NE(input, std::string::npos) << rules;
  EXPECT_NE(
      rules.find(
          "meta nfproto ipv6 iif != \"lo\" meta l4proto { tcp, udp } th dport { 3129, 3053 } drop",
          input),
      std::string::npos)
      << rules;
}

TEST(BuildRuleset, ADisabledRunAppPassesBeforeTheRunCgroupIsTaken) {
  ruleset_spec spec;
  spec.tcp_port = 3129;
  spec.apps = {{"fleety run", "fleety", {}, {}}};
  spec.excluded_cgroups = {"fleety/player"};
  const std::string rules = build_ruleset(spec);
  const auto excluded = rules.find("socket cgroupv2 level 2 \"fleety/player\" return");
  ASSERT_NE(excluded, std::string::npos) << rules;
  EXPECT_LT(excluded, rules.find("socket cgroupv2 level 1 \"fleety\" goto app"));
}

TEST(BuildRuleset, PureCgroup2HostAndNoDnsListener) {
  ruleset_spec spec;
  spec.tcp_port = 4000;
  spec.apps = {{"run", "fleety", {}, {}}};
  const std::string rules = build_ruleset(spec);
  EXPECT_NE(rules.find("socket cgroupv2 level 1 \"fleety\" goto app"), std::string::npos);
  EXPECT_EQ(rules.find("dport 53"), std::string::npos);
  EXPECT_EQ(rules.find("meta mark"), std::string::npos);
  EXPECT_NE(rules.find("th dport { 4000 } drop"), std::string::npos) << rules;
  EXPECT_EQ(removal_script(), "add table inet fleety\ndelete table inet fleety\n");
  EXPECT_EQ(removal_script(true),
            "add table inet fleety { flags owner; }\ndelete table inet fleety\n");
}

TEST(Cgroup2Mount, HybridPureAndNone) {
  const std::string hybrid =
      "25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
      "28 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n"
      "29 28 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - "
      "cgroup2 cgroup2 rw,nsdelegate\n"
      "30 28 0:28 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,name=systemd\n";
  EXPECT_EQ(cgroup2_mount_in(hybrid), "/sys/fs/cgroup/unified");
  const std::string pure =
      "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 "
      "rw,nsdelegate,memory_recursiveprot\n";
  EXPECT_EQ(cgroup2_mount_in(pure), "/sys/fs/cgroup");
  EXPECT_EQ(cgroup2_mount_in("40 35 0:31 / /mnt/my\\040cg rw - cgroup2 none rw\n"), "/mnt/my cg");
  EXPECT_EQ(cgroup2_mount_in(hybrid.substr(0, hybrid.find("29 28"))), std::nullopt);
  EXPECT_EQ(cgroup2_mount_in(""), std::nullopt);
}

}  // namespace
}  // namespace fleety::intercept

namespace fleety::intercept {
namespace {

using boost::asio::ip::make_address;
using endpoint = boost::asio::ip::tcp::endpoint;
/// net::is_local_address as the host would answer it: every address ours, or none.
bool local_host(const boost::asio::ip::address&) {
  return true;
}
bool elsewhere(const boost::asio::ip::address&) {
  return false;
}

TEST(RefusalOfIntercepted, RedirectedConnectionsToOtherHostsOrPortsAreRelayed) {
  const std::vector<std::uint16_t> own{3128, 3129, 3053, 9464};
  const endpoint listener(make_address("::1"), 3129);
  EXPECT_EQ(
      refusal_of_intercepted(endpoint(make_address("2001:db8::7"), 443), listener, own, elsewhere),
      "");
  // This host, another port (a local service the app uses): relayed, our socket is
  // marked and not redirected again.
  EXPECT_EQ(refusal_of_intercepted(endpoint(make_address("2001:db8::1"), 8080), listener, own,
                                   local_host),
            "");
  // The same port number on another host is no loop.
  EXPECT_EQ(refusal_of_intercepted(endpoint(make_address("198.51.100.9"), 3128),
                                   endpoint(make_address("127.0.0.1"), 3129), own, elsewhere),
            "");
}

TEST(RefusalOfIntercepted, ConnectionsThatWouldLoopOrWereNotRedirectedAreRefused) {
  const std::vector<std::uint16_t> own{3128, 3129, 3053, 9464};
  // A local user connected to the [::] listener on one of the host's addresses: the
  // "original" destination is where it reached us.
  const endpoint direct(make_address("2001:db8::1"), 3129);
  EXPECT_NE(refusal_of_intercepted(direct, direct, own, local_host), "");
  // An enrolled app connecting to fleetyd's own ports on a local address (any of them,
  // link-local too): relaying it would come straight back.
  const endpoint loopback_listener(make_address("::1"), 3129);
  for (const auto port : own) {
    EXPECT_NE(refusal_of_intercepted(endpoint(make_address("2001:db8::1"), port), loopback_listener,
                                     own, local_host),
              "")
        << port;
  }
  EXPECT_NE(refusal_of_intercepted(endpoint(make_address("fe80::1%1"), 3128), loopback_listener,
                                   own, local_host),
            "");
  // No destination, or a loopback one (the listener itself).
  EXPECT_NE(refusal_of_intercepted(std::nullopt, loopback_listener, own, elsewhere), "");
  EXPECT_NE(refusal_of_intercepted(endpoint(make_address("127.0.0.1"), 80),
                                   endpoint(make_address("127.0.0.1"), 3129), own, local_host),
            "");
}

}  // namespace
}  // namespace fleety::intercept
