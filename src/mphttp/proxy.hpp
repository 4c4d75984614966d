#pragma once
// The MPHTTP proxy (paper §4.2): app connections in, each request answered either
// over one path or, for a large GET, by range requests on every path reassembled
// in order. As an explicit proxy on loopback (absolute-form requests, CONNECT), and for
// the connections the intercept listener takes over (origin-form, original destination).

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "classify/classify.hpp"
#include "core/config.hpp"
#include "dns/info_db.hpp"
#include "dns/path_resolver.hpp"
#include "mphttp/path_estimator.hpp"
#include "mphttp/path_refusals.hpp"
#include "net/bound_socket.hpp"
#include "path/monitor.hpp"

namespace fleety::net {
class task_group;
}

namespace fleety::mphttp {

/// A path as the proxy uses it. Owned by the daemon; outlives every session.
struct path_runtime {
  core::path_config config;
  std::unique_ptr<dns::path_resolver> resolver;  ///< queries leave through config.interface
  path_estimator estimator;
  std::uint64_t bytes_received = 0;  ///< response bytes this path carried (all sessions)
  std::uint64_t requests = 0;        ///< upstream requests sent on this path
  /// Measures the path from its sockets (issue 6): every upstream connection on the path
  /// is watched while it is open. May be null.
  path::monitor* monitor = nullptr;
  std::size_t index = 0;  ///< the path's index in the monitor

