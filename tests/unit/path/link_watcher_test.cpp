#include "path/link_watcher.hpp"

#include <gtest/gtest.h>
#include <libmnl/libmnl.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/asio/io_context.hpp>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

namespace fleety::path {

// Readable failures: gtest finds it by ADL.
void PrintTo(const link_state& link, std::ostream* out) {
  *out << link.name << (link.exists ? "" : " (absent)") << (link.admin_up ? " up" : " down")
       << (link.running ? " running" : "") << " [";
  for (const auto& a : link.addresses) *out << ' ' << a.to_string();
  *out << " ]";
}

namespace {

namespace asio = boost::asio;
using kind = link_event::kind;

asio::ip::address ip(const char* text) {
  return asio::ip::make_address(text);
}

link_event new_link(int ifindex, std::string name, unsigned flags) {
  link_event e;
  e.type = kind::new_link;
  e.ifindex = ifindex;
  e.name = std::move(name);
  e.flags = flags;
  return e;
}

link_event del_link(int ifindex, std::string name) {
  link_event e = new_link(ifindex, std::move(name), 0);
  e.type = kind::del_link;
  return e;
}

link_event address_event(kind type, int ifindex, const char* address) {
  link_event e;
  e.type = type;
  e.ifindex = ifindex;
  e.address = ip(address);
  return e;
}

link_state absent(const char* name) {
  link_state state;
  state.name = name;
  return state;
}

constexpr unsigned up_running = IFF_UP | IFF_RUNNING;

// --- usable() ---

TEST(LinkUsable, NeedsExistenceFlagsAndARoutableAddress) {
  struct row {
    bool exists, admin_up, running;
    std::vector<const char*> addresses;
    bool usable;
  };
  const std::vector<row> rows = {
      {/*exists=*/true, /*admin_up=*/true, /*running=*/true, {"198.18.99.1"}, true},
      {true, true, true, {"fe80::1", "198.18.99.1"}, true},
      {true, true, true, {"2001:db8::1"}, true},
      {true, true, true, {}, false},                // no address at all
      {true, true, true, {"fe80::1"}, false},       // link-local IPv6 only
      {true, true, false, {"198.18.99.1"}, false},  // no carrier
      {true, false, true, {"198.18.99.1"}, false},  // administratively down
      {false, true, true, {"198.18.99.1"}, false},  // gone
  };
  for (const auto& r : rows) {
    link_state link{"wlan0", r.exists, r.admin_up, r.running, {}};
    for (const char* a : r.addresses) link.addresses.push_back(ip(a));
    EXPECT_EQ(usable(link), r.usable)
        << "exists=" << r.exists << " admin_up=" << r.admin_up << " running=" << r.running
        << " addresses=" << r.addresses.size();
  }
}

// --- link_table: events applied in order ---

class LinkTableTest : public ::testing::Test {
 protected:
  link_table table_{{"wlan0", "rmnet0", "wlan0"}};

  const link_state& wlan0() { return *table_.find("wlan0"); }

  // Scenario step: wlan0 (ifindex 3) present, up, with carrier and an IPv4 address.
  void WlanUpWithAddress() {
    (void)table_.apply(new_link(/*ifindex=*/3, "wlan0", up_running));
    (void)table_.apply(address_event(kind::new_address, /*ifindex=*/3, "198.18.99.1"));
    ASSERT_TRUE(usable(wlan0()));
  }
};

TEST_F(LinkTableTest, WatchedLinkAppears) {
  auto changes = table_.apply(new_link(/*ifindex=*/3, "wlan0", IFF_UP));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].before, absent("wlan0"));
  EXPECT_EQ(changes[0].after, (link_state{"wlan0", true, true, false, {}}));
  EXPECT_EQ(wlan0(), changes[0].after);
}

