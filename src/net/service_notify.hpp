#pragma once
// systemd's notification protocol (sd_notify(3)), for a unit with Type=notify and
// WatchdogSec: one datagram per message to the socket named in $NOTIFY_SOCKET. Written
// here rather than linking libsystemd for four fixed messages; the protocol is stable
// and documented. Without $NOTIFY_SOCKET (not under systemd) every call does nothing.

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace fleety::net {

/// What the service manager asked for, from the environment.
struct notify_settings {
  std::string socket_path;  ///< empty: not supervised; "@name": abstract namespace
  /// How often systemd wants to hear WATCHDOG=1 (WATCHDOG_USEC), when it watches this
  /// process (WATCHDOG_PID unset, or ours).
  std::optional<std::chrono::microseconds> watchdog;
};

/// Pure: the settings from `getenv` (a function, for tests) and this process's pid. A
/// malformed value counts as absent.
notify_settings notify_settings_from(const std::function<const char*(const char*)>& getenv,
                                     long pid);

class service_notifier {
 public:
  /// From the real environment.
  service_notifier();
  explicit service_notifier(notify_settings settings) : settings_(std::move(settings)) {}

  bool supervised() const { return !settings_.socket_path.empty(); }
  /// Send WATCHDOG=1 this often (half of what systemd waits for), if it watches us.
  std::optional<std::chrono::microseconds> keepalive_interval() const;

  /// READY=1 with a STATUS line: everything is open, the apps may come.
  void ready(std::string_view status) const;
  /// STOPPING=1: shutting down (systemd stops the watchdog).
  void stopping() const;
  /// WATCHDOG=1: the event loop is alive.
  void keepalive() const;
  /// Sends one message; false (with errno) if it could not. Public for tests.
  bool send(std::string_view message) const;

 private:
  notify_settings settings_;
};

/// Sends WATCHDOG=1 every keepalive_interval() from the event loop it runs on, until
/// cancelled: a loop that hangs stops the pings, and systemd kills the daemon (its table
/// goes with it: the apps go direct) and starts it again. Returns at once when systemd
/// does not watch.
boost::asio::awaitable<void> run_watchdog_keepalive(const service_notifier& notifier);

}  // namespace fleety::net
