#include "dns/path_resolver.hpp"

#include <array>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

// GCC 12 at -O3 reports a false -Wnull-dereference inside Asio 1.81 wherever an
// io_context executor becomes an any_io_executor (io_context.hpp, operator== on the
// tagged context pointer). Silenced for Asio's headers only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#pragma GCC diagnostic pop
#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace fleety::dns {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using asio::ip::tcp;
using asio::ip::udp;
using clock_type = std::chrono::steady_clock;
using resolve_result = boost::system::result<resolution>;
using testing::ElementsAre;
using testing::HasSubstr;

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

// ---------------------------------------------------------------------------------------
// A DNS server on 127.0.0.1 that answers from a table (RFC 1035 §4 wire format), over
// UDP and TCP on the same ephemeral port, and counts what it is asked.

/// What the fake server does for one name.
struct zone_entry {
  enum class reply {
    answer,     ///< NOERROR with `addresses` (none: NODATA)
    nxdomain,   ///< RCODE 3
    servfail,   ///< RCODE 2
    silent,     ///< never answers
    truncated,  ///< UDP: empty reply with TC set; TCP: the full answer
  };
  reply kind = reply::answer;
  std::vector<std::string> addresses{};  ///< A and AAAA records
  std::uint32_t ttl_s = 300;             ///< TTL of the address records
  std::string cname{};                   ///< when set, the name is a CNAME to this one
  std::uint32_t cname_ttl_s = 300;       ///< TTL of the CNAME record
  std::chrono::milliseconds delay{0};    ///< UDP answers leave this late
};

constexpr std::uint16_t type_a = 1;
constexpr std::uint16_t type_cname = 5;
constexpr std::uint16_t type_aaaa = 28;

void put16(std::vector<std::uint8_t>& out, unsigned value) {
  out.push_back(static_cast<std::uint8_t>(value >> 8));
  out.push_back(static_cast<std::uint8_t>(value));
}

void put32(std::vector<std::uint8_t>& out, std::uint32_t value) {
  put16(out, value >> 16);
  put16(out, value & 0xffffU);
}

std::vector<std::uint8_t> encode_name(std::string_view name) {
  std::vector<std::uint8_t> out;
  while (!name.empty()) {
    const auto dot = name.find('.');
    const auto label = name.substr(0, dot);
    out.push_back(static_cast<std::uint8_t>(label.size()));
    out.insert(out.end(), label.begin(), label.end());
    name = dot == std::string_view::npos ? std::string_view() : name.substr(dot + 1);
  }
  out.push_back(0);
  return out;
}

class fake_dns_server {
 public:
  explicit fake_dns_server(asio::io_context& ctx) : udp_(ctx), acceptor_(ctx) {
    // The TCP listener takes the UDP socket's port: c-ares retries a truncated answer
    // over TCP to the same port.
    for (int attempt = 0;; ++attempt) {
      udp_.open(udp::v4());
      udp_.bind({asio::ip::make_address_v4("127.0.0.1"), 0});
      port_ = udp_.local_endpoint().port();
      boost::system::error_code ec;
      acceptor_.open(tcp::v4());
      acceptor_.bind({asio::ip::make_address_v4("127.0.0.1"), port_}, ec);
      if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
      if (!ec) break;
      udp_.close();
      acceptor_.close();
      if (attempt == 20) throw std::runtime_error("fake DNS: no free port for UDP and TCP");
    }
    asio::co_spawn(ctx, run_udp(), asio::detached);
    asio::co_spawn(ctx, run_tcp(), asio::detached);
  }

  /// Sets what the server does for `name`; unknown names get NXDOMAIN.
  void set(const std::string& name, zone_entry entry) { zone_[name] = std::move(entry); }

  /// "127.0.0.1:<port>", for options::servers.
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  /// Questions received for `name` (every type, UDP and TCP, retransmissions included).
  int queries(const std::string& name) const {
    const auto it = queries_.find(name);
    return it == queries_.end() ? 0 : it->second;
  }
  int tcp_queries(const std::string& name) const {
    const auto it = tcp_queries_.find(name);
    return it == tcp_queries_.end() ? 0 : it->second;
  }
  int total_queries() const { return total_; }

