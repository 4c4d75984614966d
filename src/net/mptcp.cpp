#include "net/mptcp.hpp"

#include <libmnl/libmnl.h>
#include <linux/genetlink.h>
#include <linux/mptcp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <set>

#include "net/bound_socket.hpp"

namespace fleety::net {
namespace {

using boost::asio::ip::address;
using boost::asio::ip::tcp;

/// TCP_IS_MPTCP (linux/tcp.h, Linux 5.16+), which glibc's netinet/tcp.h does not name.
constexpr int tcp_is_mptcp = 43;

/// How long a path manager request waits for the kernel's reply: the kernel answers inside
/// the send, so this only bounds a reply lost to a full receive buffer.
constexpr timeval reply_timeout{0, 500'000};

/// A request's buffer: the largest (an endpoint with an IPv6 address) takes under 100 bytes.
constexpr std::size_t request_bytes = 256;

/// A reply buffer: a dump of endpoints comes in messages of about 60 bytes each, as many
/// as fit; this is MNL_SOCKET_BUFFER_SIZE's cap (that macro calls sysconf).
constexpr std::size_t reply_bytes = 8192;

std::atomic<bool> fallback_logged{false};

boost::system::error_code errno_code(int error) {
  return {error, boost::system::system_category()};
}

/// A request's header: nlmsghdr then genlmsghdr, in `buffer`.
nlmsghdr* put_request(char* buffer, std::uint16_t type, std::uint16_t flags, std::uint32_t seq,
                      std::uint8_t command, std::uint8_t version) {
  nlmsghdr* message = mnl_nlmsg_put_header(buffer);
  message->nlmsg_type = type;
  message->nlmsg_flags = static_cast<std::uint16_t>(NLM_F_REQUEST | flags);
  message->nlmsg_seq = seq;
  auto* genl = static_cast<genlmsghdr*>(mnl_nlmsg_put_extra_header(message, sizeof(genlmsghdr)));
  genl->cmd = command;
  genl->version = version;
  return message;
}

std::vector<char> bytes_of(const nlmsghdr* message) {
  const auto* begin = reinterpret_cast<const char*>(message);
  return {begin, begin + message->nlmsg_len};
}

/// A request buffer aligned for nlmsghdr.
struct request_buffer {
  alignas(nlmsghdr) std::array<char, request_bytes> bytes{};
  char* data() { return bytes.data(); }
};

/// The attributes of one nesting level, indexed by type (up to `Max`), validated by type.
template <std::size_t Max>
struct attribute_table {
  std::array<const nlattr*, Max + 1> at{};
};

template <std::size_t Max>
int collect_attribute(const nlattr* attribute, void* data) {
  auto& table = *static_cast<attribute_table<Max>*>(data);
  const auto type = mnl_attr_get_type(attribute);
  if (type <= Max) table.at[type] = attribute;
  return MNL_CB_OK;
}

/// The payload of `attribute` if it holds exactly `size` bytes, else null.
const void* payload_of_size(const nlattr* attribute, std::size_t size) {
  if (attribute == nullptr || mnl_attr_get_payload_len(attribute) != size) return nullptr;
  return mnl_attr_get_payload(attribute);
}

/// Whether `message` is long enough for its generic netlink header.
bool has_genl_header(const nlmsghdr& message) {
  return message.nlmsg_len >= mnl_nlmsg_size(sizeof(genlmsghdr));
}

std::string errno_text(int error) {
  return std::strerror(error);
}

}  // namespace

bool mptcp_unavailable(int error) {
  switch (error) {
    case EPROTONOSUPPORT:
    case ENOPROTOOPT:
    case EINVAL:
    case EAFNOSUPPORT:
      return true;
    default:
      return false;
  }
}

boost::system::error_code open_bound_mptcp(tcp::socket& socket, const tcp& protocol,
                                           const std::string& interface, upstream_kind* kind) {
  const int fd = ::socket(protocol.family(), SOCK_STREAM | SOCK_CLOEXEC, ipproto_mptcp);
  if (fd < 0) {
    const int error = errno;
    if (!mptcp_unavailable(error)) return errno_code(error);
    if (!fallback_logged.exchange(true)) {
      spdlog::warn(
          "mptcp: this kernel has no MPTCP here ({}; see sysctl net.mptcp.enabled): relayed "
          "flows use plain TCP",
          errno_text(error));
    }
    if (kind != nullptr) *kind = upstream_kind::tcp_fallback;
    return open_bound(socket, protocol, interface);
  }
  boost::system::error_code ec;
  socket.assign(protocol, fd, ec);
  if (ec) {
    ::close(fd);
    return ec;
  }
  auto fail = [&socket](boost::system::error_code failed) {
    boost::system::error_code ignored;
    socket.close(ignored);
    return failed;
  };
  // As open_bound: requests and relayed messages are written whole; Nagle would only delay
  // their last segment. The kernel applies it to every subflow.
  socket.set_option(tcp::no_delay(true), ec);
  if (ec) return fail(ec);
  if ((ec = apply_own_socket_mark(fd))) return fail(ec);
  // The initial subflow only: the path manager binds each further subflow to its
  // endpoint's device.
  if (!interface.empty() && ::setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, interface.data(),
                                         static_cast<socklen_t>(interface.size())) != 0) {
    return fail(errno_code(errno));
  }
  if (kind != nullptr) *kind = upstream_kind::mptcp;
  return ec;
}

bool speaks_mptcp(int fd) {
  int value = 0;
  socklen_t size = sizeof value;
  return ::getsockopt(fd, IPPROTO_TCP, tcp_is_mptcp, &value, &size) == 0 && value != 0;
}

mptcp_limits limits_for_paths(const mptcp_limits& current, std::size_t paths) {
  mptcp_limits out = current;
  const auto needed =
      static_cast<std::uint32_t>(std::min<std::size_t>(paths > 0 ? paths - 1 : 0, mptcp_max_limit));
  out.subflows = std::max(current.subflows, needed);
  return out;
}

bool endpoint_address(const address& a) {
  if (a.is_unspecified() || a.is_loopback() || a.is_multicast()) return false;
  if (a.is_v6()) {
    const auto v6 = a.to_v6();
    if (v6.is_link_local() || v6.is_v4_mapped()) return false;
  }
  return true;
}

endpoint_changes plan_endpoint_changes(const std::vector<mptcp_endpoint>& existing,
                                       const std::vector<std::uint8_t>& ours,
                                       const std::vector<wanted_endpoint>& wanted) {
  endpoint_changes out;
  auto flags_of = [](const wanted_endpoint& w) {
    return mptcp_flag::subflow | (w.backup ? mptcp_flag::backup : 0U);
  };
  auto is_ours = [&ours](std::uint8_t id) {
    return std::find(ours.begin(), ours.end(), id) != ours.end();
  };
  std::vector<bool> satisfied(wanted.size(), false);
  std::set<std::uint8_t> taken;
  for (const auto& e : existing) taken.insert(e.id);
  // Own endpoints: kept while wanted exactly as they are, else removed.
  for (const auto& e : existing) {
    if (!is_ours(e.id)) continue;
    bool keep = false;
    for (std::size_t i = 0; i < wanted.size() && !keep; ++i) {
      const auto& w = wanted[i];
      if (!satisfied[i] && e.port == 0 && w.address == e.address && w.ifindex == e.ifindex &&
          flags_of(w) == e.flags) {
        satisfied[i] = keep = true;
      }
    }
    if (!keep) out.remove.push_back(e.id);
  }
  for (std::size_t i = 0; i < wanted.size(); ++i) {
    if (satisfied[i]) continue;
    const auto& w = wanted[i];
    auto same_address = [&w](const mptcp_endpoint& e) { return e.address == w.address; };
    // Someone else's endpoint on this address: theirs to configure.
    auto other = std::find_if(existing.begin(), existing.end(), [&](const mptcp_endpoint& e) {
      return !is_ours(e.id) && same_address(e);
    });
    if (other != existing.end()) {
      if (std::find(out.foreign.begin(), out.foreign.end(), *other) == out.foreign.end())
        out.foreign.push_back(*other);
      continue;
    }
    // Wanted twice (the same address on two paths' interfaces): once.
    if (std::any_of(out.add.begin(), out.add.end(), same_address)) continue;
    std::uint8_t id = 0;
    for (unsigned candidate = 1; candidate <= 255; ++candidate) {
      if (!taken.contains(static_cast<std::uint8_t>(candidate))) {
        id = static_cast<std::uint8_t>(candidate);
        break;
      }
    }
    if (id == 0) break;  // 255 endpoints already: nothing more can be added
    taken.insert(id);
    out.add.push_back({id, w.address, 0, w.ifindex, flags_of(w)});
  }
  return out;
}

namespace mptcp_message {

std::vector<char> get_family(std::uint32_t seq) {
  request_buffer buffer;
  nlmsghdr* message =
      put_request(buffer.data(), GENL_ID_CTRL, NLM_F_ACK, seq, CTRL_CMD_GETFAMILY, 1);
  mnl_attr_put_strz(message, CTRL_ATTR_FAMILY_NAME, MPTCP_PM_NAME);
  return bytes_of(message);
}

std::vector<char> add_endpoint(std::uint16_t family, std::uint32_t seq,
                               const mptcp_endpoint& endpoint) {
  request_buffer buffer;
  nlmsghdr* message =
      put_request(buffer.data(), family, NLM_F_ACK, seq, MPTCP_PM_CMD_ADD_ADDR, MPTCP_PM_VER);
  nlattr* nest = mnl_attr_nest_start(message, MPTCP_PM_ATTR_ADDR);
  if (endpoint.id != 0) mnl_attr_put_u8(message, MPTCP_PM_ADDR_ATTR_ID, endpoint.id);
  if (endpoint.address.is_v4()) {
    mnl_attr_put_u16(message, MPTCP_PM_ADDR_ATTR_FAMILY, AF_INET);
    const auto bytes = endpoint.address.to_v4().to_bytes();  // network order
    mnl_attr_put(message, MPTCP_PM_ADDR_ATTR_ADDR4, bytes.size(), bytes.data());
  } else {
    mnl_attr_put_u16(message, MPTCP_PM_ADDR_ATTR_FAMILY, AF_INET6);
    const auto bytes = endpoint.address.to_v6().to_bytes();
    mnl_attr_put(message, MPTCP_PM_ADDR_ATTR_ADDR6, bytes.size(), bytes.data());
  }
  if (endpoint.port != 0) mnl_attr_put_u16(message, MPTCP_PM_ADDR_ATTR_PORT, endpoint.port);
  if (endpoint.ifindex != 0)
    mnl_attr_put_u32(message, MPTCP_PM_ADDR_ATTR_IF_IDX,
                     static_cast<std::uint32_t>(endpoint.ifindex));
  mnl_attr_put_u32(message, MPTCP_PM_ADDR_ATTR_FLAGS, endpoint.flags);
  mnl_attr_nest_end(message, nest);
  return bytes_of(message);
}

std::vector<char> remove_endpoint(std::uint16_t family, std::uint32_t seq, std::uint8_t id) {
  request_buffer buffer;
  nlmsghdr* message =
      put_request(buffer.data(), family, NLM_F_ACK, seq, MPTCP_PM_CMD_DEL_ADDR, MPTCP_PM_VER);
  nlattr* nest = mnl_attr_nest_start(message, MPTCP_PM_ATTR_ADDR);
  mnl_attr_put_u8(message, MPTCP_PM_ADDR_ATTR_ID, id);
  mnl_attr_nest_end(message, nest);
  return bytes_of(message);
}

std::vector<char> dump_endpoints(std::uint16_t family, std::uint32_t seq) {
  request_buffer buffer;
  return bytes_of(
      put_request(buffer.data(), family, NLM_F_DUMP, seq, MPTCP_PM_CMD_GET_ADDR, MPTCP_PM_VER));
}

std::vector<char> get_limits(std::uint16_t family, std::uint32_t seq) {
  request_buffer buffer;
  return bytes_of(
      put_request(buffer.data(), family, NLM_F_ACK, seq, MPTCP_PM_CMD_GET_LIMITS, MPTCP_PM_VER));
}

std::vector<char> set_limits(std::uint16_t family, std::uint32_t seq, const mptcp_limits& limits) {
  request_buffer buffer;
  nlmsghdr* message =
      put_request(buffer.data(), family, NLM_F_ACK, seq, MPTCP_PM_CMD_SET_LIMITS, MPTCP_PM_VER);
  mnl_attr_put_u32(message, MPTCP_PM_ATTR_RCV_ADD_ADDRS, limits.add_addr_accepted);
  mnl_attr_put_u32(message, MPTCP_PM_ATTR_SUBFLOWS, limits.subflows);
  return bytes_of(message);
}

std::optional<std::uint16_t> parse_family_id(const nlmsghdr& message) {
  if (!has_genl_header(message)) return std::nullopt;
  attribute_table<CTRL_ATTR_MAX> table;
  if (mnl_attr_parse(&message, sizeof(genlmsghdr), collect_attribute<CTRL_ATTR_MAX>, &table) <
      MNL_CB_OK)
    return std::nullopt;
  const auto* id = static_cast<const std::uint16_t*>(
      payload_of_size(table.at[CTRL_ATTR_FAMILY_ID], sizeof(std::uint16_t)));
  if (id == nullptr) return std::nullopt;
  return *id;
}

std::optional<mptcp_endpoint> parse_endpoint(const nlmsghdr& message) {
  if (!has_genl_header(message)) return std::nullopt;
  attribute_table<MPTCP_PM_ATTR_MAX> top;
  if (mnl_attr_parse(&message, sizeof(genlmsghdr), collect_attribute<MPTCP_PM_ATTR_MAX>, &top) <
          MNL_CB_OK ||
      top.at[MPTCP_PM_ATTR_ADDR] == nullptr)
    return std::nullopt;
  attribute_table<MPTCP_PM_ADDR_ATTR_MAX> nested;
  if (mnl_attr_parse_nested(top.at[MPTCP_PM_ATTR_ADDR], collect_attribute<MPTCP_PM_ADDR_ATTR_MAX>,
                            &nested) < MNL_CB_OK)
    return std::nullopt;
  mptcp_endpoint out;
  if (const auto* id = static_cast<const std::uint8_t*>(
          payload_of_size(nested.at[MPTCP_PM_ADDR_ATTR_ID], sizeof(std::uint8_t))))
    out.id = *id;
  const auto* family = static_cast<const std::uint16_t*>(
      payload_of_size(nested.at[MPTCP_PM_ADDR_ATTR_FAMILY], sizeof(std::uint16_t)));
  if (family == nullptr) return std::nullopt;
  if (*family == AF_INET) {
    boost::asio::ip::address_v4::bytes_type bytes;
    const void* raw = payload_of_size(nested.at[MPTCP_PM_ADDR_ATTR_ADDR4], bytes.size());
    if (raw == nullptr) return std::nullopt;
    std::memcpy(bytes.data(), raw, bytes.size());
    out.address = boost::asio::ip::address_v4(bytes);
  } else if (*family == AF_INET6) {
    boost::asio::ip::address_v6::bytes_type bytes;
    const void* raw = payload_of_size(nested.at[MPTCP_PM_ADDR_ATTR_ADDR6], bytes.size());
    if (raw == nullptr) return std::nullopt;
    std::memcpy(bytes.data(), raw, bytes.size());
    out.address = boost::asio::ip::address_v6(bytes);
  } else {
    return std::nullopt;
  }
  if (const auto* port = static_cast<const std::uint16_t*>(
          payload_of_size(nested.at[MPTCP_PM_ADDR_ATTR_PORT], sizeof(std::uint16_t))))
    out.port = *port;
  if (const auto* ifindex = static_cast<const std::int32_t*>(
          payload_of_size(nested.at[MPTCP_PM_ADDR_ATTR_IF_IDX], sizeof(std::int32_t))))
    out.ifindex = *ifindex;
  if (const auto* flags = static_cast<const std::uint32_t*>(
          payload_of_size(nested.at[MPTCP_PM_ADDR_ATTR_FLAGS], sizeof(std::uint32_t))))
    out.flags = *flags;
  return out;
}

std::optional<mptcp_limits> parse_limits(const nlmsghdr& message) {
  if (!has_genl_header(message)) return std::nullopt;
  attribute_table<MPTCP_PM_ATTR_MAX> top;
  if (mnl_attr_parse(&message, sizeof(genlmsghdr), collect_attribute<MPTCP_PM_ATTR_MAX>, &top) <
      MNL_CB_OK)
    return std::nullopt;
  const auto* subflows = static_cast<const std::uint32_t*>(
      payload_of_size(top.at[MPTCP_PM_ATTR_SUBFLOWS], sizeof(std::uint32_t)));
  const auto* accepted = static_cast<const std::uint32_t*>(
      payload_of_size(top.at[MPTCP_PM_ATTR_RCV_ADD_ADDRS], sizeof(std::uint32_t)));
  if (subflows == nullptr || accepted == nullptr) return std::nullopt;
  return mptcp_limits{*subflows, *accepted};
}

}  // namespace mptcp_message

struct mptcp_path_manager::impl {
  struct closer {
    void operator()(mnl_socket* open) const { mnl_socket_close(open); }
  };
  std::unique_ptr<mnl_socket, closer> socket;  ///< owned; bound, with the reply timeout
  unsigned port_id = 0;                        ///< the kernel-assigned netlink port
  std::uint16_t family = 0;                    ///< the id of "mptcp_pm"; 0 until looked up
  std::uint32_t next_seq = 1;

