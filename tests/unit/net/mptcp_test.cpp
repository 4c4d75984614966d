#include "net/mptcp.hpp"

#include <gtest/gtest.h>
#include <linux/genetlink.h>
#include <linux/mptcp.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "net/splice.hpp"

namespace fleety::net {
namespace {

namespace asio = boost::asio;
using asio::ip::make_address;
using asio::ip::tcp;

// ---- pure parts -------------------------------------------------------------------------

TEST(Mptcp, FallsBackToTcpOnlyWhenTheKernelHasNoMptcp) {
  const std::pair<int, bool> cases[] = {
      {EPROTONOSUPPORT, true},  // not built in
      {ENOPROTOOPT, true},      // net.mptcp.enabled = 0 (tried: Linux 6.18)
      {EINVAL, true},           // kernels that know no protocol 262
      {EAFNOSUPPORT, true},     //
      {EMFILE, false},          // would fail TCP too: the connection fails
      {ENOBUFS, false},         //
      {EPERM, false},           //
      {EACCES, false},          //
  };
  for (const auto& [error, fallback] : cases)
    EXPECT_EQ(mptcp_unavailable(error), fallback) << std::strerror(error);
}

TEST(Mptcp, LimitsAllowOneSubflowPerOtherPathAndAreNeverLowered) {
  struct row {
    mptcp_limits current;
    std::size_t paths;
    mptcp_limits expected;
  };
  const row rows[] = {
      {{/*subflows=*/0, /*add_addr_accepted=*/0}, /*paths=*/2, {1, 0}},
      {{2, 0}, 2, {2, 0}},  // the kernel's default: already enough
      {{0, 3}, 3, {2, 3}},  // add_addr_accepted is not ours to change
      {{5, 0}, 3, {5, 0}},  // never lowered
      {{0, 0}, 1, {0, 0}},  // one path: nothing to add
      {{0, 0}, 0, {0, 0}},
      {{0, 0}, 20, {8, 0}},  // the kernel's maximum
  };
  for (const auto& r : rows) {
    EXPECT_EQ(limits_for_paths(r.current, r.paths), r.expected)
        << r.current.subflows << " subflows, " << r.paths << " paths";
  }
}

TEST(Mptcp, EndpointAddressesAreThoseThatReachServers) {
  const std::pair<const char*, bool> cases[] = {
      {"198.18.1.2", true},      {"10.0.0.1", true}, {"2001:db8::2", true},
      {"127.0.0.1", false},      {"0.0.0.0", false}, {"::1", false},
      {"fe80::2", false},        {"::", false},      {"224.0.0.1", false},
      {"::ffff:1.2.3.4", false},
  };
  for (const auto& [text, ok] : cases) EXPECT_EQ(endpoint_address(make_address(text)), ok) << text;
}

mptcp_endpoint endpoint(std::uint8_t id, const char* address, int ifindex, std::uint32_t flags) {
  return {id, make_address(address), 0, ifindex, flags};
}

constexpr auto subflow = mptcp_flag::subflow;
constexpr auto backup = mptcp_flag::backup;

TEST(Mptcp, FirstStartAddsOneEndpointPerPathAddressCellularAsBackup) {
  const auto changes = plan_endpoint_changes(
      /*existing=*/{}, /*ours=*/{},
      {{make_address("198.18.1.2"), /*ifindex=*/3, /*backup=*/false},
       {make_address("198.18.2.2"), 4, true}});
  EXPECT_TRUE(changes.remove.empty());
  EXPECT_TRUE(changes.foreign.empty());
  EXPECT_EQ(changes.add,
            (std::vector<mptcp_endpoint>{endpoint(1, "198.18.1.2", 3, subflow),
                                         endpoint(2, "198.18.2.2", 4, subflow | backup)}));
}

TEST(Mptcp, SomeoneElsesEndpointsAreLeftAloneAndTheirIdsSkipped) {
  const std::vector<mptcp_endpoint> existing{endpoint(1, "198.18.2.2", 0, subflow),
                                             endpoint(2, "198.18.3.9", 0, mptcp_flag::signal)};
  const auto changes = plan_endpoint_changes(
      existing, /*ours=*/{},
      {{make_address("198.18.1.2"), 3, false}, {make_address("198.18.2.2"), 4, true}});
  EXPECT_TRUE(changes.remove.empty());
  EXPECT_EQ(changes.foreign, (std::vector<mptcp_endpoint>{existing[0]}));
  EXPECT_EQ(changes.add, (std::vector<mptcp_endpoint>{endpoint(3, "198.18.1.2", 3, subflow)}));
}

TEST(Mptcp, OwnEndpointsStayWhileWantedAndGoWhenTheAddressChanges) {
  const std::vector<mptcp_endpoint> existing{endpoint(1, "198.18.1.2", 3, subflow),
                                             endpoint(2, "198.18.2.2", 4, subflow | backup),
                                             endpoint(7, "198.18.3.9", 0, mptcp_flag::signal)};
  // Nothing changed: nothing to do.
  auto same = plan_endpoint_changes(
      existing, {1, 2},
      {{make_address("198.18.1.2"), 3, false}, {make_address("198.18.2.2"), 4, true}});
  EXPECT_TRUE(same.remove.empty());
  EXPECT_TRUE(same.add.empty());
  EXPECT_TRUE(same.foreign.empty());
  // Cellular got a new address (and its old one is gone): the old endpoint goes, a new one
  // comes with a free id; the foreign one (7) is untouched.
  auto moved = plan_endpoint_changes(
      existing, {1, 2},
      {{make_address("198.18.1.2"), 3, false}, {make_address("198.18.2.77"), 4, true}});
  EXPECT_EQ(moved.remove, (std::vector<std::uint8_t>{2}));
  EXPECT_EQ(moved.add,
            (std::vector<mptcp_endpoint>{endpoint(3, "198.18.2.77", 4, subflow | backup)}));
  // The interface came back with another index: re-added with the new device.
  auto replugged = plan_endpoint_changes(
      existing, {1, 2},
      {{make_address("198.18.1.2"), 3, false}, {make_address("198.18.2.2"), 9, true}});
  EXPECT_EQ(replugged.remove, (std::vector<std::uint8_t>{2}));
  EXPECT_EQ(replugged.add,
            (std::vector<mptcp_endpoint>{endpoint(3, "198.18.2.2", 9, subflow | backup)}));
  // The path went away: its endpoint goes.
  auto gone = plan_endpoint_changes(existing, {1, 2}, {{make_address("198.18.1.2"), 3, false}});
  EXPECT_EQ(gone.remove, (std::vector<std::uint8_t>{2}));
  EXPECT_TRUE(gone.add.empty());
}

TEST(Mptcp, ForgottenIdsAndDuplicateAddressesAreHarmless) {
  // Id 5 was ours but someone deleted it; the same address wanted twice is added once.
  const auto changes = plan_endpoint_changes(
      {}, {5}, {{make_address("2001:db8::2"), 3, false}, {make_address("2001:db8::2"), 4, true}});
  EXPECT_TRUE(changes.remove.empty());
  EXPECT_EQ(changes.add, (std::vector<mptcp_endpoint>{endpoint(1, "2001:db8::2", 3, subflow)}));
}

// ---- generic netlink messages: read back with a parser of our own, not libmnl ----------

struct attribute {
  std::uint16_t type = 0;
  std::string payload;
};

/// The attributes in `bytes` (one nesting level), in order.
std::vector<attribute> attributes_of(std::string_view bytes) {
  std::vector<attribute> out;
  while (bytes.size() >= 4) {
    std::uint16_t length = 0;
    std::uint16_t type = 0;
    std::memcpy(&length, bytes.data(), 2);
    std::memcpy(&type, bytes.data() + 2, 2);
    if (length < 4 || length > bytes.size()) break;
    out.push_back({static_cast<std::uint16_t>(type & NLA_TYPE_MASK),
                   std::string(bytes.substr(4, length - 4))});
    bytes.remove_prefix(std::min<std::size_t>(bytes.size(), (length + 3U) & ~3U));
  }
  return out;
}

struct request {
  nlmsghdr header{};
  genlmsghdr genl{};
  std::vector<attribute> attributes;
};

request read_request(const std::vector<char>& bytes) {
  request out;
  EXPECT_GE(bytes.size(), NLMSG_HDRLEN + GENL_HDRLEN);
  std::memcpy(&out.header, bytes.data(), sizeof out.header);
  std::memcpy(&out.genl, bytes.data() + NLMSG_HDRLEN, sizeof out.genl);
  EXPECT_EQ(out.header.nlmsg_len, bytes.size());
  out.attributes = attributes_of(
      std::string_view(bytes.data(), bytes.size()).substr(NLMSG_HDRLEN + GENL_HDRLEN));
  return out;
}

template <class T>
T value_of(const attribute& a) {
  T v{};
  EXPECT_EQ(a.payload.size(), sizeof v) << "attribute " << a.type;
  std::memcpy(&v, a.payload.data(), std::min(sizeof v, a.payload.size()));
  return v;
}

std::map<std::uint16_t, attribute> by_type(const std::vector<attribute>& list) {
  std::map<std::uint16_t, attribute> out;
  for (const auto& a : list) out[a.type] = a;
  return out;
}

TEST(MptcpMessage, AddEndpointCarriesIdFamilyAddressDeviceAndFlags) {
  const auto bytes = mptcp_message::add_endpoint(
      /*family=*/0x1d, /*seq=*/7, endpoint(3, "198.18.2.2", 4, subflow | backup));
  const auto r = read_request(bytes);
  EXPECT_EQ(r.header.nlmsg_type, 0x1d);
  EXPECT_EQ(r.header.nlmsg_flags, NLM_F_REQUEST | NLM_F_ACK);
  EXPECT_EQ(r.header.nlmsg_seq, 7U);
  EXPECT_EQ(r.genl.cmd, MPTCP_PM_CMD_ADD_ADDR);
  EXPECT_EQ(r.genl.version, MPTCP_PM_VER);
  ASSERT_EQ(r.attributes.size(), 1U);
  EXPECT_EQ(r.attributes[0].type, MPTCP_PM_ATTR_ADDR);
  auto nested = by_type(attributes_of(r.attributes[0].payload));
  EXPECT_EQ(nested.size(), 5U);  // no port
  EXPECT_EQ(value_of<std::uint8_t>(nested[MPTCP_PM_ADDR_ATTR_ID]), 3);
  EXPECT_EQ(value_of<std::uint16_t>(nested[MPTCP_PM_ADDR_ATTR_FAMILY]), AF_INET);
  EXPECT_EQ(nested[MPTCP_PM_ADDR_ATTR_ADDR4].payload, std::string("\xc6\x12\x02\x02", 4));
  EXPECT_EQ(value_of<std::int32_t>(nested[MPTCP_PM_ADDR_ATTR_IF_IDX]), 4);
  EXPECT_EQ(value_of<std::uint32_t>(nested[MPTCP_PM_ADDR_ATTR_FLAGS]),
            MPTCP_PM_ADDR_FLAG_SUBFLOW | MPTCP_PM_ADDR_FLAG_BACKUP);
}

TEST(MptcpMessage, AddIpv6EndpointWithoutIdOrDevice) {
  const auto r = read_request(
      mptcp_message::add_endpoint(0x1d, 1, {0, make_address("2001:db8::2"), 0, 0, subflow}));
  ASSERT_EQ(r.attributes.size(), 1U);
  auto nested = by_type(attributes_of(r.attributes[0].payload));
  EXPECT_EQ(nested.size(), 3U);
  EXPECT_EQ(value_of<std::uint16_t>(nested[MPTCP_PM_ADDR_ATTR_FAMILY]), AF_INET6);
  EXPECT_EQ(nested[MPTCP_PM_ADDR_ATTR_ADDR6].payload,
            std::string("\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x02", 16));
  EXPECT_EQ(value_of<std::uint32_t>(nested[MPTCP_PM_ADDR_ATTR_FLAGS]), subflow);
}

TEST(MptcpMessage, RemoveDumpLimitsAndFamilyLookup) {
  auto remove = read_request(mptcp_message::remove_endpoint(0x1d, 2, 9));
  EXPECT_EQ(remove.genl.cmd, MPTCP_PM_CMD_DEL_ADDR);
  ASSERT_EQ(remove.attributes.size(), 1U);
  auto nested = attributes_of(remove.attributes[0].payload);
  ASSERT_EQ(nested.size(), 1U);
  EXPECT_EQ(nested[0].type, MPTCP_PM_ADDR_ATTR_ID);
  EXPECT_EQ(value_of<std::uint8_t>(nested[0]), 9);

  auto dump = read_request(mptcp_message::dump_endpoints(0x1d, 3));
  EXPECT_EQ(dump.genl.cmd, MPTCP_PM_CMD_GET_ADDR);
  EXPECT_EQ(dump.header.nlmsg_flags, NLM_F_REQUEST | NLM_F_DUMP);
  EXPECT_TRUE(dump.attributes.empty());

  auto get = read_request(mptcp_message::get_limits(0x1d, 4));
  EXPECT_EQ(get.genl.cmd, MPTCP_PM_CMD_GET_LIMITS);
  auto set = read_request(mptcp_message::set_limits(0x1d, 5,
                                                    {/*subflows=*/2,
                                                     /*add_addr_accepted=*/1}));
  EXPECT_EQ(set.genl.cmd, MPTCP_PM_CMD_SET_LIMITS);
  auto limits = by_type(set.attributes);
  EXPECT_EQ(value_of<std::uint32_t>(limits[MPTCP_PM_ATTR_SUBFLOWS]), 2U);
  EXPECT_EQ(value_of<std::uint32_t>(limits[MPTCP_PM_ATTR_RCV_ADD_ADDRS]), 1U);

  auto family = read_request(mptcp_message::get_family(6));
  EXPECT_EQ(family.header.nlmsg_type, GENL_ID_CTRL);
  EXPECT_EQ(family.genl.cmd, CTRL_CMD_GETFAMILY);
  ASSERT_EQ(family.attributes.size(), 1U);
  EXPECT_EQ(family.attributes[0].type, CTRL_ATTR_FAMILY_NAME);
  EXPECT_EQ(family.attributes[0].payload, std::string("mptcp_pm\0", 9));
}

/// A reply as the kernel sends it, written by hand.
class reply_builder {
 public:
  explicit reply_builder(std::uint8_t command) {
    bytes_.resize(NLMSG_HDRLEN + GENL_HDRLEN);
    genlmsghdr genl{command, 1, 0};
    std::memcpy(bytes_.data() + NLMSG_HDRLEN, &genl, sizeof genl);
  }
  template <class T>
  reply_builder& put(std::uint16_t type, const T& value) {
    return put_raw(type, std::string(reinterpret_cast<const char*>(&value), sizeof value));
  }
  reply_builder& put_raw(std::uint16_t type, const std::string& payload) {
    const auto length = static_cast<std::uint16_t>(4 + payload.size());
    std::string a(4, '\0');
    std::memcpy(a.data(), &length, 2);
    std::memcpy(a.data() + 2, &type, 2);
    a += payload;
    a.resize((a.size() + 3) & ~std::size_t{3}, '\0');
    bytes_ += a;
    return *this;
  }
  /// The attributes put so far, as one nested attribute of the next builder.
  std::string nested_payload() const { return bytes_.substr(NLMSG_HDRLEN + GENL_HDRLEN); }
  const nlmsghdr& message() {
    nlmsghdr header{static_cast<std::uint32_t>(bytes_.size()), 0x1d, 0, 1, 0};
    std::memcpy(bytes_.data(), &header, sizeof header);
    aligned_.assign(bytes_.begin(), bytes_.end());
    return *reinterpret_cast<const nlmsghdr*>(aligned_.data());
  }