TEST_F(LinkTableTest, SameFlagsAgainIsNoChange) {
  (void)table_.apply(new_link(/*ifindex=*/3, "wlan0", IFF_UP));
  EXPECT_TRUE(table_.apply(new_link(/*ifindex=*/3, "wlan0", IFF_UP)).empty());
  // Flags we don't track (IFF_PROMISC, IFF_LOWER_UP ...) don't count as a change either.
  EXPECT_TRUE(table_.apply(new_link(/*ifindex=*/3, "wlan0", IFF_UP | IFF_PROMISC)).empty());
}

TEST_F(LinkTableTest, CarrierComesAndGoes) {
  (void)table_.apply(new_link(/*ifindex=*/3, "wlan0", IFF_UP));
  auto changes = table_.apply(new_link(/*ifindex=*/3, "wlan0", up_running));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_FALSE(changes[0].before.running);
  EXPECT_TRUE(changes[0].after.running);
  changes = table_.apply(new_link(/*ifindex=*/3, "wlan0", IFF_UP));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_FALSE(changes[0].after.running);
  EXPECT_TRUE(changes[0].after.admin_up);
}

TEST_F(LinkTableTest, AddressAddedThenRemoved) {
  (void)table_.apply(new_link(/*ifindex=*/3, "wlan0", up_running));
  auto changes = table_.apply(address_event(kind::new_address, /*ifindex=*/3, "198.18.99.1"));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_FALSE(usable(changes[0].before));
  EXPECT_TRUE(usable(changes[0].after));
  // The same address reported again (a dump after the event) changes nothing.
  EXPECT_TRUE(table_.apply(address_event(kind::new_address, 3, "198.18.99.1")).empty());
  changes = table_.apply(address_event(kind::del_address, /*ifindex=*/3, "198.18.99.1"));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_TRUE(changes[0].after.addresses.empty());
  EXPECT_FALSE(usable(changes[0].after));
  EXPECT_TRUE(table_.apply(address_event(kind::del_address, 3, "198.18.99.1")).empty());
}

TEST_F(LinkTableTest, AddressesStaySortedAndUnique) {
  (void)table_.apply(new_link(/*ifindex=*/3, "wlan0", up_running));
  for (const char* a : {"198.18.99.7", "fe80::1", "198.18.99.1", "198.18.99.7"}) {
    (void)table_.apply(address_event(kind::new_address, 3, a));
  }
  EXPECT_EQ(wlan0().addresses,
            (std::vector<asio::ip::address>{ip("198.18.99.1"), ip("198.18.99.7"), ip("fe80::1")}));
}

TEST_F(LinkTableTest, LinkLocalOnlyIsNotUsable) {
  (void)table_.apply(new_link(/*ifindex=*/3, "wlan0", up_running));
  auto changes = table_.apply(address_event(kind::new_address, /*ifindex=*/3, "fe80::99"));
  ASSERT_EQ(changes.size(), 1u);  // reported (addresses changed), though not usable
  EXPECT_FALSE(usable(changes[0].after));
}

TEST_F(LinkTableTest, DeletedLinkLosesEverything) {
  WlanUpWithAddress();
  auto changes = table_.apply(del_link(/*ifindex=*/3, "wlan0"));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_TRUE(usable(changes[0].before));
  EXPECT_EQ(changes[0].after, absent("wlan0"));
  // Late address events of the deleted link no longer match it.
  EXPECT_TRUE(table_.apply(address_event(kind::new_address, 3, "198.18.99.2")).empty());
}

TEST_F(LinkTableTest, RecreatedLinkIsPickedUpWithItsNewIndex) {
  WlanUpWithAddress();
  (void)table_.apply(del_link(/*ifindex=*/3, "wlan0"));
  auto changes = table_.apply(new_link(/*ifindex=*/9, "wlan0", IFF_UP));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_TRUE(changes[0].after.exists);
  EXPECT_TRUE(table_.apply(address_event(kind::new_address, 3, "198.18.99.3")).empty());
  EXPECT_EQ(table_.apply(address_event(kind::new_address, 9, "198.18.99.3")).size(), 1u);
}

