#include "mphttp/proxy.hpp"

#include <fmt/ranges.h>
#include <malloc.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http.hpp>
#include <charconv>
#include <chrono>
#include <list>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/units.hpp"
#include "dns/http_dns.hpp"
#include "dns/reply_choice.hpp"
#include "mphttp/connection_pool.hpp"
#include "mphttp/fetch_state.hpp"
#include "mphttp/http_rules.hpp"
#include "mphttp/multipath_fetch.hpp"
#include "mphttp/upstream.hpp"
#include "net/accept.hpp"
#include "net/bound_socket.hpp"
#include "net/socket_owner.hpp"
#include "net/splice.hpp"
#include "net/task_group.hpp"
#include "select/select.hpp"

namespace fleety::mphttp {
namespace {

using namespace detail;

/// The most of a body relayed through user space at once.
constexpr std::size_t relay_chunk_bytes = 64 * 1024;

/// Writes a short error response the app can show (RFC 9110 §15.5/15.6).
awaitable<void> async_write_error(beast::tcp_stream& app, http::status status, std::string text,
                                  unsigned version, const core::proxy_config& limits) {
  http::response<http::string_body> response{status, version};
  response.set(http::field::content_type, "text/plain; charset=utf-8");
  response.set(http::field::server, "fleety");
  response.keep_alive(false);
  response.body() = "fleety: " + std::move(text) + "\n";
  response.prepare_payload();
  app.expires_after(as_duration(limits.io_timeout));
  co_await http::async_write(app, response, nothrow);
}

/// Whether the app wants its connection kept open (RFC 9112 §9.3).
bool wants_keep_alive(const request_header& request) {
  http::request<http::empty_body> message;
  message.base() = request;
  return message.keep_alive();
}

/// The header the app receives for an upstream response: end-to-end fields only.
http::response<http::buffer_body> app_response_header(const response_header& upstream_header,
                                                      const request_header& app_request) {
  http::response<http::buffer_body> out;
  out.base() = upstream_header;
  const bool chunked =
      upstream_header.find(http::field::transfer_encoding) != upstream_header.end();
  const bool has_length =
      upstream_header.find(http::field::content_length) != upstream_header.end();
  strip_hop_by_hop(out.base());
  out.version(app_request.version());
  out.keep_alive(wants_keep_alive(app_request));
  // Unknown length (chunked or ended by close upstream): re-chunk for an HTTP/1.1 app;
  // an HTTP/1.0 app gets a body ended by our close. Responses that never have a body
  // (RFC 9110 §6.4.1: HEAD, 1xx, 204, 304) are left as they are: a chunked terminator
  // after them would be read as the start of the next response.
  const unsigned status = upstream_header.result_int();
  const bool bodyless =
      app_request.method() == http::verb::head || status < 200 || status == 204 || status == 304;
  if (bodyless) {
    // nothing to frame
  } else if ((chunked || !has_length) && app_request.version() >= 11) {
    out.chunked(true);
  } else if (chunked || !has_length) {
    out.keep_alive(false);
  }
  out.set(http::field::via, fmt::format("{}.{} fleety", upstream_header.version() / 10,
                                        upstream_header.version() % 10));
  return out;
}

/// Streams a message body from `input` (header already parsed into `parser`) to `output`
/// whose header is `out` (Beast's relay pattern). Bounded: one chunk in flight. Bytes go
/// on as they arrive (read_some: an event stream's tick is not held back for a full
/// chunk); each read may wait `read_timeout` (a stream's quiet stretch), each write the
/// I/O timeout.
template <bool is_request, class InputStream, class OutputStream>
awaitable<error_code> async_relay_body(InputStream& input, beast::flat_buffer& input_buffer,
                                       http::parser<is_request, http::buffer_body>& parser,
                                       OutputStream& output,
                                       http::message<is_request, http::buffer_body>& out,
                                       const core::proxy_config& limits,
                                       std::uint64_t* relayed_bytes,
                                       clock_type::duration read_timeout) {
  // Allocated (not zeroed) only for a message that has a body to read.
  std::unique_ptr<char[]> chunk;
  http::serializer<is_request, http::buffer_body> serializer{out};
  output.expires_after(as_duration(limits.io_timeout));
  if (auto [ec, n] = co_await http::async_write_header(output, serializer, nothrow); ec)
    co_return ec;
  do {
    if (!parser.is_done()) {
      if (!chunk) chunk = std::make_unique_for_overwrite<char[]>(relay_chunk_bytes);
      parser.get().body().data = chunk.get();
      parser.get().body().size = relay_chunk_bytes;
      input.expires_after(read_timeout);
      auto [ec, n] = co_await http::async_read_some(input, input_buffer, parser, nothrow);
      if (ec == http::error::need_buffer) ec = {};
      if (ec) co_return ec;
      out.body().size = relay_chunk_bytes - parser.get().body().size;
      out.body().data = chunk.get();
      out.body().more = !parser.is_done();
      if (relayed_bytes != nullptr) *relayed_bytes += out.body().size;
      // Only framing came (a chunk's header): nothing to write. (An empty piece with more
      // to come would go out as a chunk of size 0: the end of the body.)
      if (out.body().size == 0 && out.body().more) continue;
    } else {
      out.body().data = nullptr;
      out.body().size = 0;
      out.body().more = false;
    }
    output.expires_after(as_duration(limits.io_timeout));
    auto [ec, n] = co_await http::async_write(output, serializer, nothrow);
    if (ec == http::error::need_buffer) ec = {};
    if (ec) co_return ec;
  } while (!parser.is_done() || !serializer.is_done());
  co_return error_code{};
}

/// Relays a response of known length as it is: the header, then the body bytes already
/// read with it, then the rest straight from socket to socket (splice(2), no copy
/// through user space). Exactly `length` bytes: the upstream connection stays usable.
awaitable<error_code> async_relay_sized_body(upstream& input, std::uint64_t length,
                                             beast::tcp_stream& output,
                                             const http::response<http::buffer_body>& out,
                                             const core::proxy_config& limits,
                                             std::uint64_t& relayed) {
  // Header and the body bytes at hand in one write: a small response is one segment.
  std::ostringstream header;
  header << out.base();
  const std::string header_bytes = std::move(header).str();
  const auto buffered = std::min<std::uint64_t>(input.buffer.size(), length);
  const std::array<asio::const_buffer, 2> first_write{
      asio::buffer(header_bytes),
      asio::buffer(input.buffer.data(), static_cast<std::size_t>(buffered))};
  output.expires_after(as_duration(limits.io_timeout));
  if (auto [ec, n] = co_await asio::async_write(output, first_write, nothrow); ec) co_return ec;
  input.buffer.consume(static_cast<std::size_t>(buffered));
  relayed += buffered;
  if (buffered == length) co_return error_code{};
  output.expires_never();
  input.stream.expires_never();
  auto result = co_await net::async_splice(input.stream.socket(), output.socket(),
                                           length - buffered, as_duration(limits.io_timeout));
  relayed += result.moved;
  co_return result.ec;
}

/// Whether `host` is still single-path after serving two versions (paper §4.3).
bool host_is_cooling(proxy_context& proxy, const std::string& host) {
  auto it = proxy.single_path_until.find(host);
  if (it == proxy.single_path_until.end()) return false;
  if (it->second > clock_type::now()) return true;
  proxy.single_path_until.erase(it);
  return false;
}

void start_cooldown(proxy_context& proxy, const std::string& host, clock_type::time_point until) {
  auto& hosts = proxy.single_path_until;
  if (hosts.size() >= proxy_context::max_cooling_hosts && !hosts.contains(host)) {
    const auto now = clock_type::now();
    std::erase_if(hosts, [now](const auto& entry) { return entry.second <= now; });
    if (hosts.size() >= proxy_context::max_cooling_hosts) {
      hosts.erase(std::min_element(hosts.begin(), hosts.end(), [](const auto& a, const auto& b) {
        return a.second < b.second;
      }));
    }
  }
  hosts[host] = until;
}

/// Whether `host` served a download within the last hour — an object of at least
/// predicted_download_bytes, split or not: a prediction that its next GET is one too
/// (a player's next segment, an app's next package).
/// (Its size then, if so.)
std::optional<std::uint64_t> downloaded_lately(const proxy_context& proxy, const std::string& host,
                                               clock_type::time_point now) {
  const auto it = proxy.recent_downloads.find(host);
  if (it == proxy.recent_downloads.end() ||
      now - it->second.when >= proxy_context::download_prediction_lifetime)
    return std::nullopt;
  return it->second.size;
}

/// `host` served a download of `size` bytes at `when` (before `now` for one the history
/// remembers); at the bound, expired hosts go first, then the least recent.
void note_download(proxy_context& proxy, const std::string& host, std::uint64_t size,
                   clock_type::time_point when, clock_type::time_point now) {
  auto& hosts = proxy.recent_downloads;
  if (hosts.size() >= proxy_context::max_cooling_hosts && !hosts.contains(host)) {
    std::erase_if(hosts, [now](const auto& e) {
      return now - e.second.when >= proxy_context::download_prediction_lifetime;
    });
    if (hosts.size() >= proxy_context::max_cooling_hosts) {
      hosts.erase(std::min_element(hosts.begin(), hosts.end(), [](const auto& a, const auto& b) {
        return a.second.when < b.second.when;
      }));
    }
  }
  hosts[host] = {when, size};
}

/// The window of a download of `app` now (`self`: its fetch, once registered): its fair
/// share of the memory budget among the downloads under way, within what the others have
/// not committed (fair_window_bytes).
std::uint64_t fair_window_of(const proxy_context& proxy, const std::string& app,
                             const fetch_state* self = nullptr) {
  std::set<std::string_view> apps{app};
  std::size_t of_app = self == nullptr ? 1 : 0;  // (not registered yet: counts itself)
  std::uint64_t others_committed = 0;
  for (const auto& d : proxy.downloads) {
    apps.insert(d.app);
    if (d.app == app) ++of_app;
    if (d.fetch != self) others_committed += d.fetch->committed_bytes();
  }
  const auto& scheduler = proxy.config.scheduler;
  return fair_window_bytes(scheduler.memory_budget_bytes, scheduler.memory_per_session_bytes,
                           apps.size(), of_app, others_committed);
}

/// note_download, and the history's record of it.
void record_download(proxy_context& proxy, const std::string& host, std::uint64_t size) {
  const auto now = clock_type::now();
  note_download(proxy, host, size, now, now);
  if (proxy.on_download) proxy.on_download(host, size);
}

/// Everything a request handler needs from the session.
struct request_context {
  beast::tcp_stream& app;
  proxy_context& proxy;
  const request_header& request;
  const proxy_target& target;
  std::uint64_t session_id;
  const std::string& app_name;  ///< the intercepted app's name; empty if unknown
  /// The session's children (early connections, DNS prefetches, HTTP-DNS queries):
  /// joined before the session ends.
  net::task_group& tasks;
  /// The session's, through the daemon's pool of warm connections; outlives its children.
  upstream_connector& connector;
  /// New connections only (counted in the pool): for a request with a body, which could
  /// not go again if a warm connection turned out closed.
  upstream_connector& new_connector;
  /// The same two for the request's first connection, the app's own: not refused by
  /// connections_per_host (a path at its limit is still where the request goes when the
  /// others are down).
  upstream_connector& apps_own;
  upstream_connector& apps_own_new;

