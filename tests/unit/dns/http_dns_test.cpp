#include "dns/http_dns.hpp"

#include <gtest/gtest.h>

#include <string>

namespace fleety::dns {
namespace {

using std::chrono::seconds;
using address = boost::asio::ip::address;

address ip(const char* text) {
  return boost::asio::ip::make_address(text);
}

TEST(HttpDns, JsonWithHostIpsAndTtl) {
  // The shape of the common HTTP-DNS services' single-name answer.
  const auto answers = parse_http_dns_reply(
      R"({"host":"Video.Example.com","ips":["198.18.10.1","198.18.10.2"],"ttl":57,"origin_ttl":120})",
      "ignored.example", seconds(60));
  ASSERT_EQ(answers.size(), 1U);
  EXPECT_EQ(answers[0].name, "video.example.com");
  EXPECT_EQ(answers[0].addresses, (std::vector<address>{ip("198.18.10.1"), ip("198.18.10.2")}));
  EXPECT_EQ(answers[0].ttl, seconds(57));
}

TEST(HttpDns, JsonBatchGivesEachNameItsOwnAddressesAndTtl) {
  const auto answers = parse_http_dns_reply(
      R"({"dns":[{"host":"a.example","ips":["198.18.10.1"],"ttl":30},
                 {"host":"b.example","ipsv6":["2001:db8::5"]}]})",
      "", seconds(60));
  ASSERT_EQ(answers.size(), 2U);
  EXPECT_EQ(answers[0].name, "a.example");
  EXPECT_EQ(answers[0].ttl, seconds(30));
  EXPECT_EQ(answers[1].name, "b.example");
  EXPECT_EQ(answers[1].addresses, std::vector<address>{ip("2001:db8::5")});
  EXPECT_EQ(answers[1].ttl, seconds(60));  // none given: the default
}

TEST(HttpDns, DnsOverHttpsJsonNamesEachRecordAndSkipsCnames) {
  const auto answers = parse_http_dns_reply(
      R"({"Status":0,"Question":[{"name":"www.example.","type":1}],
          "Answer":[{"name":"www.example.","type":5,"TTL":300,"data":"edge.cdn.example."},
                    {"name":"edge.cdn.example.","type":1,"TTL":20,"data":"198.18.20.1"}]})",
      "www.example", seconds(60));
  ASSERT_EQ(answers.size(), 1U);
  EXPECT_EQ(answers[0].name, "edge.cdn.example");
  EXPECT_EQ(answers[0].addresses, std::vector<address>{ip("198.18.20.1")});
  EXPECT_EQ(answers[0].ttl, seconds(20));
}

TEST(HttpDns, JsonWithoutANameUsesTheNameAsked) {
  const auto answers = parse_http_dns_reply(R"({"code":0,"data":{"ip":"198.18.10.7","ttl":"90"}})",
                                            "v.example", seconds(60));
  ASSERT_EQ(answers.size(), 1U);
  EXPECT_EQ(answers[0].name, "v.example");
  EXPECT_EQ(answers[0].addresses, std::vector<address>{ip("198.18.10.7")});
  EXPECT_EQ(answers[0].ttl, seconds(90));
  // Nobody to give them to: nothing.
  EXPECT_TRUE(parse_http_dns_reply(R"({"ip":"198.18.10.7"})", "", seconds(60)).empty());
}

TEST(HttpDns, AddressesInsideUrls) {
  const auto answers = parse_http_dns_reply(
      R"({"host":"video.example","urls":["http://198.18.10.1/vod/seg1.ts?k=1",
          "https://[2001:db8::9]:8443/a","http://user@198.18.10.3:8080/x",
          "http://cdn.example/not-an-address"]})",
      "", seconds(60));
  ASSERT_EQ(answers.size(), 1U);
  EXPECT_EQ(answers[0].addresses,
            (std::vector<address>{ip("198.18.10.1"), ip("2001:db8::9"), ip("198.18.10.3")}));
}

TEST(HttpDns, PlainListWithTrailingTtl) {
  const auto answers =
      parse_http_dns_reply("198.18.10.1;198.18.10.2,300\n", "v.example", seconds(60));
  ASSERT_EQ(answers.size(), 1U);
  EXPECT_EQ(answers[0].addresses, (std::vector<address>{ip("198.18.10.1"), ip("198.18.10.2")}));
  EXPECT_EQ(answers[0].ttl, seconds(300));
  const auto lines =
      parse_http_dns_reply("198.18.10.1\n198.18.10.1\n2001:db8::1\n", "v.example", seconds(45));
  ASSERT_EQ(lines.size(), 1U);
  EXPECT_EQ(lines[0].addresses.size(), 2U);  // the same address once
  EXPECT_EQ(lines[0].ttl, seconds(45));
}

TEST(HttpDns, TextWithUrlsAmongOtherWords) {
  const auto answers = parse_http_dns_reply(
      "#EXTM3U\n#EXTINF:4,\nhttp://198.18.20.1/seg1.ts\n#EXTINF:4,\nhttp://198.18.20.1/seg2.ts\n",
      "live.example", seconds(60));
  ASSERT_EQ(answers.size(), 1U);
  EXPECT_EQ(answers[0].addresses, std::vector<address>{ip("198.18.20.1")});
}

TEST(HttpDns, WhatIsNoServerAddressIsLeftOut) {
  // Unspecified, multicast, scoped (only the replier's host knows the scope), versions,
  // bad names.
  EXPECT_TRUE(parse_http_dns_reply("0.0.0.0 224.0.0.1 fe80::1%eth0 1.2.3 version 1.0", "v.example",
                                   seconds(60))
                  .empty());
  EXPECT_TRUE(
      parse_http_dns_reply(R"({"host":"198.18.10.1","ips":["198.18.10.1"]})", "", seconds(60))
          .empty());
  EXPECT_TRUE(parse_http_dns_reply("198.18.10.1", "bad name!", seconds(60)).empty());
  // (Found by the fuzzer: a name that still ends with a dot once one is taken off.)
  EXPECT_TRUE(
      parse_http_dns_reply(R"({"name":"a.example..","data":"198.18.10.1"})", "", seconds(60))
          .empty());
}

TEST(HttpDns, MalformedJsonIsReadAsText) {
  const auto answers = parse_http_dns_reply(R"({"ips":["198.18.10.1", )", "v.example", seconds(60));
  ASSERT_EQ(answers.size(), 1U);
  EXPECT_EQ(answers[0].addresses, std::vector<address>{ip("198.18.10.1")});
}

TEST(HttpDns, TtlIsBoundedAndBoundsHold) {
  const auto answers = parse_http_dns_reply(
      R"({"host":"v.example","ips":["198.18.10.1"],"ttl":99999999999})", "", seconds(60));
  ASSERT_EQ(answers.size(), 1U);
  EXPECT_EQ(answers[0].ttl, seconds(86400));

  std::string many = "[";
  for (int i = 0; i < 100; ++i)
    many += "{\"host\":\"n" + std::to_string(i) + ".example\",\"ips\":[\"198.18.10." +
            std::to_string(i) + "\",\"198.18.11." + std::to_string(i) + "\"]},";
  many.back() = ']';
  const auto bounded =
      parse_http_dns_reply(many, "", seconds(60), {.max_names = 10, .max_addresses_per_name = 1});
  ASSERT_EQ(bounded.size(), 10U);
  for (const auto& answer : bounded) EXPECT_EQ(answer.addresses.size(), 1U);
}

}  // namespace
}  // namespace fleety::dns
