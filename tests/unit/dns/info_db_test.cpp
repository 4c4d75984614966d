#include "dns/info_db.hpp"

#include <gtest/gtest.h>

namespace fleety::dns {
namespace {

using std::chrono::seconds;
using address = boost::asio::ip::address;

address ip(const char* text) {
  return boost::asio::ip::make_address(text);
}

TEST(InfoDb, EachPathKeepsItsOwnAnswerUntilItsTtl) {
  info_db db;
  const auto t0 = info_db::clock_type::time_point{} + seconds(1000);
  db.record("CDN.Example.com.", "wifi", {ip("198.18.10.1")}, seconds(60), t0);
  db.record("cdn.example.com", "cell", {ip("198.18.20.1"), ip("2001:db8::1")}, seconds(30), t0);
  EXPECT_EQ(db.addresses("cdn.example.com", "wifi", t0), std::vector<address>{ip("198.18.10.1")});
  EXPECT_EQ(db.addresses("cdn.EXAMPLE.com", "cell", t0)->size(), 2U);
  EXPECT_EQ(db.addresses("cdn.example.com", "cell", t0 + seconds(30)), std::nullopt);
  EXPECT_TRUE(db.addresses("cdn.example.com", "wifi", t0 + seconds(59)));
  EXPECT_EQ(db.addresses("cdn.example.com", "wired", t0), std::nullopt);
  EXPECT_EQ(db.size(t0), 1U);
  EXPECT_EQ(db.size(t0 + seconds(60)), 0U);
}

TEST(InfoDb, AnAddressIsNamedByTheLatestAnswerThatGaveIt) {
  info_db db;
  const auto t0 = info_db::clock_type::time_point{} + seconds(1000);
  db.record("a.test", "wifi", {ip("198.18.10.1")}, seconds(60), t0);
  db.record("b.test", "wifi", {ip("198.18.10.1")}, seconds(60), t0 + seconds(1));
  EXPECT_EQ(db.name_of(ip("198.18.10.1"), t0 + seconds(2)), "b.test");
  EXPECT_EQ(db.name_of(ip("198.18.10.1"), t0 + seconds(61)), std::nullopt);
  EXPECT_EQ(db.name_of(ip("198.18.99.9"), t0), std::nullopt);
}

TEST(InfoDb, CounterpartIsTheOtherPathsServerForTheSameName) {
  info_db db;
  const auto t0 = info_db::clock_type::time_point{} + seconds(1000);
  db.record("video.example", "wifi", {ip("198.18.10.1")}, seconds(60), t0);
  db.record("video.example", "cell", {ip("2001:db8::7"), ip("198.18.20.1")}, seconds(30), t0);
  EXPECT_EQ(db.counterpart(ip("198.18.10.1"), "cell", t0), ip("198.18.20.1"));
  EXPECT_EQ(db.counterpart(ip("198.18.20.1"), "wifi", t0), ip("198.18.10.1"));
  // The same family only; the path's own answer holds the address: nothing to change.
  EXPECT_EQ(db.counterpart(ip("2001:db8::7"), "wifi", t0), std::nullopt);
  EXPECT_EQ(db.counterpart(ip("198.18.10.1"), "wifi", t0), std::nullopt);
  // Unknown address, unknown path, expired answer.
  EXPECT_EQ(db.counterpart(ip("198.18.99.1"), "cell", t0), std::nullopt);
  EXPECT_EQ(db.counterpart(ip("198.18.10.1"), "wired", t0), std::nullopt);
  EXPECT_EQ(db.counterpart(ip("198.18.10.1"), "cell", t0 + seconds(30)), std::nullopt);
}

TEST(InfoDb, AnEmptyAnswerForgets) {
  info_db db;
  const auto t0 = info_db::clock_type::time_point{} + seconds(1000);
  db.record("a.test", "wifi", {ip("198.18.10.1")}, seconds(60), t0);
  db.record("a.test", "wifi", {}, seconds(60), t0);
  EXPECT_EQ(db.addresses("a.test", "wifi", t0), std::nullopt);
  EXPECT_EQ(db.size(t0), 0U);
}

TEST(InfoDb, BoundedByNamesExpiredFirstThenSoonestToExpire) {
  info_db db(3);
  const auto t0 = info_db::clock_type::time_point{} + seconds(1000);
  db.record("gone.test", "wifi", {ip("198.18.0.1")}, seconds(1), t0);
  db.record("short.test", "wifi", {ip("198.18.0.2")}, seconds(100), t0);
  db.record("long.test", "wifi", {ip("198.18.0.3")}, seconds(900), t0);
  db.record("new.test", "wifi", {ip("198.18.0.4")}, seconds(500), t0 + seconds(5));
  const auto t1 = t0 + seconds(5);
  EXPECT_EQ(db.size(t1), 3U);
  EXPECT_TRUE(db.addresses("short.test", "wifi", t1));
  db.record("newer.test", "wifi", {ip("198.18.0.5")}, seconds(500), t1);
  EXPECT_EQ(db.addresses("short.test", "wifi", t1), std::nullopt);  // expires first
  EXPECT_TRUE(db.addresses("long.test", "wifi", t1));
  EXPECT_TRUE(db.addresses("newer.test", "wifi", t1));
}

}  // namespace
}  // namespace fleety::dns
