#include "net/socket_owner.hpp"

#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <linux/inet_diag.h>
#include <linux/magic.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/time.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <memory>
#include <sstream>

namespace fleety::net {
namespace {

using boost::asio::ip::address;
using boost::asio::ip::tcp;

/// How long a lookup waits for the kernel's reply. The kernel answers inside the send, so this
/// only bounds a reply lost to a full receive buffer: it must never hang the io thread.
constexpr timeval reply_timeout{0, 500'000};

/// TCP_TIME_WAIT and TCP_NEW_SYN_RECV (include/net/tcp_states.h, not exported to user space):
/// the kernel reports these mini-sockets with uid 0 and inode 0, which would read as "root".
constexpr std::uint8_t tcp_time_wait = 6;
constexpr std::uint8_t tcp_new_syn_recv = 12;

/// The reply buffer: one inet_diag_msg with its attributes takes a few hundred bytes; this is
/// MNL_SOCKET_BUFFER_SIZE's cap (that macro calls sysconf, so is no constant expression).
constexpr std::size_t reply_buffer_bytes = 8192;

/// A 4-tuple as the kernel reports it: IPv4-mapped IPv6 addresses as IPv4, no scope ids.
struct four_tuple {
  tcp::endpoint local;
  tcp::endpoint remote;
};

address unmapped(const address& a) {
  if (!a.is_v6()) return a;
  auto v6 = a.to_v6();
  if (v6.is_v4_mapped()) return boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, v6);
  v6.scope_id(0);
  return v6;
}

/// The interface a link-local IPv6 socket is tied to, from either endpoint's scope id; 0: none.
std::uint32_t scope_of(const tcp::endpoint& local, const tcp::endpoint& remote) {
  for (const auto* e : {&local, &remote}) {
    if (e->address().is_v6() && e->address().to_v6().scope_id() != 0) {
      return static_cast<std::uint32_t>(e->address().to_v6().scope_id());
    }
  }
  return 0;
}

tcp::endpoint unmapped(const tcp::endpoint& e) {
  return {unmapped(e.address()), e.port()};
}

std::string describe(const four_tuple& t) {
  std::ostringstream out;
  out << t.local << " -> " << t.remote;
  return out.str();
}

/// Writes `a` into an inet_diag address field (4 × __be32, network byte order).
void put_address(const address& a, __be32 (&field)[4]) {
  if (a.is_v4()) {
    const auto bytes = a.to_v4().to_bytes();
    std::memcpy(&field[0], bytes.data(), bytes.size());
  } else {
    const auto bytes = a.to_v6().to_bytes();
    std::memcpy(&field[0], bytes.data(), bytes.size());
  }
}

/// Reads an inet_diag address field of a socket of `family`, IPv4-mapped ones as IPv4.
address get_address(std::uint8_t family, const __be32 (&field)[4]) {
  if (family == AF_INET) {
    boost::asio::ip::address_v4::bytes_type bytes;
    std::memcpy(bytes.data(), &field[0], bytes.size());
    return boost::asio::ip::address_v4(bytes);
  }
  boost::asio::ip::address_v6::bytes_type bytes;
  std::memcpy(bytes.data(), &field[0], bytes.size());
  return unmapped(address(boost::asio::ip::address_v6(bytes)));
}

struct mnl_socket_closer {
  void operator()(mnl_socket* socket) const { mnl_socket_close(socket); }
};

/// This thread's NETLINK_SOCK_DIAG socket, bound, with the reply timeout set.
struct diag_socket {
  std::unique_ptr<mnl_socket, mnl_socket_closer> socket;  ///< owned; null until first use
  unsigned port_id = 0;  ///< the kernel-assigned netlink port of `socket`
  pid_t owner_pid = 0;   ///< the process that opened it: a forked child must not share it
  unsigned next_seq = 1;
};

thread_local diag_socket this_thread_diag;

core::expected<diag_socket*> open_diag_socket() {
  diag_socket& diag = this_thread_diag;
  const pid_t pid = ::getpid();
  if (diag.socket && diag.owner_pid == pid) return &diag;
  // After a fork the child's copy shares the parent's port: replies could go to either.
  diag.socket.reset(mnl_socket_open2(NETLINK_SOCK_DIAG, SOCK_CLOEXEC));
  if (!diag.socket) {
    return core::make_error(std::string("sock_diag: cannot open a netlink socket: ") +
                            std::strerror(errno));
  }
  if (mnl_socket_bind(diag.socket.get(), 0, MNL_SOCKET_AUTOPID) < 0) {
    const int error = errno;
    diag.socket.reset();
    return core::make_error(std::string("sock_diag: cannot bind: ") + std::strerror(error));
  }
  if (::setsockopt(mnl_socket_get_fd(diag.socket.get()), SOL_SOCKET, SO_RCVTIMEO, &reply_timeout,
                   sizeof(reply_timeout)) != 0) {
    const int error = errno;
    diag.socket.reset();
    return core::make_error(std::string("sock_diag: cannot set SO_RCVTIMEO: ") +
                            std::strerror(error));
  }
  diag.port_id = mnl_socket_get_portid(diag.socket.get());
  diag.owner_pid = pid;
  return &diag;
}

/// What the reply callback found.
struct reply {
  const four_tuple* asked = nullptr;  ///< the 4-tuple requested (not owned)
  bool seen = false;                  ///< an inet_diag_msg arrived
  bool tuple_matches = false;         ///< ... for exactly the 4-tuple asked (not a listener)
  std::uint8_t state = 0;             ///< its TCP state
  socket_owner_info info;
};

int on_attribute(const nlattr* attribute, void* data) {
  auto& out = *static_cast<reply*>(data);
  if (mnl_attr_get_type(attribute) == INET_DIAG_CGROUP_ID &&
      mnl_attr_validate(attribute, MNL_TYPE_U64) >= 0) {
    out.info.cgroup_id = mnl_attr_get_u64(attribute);
  }
  return MNL_CB_OK;
}

int on_message(const nlmsghdr* message, void* data) {
  auto& out = *static_cast<reply*>(data);
  if (message->nlmsg_type != SOCK_DIAG_BY_FAMILY ||
      mnl_nlmsg_get_payload_len(message) < sizeof(inet_diag_msg)) {
    return MNL_CB_OK;  // not ours: ignored, and "seen" stays false
  }
  const auto* msg = static_cast<const inet_diag_msg*>(mnl_nlmsg_get_payload(message));
  out.seen = true;
  out.state = msg->idiag_state;
  out.info.uid = msg->idiag_uid;
  out.info.inode = msg->idiag_inode;
  // The kernel's exact lookup falls back to a listener on the local address and port when no
  // connection has the 4-tuple: that reply is not the socket asked for.
  const tcp::endpoint local(get_address(msg->idiag_family, msg->id.idiag_src),
                            ntohs(msg->id.idiag_sport));
  const tcp::endpoint remote(get_address(msg->idiag_family, msg->id.idiag_dst),
                             ntohs(msg->id.idiag_dport));
  out.tuple_matches = local == out.asked->local && remote == out.asked->remote;
  if (mnl_attr_parse(message, sizeof(inet_diag_msg), on_attribute, data) < 0) return MNL_CB_ERROR;
  return MNL_CB_OK;
}

}  // namespace

core::expected<socket_owner_info> find_tcp_socket_owner(const tcp::endpoint& local,
                                                        const tcp::endpoint& remote) {
  const four_tuple tuple{unmapped(local), unmapped(remote)};
  if (tuple.local.address().is_v4() != tuple.remote.address().is_v4()) {
    return core::make_error("sock_diag: " + describe(tuple) + " mixes IPv4 and IPv6");
  }
  auto opened = open_diag_socket();
  if (!opened) return core::make_error(opened.error());
  diag_socket& diag = **opened;

  // One exact-match request (no NLM_F_DUMP): the kernel looks the 4-tuple up in its hash tables
  // (inet_diag_find_one_icsk) instead of walking every socket.
  alignas(nlmsghdr) std::array<char, MNL_NLMSG_HDRLEN + MNL_ALIGN(sizeof(inet_diag_req_v2))>
      request_buffer{};
  nlmsghdr* request = mnl_nlmsg_put_header(request_buffer.data());
  request->nlmsg_type = SOCK_DIAG_BY_FAMILY;
  request->nlmsg_flags = NLM_F_REQUEST;
  request->nlmsg_seq = diag.next_seq++;
  auto* req =
      static_cast<inet_diag_req_v2*>(mnl_nlmsg_put_extra_header(request, sizeof(inet_diag_req_v2)));
  const bool v4 = tuple.local.address().is_v4();
  req->sdiag_family = v4 ? AF_INET : AF_INET6;
  req->sdiag_protocol = IPPROTO_TCP;
  req->idiag_states = ~0U;  // ignored by exact lookups; all states, to say so
  req->id.idiag_sport = htons(tuple.local.port());
  req->id.idiag_dport = htons(tuple.remote.port());
  put_address(tuple.local.address(), req->id.idiag_src);
  put_address(tuple.remote.address(), req->id.idiag_dst);
  // A socket tied to an interface (link-local IPv6: by the scope id) only matches with it;
  // 0 matches any socket not tied to one.
  req->id.idiag_if = v4 ? 0 : scope_of(local, remote);
  req->id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  req->id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;

  // Any failure below except the kernel's own error reply drops the socket, so a late reply
  // can never be read as the answer to the next request.
  const auto fail = [&diag](std::string text) {
    diag.socket.reset();
    return core::make_error("sock_diag: " + std::move(text));
  };
  if (mnl_socket_sendto(diag.socket.get(), request, request->nlmsg_len) < 0) {
    return fail(std::string("cannot send: ") + std::strerror(errno));
  }
  alignas(nlmsghdr) std::array<char, reply_buffer_bytes> reply_buffer;
  const ssize_t received =
      mnl_socket_recvfrom(diag.socket.get(), reply_buffer.data(), reply_buffer.size());
  if (received < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return fail("no reply from the kernel within 500 ms for " + describe(tuple));
    }
    return fail(std::string("cannot receive: ") + std::strerror(errno));
  }
  reply answer;
  answer.asked = &tuple;
  if (mnl_cb_run(reply_buffer.data(), static_cast<std::size_t>(received), request->nlmsg_seq,
                 diag.port_id, on_message, &answer) < 0) {
    const int error = errno;
    if (error == ENOENT) return core::make_error("no TCP socket " + describe(tuple));
    if (error == ESRCH || error == EPROTO) return fail("a reply to another request");
    diag.socket.reset();
    return core::make_error("sock_diag: " + describe(tuple) + ": " + std::strerror(error));
  }
  if (!answer.seen) return fail("no socket in the kernel's reply for " + describe(tuple));
  if (!answer.tuple_matches) return core::make_error("no TCP socket " + describe(tuple));
  if (answer.state == tcp_time_wait) {
    return core::make_error("sock_diag: the socket " + describe(tuple) +
                            " is in TIME_WAIT: its owner is gone");
  }
  if (answer.state == tcp_new_syn_recv) {
    return core::make_error("sock_diag: " + describe(tuple) +
                            " is a connection being accepted (SYN_RECV): it has no owner yet");
  }
  return answer.info;
}