TEST_F(LinkTableTest, NewIndexWithoutDeleteDropsTheOldAddresses) {
  // The RTM_DELLINK was lost (socket overflow): the new index still means a new link.
  WlanUpWithAddress();
  auto changes = table_.apply(new_link(/*ifindex=*/9, "wlan0", up_running));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_TRUE(changes[0].after.addresses.empty());
}

TEST_F(LinkTableTest, UnwatchedInterfacesAreIgnored) {
  EXPECT_TRUE(table_.apply(new_link(/*ifindex=*/5, "eth0", up_running)).empty());
  EXPECT_TRUE(table_.apply(address_event(kind::new_address, 5, "198.18.99.5")).empty());
  EXPECT_TRUE(table_.apply(del_link(/*ifindex=*/5, "eth0")).empty());
  EXPECT_EQ(table_.find("eth0"), nullptr);
  EXPECT_EQ(*table_.find("rmnet0"), absent("rmnet0"));
}

TEST_F(LinkTableTest, RenamedAwayIsGoneAndRenamedInAppears) {
  WlanUpWithAddress();
  auto changes = table_.apply(new_link(/*ifindex=*/3, "wlan1", up_running));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_FALSE(changes[0].after.exists);
  changes = table_.apply(new_link(/*ifindex=*/3, "rmnet0", up_running));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].after.name, "rmnet0");
  EXPECT_TRUE(changes[0].after.exists);
}

TEST_F(LinkTableTest, DumpSweepsWhatItDidNotReport) {
  WlanUpWithAddress();
  (void)table_.apply(new_link(/*ifindex=*/4, "rmnet0", up_running));
  (void)table_.apply(address_event(kind::new_address, 4, "198.18.98.1"));
  // Events were lost; the dump reports rmnet0 only and one of wlan0's two addresses...
  table_.begin_dump(link_table::dump_kind::links);
  EXPECT_TRUE(table_.apply(new_link(4, "rmnet0", up_running)).empty());
  auto changes = table_.end_dump(link_table::dump_kind::links);
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].after, absent("wlan0"));
  // ...and of rmnet0's addresses, a new one; one added by an event during the dump stays.
  table_.begin_dump(link_table::dump_kind::addresses);
  (void)table_.apply(address_event(kind::new_address, 4, "198.18.98.2"));
  (void)table_.apply(address_event(kind::new_address, 4, "198.18.98.3"));
  changes = table_.end_dump(link_table::dump_kind::addresses);
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].after.addresses,
            (std::vector<asio::ip::address>{ip("198.18.98.2"), ip("198.18.98.3")}));
}

TEST_F(LinkTableTest, CompleteDumpOfUnchangedStateReportsNothing) {
  WlanUpWithAddress();
  table_.begin_dump(link_table::dump_kind::links);
  EXPECT_TRUE(table_.apply(new_link(3, "wlan0", up_running)).empty());
  EXPECT_TRUE(table_.end_dump(link_table::dump_kind::links).empty());
  table_.begin_dump(link_table::dump_kind::addresses);
  EXPECT_TRUE(table_.apply(address_event(kind::new_address, 3, "198.18.99.1")).empty());
  EXPECT_TRUE(table_.end_dump(link_table::dump_kind::addresses).empty());
}

// --- parse_rtnl_message: messages built with libmnl as the kernel would send them ---

class RtnlParseTest : public ::testing::Test {
 protected:
  alignas(nlmsghdr) std::array<char, 512> buffer_{};

  nlmsghdr* Header(std::uint16_t type) {
    buffer_.fill(0);
    nlmsghdr* nlh = mnl_nlmsg_put_header(buffer_.data());
    nlh->nlmsg_type = type;
    return nlh;
  }

  nlmsghdr* Link(std::uint16_t type, int ifindex, const char* name, unsigned flags,
                 unsigned char family = AF_UNSPEC) {
    nlmsghdr* nlh = Header(type);
    auto* info = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
    info->ifi_family = family;
    info->ifi_index = ifindex;
    info->ifi_flags = flags;
    mnl_attr_put_u32(nlh, IFLA_MTU, 1500);
    mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
    return nlh;
  }

