#include "path/monitor.hpp"

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/write.hpp>
#include <thread>

namespace fleety::path {
namespace {

namespace asio = boost::asio;
using asio::ip::tcp;
using std::chrono::milliseconds;

TEST(ProbeTarget, ConfiguredElseFirstDnsServerOnPort53) {
  core::path_config path;
  EXPECT_EQ(probe_target(path), std::nullopt);
  path.dns_servers = {"198.18.0.53:5353"};
  EXPECT_EQ(probe_target(path), tcp::endpoint(asio::ip::make_address("198.18.0.53"), 53));
  path.dns_servers = {"[2001:db8::53]:5353"};
  EXPECT_EQ(probe_target(path), tcp::endpoint(asio::ip::make_address("2001:db8::53"), 53));
  path.probe = "198.18.10.1:80";
  EXPECT_EQ(probe_target(path), tcp::endpoint(asio::ip::make_address("198.18.10.1"), 80));
  path.probe = "[2001:db8::1]:443";
  EXPECT_EQ(probe_target(path), tcp::endpoint(asio::ip::make_address("2001:db8::1"), 443));
}

/// Runs `io` until `done()` or `limit`.
template <class Done>
bool run_until(asio::io_context& io, Done done, milliseconds limit) {
  const auto deadline = clock_type::now() + limit;
  while (!done() && clock_type::now() < deadline) io.run_for(milliseconds(10));
  return done();
}

TEST(Monitor, ProbesAnIdlePathAndMeasuresAWatchedSocket) {
  asio::io_context io;
  tcp::acceptor listener(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  core::monitor_config config;
  config.interval = milliseconds(50);
  config.probe_interval = milliseconds(100);
  int rounds = 0;
  monitor m(io.get_executor(), config,
            {{"loop", "lo", false, listener.local_endpoint()},
             {"gone", "fleetynodev0", true, listener.local_endpoint()}},
            nullptr, [&](clock_type::time_point) { ++rounds; });
  m.start();
  EXPECT_TRUE(m.up(0));
  EXPECT_FALSE(m.up(1));  // no such interface: down, and never probed
  ASSERT_TRUE(run_until(
      io, [&] { return m.current(0).rtt.has_value(); }, milliseconds(3000)));
  EXPECT_GE(m.probes_sent(0), 1U);
  EXPECT_EQ(m.probes_sent(1), 0U);
  EXPECT_EQ(*m.current(0).loss, 0.0);
  EXPECT_LT(*m.current(0).rtt, milliseconds(50));  // loopback

  // A busy socket: measured by its traffic, and no more probes meanwhile.
  // (Its own listener: the probes' connections wait in the first one's backlog.)
  tcp::acceptor data_listener(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  tcp::socket client(io);
  client.connect(data_listener.local_endpoint());
  tcp::socket server = data_listener.accept();
  client.non_blocking(true);
  auto watch = m.watch_socket(0, server.native_handle());
  const auto probes_before = m.probes_sent(0);
  std::vector<char> chunk(64 * 1024, 'x');
  std::vector<char> sink(256 * 1024);
  const auto stop_at = clock_type::now() + milliseconds(1500);
  while (clock_type::now() < stop_at) {
    boost::system::error_code ec;
    client.write_some(asio::buffer(chunk), ec);  // non-blocking: never waits on a full buffer
    while (server.available() > 0) server.read_some(asio::buffer(sink));
    io.poll();
  }
  const auto q = m.current(0);
  ASSERT_TRUE(q.throughput_bps);
  EXPECT_GT(*q.throughput_bps, 10e6);  // loopback moves far more than 10 Mbit/s
  EXPECT_LE(m.probes_sent(0), probes_before + 1);
  EXPECT_GT(rounds, 10);
  m.stop();
  const int after_stop = rounds;
  io.run_for(milliseconds(200));
  EXPECT_EQ(rounds, after_stop);
}

}  // namespace
}  // namespace fleety::path
