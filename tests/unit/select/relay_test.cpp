#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <optional>

#include "net/task_group.hpp"
#include "select/select.hpp"

namespace fleety::select {
namespace {

namespace asio = boost::asio;
using asio::ip::tcp;
using namespace std::chrono_literals;

/// A connected loopback pair: {ours, theirs}.
std::pair<tcp::socket, tcp::socket> connected_pair(asio::io_context& io) {
  tcp::acceptor listener(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  tcp::socket ours(io);
  ours.connect(listener.local_endpoint());
  return {std::move(ours), listener.accept()};
}

TEST(Relay, CancelledByItsOwnerItEndsAtOnceAndSaysWhatItCarried) {
  asio::io_context io;
  auto [app, app_peer] = connected_pair(io);
  auto [server, server_peer] = connected_pair(io);
  net::task_group group(io.get_executor());
  std::optional<relay_totals> totals;
  group.spawn(
      [](tcp::socket& a, tcp::socket& s,
         std::optional<relay_totals>& out) -> asio::awaitable<void> {
        out = co_await async_relay(a, s, std::chrono::minutes(30));
      }(app, server, totals),
      "relay");
  // Some bytes go through, then both sides stay quiet (an idle long-lived flow).
  asio::write(server_peer, asio::buffer(std::string("hello")));
  char got[5];
  io.run_for(100ms);
  asio::read(app_peer, asio::buffer(got));
  EXPECT_EQ(std::string(got, 5), "hello");
  const auto cancelled = std::chrono::steady_clock::now();
  group.cancel();
  bool joined = false;
  asio::co_spawn(io, group.async_join(), [&](std::exception_ptr) { joined = true; });
  while (!joined && std::chrono::steady_clock::now() - cancelled < 2s) io.run_for(10ms);
  EXPECT_TRUE(joined);
  EXPECT_LT(std::chrono::steady_clock::now() - cancelled, 500ms);
  ASSERT_TRUE(totals.has_value()) << "the relay ended by an exception, not with its totals";
  EXPECT_EQ(totals->server_to_app, 5U);
  EXPECT_FALSE(totals->idle_timeout);
}

}  // namespace
}  // namespace fleety::select