  nlmsghdr* Address(std::uint16_t type, unsigned char family, unsigned ifindex) {
    nlmsghdr* nlh = Header(type);
    auto* info = static_cast<ifaddrmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifaddrmsg)));
    info->ifa_family = family;
    info->ifa_index = ifindex;
    return nlh;
  }

  static void Put(nlmsghdr* nlh, std::uint16_t attr, const asio::ip::address& a) {
    if (a.is_v4()) {
      auto bytes = a.to_v4().to_bytes();
      mnl_attr_put(nlh, attr, bytes.size(), bytes.data());
    } else {
      auto bytes = a.to_v6().to_bytes();
      mnl_attr_put(nlh, attr, bytes.size(), bytes.data());
    }
  }
};

TEST_F(RtnlParseTest, NewAndDeletedLink) {
  auto event = parse_rtnl_message(*Link(RTM_NEWLINK, /*ifindex=*/7, "rmnet0", up_running));
  ASSERT_TRUE(event);
  EXPECT_EQ(event->type, kind::new_link);
  EXPECT_EQ(event->ifindex, 7);
  EXPECT_EQ(event->name, "rmnet0");
  EXPECT_EQ(event->flags, up_running);
  event = parse_rtnl_message(*Link(RTM_DELLINK, /*ifindex=*/7, "rmnet0", 0));
  ASSERT_TRUE(event);
  EXPECT_EQ(event->type, kind::del_link);
}

TEST_F(RtnlParseTest, BridgePortNotificationIsNotALinkEvent) {
  EXPECT_FALSE(parse_rtnl_message(*Link(RTM_DELLINK, 7, "wlan0", 0, /*family=*/AF_BRIDGE)));
}

TEST_F(RtnlParseTest, LinkWithoutNameOrTruncatedIsRejected) {
  nlmsghdr* nlh = Header(RTM_NEWLINK);
  auto* info = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
  info->ifi_index = 7;
  EXPECT_FALSE(parse_rtnl_message(*nlh));
  nlh = Header(RTM_NEWLINK);
  (void)mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg) - 4);
  EXPECT_FALSE(parse_rtnl_message(*nlh));
  // A name attribute without its terminating NUL.
  nlh = Link(RTM_NEWLINK, 7, "", 0);
  nlh->nlmsg_len = mnl_nlmsg_size(sizeof(ifinfomsg));
  mnl_attr_put(nlh, IFLA_IFNAME, 4, "wlan");
  EXPECT_FALSE(parse_rtnl_message(*nlh));
}

TEST_F(RtnlParseTest, Ipv4AddressPrefersLocalOverPeer) {
  nlmsghdr* nlh = Address(RTM_NEWADDR, AF_INET, /*ifindex=*/4);
  Put(nlh, IFA_ADDRESS, ip("198.18.98.254"));  // the point-to-point peer
  Put(nlh, IFA_LOCAL, ip("198.18.98.1"));
  auto event = parse_rtnl_message(*nlh);
  ASSERT_TRUE(event);
  EXPECT_EQ(event->type, kind::new_address);
  EXPECT_EQ(event->ifindex, 4);
  EXPECT_EQ(event->address, ip("198.18.98.1"));
  nlh = Address(RTM_DELADDR, AF_INET, 4);
  Put(nlh, IFA_ADDRESS, ip("198.18.99.1"));
  event = parse_rtnl_message(*nlh);
  ASSERT_TRUE(event);
  EXPECT_EQ(event->type, kind::del_address);
  EXPECT_EQ(event->address, ip("198.18.99.1"));
}