  /// Whether the path is up: the monitor's word when there is one (link, carrier and an
  /// address, from rtnetlink), else whether its interface exists (fleety get).
  bool is_up() const;
};

class fetch_state;

/// A multipath download under way, as `fleety status` shows it.
struct download_snapshot {
  std::uint64_t session = 0;
  std::string app;  ///< the intercepted app; empty for the explicit proxy's
  std::string url;
  std::uint64_t size = 0;       ///< bytes the app gets (its range, or the whole object)
  std::uint64_t delivered = 0;  ///< of those, written to the app so far
  double seconds = 0;
  struct path_share {
    std::string name;
    std::uint64_t bytes = 0;  ///< of the object, this path's
    double rate_bps = 0;      ///< now (over the last second of its ranges)
    bool failed = false;
  };
  std::vector<path_share> paths;
};

/// What the daemon's history remembers of a path (zero: nothing).
struct known_path_estimate {
  std::chrono::microseconds rtt{0};
  std::uint64_t rate_bps = 0;
};

/// A path as the config names it: its resolver (queries through its interface), and
/// its estimator primed with the config's rate and RTT, else what the history knows,
/// else the scheduler's defaults. Throws std::runtime_error when the resolver cannot be
/// set up (a server that doesn't parse).
path_runtime make_path_runtime(const boost::asio::any_io_executor& executor,
                               const core::path_config& path, const core::config& config,
                               known_path_estimate known = {});

/// `runtime` is `path` from now on (an uplink took its slot, or left it): its resolver
/// queries through the new interface, its estimator starts again from `known` (as
/// make_path_runtime's). Throws like make_path_runtime, leaving `runtime` as it was.
void assign_path_runtime(path_runtime& runtime, const core::path_config& path,
                         const core::config& config, known_path_estimate known = {});

/// `[dns]`: what fleetyd accepts from resolvers and HTTP-DNS replies.
inline dns::answer_rules answer_rules_of(const core::config& config) {
  return {config.dns.max_ttl, config.dns.allow_internal_answers};
}

/// What every session shares; referenced by sessions, outlives them.
namespace detail {
class connection_pool;
}

struct proxy_context {
  const core::config& config;
  std::vector<path_runtime>& paths;  ///< preference order (cheapest first)
  std::uint64_t sessions_started = 0;
  std::uint64_t sessions_active = 0;
  /// Hosts that served two versions of one object (a stale cache on one path, paper
  /// §4.3): their downloads stay on one path until then. Bounded: expired entries go
  /// first, then the soonest to expire.
  std::map<std::string, std::chrono::steady_clock::time_point> single_path_until{};
  static constexpr std::size_t max_cooling_hosts = 4096;
  std::uint64_t version_conflicts = 0;  ///< multipath downloads that saw two versions
  /// Hosts by their last download (bounded like the cooling hosts): their next large GET
  /// is predicted to be one too, of about the same size, so other paths get ready — and
  /// may ask for their part — before its answer.
  struct recent_download {
    std::chrono::steady_clock::time_point when;
    std::uint64_t size = 0;
  };
  std::map<std::string, recent_download> recent_downloads{};
  /// How long after a download its host's GETs are predicted to be downloads.
  static constexpr std::chrono::hours download_prediction_lifetime{1};
  /// Paths a host's node refused (403, 429, 5xx, no ranges): not split onto for a while.
  path_refusals refusals{};
  /// Each path's warm keep-alive connections to each host's node, and the per-host
  /// connection counts (connection_pool.hpp); made by the first session if null.
  std::shared_ptr<detail::connection_pool> pool{};
  std::uint64_t fetches_active = 0;  ///< multipath downloads under way
  /// The multipath downloads under way: each registered by the session serving it, for
  /// as long as its fetch lives (in that session's frame).
  struct active_download {
    std::uint64_t session;
    std::string app;
    std::string url;
    const fetch_state* fetch;
    std::vector<std::string> paths;  ///< the fetch's paths' names, in its order
    std::chrono::steady_clock::time_point started;
  };
  std::list<active_download> downloads{};
  /// Which requests may split (config [[feature]]); replaced on reload.
  classify::feature_rules features{};
  /// Tasks that may outlive the session that started them (the HTTP-DNS queries of the
  /// other paths, whose late replies are still recorded): the daemon's task group, joined
  /// before this context goes. Null: each session owns them (and cancels them as it ends).
  net::task_group* background = nullptr;
  /// What each path's resolver answered (the DNS duplicator fills it); may be null.
  dns::info_db* dns_info = nullptr;
  /// Over the cellular budget ([budget]): downloads don't split onto cellular paths, and
  /// take one only when no other path is up.
  bool cellular_capped = false;
  /// Telemetry (paper §6.1), may be empty: a download went from one path (its first
  /// path's rate, bits/s) to several (the whole download's rate).
  std::function<void(const std::string& host, double single_bps, double multi_bps)> on_transition{};
  /// The first response header came this long after the request went out on `path`.
  std::function<void(const path_runtime& path, const std::string& host,
                     std::chrono::microseconds ttfb)>
      on_ttfb{};
  /// `host` served a download of `size` bytes (what recent_downloads keeps): written to the
  /// history, so that a restarted fleetyd still predicts the host's next GET (issue 17).
  /// May be empty.
  std::function<void(const std::string& host, std::uint64_t size)> on_download{};
  /// `bytes` of a response to app `app` (named by the intercept listener; empty for the
  /// explicit proxy's apps) came over `path`: per-app usage, e.g. of cellular.
  std::function<void(const std::string& app, const path_runtime& path, std::uint64_t bytes)>
      on_app_bytes{};
};

/// What the history knew at start: `host`'s last download had `size` bytes, `age` ago.
/// Its next GET is predicted as if this fleetyd had seen it (older than the prediction's
/// hour: ignored).
void remember_download(proxy_context& context, const std::string& host, std::uint64_t size,
                       std::chrono::steady_clock::duration age);

/// The warm connections (the pool of idle keep-alive connections), as `fleety status`
/// shows them.
struct warm_connections {
  std::size_t idle = 0;          ///< kept idle now
  std::uint64_t reused = 0;      ///< requests that went on a warm connection
  std::uint64_t parked = 0;      ///< connections kept warm after a response
  std::uint64_t over_limit = 0;  ///< connections not opened: the host's limit on the path
};
warm_connections warm_connections_of(const proxy_context& context);

/// The multipath downloads under way now, with each path's part.
std::vector<download_snapshot> active_downloads(const proxy_context& context);

/// Accepts connections on `acceptor` until it is closed or the loop is cancelled, each
/// served by `serve(socket, session id)` in its own coroutine, at most
/// config.proxy.max_connections at once (more wait in the kernel's backlog); counted in
/// sessions_started/active. The loop owns its sessions: when it ends it cancels them and
/// returns once they have all ended. `what` names the listener in logs.
boost::asio::awaitable<void> run_accept_loop(
    boost::asio::ip::tcp::acceptor acceptor, proxy_context& context, std::string what,
    std::function<boost::asio::awaitable<void>(boost::asio::ip::tcp::socket, std::uint64_t)> serve);

/// Accepts app connections on `acceptor` until it is closed and serves each in its own
/// coroutine (run_accept_loop).
boost::asio::awaitable<void> run_proxy_listener(boost::asio::ip::tcp::acceptor acceptor,
                                                proxy_context& context);

/// Serves one intercepted connection whose first bytes are an HTTP/1.x request: its
/// requests (origin-form, with Host) go to `destination` on the first path and to each
/// other path's own address for the host. Returns when the connection ends. (The
/// caller counts it in sessions_started/active.)
boost::asio::awaitable<void> run_intercepted_http_session(
    boost::asio::ip::tcp::socket socket, boost::asio::ip::tcp::endpoint destination,
    proxy_context& context, std::uint64_t session_id, std::string app = {},
    std::optional<net::socket_user> user = std::nullopt);

}  // namespace fleety::mphttp