  /// Sends `request` and feeds each reply message to `on_reply` (may be null) until the
  /// kernel's ACK, error or end of dump. The error names `what`.
  core::expected<bool> exchange(const std::vector<char>& request, const char* what,
                                mnl_cb_t on_reply, void* data) {
    const auto* header = reinterpret_cast<const nlmsghdr*>(request.data());
    const std::uint32_t seq = header->nlmsg_seq;
    if (mnl_socket_sendto(socket.get(), request.data(), request.size()) < 0)
      return core::make_error(fmt::format("mptcp {}: cannot send: {}", what, errno_text(errno)));
    alignas(nlmsghdr) std::array<char, reply_bytes> reply{};
    while (true) {
      const ssize_t n = mnl_socket_recvfrom(socket.get(), reply.data(), reply.size());
      if (n < 0) {
        return core::make_error(fmt::format(
            "mptcp {}: {}", what,
            errno == EAGAIN ? std::string("no answer from the kernel") : errno_text(errno)));
      }
      const int run =
          mnl_cb_run(reply.data(), static_cast<std::size_t>(n), seq, port_id, on_reply, data);
      if (run == MNL_CB_ERROR) {
        const int error = errno;
        return core::make_error(
            fmt::format("mptcp {}: {}{}", what, errno_text(error),
                        error == EPERM ? " (fleetyd needs CAP_NET_ADMIN to configure MPTCP)" : ""));
      }
      if (run == MNL_CB_STOP) return true;
    }
  }

