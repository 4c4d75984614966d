#pragma once
// The control socket: a unix socket of root and the [access] group over which the `fleety` CLI asks
// the daemon (one JSON object per line each way). The dispatch is a pure function over the
// daemon_api interface; the socket server and the CLI's client are thin I/O.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/json/object.hpp>
#include <boost/json/value.hpp>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "control/status_model.hpp"
#include "core/expected.hpp"

namespace fleety::control {

/// Where fleetyd listens unless the config says otherwise.
inline constexpr std::string_view default_socket_path = "/run/fleety/control.sock";

/// Who is asking, as the kernel says of the control connection (SO_PEERCRED).
struct peer_credentials {
  std::uint32_t uid = 0;
  std::uint32_t gid = 0;
  std::int32_t pid = 0;
  bool is_root() const { return uid == 0; }
};

/// What the control socket can ask of the daemon (fleetyd implements it). Called on the
/// io_context's thread.
class daemon_api {
 public:
  virtual ~daemon_api() = default;
  /// The daemon now: written as the `status` reply (status_json) and as the metrics
  /// (prometheus_text).
  virtual status_model status() = 0;
  /// The configured apps and those `fleety run --app` started (apps_json).
  virtual std::vector<app_status> apps() = 0;
  /// Enables or disables an app and reloads the interception rules; the error names
  /// an unknown app or what nftables said.
  virtual core::expected<bool> set_app_enabled(const std::string& name, bool enabled) = 0;
  /// `fleety run --app NAME` is about to start NAME: fleetyd makes its cgroup and loads the
  /// rules again so that they know it; when the app is enabled and `caller` is given, the
  /// caller's process is moved into that cgroup (the program it then execs is the app).
  /// Whether the app is enabled (an unknown name is a new, enabled app).
  virtual core::expected<bool> app_starting(const std::string& name,
                                            const std::optional<peer_credentials>& caller) = 0;
  /// Reads the feature rules again; how many there are.
  virtual core::expected<std::size_t> reload_rules() = 0;
  /// Cellular bytes per app and in total this month, and the paper's §6.1 telemetry
  /// (throughput gain at single→multi transitions, RTT change at path switches).
  virtual core::expected<stats_model> stats() {
    return core::make_error("this fleetyd keeps no statistics");
  }
};

/// One request line from `peer` → one reply line (without the newline). Requests:
/// {"cmd":"status"}, {"cmd":"apps"}, {"cmd":"app.enable","name":N},
/// {"cmd":"app.disable","name":N}, {"cmd":"app.starting","name":N[,"join":true]},
/// {"cmd":"rules.reload"}, {"cmd":"stats"}. Replies: {"ok":true,...} or {"ok":false,"error":"..."}.
/// Who may connect is the socket's mode (root and the [access] group); what changes the
/// daemon for everyone (app.enable, app.disable, rules.reload) only root may ask.
std::string handle_request(std::string_view line, daemon_api& daemon, const peer_credentials& peer);

/// How long a control connection may wait.
struct control_timeouts {
  std::chrono::milliseconds idle{30'000};  ///< for its next request
  /// For its reply to be written: a client that does not read it is disconnected rather
  /// than holding the reply (and its connection) forever.
  std::chrono::milliseconds write{10'000};
};

/// Serves the socket until the acceptor is closed or the coroutine is cancelled: requests
/// in order per connection, lines up to 64 KiB, each connection closed when it waits
/// longer than `timeouts` say. Owns its connections: when it ends it cancels them and
/// waits for them.
boost::asio::awaitable<void> run_control_server(
    boost::asio::local::stream_protocol::acceptor acceptor, daemon_api& daemon,
    control_timeouts timeouts = {});

/// The status as Prometheus text metrics (exposition format 0.0.4), names `fleety_...`:
/// per path (up, RTT, jitter, loss, throughput, capacity, signal, bytes, requests, probes),
/// flows by class and path, sessions, verifier mismatches, flow resets, DNS fallbacks and
/// failures, cellular bytes, bytes per app. Unknown values have no sample. Pure.
std::string prometheus_text(const status_model& status);

/// Serves GET /metrics (prometheus_text of daemon.status()) over HTTP on `acceptor` until it
/// is closed or the coroutine is cancelled: at most 16 connections, each idle at most 10 s,
/// owned as run_control_server's.
boost::asio::awaitable<void> run_metrics_server(boost::asio::ip::tcp::acceptor acceptor,
                                                daemon_api& daemon);

/// Opens `path` for fleetyd: its directory made if missing (0755), a stale socket removed,
/// the socket itself mode 0660 owned by root and `group` (the [access] group), or 0600
/// without one.
core::expected<boost::asio::local::stream_protocol::acceptor> listen_control(
    boost::asio::io_context& io, const std::string& path,
    std::optional<std::uint32_t> group = std::nullopt);

/// The CLI's side: one request, its reply object (with "ok" true), within `timeout`.
/// Errors say what to do ("fleetyd is not running: no control socket at PATH").
core::expected<boost::json::object> call(const std::string& path,
                                         const boost::json::object& request,
                                         std::chrono::milliseconds timeout);

}  // namespace fleety::control
