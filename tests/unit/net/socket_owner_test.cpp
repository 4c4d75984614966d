#include "net/socket_owner.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace fleety::net {
namespace {

using boost::asio::ip::tcp;

/// Where the cgroup2 hierarchy is mounted (/proc/self/mountinfo), "" if nowhere.
std::string cgroup2_mount() {
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::string line;
  while (std::getline(mountinfo, line)) {
    const auto separator = line.find(" - ");
    if (separator == std::string::npos || line.compare(separator + 3, 8, "cgroup2 ") != 0) {
      continue;
    }
    std::istringstream fields(line);
    std::string id, parent, device, root, mount_point;
    fields >> id >> parent >> device >> root >> mount_point;
    return mount_point;
  }
  return "";
}

/// This process's cgroup v2 directory: the "0::" line of /proc/self/cgroup below the mount.
std::string own_cgroup_dir() {
  const std::string mount = cgroup2_mount();
  if (mount.empty()) return "";
  std::ifstream cgroups("/proc/self/cgroup");
  std::string line;
  while (std::getline(cgroups, line)) {
    if (line.rfind("0::", 0) == 0) {
      const std::string path = line.substr(3);
      return path == "/" ? mount : mount + path;
    }
  }
  return "";
}

std::uint64_t inode_of(int fd) {
  struct stat st {};
  EXPECT_EQ(::fstat(fd, &st), 0);
  return st.st_ino;
}

bool loopback_has_ipv6() {
  boost::asio::io_context io;
  tcp::acceptor acceptor(io);
  boost::system::error_code error;
  acceptor.open(tcp::v6(), error);
  if (!error) acceptor.bind({boost::asio::ip::address_v6::loopback(), 0}, error);
  return !error;
}

/// A connected pair on loopback: a listener, the client end and the accepted end.
struct loopback_connection {
  explicit loopback_connection(const boost::asio::ip::address& loopback)
      : acceptor(io, {loopback, 0}), client(io), server(io) {
    client.connect(acceptor.local_endpoint());
    server = acceptor.accept();
  }