  void count(const path_runtime& path, std::uint64_t bytes) const {
    if (proxy.on_app_bytes && bytes > 0) proxy.on_app_bytes(app_name, path, bytes);
  }
};

/// Paths in preference order, each with its connection attempt for the first request.
std::vector<path_runtime*> usable_paths(proxy_context& proxy) {
  // Over the budget: cellular only when no other path is up.
  const bool skip_cellular =
      proxy.cellular_capped &&
      std::any_of(proxy.paths.begin(), proxy.paths.end(), [](const path_runtime& p) {
        return p.config.kind != core::path_kind::cellular && p.is_up();
      });
  std::vector<path_runtime*> paths;
  for (auto& p : proxy.paths) {
    if (skip_cellular && p.config.kind == core::path_kind::cellular) continue;
    paths.push_back(&p);
  }
  return paths;
}

/// Whether `path` has a warm keep-alive connection to the request's server in the pool
/// (to the app's destination, or to the path's own node for the host).
bool has_warm_connection(const request_context& ctx, const path_runtime& path,
                         bool to_destination) {
  return ctx.proxy.pool && ctx.proxy.pool->has_idle(
                               pool_key_of(path, ctx.target, to_destination, ctx.connector.user()));
}

/// What may become of a request, decided before its answer is known.
struct request_plan {
  classify::feature_decision feature;
  std::uint64_t min_split_bytes = 0;
  /// The first path asks for the head of what the app wants only (http_rules); nullopt:
  /// the app's request goes as it is.
  std::optional<wanted_range> head_basis;
  bool has_body = false;  ///< the app sends a body (it can't be sent twice)
  bool head_request = false;
  bool upgrade = false;  ///< the app asks to switch protocols (WebSocket): relayed, never split
  /// Predicted to be a download (a feature rule for it, this host's downloads lately, or a
  /// URL that names a segment or package): only then do other paths get ready before its
  /// answer is known (issue 16).
  bool predicted_download = false;
  /// The size this host's last download had: what this one likely has (issue 17).
  std::optional<std::uint64_t> expected_bytes;
  /// The first path's head range, when the other paths asked for the rest of the
  /// expected size already (split without waiting); else the default head.
  std::optional<std::uint64_t> head_bytes;
};

request_plan plan_request(const request_context& ctx, const std::vector<path_runtime*>& paths,
                          const http::request_parser<http::buffer_body>& app_parser) {
  const std::size_t usable = paths.size();
  request_plan plan;
  // The feature rules (paper §4.1) may keep the request on one path, or set its own size
  // threshold.
  classify::request_view view{ctx.target.host, ctx.request.target(), {}};
  for (const auto& field : ctx.request)
    view.fields.emplace_back(field.name_string(), field.value());
  plan.feature = classify::decide_feature(ctx.proxy.features, view);
  plan.has_body = !app_parser.is_done();
  plan.head_request = ctx.request.method() == http::verb::head;
  plan.upgrade = wants_upgrade(ctx.request);
  // A link-local server is on one link only: the same address on another path's link is
  // another host (whose bytes the overlap check would then have to throw away).
  const bool link_local_server = ctx.target.destination && ctx.target.destination->is_v6() &&
                                 ctx.target.destination->to_v6().is_link_local();
  // A GET for which we can ask the head range may become a multipath fetch (not with a
  // request body, odd as it is on a GET: asking again couldn't resend it).
  if (usable >= 2 && !plan.has_body && !plan.upgrade && plan.feature.multipath &&
      !link_local_server && !host_is_cooling(ctx.proxy, ctx.target.host))
    plan.head_basis = head_range_basis(ctx.request);
  if (plan.head_basis) {
    plan.expected_bytes = downloaded_lately(ctx.proxy, ctx.target.host, clock_type::now());
    // A feature rule for it, this host's downloads lately, or a URL that names what apps
    // download whole (a segment, a package: the first contact with a host).
    plan.predicted_download =
        plan.expected_bytes.has_value() ||
        (plan.feature.multipath &&
         (!plan.feature.rule.empty() || classify::names_a_download(ctx.request.target())));
  }
  // Split when it pays (issue 17). In aggregate mode a predicted download has the other
  // paths connecting meanwhile (start_early), and a warm connection is open already:
  // their leads are a request's; else a new connection's.
  const auto& scheduler = ctx.proxy.config.scheduler;
  bool others_connected = false;
  if (scheduler.mode == core::scheduler_mode::aggregate) {
    others_connected = plan.predicted_download;
    for (std::size_t i = 1; i < paths.size() && !others_connected; ++i)
      others_connected = has_warm_connection(ctx, *paths[i], /*to_destination=*/false);
  }
  plan.min_split_bytes =
      plan.feature.min_size.value_or(split_threshold_bytes(paths, scheduler, others_connected));
  return plan;
}

/// The other paths' early connections (by path), while the first path waits for its
/// answer.
using early_connections = std::vector<std::pair<path_runtime*, std::shared_ptr<early_connection>>>;

/// Meanwhile the other paths get ready, so their range requests start an RTT or two
/// sooner. In aggregate mode they connect; in cost mode they only resolve the host (one
/// small query each, cached for its TTL): a handshake on cellular for every GET that
/// then stays on Wi-Fi is not data spent "only when needed".
early_connections start_early(const request_context& ctx, const std::vector<path_runtime*>& paths,
                              request_plan& plan) {
  early_connections early;
  if (ctx.request.method() != http::verb::get || !plan.head_basis) return early;
  const bool connect_early = ctx.proxy.config.scheduler.mode == core::scheduler_mode::aggregate;
  auto resolve_on = [&ctx](path_runtime& path) {
    ctx.tasks.spawn(
        [](dns::path_resolver& resolver, std::string host) -> awaitable<void> {
          co_await resolver.async_resolve(std::move(host));
        }(*path.resolver, ctx.target.host),
        fmt::format("[{}] resolve on path {}", ctx.session_id, path.config.name));
  };
  // (asking: the paths whose node did not refuse them lately; nothing goes to the others.)
  std::vector<path_runtime*> asking{paths.front()};
  for (std::size_t i = 1; i < paths.size(); ++i) {
    if (!ctx.proxy.refusals.refused(ctx.target.host, paths[i]->config.name, clock_type::now()))
      asking.push_back(paths[i]);
  }
  if (!plan.predicted_download) {
    // No connection on the other paths for what is not predicted to be a download (most
    // requests are not, and the first answer says; issue 16). In aggregate mode they
    // resolve the host meanwhile (one small query, cached for its TTL), so that a split
    // costs them a handshake only; in cost mode, nothing at all on cellular.
    if (connect_early) {
      for (std::size_t at = 1; at < asking.size(); ++at) resolve_on(*asking[at]);
    }
    return early;
  }
  auto executor = ctx.app.get_executor();
  // Split without waiting (issue 17): a download of about the size of the host's last
  // one is planned now; each other path asks for its part as soon as it is connected,
  // and the first path asks only for its own (the head). A wrong guess costs one range
  // request (a 416 past the end), or leaves a rest the fetch plans as usual.
  std::vector<byte_range> ahead;
  const bool rates_known = std::all_of(asking.begin(), asking.end(), [](const path_runtime* p) {
    return p->estimator.rate_known();
  });
  const std::uint64_t most_asked_ahead =
      std::min(rates_known ? std::numeric_limits<std::uint64_t>::max() : max_asked_ahead_bytes,
               fair_window_of(ctx.proxy, ctx.app_name));
  // Anything is asked for before the first answer only on connections opened now, and not
  // when the app asked for a range itself (the first answer is then its own).
  const bool may_ask_ahead = connect_early && !plan.head_basis->app_range && asking.size() > 1;
  if (may_ask_ahead && plan.expected_bytes && *plan.expected_bytes <= most_asked_ahead) {
    std::vector<path_estimate> estimates;
    for (std::size_t i = 0; i < asking.size(); ++i) {
      const auto& e = asking[i]->estimator;
      // A warm connection answers in a round trip at the rate it had; a new one pays the
      // handshake and slow start.
      const bool warm = has_warm_connection(ctx, *asking[i], /*to_destination=*/i == 0);
      estimates.push_back(
          {e.rate_bytes_per_s(), request_lead_s(e.rate_bytes_per_s(), e.rtt_s(), warm)});
    }
    ahead = plan_ahead(*plan.expected_bytes, estimates, min_asked_range_bytes,
                       min_asked_range_bytes, kept_back_share);
    if (ahead.size() > 1 && std::any_of(ahead.begin() + 1, ahead.end(),
                                        [](const byte_range& r) { return r.size() > 0; })) {
      plan.head_bytes = ahead[0].size();
    } else {
      ahead.clear();
    }
  }
  // A first contact (its size unknown) predicted to be a download: the first other path
  // asks for the object's last bytes as soon as it is connected, so that its first byte
  // comes with the first path's, not a round trip after it (the fetch plans the rest
  // once the size is known). One path only: a suffix is the one range that needs no size.
  const bool ask_suffix = may_ask_ahead && ahead.empty() &&
                          (!plan.expected_bytes || *plan.expected_bytes > most_asked_ahead);
  const std::uint64_t overlap_bytes = ctx.proxy.config.scheduler.overlap_bytes;
  for (std::size_t at = 1; at < asking.size(); ++at) {
    path_runtime& path = *asking[at];
    if (connect_early) {
      auto& slot = early.emplace_back(&path, std::make_shared<early_connection>(executor));
      auto& connection = *slot.second;
      if (!ahead.empty() && ahead[at].size() > 0) {
        const auto& range = ahead[at];
        const auto overlap = std::min<std::uint64_t>(range.begin, overlap_bytes);
        connection.ask = early_connection::range_ask{
            range_request(ctx.request, ctx.target, "", range, overlap), {range}};
        spdlog::debug("[{}] path {} asks for [{}, {}) of the {} the host's last download had",
                      ctx.session_id, path.config.name, range.begin, range.end,
                      core::format_size(*plan.expected_bytes));
      } else if (ask_suffix && at == 1) {
        connection.ask = early_connection::range_ask{
            suffix_range_request(ctx.request, ctx.target, suffix_ask_bytes, overlap_bytes),
            {{}, suffix_ask_bytes}};
        spdlog::debug("[{}] path {} asks for the last {} of what looks like a download",
                      ctx.session_id, path.config.name, core::format_size(suffix_ask_bytes));
      }
      if (connection.ask) {
        // Not taken (a smaller object, not split): its answer is read, the connection
        // stays warm. In the daemon's group, straight into the pool: the app may be gone
        // (and its session with it) before a suffix's answer is in. (Else the session's
        // group, which outlives every early connection of the session.)
        connection.release_after_answer =
            [weak = std::weak_ptr(slot.second),
             &tasks = ctx.proxy.background ? *ctx.proxy.background : ctx.tasks,
             pool = ctx.proxy.background ? ctx.proxy.pool : nullptr, &path, target = ctx.target,
             user = ctx.connector.user(), session = ctx.session_id,
             timeout = as_duration(ctx.proxy.config.proxy.io_timeout)]() {
              auto unused = weak.lock();
              if (!unused) return;
              if (pool) {
                unused->release_unused = [pool, &path, target, user](upstream& up) {
                  release_to_pool(*pool, up, path, target, /*to_destination=*/false, user);
                };
              }
              tasks.spawn(async_release_after_answer(unused, max_unused_answer_bytes, timeout),
                          fmt::format("[{}] unused answer on path {}", session, path.config.name));
            };
      }
      ctx.tasks.spawn(
          async_connect_early(slot.second, path, ctx.target, ctx.connector,
                              /*to_destination=*/false),
          fmt::format("[{}] early connection on path {}", ctx.session_id, path.config.name));
      continue;
    }
    resolve_on(path);
  }
  return early;
}

/// The first path's exchange: its connection, and its response header read.
struct first_exchange {
  explicit first_exchange(const asio::any_io_executor& executor) : up(executor) {}
  upstream up;
  std::unique_ptr<http::response_parser<http::buffer_body>> parser;
  /// What the origin would have answered the app, rebuilt from the 206 to our head range,
  /// which ends at head_end; nullopt: the response is the origin's own answer.
  std::optional<response_header> app_view;
  std::uint64_t head_end = 0;
  bool on_preferred_path = true;       ///< the preferred path took it (to the app's destination)
  clock_type::time_point header_at{};  ///< when its final header was read
};

/// 502, or 504 for a timeout, saying what failed.
awaitable<void> async_write_upstream_error(const request_context& ctx, const error_code& ec,
                                           std::string text) {
  const bool timed_out =
      ec == beast::error::timeout || ec == asio::error::timed_out || ec == dns::errc::timed_out;
  co_await async_write_error(ctx.app,
                             timed_out ? http::status::gateway_timeout : http::status::bad_gateway,
                             std::move(text), ctx.request.version(), ctx.proxy.config.proxy);
}

/// 1. Opens the first path that connects (preference order) — a warm connection to the
///    same server from the pool when there is one (not for a request with a body: if that
///    connection turns out closed, the body is gone) —, sends the request there (with the
///    head range for Range, when the plan says so) and reads the final response header.
///    False when the app was answered with an error instead (then the app connection
///    closes).
awaitable<bool> async_first_exchange(const request_context& ctx, std::vector<path_runtime*>& paths,
                                     request_plan& plan, beast::flat_buffer& app_buffer,
                                     http::request_parser<http::buffer_body>& app_parser,
                                     first_exchange& first) {
  const auto& limits = ctx.proxy.config.proxy;
  const std::string url = fmt::format("http://{}{}", ctx.target.authority, ctx.target.origin_form);
  {
    const auto connected = co_await async_connect_first(
        first.up, paths, ctx.target, plan.has_body ? ctx.apps_own_new : ctx.apps_own);
    for (const auto& [path, failed] : connected.failures) {
      spdlog::warn("[{}] path {}: cannot reach {}:{}: {}", ctx.session_id, path->config.name,
                   ctx.target.host, ctx.target.port, failed.message());
    }
    first.on_preferred_path = connected.index == 0;
    if (!connected.connected) {
      const error_code ec = connected.failures.empty()
                                ? error_code(asio::error::network_unreachable)
                                : connected.failures.back().second;
      co_await async_write_upstream_error(
          ctx, ec, fmt::format("cannot reach {}: {}", ctx.target.authority, ec.message()));
      co_return false;
    }
  }
  path_runtime& first_path = *paths[0];
  const bool reused = first.up.reused;

  // A GET asks for the head of what the app wants only: if that turns out big, the first
  // path's response then ends where its first range does, instead of being reset there
  // with what it has in flight thrown away (up to its whole receive window).
  // Predicted to be a download (issue 17): the head range is small, so that the other
  // paths' ranges (their connections ready or warm) go out one round trip after the
  // first; else min_split_size, so that what is small comes whole in one response.
  const std::uint64_t head_range_bytes =
      plan.head_bytes ? *plan.head_bytes
      : plan.predicted_download && !plan.feature.min_size
          ? min_head_range_bytes
          : std::max<std::uint64_t>(plan.min_split_bytes, min_head_range_bytes);
  http::request<http::buffer_body> request_out;
  request_out.base() = upstream_request(ctx.request, ctx.target).base();
  if (plan.head_basis)
    request_out.set(http::field::range, head_range_field(*plan.head_basis, head_range_bytes));
  if (plan.upgrade) {
    // Hop-by-hop, but the point of this hop: the server must see the app's Upgrade.
    request_out.set(http::field::upgrade, ctx.request[http::field::upgrade]);
    request_out.set(http::field::connection, "Upgrade");
  }
  const bool answered_continue =
      plan.has_body && ctx.request.find(http::field::expect) != ctx.request.end();
  if (answered_continue) {
    // We answer the app's 100-continue ourselves (RFC 9110 §10.1.1) and relay the body.
    request_out.erase(http::field::expect);
    ctx.app.expires_after(as_duration(limits.io_timeout));
    co_await asio::async_write(
        ctx.app, asio::buffer(std::string_view("HTTP/1.1 100 Continue\r\n\r\n")), nothrow);
  }
  if (app_parser.chunked()) request_out.chunked(true);
  ++first_path.requests;
  const auto request_sent = clock_type::now();
  if (auto ec =
          co_await async_relay_body(ctx.app, app_buffer, app_parser, first.up.stream, request_out,
                                    limits, nullptr, as_duration(limits.io_timeout))) {
    spdlog::warn("[{}] sending {} on {} failed: {}", ctx.session_id, url, first_path.config.name,
                 ec.message());
    co_await async_write_error(ctx.app, http::status::bad_gateway,
                               "upstream write failed: " + ec.message(), ctx.request.version(),
                               limits);
    co_return false;
  }

  // Interim responses go on to the app (RFC 9110 §15.2: 103 Early Hints, ...), but a 100
  // we answered already and anything to an HTTP/1.0 app.
  const interim_handler forward_interim =
      [&ctx, &limits, answered_continue](const response_header& interim) -> awaitable<void> {
    if (ctx.request.version() < 11 ||
        (answered_continue && interim.result() == http::status::continue_))
      co_return;
    http::response<http::empty_body> out;
    out.base() = interim;
    strip_hop_by_hop(out.base());
    out.version(11);
    http::response_serializer<http::empty_body> serializer{out};
    ctx.app.expires_after(as_duration(limits.io_timeout));
    co_await http::async_write_header(ctx.app, serializer, nothrow);
  };
  // The answer may take long (a long poll): as long as the server keeps the connection,
  // up to stream_idle_timeout, as a direct connection would wait.
  const auto header_timeout = as_duration(limits.stream_idle_timeout);
  first.parser = make_response_parser(plan.head_request);
  auto ec = co_await async_read_final_header(first.up, first.parser, plan.head_request,
                                             header_timeout, forward_interim);
  if (ec && reused && !first.parser->got_some()) {
    // The server closed the warm connection while it was idle (RFC 9112 §9.3.1): the
    // request, which has no body, goes again on a new connection.
    spdlog::debug("[{}] warm connection to {} was closed ({}): new connection", ctx.session_id,
                  ctx.target.authority, ec.message());
    first.up.reset();
    ec = co_await ctx.new_connector.async_connect(first.up, first_path, ctx.target,
                                                  first.on_preferred_path);
    if (!ec)
      ec = co_await async_relay_body(ctx.app, app_buffer, app_parser, first.up.stream, request_out,
                                     limits, nullptr, as_duration(limits.io_timeout));
    first.parser = make_response_parser(plan.head_request);
    if (!ec)
      ec = co_await async_read_final_header(first.up, first.parser, plan.head_request,
                                            header_timeout, forward_interim);
  }
  if (!ec && plan.head_basis) {
    const auto& header = first.parser->get();
    const auto status = header.result();
    if (status == http::status::partial_content) {
      first.app_view = app_view_of_head_range(header, *plan.head_basis);
      if (first.app_view)
        first.head_end = parse_content_range(header[http::field::content_range])->last + 1;
    }
    // A 416 to the app's own range is the app's answer too; to ours, an empty object.
    // Any other 206 than the one part we asked for is a server we don't understand.
    if (!first.app_view &&
        (status == http::status::partial_content ||
         (status == http::status::range_not_satisfiable && !plan.head_basis->app_range))) {
      spdlog::info("[{}] {} answered our head range with {} '{}': asking again without it",
                   ctx.session_id, url, header.result_int(),
                   std::string(header[http::field::content_range]));
      first.up.reset();
      if (plan.head_basis->app_range) {
        request_out.set(http::field::range, ctx.request[http::field::range]);
      } else {
        request_out.erase(http::field::range);
      }
      plan.head_basis.reset();
      ec = co_await ctx.connector.async_connect(first.up, first_path, ctx.target,
                                                first.on_preferred_path);
      if (!ec) {
        http::request<http::empty_body> again;
        again.base() = request_out.base();
        first.up.stream.expires_after(as_duration(limits.io_timeout));
        auto [write_ec, n] = co_await http::async_write(first.up.stream, again, nothrow);
        ec = write_ec;
      }
      first.parser = make_response_parser(plan.head_request);
      if (!ec)
        ec = co_await async_read_final_header(first.up, first.parser, plan.head_request,
                                              header_timeout, forward_interim);
    }
  }
  if (ec) {
    spdlog::warn("[{}] {} on {}: no response: {}", ctx.session_id, url, first_path.config.name,
                 ec.message());
    co_await async_write_upstream_error(
        ctx, ec, "no response from " + ctx.target.authority + ": " + ec.message());
    co_return false;
  }
  if (auto metrics = net::read_tcp_metrics(first.up.stream.socket()))
    first_path.estimator.on_rtt(metrics->smoothed_rtt);
  first.header_at = clock_type::now();
  if (ctx.proxy.on_ttfb) {
    ctx.proxy.on_ttfb(
        first_path, ctx.target.host,
        std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - request_sent));
  }
  co_return true;
}

/// 3a. One path: the response as it comes; its connection kept for the app's next
///     request when it can carry one.
awaitable<bool> async_relay_one_path(const request_context& ctx, path_runtime& first_path,
                                     first_exchange& first, const response_header& response,
                                     const request_plan& plan, split_verdict verdict,
                                     clock_type::time_point started) {
  const auto& limits = ctx.proxy.config.proxy;
  const std::string url = fmt::format("http://{}{}", ctx.target.authority, ctx.target.origin_form);
  auto& parser = *first.parser;
  auto out = app_response_header(response, ctx.request);
  std::uint64_t relayed = 0;
  error_code ec;
  if (plan.head_request) {
    http::response<http::empty_body> head_out;
    head_out.base() = out.base();
    ctx.app.expires_after(as_duration(limits.io_timeout));
    http::response_serializer<http::empty_body> serializer{head_out};
    auto [head_ec, n] = co_await http::async_write_header(ctx.app, serializer, nothrow);
    ec = head_ec;
  } else if (auto length = parser.content_length(); length && !parser.chunked()) {
    ec = co_await async_relay_sized_body(first.up, *length, ctx.app, out, limits, relayed);
  } else {
    // Unknown length (chunked, until close): a stream, maybe of events; quiet stretches
    // are the server's to choose, up to stream_idle_timeout.
    ec = co_await async_relay_body(first.up.stream, first.up.buffer, parser, ctx.app, out, limits,
                                   &relayed, as_duration(limits.stream_idle_timeout));
  }
  first_path.bytes_received += relayed;
  ctx.count(first_path, relayed);
  const double seconds = std::chrono::duration<double>(clock_type::now() - started).count();
  if (!ec && verdict == split_verdict::too_small && relayed >= min_rate_sample_bytes) {
    // What the path did, for the next split's plan (a host's first object comes on one
    // path; its next ones may be split by what this one showed). Only an object that
    // could have been split: a stream's rate is its server's or its app's, not the path's.
    const double body_s =
        std::chrono::duration<double>(clock_type::now() - first.header_at).count();
    if (body_s >= std::max(0.05, first_path.estimator.rtt_s()))
      first_path.estimator.on_rate(static_cast<double>(relayed) / body_s);
  }
  if (!ec && verdict == split_verdict::too_small && relayed >= predicted_download_bytes)
    record_download(ctx.proxy, ctx.target.host, relayed);
  spdlog::info("[{}] {} {} → {} one path ({}): {} on {} in {:.2f} s", ctx.session_id,
               std::string(http::to_string(ctx.request.method())), url, response.result_int(),
               to_string(verdict), core::format_size(relayed), first_path.config.name, seconds);
  if (ec) {
    spdlog::warn("[{}] relay of {} failed: {}", ctx.session_id, url, ec.message());
    net::close_with_reset(ctx.app.socket());
    co_return false;
  }
  // (The whole response was relayed: an error returned above. Bytes past it would be a
  // broken server's, and poison the next response.)
  // Warm for the next request to the same server on this path, this app's or another's.
  // (The whole response was relayed — an error returned above —, by the parser or by
  // splice(2) past it: the parser need not have seen its end.)
  if (parser.keep_alive() && first.up.buffer.size() == 0) {
    ctx.connector.release(first.up, first_path, ctx.target, first.on_preferred_path);
  } else {
    first.up.reset();
  }
  co_return out.keep_alive();
}

/// 3b. Multipath: the app gets the first response's header now, the body from all paths.
awaitable<bool> async_fetch_multipath(const request_context& ctx, fetch_state& state,
                                      std::vector<fetch_route> routes, first_exchange& first,
                                      const response_header& response,
                                      clock_type::time_point started) {
  const auto& limits = ctx.proxy.config.proxy;
  const std::string url = fmt::format("http://{}{}", ctx.target.authority, ctx.target.origin_form);
  const std::uint64_t length = state.end() - state.begin();
  auto out = app_response_header(response, ctx.request);
  out.content_length(length);
  {
    http::response<http::empty_body> header_only;
    header_only.base() = out.base();
    http::response_serializer<http::empty_body> serializer{header_only};
    ctx.app.expires_after(as_duration(limits.io_timeout));
    auto [header_ec, n] = co_await http::async_write_header(ctx.app, serializer, nothrow);
    if (header_ec) co_return false;
  }
  error_code app_write_error;  // why the app could not be given the bytes, if it could not
  auto to_app = [&ctx, &limits, &app_write_error](const std::vector<asio::const_buffer>& pieces)
      -> awaitable<std::pair<error_code, std::size_t>> {
    // An app may stop reading for a while (a paused player; curl --limit-rate sleeps after
    // a burst): a direct connection would wait for it, so we do as long as a stream may
    // stay quiet. Meanwhile the window is full and nothing more is asked of the servers.
    ctx.app.expires_after(as_duration(limits.stream_idle_timeout));
    auto [write_ec, n] = co_await asio::async_write(ctx.app, pieces, nothrow);
    if (write_ec) app_write_error = write_ec;
    co_return std::pair{write_ec, n};
  };
  ++ctx.proxy.fetches_active;
  // Shown by `fleety status` while it lasts (the fetch lives in this session's frame).
  std::vector<path_runtime*> fetch_paths;
  std::vector<std::string> names;
  for (const auto& r : routes) {
    fetch_paths.push_back(r.path);
    names.push_back(r.path->config.name);
  }
  auto shown = ctx.proxy.downloads.insert(
      ctx.proxy.downloads.end(),
      {ctx.session_id, ctx.app_name, url, &state, std::move(names), clock_type::now()});
  struct unregister_download {
    std::list<proxy_context::active_download>& list;
    std::list<proxy_context::active_download>::iterator entry;
    ~unregister_download() { list.erase(entry); }
  } remove_when_done{ctx.proxy.downloads, shown};
  // One budget for all downloads (issue 18): the window shrinks as others start.
  state.set_window_source([&proxy = ctx.proxy, &app = ctx.app_name, self = &state] {
    return fair_window_of(proxy, app, self);
  });
  // A named variable, not a temporary in the co_await: GCC 12 destroys such temporaries
  // twice (GCC PR 100611).
  fetch_start start{ctx.request,
                    ctx.target,
                    initial_stream{std::move(first.up), std::move(first.parser)},
                    std::move(routes),
                    ctx.connector,
                    limits,
                    url};
  const bool delivered = co_await async_run_fetch(state, std::move(start), to_app);
  spdlog::debug("[{}] delivery ended", ctx.session_id);
  if (--ctx.proxy.fetches_active == 0) {
    // The reorder buffers' chunks are free now, but glibc keeps freed memory in its
    // arenas: without this the daemon's RSS stays at its peak (277 MiB after 20
    // concurrent downloads, 8.5 MiB after the trim; bench/memory).
    ::malloc_trim(0);
  }

  const double seconds = std::chrono::duration<double>(clock_type::now() - started).count();
  std::string per_path;
  for (std::size_t i = 0; i < state.path_count(); ++i) {
    const auto& w = state.path(i);
    const auto& path = *fetch_paths[i];
    ctx.count(path, w.bytes);
    if (w.refused != refusal::none) {
      // Not a version conflict: the path is kept off this host for a while.
      const auto now = clock_type::now();
      const auto until = ctx.proxy.refusals.record(ctx.target.host, path.config.name, w.refused,
                                                   w.refused_status, w.retry_after, now);
      spdlog::warn("[{}] {}: path {} refused ({} {}): no ranges on it for this host for {} s",
                   ctx.session_id, ctx.target.host, path.config.name, w.refused_status,
                   to_string(w.refused),
                   std::chrono::duration_cast<std::chrono::seconds>(until - now).count());
    }
    per_path += fmt::format("{}{}: {} bytes (planned {}, {} ranges, {} taken over)",
                            per_path.empty() ? "" : ", ", path.config.name, w.bytes, w.planned,
                            w.ranges, w.stolen);
  }
  if (state.mismatches() > 0) {
    ++ctx.proxy.version_conflicts;
    const auto cooldown = ctx.proxy.config.scheduler.mismatch_cooldown;
    spdlog::warn(
        "[{}] {} served two versions of {}: its downloads stay on one path for {} s "
        "({} such downloads so far)",
        ctx.session_id, ctx.target.host, url, cooldown.count() / 1'000'000,
        ctx.proxy.version_conflicts);
    start_cooldown(ctx.proxy, ctx.target.host, clock_type::now() + as_duration(cooldown));
  }
  if (!delivered) {
    // DESIGN.md: a clean failure, never a truncated body.
    spdlog::warn(
        "[{}] GET {} multipath failed after {} of {} bytes ({}){}: resetting the app connection",
        ctx.session_id, url, state.delivered() - state.begin(), length, per_path,
        app_write_error ? "; writing to the app: " + app_write_error.message() : std::string());
    net::close_with_reset(ctx.app.socket());
    co_return false;
  }
  const double multi_bps = static_cast<double>(length) * 8 / std::max(seconds, 1e-6);
  // What the first path alone carried meanwhile: the single-path throughput the download
  // would have had (the paths don't share a bottleneck).
  const double single_bps = static_cast<double>(state.path(0).bytes) * 8 / std::max(seconds, 1e-6);
  spdlog::info("[{}] GET {} → {} multipath: {} in {:.2f} s = {}; {}", ctx.session_id, url,
               response.result_int(), core::format_size(length), seconds,
               core::format_rate(multi_bps), per_path);
  if (ctx.proxy.on_transition) ctx.proxy.on_transition(ctx.target.host, single_bps, multi_bps);
  record_download(ctx.proxy, ctx.target.host, length);
  co_return out.keep_alive();
}

/// Writes `bytes` to `to` within the I/O timeout.
template <class Stream>
awaitable<error_code> async_write_all(Stream& to, asio::const_buffer bytes,
                                      const core::proxy_config& limits) {
  if (bytes.size() == 0) co_return error_code{};
  to.expires_after(as_duration(limits.io_timeout));
  auto [ec, n] = co_await asio::async_write(to, bytes, nothrow);
  co_return ec;
}

/// 101 Switching Protocols (RFC 9110 §15.2.2): the server's answer goes to the app, then
/// the connection is a byte tunnel both ways (WebSocket), relayed like a flow the selector
/// places until either side ends or it is quiet for stream_idle_timeout. Never split. The
/// app connection ends with it.
awaitable<bool> async_upgrade_tunnel(const request_context& ctx, path_runtime& path,
                                     first_exchange& first, beast::flat_buffer& app_buffer,
                                     clock_type::time_point started) {
  const auto& limits = ctx.proxy.config.proxy;
  const std::string url = fmt::format("http://{}{}", ctx.target.authority, ctx.target.origin_form);
  // The answer as it came: Upgrade and Connection are what it says.
  std::ostringstream text;
  text << first.parser->get().base();
  const std::string header = std::move(text).str();
  if (co_await async_write_all(ctx.app, asio::buffer(header), limits) ||
      co_await async_write_all(ctx.app, first.up.buffer.data(), limits) ||
      co_await async_write_all(first.up.stream, app_buffer.data(), limits)) {
    net::close_with_reset(ctx.app.socket());
    co_return false;
  }
  first.up.buffer.consume(first.up.buffer.size());
  app_buffer.consume(app_buffer.size());
  ctx.app.expires_never();
  first.up.stream.expires_never();
  const auto totals = co_await select::async_relay(ctx.app.socket(), first.up.stream.socket(),
                                                   as_duration(limits.stream_idle_timeout));
  path.bytes_received += totals.server_to_app;
  ctx.count(path, totals.server_to_app);
  spdlog::info("[{}] {} {} → 101 (Upgrade: {}) relayed on {}: {} up, {} down in {:.1f} s{}",
               ctx.session_id, std::string(http::to_string(ctx.request.method())), url,
               std::string(first.parser->get()[http::field::upgrade]), path.config.name,
               totals.app_to_server, totals.server_to_app,
               std::chrono::duration<double>(clock_type::now() - started).count(),
               totals.idle_timeout ? " (idle timeout)" : "");
  first.up.reset();
  co_return false;
}

/// Serves one request: plan, first exchange, verdict, then one path or all of them.
/// Returns true if the app connection can carry another request.
awaitable<bool> async_serve_request(request_context ctx, beast::flat_buffer& app_buffer,
                                    http::request_parser<http::buffer_body>& app_parser) {
  auto executor = co_await asio::this_coro::executor;
  const auto started = clock_type::now();
  auto paths = usable_paths(ctx.proxy);
  auto plan = plan_request(ctx, paths, app_parser);
  auto early = start_early(ctx, paths, plan);
  // Whatever way this request ends, a connection nobody took is closed.
  struct early_guard {
    early_connections& early;
    ~early_guard() {
      for (auto& [path, connection] : early) connection->abandon();
    }
  } close_unused_early{early};

  first_exchange first(executor);
  if (!co_await async_first_exchange(ctx, paths, plan, app_buffer, app_parser, first))
    co_return false;
  if (first.parser->get().result() == http::status::switching_protocols)
    co_return co_await async_upgrade_tunnel(ctx, *paths[0], first, app_buffer, started);
  // The routes in the order the fetch uses: the path that took the request first; it
  // goes to the app's destination only if it is the preferred path (the app's DNS answer
  // was its resolver's); every other path to its own server.
  // (A path whose node refused it lately gets no range: the first path's is the app's own
  // answer.)
  std::vector<fetch_route> routes;
  for (std::size_t i = 0; i < paths.size(); ++i) {
    if (i > 0 &&
        ctx.proxy.refusals.refused(ctx.target.host, paths[i]->config.name, clock_type::now()))
      continue;
    fetch_route route{paths[i], i == 0 && first.on_preferred_path, nullptr};
    if (i > 0) {
      for (auto& [path, connection] : early)
        if (path == paths[i]) route.early = connection;
    }
    routes.push_back(std::move(route));
  }
  close_early_asks(routes);
  fetch_state state(limits_of(ctx.proxy.config), fetch_paths_of(routes), started);

  // A copy: the parser goes to the first path's fetcher, which may end (and free it)
  // before this session logs the download's status.
  const response_header response = first.app_view ? *first.app_view : first.parser->get().base();
  const auto decision = decide_first_answer(
      ctx.request, response,
      first.app_view ? std::optional<std::uint64_t>(first.head_end) : std::nullopt,
      {plan.min_split_bytes, routes.size(), plan.feature.multipath,
       host_is_cooling(ctx.proxy, ctx.target.host)});
  const bool split = decision.verdict == split_verdict::split;
  state.on_first_response(
      {split, decision.total, decision.begin, decision.end,
       first.app_view ? std::optional<std::uint64_t>(first.head_end) : std::nullopt,
       strong_validator(response), representation_digests(first.parser->get().base())},
      clock_type::now());
  if (state.phase() != fetch_phase::fetching) {
    abandon_unwanted_early(state, routes);
    co_return co_await async_relay_one_path(ctx, *paths[0], first, response, plan, decision.verdict,
                                            started);
  }
  co_return co_await async_fetch_multipath(ctx, state, std::move(routes), first, response, started);
}

/// An intercepted app that talks to its own HTTP proxy (CONNECT, absolute-form requests:
/// is_for_an_app_proxy): the connection goes on to that proxy as bytes — its first
/// request as the app sent it, then everything both ways — on the first path that
/// reaches it. Nothing is split: the app's proxy, not the origin, is its server.
awaitable<void> async_relay_to_app_proxy(beast::tcp_stream& app, beast::flat_buffer& app_buffer,
                                         proxy_context& proxy, const request_header& request,
                                         tcp::endpoint destination, std::uint64_t session_id,
                                         const std::string& app_name,
                                         std::optional<net::socket_user> user) {
  auto executor = co_await asio::this_coro::executor;
  const auto& limits = proxy.config.proxy;
  const auto started = clock_type::now();
  const std::string what = fmt::format(
      "{} {} for the app's own proxy {}:{}", std::string(http::to_string(request.method())),
      std::string(request.target()), destination.address().to_string(), destination.port());
  upstream up(executor);
  path_runtime* used = nullptr;
  error_code ec = asio::error::network_unreachable;
  for (auto* path : usable_paths(proxy)) {
    ec = co_await async_connect_endpoint(up, *path, destination, limits, user);
    if (!ec) {
      used = path;
      break;
    }
    if (ec == asio::error::operation_aborted) break;
  }
  if (used == nullptr) {
    // The app sees its proxy unreachable, as it would have without us.
    spdlog::warn("[{}] {}: no path reaches it ({}): resetting the app", session_id, what,
                 ec.message());
    net::close_with_reset(app.socket());
    co_return;
  }
  http::request<http::empty_body> head;
  head.base() = request;
  std::ostringstream text;
  text << head.base();
  const std::string header = std::move(text).str();
  if (co_await async_write_all(up.stream, asio::buffer(header), limits) ||
      co_await async_write_all(up.stream, app_buffer.data(), limits)) {
    net::close_with_reset(app.socket());
    co_return;
  }
  app_buffer.consume(app_buffer.size());
  app.expires_never();
  up.stream.expires_never();
  const auto totals = co_await select::async_relay(app.socket(), up.stream.socket(),
                                                   as_duration(limits.stream_idle_timeout));
  used->bytes_received += totals.server_to_app;
  if (proxy.on_app_bytes && totals.server_to_app > 0)
    proxy.on_app_bytes(app_name, *used, totals.server_to_app);
  spdlog::info("[{}] {}: relayed on {}: {} up, {} down in {:.1f} s", session_id, what,
               used->config.name, totals.app_to_server, totals.server_to_app,
               std::chrono::duration<double>(clock_type::now() - started).count());
}

/// CONNECT host:port: a byte tunnel on the preferred path (RFC 9110 §9.3.6), relayed
/// like any flow the selector places (splice(2), no copy through user space).
awaitable<void> async_tunnel(beast::tcp_stream& app, beast::flat_buffer& app_buffer,
                             proxy_context& proxy, const request_header& request,
                             std::uint64_t session_id, std::optional<net::socket_user> user) {
  auto executor = co_await asio::this_coro::executor;
  const auto& limits = proxy.config.proxy;
  const std::string authority(request.target());
  const auto colon = authority.rfind(':');
  std::string host = colon == std::string::npos ? authority : authority.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  unsigned port = 0;
  if (colon != std::string::npos) {
    const std::string port_text = authority.substr(colon + 1);
    std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  }
  if (host.empty() || port == 0 || port > 65535) {
    co_await async_write_error(app, http::status::bad_request, "CONNECT needs host:port",
                               request.version(), limits);
    co_return;
  }
  if (std::find(limits.connect_ports.begin(), limits.connect_ports.end(), port) ==
      limits.connect_ports.end()) {
    spdlog::warn("[{}] refused CONNECT {}: port {} is not in [proxy] connect_ports", session_id,
                 authority, port);
    co_await async_write_error(app, http::status::forbidden,
                               fmt::format("CONNECT to port {} is not allowed here ([proxy] "
                                           "connect_ports of fleetyd's config)",
                                           port),
                               request.version(), limits);
    co_return;
  }
  upstream up(executor);
  error_code ec = asio::error::host_not_found;
  path_runtime* used = nullptr;
  for (auto& path : proxy.paths) {
    ec = co_await async_connect_on_path(up, path, host, static_cast<std::uint16_t>(port), limits,
                                        user);
    if (!ec) {
      used = &path;
      break;
    }
    if (ec == asio::error::operation_aborted) co_return;
  }
  if (used == nullptr) {
    co_await async_write_error(app, http::status::bad_gateway,
                               "cannot reach " + authority + ": " + ec.message(), request.version(),
                               limits);
    co_return;
  }
  spdlog::info("[{}] CONNECT {} on {}", session_id, authority, used->config.name);
  app.expires_after(as_duration(limits.io_timeout));
  auto [write_ec, n] = co_await asio::async_write(
      app, asio::buffer(std::string_view("HTTP/1.1 200 Connection established\r\n\r\n")), nothrow);
  if (write_ec) co_return;
  // Bytes the app sent after its CONNECT header belong to the tunnel.
  if (app_buffer.size() > 0) {
    up.stream.expires_after(as_duration(limits.io_timeout));
    auto [ec2, n2] = co_await asio::async_write(up.stream, app_buffer.data(), nothrow);
    if (ec2) co_return;
    app_buffer.consume(app_buffer.size());
  }
  app.expires_never();
  up.stream.expires_never();
  const auto totals = co_await select::async_relay(app.socket(), up.stream.socket(),
                                                   as_duration(limits.io_timeout) * 8);
  used->bytes_received += totals.server_to_app;
}

}  // namespace

