#include "mphttp/connection_pool.hpp"

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

// The pool of warm connections over real loopback sockets: what it gives back, what it
// refuses to give back (closed, chatty, too old), its bounds and the per-host counts.

namespace fleety::mphttp::detail {
namespace {

using namespace std::chrono_literals;

class pool_test : public ::testing::Test {
 protected:
  pool_test() : acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {}

  /// A connected upstream, and the server's end of it.
  std::pair<std::unique_ptr<upstream>, std::unique_ptr<tcp::socket>> connect() {
    auto up = std::make_unique<upstream>(io.get_executor());
    up->stream.socket().connect(acceptor.local_endpoint());
    auto server = std::make_unique<tcp::socket>(acceptor.accept());
    return {std::move(up), std::move(server)};
  }
  static std::uint16_t local_port(upstream& up) {
    return up.stream.socket().local_endpoint().port();
  }

  asio::io_context io;
  tcp::acceptor acceptor;
  const pool_key wifi_key{"wifi", "cdn.example", 80, ""};
  const connection_pool::clock::time_point t0 = connection_pool::clock::now();
};

TEST_F(pool_test, GivesBackTheParkedConnectionOnceAndMarksItReused) {
  connection_pool pool;
  auto [up, server] = connect();
  const auto port = local_port(*up);
  pool.park(wifi_key, *up, t0);
  EXPECT_FALSE(up->is_open());  // the pool has it now
  EXPECT_EQ(pool.counts().idle, 1u);
  auto again = pool.take(wifi_key, t0 + 1s);
  ASSERT_NE(again, nullptr);
  EXPECT_TRUE(again->reused);
  EXPECT_EQ(local_port(*again), port);
  EXPECT_EQ(pool.take(wifi_key, t0 + 1s), nullptr);
  EXPECT_EQ(pool.counts().reused, 1u);
  EXPECT_EQ(pool.counts().idle, 0u);
}

TEST_F(pool_test, OtherPathHostOrServerGetsNothing) {
  connection_pool pool;
  auto [up, server] = connect();
  pool.park(wifi_key, *up, t0);
  EXPECT_EQ(pool.take({"cell", "cdn.example", 80, ""}, t0), nullptr);
  EXPECT_EQ(pool.take({"wifi", "other.example", 80, ""}, t0), nullptr);
  EXPECT_EQ(pool.take({"wifi", "cdn.example", 8080, ""}, t0), nullptr);
  EXPECT_EQ(pool.take({"wifi", "cdn.example", 80, "198.18.10.1"}, t0), nullptr);
  EXPECT_NE(pool.take(wifi_key, t0), nullptr);
}

TEST_F(pool_test, ConnectionTheServerClosedWhileIdleIsNotGivenBack) {
  connection_pool pool;
  auto [up, server] = connect();
  pool.park(wifi_key, *up, t0);
  server->close();  // FIN while idle (a server's keep-alive timeout)
  // (The FIN reaches the client's socket at once on loopback; allow the stack a moment.)
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(pool.take(wifi_key, t0 + 1s), nullptr);
  EXPECT_EQ(pool.counts().idle, 0u);
}

TEST_F(pool_test, ConnectionWithUnaskedBytesIsNotGivenBack) {
  connection_pool pool;
  auto [up, server] = connect();
  pool.park(wifi_key, *up, t0);
  asio::write(*server, asio::buffer(std::string_view("HTTP/1.1 408 Request Timeout\r\n\r\n")));
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(pool.take(wifi_key, t0 + 1s), nullptr);
}

TEST_F(pool_test, IdleTimeoutClosesOnTakeAndOnExpire) {
  connection_pool pool({6, 32, 30s});
  auto [a, server_a] = connect();
  auto [b, server_b] = connect();
  pool.park(wifi_key, *a, t0);
  EXPECT_EQ(pool.take(wifi_key, t0 + 31s), nullptr);
  pool.park(wifi_key, *b, t0);
  pool.expire(t0 + 29s);
  EXPECT_EQ(pool.counts().idle, 1u);
  pool.expire(t0 + 31s);
  EXPECT_EQ(pool.counts().idle, 0u);
}

TEST_F(pool_test, FullPoolClosesTheOldestAndNewestIsTakenFirst) {
  connection_pool pool({6, 2, 30s});
  std::vector<std::unique_ptr<tcp::socket>> servers;
  std::vector<std::uint16_t> ports;
  for (int i = 0; i < 3; ++i) {
    auto [up, server] = connect();
    ports.push_back(local_port(*up));
    servers.push_back(std::move(server));
    pool.park(i == 0 ? pool_key{"cell", "cdn.example", 80, ""} : wifi_key, *up,
              t0 + std::chrono::seconds(i));
  }
  EXPECT_EQ(pool.counts().idle, 2u);
  EXPECT_EQ(pool.take({"cell", "cdn.example", 80, ""}, t0 + 3s), nullptr);  // oldest went
  auto newest = pool.take(wifi_key, t0 + 3s);
  ASSERT_NE(newest, nullptr);
  EXPECT_EQ(local_port(*newest), ports[2]);
}

TEST_F(pool_test, ZeroIdleConnectionsKeepsNone) {
  connection_pool pool({6, 0, 30s});
  auto [up, server] = connect();
  pool.park(wifi_key, *up, t0);
  EXPECT_FALSE(up->is_open());
  EXPECT_EQ(pool.counts().idle, 0u);
}

TEST_F(pool_test, ConnectionWithBufferedBytesIsClosedNotParked) {
  connection_pool pool;
  auto [up, server] = connect();
  auto piece = up->buffer.prepare(4);
  std::memcpy(piece.data(), "junk", 4);
  up->buffer.commit(4);
  pool.park(wifi_key, *up, t0);
  EXPECT_FALSE(up->is_open());
  EXPECT_EQ(pool.counts().idle, 0u);
}

TEST_F(pool_test, PerHostLimitCountsOpenConnectionsUntilTheyClose) {
  connection_pool pool({2, 32, 30s});
  auto [a, server_a] = connect();
  auto [b, server_b] = connect();
  EXPECT_TRUE(pool.may_open("cell", "cdn.example"));
  a->slot = pool.count("cell", "cdn.example");
  b->slot = pool.count("cell", "cdn.example");
  EXPECT_EQ(pool.open_count("cell", "cdn.example"), 2u);
  EXPECT_FALSE(pool.may_open("cell", "cdn.example"));
  EXPECT_TRUE(pool.may_open("wifi", "cdn.example"));    // another path
  EXPECT_TRUE(pool.may_open("cell", "other.example"));  // another host
  EXPECT_EQ(pool.counts().refused_over_limit, 1u);
  // Parked, still open: still counted; taken and moved: still one.
  pool.park(pool_key{"cell", "cdn.example", 80, ""}, *a, t0);
  EXPECT_EQ(pool.open_count("cell", "cdn.example"), 2u);
  auto taken = pool.take(pool_key{"cell", "cdn.example", 80, ""}, t0);
  upstream moved(io.get_executor());
  moved.adopt(*taken);
  EXPECT_EQ(pool.open_count("cell", "cdn.example"), 2u);
  moved.reset();
  EXPECT_EQ(pool.open_count("cell", "cdn.example"), 1u);
  b.reset();  // destroyed
  EXPECT_EQ(pool.open_count("cell", "cdn.example"), 0u);
  EXPECT_TRUE(pool.may_open("cell", "cdn.example"));
  pool.expire(t0);
  EXPECT_EQ(pool.open_count("cell", "cdn.example"), 0u);
}

}  // namespace
}  // namespace fleety::mphttp::detail
