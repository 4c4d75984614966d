#include <gtest/gtest.h>

#include "intercept/intercept.hpp"

namespace fleety::intercept {
namespace {

access_spec proxy_and_dns() {
  access_spec spec;
  spec.tcp_ports = {3128, 3053, 3129, 3128};
  spec.udp_ports = {3053};
  spec.uids = {1000, 1001};
  spec.gid = 998;
  spec.who = "fleetyd: root and group fleety";
  spec.redirects = true;
  return spec;
}

TEST(AccessRules, OthersAreRefusedAtTheLocalPortsAfterRootTheGroupAndRedirectedApps) {
  const std::string rules = build_access_rules(proxy_and_dns());
  // Replaced in one transaction, owned by fleetyd's netlink socket.
  EXPECT_EQ(rules.rfind("add table inet fleety_access { flags owner; }\n"
                        "delete table inet fleety_access\n",
                        0),
            0U);
  EXPECT_NE(rules.find("  flags owner;\n"), std::string::npos);
  EXPECT_NE(rules.find("type filter hook output priority 0; policy accept;"), std::string::npos);
  // Order matters: every pass comes before the refusals.
  const auto redirected = rules.find("ct status dnat return");
  const auto users = rules.find("meta skuid { 0, 1000, 1001 } return");
  const auto group = rules.find("meta skgid 998 return");
  const auto tcp = rules.find(
      "fib daddr type local tcp dport { 3053, 3128, 3129 } tcp flags & (syn | ack) == syn "
      "reject with tcp reset comment \"fleetyd: root and group fleety\"");
  const auto udp = rules.find("fib daddr type local udp dport { 3053 } reject");
  for (const auto at : {redirected, users, group, tcp, udp})
    ASSERT_NE(at, std::string::npos) << rules;
  EXPECT_LT(redirected, users);
  EXPECT_LT(users, group);
  EXPECT_LT(group, tcp);
  EXPECT_LT(tcp, udp);
}

TEST(AccessRules, WithoutAGroupOnlyRootPasses) {
  access_spec spec;
  spec.tcp_ports = {3128};
  spec.who = "fleetyd: root only";
  spec.owned = false;
  const std::string rules = build_access_rules(spec);
  EXPECT_NE(rules.find("meta skuid { 0 } return"), std::string::npos);
  EXPECT_EQ(rules.find("skgid"), std::string::npos);
  EXPECT_EQ(rules.find("udp dport"), std::string::npos);
  EXPECT_EQ(rules.find("flags owner"), std::string::npos);
  // Without interception no rule needs conntrack (it would track every proxy connection).
  EXPECT_EQ(rules.find("ct status"), std::string::npos);
  EXPECT_EQ(rules.find("ct state"), std::string::npos);
  EXPECT_NE(rules.find("tcp dport { 3128 } tcp flags & (syn | ack) == syn reject with tcp reset"),
            std::string::npos);
}

TEST(AccessRules, AGroupThatDoesNotExistIsAnError) {
  const auto group = members_of_group("no-such-group-fleety-test");
  ASSERT_FALSE(group);
  EXPECT_EQ(group.error(), "there is no group 'no-such-group-fleety-test'");
  const auto root = members_of_group("root");
  ASSERT_TRUE(root) << root.error();
  EXPECT_EQ(root->gid, 0U);
}

}  // namespace
}  // namespace fleety::intercept
