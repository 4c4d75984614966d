#include "path/link_watcher.hpp"

#include <libmnl/libmnl.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <boost/asio/error.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <utility>

namespace fleety::path {

namespace asio = boost::asio;

bool usable(const link_state& link) {
  return link.exists && link.admin_up && link.running &&
         std::any_of(link.addresses.begin(), link.addresses.end(), [](const auto& address) {
           return !(address.is_v6() && address.to_v6().is_link_local());
         });
}

namespace {

struct link_attributes {
  const nlattr* name = nullptr;
};

struct address_attributes {
  const nlattr* local = nullptr;
  const nlattr* address = nullptr;
  const nlattr* flags = nullptr;
};

int on_link_attribute(const nlattr* attr, void* data) {
  // Attributes newer than our headers are skipped, not an error: the kernel may be newer.
  if (mnl_attr_type_valid(attr, IFLA_MAX) < 0) return MNL_CB_OK;
  if (mnl_attr_get_type(attr) == IFLA_IFNAME) {
    if (mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) < 0) return MNL_CB_ERROR;
    static_cast<link_attributes*>(data)->name = attr;
  }
  return MNL_CB_OK;
}

int on_address_attribute(const nlattr* attr, void* data) {
  if (mnl_attr_type_valid(attr, IFA_MAX) < 0) return MNL_CB_OK;
  auto& found = *static_cast<address_attributes*>(data);
  switch (mnl_attr_get_type(attr)) {
    case IFA_LOCAL:
      found.local = attr;
      break;
    case IFA_ADDRESS:
      found.address = attr;
      break;
    case IFA_FLAGS:
      if (mnl_attr_validate(attr, MNL_TYPE_U32) < 0) return MNL_CB_ERROR;
      found.flags = attr;
      break;
    default:
      break;
  }
  return MNL_CB_OK;
}

template <std::size_t N>
std::optional<std::array<unsigned char, N>> address_bytes(const nlattr& attr) {
  if (mnl_attr_get_payload_len(&attr) != N) return std::nullopt;
  std::array<unsigned char, N> bytes{};
  std::memcpy(bytes.data(), mnl_attr_get_payload(&attr), N);
  return bytes;
}

std::optional<link_event> parse_link(const nlmsghdr& message) {
  if (mnl_nlmsg_get_payload_len(&message) < sizeof(ifinfomsg)) return std::nullopt;
  const auto& info = *static_cast<const ifinfomsg*>(mnl_nlmsg_get_payload(&message));
  // The bridge reports its ports with AF_BRIDGE on the same group, and an RTM_DELLINK
  // of that family means "left the bridge", not "deleted".
  if (info.ifi_family != AF_UNSPEC) return std::nullopt;
  link_attributes found;
  if (mnl_attr_parse(&message, sizeof(info), on_link_attribute, &found) != MNL_CB_OK ||
      found.name == nullptr || info.ifi_index <= 0) {
    return std::nullopt;
  }
  link_event event;
  event.type =
      message.nlmsg_type == RTM_NEWLINK ? link_event::kind::new_link : link_event::kind::del_link;
  event.ifindex = info.ifi_index;
  event.name = mnl_attr_get_str(found.name);
  event.flags = info.ifi_flags;
  return event;
}

std::optional<link_event> parse_address(const nlmsghdr& message) {
  if (mnl_nlmsg_get_payload_len(&message) < sizeof(ifaddrmsg)) return std::nullopt;
  const auto& info = *static_cast<const ifaddrmsg*>(mnl_nlmsg_get_payload(&message));
  if (info.ifa_family != AF_INET && info.ifa_family != AF_INET6) return std::nullopt;
  address_attributes found;
  if (mnl_attr_parse(&message, sizeof(info), on_address_attribute, &found) != MNL_CB_OK) {
    return std::nullopt;
  }
  // On a point-to-point link (a cellular modem's rmnet, ppp) IFA_ADDRESS is the peer and
  // IFA_LOCAL ours; otherwise only IFA_ADDRESS may be present, and it is ours.
  const nlattr* local = found.local != nullptr ? found.local : found.address;
  if (local == nullptr || info.ifa_index == 0) return std::nullopt;
  link_event event;
  event.ifindex = static_cast<int>(info.ifa_index);
  if (info.ifa_family == AF_INET) {
    auto bytes = address_bytes<4>(*local);
    if (!bytes) return std::nullopt;
    event.address = asio::ip::address_v4(*bytes);
  } else {
    auto bytes = address_bytes<16>(*local);
    if (!bytes) return std::nullopt;
    asio::ip::address_v6 v6(*bytes);
    // A link-local address means nothing without its link: keep the link with it, as a
    // socket bound to it needs.
    if (v6.is_link_local()) v6.scope_id(info.ifa_index);
    event.address = v6;
  }
  // IFA_FLAGS, when present, supersedes the 8-bit ifa_flags (newer flags don't fit).
  const std::uint32_t flags =
      found.flags != nullptr ? mnl_attr_get_u32(found.flags) : std::uint32_t{info.ifa_flags};
  // A tentative address (IPv6 duplicate address detection still running) cannot be bound
  // yet; the kernel sends RTM_NEWADDR again without the flag once it can.
  const bool can_use = (flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)) == 0;
  event.type = message.nlmsg_type == RTM_NEWADDR && can_use ? link_event::kind::new_address
                                                            : link_event::kind::del_address;
  return event;
}