TEST_F(RtnlParseTest, Ipv6LinkLocalCarriesItsLink) {
  nlmsghdr* nlh = Address(RTM_NEWADDR, AF_INET6, /*ifindex=*/4);
  Put(nlh, IFA_ADDRESS, ip("fe80::99"));
  auto event = parse_rtnl_message(*nlh);
  ASSERT_TRUE(event);
  ASSERT_TRUE(event->address.is_v6());
  EXPECT_EQ(event->address.to_v6().scope_id(), 4u);
}

TEST_F(RtnlParseTest, TentativeIpv6AddressIsNotUsableYet) {
  nlmsghdr* nlh = Address(RTM_NEWADDR, AF_INET6, 4);
  Put(nlh, IFA_ADDRESS, ip("2001:db8::1"));
  mnl_attr_put_u32(nlh, IFA_FLAGS, IFA_F_TENTATIVE | IFA_F_PERMANENT);
  auto event = parse_rtnl_message(*nlh);
  ASSERT_TRUE(event);
  EXPECT_EQ(event->type, kind::del_address);
  // The 8-bit ifa_flags count when IFA_FLAGS is absent.
  nlh = Address(RTM_NEWADDR, AF_INET6, 4);
  static_cast<ifaddrmsg*>(mnl_nlmsg_get_payload(nlh))->ifa_flags = IFA_F_DADFAILED;
  Put(nlh, IFA_ADDRESS, ip("2001:db8::1"));
  event = parse_rtnl_message(*nlh);
  ASSERT_TRUE(event);
  EXPECT_EQ(event->type, kind::del_address);
}

TEST_F(RtnlParseTest, MalformedAddressesAndOtherMessagesAreRejected) {
  nlmsghdr* nlh = Address(RTM_NEWADDR, AF_INET, 4);  // no address attribute
  EXPECT_FALSE(parse_rtnl_message(*nlh));
  nlh = Address(RTM_NEWADDR, AF_INET, 4);
  Put(nlh, IFA_LOCAL, ip("2001:db8::1"));  // 16 bytes in an IPv4 message
  EXPECT_FALSE(parse_rtnl_message(*nlh));
  nlh = Address(RTM_NEWADDR, AF_PACKET, 4);
  Put(nlh, IFA_ADDRESS, ip("198.18.99.1"));
  EXPECT_FALSE(parse_rtnl_message(*nlh));
  EXPECT_FALSE(parse_rtnl_message(*Header(RTM_NEWROUTE)));
}

// --- link_watcher against the kernel, in a private network namespace ---

// Runs `body` on a thread of its own in a new, empty network namespace, so nothing the
// test does reaches the host's interfaces. A network namespace belongs to a thread
// (unshare affects only the caller), and what that thread starts (sockets, `ip`)
// inherits it; the namespace vanishes when the thread and its sockets are gone.
// Returns an empty string, or why the namespace could not be made.
std::string run_in_private_netns(const std::function<void()>& body) {
  std::string why;
  std::thread thread([&] {
    if (::unshare(CLONE_NEWNET) != 0) {
      why = std::string("unshare(CLONE_NEWNET): ") + std::strerror(errno);
      return;
    }
    // A new namespace holds only lo. Anything else means we are still in the host's,
    // where `ip link del t0` must never run.
    struct if_nameindex* names = ::if_nameindex();
    const bool only_lo = names != nullptr && names[0].if_name != nullptr &&
                         std::strcmp(names[0].if_name, "lo") == 0 && names[1].if_name == nullptr;
    if (names != nullptr) ::if_freenameindex(names);
    if (!only_lo) {
      why = "the new network namespace is not empty";
      return;
    }
    body();
  });
  thread.join();
  return why;
}

::testing::AssertionResult sh(const std::string& command) {
  const int status = std::system((command + " >/dev/null 2>&1").c_str());
  if (status == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << command << ": exit status " << status;
}

// Runs the io_context until `done` holds or `limit` passes; returns whether it held.
bool run_until(asio::io_context& io, const std::function<bool()>& done,
               std::chrono::milliseconds limit = std::chrono::milliseconds(2000)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return false;
    io.restart();
    io.run_one_for(deadline - now);
  }
  return true;
}