  boost::asio::io_context io;
  tcp::acceptor acceptor;
  tcp::socket client;
  tcp::socket server;
};

TEST(FindTcpSocketOwner, FindsTheClientSocketOfAnIpv4Connection) {
  loopback_connection connection(boost::asio::ip::address_v4::loopback());
  const auto owner = find_tcp_socket_owner(connection.client.local_endpoint(),
                                           connection.client.remote_endpoint());
  ASSERT_TRUE(owner) << owner.error();
  EXPECT_EQ(owner->uid, ::getuid());
  EXPECT_EQ(owner->inode, inode_of(connection.client.native_handle()));
  const std::string cgroup = own_cgroup_dir();
  ASSERT_FALSE(cgroup.empty()) << "no cgroup2 mount";
  ASSERT_TRUE(owner->cgroup_id.has_value()) << "kernel without CONFIG_SOCK_CGROUP_DATA";
  EXPECT_EQ(owner->cgroup_id, cgroup_id_of(cgroup)) << cgroup;
}

TEST(FindTcpSocketOwner, SeenFromTheAcceptedEndFindsTheOtherSocket) {
  // What interception does: the accepted socket's remote endpoint is the app's local one.
  loopback_connection connection(boost::asio::ip::address_v4::loopback());
  const auto app = find_tcp_socket_owner(connection.server.remote_endpoint(),
                                         connection.server.local_endpoint());
  ASSERT_TRUE(app) << app.error();
  EXPECT_EQ(app->inode, inode_of(connection.client.native_handle()));
  const auto accepted = find_tcp_socket_owner(connection.server.local_endpoint(),
                                              connection.server.remote_endpoint());
  ASSERT_TRUE(accepted) << accepted.error();
  EXPECT_EQ(accepted->inode, inode_of(connection.server.native_handle()));
}

TEST(FindTcpSocketOwner, FindsTheClientSocketOfAnIpv6Connection) {
  if (!loopback_has_ipv6()) GTEST_SKIP() << "loopback has no ::1";
  loopback_connection connection(boost::asio::ip::address_v6::loopback());
  const auto owner = find_tcp_socket_owner(connection.client.local_endpoint(),
                                           connection.client.remote_endpoint());
  ASSERT_TRUE(owner) << owner.error();
  EXPECT_EQ(owner->uid, ::getuid());
  EXPECT_EQ(owner->inode, inode_of(connection.client.native_handle()));
  EXPECT_EQ(owner->cgroup_id, cgroup_id_of(own_cgroup_dir()));
}

TEST(FindTcpSocketOwner, FindsADualStackSocketConnectedToAnIpv4Address) {
  if (!loopback_has_ipv6()) GTEST_SKIP() << "no IPv6";
  boost::asio::io_context io;
  tcp::acceptor acceptor(io, {boost::asio::ip::address_v4::loopback(), 0});
  tcp::socket client(io);
  client.open(tcp::v6());
  client.set_option(boost::asio::ip::v6_only(false));
  const auto mapped = boost::asio::ip::make_address_v6(boost::asio::ip::v4_mapped,
                                                       boost::asio::ip::address_v4::loopback());
  client.connect({mapped, acceptor.local_endpoint().port()});
  tcp::socket server = acceptor.accept();
  // The client's endpoints are IPv4-mapped; the accepted end's are plain IPv4: both find it.
  ASSERT_TRUE(client.local_endpoint().address().to_v6().is_v4_mapped());
  const auto by_mapped = find_tcp_socket_owner(client.local_endpoint(), client.remote_endpoint());
  ASSERT_TRUE(by_mapped) << by_mapped.error();
  EXPECT_EQ(by_mapped->inode, inode_of(client.native_handle()));
  const auto by_v4 = find_tcp_socket_owner(server.remote_endpoint(), server.local_endpoint());
  ASSERT_TRUE(by_v4) << by_v4.error();
  EXPECT_EQ(by_v4->inode, inode_of(client.native_handle()));
}

TEST(FindTcpSocketOwner, ATupleWithNoSocketIsNoSuchSocket) {
  loopback_connection connection(boost::asio::ip::address_v4::loopback());
  const tcp::endpoint nowhere(boost::asio::ip::make_address("127.0.0.1"), 1);
  const auto owner = find_tcp_socket_owner(connection.client.local_endpoint(), nowhere);
  ASSERT_FALSE(owner);
  EXPECT_EQ(owner.error().rfind("no TCP socket ", 0), 0U) << owner.error();
}

TEST(FindTcpSocketOwner, AListenerOnTheLocalEndpointIsNotAMatch) {
  // The kernel's exact lookup falls back to a listener on the local address and port.
  loopback_connection connection(boost::asio::ip::address_v4::loopback());
  const tcp::endpoint stranger(boost::asio::ip::make_address("127.0.0.2"), 40000);
  const auto owner = find_tcp_socket_owner(connection.acceptor.local_endpoint(), stranger);
  ASSERT_FALSE(owner);
  EXPECT_EQ(owner.error().rfind("no TCP socket ", 0), 0U) << owner.error();
}

TEST(FindTcpSocketOwner, MixedFamiliesAreRefused) {
  const auto owner = find_tcp_socket_owner({boost::asio::ip::make_address("127.0.0.1"), 1},
                                           {boost::asio::ip::make_address("::1"), 2});
  ASSERT_FALSE(owner);
  EXPECT_NE(owner.error().find("mixes IPv4 and IPv6"), std::string::npos) << owner.error();
}

TEST(FindTcpSocketOwner, AClosedSocketHasNoInodeThenIsGone) {
  loopback_connection connection(boost::asio::ip::address_v4::loopback());
  const tcp::endpoint local = connection.client.local_endpoint();
  const tcp::endpoint remote = connection.client.remote_endpoint();
  // Closed by its process first: FIN_WAIT, held by no file any more, still the same owner.
  connection.client.close();
  const auto orphan = find_tcp_socket_owner(local, remote);
  ASSERT_TRUE(orphan) << orphan.error();
  EXPECT_EQ(orphan->inode, 0U);
  EXPECT_EQ(orphan->uid, ::getuid());
  // Then the peer closes: TIME_WAIT, which has no owner to report.
  connection.server.close();
  std::string error;
  for (int attempt = 0; attempt < 100 && error.empty(); ++attempt) {
    const auto owner = find_tcp_socket_owner(local, remote);
    if (!owner) error = owner.error();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_NE(error.find("TIME_WAIT"), std::string::npos) << error;
}

TEST(FindTcpSocketOwner, OneLookupIsOneCheapRoundTrip) {
  loopback_connection connection(boost::asio::ip::address_v4::loopback());
  const tcp::endpoint local = connection.client.local_endpoint();
  const tcp::endpoint remote = connection.client.remote_endpoint();
  constexpr int lookups = 2000;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < lookups; ++i) {
    ASSERT_TRUE(find_tcp_socket_owner(local, remote));
  }
  const auto elapsed = std::chrono::steady_clock::now() - start;
  const double us = std::chrono::duration<double, std::micro>(elapsed).count() / lookups;
  std::printf("find_tcp_socket_owner: %.2f us per lookup\n", us);
  RecordProperty("us_per_lookup", std::to_string(us));
  EXPECT_LT(us, 1000.0);  // generous: a loaded CI machine, sanitizers
}

TEST(FindTcpSocketOwner, EachThreadHasItsOwnNetlinkSocket) {
  loopback_connection connection(boost::asio::ip::address_v4::loopback());
  const tcp::endpoint local = connection.client.local_endpoint();
  const tcp::endpoint remote = connection.client.remote_endpoint();
  const std::uint64_t inode = inode_of(connection.client.native_handle());
  std::atomic<int> found{0};
  std::vector<std::thread> threads;
  threads.reserve(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        const auto owner = find_tcp_socket_owner(local, remote);
        if (owner && owner->inode == inode) ++found;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(found.load(), 4 * 200);
}

/// A child cgroup below the cgroup2 mount for one test, removed (with retries: the cgroup stays
/// populated for a moment after its last process is reaped) even when the test fails.
class scratch_cgroup {
 public:
  scratch_cgroup() {
    const std::string mount = cgroup2_mount();
    if (mount.empty()) return;
    const std::string dir = mount + "/fleety-test-" + std::to_string(::getpid());
    if (::mkdir(dir.c_str(), 0755) == 0) dir_ = dir;
  }
  ~scratch_cgroup() {
    if (dir_.empty()) return;
    for (int attempt = 0; attempt < 100 && ::rmdir(dir_.c_str()) != 0; ++attempt) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  scratch_cgroup(const scratch_cgroup&) = delete;
  scratch_cgroup& operator=(const scratch_cgroup&) = delete;

  const std::string& dir() const { return dir_; }  ///< "" when it could not be made

 private:
  std::string dir_;  ///< the cgroup's directory; owned: removed on destruction
};

/// A forked child, killed and reaped on destruction if the test has not waited for it.
struct child_process {
  pid_t pid = -1;
  ~child_process() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
};

TEST(FindTcpSocketOwner, ReportsTheCgroupOfAnotherProcess) {
  scratch_cgroup cgroup;
  if (cgroup.dir().empty()) GTEST_SKIP() << "cannot create a cgroup (not root, or no cgroup2)";
  boost::asio::io_context io;
  tcp::acceptor acceptor(io, {boost::asio::ip::address_v4::loopback(), 0});
  const tcp::endpoint target = acceptor.local_endpoint();
  const std::string procs = cgroup.dir() + "/cgroup.procs";

  child_process child;
  child.pid = ::fork();
  ASSERT_GE(child.pid, 0);
  if (child.pid == 0) {
    // The child: into the cgroup, then create and connect its socket (a socket's cgroup is the
    // one its creator was in at socket()), then wait for the parent to hang up.
    const int procs_fd = ::open(procs.c_str(), O_WRONLY);
    if (procs_fd < 0 || ::write(procs_fd, "0", 1) != 1) ::_exit(2);
    ::close(procs_fd);
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    const auto address = target.data();
    if (fd < 0 || ::connect(fd, address, target.size()) != 0) ::_exit(3);
    char byte = 0;
    const ssize_t ignored = ::read(fd, &byte, 1);
    (void)ignored;
    ::_exit(0);
  }
  tcp::socket server = acceptor.accept();
  const auto owner = find_tcp_socket_owner(server.remote_endpoint(), server.local_endpoint());
  ASSERT_TRUE(owner) << owner.error();
  EXPECT_EQ(owner->uid, ::getuid());
  EXPECT_NE(owner->inode, 0U);
  ASSERT_TRUE(owner->cgroup_id.has_value());
  EXPECT_EQ(owner->cgroup_id, cgroup_id_of(cgroup.dir()));
  EXPECT_NE(owner->cgroup_id, cgroup_id_of(own_cgroup_dir()));
  server.close();
  int status = 0;
  ASSERT_EQ(::waitpid(child.pid, &status, 0), child.pid);
  child.pid = -1;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

TEST(CgroupIdOf, IsTheInodeNumberOfTheCgroupDirectory) {
  const std::string dir = own_cgroup_dir();
  if (dir.empty()) GTEST_SKIP() << "no cgroup2 mount";
  const auto id = cgroup_id_of(dir);
  ASSERT_TRUE(id.has_value()) << dir;
  struct stat st {};
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_EQ(*id, st.st_ino);  // 64-bit kernels: kernfs ino = cgroup id
}

TEST(CgroupIdOf, IsNulloptOffCgroup2OrForAMissingPath) {
  EXPECT_EQ(cgroup_id_of("/tmp"), std::nullopt);
  EXPECT_EQ(cgroup_id_of("/proc"), std::nullopt);
  const std::string mount = cgroup2_mount();
  if (!mount.empty()) {
    EXPECT_EQ(cgroup_id_of(mount + "/no-such-cgroup-here"), std::nullopt);
  }
}

}  // namespace
}  // namespace fleety::net