void insert_sorted(std::vector<asio::ip::address>& addresses, const asio::ip::address& address) {
  auto at = std::lower_bound(addresses.begin(), addresses.end(), address);
  if (at == addresses.end() || *at != address) addresses.insert(at, address);
}

void erase_sorted(std::vector<asio::ip::address>& addresses, const asio::ip::address& address) {
  auto at = std::lower_bound(addresses.begin(), addresses.end(), address);
  if (at != addresses.end() && *at == address) addresses.erase(at);
}

std::string errno_text(int error) {
  return std::strerror(error);
}

}  // namespace

std::optional<link_event> parse_rtnl_message(const nlmsghdr& message) {
  switch (message.nlmsg_type) {
    case RTM_NEWLINK:
    case RTM_DELLINK:
      return parse_link(message);
    case RTM_NEWADDR:
    case RTM_DELADDR:
      return parse_address(message);
    default:
      return std::nullopt;
  }
}

// ---------------------------------------------------------------------------------------
// link_table

link_table::link_table(const std::vector<std::string>& watched) {
  for (const auto& name : watched) {
    if (by_name(name) != nullptr) continue;
    entry e;
    e.state.name = name;
    entries_.push_back(std::move(e));
  }
}

link_table::entry* link_table::by_ifindex(int ifindex) {
  if (ifindex <= 0) return nullptr;
  for (auto& e : entries_) {
    if (e.ifindex == ifindex) return &e;
  }
  return nullptr;
}

link_table::entry* link_table::by_name(std::string_view name) {
  for (auto& e : entries_) {
    if (e.state.name == name) return &e;
  }
  return nullptr;
}

const link_state* link_table::find(std::string_view name) const {
  for (const auto& e : entries_) {
    if (e.state.name == name) return &e.state;
  }
  return nullptr;
}

namespace {

template <class Entry, class Mutate>
void update(Entry& e, std::vector<link_change>& changes, Mutate&& mutate) {
  link_state before = e.state;
  mutate(e);
  if (e.state != before) changes.push_back(link_change{std::move(before), e.state});
}

link_state absent(std::string name) {
  link_state state;
  state.name = std::move(name);
  return state;
}

template <class Entry>
void forget(Entry& e) {
  e.state = absent(std::move(e.state.name));
  e.ifindex = 0;
  e.confirmed_addresses.clear();
}

}  // namespace