bool has_address(const link_state& link, const char* address) {
  return std::find(link.addresses.begin(), link.addresses.end(), ip(address)) !=
         link.addresses.end();
}

class LinkWatcherNetnsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (a private network namespace and veths)";
    if (std::system("ip -V >/dev/null 2>&1") != 0) GTEST_SKIP() << "needs ip (iproute2)";
  }

  // Runs `body` in a private namespace; skips the test if there is none to be had.
  void InPrivateNetns(const std::function<void()>& body) {
    const std::string why = run_in_private_netns(body);
    if (!why.empty()) GTEST_SKIP() << why;
  }
};

TEST_F(LinkWatcherNetnsTest, FollowsAVethThroughItsLife) {
  InPrivateNetns([] {
    asio::io_context io;
    std::vector<link_change> seen;
    link_watcher watcher(io.get_executor(), {"t0"},
                         [&](const link_state& before, const link_state& after) {
                           seen.push_back({before, after});
                         });
    auto started = watcher.start();
    ASSERT_TRUE(started) << started.error();
    EXPECT_FALSE(watcher.state("t0").exists);
    auto t0 = [&] { return watcher.state("t0"); };

    // Appears, down. No IPv6 autoconfiguration: its addresses would race with ours.
    ASSERT_TRUE(sh("ip link add t0 type veth peer name t1"));
    ASSERT_TRUE(sh("ip link set t0 addrgenmode none && ip link set t1 addrgenmode none"));
    ASSERT_TRUE(run_until(io, [&] { return t0().exists; })) << "t0 never appeared";
    EXPECT_FALSE(t0().admin_up);
    EXPECT_FALSE(t0().running);
    const int first_index = static_cast<int>(::if_nametoindex("t0"));

    // Up, but a veth has carrier only once its peer is up too.
    ASSERT_TRUE(sh("ip link set t0 up"));
    ASSERT_TRUE(run_until(io, [&] { return t0().admin_up; })) << "t0 never went up";
    EXPECT_FALSE(t0().running);
    ASSERT_TRUE(sh("ip link set t1 up"));
    ASSERT_TRUE(run_until(io, [&] { return t0().running; })) << "t0 never got carrier";
    EXPECT_FALSE(usable(t0())) << "no address yet";

    // A link-local address alone does not make the path usable; a routable one does.
    ASSERT_TRUE(sh("ip addr add fe80::99/64 dev t0 nodad"));
    ASSERT_TRUE(run_until(io, [&] { return !t0().addresses.empty(); }));
    EXPECT_FALSE(usable(t0()));
    ASSERT_TRUE(sh("ip addr add 198.18.99.1/24 dev t0"));
    ASSERT_TRUE(run_until(io, [&] { return has_address(t0(), "198.18.99.1"); }));
    EXPECT_TRUE(usable(t0()));
    ASSERT_FALSE(seen.empty());
    EXPECT_FALSE(usable(seen.back().before));
    EXPECT_TRUE(usable(seen.back().after));

    ASSERT_TRUE(sh("ip addr del 198.18.99.1/24 dev t0"));
    ASSERT_TRUE(run_until(io, [&] { return !has_address(t0(), "198.18.99.1"); }));
    EXPECT_FALSE(usable(t0()));

    // The peer goes down: carrier lost, still administratively up. Then down itself.
    ASSERT_TRUE(sh("ip link set t1 down"));
    ASSERT_TRUE(run_until(io, [&] { return !t0().running; })) << "carrier never went";
    EXPECT_TRUE(t0().admin_up);
    ASSERT_TRUE(sh("ip link set t0 down"));
    ASSERT_TRUE(run_until(io, [&] { return !t0().admin_up; }));

    ASSERT_TRUE(sh("ip link del t0"));
    ASSERT_TRUE(run_until(io, [&] { return !t0().exists; })) << "t0 never went away";
    EXPECT_TRUE(t0().addresses.empty());

    // Re-created (a new ifindex): picked up again, with its own addresses only.
    ASSERT_TRUE(sh("ip link add t0 type veth peer name t1 && ip link set t0 addrgenmode none"));
    ASSERT_TRUE(run_until(io, [&] { return t0().exists; })) << "t0 never came back";
    EXPECT_NE(static_cast<int>(::if_nametoindex("t0")), first_index);
    ASSERT_TRUE(sh("ip addr add 198.18.99.2/24 dev t0"));
    ASSERT_TRUE(run_until(io, [&] { return has_address(t0(), "198.18.99.2"); }));
    EXPECT_EQ(t0().addresses.size(), 1u);

    for (const auto& change : seen) {
      EXPECT_EQ(change.before.name, "t0");  // never t1, never lo
      EXPECT_EQ(change.after.name, "t0");
      EXPECT_NE(change.before, change.after);
    }
    EXPECT_EQ(watcher.resyncs(), 0u);
  });
}

