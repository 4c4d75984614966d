#include "dns/answer_vetting.hpp"

#include <gtest/gtest.h>

#include "dns/http_dns.hpp"
#include "dns/info_db.hpp"

namespace fleety::dns {
namespace {

using namespace std::chrono_literals;
using boost::asio::ip::make_address;

std::vector<boost::asio::ip::address> addresses(std::initializer_list<const char*> texts) {
  std::vector<boost::asio::ip::address> out;
  for (const char* t : texts) out.push_back(make_address(t));
  return out;
}

TEST(AnswerVetting, InternalAddresses) {
  for (const char* internal :
       {"127.0.0.1", "127.1.2.3", "0.0.0.0", "10.1.2.3", "172.16.0.1", "172.31.255.255",
        "192.168.1.1", "169.254.169.254", "100.64.0.1", "224.0.0.251", "255.255.255.255", "::1",
        "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "::ffff:127.0.0.1",
        "::ffff:192.168.0.1"}) {
    EXPECT_TRUE(is_internal_address(make_address(internal))) << internal;
  }
  for (const char* external : {"8.8.8.8", "172.32.0.1", "100.128.0.1", "198.18.10.1", "2001:db8::1",
                               "2a00:1450::1", "::ffff:8.8.8.8"}) {
    EXPECT_FALSE(is_internal_address(make_address(external))) << external;
  }
}

TEST(AnswerVetting, InternalNames) {
  for (const char* internal :
       {"router", "printer.local", "nas.lan", "a.home.arpa", "x.internal", "db.corp", "localhost",
        "app.localhost", "1.0.0.127.in-addr.arpa", "NAS.LAN.", "host.localdomain"}) {
    EXPECT_TRUE(is_internal_name(internal)) << internal;
  }
  for (const char* external : {"cdn.example.com", "cdn.fleety.test", "notlocal.com",
                               "local.example.com", "lan.example.net"}) {
    EXPECT_FALSE(is_internal_name(external)) << external;
  }
}

TEST(AnswerVetting, PublicNameLosesInternalAddressesAndTtlIsCapped) {
  const answer_rules rules{3600s, false};
  auto vetted =
      vet_answer("cdn.example.com",
                 addresses({"203.0.113.7", "127.0.0.1", "10.0.0.8", "2001:db8::7"}), 86400s, rules);
  EXPECT_EQ(vetted.addresses, addresses({"203.0.113.7", "2001:db8::7"}));
  EXPECT_EQ(vetted.dropped, 2U);
  EXPECT_EQ(vetted.ttl, 3600s);
  // Only internal ones: nothing usable.
  vetted = vet_answer("cdn.example.com", addresses({"192.168.1.1"}), 60s, rules);
  EXPECT_TRUE(vetted.addresses.empty());
  EXPECT_EQ(vetted.ttl, 60s);
  // An internal name may resolve to the LAN; a split-horizon network may allow it all.
  EXPECT_EQ(vet_answer("nas.lan", addresses({"192.168.1.5"}), 60s, rules).addresses.size(), 1U);
  EXPECT_EQ(
      vet_answer("cdn.example.com", addresses({"10.0.0.8"}), 60s, {3600s, true}).addresses.size(),
      1U);
}

TEST(AnswerVetting, TheInformationDatabaseKeepsOnlyVettedAnswers) {
  info_db db(16, {600s, false});
  const auto now = info_db::clock_type::now();
  db.record("cdn.example.com", "cell", addresses({"127.0.0.1", "203.0.113.9"}), 86400s, now);
  EXPECT_EQ(db.addresses("cdn.example.com", "cell", now), addresses({"203.0.113.9"}));
  EXPECT_FALSE(db.addresses("cdn.example.com", "cell", now + 601s)) << "kept past max_ttl";
  db.record("evil.example.com", "cell", addresses({"127.0.0.1"}), 60s, now);
  EXPECT_FALSE(db.addresses("evil.example.com", "cell", now));
}

TEST(HttpDnsAnswers, OnlyTheNamesTheAppAskedFor) {
  const auto answers = parse_http_dns_reply(
      R"([{"host":"video.example.com","ips":["203.0.113.1"]},
          {"host":"bank.example.com","ips":["203.0.113.66"]},
          {"host":"img.example.com","ips":["203.0.113.2"]}])",
      "video.example.com", 60s);
  ASSERT_EQ(answers.size(), 3U);
  auto kept = answers_for_asked(answers, "video.example.com");
  ASSERT_EQ(kept.size(), 1U);
  EXPECT_EQ(kept[0].name, "video.example.com");
  // A batch query names several.
  kept = answers_for_asked(answers, "Video.Example.com.,img.example.com");
  ASSERT_EQ(kept.size(), 2U);
  EXPECT_EQ(kept[1].name, "img.example.com");
  // The query's name unknown: a few names, not 64.
  std::vector<http_dns_answer> many(64, answers[0]);
  EXPECT_EQ(answers_for_asked(many, "").size(), 4U);
}

}  // namespace
}  // namespace fleety::dns
