#include "mphttp/proxy.hpp"

#include <fmt/ranges.h>
#include <malloc.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <charconv>
#include <chrono>
#include <cmath>
#include <deque>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "core/units.hpp"
#include "dns/http_dns.hpp"
#include "mphttp/claim_map.hpp"
#include "mphttp/http_rules.hpp"
#include "mphttp/multipath_fetch.hpp"
#include "mphttp/reorder_buffer.hpp"
#include "mphttp/scheduler.hpp"
#include "net/bound_socket.hpp"
#include "net/splice.hpp"

namespace fleety::mphttp {
namespace {

using namespace detail;

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
/// whose header is `out` (Beast's relay pattern). Bounded: one chunk in flight.
template <bool is_request, class InputStream, class OutputStream>
awaitable<error_code> async_relay_body(InputStream& input, beast::flat_buffer& input_buffer,
                                       http::parser<is_request, http::buffer_body>& parser,
                                       OutputStream& output,
                                       http::message<is_request, http::buffer_body>& out,
                                       const core::proxy_config& limits,
                                       std::uint64_t* relayed_bytes) {
  // Allocated (not zeroed) only for a message that has a body to read.
  std::unique_ptr<char[]> chunk;
  http::serializer<is_request, http::buffer_body> serializer{out};
  output.expires_after(as_duration(limits.io_timeout));
  if (auto [ec, n] = co_await http::async_write_header(output, serializer, nothrow); ec)
    co_return ec;
  do {
    if (!parser.is_done()) {
      if (!chunk) chunk = std::make_unique_for_overwrite<char[]>(chunk_bytes);
      parser.get().body().data = chunk.get();
      parser.get().body().size = chunk_bytes;
      input.expires_after(as_duration(limits.io_timeout));
      auto [ec, n] = co_await http::async_read(input, input_buffer, parser, nothrow);
      if (ec == http::error::need_buffer) ec = {};
      if (ec) co_return ec;
      out.body().size = chunk_bytes - parser.get().body().size;
      out.body().data = chunk.get();
      out.body().more = !parser.is_done();
      if (relayed_bytes != nullptr) *relayed_bytes += out.body().size;
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

// ---------------------------------------------------------------------------
// Multipath fetch of one object

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

/// Everything a request handler needs from the session.
/// The first path's connection left open by the app connection's previous request, for
/// its next request to the same server on the same path (what the app's own keep-alive
/// would have given it: no new handshake per request).
struct kept_upstream {
  kept_upstream(path_runtime& path_in, const proxy_target& target, upstream&& up_in)
      : path(&path_in),
        host(target.host),
        port(target.port),
        destination(target.destination),
        up(std::move(up_in)) {}
  bool serves(const path_runtime* p, const proxy_target& target) const {
    return p == path && target.host == host && target.port == port &&
           target.destination == destination;
  }
  path_runtime* path;
  std::string host;
  std::uint16_t port;
  std::optional<asio::ip::address> destination;
  upstream up;
};

struct request_context {
  beast::tcp_stream& app;
  proxy_context& proxy;
  const request_header& request;
  const proxy_target& target;
  std::uint64_t session_id;
  std::optional<kept_upstream>& kept;
  const std::string& app_name;  ///< the intercepted app's name; empty if unknown

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
        return p.config.kind != core::path_kind::cellular &&
               net::interface_exists(p.config.interface);
      });
  std::vector<path_runtime*> paths;
  for (auto& p : proxy.paths) {
    if (skip_cellular && p.config.kind == core::path_kind::cellular) continue;
    paths.push_back(&p);
  }
  return paths;
}

/// Serves one request. Returns true if the app connection can carry another request.
awaitable<bool> async_serve_request(request_context ctx, beast::flat_buffer& app_buffer,
                                    http::request_parser<http::buffer_body>& app_parser) {
  auto executor = co_await asio::this_coro::executor;
  const auto& limits = ctx.proxy.config.proxy;
  const auto started = clock_type::now();
  const std::string url = fmt::format("http://{}{}", ctx.target.authority, ctx.target.origin_form);
  auto paths = usable_paths(ctx.proxy);

  // A GET for which we can ask the head range may become a multipath fetch (not with a
  // request body, odd as it is on a GET: asking again couldn't resend it).
  // The feature rules (paper §4.1) may keep the request on one path, or set its own
  // size threshold.
  classify::request_view view{ctx.target.host, ctx.request.target(), {}};
  for (const auto& field : ctx.request)
    view.fields.emplace_back(field.name_string(), field.value());
  const auto feature = classify::decide_feature(ctx.proxy.features, view);
  const std::uint64_t min_split_bytes =
      feature.min_size.value_or(ctx.proxy.config.scheduler.min_split_bytes);
  std::optional<wanted_range> head_basis;
  // A link-local server is on one link only: the same address on another path's link is
  // another host (whose bytes the overlap check would then have to throw away).
  const bool link_local_server = ctx.target.destination && ctx.target.destination->is_v6() &&
                                 ctx.target.destination->to_v6().is_link_local();
  if (paths.size() >= 2 && app_parser.is_done() && feature.multipath && !link_local_server &&
      !host_is_cooling(ctx.proxy, ctx.target.host))
    head_basis = head_range_basis(ctx.request);
  // Meanwhile the other paths get ready, so their range requests start an RTT or two
  // sooner. In aggregate mode they connect; in cost mode they only resolve the host (one
  // small query each, cached for its TTL): a handshake on cellular for every GET that
  // then stays on Wi-Fi is not data spent "only when needed".
  std::vector<std::pair<path_runtime*, std::shared_ptr<early_connection>>> early;
  const bool connect_early = ctx.proxy.config.scheduler.mode == core::scheduler_mode::aggregate;
  if (ctx.request.method() == http::verb::get) {
    for (std::size_t i = 1; i < paths.size(); ++i) {
      if (head_basis && connect_early) {
        auto& slot = early.emplace_back(paths[i], std::make_shared<early_connection>(executor));
        asio::co_spawn(executor, async_connect_early(slot.second, *paths[i], ctx.target, limits),
                       asio::detached);
        continue;
      }
      asio::co_spawn(
          executor,
          [](dns::path_resolver& resolver, std::string host) -> awaitable<void> {
            co_await resolver.async_resolve(host);
          }(*paths[i]->resolver, ctx.target.host),
          asio::detached);
    }
  }
  auto abandon_early = [&early] {
    for (auto& [path, connection] : early) {
      connection->abandoned = true;
      if (connection->up.is_open()) connection->up.reset();
    }
    early.clear();
  };
  auto early_for = [&early](const path_runtime* path) -> std::shared_ptr<early_connection> {
    for (auto& [p, connection] : early)
      if (p == path) return connection;
    return nullptr;
  };
  // Whatever way this request ends, a connection nobody took is closed.
  struct early_guard {
    decltype(abandon_early)& abandon;
    ~early_guard() { abandon(); }
  } close_unused_early{abandon_early};

  // 1. Open the first path that connects (preference order) and send the request there;
  //    the previous request's connection to the same server if it is still open (not
  //    for a request with a body: if that connection turns out dead, the body is gone).
  const bool has_body = !app_parser.is_done();
  upstream first(executor);
  bool reused = false;
  // Whether the preferred path took the request (it then goes to the app's own destination).
  bool on_preferred_path = true;
  if (ctx.kept && !has_body && ctx.kept->serves(paths[0], ctx.target) && ctx.kept->up.is_open()) {
    first.adopt(ctx.kept->up);
    reused = true;
  }
  ctx.kept.reset();
  if (!reused) {
    const auto connected = co_await async_connect_first(first, paths, ctx.target, limits);
    for (const auto& [path, failed] : connected.failures) {
      spdlog::warn("[{}] path {}: cannot reach {}:{}: {}", ctx.session_id, path->config.name,
                   ctx.target.host, ctx.target.port, failed.message());
    }
    on_preferred_path = connected.index == 0;
    if (!connected.connected) {
      const error_code connect_ec = connected.failures.empty()
                                        ? error_code(asio::error::network_unreachable)
                                        : connected.failures.back().second;
      const bool timed_out =
          connect_ec == beast::error::timeout || connect_ec == dns::errc::timed_out;
      co_await async_write_error(
          ctx.app, timed_out ? http::status::gateway_timeout : http::status::bad_gateway,
          fmt::format("cannot reach {}: {}", ctx.target.authority, connect_ec.message()),
          ctx.request.version(), limits);
      co_return false;
    }
  }
  path_runtime& first_path = *paths[0];

  // A GET asks for the head of what the app wants only: if that turns out big, the first
  // path's response then ends where its first range does, instead of being reset there
  // with what it has in flight thrown away (up to its whole receive window).
  const std::uint64_t head_range_bytes =
      std::max<std::uint64_t>(min_split_bytes, min_head_range_bytes);
  http::request<http::buffer_body> request_out;
  request_out.base() = upstream_request(ctx.request, ctx.target).base();
  if (head_basis)
    request_out.set(http::field::range, head_range_field(*head_basis, head_range_bytes));
  if (has_body && ctx.request.find(http::field::expect) != ctx.request.end()) {
    // We answer the app's 100-continue ourselves (RFC 9110 §10.1.1) and relay the body.
    request_out.erase(http::field::expect);
    ctx.app.expires_after(as_duration(limits.io_timeout));
    co_await asio::async_write(
        ctx.app, asio::buffer(std::string_view("HTTP/1.1 100 Continue\r\n\r\n")), nothrow);
  }
  if (app_parser.chunked()) request_out.chunked(true);
  ++first_path.requests;
  const auto request_sent = clock_type::now();
  error_code ec = co_await async_relay_body(ctx.app, app_buffer, app_parser, first.stream,
                                            request_out, limits, nullptr);
  if (ec) {
    spdlog::warn("[{}] sending {} on {} failed: {}", ctx.session_id, url, first_path.config.name,
                 ec.message());
    co_await async_write_error(ctx.app, http::status::bad_gateway,
                               "upstream write failed: " + ec.message(), ctx.request.version(),
                               limits);
    co_return false;
  }

  // 2. The response header decides: one path, or a multipath fetch.
  const bool head_request = ctx.request.method() == http::verb::head;
  auto parser = make_response_parser(head_request);
  auto read_final_header = [&]() -> awaitable<error_code> {
    while (true) {
      first.stream.expires_after(as_duration(limits.io_timeout));
      auto [read_ec, n] =
          co_await http::async_read_header(first.stream, first.buffer, *parser, nothrow);
      // Interim 1xx responses (other than 101) are not forwarded: we already said 100.
      if (!read_ec && parser->get().result_int() >= 100 && parser->get().result_int() < 200 &&
          parser->get().result() != http::status::switching_protocols) {
        parser = make_response_parser(head_request);
        continue;
      }
      co_return read_ec;
    }
  };
  ec = co_await read_final_header();
  if (ec && reused && !parser->got_some()) {
    // The server closed the kept connection while it was idle (RFC 9112 §9.3.1): the
    // request, which has no body, goes again on a new connection.
    spdlog::debug("[{}] kept connection to {} was closed ({}): new connection", ctx.session_id,
                  ctx.target.authority, ec.message());
    first.reset();
    ec = co_await async_connect_to_target(first, first_path, ctx.target, limits, true);
    if (!ec)
      ec = co_await async_relay_body(ctx.app, app_buffer, app_parser, first.stream, request_out,
                                     limits, nullptr);
    parser = make_response_parser(head_request);
    if (!ec) ec = co_await read_final_header();
  }
  // What the origin would have answered the app, rebuilt from the 206 to our head range;
  // the head range ends at head_end.
  std::optional<response_header> app_view;
  std::uint64_t head_end = 0;
  if (!ec && head_basis) {
    const auto status = parser->get().result();
    if (status == http::status::partial_content) {
      app_view = app_view_of_head_range(parser->get(), *head_basis);
      if (app_view)
        head_end = parse_content_range(parser->get()[http::field::content_range])->last + 1;
    }
    // A 416 to the app's own range is the app's answer too; to ours, an empty object.
    // Any other 206 than the one part we asked for is a server we don't understand.
    if (!app_view && (status == http::status::partial_content ||
                      (status == http::status::range_not_satisfiable && !head_basis->app_range))) {
      spdlog::info("[{}] {} answered our head range with {} '{}': asking again without it",
                   ctx.session_id, url, parser->get().result_int(),
                   std::string(parser->get()[http::field::content_range]));
      first.reset();
      if (head_basis->app_range) {
        request_out.set(http::field::range, ctx.request[http::field::range]);
      } else {
        request_out.erase(http::field::range);
      }
      head_basis.reset();
      ec = co_await async_connect_to_target(first, first_path, ctx.target, limits,
                                            on_preferred_path);
      if (!ec) {
        http::request<http::empty_body> again;
        again.base() = request_out.base();
        first.stream.expires_after(as_duration(limits.io_timeout));
        auto [write_ec, n] = co_await http::async_write(first.stream, again, nothrow);
        ec = write_ec;
      }
      parser = make_response_parser(head_request);
      if (!ec) ec = co_await read_final_header();
    }
  }
  if (ec) {
    spdlog::warn("[{}] {} on {}: no response: {}", ctx.session_id, url, first_path.config.name,
                 ec.message());
    co_await async_write_error(
        ctx.app,
        ec == beast::error::timeout ? http::status::gateway_timeout : http::status::bad_gateway,
        "no response from " + ctx.target.authority + ": " + ec.message(), ctx.request.version(),
        limits);
    co_return false;
  }
  if (auto metrics = net::read_tcp_metrics(first.stream.socket()))
    first_path.estimator.on_rtt(metrics->smoothed_rtt);
  if (ctx.proxy.on_ttfb) {
    ctx.proxy.on_ttfb(
        first_path, ctx.target.host,
        std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - request_sent));
  }
  // A copy: the parser goes to the first path's fetcher, which may end (and free it)
  // before this session logs the download's status.
  const response_header response = app_view ? *app_view : parser->get().base();
  auto decision = decide_split(ctx.request, response, min_split_bytes, paths.size());
  if (decision.verdict == split_verdict::split && !feature.multipath)
    decision.verdict = split_verdict::not_a_feature;
  if (decision.verdict == split_verdict::split && !app_view &&
      host_is_cooling(ctx.proxy, ctx.target.host)) {
    decision.verdict = split_verdict::host_cooldown;
  }
  if (app_view && decision.end > head_end) {
    // The head range is all the first response brings: the rest must be fetched, over
    // every path (a host put in cooldown meanwhile still gets the verifier's checks).
    decision.verdict = split_verdict::split;
  }
  if (decision.verdict != split_verdict::split) {
    // 3a. One path: relay the response as it comes.
    abandon_early();
    auto out = app_response_header(response, ctx.request);
    std::uint64_t relayed = 0;
    if (head_request) {
      http::response<http::empty_body> head_out;
      head_out.base() = out.base();
      ctx.app.expires_after(as_duration(limits.io_timeout));
      http::response_serializer<http::empty_body> serializer{head_out};
      auto [head_ec, n] = co_await http::async_write_header(ctx.app, serializer, nothrow);
      ec = head_ec;
    } else if (auto length = parser->content_length(); length && !parser->chunked()) {
      ec = co_await async_relay_sized_body(first, *length, ctx.app, out, limits, relayed);
    } else {
      ec = co_await async_relay_body(first.stream, first.buffer, *parser, ctx.app, out, limits,
                                     &relayed);
    }
    first_path.bytes_received += relayed;
    ctx.count(first_path, relayed);
    const double seconds = std::chrono::duration<double>(clock_type::now() - started).count();
    spdlog::info("[{}] {} {} → {} one path ({}): {} on {} in {:.2f} s", ctx.session_id,
                 std::string(http::to_string(ctx.request.method())), url, response.result_int(),
                 to_string(decision.verdict), core::format_size(relayed), first_path.config.name,
                 seconds);
    if (ec) {
      spdlog::warn("[{}] relay of {} failed: {}", ctx.session_id, url, ec.message());
      net::close_with_reset(ctx.app.socket());
      co_return false;
    }
    // (The whole response was relayed: an error returned above. Bytes past it would be a
    // broken server's, and poison the next response.)
    if (parser->keep_alive() && first.buffer.size() == 0) {
      ctx.kept.emplace(first_path, ctx.target, std::move(first));
    } else {
      first.reset();
    }
    co_return out.keep_alive();
  }

  // 3b. Multipath: the app gets the first response's header now, the body from all paths.
  const std::uint64_t length = decision.end - decision.begin;
  const std::string validator = strong_validator(response);
  object_fetch fetch(executor, ctx.proxy.config, paths, decision.total, decision.begin,
                     decision.end);
  for (std::size_t i = 1; i < paths.size(); ++i) {
    // A path whose connection is up or on its way plans with one RTT to its first byte.
    auto connection = early_for(paths[i]);
    fetch.work()[i].connected = connection && (!connection->result || !*connection->result);
  }
  const std::uint64_t first_range_end =
      fetch.claim_first_range(app_view ? std::optional<std::uint64_t>(head_end) : std::nullopt);

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

  std::vector<std::shared_ptr<early_connection>> early_by_path(paths.size());
  for (std::size_t i = 1; i < paths.size(); ++i) early_by_path[i] = early_for(paths[i]);
  auto to_app = [&ctx, &limits](const std::vector<asio::const_buffer>& pieces)
      -> awaitable<std::pair<error_code, std::size_t>> {
    ctx.app.expires_after(as_duration(limits.io_timeout));
    auto [write_ec, n] = co_await asio::async_write(ctx.app, pieces, nothrow);
    co_return std::pair{write_ec, n};
  };
  ++ctx.proxy.fetches_active;
  // Shown by `fleety status` while it lasts (the fetch lives in this frame).
  auto shown = ctx.proxy.downloads.insert(
      ctx.proxy.downloads.end(), {ctx.session_id, ctx.app_name, url, &fetch, clock_type::now()});
  struct unregister_download {
    std::list<proxy_context::active_download>& list;
    std::list<proxy_context::active_download>::iterator entry;
    ~unregister_download() { list.erase(entry); }
  } remove_when_done{ctx.proxy.downloads, shown};
  // A named variable, not a temporary in the co_await: GCC 12 destroys such temporaries
  // twice (GCC PR 100611).
  fetch_start start{
      ctx.request,     ctx.target,
      validator,       initial_stream{std::move(first), std::move(parser), app_view.has_value()},
      first_range_end, std::move(early_by_path)};
  const bool delivered = co_await async_run_fetch(fetch, std::move(start), to_app);
  spdlog::debug("[{}] delivery ended", ctx.session_id);
  if (--ctx.proxy.fetches_active == 0) {
    // The reorder buffers' chunks are free now, but glibc keeps freed memory in its
    // arenas: without this the daemon's RSS stays at its peak (277 MiB after 20
    // concurrent downloads, 8.5 MiB after the trim; bench/memory).
    ::malloc_trim(0);
  }

  const double seconds = std::chrono::duration<double>(clock_type::now() - started).count();
  std::string per_path;
  for (std::size_t i = 0; i < paths.size(); ++i) {
    const auto& w = fetch.work()[i];
    ctx.count(*w.path, w.bytes);
    per_path += fmt::format("{}{}: {} bytes (planned {}, {} ranges, {} taken over)",
                            per_path.empty() ? "" : ", ", w.path->config.name, w.bytes,
                            fetch.planned_share(i), w.ranges, w.stolen);
  }
  if (fetch.mismatches() > 0) {
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
        "[{}] GET {} multipath failed after {} of {} bytes ({}): resetting the app connection",
        ctx.session_id, url, fetch.buffer().delivered() - decision.begin, length, per_path);
    net::close_with_reset(ctx.app.socket());
    co_return false;
  }
  const double multi_bps = static_cast<double>(length) * 8 / std::max(seconds, 1e-6);
  // What the first path alone carried meanwhile: the single-path throughput the download
  // would have had (the paths don't share a bottleneck).
  const double single_bps =
      static_cast<double>(fetch.work()[0].bytes) * 8 / std::max(seconds, 1e-6);
  spdlog::info("[{}] GET {} → {} multipath: {} in {:.2f} s = {}; {}", ctx.session_id, url,
               response.result_int(), core::format_size(length), seconds,
               core::format_rate(multi_bps), per_path);
  if (ctx.proxy.on_transition) ctx.proxy.on_transition(ctx.target.host, single_bps, multi_bps);
  co_return out.keep_alive();
}

/// CONNECT host:port: a byte tunnel on the preferred path (RFC 9110 §9.3.6).
awaitable<void> async_tunnel(beast::tcp_stream& app, beast::flat_buffer& app_buffer,
                             proxy_context& proxy, const request_header& request,
                             std::uint64_t session_id) {
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
  upstream up(executor);
  error_code ec = asio::error::host_not_found;
  path_runtime* used = nullptr;
  for (auto& path : proxy.paths) {
    ec = co_await async_connect_on_path(up, path, host, static_cast<std::uint16_t>(port), limits);
    if (!ec) {
      used = &path;
      break;
    }
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
    auto [ec2, n2] = co_await asio::async_write(up.stream, app_buffer.data(), nothrow);
    if (ec2) co_return;
    app_buffer.consume(app_buffer.size());
  }
  auto pump = [&limits](beast::tcp_stream& from, beast::tcp_stream& to,
                        std::uint64_t& count) -> awaitable<void> {
    std::vector<char> chunk(chunk_bytes);
    for (;;) {
      from.expires_after(as_duration(limits.io_timeout) * 8);
      auto [read_ec, got] = co_await from.async_read_some(asio::buffer(chunk), nothrow);
      if (read_ec) break;
      to.expires_after(as_duration(limits.io_timeout));
      auto [wr_ec, put] = co_await asio::async_write(to, asio::buffer(chunk.data(), got), nothrow);
      if (wr_ec) break;
      count += put;
    }
    error_code ignored;
    to.socket().shutdown(tcp::socket::shutdown_send, ignored);
  };
  std::uint64_t up_bytes = 0;
  std::uint64_t down_bytes = 0;
  // Both directions run until each side is done; one coroutine per direction.
  int left = 2;
  asio::steady_timer done(executor);
  auto finish = [&](std::exception_ptr) {
    if (--left == 0) done.cancel();
  };
  asio::co_spawn(executor, pump(app, up.stream.tcp_layer(), up_bytes), finish);
  asio::co_spawn(executor, pump(up.stream.tcp_layer(), app, down_bytes), finish);
  while (left > 0) co_await async_wait_for_wake(done, std::chrono::seconds(1));
  used->bytes_received += down_bytes;
}

}  // namespace