TEST_F(LinkWatcherNetnsTest, StartSeesWhatAlreadyExists) {
  InPrivateNetns([] {
    ASSERT_TRUE(sh("ip link add t0 type veth peer name t1 && ip link set t0 addrgenmode none"));
    ASSERT_TRUE(sh("ip link set t0 up && ip link set t1 up && ip addr add 198.18.99.1/24 dev t0"));
    asio::io_context io;
    int calls = 0;
    link_watcher watcher(io.get_executor(), {"t0", "t1"},
                         [&](const link_state&, const link_state&) { ++calls; });
    auto started = watcher.start();
    ASSERT_TRUE(started) << started.error();
    // Carrier may come a moment after the links went up: wait for it, not for the rest.
    ASSERT_TRUE(run_until(io, [&] { return watcher.state("t0").running; }));
    EXPECT_TRUE(watcher.state("t0").admin_up);
    EXPECT_TRUE(has_address(watcher.state("t0"), "198.18.99.1"));
    EXPECT_TRUE(usable(watcher.state("t0")));
    EXPECT_TRUE(watcher.state("t1").exists);
    EXPECT_FALSE(watcher.state("lo").exists) << "not watched";
    auto again = watcher.start();
    ASSERT_FALSE(again);
    EXPECT_NE(again.error().find("already started"), std::string::npos) << again.error();
  });
}

TEST_F(LinkWatcherNetnsTest, LostEventsAreRecoveredByDumpingAgain) {
  InPrivateNetns([] {
    ASSERT_TRUE(sh("ip link add t0 type veth peer name t1 && ip link set t0 addrgenmode none"));
    asio::io_context io;
    link_watcher::options opts;
    opts.receive_buffer_bytes = 1;  // the kernel's minimum: a handful of events
    link_watcher watcher(io.get_executor(), {"t0"}, nullptr, opts);
    auto started = watcher.start();
    ASSERT_TRUE(started) << started.error();
    // 64 addresses added while nobody reads the socket: the kernel drops most events.
    std::string batch = "/tmp/link_watcher_test_batch." + std::to_string(::getpid());
    std::string script;
    for (int i = 1; i <= 64; ++i) {
      script += "addr add 198.18.100." + std::to_string(i) + "/32 dev t0\n";
    }
    FILE* file = std::fopen(batch.c_str(), "w");
    ASSERT_NE(file, nullptr);
    std::fputs(script.c_str(), file);
    std::fclose(file);
    ASSERT_TRUE(sh("ip -batch " + batch));
    std::remove(batch.c_str());
    ASSERT_TRUE(run_until(io, [&] { return watcher.state("t0").addresses.size() == 64; }))
        << watcher.state("t0").addresses.size() << " addresses known";
    EXPECT_GE(watcher.resyncs(), 1u);
    ASSERT_TRUE(sh("ip link del t0"));
    ASSERT_TRUE(run_until(io, [&] { return !watcher.state("t0").exists; }));
  });
}