 private:
  std::string bytes_;
  std::vector<char> aligned_;  // std::vector's storage is aligned for any fundamental type
};

TEST(MptcpMessage, ParsesEndpointRepliesAndRefusesBrokenOnes) {
  reply_builder v4(0);
  v4.put<std::uint8_t>(MPTCP_PM_ADDR_ATTR_ID, 2)
      .put<std::uint16_t>(MPTCP_PM_ADDR_ATTR_FAMILY, AF_INET)
      .put_raw(MPTCP_PM_ADDR_ATTR_ADDR4, std::string("\xc6\x12\x02\x02", 4))
      .put<std::int32_t>(MPTCP_PM_ADDR_ATTR_IF_IDX, 4)
      .put<std::uint32_t>(MPTCP_PM_ADDR_ATTR_FLAGS, subflow | backup);
  reply_builder reply(MPTCP_PM_CMD_ADD_ADDR);
  reply.put_raw(MPTCP_PM_ATTR_ADDR | NLA_F_NESTED, v4.nested_payload());
  auto parsed = mptcp_message::parse_endpoint(reply.message());
  ASSERT_TRUE(parsed);
  EXPECT_EQ(*parsed, endpoint(2, "198.18.2.2", 4, subflow | backup));

  reply_builder v6(0);
  v6.put<std::uint8_t>(MPTCP_PM_ADDR_ATTR_ID, 5)
      .put<std::uint16_t>(MPTCP_PM_ADDR_ATTR_FAMILY, AF_INET6)
      .put_raw(MPTCP_PM_ADDR_ATTR_ADDR6,
               std::string("\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x02", 16))
      .put<std::uint16_t>(MPTCP_PM_ADDR_ATTR_PORT, 8080)
      .put<std::uint32_t>(MPTCP_PM_ADDR_ATTR_FLAGS, mptcp_flag::signal);
  reply_builder reply6(MPTCP_PM_CMD_ADD_ADDR);
  reply6.put_raw(MPTCP_PM_ATTR_ADDR | NLA_F_NESTED, v6.nested_payload());
  parsed = mptcp_message::parse_endpoint(reply6.message());
  ASSERT_TRUE(parsed);
  EXPECT_EQ(*parsed, (mptcp_endpoint{5, make_address("2001:db8::2"), 8080, 0, mptcp_flag::signal}));

  // No family; an IPv4 address of the wrong size; no address at all.
  reply_builder no_family(0);
  no_family.put_raw(MPTCP_PM_ADDR_ATTR_ADDR4, std::string("\xc6\x12\x02\x02", 4));
  reply_builder short_address(0);
  short_address.put<std::uint16_t>(MPTCP_PM_ADDR_ATTR_FAMILY, AF_INET)
      .put_raw(MPTCP_PM_ADDR_ATTR_ADDR4, std::string("\xc6\x12\x02", 3));
  for (auto* nested : {&no_family, &short_address}) {
    reply_builder broken(MPTCP_PM_CMD_ADD_ADDR);
    broken.put_raw(MPTCP_PM_ATTR_ADDR | NLA_F_NESTED, nested->nested_payload());
    EXPECT_FALSE(mptcp_message::parse_endpoint(broken.message()));
  }
  reply_builder empty(MPTCP_PM_CMD_ADD_ADDR);
  EXPECT_FALSE(mptcp_message::parse_endpoint(empty.message()));
}

TEST(MptcpMessage, ParsesLimitsAndFamilyId) {
  reply_builder limits(MPTCP_PM_CMD_GET_LIMITS);
  limits.put<std::uint32_t>(MPTCP_PM_ATTR_RCV_ADD_ADDRS, 1)
      .put<std::uint32_t>(MPTCP_PM_ATTR_SUBFLOWS, 2);
  EXPECT_EQ(mptcp_message::parse_limits(limits.message()), (mptcp_limits{2, 1}));
  reply_builder half(MPTCP_PM_CMD_GET_LIMITS);
  half.put<std::uint32_t>(MPTCP_PM_ATTR_SUBFLOWS, 2);
  EXPECT_FALSE(mptcp_message::parse_limits(half.message()));

  reply_builder family(CTRL_CMD_NEWFAMILY);
  family.put_raw(CTRL_ATTR_FAMILY_NAME, std::string("mptcp_pm\0", 9))
      .put<std::uint16_t>(CTRL_ATTR_FAMILY_ID, 0x1d);
  EXPECT_EQ(mptcp_message::parse_family_id(family.message()), std::uint16_t{0x1d});
  reply_builder nameless(CTRL_CMD_NEWFAMILY);
  EXPECT_FALSE(mptcp_message::parse_family_id(nameless.message()));
}

// ---- the kernel (root, on loopback) ------------------------------------------------------

/// Why the kernel tests cannot run here; empty when they can.
std::string kernel_missing() {
  if (::geteuid() != 0) return "needs root (SO_BINDTODEVICE, endpoints)";
  const int fd = ::socket(AF_INET, SOCK_STREAM, ipproto_mptcp);
  if (fd < 0) return std::string("this kernel has no MPTCP here: ") + std::strerror(errno);
  ::close(fd);
  return "";
}

/// A loopback listener: MPTCP when `mptcp`, else plain TCP.
tcp::acceptor listener(asio::io_context& io, bool mptcp) {
  tcp::acceptor acceptor(io);
  if (mptcp) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, ipproto_mptcp);
    EXPECT_GE(fd, 0) << std::strerror(errno);
    acceptor.assign(tcp::v4(), fd);
  } else {
    acceptor.open(tcp::v4());
  }
  acceptor.bind({make_address("127.0.0.1"), 0});
  acceptor.listen();
  return acceptor;
}

