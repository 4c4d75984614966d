#include "path/monitor.hpp"

#include <gtest/gtest.h>
#include <net/if.h>
#include <sched.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
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

TEST(ChooseProbeTarget, TheConfigsProbeElseARecentNodeElseTheDnsServer) {
  const tcp::endpoint dns(asio::ip::make_address("192.168.1.1"), 53);
  const tcp::endpoint node(asio::ip::make_address("198.18.1.80"), 443);
  monitor::path_spec spec{"wifi", "wlan0", false, dns, false};
  EXPECT_EQ(choose_probe_target(spec, std::nullopt, {}).target, dns);
  EXPECT_EQ(choose_probe_target(spec, std::nullopt, {}).why,
            "its DNS server; no node fetched from lately");
  // A node the path fetched from a minute ago: the probes cross what its traffic crosses.
  const auto learned = choose_probe_target(spec, node, std::chrono::minutes(1));
  EXPECT_EQ(learned.target, node);
  EXPECT_EQ(learned.why, "a node it fetched from");
  // Too long ago: back to the DNS server; with none, not probed.
  EXPECT_EQ(choose_probe_target(spec, node, std::chrono::minutes(11)).target, dns);
  spec.probe.reset();
  EXPECT_EQ(choose_probe_target(spec, node, std::chrono::minutes(11)).target, std::nullopt);
  EXPECT_EQ(choose_probe_target(spec, node, std::chrono::seconds(3)).target, node);
  // The config's probe wins over everything.
  const tcp::endpoint configured(asio::ip::make_address("198.18.10.1"), 80);
  spec.probe = configured;
  spec.probe_configured = true;
  EXPECT_EQ(choose_probe_target(spec, node, std::chrono::seconds(3)).target, configured);
  // spec_of: the config's probe is marked as such.
  core::path_config path;
  path.name = "cell";
  path.interface = "rmnet0";
  path.kind = core::path_kind::cellular;
  path.probe = "198.18.10.1:80";
  const auto from_config = spec_of(path);
  EXPECT_TRUE(from_config.probe_configured);
  EXPECT_TRUE(from_config.cellular);
  path.probe.clear();
  path.dns_servers = {"192.168.1.1"};
  EXPECT_FALSE(spec_of(path).probe_configured);
  EXPECT_EQ(spec_of(path).probe, dns);
}

/// Runs `io` until `done()` or `limit`.
template <class Done>
bool run_until(asio::io_context& io, Done done, milliseconds limit) {
  const auto deadline = clock_type::now() + limit;
  while (!done() && clock_type::now() < deadline) {
    io.restart();  // (it stops when it runs out of work)
    io.run_for(milliseconds(10));
  }
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
  // A probe may still be finishing: its owner waits for it before the monitor goes.
  bool stopped = false;
  asio::co_spawn(io, m.async_stop(), [&](std::exception_ptr) { stopped = true; });
  EXPECT_TRUE(run_until(
      io, [&] { return stopped; }, milliseconds(3000)));
}

TEST(Monitor, LivenessIsTheMonitorsUpAndDownOnceItIsGone) {
  asio::io_context io;
  core::monitor_config config;
  liveness up;
  {
    monitor m(io.get_executor(), config,
              {{"loop", "lo", false, std::nullopt}, {"gone", "fleetynodev0", false, std::nullopt}},
              nullptr, nullptr);
    up = m.as_liveness();
    EXPECT_FALSE(up(0));  // not started: nothing is up yet
    m.start();
    // lo has 127.0.0.1: usable; the other interface does not exist.
    EXPECT_EQ(up(0), m.up(0));
    EXPECT_TRUE(up(0));
    EXPECT_FALSE(up(1));
    EXPECT_FALSE(up(7));  // no such path
    EXPECT_TRUE(m.watching_links() || ::geteuid() != 0);
  }
  EXPECT_FALSE(up(0));
  EXPECT_FALSE(is_up(up, 0));
  EXPECT_TRUE(is_up(liveness{}, 3));  // nobody measures: every path is tried
}

TEST(Monitor, ASlotTakenByAnotherInterfaceIsThatOnesFromThen) {
  asio::io_context io;
  core::monitor_config config;
  monitor m(io.get_executor(), config,
            {{"loop", "lo", false, std::nullopt}, {"", "", false, std::nullopt}}, nullptr, nullptr);
  m.start();
  EXPECT_TRUE(m.up(0));
  EXPECT_FALSE(m.up(1));  // a free slot is down
  EXPECT_EQ(m.probe_description(1), "");
  // An uplink takes the free slot: up at once, its interface watched.
  m.assign(1, {"loop-2", "lo", false, std::nullopt});
  EXPECT_TRUE(m.up(1));
  EXPECT_EQ(m.paths()[1].name, "loop-2");
  EXPECT_EQ(m.probe_description(1),
            "off until it fetches from a node (no probe target, no DNS server)");
  // It leaves: down again; the other path did not notice.
  m.assign(1, {"", "", false, std::nullopt});
  EXPECT_FALSE(m.up(1));
  EXPECT_TRUE(m.up(0));
  m.stop();
}