std::vector<download_snapshot> active_downloads(const proxy_context& context) {
  std::vector<download_snapshot> out;
  const auto now = clock_type::now();
  for (const auto& d : context.downloads) {
    const auto& fetch = *d.fetch;
    download_snapshot s;
    s.session = d.session;
    s.app = d.app;
    s.url = d.url;
    s.size = fetch.end() - fetch.begin();
    s.delivered = fetch.delivered() - fetch.begin();
    s.seconds = std::chrono::duration<double>(now - d.started).count();
    for (const auto& w : fetch.work()) {
      s.paths.push_back(
          {w.path->config.name, w.bytes, w.failed ? 0.0 : w.live_rate(now) * 8, w.failed});
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
  upstream up(co_await asio::this_coro::executor);
  http_dns_reply out;
  out.ec = co_await async_connect_to_target(up, path, target, limits, to_destination);
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
  for (auto& answer :
       dns::parse_http_dns_reply(out.response.body(), asked_name, endpoint.default_ttl)) {
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
    if (net::interface_exists(path.config.interface)) up.push_back(&path);
  if (up.empty()) {
    co_await async_write_error(ctx.app, http::status::bad_gateway, "no path is up",
                               ctx.request.version(), limits);
    co_return false;
  }
  // Shared with the per-path queries, which may outlive this call: a late reply is still
  // recorded.
  struct gathering {
    gathering(const asio::any_io_executor& executor, std::size_t n) : wake(executor), replies(n) {}
    asio::steady_timer wake;
    std::vector<std::optional<http_dns_reply>> replies;
  };
  auto state = std::make_shared<gathering>(executor, up.size());
  const auto query_out = upstream_request(ctx.request, ctx.target);
  for (std::size_t k = 0; k < up.size(); ++k) {
    asio::co_spawn(
        executor,
        [](std::shared_ptr<gathering> shared, std::size_t index, awaitable<http_dns_reply> reply)
            -> awaitable<void> {
          shared->replies[index] = co_await std::move(reply);
          shared->wake.cancel();
        }(state, k,
            async_http_dns_on_path(*up[k], ctx.proxy, query_out, ctx.target,
                                   /*to_destination=*/k == 0, query.asked_name, endpoint,
                                   ctx.session_id)),
        asio::detached);
  }
  // Each path's connect and read have their own timeouts; this bounds the app's wait.
  const auto deadline = started + as_duration(limits.connect_timeout + 2 * limits.io_timeout);
  const http_dns_reply* chosen = nullptr;
  std::size_t chosen_index = 0;
  while (chosen == nullptr && clock_type::now() < deadline) {
    const auto& preferred = state->replies[0];
    if (preferred && !preferred->ec) {
      chosen = &*preferred;
      break;
    }
    if (preferred) {
      for (std::size_t k = 1; k < up.size() && chosen == nullptr; ++k) {
        if (state->replies[k] && !state->replies[k]->ec) {
          chosen = &*state->replies[k];
          chosen_index = k;
        }
      }
      const bool all_failed = std::all_of(state->replies.begin(), state->replies.end(),
                                          [](const auto& r) { return r && r->ec; });
      if (chosen != nullptr || all_failed) break;
    }
    co_await async_wait_for_wake(state->wake, deadline - clock_type::now());
  }
  if (chosen == nullptr) {
    const auto& preferred = state->replies[0];
    const error_code ec = preferred ? preferred->ec : error_code(beast::error::timeout);
    if (ec == http::error::body_limit) {
      spdlog::info("[{}] http-dns {} {}: reply over {} bytes: relayed as it is, not read",
                   ctx.session_id, endpoint.name, url, endpoint.max_reply_bytes);
      co_return std::nullopt;
    }
    spdlog::warn("[{}] http-dns {} {}: no path answered ({})", ctx.session_id, endpoint.name, url,
                 ec.message());
    co_await async_write_error(
        ctx.app,
        ec == beast::error::timeout ? http::status::gateway_timeout : http::status::bad_gateway,
        fmt::format("HTTP-DNS {}: {}", ctx.target.authority, ec.message()), ctx.request.version(),
        limits);
    co_return false;
  }
  if (chosen_index != 0) {
    spdlog::info("[{}] http-dns {}: answered by {}: {} failed ({})", ctx.session_id, url,
                 up[chosen_index]->config.name, up[0]->config.name,
                 state->replies[0]->ec.message());
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
                                std::optional<tcp::endpoint> intercepted, std::string app_name) {
  beast::tcp_stream app(std::move(socket));
  beast::flat_buffer app_buffer;
  std::optional<kept_upstream> kept;
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
        ec == asio::error::connection_reset) {
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
      co_await async_tunnel(app, app_buffer, proxy, request, session_id);
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
    const request_context ctx{app, proxy, request, *target, session_id, kept, app_name};
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
  }
  error_code ignored;
  app.socket().shutdown(tcp::socket::shutdown_send, ignored);
  app.close();
}

}  // namespace

awaitable<void> run_accept_loop(tcp::acceptor acceptor, proxy_context& context, std::string what,
                                std::function<awaitable<void>(tcp::socket, std::uint64_t)> serve) {
  auto executor = co_await asio::this_coro::executor;
  // Shared with the sessions' completion handlers, which may outlive this loop.
  auto slot_freed = std::make_shared<asio::steady_timer>(executor);
  for (;;) {
    while (context.sessions_active >= context.config.proxy.max_connections) {
      // At the limit, leave new connections in the kernel's backlog until one ends.
      co_await async_wait_for_wake(*slot_freed, std::chrono::seconds(1));
    }
    auto [ec, socket] = co_await acceptor.async_accept(nothrow);
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
    if (ec) {
      spdlog::warn("{}: accept failed: {}", what, ec.message());
      continue;
    }
    const std::uint64_t id = ++context.sessions_started;
    ++context.sessions_active;
    asio::co_spawn(executor, serve(std::move(socket), id),
                   [&context, slot_freed, id, what](std::exception_ptr error) {
                     if (error) {
                       try {
                         std::rethrow_exception(error);
                       } catch (const std::exception& e) {
                         spdlog::error("[{}] {} connection ended by an error: {}", id, what,
                                       e.what());
                       }
                     }
                     --context.sessions_active;
                     slot_freed->cancel();
                   });
  }
}

awaitable<void> run_proxy_listener(tcp::acceptor acceptor, proxy_context& context) {
  co_await run_accept_loop(
      std::move(acceptor), context, "proxy", [&context](tcp::socket socket, std::uint64_t id) {
        return run_app_session(std::move(socket), context, id, std::nullopt, std::string());
      });
}

awaitable<void> run_intercepted_http_session(tcp::socket socket, tcp::endpoint destination,
                                             proxy_context& context, std::uint64_t session_id,
                                             std::string app) {
  co_await run_app_session(std::move(socket), context, session_id, destination, std::move(app));
}

}  // namespace fleety::mphttp
