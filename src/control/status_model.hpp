#pragma once
// What the daemon tells about itself, as plain structs (issue 15, item 4): fleetyd fills a
// status_model, and both the control socket's status JSON (`fleety status`, `fleety watch`,
// the end-to-end tests) and the Prometheus text (`/metrics`) are written from it, so that
// the two cannot drift apart. The writers are pure.

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace fleety::control {

/// One path as the status shows it.
struct path_status {
  std::string name;       ///< [[path]] name ("wifi")
  std::string interface;  ///< its interface ("wlan0")
  std::string kind;       ///< "wifi", "cellular", "ethernet", ...
  bool up = false;        ///< the path monitor's liveness (path::monitor::up)
  std::optional<std::chrono::microseconds> rtt;     ///< smoothed RTT; unknown: not measured
  std::optional<std::chrono::microseconds> jitter;  ///< mean deviation of the RTT
  std::optional<double> throughput_bps;             ///< what it received lately, bits per second
  std::optional<double> loss;                       ///< fraction of packets lost lately (0..1)
  std::optional<double> signal_dbm;                 ///< Wi-Fi signal level
  double capacity_bps = 0;           ///< what it can carry (the scheduler's estimate)
  std::uint64_t probes = 0;          ///< idle probes sent since start
  std::uint64_t bytes_received = 0;  ///< response bytes it carried since start
  std::uint64_t requests = 0;        ///< upstream requests sent on it since start
  /// Why uplink discovery took it (no [[path]] in the config); empty: configured.
  std::string found;
  /// The DNS servers its queries go to; empty: the system's (/etc/resolv.conf).
  std::vector<std::string> dns_servers;
  /// Where a discovered path's servers came from, or why none were found.
  std::string dns_found;
  bool dns_fallback = false;  ///< no per-link servers: the system's, a warning
  /// Where its idle probes go, and why there ("198.18.0.1:443, a node it fetched from");
  /// empty: not probed.
  std::string probe;
};

/// A relayed flow under way.
struct flow_status {
  std::uint64_t id = 0;   ///< the connection's id in the logs
  std::string app;        ///< empty: not a configured app
  std::string qos_class;  ///< its QoS class's name ("class" in JSON)
  std::string path;       ///< the path's name
  std::string what;       ///< "TLS to example.com (198.51.100.7:443)"
  double seconds = 0;     ///< since it started
};

/// A multipath download under way, with each path's part.
struct download_status {
  std::uint64_t session = 0;
  std::string app;  ///< the intercepted app; empty for the explicit proxy's
  std::string url;
  std::uint64_t size = 0;       ///< bytes the app gets
  std::uint64_t delivered = 0;  ///< of those, written to the app so far
  double seconds = 0;
  struct share {
    std::string path;
    std::uint64_t bytes = 0;  ///< of the object, this path's
    double rate_bps = 0;      ///< now, bits per second
    bool failed = false;
  };
  std::vector<share> paths;
};

/// The DNS duplicator's counters since start.
struct dns_status {
  std::uint64_t queries = 0;
  std::uint64_t answered_by_fallback = 0;  ///< by another path than the preferred one
  std::uint64_t failed = 0;                ///< no path answered
};

/// Bytes an app received on a path since start.
struct app_bytes_row {
  std::string app;  ///< "-": not a configured app
  std::string path;
  std::uint64_t bytes = 0;
};

/// A path a host's node refused lately (issue 16): no ranges go there for that host
/// until the time is up. Not a version conflict.
struct refusal_status {
  std::string host;
  std::string path;
  std::string reason;   ///< "forbidden", "rate limited", "ignores ranges", ...
  unsigned status = 0;  ///< the node's HTTP status
  double seconds_left = 0;
};

/// The whole status (the control socket's `status`, the metrics).
struct status_model {
  std::vector<path_status> paths;  ///< in preference order
  std::vector<flow_status> flows;
  std::vector<download_status> downloads;
  std::uint64_t cellular_month_bytes = 0;  ///< cellular bytes this month (UTC)
  std::uint64_t flow_resets = 0;           ///< relayed flows reset to move them off their path
  std::vector<app_bytes_row> app_bytes;
  bool cellular_capped = false;  ///< this month's cellular budget is spent
  std::uint64_t sessions_active = 0;
  std::uint64_t sessions_started = 0;
  std::uint64_t multipath_downloads_active = 0;
  std::uint64_t version_conflicts = 0;        ///< downloads whose paths served two versions
  std::vector<refusal_status> refused_paths;  ///< in force now
  /// Refusals since start, by reason ("forbidden", "rate limited", ...).
  std::vector<std::pair<std::string, std::uint64_t>> refusals_total;
  bool intercepting = false;  ///< apps are being taken over
  dns_status dns;
  /// The pool of warm keep-alive connections to the hosts' nodes.
  struct warm_status {
    std::uint64_t idle = 0;
    std::uint64_t reused = 0;      ///< requests that went on a warm connection
    std::uint64_t parked = 0;      ///< connections kept warm after a response
    std::uint64_t over_limit = 0;  ///< connections not opened: a host's limit on a path
  } warm;
};

/// The status as the control socket's JSON object: the keys, their order and their JSON
/// types as `fleety status` and the end-to-end tests read them. Unknown measurements are
/// null; RTT and jitter in ms, throughput and capacity in Mbit/s.
boost::json::object status_json(const status_model& status);

/// `value` as JSON text with numbers as people and scripts write them: 58.209, 0, 1e+21
/// (the shortest text that reads back the same double), never Boost.JSON's 5.8209E1 or
/// 0E0; a NaN or infinity is null. Everything else as boost::json::serialize.
std::string json_text(const boost::json::value& value);

/// One configured app, as `fleety apps` shows it.
struct app_status {
  std::string name;
  bool enabled = true;
  std::string cgroup;  ///< below the cgroup2 mount ("fleety/<name>" for `fleety run --app`)
  std::optional<std::uint32_t> uid;
  std::optional<std::uint32_t> gid;
  std::string qos_class;  ///< its class, the default one filled in ("class" in JSON)
};

/// [{"name", "enabled", "cgroup", "uid", "gid", "class"}, ...]; uid and gid null when unset.
boost::json::array apps_json(const std::vector<app_status>& apps);

/// This month's usage and the paper's §6.1 telemetry (`fleety stats`).
struct stats_model {
  std::string month;  ///< "2025-03" (UTC)
  std::uint64_t cellular_bytes = 0;
  bool cellular_capped = false;
  /// All of a path's bytes this month (every app, relays and downloads).
  struct path_usage {
    std::string path;
    std::uint64_t bytes = 0;
  };
  std::vector<path_usage> paths;
  std::vector<app_bytes_row> apps;  ///< per app and path this month
  int days = 30;                    ///< the telemetry's window
  std::uint64_t transitions = 0;    ///< single→multi transitions
  std::optional<double> median_gain_bps;
  std::optional<double> mean_gain_bps;
  std::optional<double> median_speedup;
  std::optional<double> mean_speedup;
  std::uint64_t switches = 0;  ///< path switches of relayed flows
  std::optional<std::chrono::microseconds> median_rtt_change;
};

/// {"month", "cellular_bytes", "cellular_capped", "paths", "apps", "telemetry": {...}}.
boost::json::object stats_json(const stats_model& stats);

}  // namespace fleety::control