void remember_download(proxy_context& context, const std::string& host, std::uint64_t size,
                       std::chrono::steady_clock::duration age) {
  if (age < std::chrono::steady_clock::duration::zero()) age = {};  // a clock set back
  if (age >= proxy_context::download_prediction_lifetime) return;
  const auto now = clock_type::now();
  note_download(context, host, size, now - age, now);
}

warm_connections warm_connections_of(const proxy_context& context) {
  if (!context.pool) return {};
  const auto c = context.pool->counts();
  return {c.idle, c.reused, c.parked, c.refused_over_limit};
}

std::vector<download_snapshot> active_downloads(const proxy_context& context) {
  std::vector<download_snapshot> out;
  const auto now = clock_type::now();
  for (const auto& d : context.downloads) {
    const auto& state = *d.fetch;
    download_snapshot s;
    s.session = d.session;
    s.app = d.app;
    s.url = d.url;
    s.size = state.end() - state.begin();
    s.delivered = state.delivered() - state.begin();
    s.seconds = std::chrono::duration<double>(now - d.started).count();
    for (std::size_t i = 0; i < state.path_count(); ++i) {
      const auto& w = state.path(i);
      const bool failed = w.phase == path_phase::failed;
      s.paths.push_back({d.paths[i], w.bytes, failed ? 0.0 : w.live_rate(now) * 8, failed});
    }
    out.push_back(std::move(s));
  }
  return out;
}