 private:
  struct reply_plan {
    std::vector<std::uint8_t> bytes;
    std::chrono::milliseconds delay{0};
  };

  asio::awaitable<void> run_udp() {
    std::array<std::uint8_t, 1500> buffer{};
    udp::endpoint from;
    for (;;) {
      auto [ec, size] = co_await udp_.async_receive_from(asio::buffer(buffer), from, use_tuple);
      if (ec) co_return;
      auto plan = answer({buffer.data(), size}, /*over_tcp=*/false);
      if (!plan) continue;
      if (plan->delay > 0ms) {
        asio::co_spawn(udp_.get_executor(), send_later(std::move(*plan), from), asio::detached);
      } else {
        co_await udp_.async_send_to(asio::buffer(plan->bytes), from, use_tuple);
      }
    }
  }

  asio::awaitable<void> send_later(reply_plan plan, udp::endpoint to) {
    asio::steady_timer timer(udp_.get_executor(), plan.delay);
    co_await timer.async_wait(use_tuple);
    co_await udp_.async_send_to(asio::buffer(plan.bytes), to, use_tuple);
  }

  asio::awaitable<void> run_tcp() {
    for (;;) {
      auto [ec, socket] = co_await acceptor_.async_accept(use_tuple);
      if (ec) co_return;
      asio::co_spawn(acceptor_.get_executor(), serve_tcp(std::move(socket)), asio::detached);
    }
  }

  // RFC 1035 §4.2.2: each message is preceded by a two-byte length.
  asio::awaitable<void> serve_tcp(tcp::socket socket) {
    for (;;) {
      std::array<std::uint8_t, 2> length{};
      auto [ec, n] = co_await asio::async_read(socket, asio::buffer(length), use_tuple);
      if (ec) co_return;
      std::vector<std::uint8_t> message(static_cast<std::size_t>(length[0] << 8 | length[1]));
      std::tie(ec, n) = co_await asio::async_read(socket, asio::buffer(message), use_tuple);
      if (ec) co_return;
      auto plan = answer(message, /*over_tcp=*/true);
      if (!plan) continue;
      std::vector<std::uint8_t> framed;
      put16(framed, static_cast<unsigned>(plan->bytes.size()));
      framed.insert(framed.end(), plan->bytes.begin(), plan->bytes.end());
      std::tie(ec, n) = co_await asio::async_write(socket, asio::buffer(framed), use_tuple);
      if (ec) co_return;
    }
  }

