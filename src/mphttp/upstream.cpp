#include "mphttp/upstream.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <boost/asio/this_coro.hpp>
#include <boost/beast/http.hpp>
#include <vector>

#include "dns/path_resolver.hpp"
#include "mphttp/scheduler.hpp"
#include "net/bound_socket.hpp"
#include "net/connect.hpp"

namespace fleety::mphttp::detail {

void upstream::reset() {
  measured = path::monitor::watch{};
  slot.release();
  reused = false;
  net::close_with_reset(stream.socket());
  stream.drop_tls();
  buffer.clear();
}

awaitable<error_code> async_connect_endpoint(upstream& up, path_runtime& path,
                                             const tcp::endpoint& endpoint,
                                             const core::proxy_config& limits,
                                             std::optional<net::socket_user> user) {
  auto ec = co_await net::async_connect_on_path(up.stream.socket(), endpoint, path.config.interface,
                                                as_duration(limits.connect_timeout),
                                                net::transport::tcp, user);
  if (ec) {
    up.reset();
    co_return ec;
  }
  if (auto metrics = net::read_tcp_metrics(up.stream.socket())) {
    path.estimator.on_rtt(metrics->smoothed_rtt);
  }
  if (path.monitor != nullptr)
    up.measured = path.monitor->watch_socket(path.index, up.stream.socket().native_handle(),
                                             path::monitor::peer_use::probe_target);
  co_return error_code{};
}

awaitable<error_code> async_connect_on_path(upstream& up, path_runtime& path,
                                            const std::string& host, std::uint16_t port,
                                            const core::proxy_config& limits,
                                            std::optional<net::socket_user> user) {
  auto resolved = co_await path.resolver->async_resolve(host);
  if (!resolved) co_return resolved.error();
  error_code last = asio::error::host_not_found;
  for (const auto& address : resolved->addresses) {
    last = co_await async_connect_endpoint(up, path, tcp::endpoint(address, port), limits, user);
    if (!last || last == asio::error::operation_aborted) break;
  }
  co_return last;
}

namespace {

/// path_connector's TCP connection: the app's own destination for the path it came
/// from; else the path's counterpart of that destination (what its own resolver answered
/// for the same name), else its own resolver's answer for the host, falling back to the
/// app's destination when the host doesn't resolve there.
awaitable<error_code> async_connect_tcp(upstream& up, path_runtime& path,
                                        const proxy_target& target,
                                        const core::proxy_config& limits, bool to_destination,
                                        std::optional<net::socket_user> user) {
  if (target.destination && to_destination) {
    co_return co_await async_connect_endpoint(
        up, path, tcp::endpoint(*target.destination, target.port), limits, user);
  }
  if (const auto* own = to_destination ? nullptr : target.server_on(path.config.name)) {
    // The app reached the host at the address another path's answer gave; this path's
    // own answer (DNS or HTTP-DNS) for the same name is its own ISP's server.
    if (!co_await async_connect_endpoint(up, path, tcp::endpoint(*own, target.port), limits, user))
      co_return error_code{};
  }
  auto ec = co_await async_connect_on_path(up, path, target.host, target.port, limits, user);
  if (ec && target.destination && ec.category() == dns::error_category()) {
    co_return co_await async_connect_endpoint(
        up, path, tcp::endpoint(*target.destination, target.port), limits, user);
  }
  co_return ec;
}

}  // namespace

awaitable<error_code> path_connector::async_connect(upstream& up, path_runtime& path,
                                                    const proxy_target& target,
                                                    bool to_destination) {
  auto ec = co_await async_connect_tcp(up, path, target, limits_, to_destination, user_);
  if (!ec && tls_ != nullptr) ec = co_await tls_->async_handshake(up, target.host, limits_);
  if (ec) up.reset();
  co_return ec;
}

awaitable<first_connect> async_connect_first(upstream& up, std::vector<path_runtime*>& paths,
                                             const proxy_target& target,
                                             upstream_connector& connector) {
  first_connect result;
  for (std::size_t i = 0; i < paths.size(); ++i) {
    auto ec = co_await connector.async_connect(up, *paths[i], target, /*to_destination=*/i == 0);
    if (!ec) {
      std::rotate(paths.begin(), paths.begin() + static_cast<std::ptrdiff_t>(i),
                  paths.begin() + static_cast<std::ptrdiff_t>(i) + 1);
      result.connected = true;
      result.index = i;
      break;
    }
    result.failures.emplace_back(paths[i], ec);
    if (ec == asio::error::operation_aborted) break;
  }
  co_return result;
}

std::unique_ptr<http::response_parser<http::buffer_body>> make_response_parser(bool head_request) {
  auto parser = std::make_unique<http::response_parser<http::buffer_body>>();
  parser->header_limit(header_limit_bytes);
  parser->body_limit(boost::none);
  if (head_request) parser->skip(true);
  return parser;
}

awaitable<error_code> async_read_final_header(
    upstream& up, std::unique_ptr<http::response_parser<http::buffer_body>>& parser,
    bool head_request, clock_type::duration timeout, const interim_handler& on_interim) {
  for (int interim = 0;; ++interim) {
    up.stream.expires_after(timeout);
    auto [ec, n] = co_await http::async_read_header(up.stream, up.buffer, *parser, nothrow);
    if (ec) co_return ec;
    const unsigned status = parser->get().result_int();
    // 101 is the final answer to an Upgrade; other 1xx are interim (RFC 9110 §15.2).
    if (status >= 200 || status == 101) co_return error_code{};
    if (interim + 1 >= max_interim_responses) co_return http::error::bad_status;
    if (on_interim) co_await on_interim(parser->get().base());
    parser = make_response_parser(head_request);
  }
}

awaitable<std::pair<error_code, std::size_t>> async_read_body_some(
    upstream& up, http::response_parser<http::buffer_body>& parser, std::span<char> chunk,
    const core::proxy_config& limits) {
  parser.get().body().data = chunk.data();
  parser.get().body().size = chunk.size();
  up.stream.expires_after(as_duration(limits.io_timeout));
  auto [ec, n] = co_await http::async_read_some(up.stream, up.buffer, parser, nothrow);
  if (ec == http::error::need_buffer) ec = {};
  co_return std::pair{ec, chunk.size() - parser.get().body().size};
}

http::request<http::empty_body> upstream_request(const request_header& app_request,
                                                 const proxy_target& target) {
  http::request<http::empty_body> request;
  request.base() = app_request;
  strip_hop_by_hop(request.base());
  request.version(11);
  request.target(target.origin_form);
  if (request.find(http::field::host) == request.end())
    request.set(http::field::host, target.authority);
  request.keep_alive(true);
  return request;
}

namespace {
/// The app's request for `range_field` (a Range value of ours), with If-Range `validator`
/// if any: ours, never the app's — its If-Range was for its own Range, answered by the
/// first response already; a range of ours carries this path's node's validator or none.
http::request<http::empty_body> ranged_request(const request_header& app_request,
                                               const proxy_target& target,
                                               const std::string& range_field,
                                               const std::string& validator) {
  auto request = upstream_request(app_request, target);
  request.set(http::field::range, range_field);
  request.erase(http::field::if_range);
  if (!validator.empty()) request.set(http::field::if_range, validator);
  return request;
}
}  // namespace

http::request<http::empty_body> range_request(const request_header& app_request,
                                              const proxy_target& target,
                                              const std::string& validator, byte_range range,
                                              std::uint64_t overlap) {
  return ranged_request(app_request, target,
                        fmt::format("bytes={}-{}", range.begin - overlap, range.end - 1),
                        validator);
}

http::request<http::empty_body> suffix_range_request(const request_header& app_request,
                                                     const proxy_target& target,
                                                     std::uint64_t suffix_bytes,
                                                     std::uint64_t overlap) {
  return ranged_request(app_request, target, fmt::format("bytes=-{}", suffix_bytes + overlap), "");
}

awaitable<error_code> async_request_range(upstream& up, const request_header& app_request,
                                          const proxy_target& target, const std::string& validator,
                                          byte_range range, std::uint64_t overlap,
                                          const core::proxy_config& limits) {
  auto request = range_request(app_request, target, validator, range, overlap);
  up.stream.expires_after(as_duration(limits.io_timeout));
  auto [ec, n] = co_await http::async_write(up.stream, request, nothrow);
  co_return ec;
}

awaitable<void> async_wait_for_wake(asio::steady_timer& timer, clock_type::duration timeout) {
  timer.expires_after(timeout);
  co_await timer.async_wait(nothrow);
}

namespace {
/// A request of a few hundred bytes on a connection just opened: its write completes at
/// once, or the connection is no good.
constexpr auto ask_write_timeout = std::chrono::seconds(5);
}  // namespace

awaitable<void> async_release_after_answer(std::shared_ptr<early_connection> early,
                                           std::uint64_t max_body, clock_type::duration timeout) {
  auto& up = early->up;
  auto parser = make_response_parser(/*head_request=*/false);
  up.stream.expires_after(timeout);
  auto [ec, n] = co_await http::async_read_header(up.stream, up.buffer, *parser, nothrow);
  const auto length = parser->content_length();
  if (ec || !length || *length > max_body) {
    up.reset();
    co_return;
  }
  std::array<char, 16 * 1024> sink{};
  while (!parser->is_done()) {
    parser->get().body().data = sink.data();
    parser->get().body().size = sink.size();
    up.stream.expires_after(timeout);
    auto [read_ec, got] = co_await http::async_read_some(up.stream, up.buffer, *parser, nothrow);
    if (read_ec && read_ec != http::error::need_buffer) {
      up.reset();
      co_return;
    }
  }
  early->asked = false;
  if (early->release_unused && up.reusable_after(parser.get())) {
    early->release_unused(up);
  } else {
    up.reset();
  }
}

awaitable<void> async_connect_early(std::shared_ptr<early_connection> early, path_runtime& path,
                                    proxy_target target, upstream_connector& connector,
                                    bool to_destination) {
  early->release_unused = [&connector, &path, target, to_destination](upstream& up) {
    connector.release(up, path, target, to_destination);
  };
  auto ec = co_await connector.async_connect(early->up, path, target, to_destination);
  if (!ec && !early->abandoned && early->ask && early->may_ask) {
    // Its part of a predicted download, asked before the first answer (issue 17).
    // (An answer may be pending from the moment the write starts.)
    early->asked = true;
    ++path.requests;
    early->up.stream.expires_after(ask_write_timeout);
    auto [write_ec, n] = co_await http::async_write(early->up.stream, early->ask->request, nothrow);
    if (write_ec) {
      early->up.reset();
      ec = write_ec;
    }
  }
  if (!ec && early->abandoned) early->abandon();
  early->result = early->abandoned ? error_code(asio::error::operation_aborted) : ec;
  early->ready.cancel();
}

std::uint64_t split_threshold_bytes(std::span<path_runtime* const> paths,
                                    const core::scheduler_config& scheduler,
                                    bool others_connected) {
  if (scheduler.min_split_bytes) return *scheduler.min_split_bytes;
  if (paths.size() < 2) return max_auto_split_bytes;
  std::vector<path_estimate> estimates;
  for (std::size_t i = 0; i < paths.size(); ++i) {
    const auto& e = paths[i]->estimator;
    double lead = 0;
    if (i > 0) {
      // A connection open already skips the handshake's round trip, not slow start (an
      // idle connection restarts it too: tcp_slow_start_after_idle).
      lead = request_lead_s(e.rate_bytes_per_s(), e.rtt_s(), /*connected=*/false);
      if (others_connected) lead -= e.rtt_s();
    }
    estimates.push_back({e.rate_bytes_per_s(), lead});
  }
  std::uint64_t threshold = split_pays_bytes(estimates, paths[0]->estimator.rtt_s());
  if (scheduler.mode == core::scheduler_mode::cost) {
    const double tolerance_s = std::chrono::duration<double>(scheduler.tolerance).count();
    threshold = std::max(threshold,
                         static_cast<std::uint64_t>(estimates[0].rate_bytes_per_s * tolerance_s));
  }
  return std::clamp<std::uint64_t>(threshold, min_head_range_bytes, max_auto_split_bytes);
}

}  // namespace fleety::mphttp::detail
