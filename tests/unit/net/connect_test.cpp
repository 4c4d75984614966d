#include "net/connect.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <optional>
#include <vector>

namespace fleety::net {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using namespace std::chrono_literals;

std::optional<error_code> connect_once(asio::io_context& io, tcp::socket& socket,
                                       const tcp::endpoint& to, std::chrono::milliseconds timeout) {
  std::optional<error_code> result;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        result = co_await async_connect_on_path(socket, to, "", timeout);
      },
      asio::detached);
  io.restart();
  io.run_for(5s);
  return result;
}

TEST(ConnectOnPath, ConnectsToAListener) {
  asio::io_context io;
  tcp::acceptor listener(io, {asio::ip::address_v4::loopback(), 0});
  tcp::socket socket(io);
  const auto ec = connect_once(io, socket, listener.local_endpoint(), 1000ms);
  ASSERT_TRUE(ec.has_value());
  EXPECT_FALSE(*ec) << ec->message();
  EXPECT_TRUE(socket.is_open());
  tcp::no_delay nodelay;
  socket.get_option(nodelay);
  EXPECT_TRUE(nodelay.value());  // requests go out whole, not behind Nagle
}

TEST(ConnectOnPath, RefusedClosesTheSocket) {
  asio::io_context io;
  tcp::endpoint closed;
  {
    tcp::acceptor listener(io, {asio::ip::address_v4::loopback(), 0});
    closed = listener.local_endpoint();
  }
  tcp::socket socket(io);
  const auto ec = connect_once(io, socket, closed, 1000ms);
  ASSERT_TRUE(ec.has_value());
  EXPECT_EQ(*ec, asio::error::connection_refused);
  EXPECT_FALSE(socket.is_open());
}

TEST(ConnectOnPath, GivesUpAtTheDeadline) {
  // A listener that never accepts, its queue full: further SYNs are dropped.
  asio::io_context io;
  tcp::acceptor listener(io);
  listener.open(tcp::v4());
  listener.bind({asio::ip::address_v4::loopback(), 0});
  listener.listen(0);
  // (Raw non-blocking connects: Asio's synchronous connect would wait for each.)
  std::vector<int> fillers;
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(listener.local_endpoint().port());
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (int i = 0; i < 4; ++i) {
    fillers.push_back(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    (void)::connect(fillers.back(), reinterpret_cast<const sockaddr*>(&to), sizeof to);
  }
  tcp::socket socket(io);
  const auto started = std::chrono::steady_clock::now();
  const auto ec = connect_once(io, socket, listener.local_endpoint(), 200ms);
  ASSERT_TRUE(ec.has_value());
  EXPECT_EQ(*ec, asio::error::timed_out);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 2s);
  EXPECT_FALSE(socket.is_open());
  for (const int fd : fillers) ::close(fd);
}

TEST(ConnectOnPath, BindingToAMissingInterfaceFails) {
  asio::io_context io;
  tcp::acceptor listener(io, {asio::ip::address_v4::loopback(), 0});
  tcp::socket socket(io);
  std::optional<error_code> result;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        result =
            co_await async_connect_on_path(socket, listener.local_endpoint(), "no-such-if0", 1s);
      },
      asio::detached);
  io.run_for(2s);
  ASSERT_TRUE(result.has_value());
  EXPECT_TRUE(*result);
  EXPECT_FALSE(socket.is_open());
}

}  // namespace
}  // namespace fleety::net