TEST_F(LinkWatcherNetnsTest, AfterASocketFailureReopensAndReportsWhatChangedMeanwhile) {
  InPrivateNetns([] {
    ASSERT_TRUE(sh("ip link add t0 type veth peer name t1 && ip link set t0 addrgenmode none"));
    ASSERT_TRUE(sh("ip addr add 198.18.99.1/24 dev t0"));
    asio::io_context io;
    std::vector<link_change> seen;
    link_watcher::options opts;
    opts.retry_backoff = std::chrono::milliseconds(50);
    link_watcher watcher(
        io.get_executor(), {"t0", "t2"},
        [&](const link_state& before, const link_state& after) {
          seen.push_back({before, after});
        },
        opts);
    ASSERT_TRUE(watcher.start());
    watcher.fail_for_test();
    // While the socket is closed: an address goes, a link comes. No event reaches us;
    // the dumps after reopening must find both.
    ASSERT_TRUE(sh("ip addr del 198.18.99.1/24 dev t0"));
    ASSERT_TRUE(sh("ip link add t2 type veth peer name t3"));
    ASSERT_TRUE(run_until(
        io, [&] { return watcher.state("t2").exists && watcher.state("t0").addresses.empty(); }));
    ASSERT_EQ(seen.size(), 2u);
    for (const auto& change : seen) {
      if (change.after.name == "t0") {
        EXPECT_TRUE(has_address(change.before, "198.18.99.1"));
        EXPECT_TRUE(change.after.addresses.empty());
      } else {
        EXPECT_EQ(change.after.name, "t2");
        EXPECT_TRUE(change.after.exists);
      }
    }
    // And it watches again.
    ASSERT_TRUE(sh("ip link del t0"));
    ASSERT_TRUE(run_until(io, [&] { return !watcher.state("t0").exists; }));
  });
}

TEST_F(LinkWatcherNetnsTest, NoCallbackAfterStopOrDestruction) {
  InPrivateNetns([] {
    asio::io_context io;
    int calls = 0;
    {
      link_watcher watcher(io.get_executor(), {"t0"},
                           [&](const link_state&, const link_state&) { ++calls; });
      ASSERT_TRUE(watcher.start());
      ASSERT_TRUE(sh("ip link add t0 type veth peer name t1"));
      // Stopped with an event waiting: it must not be delivered.
      watcher.stop();
      io.restart();
      io.run_for(std::chrono::milliseconds(200));
      EXPECT_EQ(calls, 0);
      EXPECT_FALSE(watcher.state("t0").exists) << "stopped: no longer updated";

      // Restarted, then destroyed with its handlers still queued in the io_context.
      ASSERT_TRUE(watcher.start());
      EXPECT_TRUE(watcher.state("t0").exists);
      ASSERT_TRUE(sh("ip link set t0 up"));
    }
    io.restart();
    io.run_for(std::chrono::milliseconds(200));
    EXPECT_EQ(calls, 0);
  });
}

TEST_F(LinkWatcherNetnsTest, CallbackMayDestroyTheWatcher) {
  InPrivateNetns([] {
    asio::io_context io;
    int calls = 0;
    std::unique_ptr<link_watcher> watcher;
    watcher =
        std::make_unique<link_watcher>(io.get_executor(), std::vector<std::string>{"t0", "t1"},
                                       [&](const link_state&, const link_state&) {
                                         ++calls;
                                         watcher.reset();
                                       });
    ASSERT_TRUE(watcher->start());
    // Two watched links appear in one go: the second change must not be delivered.
    ASSERT_TRUE(sh("ip link add t0 type veth peer name t1"));
    EXPECT_TRUE(run_until(io, [&] { return calls > 0; }));
    io.restart();
    io.run_for(std::chrono::milliseconds(200));
    EXPECT_EQ(calls, 1);
    EXPECT_EQ(watcher, nullptr);
  });
}

}  // namespace
}  // namespace fleety::path