std::optional<std::uint64_t> cgroup_id_of(const std::string& cgroup_dir) {
  struct statfs fs {};
  if (::statfs(cgroup_dir.c_str(), &fs) != 0 || fs.f_type != CGROUP2_SUPER_MAGIC) {
    return std::nullopt;
  }
  // kernfs encodes a node in an 8-byte handle (FILEID_KERNFS): the 64-bit id, which is the
  // cgroup id the kernel reports for sockets (cgroup_id() = kernfs_node id).
  alignas(file_handle) std::array<unsigned char, sizeof(file_handle) + sizeof(std::uint64_t)>
      storage{};
  auto* handle = reinterpret_cast<file_handle*>(storage.data());
  handle->handle_bytes = sizeof(std::uint64_t);
  int mount_id = 0;
  if (::name_to_handle_at(AT_FDCWD, cgroup_dir.c_str(), handle, &mount_id, 0) == 0 &&
      handle->handle_bytes == sizeof(std::uint64_t)) {
    std::uint64_t id = 0;
    std::memcpy(&id, handle->f_handle, sizeof(id));
    return id;
  }
  // No file handle (a kernel without kernfs export support): the directory's inode number,
  // which is the same id on 64-bit kernels.
  struct stat st {};
  if (::stat(cgroup_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return std::nullopt;
  return static_cast<std::uint64_t>(st.st_ino);
}

std::optional<socket_user> local_peer_user(boost::asio::ip::tcp::socket& accepted) {
  boost::system::error_code peer_ec;
  boost::system::error_code local_ec;
  const auto peer = accepted.remote_endpoint(peer_ec);
  const auto local = accepted.local_endpoint(local_ec);
  if (peer_ec || local_ec) return std::nullopt;
  auto owner = find_tcp_socket_owner(peer, local);
  if (!owner) return std::nullopt;
  return socket_user_of(owner->uid);
}

}  // namespace fleety::net