  std::optional<reply_plan> answer(std::span<const std::uint8_t> query, bool over_tcp) {
    // Header (12 bytes), then the question: QNAME labels, QTYPE, QCLASS.
    if (query.size() < 12) return std::nullopt;
    std::size_t at = 12;
    std::string name;
    while (at < query.size() && query[at] != 0) {
      const std::size_t length = query[at++];
      if (at + length > query.size()) return std::nullopt;
      if (!name.empty()) name += '.';
      for (std::size_t i = 0; i < length; ++i) {
        const char c = static_cast<char>(query[at + i]);
        name += (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
      }
      at += length;
    }
    if (at + 5 > query.size()) return std::nullopt;
    const auto qtype = static_cast<std::uint16_t>(query[at + 1] << 8 | query[at + 2]);
    const std::size_t question_end = at + 5;

    ++total_;
    ++queries_[name];
    if (over_tcp) ++tcp_queries_[name];

    zone_entry entry;
    entry.kind = zone_entry::reply::nxdomain;
    if (const auto it = zone_.find(name); it != zone_.end()) entry = it->second;

    unsigned rcode = 0;
    bool truncated = false;
    switch (entry.kind) {
      case zone_entry::reply::silent:
        return std::nullopt;
      case zone_entry::reply::nxdomain:
        rcode = 3;
        break;
      case zone_entry::reply::servfail:
        rcode = 2;
        break;
      case zone_entry::reply::truncated:
        truncated = !over_tcp;
        break;
      case zone_entry::reply::answer:
        break;
    }

    // Answer records, their owner name compressed to the question's (offset 12).
    std::vector<std::uint8_t> records;
    unsigned count = 0;
    std::vector<std::uint8_t> owner = {0xc0, 0x0c};
    if (rcode == 0 && !truncated) {
      if (!entry.cname.empty()) {
        const auto target = encode_name(entry.cname);
        records.insert(records.end(), owner.begin(), owner.end());
        put16(records, type_cname);
        put16(records, 1);  // IN
        put32(records, entry.cname_ttl_s);
        put16(records, static_cast<unsigned>(target.size()));
        records.insert(records.end(), target.begin(), target.end());
        owner = target;
        ++count;
      }
      for (const auto& text : entry.addresses) {
        const auto address = asio::ip::make_address(text);
        std::vector<std::uint8_t> rdata;
        if (address.is_v4() && qtype == type_a) {
          const auto bytes = address.to_v4().to_bytes();
          rdata.assign(bytes.begin(), bytes.end());
        } else if (address.is_v6() && qtype == type_aaaa) {
          const auto bytes = address.to_v6().to_bytes();
          rdata.assign(bytes.begin(), bytes.end());
        } else {
          continue;
        }
        records.insert(records.end(), owner.begin(), owner.end());
        put16(records, qtype);
        put16(records, 1);  // IN
        put32(records, entry.ttl_s);
        put16(records, static_cast<unsigned>(rdata.size()));
        records.insert(records.end(), rdata.begin(), rdata.end());
        ++count;
      }
    }

    reply_plan plan;
    plan.delay = over_tcp ? 0ms : entry.delay;
    auto& out = plan.bytes;
    out.insert(out.end(), query.begin(), query.begin() + 2);  // ID
    // QR, the query's opcode and RD, RA, TC when truncated, RCODE (RFC 1035 §4.1.1).
    const unsigned query_flags = static_cast<unsigned>(query[2] << 8 | query[3]);
    put16(out, 0x8000U | (query_flags & 0x7900U) | 0x0080U | (truncated ? 0x0200U : 0U) | rcode);
    put16(out, 1);      // QDCOUNT
    put16(out, count);  // ANCOUNT
    put16(out, 0);      // NSCOUNT
    put16(out, 0);      // ARCOUNT
    out.insert(out.end(), query.begin() + 12, query.begin() + static_cast<long>(question_end));
    out.insert(out.end(), records.begin(), records.end());
    return plan;
  }

  udp::socket udp_;
  tcp::acceptor acceptor_;
  std::uint16_t port_ = 0;
  std::map<std::string, zone_entry> zone_;
  std::map<std::string, int> queries_;
  std::map<std::string, int> tcp_queries_;
  int total_ = 0;
};

// ---------------------------------------------------------------------------------------

std::vector<std::string> to_strings(const std::vector<asio::ip::address>& addresses) {
  std::vector<std::string> out;
  for (const auto& address : addresses) out.push_back(address.to_string());
  return out;
}

class PathResolverTest : public testing::Test {
 protected:
  path_resolver::options options_for_fake(std::string interface = "lo") {
    path_resolver::options options;
    options.interface = std::move(interface);
    options.servers = {server_.address()};
    options.timeout = 600ms;
    options.tries = 2;
    return options;
  }

  /// Runs `op` to completion on the test's io_context (the fake server runs there too).
  template <class T>
  T run(asio::awaitable<T> op) {
    std::optional<T> out;
    std::exception_ptr error;
    bool done = false;
    asio::co_spawn(ctx_, std::move(op), [&](std::exception_ptr e, T value) {
      error = e;
      if (!e) out.emplace(std::move(value));
      done = true;
    });
    run_until([&] { return done; });
    if (error) std::rethrow_exception(error);
    if (!done) throw std::runtime_error("operation did not complete within 10 s");
    return std::move(*out);
  }

  resolve_result resolve(path_resolver& resolver, std::string host) {
    return run(resolver.async_resolve(std::move(host)));
  }

  /// Runs handlers until `condition` holds or 10 s pass.
  void run_until(const std::function<bool()>& condition) {
    const auto give_up = clock_type::now() + 10s;
    while (!condition() && clock_type::now() < give_up) ctx_.run_one_for(10ms);
  }

