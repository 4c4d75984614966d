#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "classify/classify.hpp"

namespace fleety::classify {
namespace {

void put16(std::string& out, std::size_t v) {
  out.push_back(static_cast<char>((v >> 8) & 0xff));
  out.push_back(static_cast<char>(v & 0xff));
}

/// A TLS 1.3-style ClientHello record: random, a session id, two suites, the given
/// extensions (type, body) in order.
std::string client_hello(const std::vector<std::pair<int, std::string>>& extensions) {
  std::string body;
  body += std::string("\x03\x03", 2);  // legacy_version
  body += std::string(32, 'r');        // random
  body.push_back(32);                  // session id
  body += std::string(32, 's');
  put16(body, 4);
  body += std::string("\x13\x01\x13\x02", 4);
  body.push_back(1);
  body.push_back(0);  // compression: null
  std::string ext;
  for (const auto& [type, data] : extensions) {
    put16(ext, static_cast<std::size_t>(type));
    put16(ext, data.size());
    ext += data;
  }
  put16(body, ext.size());
  body += ext;
  std::string handshake;
  handshake.push_back(0x01);
  handshake.push_back(static_cast<char>((body.size() >> 16) & 0xff));
  put16(handshake, body.size() & 0xffff);
  handshake += body;
  std::string record("\x16\x03\x01", 3);
  put16(record, handshake.size());
  return record + handshake;
}

std::string sni_extension(const std::string& host) {
  std::string entry;
  entry.push_back(0);  // host_name
  put16(entry, host.size());
  entry += host;
  std::string out;
  put16(out, entry.size());
  return out + entry;
}

TEST(ClassifyFirstBytes, HttpRequestLine) {
  auto c = classify_first_bytes("GET /videos/seg-1.ts?x=1 HTTP/1.1\r\nHost: cdn\r\n\r\n");
  EXPECT_EQ(c.kind, flow_kind::http);
  EXPECT_EQ(c.method, "GET");
  EXPECT_EQ(c.target, "/videos/seg-1.ts?x=1");
  EXPECT_EQ(classify_first_bytes("HEAD / HTTP/1.0\r\n").kind, flow_kind::http);
  EXPECT_EQ(classify_first_bytes("PROPFIND /dav HTTP/1.1\r\n").kind, flow_kind::http);
}

TEST(ClassifyFirstBytes, EveryPrefixOfARequestLineAsksForMore) {
  const std::string line = "GET /a HTTP/1.1\r\n";
  for (std::size_t n = 0; n < line.size(); ++n) {
    EXPECT_EQ(classify_first_bytes(line.substr(0, n)).kind, flow_kind::need_more) << n;
  }
  EXPECT_EQ(classify_first_bytes(line).kind, flow_kind::http);
}

TEST(ClassifyFirstBytes, WhatIsNotHttp1IsOther) {
  EXPECT_EQ(classify_first_bytes("SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n").kind, flow_kind::other);
  EXPECT_EQ(classify_first_bytes("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").kind, flow_kind::other);
  EXPECT_EQ(classify_first_bytes("GET / HTTP/2\r\n").kind, flow_kind::other);
  EXPECT_EQ(classify_first_bytes("GET  / HTTP/1.1\r\n").kind, flow_kind::other);
  EXPECT_EQ(classify_first_bytes("GET / HTTP/1.1\n").kind, flow_kind::other);
  EXPECT_EQ(classify_first_bytes(" GET / HTTP/1.1\r\n").kind, flow_kind::other);
  EXPECT_EQ(classify_first_bytes(std::string("\x00\x01\x02", 3)).kind, flow_kind::other);
  EXPECT_EQ(classify_first_bytes(std::string(40, 'A')).kind, flow_kind::other);  // no method
}

TEST(ClassifyFirstBytes, AnEndlessRequestLineIsOtherAtThePeekLimit) {
  const std::string start = "GET /" + std::string(max_peek_bytes, 'a');
  EXPECT_EQ(classify_first_bytes(start.substr(0, 1000)).kind, flow_kind::need_more);
  EXPECT_EQ(classify_first_bytes(start).kind, flow_kind::other);
}

TEST(ClassifyFirstBytes, ClientHelloWithServerName) {
  const auto hello = client_hello(
      {{10, std::string("\x00\x02\x00\x1d", 4)}, {0, sni_extension("Video.Example.COM")}});
  auto c = classify_first_bytes(hello);
  EXPECT_EQ(c.kind, flow_kind::tls_client_hello);
  EXPECT_EQ(c.server_name, "video.example.com");
}

TEST(ClassifyFirstBytes, ClientHelloPrefixesAskForMoreUntilTheRecordIsComplete) {
  const auto hello = client_hello({{0, sni_extension("a.test")}});
  for (std::size_t n = 1; n < hello.size(); n += 7) {
    EXPECT_EQ(classify_first_bytes(hello.substr(0, n)).kind, flow_kind::need_more) << n;
  }
  EXPECT_EQ(classify_first_bytes(hello).server_name, "a.test");
}

TEST(ClassifyFirstBytes, ClientHelloWithoutOrWithABadServerName) {
  auto c = classify_first_bytes(client_hello({{43, std::string("\x02\x03\x04", 3)}}));
  EXPECT_EQ(c.kind, flow_kind::tls_client_hello);
  EXPECT_EQ(c.server_name, "");
  c = classify_first_bytes(client_hello({{0, sni_extension("bad host\n")}}));
  EXPECT_EQ(c.kind, flow_kind::tls_client_hello);
  EXPECT_EQ(c.server_name, "");
  // An extension that claims more bytes than the record holds: no SNI, no overread.
  std::string cut = client_hello({{0, sni_extension("a.test")}});
  cut[cut.size() - 8] = '\x7f';
  EXPECT_EQ(classify_first_bytes(cut).server_name, "");
}

TEST(ClassifyFirstBytes, OtherTlsRecordsAndNonsenseAreOther) {
  auto hello = client_hello({{0, sni_extension("a.test")}});
  std::string server_hello = hello;
  server_hello[5] = 0x02;
  EXPECT_EQ(classify_first_bytes(server_hello).kind, flow_kind::other);
  std::string alert("\x15\x03\x03\x00\x02\x02\x28", 7);
  EXPECT_EQ(classify_first_bytes(alert).kind, flow_kind::other);
  EXPECT_EQ(classify_first_bytes(std::string("\x16\x02", 2)).kind, flow_kind::other);
  EXPECT_EQ(classify_first_bytes(std::string("\x16\x03\x01\x00\x00", 5)).kind, flow_kind::other);
  EXPECT_EQ(classify_first_bytes(std::string("\x16\x03\x01\x48\x01", 5)).kind, flow_kind::other);
}

}  // namespace
}  // namespace fleety::classify
