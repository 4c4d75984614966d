#include "path/mptcp_endpoints.hpp"

#include <gtest/gtest.h>

namespace fleety::path {
namespace {

using boost::asio::ip::make_address;

TEST(WantedEndpoints, ThePrimaryAddressPerFamilyOfEachExistingInterface) {
  const std::vector<path_addresses> paths = {
      // Wi-Fi: two IPv4 (the primary first), a link-local and a global IPv6.
      {"wifi",
       /*ifindex=*/3,
       /*backup=*/false,
       {make_address("198.18.1.2"), make_address("198.18.1.99"), make_address("fe80::1"),
        make_address("2001:db8:1::2")}},
      // Cellular, a backup path: IPv4 only.
      {"cell", 4, true, {make_address("198.18.2.2")}},
      // An interface that is gone: nothing, whatever addresses were left.
      {"gone", 0, false, {make_address("198.18.3.2")}},
      // Only addresses no subflow can leave from: nothing.
      {"lo", 1, false, {make_address("127.0.0.1"), make_address("::1")}},
  };
  const auto wanted = wanted_endpoints(paths);
  ASSERT_EQ(wanted.size(), 3U);
  EXPECT_EQ(wanted[0].endpoint, (net::wanted_endpoint{make_address("198.18.1.2"), 3, false}));
  EXPECT_EQ(wanted[0].path, "wifi");
  EXPECT_EQ(wanted[1].endpoint, (net::wanted_endpoint{make_address("2001:db8:1::2"), 3, false}));
  EXPECT_EQ(wanted[2].endpoint, (net::wanted_endpoint{make_address("198.18.2.2"), 4, true}));
  EXPECT_EQ(wanted[2].path, "cell");
  EXPECT_TRUE(wanted_endpoints({}).empty());
}

TEST(ChangesEndpoints, ExistenceAndAddressesButNotFlags) {
  link_state before{"wlan0", true, true, true, {make_address("198.18.1.2")}};
  struct row {
    const char* what;
    link_state after;
    bool expected;
  };
  auto with = [&](auto change) {
    link_state s = before;
    change(s);
    return s;
  };
  const row rows[] = {
      {"nothing", before, false},
      {"carrier lost", with([](link_state& s) { s.running = false; }), false},
      {"set down", with([](link_state& s) { s.admin_up = false; }), false},
      {"gone", with([](link_state& s) {
         s = link_state{};
         s.name = "wlan0";
       }),
       true},
      {"renumbered",
       with([](link_state& s) { s.addresses = {boost::asio::ip::make_address("198.18.1.3")}; }),
       true},
      {"address added", with([](link_state& s) { s.addresses.push_back(make_address("fe80::1")); }),
       true},
  };
  for (const auto& r : rows) EXPECT_EQ(changes_endpoints(before, r.after), r.expected) << r.what;
}

TEST(StillOurs, OwnIdsSomeoneRemovedAreForgotten) {
  std::vector<net::mptcp_endpoint> existing(3);
  existing[0].id = 1;  // someone else's
  existing[1].id = 2;  // ours
  existing[2].id = 5;  // ours
  EXPECT_EQ(still_ours(existing, {2, 3, 5}), (std::vector<std::uint8_t>{2, 5}));
  EXPECT_TRUE(still_ours({}, {2, 3}).empty());
  EXPECT_TRUE(still_ours(existing, {}).empty());
}

}  // namespace
}  // namespace fleety::path