  void sleep_for(std::chrono::milliseconds duration) {
    run([](asio::steady_timer timer) -> asio::awaitable<int> {
      co_await timer.async_wait(asio::use_awaitable);
      co_return 0;
    }(asio::steady_timer(ctx_, duration)));
  }

  asio::io_context ctx_;
  fake_dns_server server_{ctx_};
};

TEST_F(PathResolverTest, ResolvesARecordWithItsTtl) {
  server_.set("a.fleety.test", {.addresses = {"198.18.0.10"}, .ttl_s = 120});
  path_resolver resolver(ctx_.get_executor(), options_for_fake());

  const auto r = resolve(resolver, "a.fleety.test");

  ASSERT_TRUE(r) << r.error().message();
  EXPECT_THAT(to_strings(r.value().addresses), ElementsAre("198.18.0.10"));
  EXPECT_EQ(r.value().ttl, 120s);
}

TEST_F(PathResolverTest, WorksWithoutInterface) {
  server_.set("a.fleety.test", {.addresses = {"198.18.0.10"}});
  path_resolver resolver(ctx_.get_executor(), options_for_fake(/*interface=*/""));

  const auto r = resolve(resolver, "a.fleety.test");

  ASSERT_TRUE(r) << r.error().message();
  EXPECT_THAT(to_strings(r.value().addresses), ElementsAre("198.18.0.10"));
}

TEST_F(PathResolverTest, SecondCallIsServedFromCache) {
  server_.set("a.fleety.test", {.addresses = {"198.18.0.10"}, .ttl_s = 300});
  path_resolver resolver(ctx_.get_executor(), options_for_fake());

  ASSERT_TRUE(resolve(resolver, "a.fleety.test"));
  const int asked = server_.queries("a.fleety.test");
  EXPECT_EQ(asked, 2);                                     // A and AAAA
  const auto again = resolve(resolver, "A.Fleety.Test.");  // same name to DNS

  ASSERT_TRUE(again);
  EXPECT_THAT(to_strings(again.value().addresses), ElementsAre("198.18.0.10"));
  EXPECT_GT(again.value().ttl, 0s);
  EXPECT_LE(again.value().ttl, 300s);
  EXPECT_EQ(server_.queries("a.fleety.test"), asked);
}

TEST_F(PathResolverTest, ConcurrentCallsShareOneQuery) {
  server_.set("a.fleety.test", {.addresses = {"198.18.0.10"}, .ttl_s = 300});
  path_resolver resolver(ctx_.get_executor(), options_for_fake());
  int answered = 0;
  for (int i = 0; i < 3; ++i) {
    asio::co_spawn(ctx_, resolver.async_resolve("a.fleety.test"),
                   [&](std::exception_ptr e, resolve_result r) {
                     EXPECT_FALSE(e);
                     EXPECT_TRUE(r);
                     if (r) {
                       EXPECT_THAT(to_strings(r.value().addresses), ElementsAre("198.18.0.10"));
                     }
                     ++answered;
                   });
  }
  run_until([&] { return answered == 3; });
  EXPECT_EQ(answered, 3);
  EXPECT_EQ(server_.queries("a.fleety.test"), 2);  // one A and one AAAA for all three
}

TEST_F(PathResolverTest, ZeroTtlIsNotCached) {
  server_.set("zero.fleety.test", {.addresses = {"198.18.0.10"}, .ttl_s = 0});
  path_resolver resolver(ctx_.get_executor(), options_for_fake());

  ASSERT_TRUE(resolve(resolver, "zero.fleety.test"));
  ASSERT_TRUE(resolve(resolver, "zero.fleety.test"));

  EXPECT_EQ(server_.queries("zero.fleety.test"), 4);
}

TEST_F(PathResolverTest, ExpiredAnswerIsAskedAgain) {
  server_.set("short.fleety.test", {.addresses = {"198.18.0.10"}, .ttl_s = 1});
  path_resolver resolver(ctx_.get_executor(), options_for_fake());

  ASSERT_TRUE(resolve(resolver, "short.fleety.test"));
  ASSERT_TRUE(resolve(resolver, "short.fleety.test"));
  EXPECT_EQ(server_.queries("short.fleety.test"), 2);  // still fresh
  sleep_for(1100ms);
  ASSERT_TRUE(resolve(resolver, "short.fleety.test"));

  EXPECT_EQ(server_.queries("short.fleety.test"), 4);
}

TEST_F(PathResolverTest, CacheEvictsLeastRecentlyUsed) {
  for (const char* name : {"a.fleety.test", "b.fleety.test", "c.fleety.test"}) {
    server_.set(name, {.addresses = {"198.18.0.10"}});
  }
  auto options = options_for_fake();
  options.max_cache_entries = 2;
  path_resolver resolver(ctx_.get_executor(), options);

  ASSERT_TRUE(resolve(resolver, "a.fleety.test"));
  ASSERT_TRUE(resolve(resolver, "b.fleety.test"));
  ASSERT_TRUE(resolve(resolver, "a.fleety.test"));  // hit: b is now the oldest
  ASSERT_TRUE(resolve(resolver, "c.fleety.test"));  // evicts b
  ASSERT_TRUE(resolve(resolver, "a.fleety.test"));
  ASSERT_TRUE(resolve(resolver, "b.fleety.test"));

  EXPECT_EQ(server_.queries("a.fleety.test"), 2);
  EXPECT_EQ(server_.queries("b.fleety.test"), 4);
  EXPECT_EQ(server_.queries("c.fleety.test"), 2);
}

TEST_F(PathResolverTest, Ipv4AddressesComeFirst) {
  server_.set("dual.fleety.test",
              {.addresses = {"2001:db8::1", "198.18.0.11", "2001:db8::2", "198.18.0.12"}});
  path_resolver resolver(ctx_.get_executor(), options_for_fake());

  const auto r = resolve(resolver, "dual.fleety.test");

  ASSERT_TRUE(r) << r.error().message();
  EXPECT_THAT(to_strings(r.value().addresses),
              ElementsAre("198.18.0.11", "198.18.0.12", "2001:db8::1", "2001:db8::2"));
}

TEST_F(PathResolverTest, TtlIsTheSmallestAlongTheCnameChain) {
  server_.set("alias.fleety.test", {.addresses = {"198.18.0.20"},
                                    .ttl_s = 300,
                                    .cname = "target.fleety.test",
                                    .cname_ttl_s = 30});
  path_resolver resolver(ctx_.get_executor(), options_for_fake());

  const auto r = resolve(resolver, "alias.fleety.test");

  ASSERT_TRUE(r) << r.error().message();
  EXPECT_THAT(to_strings(r.value().addresses), ElementsAre("198.18.0.20"));
  EXPECT_EQ(r.value().ttl, 30s);
}

TEST_F(PathResolverTest, NxdomainIsNotFound) {
  server_.set("nx.fleety.test", {.kind = zone_entry::reply::nxdomain});
  path_resolver resolver(ctx_.get_executor(), options_for_fake());

  const auto r = resolve(resolver, "nx.fleety.test");

  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), make_error_code(errc::not_found));
  EXPECT_EQ(server_.queries("nx.fleety.test"), 2);  // no search-list suffixes tried
  EXPECT_EQ(server_.total_queries(), 2);
}

