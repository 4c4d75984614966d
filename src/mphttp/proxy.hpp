#pragma once
// The MPHTTP proxy (paper §4.2): app connections in, each request answered either
// over one path or, for a large GET, by range requests on every path reassembled
// in order. Explicit proxy on loopback for now (absolute-form requests, CONNECT).

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "dns/path_resolver.hpp"
#include "mphttp/path_estimator.hpp"

namespace fleety::mphttp {

/// A path as the proxy uses it. Owned by the daemon; outlives every session.
struct path_runtime {
  core::path_config config;
  std::unique_ptr<dns::path_resolver> resolver;  ///< queries leave through config.interface
  path_estimator estimator;
  std::uint64_t bytes_received = 0;  ///< response bytes this path carried (all sessions)
  std::uint64_t requests = 0;        ///< upstream requests sent on this path
};

/// What every session shares; referenced by sessions, outlives them.
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
  std::uint64_t fetches_active = 0;     ///< multipath downloads under way
};

/// Accepts app connections on `acceptor` until it is closed and serves each in its own
/// coroutine; at most config.proxy.max_connections at once.
boost::asio::awaitable<void> run_proxy_listener(boost::asio::ip::tcp::acceptor acceptor,
                                                proxy_context& context);

}  // namespace fleety::mphttp