std::string pattern(std::size_t size, unsigned seed) {
  std::string out(size, '\0');
  std::uint32_t x = seed * 2654435761U + 1;
  for (auto& c : out) {
    x = x * 1664525U + 1013904223U;
    c = static_cast<char>(x >> 24);
  }
  return out;
}

constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);

asio::awaitable<std::string> read_all(tcp::socket& socket) {
  std::string out;
  std::array<char, 65536> buffer{};
  while (true) {
    auto [ec, n] = co_await socket.async_read_some(asio::buffer(buffer), nothrow);
    out.append(buffer.data(), n);
    if (ec) co_return out;
  }
}

asio::awaitable<void> write_all_then_close_send(tcp::socket& socket, const std::string& bytes) {
  auto [ec, n] = co_await asio::async_write(socket, asio::buffer(bytes), nothrow);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_EQ(n, bytes.size());
  socket.shutdown(tcp::socket::shutdown_send, ec);
}

TEST(MptcpKernel, RelaysIntactBothWaysWithSpliceThroughAnMptcpUpstream) {
  if (auto why = kernel_missing(); !why.empty()) GTEST_SKIP() << why;
  asio::io_context io;
  auto server_listener = listener(io, /*mptcp=*/true);
  auto app_listener = listener(io, /*mptcp=*/false);
  // fleetyd's side: the upstream as open_bound_mptcp opens it, the app's redirected socket.
  tcp::socket upstream(io);
  upstream_kind kind = upstream_kind::tcp_fallback;
  ASSERT_FALSE(open_bound_mptcp(upstream, tcp::v4(), "lo", &kind));
  EXPECT_EQ(kind, upstream_kind::mptcp);
  upstream.connect(server_listener.local_endpoint());
  EXPECT_TRUE(speaks_mptcp(upstream.native_handle()));
  tcp::socket server = server_listener.accept();
  EXPECT_TRUE(speaks_mptcp(server.native_handle()));
  tcp::socket app(io);
  app.connect(app_listener.local_endpoint());
  tcp::socket app_side = app_listener.accept();

  const std::string up = pattern(8 << 20, 1);
  const std::string down = pattern(8 << 20, 2);
  std::string server_got;
  std::string app_got;
  splice_result to_server;
  splice_result to_app;
  auto spawn = [&io](auto task) { asio::co_spawn(io, std::move(task), asio::detached); };
  // The relay as select::async_relay runs it: splice(2) in both directions.
  spawn([&]() -> asio::awaitable<void> {
    to_server = co_await async_splice(app_side, upstream, std::nullopt, std::chrono::seconds(10));
  });
  spawn([&]() -> asio::awaitable<void> {
    to_app = co_await async_splice(upstream, app_side, std::nullopt, std::chrono::seconds(10));
  });
  spawn([&]() -> asio::awaitable<void> { co_await write_all_then_close_send(app, up); });
  spawn([&]() -> asio::awaitable<void> { server_got = co_await read_all(server); });
  spawn([&]() -> asio::awaitable<void> { co_await write_all_then_close_send(server, down); });
  spawn([&]() -> asio::awaitable<void> { app_got = co_await read_all(app); });
  io.run_for(std::chrono::seconds(30));

  EXPECT_FALSE(to_server.ec) << to_server.ec.message();
  EXPECT_FALSE(to_app.ec) << to_app.ec.message();
  EXPECT_EQ(to_server.moved, up.size());
  EXPECT_EQ(to_app.moved, down.size());
  EXPECT_TRUE(server_got == up) << server_got.size() << " of " << up.size() << " bytes";
  EXPECT_TRUE(app_got == down) << app_got.size() << " of " << down.size() << " bytes";
}

