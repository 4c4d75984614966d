#pragma once
// fleetyd's configuration: a TOML file turned into a validated struct. Pure: the
// file's text in, a config or one clear error line ("FILE:LINE: what is wrong") out.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/expected.hpp"

namespace fleety::core {

/// What kind of link a path is; decides its default cost (Wi-Fi and wired first).
enum class path_kind { wifi, cellular, wired };

std::string_view to_string(path_kind kind);

/// One uplink of the client.
struct path_config {
  std::string name;       ///< unique, for logs and the CLI ("wifi")
  std::string interface;  ///< network device the path's sockets are bound to ("wlan0")
  path_kind kind = path_kind::wifi;
  /// Lower is preferred; ties keep file order. Default: 0 for wifi/wired, 10 for cellular.
  int cost = 0;
  /// DNS servers ("198.18.0.53" or "[::1]:5353") queried through this path; empty means the
  /// system's resolvers (/etc/resolv.conf), still queried through this path's interface.
  std::vector<std::string> dns_servers;
  /// Prior estimates used until the path has been measured.
  std::uint64_t prior_rate_bps = 0;        ///< 0: use [scheduler] default_rate
  std::chrono::microseconds prior_rtt{0};  ///< 0: use [scheduler] default_rtt
  /// Where idle probes go ("198.18.0.53:53", "[2001:db8::1]:443"): a TCP connect whose
  /// time is the path's RTT. Empty: the path's first DNS server, port 53.
  std::string probe;
  /// `mptcp_backup` ([mptcp], paper §3): this path's MPTCP endpoint is a backup one, whose
  /// subflows carry data only when no other subflow can. Default: true for cellular paths.
  bool mptcp_backup = false;
  /// Why fleetyd took this interface as an uplink when the config names none (uplink
  /// discovery: "the name wlan0", "driver cdc_ncm ..."); empty for a configured [[path]].
  std::string discovered;
  /// For a discovered path: where its DNS servers came from ("systemd-resolved
  /// (/run/systemd/resolve/netif/3)"), or why the system's resolvers are used instead.
  std::string dns_found;
  /// Whether `dns_found` is a warning: no per-link servers were found, so this path's
  /// queries go to the system's resolvers, which may not answer through it.
  bool dns_fallback = false;
};

/// The scheduler's two policies (DESIGN.md): Wi-Fi first with a tolerance, or pure aggregation.
enum class scheduler_mode { cost, aggregate };

struct scheduler_config {
  scheduler_mode mode = scheduler_mode::cost;
  /// T_tol: Wi-Fi alone when it finishes within this time.
  std::chrono::microseconds tolerance{1'000'000};
  /// A range request should keep its path busy about this long (at least 3 RTT).
  std::chrono::microseconds range_time{150'000};
  /// A host that served two versions of an object is fetched on one path this long.
  std::chrono::microseconds mismatch_cooldown{600'000'000};
  /// M: the most a session buffers: no range is requested past delivered + M.
  std::uint64_t memory_per_session_bytes = 32ULL << 20;
  /// All downloads together hold at most about this much (issue 18): each one's window is
  /// its fair share of it (split evenly between apps, then between an app's downloads), at
  /// most memory_per_session.
  std::uint64_t memory_budget_bytes = 256ULL << 20;
  /// Objects smaller than this are fetched on one path, unsplit. nullopt ("auto", the
  /// default): the size from which a split pays, from the paths' rates and RTTs (issue 17).
  std::optional<std::uint64_t> min_split_bytes;
  /// Bytes the earlier range overlaps the next, compared to catch two versions of an object.
  std::uint64_t overlap_bytes = 64;
  std::uint64_t default_rate_bps = 10'000'000;
  std::chrono::microseconds default_rtt{50'000};
};

struct proxy_config {
  std::string listen_address = "127.0.0.1";
  std::uint16_t listen_port = 3128;
  std::chrono::microseconds connect_timeout{5'000'000};
  /// A read or write that makes no progress for this long fails the transfer.
  std::chrono::microseconds io_timeout{15'000'000};
  /// What is not a download — a response of unknown length (SSE, chunked, until-close),
  /// a long poll's wait for its answer, an Upgrade's tunnel — may stay quiet this long
  /// while the server keeps the connection (issue 16: no idle cut-off a direct
  /// connection wouldn't have).
  std::chrono::microseconds stream_idle_timeout{600'000'000};
  /// Most app connections served at once; more wait in the kernel's backlog.
  std::uint32_t max_connections = 256;
  /// Connections fleety opens itself to one host on one path at most (a browser's six);
  /// the app's own connections to its destination are the app's.
  std::size_t connections_per_host = 6;
  /// Warm keep-alive connections kept idle for the next request, in all.
  std::size_t idle_connections = 32;
  /// An idle warm connection closes after this long unused.
  std::chrono::microseconds idle_connection_timeout{30'000'000};
  /// The ports CONNECT may tunnel to: HTTPS only by default, so that the proxy is no
  /// way to reach mail, SSH or a database in the name of whoever may use it.
  std::vector<std::uint16_t> connect_ports{443};
};

/// Transparent interception (`[intercept]`): the redirected apps' TCP and DNS come to
/// these loopback listeners.
struct intercept_config {
  bool enabled = false;
  std::uint16_t tcp_port = 3129;  ///< on 127.0.0.1 and ::1
  std::uint16_t dns_port = 3053;  ///< UDP and TCP, on 127.0.0.1 and ::1
  /// SO_MARK on fleetyd's own upstream sockets: the rules let them pass, so they never
  /// loop back into fleetyd.
  std::uint32_t mark = 0xf1ee7;
  /// How long to wait for the app's first bytes (or the server's) before relaying the
  /// flow as plain bytes.
  std::chrono::microseconds peek_timeout{1'000'000};
};

/// `[mptcp]` (paper §3, issue 6 item 8): relayed upstream connections are opened as
/// Multipath TCP, with an endpoint of the kernel's path manager on every path.
struct mptcp_config {
  bool enabled = false;
};

/// An app whose traffic fleetyd takes over (`[[app]]`), named by any of cgroup, uid, gid.
struct app_config {
  std::string name;
  std::string cgroup;  ///< cgroup v2 path below the mount, e.g. "user.slice/app"
  std::optional<std::uint32_t> uid;
  std::optional<std::uint32_t> gid;
  bool enabled = true;
  std::string qos_class;  ///< `class`: its flows' QoS class; empty: [selector] default_class
};

/// A QoS class (`[[class]]`, paper §4.4): what a path must offer a flow of this class.
/// Unset limits don't count.
struct qos_class_config {
  std::string name;
  std::optional<std::chrono::microseconds> max_rtt;
  std::optional<std::chrono::microseconds> max_jitter;
  std::optional<double> max_loss;  ///< 0..1
  std::optional<std::uint64_t> min_throughput_bps;
};

/// The classes every config has unless it redefines them: gaming (RTT ≤ 100 ms, jitter ≤
/// 30 ms, loss ≤ 2%), streaming (≥ 5 Mbit/s), download (≥ 1 Mbit/s), messaging and
/// default (anything that is up).
std::vector<qos_class_config> builtin_qos_classes();

/// `[selector]`: how relayed flows (TLS, other TCP, HTTP that is not split) pick a path.
struct selector_config {
  std::string default_class = "default";  ///< for flows of apps without a class
  /// A flow whose path misses its class this long, while another path meets it, is reset
  /// so that the app reconnects on the better path.
  std::chrono::microseconds reset_after{3'000'000};
  /// A path that missed a class must meet it this long before new flows of the class go
  /// back to it (against flapping).
  std::chrono::microseconds hysteresis{10'000'000};
};

/// `[monitor]`: how paths are measured, and where what was measured is kept.
struct monitor_config {
  std::chrono::microseconds interval{200'000};  ///< each path's quality is read this often
  /// Probes while a path is idle: twice a second, so that an RTT step shows within 2 s
  /// (a probe, and a second one that confirms it: issue 19).
  std::chrono::microseconds probe_interval{500'000};
  /// Bytes per second probes may cost on a cellular path (a probe is about 200 bytes): one
  /// a second by default, about 0.5 GB a month if cellular is never busy.
  std::uint64_t cellular_probe_budget_Bps = 200;
  /// The path history (SQLite); empty: none (nothing survives a restart).
  std::string history_file = "/var/lib/fleety/history.db";
  std::chrono::microseconds history_retention{7LL * 24 * 3600 * 1'000'000};
};

/// `[dns]`: what fleetyd accepts from the paths' resolvers and HTTP-DNS replies.
struct dns_config {
  /// No answer is kept longer than this, whatever TTL it came with.
  std::chrono::seconds max_ttl{3600};
  /// Loopback, private or link-local addresses for a public name: used (a split-horizon
  /// network on purpose), instead of left out.
  bool allow_internal_answers = false;
};

/// `[budget]`: cellular data.
struct budget_config {
  /// Bytes a month (UTC) fleetyd may spend on cellular paths; beyond it cellular carries
  /// flows only when no other path is up, and no multipath download. 0: no cap.
  std::uint64_t cellular_monthly_bytes = 0;
};

/// A feature rule (`[[feature]]`, paper §4.1): which HTTP requests may use MPHTTP.
struct feature_config {
  std::string name;
  std::vector<std::string> hosts;                            ///< "example.com", "*.example.com"
  std::string path_regex;                                    ///< RE2, searched in the path
  std::vector<std::string> extensions;                       ///< "ts", "m4s" (no dot)
  std::vector<std::pair<std::string, std::string>> headers;  ///< field → regex on its value
  std::optional<std::uint64_t> min_size;
  bool multipath = true;
};

/// An HTTP-DNS endpoint (`[[http_dns]]`, paper §4.1): apps that resolve names over HTTP
/// ask it; fleetyd asks it on every path and records each path's answer.
struct http_dns_config {
  std::string name;
  /// Host patterns ("httpdns.example.com", "*.example.com") or addresses ("203.0.113.1"),
  /// matched against the request's Host and the address the app connected to.
  std::vector<std::string> hosts;
  std::string path = "/";  ///< the endpoint's path; requests for it or below it match
  /// Query parameters that carry the name asked (when the reply doesn't say it).
  std::vector<std::string> name_parameters{"host", "dn", "domain", "name"};
  std::chrono::seconds default_ttl{60};       ///< for answers that give none
  std::uint64_t max_reply_bytes = 64 * 1024;  ///< a longer reply is refused (502)
};

/// `[metrics]`: Prometheus text at http://LISTEN/metrics; `listen = ""` turns it off.
struct metrics_config {
  bool enabled = true;
  std::string listen_address = "127.0.0.1";
  std::uint16_t listen_port = 9464;
};

/// `[access]` (issue 18 item 5): who on this host may use fleetyd. Root always may.
struct access_config {
  /// Members of this group (and processes running with it) may use the proxy and DNS
  /// ports, the control socket and `fleety run`; others are refused by the kernel (an
  /// nftables rule on the owner of the local socket). "": root only.
  std::string group = "fleety";
  /// The proxy and DNS ports open to every local user (fleety before issue 18).
  bool everyone = false;
};

/// `[discovery]` (issue 19): how the uplinks and their resolvers are found when the config
/// names no [[path]].
struct discovery_config {
  /// Where the machine's network state is read: /run/systemd (resolved, networkd),
  /// /run/NetworkManager, the DHCP clients' leases under /var/lib. "/" on the machine
  /// itself; "/host" in a container that mounts the host's there.
  std::string root = "/";
};

struct config {
  proxy_config proxy;
  access_config access;
  discovery_config discovery;
  std::vector<path_config> paths;  ///< in preference order: cost, then file order
  scheduler_config scheduler;
  intercept_config intercept;
  std::vector<app_config> apps;
  std::vector<feature_config> features;
  std::vector<http_dns_config> http_dns;
  std::vector<qos_class_config> classes = builtin_qos_classes();
  selector_config selector;
  monitor_config monitor;
  budget_config budget;
  mptcp_config mptcp;
  metrics_config metrics;
  dns_config dns;
  /// `[classify] multipath_by_default`: an HTTP GET no feature rule matches may split.
  bool multipath_by_default = true;
  /// `[control] socket`: the fleety CLI's unix socket (root and [access] group).
  std::string control_socket = "/run/fleety/control.sock";
  std::string log_level = "info";
};

/// Parses and validates. `source_name` names the file in error messages.
expected<config> parse_config(std::string_view toml_text, std::string_view source_name);

/// Reads the file and parses it; the error names the file.
expected<config> load_config(const std::string& path);

}  // namespace fleety::core
