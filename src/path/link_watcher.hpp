#pragma once
// Interface and address state of the configured paths' interfaces, from rtnetlink
// (issue 6, item 1): a path whose interface appears, disappears, goes up or down, or
// gains or loses an address is picked up without a restart.
//
// Two parts: link_table is pure (parsed events in, changes out; unit-tested with
// literal events) and link_watcher is the I/O around it (a libmnl socket driven by Asio).

#include <linux/netlink.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/ip/address.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/expected.hpp"

namespace fleety::path {

/// What the kernel says about one watched interface.
struct link_state {
  std::string name;       ///< interface name as configured ("wlan0")
  bool exists = false;    ///< the interface is present (in this network namespace)
  bool admin_up = false;  ///< IFF_UP: set up by the administrator
  bool running = false;   ///< IFF_RUNNING: operationally up (carrier)
  /// Local addresses, sorted, without duplicates; IPv6 addresses still in duplicate
  /// address detection (tentative) or that failed it are left out: they cannot be used.
  std::vector<boost::asio::ip::address> addresses;

  bool operator==(const link_state&) const = default;
};

/// Whether the interface can carry a path's traffic: present, up, with carrier and with
/// at least one address that is not IPv6 link-local (a link-local address reaches no
/// server, and a path without an address cannot send at all).
bool usable(const link_state& link);

/// The part of one rtnetlink message that link_table needs.
struct link_event {
  enum class kind {
    new_link,     ///< RTM_NEWLINK: a link appeared or its flags or name changed
    del_link,     ///< RTM_DELLINK: a link was deleted
    new_address,  ///< RTM_NEWADDR: an address is usable on the link
    del_address,  ///< RTM_DELADDR (or an address not usable yet: tentative)
  };
  kind type = kind::new_link;
  int ifindex = 0;                   ///< kernel interface index (ifi_index / ifa_index)
  std::string name;                  ///< links only: IFLA_IFNAME
  unsigned flags = 0;                ///< links only: ifi_flags (IFF_UP, IFF_RUNNING, ...)
  boost::asio::ip::address address;  ///< addresses only: the local address
};

/// Parses one rtnetlink message. Empty for messages that carry nothing for link_table:
/// other types, bridge-port notifications (AF_BRIDGE, which are not link deletions),
/// other address families, and malformed messages (too short, bad attributes).
std::optional<link_event> parse_rtnl_message(const nlmsghdr& message);

/// One watched interface before and after an event.
struct link_change {
  link_state before;
  link_state after;
};

/// The state of the watched interfaces, kept up to date by applying events in the order
/// the kernel sent them. Pure; not thread-safe.
///
/// Resynchronisation (after lost events) is mark and sweep: begin_dump() forgets what
/// was confirmed, every message (dumped or a live event) confirms what it reports, and
/// end_dump() drops what the complete dump did not confirm.
class link_table {
 public:
  /// The two dumps of a resynchronisation, links first (addresses need their ifindex).
  enum class dump_kind { links, addresses };

  /// `watched`: interface names; duplicates are ignored.
  explicit link_table(const std::vector<std::string>& watched);

  /// Applies one event. Returns the watched links whose state changed: none (unwatched
  /// interface, or nothing new), one, or two (a watched link renamed to another watched
  /// name).
  std::vector<link_change> apply(const link_event& event);

  /// A dump of `what` starts.
  void begin_dump(dump_kind what);
  /// The dump of `what` ended complete (not interrupted, no events lost meanwhile):
  /// watched links it did not report are gone, addresses it did not report are removed.
  std::vector<link_change> end_dump(dump_kind what);

  /// The state of a watched interface; nullptr when `name` is not watched.
  const link_state* find(std::string_view name) const;

 private:
  struct entry {
    link_state state;
    int ifindex = 0;         ///< 0 while the link does not exist
    bool confirmed = false;  ///< reported since the links dump began
    /// Reported since the addresses dump began (sorted).
    std::vector<boost::asio::ip::address> confirmed_addresses;
  };
  std::vector<entry> entries_;  ///< one per watched name, in the order given

  entry* by_ifindex(int ifindex);
  entry* by_name(std::string_view name);
};

/// Watches the configured paths' interfaces through rtnetlink and reports their
/// changes. Owned by the path monitor; use it only from the thread that runs
/// `executor` (not thread-safe).
class link_watcher {
 public:
  /// Called with a watched interface's state before and after each change of its
  /// existence, flags or addresses; never for unwatched interfaces, never when nothing
  /// changed, never after stop(). It may call stop() or destroy the watcher.
  using change_handler = std::function<void(const link_state& before, const link_state& after)>;

  struct options {
    /// Deadline for each resynchronisation (the dump of links, then addresses), start()'s
    /// initial one included.
    std::chrono::milliseconds dump_timeout{2000};
    /// Wait before reopening the socket after an unexpected netlink error.
    std::chrono::milliseconds retry_backoff{1000};
    /// SO_RCVBUF of the netlink socket: how many events the kernel queues for us before
    /// it drops them (ENOBUFS, after which we dump everything again).
    int receive_buffer_bytes = 1 << 20;
  };

  /// `interfaces`: the names to watch ({"wlan0", "rmnet0"}). Nothing is opened yet.
  link_watcher(const boost::asio::any_io_executor& executor, std::vector<std::string> interfaces,
               change_handler on_change);
  link_watcher(const boost::asio::any_io_executor& executor, std::vector<std::string> interfaces,
               change_handler on_change, options opts);
  /// Stops (see stop()).
  ~link_watcher();
  link_watcher(const link_watcher&) = delete;
  link_watcher& operator=(const link_watcher&) = delete;

  /// Opens the netlink socket, subscribes to link and IPv4/IPv6 address events, dumps
  /// links and addresses (blocking the calling thread, at most options::dump_timeout),
  /// then watches asynchronously. When it returns true, state() holds the kernel's view;
  /// on_change reports only later changes. An error (no netlink, permission, no answer)
  /// is a one-line message and leaves nothing open; starting twice is an error too.
  core::expected<bool> start();

  /// Closes the socket and cancels the retry timer. No callback runs afterwards.
  /// Idempotent; start() may be called again.
  void stop();

  /// The current state of `name`; for an unwatched name, or before start(), it does not
  /// exist.
  link_state state(std::string_view name) const;

  /// Times events were lost (the kernel's queue for us overflowed, or a dump was
  /// inconsistent) and everything was dumped again: a metric, and what tests check.
  std::uint64_t resyncs() const;

  /// Behaves as if the socket had failed: closes it, then reopens and resynchronises
  /// after options::retry_backoff.
  void fail_for_test();

 private:
  struct impl;
  // Shared only with the weak references that completion handlers hold, so that a
  // handler still queued after destruction (or a callback destroying the watcher)
  // never touches freed memory.
  std::shared_ptr<impl> impl_;
};

}  // namespace fleety::path
