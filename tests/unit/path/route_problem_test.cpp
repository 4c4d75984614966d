#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "path/uplinks.hpp"

namespace fleety::path {
namespace {

/// Runs `body` on a thread of its own in a new, empty network namespace (its `ip`
/// commands, children of that thread, act there); returns why not, or "".
template <class Body>
std::string in_private_netns(Body body) {
  std::string why;
  std::thread thread([&] {
    if (::unshare(CLONE_NEWNET) != 0) {
      why = std::string("unshare(CLONE_NEWNET): ") + std::strerror(errno);
      return;
    }
    body();
  });
  thread.join();
  return why;
}

bool ip(const std::string& args) {
  return std::system(("ip " + args + " 2>/dev/null").c_str()) == 0;
}

TEST(RouteProblem, AnUplinkNeedsARouteThroughItInATableItsTrafficReaches) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (a network namespace of its own)";
  const auto why = in_private_netns([] {
    ASSERT_TRUE(ip("link set lo up"));
    ASSERT_TRUE(ip("link add up0 type veth peer name up1"));
    ASSERT_TRUE(ip("link set up0 up"));
    ASSERT_TRUE(ip("link set up1 up"));
    ASSERT_TRUE(ip("addr add 198.18.9.2/24 dev up0"));
    // No default route at all.
    EXPECT_NE(route_problem("up0").find("no route to the Internet through up0"), std::string::npos)
        << route_problem("up0");
    // A default route through it in the main table.
    ASSERT_TRUE(ip("route add default via 198.18.9.1 dev up0"));
    EXPECT_EQ(route_problem("up0"), "");
    // Only in a table of its own (discovery finds it there): unreachable without a rule.
    ASSERT_TRUE(ip("route del default via 198.18.9.1 dev up0"));
    ASSERT_TRUE(ip("route add default via 198.18.9.1 dev up0 table 100"));
    EXPECT_NE(route_problem("up0").find("ip rule add oif up0 lookup TABLE"), std::string::npos)
        << route_problem("up0");
    // The rule an admin adds for it.
    ASSERT_TRUE(ip("rule add oif up0 lookup 100"));
    EXPECT_EQ(route_problem("up0"), "");
    EXPECT_NE(route_problem("fleetynodev0").find("fleetynodev0 does not exist"), std::string::npos);
  });
  if (!why.empty()) GTEST_SKIP() << why;
}

}  // namespace
}  // namespace fleety::path