// --- with the kernel's links, in a private network namespace (root) ---

/// Runs `body` on a thread of its own in a new, empty network namespace (see
/// link_watcher_test.cpp); returns why not, or "".
std::string in_private_netns(const std::function<void()>& body) {
  std::string why;
  std::thread thread([&] {
    if (::unshare(CLONE_NEWNET) != 0) {
      why = std::string("unshare(CLONE_NEWNET): ") + std::strerror(errno);
      return;
    }
    struct if_nameindex* names = ::if_nameindex();
    const bool only_lo = names != nullptr && names[0].if_name != nullptr &&
                         std::strcmp(names[0].if_name, "lo") == 0 && names[1].if_name == nullptr;
    if (names != nullptr) ::if_freenameindex(names);
    if (!only_lo) {
      why = "the new network namespace is not empty";
      return;
    }
    body();
  });
  thread.join();
  return why;
}

bool sh(const std::string& command) {
  return std::system((command + " >/dev/null 2>&1").c_str()) == 0;
}

class MonitorNetnsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (a private network namespace)";
    if (!sh("ip -V")) GTEST_SKIP() << "needs ip (iproute2)";
  }
  void InPrivateNetns(const std::function<void()>& body) {
    const std::string why = in_private_netns(body);
    if (!why.empty()) GTEST_SKIP() << why;
  }
};

TEST_F(MonitorNetnsTest, LinkListenersHearEachChangeAfterTheMonitorActedOnIt) {
  InPrivateNetns([] {
    asio::io_context io;
    core::monitor_config config;
    config.interval = milliseconds(50);
    monitor m(io.get_executor(), config, {{"dummy", "d0", false, std::nullopt}}, nullptr, nullptr);
    m.start();
    ASSERT_TRUE(m.watching_links());
    int first = 0;
    int second = 0;
    bool up_when_told = false;
    auto one = m.subscribe_links([&](const link_state&, const link_state& after) {
      ++first;
      // The monitor's own state is already the new one.
      if (usable(after)) up_when_told = m.up(0);
    });
    monitor::link_subscription two;
    two = m.subscribe_links([&](const link_state&, const link_state&) {
      ++second;
      two = monitor::link_subscription{};  // a listener may drop itself while told
    });
    ASSERT_TRUE(
        sh("ip link add d0 type veth peer name d1 && ip link set d0 addrgenmode none && "
           "ip link set d1 addrgenmode none && ip link set d1 up && ip link set d0 up && "
           "ip addr add 198.18.99.1/24 dev d0"));
    ASSERT_TRUE(run_until(
        io, [&] { return m.up(0); }, milliseconds(3000)));
    EXPECT_TRUE(up_when_told);
    EXPECT_GE(first, 2);  // appeared, up, address (some may come as one event)
    EXPECT_EQ(second, 1);
    // Unsubscribed: not told any more.
    one = monitor::link_subscription{};
    const int before = first;
    ASSERT_TRUE(sh("ip link del d0"));
    ASSERT_TRUE(run_until(
        io, [&] { return !m.up(0); }, milliseconds(3000)));
    EXPECT_EQ(first, before);
    m.stop();
  });
}

TEST_F(MonitorNetnsTest, AsyncStopEndsAProbeInFlightAtOnce) {
  InPrivateNetns([] {
    // A probe to a neighbour that never answers ARP: its connect would wait 2 s.
    ASSERT_TRUE(
        sh("ip link add d0 type veth peer name d1 && ip link set d0 addrgenmode none && "
           "ip link set d1 addrgenmode none && ip link set d1 up && ip link set d0 up && "
           "ip addr add 198.18.99.1/24 dev d0"));
    asio::io_context io;
    core::monitor_config config;
    config.interval = milliseconds(20);
    config.probe_interval = milliseconds(20);
    const tcp::endpoint silent(asio::ip::make_address("198.18.99.2"), 80);
    monitor m(io.get_executor(), config, {{"dummy", "d0", false, silent}}, nullptr, nullptr);
    m.start();
    ASSERT_TRUE(run_until(
        io, [&] { return m.probes_sent(0) > 0; }, milliseconds(2000)));
    const auto asked = clock_type::now();
    bool stopped = false;
    asio::co_spawn(io, m.async_stop(), [&](std::exception_ptr) { stopped = true; });
    ASSERT_TRUE(run_until(
        io, [&] { return stopped; }, milliseconds(3000)));
    EXPECT_LT(clock_type::now() - asked, milliseconds(500));
  });
}

}  // namespace
}  // namespace fleety::path