TEST_F(PathResolverTest, NameWithoutAddressesIsNotFound) {
  server_.set("empty.fleety.test", {.addresses = {}});
  path_resolver resolver(ctx_.get_executor(), options_for_fake());

  const auto r = resolve(resolver, "empty.fleety.test");

  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), make_error_code(errc::not_found));
}

TEST_F(PathResolverTest, ServfailIsServerFailure) {
  server_.set("broken.fleety.test", {.kind = zone_entry::reply::servfail});
  path_resolver resolver(ctx_.get_executor(), options_for_fake());

  const auto r = resolve(resolver, "broken.fleety.test");

  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), make_error_code(errc::server_failure));
  EXPECT_EQ(r.error().category().name(), std::string("fleety.dns"));
}

TEST_F(PathResolverTest, SilentServerTimesOutAtTheDeadline) {
  server_.set("silent.fleety.test", {.kind = zone_entry::reply::silent});
  auto options = options_for_fake();
  options.timeout = 400ms;
  path_resolver resolver(ctx_.get_executor(), options);

  const auto start = clock_type::now();
  const auto r = resolve(resolver, "silent.fleety.test");
  const auto elapsed = clock_type::now() - start;

  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), make_error_code(errc::timed_out));
  EXPECT_GE(elapsed, 300ms);
  EXPECT_LE(elapsed, 400ms + 300ms);
  EXPECT_GE(server_.queries("silent.fleety.test"), 4);  // A and AAAA, both tries
}