namespace {

/// Fills `target.path_servers`: where each path goes for the address the app reached
/// the host at (the intercepted destination, or a literal address as the host).
void learn_path_servers(proxy_target& target, const proxy_context& proxy) {
  if (proxy.dns_info == nullptr) return;
  std::optional<asio::ip::address> reached = target.destination;
  if (!reached) {
    error_code ec;
    const auto literal = asio::ip::make_address(target.host, ec);
    if (ec) return;
    reached = literal;
  }
  const auto now = dns::info_db::clock_type::now();
  for (const auto& path : proxy.paths) {
    if (auto own = proxy.dns_info->counterpart(*reached, path.config.name, now))
      target.path_servers.emplace_back(path.config.name, *own);
  }
}

/// One path's answer to an HTTP-DNS query.
struct http_dns_reply {
  error_code ec;
  http::response<http::string_body> response;
};

/// Sends the query on `path` and reads the whole reply (at most `max_bytes` of body);
/// a 2xx reply's addresses go into the DNS information database and the path's resolver
/// cache, under the names it gives (else the name asked).
awaitable<http_dns_reply> async_http_dns_on_path(path_runtime& path, proxy_context& proxy,
                                                 http::request<http::empty_body> query,
                                                 proxy_target target, bool to_destination,
                                                 std::string asked_name,
                                                 core::http_dns_config endpoint,
                                                 std::uint64_t session_id) {
  const auto& limits = proxy.config.proxy;
  path_connector connector(limits);  // (our own: we may outlive the session)
  upstream up(co_await asio::this_coro::executor);
  http_dns_reply out;
  out.ec = co_await connector.async_connect(up, path, target, to_destination);
  if (!out.ec) {
    ++path.requests;
    up.stream.expires_after(as_duration(limits.io_timeout));
    auto [write_ec, written] = co_await http::async_write(up.stream, query, nothrow);
    out.ec = write_ec;
  }
  if (!out.ec) {
    http::response_parser<http::string_body> parser;
    parser.header_limit(header_limit_bytes);
    parser.body_limit(endpoint.max_reply_bytes);
    up.stream.expires_after(as_duration(limits.io_timeout));
    auto [read_ec, read] = co_await http::async_read(up.stream, up.buffer, parser, nothrow);
    out.ec = read_ec;
    path.bytes_received += read;
    if (!out.ec) out.response = parser.release();
  }
  up.reset();
  if (out.ec) {
    spdlog::info("[{}] http-dns {}: no reply on {}: {}", session_id, endpoint.name,
                 path.config.name, out.ec.message());
    co_return out;
  }
  if (out.response.result_int() / 100 != 2 || proxy.dns_info == nullptr) co_return out;
  const auto now = dns::info_db::clock_type::now();
  for (auto& answer : dns::answers_for_asked(
           dns::parse_http_dns_reply(out.response.body(), asked_name, endpoint.default_ttl),
           asked_name)) {
    auto vetted = dns::vet_answer(answer.name, std::move(answer.addresses), answer.ttl,
                                  answer_rules_of(proxy.config));
    if (vetted.dropped > 0) {
      spdlog::warn(
          "[{}] http-dns {} on {}: {} loopback, private or link-local address(es) for "
          "{}: left out ([dns] allow_internal_answers)",
          session_id, endpoint.name, path.config.name, vetted.dropped, answer.name);
    }
    if (vetted.addresses.empty()) continue;
    answer.addresses = std::move(vetted.addresses);
    answer.ttl = vetted.ttl;
    spdlog::debug("[{}] http-dns: {} on {}: {} (ttl {} s)", session_id, answer.name,
                  path.config.name, answer.addresses.front().to_string(), answer.ttl.count());
    proxy.dns_info->record(answer.name, path.config.name, answer.addresses, answer.ttl, now);
    path.resolver->remember(answer.name, dns::resolution{answer.addresses, answer.ttl});
  }
  co_return out;
}

/// An app's HTTP-DNS query (paper §4.1), asked like its DNS queries: on every path that
/// is up, each to its own server for the endpoint; the app gets the preferred path's
/// reply as it came (or the first other path's when the preferred one fails), and every
/// path's answers are recorded for that path. Returns true if the app connection can
/// carry another request; nullopt when the reply is too long to be an HTTP-DNS answer:
/// then the request is served as any other.
awaitable<std::optional<bool>> async_serve_http_dns(const request_context& ctx,
                                                    const classify::http_dns_request& query) {
  auto executor = co_await asio::this_coro::executor;
  const auto& limits = ctx.proxy.config.proxy;
  const auto started = clock_type::now();
  const std::string url = fmt::format("http://{}{}", ctx.target.authority, ctx.target.origin_form);
  // (A copy: a reload may replace the endpoints while we wait.)
  const core::http_dns_config endpoint = *query.endpoint;
  std::vector<path_runtime*> up;
  for (auto& path : ctx.proxy.paths)
    if (path.is_up()) up.push_back(&path);
  if (up.empty()) {
    co_await async_write_error(ctx.app, http::status::bad_gateway, "no path is up",
                               ctx.request.version(), limits);
    co_return false;
  }
  // Shared with the per-path queries, which may outlive this call and the session (they
  // are the daemon's background tasks): a late reply is still recorded.
  struct gathering {
    gathering(const asio::any_io_executor& executor, std::size_t n) : wake(executor), replies(n) {}
    asio::steady_timer wake;
    std::vector<std::optional<http_dns_reply>> replies;
  };
  auto state = std::make_shared<gathering>(executor, up.size());
  const auto query_out = upstream_request(ctx.request, ctx.target);
  auto& owner = ctx.proxy.background != nullptr ? *ctx.proxy.background : ctx.tasks;
  for (std::size_t k = 0; k < up.size(); ++k) {
    owner.spawn(
        [](std::shared_ptr<gathering> shared, std::size_t index, awaitable<http_dns_reply> reply)
            -> awaitable<void> {
          shared->replies[index] = co_await std::move(reply);
          shared->wake.cancel();
        }(state, k,
            async_http_dns_on_path(*up[k], ctx.proxy, query_out, ctx.target,
                                   /*to_destination=*/k == 0, query.asked_name, endpoint,
                                   ctx.session_id)),
        fmt::format("[{}] http-dns on path {}", ctx.session_id, up[k]->config.name));
  }
  // Each path's connect and read have their own timeouts; this bounds the app's wait.
  const auto deadline = started + as_duration(limits.connect_timeout + 2 * limits.io_timeout);
  // The same rule as the DNS duplicator's (dns::choose_reply): the preferred path's reply,
  // else, once it failed, the first other one that came; at the deadline, what came.
  std::vector<dns::reply_status> statuses(up.size());
  dns::reply_choice choice;
  for (;;) {
    const bool late = clock_type::now() >= deadline;
    for (std::size_t k = 0; k < up.size(); ++k) {
      const auto& reply = state->replies[k];
      statuses[k] = !reply      ? dns::reply_status::pending
                    : reply->ec ? dns::reply_status::failed
                                : dns::reply_status::succeeded;
    }
    const auto& preferred = state->replies[0];
    if (preferred && preferred->ec == http::error::body_limit) {
      // Too long to be an HTTP-DNS answer: the request is served as any other.
      spdlog::info("[{}] http-dns {} {}: reply over {} bytes: relayed as it is, not read",
                   ctx.session_id, endpoint.name, url, endpoint.max_reply_bytes);
      co_return std::nullopt;
    }
    choice = dns::choose_reply(statuses, late);
    if (choice.decision != dns::reply_choice::verdict::wait) break;
    co_await async_wait_for_wake(state->wake, deadline - clock_type::now());
  }
  if (choice.decision == dns::reply_choice::verdict::fail) {
    const auto& preferred = state->replies[0];
    const error_code ec = preferred ? preferred->ec : error_code(beast::error::timeout);
    spdlog::warn("[{}] http-dns {} {}: no path answered ({})", ctx.session_id, endpoint.name, url,
                 ec.message());
    co_await async_write_error(
        ctx.app,
        ec == beast::error::timeout ? http::status::gateway_timeout : http::status::bad_gateway,
        fmt::format("HTTP-DNS {}: {}", ctx.target.authority, ec.message()), ctx.request.version(),
        limits);
    co_return false;
  }
  const std::size_t chosen_index = choice.path;
  const http_dns_reply* chosen = &*state->replies[chosen_index];
  if (chosen_index != 0) {
    spdlog::info("[{}] http-dns {}: answered by {}: {} failed ({})", ctx.session_id, url,
                 up[chosen_index]->config.name, up[0]->config.name,
                 state->replies[0] ? state->replies[0]->ec.message() : "no reply in time");
  }
  // The reply as the origin sent it, with our connection's framing.
  http::response<http::string_body> reply = chosen->response;
  strip_hop_by_hop(reply.base());
  reply.version(ctx.request.version());
  reply.prepare_payload();
  const bool keep_alive = wants_keep_alive(ctx.request);
  reply.keep_alive(keep_alive);
  ctx.app.expires_after(as_duration(limits.io_timeout));
  auto [write_ec, written] = co_await http::async_write(ctx.app, reply, nothrow);
  spdlog::info("[{}] http-dns {} GET {} → {} from {} in {:.0f} ms ({} bytes)", ctx.session_id,
               endpoint.name, url, reply.result_int(), up[chosen_index]->config.name,
               std::chrono::duration<double, std::milli>(clock_type::now() - started).count(),
               reply.body().size());
  co_return !write_ec && keep_alive;
}

/// One app connection: requests in order (keep-alive) until either side is done. An
/// intercepted connection (`intercepted`: where the app connected) sends origin-form
/// requests; an explicit proxy's, absolute-form ones and CONNECT.
awaitable<void> run_app_session(tcp::socket socket, proxy_context& proxy, std::uint64_t session_id,
                                std::optional<tcp::endpoint> intercepted, std::string app_name,
                                std::optional<net::socket_user> user) {
  // We own children (request tasks): our cancellation shows as operation_aborted results,
  // and they are joined before we return.
  co_await asio::this_coro::throw_if_cancelled(false);
  beast::tcp_stream app(std::move(socket));
  beast::flat_buffer app_buffer;
  net::task_group tasks(app.get_executor());
  if (!proxy.pool) proxy.pool = std::make_shared<connection_pool>(pool_limits_of(proxy.config));
  path_connector direct(proxy.config.proxy, nullptr, user);
  pooled_connector connector(direct, *proxy.pool);
  pooled_connector new_connector(direct, *proxy.pool, /*take_idle=*/false);
  pooled_connector apps_own(direct, *proxy.pool, /*take_idle=*/true, /*limited=*/false);
  pooled_connector apps_own_new(direct, *proxy.pool, /*take_idle=*/false, /*limited=*/false);
  // Our writes are whole messages or big body pieces: Nagle would only hold a response's
  // last small segment back until the app's delayed ACK (40 ms per small response).
  error_code nodelay_ec;
  app.socket().set_option(tcp::no_delay(true), nodelay_ec);
  const auto& limits = proxy.config.proxy;
  for (;;) {
    http::request_parser<http::buffer_body> parser;
    parser.header_limit(header_limit_bytes);
    parser.body_limit(boost::none);
    // An idle keep-alive connection is closed after the I/O timeout.
    app.expires_after(as_duration(limits.io_timeout));
    auto [ec, n] = co_await http::async_read_header(app, app_buffer, parser, nothrow);
    if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == beast::error::timeout ||
        ec == asio::error::connection_reset || ec == asio::error::operation_aborted) {
      break;
    }
    if (ec) {
      spdlog::warn("[{}] bad request from app: {}", session_id, ec.message());
      co_await async_write_error(app,
                                 ec == http::error::header_limit
                                     ? http::status::request_header_fields_too_large
                                     : http::status::bad_request,
                                 "malformed request: " + ec.message(), 11, limits);
      break;
    }
    const request_header& request = parser.get().base();
    if (request.find(http::field::transfer_encoding) != request.end() && !parser.chunked()) {
      // RFC 9112 §6.3: a request whose last transfer coding is not chunked has no
      // reliable length: 400 and close, or a server behind us could read it differently.
      spdlog::warn("[{}] bad request from app: Transfer-Encoding '{}' without final chunked",
                   session_id, std::string(request[http::field::transfer_encoding]));
      co_await async_write_error(app, http::status::bad_request,
                                 "Transfer-Encoding must end with chunked", request.version(),
                                 limits);
      break;
    }
    if (request.method() == http::verb::connect && !intercepted) {
      co_await async_tunnel(app, app_buffer, proxy, request, session_id, user);
      break;
    }
    if (intercepted && is_for_an_app_proxy(request)) {
      co_await async_relay_to_app_proxy(app, app_buffer, proxy, request, *intercepted, session_id,
                                        app_name, user);
      break;
    }
    auto target = intercepted
                      ? parse_intercepted_target(request.target(), request[http::field::host],
                                                 intercepted->address(), intercepted->port())
                      : parse_absolute_target(request.target());
    if (!target && intercepted) {
      spdlog::warn("[{}] refused target '{}' of an intercepted connection to {}", session_id,
                   std::string(request.target()), intercepted->address().to_string());
      co_await async_write_error(app, http::status::bad_request,
                                 "request target must be origin-form (/path)", request.version(),
                                 limits);
      break;
    }
    if (!target) {
      spdlog::warn("[{}] refused target '{}': not an http:// absolute URL", session_id,
                   std::string(request.target()));
      co_await async_write_error(app, http::status::bad_request,
                                 "this proxy serves http:// URLs in absolute form (and CONNECT)",
                                 request.version(), limits);
      break;
    }
    learn_path_servers(*target, proxy);
    proxy.pool->expire(clock_type::now());
    const request_context ctx{app,   proxy,     request,       *target,  session_id,  app_name,
                              tasks, connector, new_connector, apps_own, apps_own_new};
    if (!proxy.features.http_dns.empty() && request.method() == http::verb::get &&
        parser.is_done()) {
      classify::request_view view{target->host, request.target(), {}};
      const std::string destination =
          target->destination ? target->destination->to_string() : std::string();
      if (auto query = classify::match_http_dns(proxy.features.http_dns, view, destination)) {
        const auto served = co_await async_serve_http_dns(ctx, *query);
        if (served && !*served) break;
        if (served) continue;
      }
    }
    const bool keep_alive = co_await async_serve_request(ctx, app_buffer, parser);
    if (!keep_alive) break;
    if ((co_await asio::this_coro::cancellation_state).cancelled() != asio::cancellation_type::none)
      break;
  }
  tasks.cancel();
  co_await tasks.async_join();
  error_code ignored;
  app.socket().shutdown(tcp::socket::shutdown_send, ignored);
  app.close();
}

}  // namespace