TEST(MptcpKernel, AServerWithoutMptcpGetsPlainTcpInTheSameHandshake) {
  if (auto why = kernel_missing(); !why.empty()) GTEST_SKIP() << why;
  asio::io_context io;
  auto plain = listener(io, /*mptcp=*/false);
  tcp::socket upstream(io);
  upstream_kind kind = upstream_kind::tcp_fallback;
  ASSERT_FALSE(open_bound_mptcp(upstream, tcp::v4(), "", &kind));
  EXPECT_EQ(kind, upstream_kind::mptcp);
  upstream.connect(plain.local_endpoint());
  tcp::socket server = plain.accept();
  EXPECT_FALSE(speaks_mptcp(upstream.native_handle()));  // fell back
  asio::write(upstream, asio::buffer(std::string("hello")));
  std::array<char, 5> got{};
  asio::read(server, asio::buffer(got));
  EXPECT_EQ(std::string(got.data(), got.size()), "hello");
  // A plain TCP socket is no MPTCP one either.
  EXPECT_FALSE(speaks_mptcp(server.native_handle()));
}

/// Runs `body` in a child process in a network namespace of its own (so that the machine's
/// endpoints are never touched); its failures come back as the child's message.
std::string in_own_network_namespace(const std::function<std::string()>& body) {
  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) return "pipe failed";
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(pipe_fds[0]);
    std::string message =
        ::unshare(CLONE_NEWNET) == 0 ? body() : std::string("unshare: ") + std::strerror(errno);
    if (!message.empty() && ::write(pipe_fds[1], message.data(), message.size()) < 0) _exit(2);
    _exit(message.empty() ? 0 : 1);
  }
  ::close(pipe_fds[1]);
  std::string out;
  std::array<char, 512> buffer{};
  ssize_t n = 0;
  while ((n = ::read(pipe_fds[0], buffer.data(), buffer.size())) > 0)
    out.append(buffer.data(), static_cast<std::size_t>(n));
  ::close(pipe_fds[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  if (out.empty() && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) out = "child failed";
  return out;
}

TEST(MptcpKernel, PathManagerAddsListsAndRemovesEndpointsAndSetsLimits) {
  if (auto why = kernel_missing(); !why.empty()) GTEST_SKIP() << why;
  const auto failure = in_own_network_namespace([]() -> std::string {
    auto opened = mptcp_path_manager::open();
    if (!opened) return opened.error();
    auto& pm = **opened;
    auto before = pm.endpoints();
    if (!before) return before.error();
    if (!before->empty()) return "a new namespace has endpoints";
    const mptcp_endpoint wanted{3, make_address("198.18.99.2"), 0, /*ifindex=*/1, subflow | backup};
    if (auto added = pm.add(wanted); !added) return added.error();
    auto listed = pm.endpoints();
    if (!listed) return listed.error();
    if (listed->size() != 1 || (*listed)[0] != wanted)
      return "listed: " + (listed->empty() ? std::string("nothing") : describe((*listed)[0]));
    if (auto again = pm.add(wanted); again) return "the same endpoint was added twice";
    if (auto removed = pm.remove(3); !removed) return removed.error();
    auto after = pm.endpoints();
    if (!after) return after.error();
    if (!after->empty()) return "the endpoint is still there";
    if (auto set = pm.set_limits({/*subflows=*/3, /*add_addr_accepted=*/1}); !set)
      return set.error();
    auto limits = pm.limits();
    if (!limits) return limits.error();
    if (*limits != mptcp_limits{3, 1})
      return "limits " + std::to_string(limits->subflows) + "/" +
             std::to_string(limits->add_addr_accepted);
    if (auto too_many = pm.set_limits({mptcp_max_limit + 1, 0}); too_many)
      return "limits above the kernel's maximum were accepted";
    return "";
  });
  EXPECT_EQ(failure, "");
}

}  // namespace
}  // namespace fleety::net