TEST_F(PathResolverTest, TruncatedAnswerIsRetriedOverTcp) {
  server_.set("big.fleety.test",
              {.kind = zone_entry::reply::truncated, .addresses = {"198.18.0.30", "2001:db8::30"}});
  path_resolver resolver(ctx_.get_executor(), options_for_fake());

  const auto r = resolve(resolver, "big.fleety.test");

  ASSERT_TRUE(r) << r.error().message();
  EXPECT_THAT(to_strings(r.value().addresses), ElementsAre("198.18.0.30", "2001:db8::30"));
  EXPECT_EQ(server_.tcp_queries("big.fleety.test"), 2);
}

TEST_F(PathResolverTest, LiteralAddressesNeedNoQuery) {
  path_resolver resolver(ctx_.get_executor(), options_for_fake());

  const auto v4 = resolve(resolver, "198.18.0.1");
  const auto v6 = resolve(resolver, "[::1]");
  const auto bare_v6 = resolve(resolver, "2001:db8::7");

  ASSERT_TRUE(v4);
  ASSERT_TRUE(v6);
  ASSERT_TRUE(bare_v6);
  EXPECT_THAT(to_strings(v4.value().addresses), ElementsAre("198.18.0.1"));
  EXPECT_THAT(to_strings(v6.value().addresses), ElementsAre("::1"));
  EXPECT_THAT(to_strings(bare_v6.value().addresses), ElementsAre("2001:db8::7"));
  EXPECT_EQ(server_.total_queries(), 0);
}

TEST_F(PathResolverTest, InvalidNamesAreRefusedWithoutQuery) {
  path_resolver resolver(ctx_.get_executor(), options_for_fake());

  const std::vector<std::string> names = {
      "", "exa mple.test", "a..b.test", std::string(64, 'a') + ".test", "host:443", "[a.test]"};
  for (const auto& name : names) {
    const auto r = resolve(resolver, name);
    ASSERT_FALSE(r) << name;
    EXPECT_EQ(r.error(), make_error_code(errc::bad_name)) << name;
  }
  EXPECT_EQ(server_.total_queries(), 0);
}

TEST_F(PathResolverTest, DestroyingResolverCancelsPendingQuery) {
  server_.set("silent.fleety.test", {.kind = zone_entry::reply::silent});
  auto resolver = std::make_unique<path_resolver>(ctx_.get_executor(), options_for_fake());
  std::optional<resolve_result> out;
  asio::co_spawn(ctx_, resolver->async_resolve("silent.fleety.test"),
                 [&](std::exception_ptr, resolve_result r) { out = std::move(r); });
  run_until([&] { return server_.queries("silent.fleety.test") > 0; });
  ASSERT_FALSE(out);

  resolver.reset();
  run_until([&] { return out.has_value(); });

  ASSERT_TRUE(out);
  ASSERT_FALSE(*out);
  EXPECT_EQ(out->error(), make_error_code(errc::cancelled));
  // Nothing of the resolver is touched any more (ASan would say so).
  sleep_for(50ms);
}