awaitable<void> run_accept_loop(tcp::acceptor acceptor, proxy_context& context, std::string what,
                                std::function<awaitable<void>(tcp::socket, std::uint64_t)> serve) {
  // We own the sessions: cancelled, we cancel them and wait for them to end.
  co_await asio::this_coro::throw_if_cancelled(false);
  net::task_group sessions(co_await asio::this_coro::executor);
  net::accept_errors errors(what);
  net::log_throttle at_limit;
  while (auto socket = co_await net::async_accept_next(acceptor, errors)) {
    const auto limit = context.config.proxy.max_connections;
    if (context.sessions_active >= limit) {
      // At the limit a new connection is reset at once: the app sees a refusal it can
      // retry, not a connection that hangs in the kernel's backlog.
      if (std::uint64_t held = 0; at_limit.allow(std::chrono::steady_clock::now(), held)) {
        spdlog::warn("{}: {} connections at once (proxy.max_connections): resetting new ones{}",
                     what, limit,
                     held > 0 ? fmt::format(" ({} since the last line)", held + 1) : "");
      }
      net::close_with_reset(*socket);
      continue;
    }
    const std::uint64_t id = ++context.sessions_started;
    ++context.sessions_active;
    sessions.spawn(
        [](awaitable<void> session, proxy_context& counted) -> awaitable<void> {
          // (Also when the session throws: the slot is free then too.)
          struct release {
            proxy_context& context;
            ~release() { --context.sessions_active; }
          } when_done{counted};
          co_await std::move(session);
        }(serve(std::move(*socket), id), context),
        fmt::format("[{}] {} connection", id, what));
  }
  sessions.cancel();
  co_await sessions.async_join();
}

awaitable<void> run_proxy_listener(tcp::acceptor acceptor, proxy_context& context) {
  co_await run_accept_loop(
      std::move(acceptor), context, "proxy", [&context](tcp::socket socket, std::uint64_t id) {
        // The explicit proxy's client is a local process too: its user, as for interception.
        const auto user = net::local_peer_user(socket);
        return run_app_session(std::move(socket), context, id, std::nullopt, std::string(), user);
      });
}

awaitable<void> run_intercepted_http_session(tcp::socket socket, tcp::endpoint destination,
                                             proxy_context& context, std::uint64_t session_id,
                                             std::string app,
                                             std::optional<net::socket_user> user) {
  co_await run_app_session(std::move(socket), context, session_id, destination, std::move(app),
                           user);
}

}  // namespace fleety::mphttp