std::vector<link_change> link_table::apply(const link_event& event) {
  std::vector<link_change> changes;
  switch (event.type) {
    case link_event::kind::new_link: {
      // Same index, new name: the link we knew under its old name is gone from that name.
      for (auto& e : entries_) {
        if (e.ifindex == event.ifindex && e.state.name != event.name) {
          update(e, changes, [](entry& x) { forget(x); });
        }
      }
      if (entry* e = by_name(event.name)) {
        update(*e, changes, [&](entry& x) {
          // A new index is a new link (re-created veth, re-plugged tethering): the old
          // link's addresses went with it, and the new one's arrive as RTM_NEWADDR.
          if (x.ifindex != event.ifindex) {
            x.state.addresses.clear();
            x.confirmed_addresses.clear();
          }
          x.ifindex = event.ifindex;
          x.confirmed = true;
          x.state.exists = true;
          x.state.admin_up = (event.flags & IFF_UP) != 0;
          x.state.running = (event.flags & IFF_RUNNING) != 0;
        });
      }
      break;
    }
    case link_event::kind::del_link:
      if (entry* e = by_ifindex(event.ifindex)) update(*e, changes, [](entry& x) { forget(x); });
      break;
    case link_event::kind::new_address:
      if (entry* e = by_ifindex(event.ifindex)) {
        update(*e, changes, [&](entry& x) {
          insert_sorted(x.state.addresses, event.address);
          insert_sorted(x.confirmed_addresses, event.address);
        });
      }
      break;
    case link_event::kind::del_address:
      if (entry* e = by_ifindex(event.ifindex)) {
        update(*e, changes, [&](entry& x) {
          erase_sorted(x.state.addresses, event.address);
          erase_sorted(x.confirmed_addresses, event.address);
        });
      }
      break;
  }
  return changes;
}

void link_table::begin_dump(dump_kind what) {
  for (auto& e : entries_) {
    if (what == dump_kind::links) {
      e.confirmed = false;
    } else {
      e.confirmed_addresses.clear();
    }
  }
}

std::vector<link_change> link_table::end_dump(dump_kind what) {
  std::vector<link_change> changes;
  for (auto& e : entries_) {
    if (!e.state.exists) continue;
    if (what == dump_kind::links) {
      if (!e.confirmed) update(e, changes, [](entry& x) { forget(x); });
    } else {
      update(e, changes, [](entry& x) {
        std::vector<asio::ip::address> kept;
        std::set_intersection(x.state.addresses.begin(), x.state.addresses.end(),
                              x.confirmed_addresses.begin(), x.confirmed_addresses.end(),
                              std::back_inserter(kept));
        x.state.addresses = std::move(kept);
      });
    }
  }
  return changes;
}

// ---------------------------------------------------------------------------------------
// link_watcher

namespace {

// The kernel sizes dump chunks to the reader's buffer up to 32 KiB; a smaller buffer
// truncates messages of links with many attributes.
constexpr std::size_t receive_buffer_size = std::size_t{32} * 1024;
// Datagrams read per wake-up before yielding to the rest of the io_context.
constexpr int max_datagrams_per_wakeup = 64;

constexpr unsigned group_bit(unsigned group) {
  return 1U << (group - 1);
}

}  // namespace

struct link_watcher::impl {
  /// Where the resynchronisation (the dumps) stands.
  enum class sync_state {
    /// No dump in flight: only events arrive.
    idle,
    /// The RTM_GETLINK dump is in flight.
    links,
    /// The RTM_GETADDR dump (both families) is in flight; the links dump completed.
    addresses,
  };

  impl(const asio::any_io_executor& ex, std::vector<std::string> names, change_handler handler,
       options o)
      : interfaces(std::move(names)),
        on_change(std::move(handler)),
        opts(o),
        table(interfaces),
        descriptor(ex),
        timer(ex),
        buffer(receive_buffer_size) {}

  ~impl() { stop(); }