TEST_F(PathResolverTest, CancelledWaiterDoesNotDisturbItsNeighbour) {
  server_.set("silent.fleety.test", {.kind = zone_entry::reply::silent});
  server_.set("slow.fleety.test", {.addresses = {"198.18.0.40"}, .delay = 150ms});
  path_resolver resolver(ctx_.get_executor(), options_for_fake());
  asio::cancellation_signal cancel;
  std::optional<resolve_result> silent;
  std::optional<resolve_result> slow;
  asio::co_spawn(
      ctx_, resolver.async_resolve("silent.fleety.test"),
      asio::bind_cancellation_slot(
          cancel.slot(), [&](std::exception_ptr, resolve_result r) { silent = std::move(r); }));
  asio::co_spawn(ctx_, resolver.async_resolve("slow.fleety.test"),
                 [&](std::exception_ptr, resolve_result r) { slow = std::move(r); });
  run_until([&] {
    return server_.queries("silent.fleety.test") > 0 && server_.queries("slow.fleety.test") > 0;
  });

  const auto start = clock_type::now();
  cancel.emit(asio::cancellation_type::terminal);
  run_until([&] { return silent.has_value(); });
  const auto cancel_took = clock_type::now() - start;
  run_until([&] { return slow.has_value(); });

  ASSERT_TRUE(silent);
  ASSERT_FALSE(*silent);
  EXPECT_EQ(silent->error(), make_error_code(errc::cancelled));
  EXPECT_LT(cancel_took, 100ms);
  ASSERT_TRUE(slow);
  ASSERT_TRUE(*slow) << slow->error().message();
  EXPECT_THAT(to_strings(slow->value().addresses), ElementsAre("198.18.0.40"));
}

TEST_F(PathResolverTest, ResolverKeepsWorkingAfterCancellation) {
  server_.set("silent.fleety.test", {.kind = zone_entry::reply::silent});
  server_.set("a.fleety.test", {.addresses = {"198.18.0.10"}});
  path_resolver resolver(ctx_.get_executor(), options_for_fake());
  asio::cancellation_signal cancel;
  std::optional<resolve_result> silent;
  asio::co_spawn(
      ctx_, resolver.async_resolve("silent.fleety.test"),
      asio::bind_cancellation_slot(
          cancel.slot(), [&](std::exception_ptr, resolve_result r) { silent = std::move(r); }));
  run_until([&] { return server_.queries("silent.fleety.test") > 0; });
  cancel.emit(asio::cancellation_type::terminal);  // the only waiter: c-ares is cancelled
  run_until([&] { return silent.has_value(); });

  const auto r = resolve(resolver, "a.fleety.test");

  ASSERT_TRUE(silent);
  EXPECT_EQ(silent->error(), make_error_code(errc::cancelled));
  ASSERT_TRUE(r) << r.error().message();
}

TEST_F(PathResolverTest, UnusableInterfaceFailsFastInsteadOfLeaking) {
  server_.set("a.fleety.test", {.addresses = {"198.18.0.10"}});
  path_resolver resolver(ctx_.get_executor(), options_for_fake(/*interface=*/"fleetynodev0"));

  const auto start = clock_type::now();
  const auto r = resolve(resolver, "a.fleety.test");

  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), make_error_code(errc::server_failure));
  EXPECT_LT(clock_type::now() - start, 300ms);
  EXPECT_EQ(server_.total_queries(), 0);  // nothing left through another device
}

TEST_F(PathResolverTest, BadServerIsRejectedWithItsName) {
  for (const std::string bad :
       {"not-an-ip", "127.0.0.1:99999", "[::1", "198.18.0.53:", "[198.18.0.53]:53"}) {
    path_resolver::options options;
    options.servers = {"127.0.0.1", bad};
    try {
      path_resolver resolver(ctx_.get_executor(), options);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const std::runtime_error& e) {
      EXPECT_THAT(e.what(), HasSubstr("\"" + bad + "\"")) << bad;
    }
  }
}

TEST_F(PathResolverTest, AcceptsEveryDocumentedServerForm) {
  path_resolver::options options;
  options.servers = {"198.18.0.53", "127.0.0.1:5353", "[::1]:53", "[::1]", "::1"};
  EXPECT_NO_THROW(path_resolver(ctx_.get_executor(), options));
}

TEST_F(PathResolverTest, BadOptionsAreRejected) {
  path_resolver::options options;
  options.tries = 0;
  EXPECT_THROW(path_resolver(ctx_.get_executor(), options), std::runtime_error);
  options.tries = 2;
  options.timeout = 0ms;
  EXPECT_THROW(path_resolver(ctx_.get_executor(), options), std::runtime_error);
}

}  // namespace
}  // namespace fleety::dns