  std::uint32_t seq() { return next_seq++; }
};

mptcp_path_manager::mptcp_path_manager(std::unique_ptr<impl> state) : impl_(std::move(state)) {}
mptcp_path_manager::~mptcp_path_manager() = default;

core::expected<std::unique_ptr<mptcp_path_manager>> mptcp_path_manager::open() {
  auto state = std::make_unique<impl>();
  state->socket.reset(mnl_socket_open2(NETLINK_GENERIC, SOCK_CLOEXEC));
  if (!state->socket)
    return core::make_error("mptcp: cannot open a generic netlink socket: " + errno_text(errno));
  if (mnl_socket_bind(state->socket.get(), 0, MNL_SOCKET_AUTOPID) < 0)
    return core::make_error("mptcp: cannot bind a generic netlink socket: " + errno_text(errno));
  if (::setsockopt(mnl_socket_get_fd(state->socket.get()), SOL_SOCKET, SO_RCVTIMEO, &reply_timeout,
                   sizeof reply_timeout) != 0)
    return core::make_error("mptcp: cannot set SO_RCVTIMEO: " + errno_text(errno));
  state->port_id = mnl_socket_get_portid(state->socket.get());
  std::optional<std::uint16_t> family;
  auto on_family = [](const nlmsghdr* message, void* data) -> int {
    if (auto id = mptcp_message::parse_family_id(*message))
      *static_cast<std::optional<std::uint16_t>*>(data) = id;
    return MNL_CB_OK;
  };
  auto looked_up = state->exchange(mptcp_message::get_family(state->seq()), "path manager lookup",
                                   on_family, &family);
  if (!looked_up) {
    return core::make_error(looked_up.error() +
                            " (this kernel has no MPTCP path manager: generic netlink family "
                            "\"" MPTCP_PM_NAME "\" unknown)");
  }
  if (!family) return core::make_error("mptcp: the kernel named no id for \"" MPTCP_PM_NAME "\"");
  state->family = *family;
  return std::unique_ptr<mptcp_path_manager>(new mptcp_path_manager(std::move(state)));
}

core::expected<std::vector<mptcp_endpoint>> mptcp_path_manager::endpoints() {
  std::vector<mptcp_endpoint> out;
  auto on_endpoint = [](const nlmsghdr* message, void* data) -> int {
    if (auto e = mptcp_message::parse_endpoint(*message))
      static_cast<std::vector<mptcp_endpoint>*>(data)->push_back(*e);
    return MNL_CB_OK;
  };
  auto done = impl_->exchange(mptcp_message::dump_endpoints(impl_->family, impl_->seq()),
                              "endpoint dump", on_endpoint, &out);
  if (!done) return core::make_error(done.error());
  return out;
}

core::expected<bool> mptcp_path_manager::add(const mptcp_endpoint& endpoint) {
  return impl_->exchange(mptcp_message::add_endpoint(impl_->family, impl_->seq(), endpoint),
                         "endpoint add", nullptr, nullptr);
}

core::expected<bool> mptcp_path_manager::remove(std::uint8_t id) {
  return impl_->exchange(mptcp_message::remove_endpoint(impl_->family, impl_->seq(), id),
                         "endpoint delete", nullptr, nullptr);
}

core::expected<mptcp_limits> mptcp_path_manager::limits() {
  std::optional<mptcp_limits> out;
  auto on_limits = [](const nlmsghdr* message, void* data) -> int {
    if (auto l = mptcp_message::parse_limits(*message))
      *static_cast<std::optional<mptcp_limits>*>(data) = l;
    return MNL_CB_OK;
  };
  auto done = impl_->exchange(mptcp_message::get_limits(impl_->family, impl_->seq()),
                              "limits query", on_limits, &out);
  if (!done) return core::make_error(done.error());
  if (!out) return core::make_error("mptcp limits query: the kernel's reply holds no limits");
  return *out;
}

core::expected<bool> mptcp_path_manager::set_limits(const mptcp_limits& limits) {
  return impl_->exchange(mptcp_message::set_limits(impl_->family, impl_->seq(), limits),
                         "limits set", nullptr, nullptr);
}

std::string describe(const mptcp_endpoint& endpoint) {
  std::string out = endpoint.address.to_string();
  if (endpoint.port != 0) out += fmt::format(" port {}", endpoint.port);
  if (endpoint.ifindex != 0) {
    std::array<char, IF_NAMESIZE> name{};
    if (::if_indextoname(static_cast<unsigned>(endpoint.ifindex), name.data()) != nullptr) {
      out += fmt::format(" dev {}", name.data());
    } else {
      out += fmt::format(" dev #{}", endpoint.ifindex);
    }
  }
  const std::pair<std::uint32_t, const char*> names[] = {{mptcp_flag::signal, "signal"},
                                                         {mptcp_flag::subflow, "subflow"},
                                                         {mptcp_flag::backup, "backup"},
                                                         {mptcp_flag::fullmesh, "fullmesh"}};
  for (const auto& [flag, name] : names) {
    if ((endpoint.flags & flag) != 0) out += fmt::format(" {}", name);
  }
  return out + fmt::format(" (id {})", endpoint.id);
}

}  // namespace fleety::net