  std::vector<std::string> interfaces;  ///< the watched names, as given
  change_handler on_change;
  options opts;
  link_table table;
  mnl_socket* socket = nullptr;  ///< owned; null while closed
  unsigned portid = 0;           ///< the socket's netlink port: marks replies to our dumps
  /// A view of socket's fd for async_wait; never owns it (released before closing).
  asio::posix::stream_descriptor descriptor;
  /// The dump deadline while a dump is in flight, the reopening backoff while closed.
  asio::steady_timer timer;
  std::vector<char> buffer;  ///< one datagram; fixed size
  sync_state sync = sync_state::idle;
  unsigned last_seq = 0;  ///< sequence number of the dump in flight
  /// Events were lost (ENOBUFS) or the kernel flagged the dump inconsistent while it
  /// ran: when it ends, start over instead of trusting it.
  bool resync_needed = false;
  bool running = false;            ///< between a successful start() and stop()
  std::uint64_t resyncs = 0;       ///< see link_watcher::resyncs()
  std::uint64_t socket_epoch = 0;  ///< bumped at each close: older waits are stale
  std::uint64_t timer_epoch = 0;   ///< bumped at each arm and cancel: older expiries are stale
  std::weak_ptr<impl> self;        ///< what handlers hold

  // --- socket ---

  std::optional<std::string> open() {
    mnl_socket* s = mnl_socket_open2(NETLINK_ROUTE, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (s == nullptr) return "cannot open a netlink socket: " + errno_text(errno);
    const unsigned groups =
        group_bit(RTNLGRP_LINK) | group_bit(RTNLGRP_IPV4_IFADDR) | group_bit(RTNLGRP_IPV6_IFADDR);
    if (mnl_socket_bind(s, groups, MNL_SOCKET_AUTOPID) < 0) {
      const int error = errno;
      mnl_socket_close(s);
      return "cannot subscribe to netlink link and address events: " + errno_text(error);
    }
    const int fd = mnl_socket_get_fd(s);
    // SO_RCVBUFFORCE may exceed net.core.rmem_max but needs CAP_NET_ADMIN; without it the
    // capped SO_RCVBUF is the best we get, and ENOBUFS recovery covers the rest.
    int bytes = opts.receive_buffer_bytes;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof(bytes)) < 0) {
      (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
    }
    boost::system::error_code ec;
    descriptor.assign(fd, ec);
    if (ec) {
      mnl_socket_close(s);
      return "cannot watch the netlink socket: " + ec.message();
    }
    socket = s;
    portid = mnl_socket_get_portid(s);
    return std::nullopt;
  }

  void close() {
    ++socket_epoch;
    if (descriptor.is_open()) {
      // release(), not close(): the fd is mnl's, and mnl_socket_close closes it.
      (void)descriptor.release();
    }
    if (socket != nullptr) {
      mnl_socket_close(socket);
      socket = nullptr;
    }
    sync = sync_state::idle;
    resync_needed = false;
  }

  void stop() {
    running = false;
    cancel_timer();
    close();
  }

  // --- dumps ---

