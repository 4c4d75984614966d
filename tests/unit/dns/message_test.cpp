#include "dns/message.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace fleety::dns {
namespace {

using bytes = std::vector<std::uint8_t>;

void put16(bytes& m, unsigned v) {
  m.push_back(static_cast<std::uint8_t>(v >> 8));
  m.push_back(static_cast<std::uint8_t>(v & 0xff));
}

void put_name(bytes& m, const std::string& name) {
  std::size_t start = 0;
  while (start < name.size()) {
    auto dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    m.push_back(static_cast<std::uint8_t>(dot - start));
    m.insert(m.end(), name.begin() + static_cast<long>(start),
             name.begin() + static_cast<long>(dot));
    start = dot + 1;
  }
  m.push_back(0);
}

bytes query(const std::string& name, unsigned type, unsigned id = 0x1234, bool edns = false) {
  bytes m;
  put16(m, id);
  put16(m, 0x0100);  // RD
  put16(m, 1);
  put16(m, 0);
  put16(m, 0);
  put16(m, edns ? 1 : 0);
  put_name(m, name);
  put16(m, type);
  put16(m, 1);
  if (edns) {
    m.push_back(0);  // root
    put16(m, 41);    // OPT
    put16(m, 1232);
    put16(m, 0);
    put16(m, 0);
    put16(m, 0);
  }
  return m;
}

/// A reply to `q` with the given A/AAAA records (each name a pointer to the question).
bytes reply(const bytes& q, const std::vector<std::pair<unsigned, bytes>>& records,
            unsigned rcode = 0) {
  bytes m(q.begin(), q.end());
  m[2] = 0x81;
  m[3] = static_cast<std::uint8_t>(0x80 | rcode);
  m[6] = 0;
  m[7] = static_cast<std::uint8_t>(records.size());
  m[10] = m[11] = 0;
  std::uint32_t ttl = 300;
  for (const auto& [type, data] : records) {
    put16(m, 0xc00c);
    put16(m, type);
    put16(m, 1);
    put16(m, ttl >> 16);
    put16(m, ttl & 0xffff);
    ttl -= 100;
    put16(m, static_cast<unsigned>(data.size()));
    m.insert(m.end(), data.begin(), data.end());
  }
  return m;
}

TEST(DnsMessage, ParsesTheQuestionOfAQuery) {
  auto q = parse_query(query("CDN.Fleety.Test", 1));
  ASSERT_TRUE(q);
  EXPECT_EQ(q->id, 0x1234);
  EXPECT_EQ(q->name, "cdn.fleety.test");
  EXPECT_EQ(q->type, 1);
  EXPECT_FALSE(q->has_additional);
  EXPECT_TRUE(parse_query(query("a.test", 28, 1, true))->has_additional);
}

TEST(DnsMessage, RefusesWhatIsNotAStandardQuery) {
  const auto q = query("a.test", 1);
  EXPECT_FALSE(parse_query(bytes(q.begin(), q.begin() + 11)));
  EXPECT_FALSE(parse_query(reply(q, {})));  // QR set
  bytes notify = q;
  notify[2] = 0x20;  // opcode 4
  EXPECT_FALSE(parse_query(notify));
  bytes cut = q;
  cut.resize(cut.size() - 3);
  EXPECT_FALSE(parse_query(cut));
  bytes pointer = q;
  pointer[12] = 0xc0;  // a compressed question name
  EXPECT_FALSE(parse_query(pointer));
}

TEST(DnsMessage, ErrorReplyKeepsIdAndQuestion) {
  const auto q = query("a.test", 1, 0xbeef);
  auto r = error_reply(q, 2);
  ASSERT_TRUE(r);
  EXPECT_EQ((*r)[0], 0xbe);
  EXPECT_EQ((*r)[1], 0xef);
  EXPECT_EQ(response_code(*r), 2);
  EXPECT_EQ((*r)[2] & 0x80, 0x80);  // a response
  EXPECT_EQ((*r)[2] & 0x01, 0x01);  // RD copied
  EXPECT_EQ(r->size(), q.size());
  EXPECT_FALSE(error_reply(bytes{1, 2, 3}, 1));
  auto garbage = error_reply(bytes(12, 0xff), 1);
  ASSERT_TRUE(garbage);
  EXPECT_EQ(garbage->size(), 12U);
  EXPECT_EQ((*garbage)[5], 0);  // no question
}

TEST(DnsMessage, AddressesAndSmallestTtlOfAnAnswer) {
  const auto q = query("a.test", 1);
  auto r = reply(q, {{1, bytes{198, 18, 10, 1}},
                     {28, bytes{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}},
                     {5, bytes{0xc0, 0x0c}}});  // a CNAME is skipped
  auto found = addresses_in(r);
  ASSERT_EQ(found.addresses.size(), 2U);
  EXPECT_EQ(found.addresses[0].to_string(), "198.18.10.1");
  EXPECT_EQ(found.addresses[1].to_string(), "2001:db8::1");
  EXPECT_EQ(found.ttl, std::chrono::seconds(200));
  // A record running past the end is not read.
  r.resize(r.size() - 20);
  EXPECT_LE(addresses_in(r).addresses.size(), 1U);
}

TEST(DnsMessage, TruncatedReplyKeepsHeaderAndQuestionWithTc) {
  const auto q = query("a.test", 1);
  std::vector<std::pair<unsigned, bytes>> many(40, {1, bytes{198, 18, 10, 1}});
  auto r = reply(q, many);
  ASSERT_GT(r.size(), 512U);
  auto t = truncated_reply(r);
  EXPECT_EQ(t.size(), q.size());
  EXPECT_EQ(t[2] & 0x02, 0x02);
  EXPECT_EQ(t[7], 0);  // no answers
  EXPECT_EQ(parse_query(q)->name, "a.test");
}

}  // namespace
}  // namespace fleety::dns
