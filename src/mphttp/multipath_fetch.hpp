#pragma once
// The I/O of a multipath fetch (paper §4.2, §4.3): one fetcher per path and one writer,
// each a plain loop that asks the fetch's state (fetch_state.hpp) what to do, does it on
// the path's connection or the sink, and reports what happened. Shared by the proxy
// (bytes to the app's connection) and the download client (bytes to a file). Internal to
// src/mphttp.

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mphttp/fetch_state.hpp"
#include "mphttp/upstream.hpp"

namespace fleety::mphttp::detail {

/// Where a multipath fetch's bytes go, in order: the app's connection (the proxy) or a
/// file (the download client). Returns the bytes it took; an error ends the fetch.
using byte_sink = std::function<awaitable<std::pair<error_code, std::size_t>>(
    const std::vector<asio::const_buffer>&)>;

/// One path of a fetch, as the I/O has it.
struct fetch_route {
  path_runtime* path = nullptr;  ///< not owned; outlives the fetch
  /// The path connects to the app's own destination (its resolver gave the app that
  /// address); every other path to its own server for the host.
  bool to_destination = false;
  /// Its early connection, or null. The connecting task is owned by the session.
  std::shared_ptr<early_connection> early;
};

/// What the first path already has: its connection, with the first response's header
/// read (the head range's 206, or the whole object).
struct initial_stream {
  upstream up;
  std::unique_ptr<http::response_parser<http::buffer_body>> parser;
};

/// What one multipath fetch starts from: the request every range repeats, where it goes,
/// path 0's response under way, and every path's route (in the order of the state's
/// paths). (Each path's If-Range is its own node's validator: the state's.)
struct fetch_start {
  const request_header& request;
  const proxy_target& target;
  initial_stream initial;
  std::vector<fetch_route> routes;
  upstream_connector& connector;
  const core::proxy_config& limits;
  std::string url;  ///< for logs
};

/// What a fetch takes from the config.
inline fetch_limits limits_of(const core::config& config) {
  return {config.scheduler, config.proxy.connect_timeout, config.proxy.io_timeout};
}

/// The first answer is in: from now on the fetch plans, and no early connection asks for
/// anything (one whose request is still being written is dropped: its answer could not
/// be told from the next one's).
void close_early_asks(const std::vector<fetch_route>& routes);

/// The fetch_state's view of the routes (after close_early_asks): each path's estimator,
/// whether its early connection is on its way, and the range it asked for on it before the
/// first answer.
std::vector<fetch_path> fetch_paths_of(const std::vector<fetch_route>& routes);

/// Carries out the fetch actions that concern the session: abandons the early
/// connections the state no longer wants (after a verdict of not split).
void abandon_unwanted_early(fetch_state& state, const std::vector<fetch_route>& routes);

/// Runs a split fetch (state.phase() == fetching) to its end: one fetcher per path in a
/// task group of its own, the bytes in order into `sink`, every overlap compared before
/// the bytes after it go out. True when the sink got every byte of [begin, end). Returns
/// only after every fetcher has ended; a cancellation of the caller stops the fetch.
awaitable<bool> async_run_fetch(fetch_state& state, fetch_start start, const byte_sink& sink);

}  // namespace fleety::mphttp::detail