  std::optional<std::string> send_dump(std::uint16_t type) {
    alignas(nlmsghdr) std::array<char, 128> request{};
    nlmsghdr* nlh = mnl_nlmsg_put_header(request.data());
    nlh->nlmsg_type = type;
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    nlh->nlmsg_seq = ++last_seq;
    // The full family header of each request type, not the old bare rtgenmsg: a kernel
    // checking dump requests strictly (NETLINK_GET_STRICT_CHK) accepts only that.
    // AF_UNSPEC dumps every family: IPv4 and IPv6 addresses at once.
    if (type == RTM_GETLINK) {
      auto* info = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
      info->ifi_family = AF_UNSPEC;
    } else {
      auto* info = static_cast<ifaddrmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifaddrmsg)));
      info->ifa_family = AF_UNSPEC;
    }
    if (mnl_socket_sendto(socket, nlh, nlh->nlmsg_len) < 0) {
      return "cannot send the netlink dump request: " + errno_text(errno);
    }
    return std::nullopt;
  }

  std::optional<std::string> begin_sync() {
    if (resync_needed) ++resyncs;
    resync_needed = false;
    sync = sync_state::links;
    table.begin_dump(link_table::dump_kind::links);
    // start() keeps its own deadline; afterwards the timer bounds each resynchronisation.
    if (running) arm_timer(opts.dump_timeout);
    return send_dump(RTM_GETLINK);
  }

  std::optional<std::string> finish_dump(std::vector<link_change>& changes) {
    if (resync_needed) return begin_sync();
    auto append = [&](std::vector<link_change> more) {
      std::move(more.begin(), more.end(), std::back_inserter(changes));
    };
    if (sync == sync_state::links) {
      append(table.end_dump(link_table::dump_kind::links));
      sync = sync_state::addresses;
      table.begin_dump(link_table::dump_kind::addresses);
      return send_dump(RTM_GETADDR);
    }
    append(table.end_dump(link_table::dump_kind::addresses));
    sync = sync_state::idle;
    cancel_timer();
    return std::nullopt;
  }

  std::optional<std::string> on_events_lost() {
    // Once per resynchronisation: in a storm the losses come in bursts.
    if (running && !resync_needed) {
      spdlog::warn("link watcher: netlink events lost, dumping links and addresses");
    }
    resync_needed = true;
    if (sync == sync_state::idle) return begin_sync();
    return std::nullopt;
  }

  // --- reading ---

  std::optional<std::string> handle_datagram(std::size_t size, std::vector<link_change>& changes) {
    int left = static_cast<int>(size);
    for (auto* nlh = reinterpret_cast<const nlmsghdr*>(buffer.data()); mnl_nlmsg_ok(nlh, left);
         nlh = mnl_nlmsg_next(nlh, &left)) {
      // Only replies to our dumps carry our port id: notifications carry the port id and
      // sequence number of whoever made the change (`ip addr add` ...), or 0. That is
      // also why mnl_cb_run's sequence check cannot be used on this socket.
      const bool reply = nlh->nlmsg_pid == portid;
      if (reply && (sync == sync_state::idle || nlh->nlmsg_seq != last_seq)) continue;
      if (reply && (nlh->nlmsg_flags & NLM_F_DUMP_INTR) != 0) resync_needed = true;
      switch (nlh->nlmsg_type) {
        case NLMSG_DONE:
          if (reply) {
            int status = 0;
            if (mnl_nlmsg_get_payload_len(nlh) >= sizeof(status)) {
              std::memcpy(&status, mnl_nlmsg_get_payload(nlh), sizeof(status));
            }
            if (status < 0) return "the netlink dump failed: " + errno_text(-status);
            if (auto error = finish_dump(changes)) return error;
          }
          break;
        case NLMSG_ERROR:
          if (reply) {
            int status = -EBADMSG;
            if (mnl_nlmsg_get_payload_len(nlh) >= sizeof(nlmsgerr)) {
              status = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(nlh))->error;
            }
            return "the netlink dump failed: " + errno_text(status < 0 ? -status : status);
          }
          break;
        default:
          if (auto event = parse_rtnl_message(*nlh)) {
            auto more = table.apply(*event);
            std::move(more.begin(), more.end(), std::back_inserter(changes));
          }
          break;
      }
    }
    return std::nullopt;
  }

  /// Reads what the socket holds (up to a bound), applying it to the table.
  std::optional<std::string> read_available(std::vector<link_change>& changes) {
    for (int i = 0; i < max_datagrams_per_wakeup; ++i) {
      const ssize_t n = mnl_socket_recvfrom(socket, buffer.data(), buffer.size());
      if (n < 0) {
        const int error = errno;
        if (error == EAGAIN || error == EWOULDBLOCK) return std::nullopt;
        if (error == EINTR) continue;
        // ENOBUFS: the kernel dropped events for us. ENOSPC: libmnl saw MSG_TRUNC, a
        // message larger than our buffer, which is as lost.
        if (error == ENOBUFS || error == ENOSPC) {
          if (auto failed = on_events_lost()) return failed;
          continue;
        }
        return "cannot read the netlink socket: " + errno_text(error);
      }
      if (auto error = handle_datagram(static_cast<std::size_t>(n), changes)) return error;
    }
    return std::nullopt;
  }

  // --- asynchronous part ---

  void wait_readable() {
    descriptor.async_wait(asio::posix::descriptor_base::wait_read,
                          [weak = self, epoch = socket_epoch](boost::system::error_code ec) {
                            auto me = weak.lock();
                            if (me && me->running && me->socket_epoch == epoch) {
                              me->on_readable(ec);
                            }
                          });
  }

  void on_readable(boost::system::error_code ec) {
    if (ec) {
      fail("waiting on the netlink socket: " + ec.message());
      return;
    }
    std::vector<link_change> changes;
    const auto error = read_available(changes);
    const auto epoch = socket_epoch;
    for (const auto& change : changes) {
      // A callback may have stopped (or restarted, or destroyed) the watcher.
      if (!running || socket_epoch != epoch) return;
      if (on_change) on_change(change.before, change.after);
    }
    if (!running || socket_epoch != epoch) return;
    if (error) {
      fail(*error);
      return;
    }
    wait_readable();
  }

  void arm_timer(std::chrono::milliseconds after) {
    const auto epoch = ++timer_epoch;
    timer.expires_after(after);
    timer.async_wait([weak = self, epoch](boost::system::error_code ec) {
      auto me = weak.lock();
      if (!me || !me->running || me->timer_epoch != epoch || ec) return;
      me->on_timer();
    });
  }

  void cancel_timer() {
    ++timer_epoch;
    timer.cancel();
  }

  void on_timer() {
    if (socket != nullptr) {
      // The dump deadline: the kernel never finished it (a reply lost to truncation).
      fail("no complete answer to the netlink dump");
      return;
    }
    if (auto error = open()) {
      fail(*error);
      return;
    }
    if (auto error = begin_sync()) {
      fail(*error);
      return;
    }
    spdlog::info("link watcher: netlink socket reopened");
    wait_readable();
  }

  /// Unexpected trouble after start(): log, then reopen and resynchronise after a pause.
  /// The table is kept, so the resynchronisation reports what changed meanwhile.
  void fail(const std::string& why) {
    spdlog::warn("link watcher: {}; reopening in {} ms", why, opts.retry_backoff.count());
    close();
    arm_timer(opts.retry_backoff);
  }

  // --- start ---

  core::expected<bool> start() {
    if (running) return core::make_error("link watcher: already started");
    table = link_table(interfaces);
    auto failed = [this](const std::string& why) {
      close();
      return core::make_error("link watcher: " + why);
    };
    if (auto error = open()) return failed(*error);
    if (auto error = begin_sync()) return failed(*error);
    // The initial snapshot, read synchronously so that state() is complete on return;
    // the events mixed into it are part of the snapshot, not changes to report.
    std::vector<link_change> ignored;
    const auto deadline = std::chrono::steady_clock::now() + opts.dump_timeout;
    while (sync != sync_state::idle) {
      const auto left =
          std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        return failed("no complete answer to the netlink dump within " +
                      std::to_string(opts.dump_timeout.count()) + " ms");
      }
      pollfd pfd{mnl_socket_get_fd(socket), POLLIN, 0};
      const int ready = ::poll(&pfd, 1, static_cast<int>(left.count()));
      if (ready < 0 && errno != EINTR) return failed("poll: " + errno_text(errno));
      if (ready <= 0) continue;
      if (auto error = read_available(ignored)) return failed(*error);
      ignored.clear();
    }
    running = true;
    wait_readable();
    return true;
  }
};

link_watcher::link_watcher(const asio::any_io_executor& executor,
                           std::vector<std::string> interfaces, change_handler on_change)
    : link_watcher(executor, std::move(interfaces), std::move(on_change), options{}) {}

link_watcher::link_watcher(const asio::any_io_executor& executor,
                           std::vector<std::string> interfaces, change_handler on_change,
                           options opts)
    : impl_(std::make_shared<impl>(executor, std::move(interfaces), std::move(on_change), opts)) {
  impl_->self = impl_;
}

link_watcher::~link_watcher() {
  impl_->stop();
}

core::expected<bool> link_watcher::start() {
  return impl_->start();
}

void link_watcher::stop() {
  impl_->stop();
}

std::uint64_t link_watcher::resyncs() const {
  return impl_->resyncs;
}

void link_watcher::fail_for_test() {
  if (impl_->running) impl_->fail("failure injected by a test");
}

link_state link_watcher::state(std::string_view name) const {
  if (const link_state* s = impl_->table.find(name)) return *s;
  return absent(std::string(name));
}

}  // namespace fleety::path
