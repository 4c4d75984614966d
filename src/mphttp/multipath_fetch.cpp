#include "mphttp/multipath_fetch.hpp"

#include <fmt/format.h>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http.hpp>

#include "dns/path_resolver.hpp"
#include "net/kernel_tcp_info.hpp"

namespace fleety::mphttp::detail {

/// A response parser with our limits: headers up to 64 KiB, bodies of any length (we
/// stream them), no body expected for a HEAD.
std::unique_ptr<http::response_parser<http::buffer_body>> make_response_parser(bool head_request) {
  auto parser = std::make_unique<http::response_parser<http::buffer_body>>();
  parser->header_limit(header_limit_bytes);
  parser->body_limit(boost::none);
  if (head_request) parser->skip(true);
  return parser;
}

/// Waits until `timer` is cancelled (someone's notify) or `timeout` passes.
awaitable<void> async_wait_for_wake(asio::steady_timer& timer, clock_type::duration timeout) {
  timer.expires_after(timeout);
  co_await timer.async_wait(nothrow);
}

/// Connects a socket bound to the path's interface to `endpoint`.
awaitable<error_code> async_connect_endpoint(upstream& up, path_runtime& path,
                                             const tcp::endpoint& endpoint,
                                             const core::proxy_config& limits) {
  error_code ec = net::open_bound(up.stream.socket(), endpoint.protocol(), path.config.interface);
  if (ec) co_return ec;
  up.stream.expires_after(as_duration(limits.connect_timeout));
  auto [connect_ec] = co_await up.stream.tcp_layer().async_connect(endpoint, nothrow);
  if (connect_ec) {
    up.reset();
    co_return connect_ec;
  }
  if (auto metrics = net::read_tcp_metrics(up.stream.socket())) {
    path.estimator.on_rtt(metrics->smoothed_rtt);
  }
  if (path.monitor != nullptr)
    up.measured = path.monitor->watch_socket(path.index, up.stream.socket().native_handle());
  co_return error_code{};
}

/// Resolves `host` through the path and connects a socket bound to the path's interface.
awaitable<error_code> async_connect_on_path(upstream& up, path_runtime& path,
                                            const std::string& host, std::uint16_t port,
                                            const core::proxy_config& limits) {
  auto resolved = co_await path.resolver->async_resolve(host);
  if (!resolved) co_return resolved.error();
  error_code last = asio::error::host_not_found;
  for (const auto& address : resolved->addresses) {
    last = co_await async_connect_endpoint(up, path, tcp::endpoint(address, port), limits);
    if (!last) break;
  }
  co_return last;
}

namespace {

/// async_connect_to_target's TCP connection.
awaitable<error_code> async_connect_tcp_to_target(upstream& up, path_runtime& path,
                                                  const proxy_target& target,
                                                  const core::proxy_config& limits,
                                                  bool to_destination) {
  if (target.destination && to_destination) {
    co_return co_await async_connect_endpoint(
        up, path, tcp::endpoint(*target.destination, target.port), limits);
  }
  if (const auto* own = to_destination ? nullptr : target.server_on(path.config.name)) {
    // The app reached the host at the address another path's answer gave; this path's
    // own answer (DNS or HTTP-DNS) for the same name is its own ISP's server.
    if (!co_await async_connect_endpoint(up, path, tcp::endpoint(*own, target.port), limits))
      co_return error_code{};
  }
  auto ec = co_await async_connect_on_path(up, path, target.host, target.port, limits);
  if (ec && target.destination && ec.category() == dns::error_category()) {
    co_return co_await async_connect_endpoint(
        up, path, tcp::endpoint(*target.destination, target.port), limits);
  }
  co_return ec;
}

}  // namespace

awaitable<error_code> async_connect_to_target(upstream& up, path_runtime& path,
                                              const proxy_target& target,
                                              const core::proxy_config& limits, bool to_destination,
                                              tls_client tls) {
  auto ec = co_await async_connect_tcp_to_target(up, path, target, limits, to_destination);
  if (!ec && tls) ec = co_await tls.connector->async_handshake(up, target.host, limits);
  if (ec) up.reset();
  co_return ec;
}

awaitable<first_connect> async_connect_first(upstream& up, std::vector<path_runtime*>& paths,
                                             const proxy_target& target,
                                             const core::proxy_config& limits, tls_client tls) {
  first_connect result;
  for (std::size_t i = 0; i < paths.size(); ++i) {
    auto ec = co_await async_connect_to_target(up, *paths[i], target, limits, i == 0, tls);
    if (!ec) {
      std::rotate(paths.begin(), paths.begin() + static_cast<std::ptrdiff_t>(i),
                  paths.begin() + static_cast<std::ptrdiff_t>(i) + 1);
      result.connected = true;
      result.index = i;
      break;
    }
    result.failures.emplace_back(paths[i], ec);
  }
  co_return result;
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

/// The request a path sends upstream: the app's end-to-end fields, origin-form target.
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

/// Sends a range request for `range` on the path's connection.
awaitable<error_code> async_request_range(upstream& up, path_runtime& path,
                                          const request_header& app_request,
                                          const proxy_target& target, const std::string& validator,
                                          byte_range range, std::uint64_t overlap,
                                          const core::proxy_config& limits) {
  auto request = upstream_request(app_request, target);
  request.set(http::field::range, fmt::format("bytes={}-{}", range.begin - overlap, range.end - 1));
  if (!validator.empty()) request.set(http::field::if_range, validator);
  ++path.requests;
  spdlog::debug("path {}: requests [{}, {})", path.config.name, range.begin, range.end);
  up.stream.expires_after(as_duration(limits.io_timeout));
  auto [ec, n] = co_await http::async_write(up.stream, request, nothrow);
  co_return ec;
}

/// Reads the body of the response to `work.current` (header already in `parser`) into
/// the fetch, until the range's end, which may move while we read. Near the end, either
/// the range grows (`first_stream`: path 0's first response, the whole object, just goes
/// on while the next bytes are unclaimed), or the request for the path's next range goes
/// out on `pipeline_on` once `pipeline_ready`. `stopped_early` tells the caller that the
/// response goes on past what we wanted, so the connection can't be reused.
awaitable<error_code> async_receive_range(object_fetch& fetch, std::size_t index, upstream& up,
                                          http::response_parser<http::buffer_body>& parser,
                                          const request_header& app_request,
                                          const proxy_target& target, const std::string& validator,
                                          bool first_stream, upstream* pipeline_on,
                                          const bool& pipeline_ready, bool& stopped_early) {
  const auto& limits = fetch.config().proxy;
  auto& work = fetch.work()[index];
  std::vector<char> chunk(chunk_bytes);
  stopped_early = false;
  clock_type::time_point next_claim_attempt{};
  while (work.current_left() > 0) {
    if (parser.is_done()) co_return http::error::partial_message;
    // Ask for the next range about one RTT before this one ends: behind this response on
    // the same connection (unless it was cut short: it will be reset), or on a spare
    // connection when this response won't be finished.
    const bool can_pipeline =
        pipeline_on != nullptr && pipeline_ready &&
        (pipeline_on != &up || (parser.keep_alive() && work.current->end == work.requested_end));
    // The next request must arrive before this response ends: an RTT ahead at least,
    // with margin for a rate that grows (slow start) faster than the meter shows; a
    // range of ours goes out halfway through the current one.
    const double rate = work.live_rate(clock_type::now());
    const double rtt_bytes = rate * work.path->estimator.rtt_s();
    // (Half a range, but no more than range_time of the path's rate: a long range on a
    // slow path — the head range — must not be pipelined seconds ahead, since a path
    // with a pipelined request is not cut short, and other paths may need its tail.)
    const double range_time_bytes = rate * work.range_time_s(fetch.config().scheduler.range_time);
    const double lead_bytes =
        (first_stream
             ? 1.5 * rtt_bytes
             : std::max(2 * rtt_bytes, std::min(static_cast<double>(work.current->size()) / 2,
                                                range_time_bytes))) +
        chunk_bytes;
    auto now = clock_type::now();
    if (!work.pipelined && static_cast<double>(work.current_left()) <= lead_bytes &&
        now >= next_claim_attempt) {
      if (first_stream && fetch.extend_first_stream(index)) {
        // The response goes on into the bytes just claimed.
      } else if (can_pipeline) {
        // Nothing to claim now: ask again a little later, not on every read.
        next_claim_attempt = now + std::chrono::milliseconds(20);
        if (auto next = fetch.take_range(index)) {
          work.pipelined = next;
          if (auto ec = co_await async_request_range(*pipeline_on, *work.path, app_request, target,
                                                     validator, *next,
                                                     fetch.overlap_for(next->begin), limits)) {
            co_return ec;
          }
        }
      }
    }
    auto [ec, got] = co_await async_read_body_some(up, parser, chunk, limits);
    if (ec) co_return ec;
    if (fetch.stopping()) co_return asio::error::operation_aborted;
    if (got == 0) continue;
    now = clock_type::now();
    if (!work.current_first_byte) {
      work.current_first_byte = now;
      spdlog::debug("path {}: first byte of [{}, {})", work.path->config.name, work.current->begin,
                    work.current->end);
    }
    work.last_progress = now;
    // The first bytes of a streak came in over the request's RTT: the rate counts after them.
    if (work.meter.active()) {
      work.meter.add(seconds_of(now), got);
    } else {
      work.meter.start(seconds_of(now));
    }
    work.path->bytes_received += got;
    std::span<const char> body(chunk.data(), got);
    if (work.prefix_left > 0) {
      // The overlap comes first: kept aside for the verifier, not delivered.
      const std::size_t take =
          static_cast<std::size_t>(std::min<std::uint64_t>(work.prefix_left, got));
      work.prefix.insert(work.prefix.end(), body.begin(),
                         body.begin() + static_cast<std::ptrdiff_t>(take));
      work.prefix_left -= take;
      body = body.subspan(take);
      if (work.prefix_left == 0)
        fetch.on_overlap(index, work.current->begin, std::move(work.prefix));
    }
    // The range's end may have moved down (another path took the tail): drop the rest.
    const std::uint64_t usable = std::min<std::uint64_t>(body.size(), work.current_left());
    fetch.on_data(index, work.current->begin + work.current_received, body.first(usable));
    work.current_received += usable;
  }
  stopped_early = !parser.is_done();
  const auto now = clock_type::now();
  if (auto measured = work.meter.rate(seconds_of(now))) work.path->estimator.on_rate(*measured);
  spdlog::debug("path {}: [{}, {}) done, {:.1f} Mbit/s", work.path->config.name,
                work.current->begin, work.current->end, work.live_rate(now) * 8e-6);
  co_return error_code{};
}

}  // namespace

awaitable<void> async_connect_early(std::shared_ptr<early_connection> early, path_runtime& path,
                                    proxy_target target, core::proxy_config limits,
                                    tls_client tls) {
  auto ec = co_await async_connect_to_target(early->up, path, target, limits,
                                             /*to_destination=*/false, tls);
  if (!ec && early->abandoned) early->up.reset();
  early->result = early->abandoned ? error_code(asio::error::operation_aborted) : ec;
  early->ready.cancel();
}

namespace {

/// Waits (within the connect timeout) for the early connection and moves it into `up`.
/// False if it failed: the caller connects as usual.
awaitable<bool> async_take_early(early_connection& early, upstream& up, const path_runtime& path,
                                 const core::proxy_config& limits) {
  const auto needed = clock_type::now();
  const auto deadline = needed + as_duration(limits.connect_timeout);
  while (!early.result && clock_type::now() < deadline)
    co_await async_wait_for_wake(early.ready, deadline - clock_type::now());
  if (!early.result || *early.result) co_return false;
  spdlog::debug(
      "path {}: takes the connection it opened early (waited {} ms for it)", path.config.name,
      std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - needed).count());
  up.adopt(early.up);
  co_return true;
}

/// One path's fetcher: takes ranges from the plan and fetches each with a range request
/// on a keep-alive connection, until the object is complete or the path fails.
awaitable<void> run_path_fetcher(object_fetch& fetch, std::size_t index,
                                 const request_header& app_request, const proxy_target& target,
                                 std::string validator, std::optional<initial_stream> initial,
                                 std::uint64_t initial_end,
                                 std::shared_ptr<early_connection> early) {
  auto executor = co_await asio::this_coro::executor;
  // Stopping cancels the pending operation; we check fetch.stopping() ourselves rather
  // than have the next co_await throw.
  co_await asio::this_coro::throw_if_cancelled(false);
  auto& work = fetch.work()[index];
  auto& path = *work.path;
  const auto& limits = fetch.config().proxy;
  // A first response of our own range is the path's first range like any other, already
  // requested on its keep-alive connection, header already read.
  const bool head_range = initial && initial->bounded;
  upstream up = head_range ? std::move(initial->up) : upstream(executor);
  std::unique_ptr<http::response_parser<http::buffer_body>> head_parser;
  if (head_range) {
    head_parser = std::move(initial->parser);
    initial.reset();
    work.connected = true;
    if (initial_end > fetch.begin()) work.pipelined = byte_range{fetch.begin(), initial_end};
  }
  const std::string url = fmt::format("{}://{}{}", fetch.tls() ? "https" : "http", target.authority,
                                      target.origin_form);
  auto fail = [&](std::string_view what, const error_code& ec) {
    // A path already taken as stalled was logged when it was.
    if (!fetch.stopping() && !work.failed) {
      spdlog::warn("path {}: {} of {} failed after {} bytes of [{}, {}): {}", path.config.name,
                   what, url, work.current_received, work.current ? work.current->begin : 0,
                   work.current ? work.current->end : 0, ec.message());
    }
    up.reset();
    fetch.on_path_failed(index);
  };

  if (initial) {
    // Paper §4.2: the first path keeps the response it already has for its share, then
    // is reset: we don't want the rest of that response. Its share grows while the bytes
    // after it are unclaimed (object_fetch). Meanwhile a spare connection is opened on
    // the same path, and the path's next range is requested on it about an RTT before
    // the share ends, so the path never idles between the two.
    work.connected = true;
    bool spare_ready = false;
    auto open_spare = [&]() -> awaitable<error_code> {
      auto ec = co_await async_connect_to_target(up, path, target, limits, index == 0, fetch.tls());
      spare_ready = !ec;
      co_return ec;
    };
    auto receive_share = [&]() -> awaitable<error_code> {
      if (initial_end <= fetch.begin()) co_return error_code{};
      work.current = byte_range{fetch.begin(), initial_end};
      work.requested_end = fetch.end();
      work.last_progress = clock_type::now();
      work.current_received = 0;
      bool stopped_early = false;
      auto ec = co_await async_receive_range(
          fetch, index, initial->up, *initial->parser, app_request, target, validator,
          /*first_stream=*/true, &up, spare_ready, stopped_early);
      if (!ec) ++work.ranges;
      co_return ec;
    };
    using namespace asio::experimental::awaitable_operators;
    auto [receive_ec, spare_ec] = co_await (receive_share() && open_spare());
    initial->up.reset();
    if (receive_ec) {
      fail("first response", receive_ec);
      co_return;
    }
    work.current.reset();
    work.connected = spare_ready;
    if (spare_ec) {
      // Not fatal: the loop below connects again (and fails the path if it can't).
      up.reset();
      if (work.pipelined) {
        fetch.give_back(index, *work.pipelined);
        work.pipelined.reset();
      }
    }
    if (!work.pipelined) work.meter.stop();
  }

  while (!fetch.stopping() && !work.failed) {
    // 1. The next range: already requested behind the previous one, or a new one.
    const bool already_sent = work.pipelined.has_value();
    byte_range range;
    if (already_sent) {
      range = *work.pipelined;
      work.pipelined.reset();
    } else {
      auto next = fetch.take_range(index);
      if (!next) {
        // Not done when every byte has arrived: until the app has them all, the verifier
        // can still drop another path's bytes, and they are to be fetched again.
        if (fetch.all_failed()) break;
        work.meter.stop();  // idle: the next bytes start a new measurement
        // Woken when ranges come back or the window moves; meanwhile the other paths'
        // tails get longer relative to what is left, so look again soon.
        co_await async_wait_for_wake(*work.wake, std::chrono::milliseconds(50));
        continue;
      }
      range = *next;
    }
    work.current = range;
    work.requested_end = range.end;
    work.current_received = 0;
    work.current_first_byte.reset();
    work.last_progress = clock_type::now();
    work.prefix_left = fetch.overlap_for(range.begin);
    work.prefix.clear();
    // 2. Connect if needed and send the request.
    if (!already_sent) {
      if (!up.is_open() && early) {
        auto taken = std::exchange(early, nullptr);
        co_await async_take_early(*taken, up, path, limits);
      }
      if (!up.is_open()) {
        work.connected = false;
        if (auto ec = co_await async_connect_to_target(up, path, target, limits, index == 0,
                                                       fetch.tls())) {
          fail("connect", ec);
          break;
        }
        work.connected = true;
      }
      if (auto ec = co_await async_request_range(up, path, app_request, target, validator, range,
                                                 fetch.overlap_for(range.begin), limits)) {
        fail("request", ec);
        break;
      }
    }
    // 3. The response must be exactly the range of the same object (RFC 9110 §14.4).
    // (The session has read the head range's header already.)
    auto parser_owner =
        head_parser ? std::move(head_parser) : make_response_parser(/*head_request=*/false);
    auto& parser = *parser_owner;
    if (!parser.is_header_done()) {
      up.stream.expires_after(as_duration(limits.io_timeout));
      auto [read_ec, n] = co_await http::async_read_header(up.stream, up.buffer, parser, nothrow);
      if (read_ec) {
        fail("response", read_ec);
        break;
      }
    }
    const auto& header = parser.get().base();
    const auto content_range = parse_content_range(header[http::field::content_range]);
    if (header.result() != http::status::partial_content || !content_range ||
        content_range->first != range.begin - fetch.overlap_for(range.begin) ||
        content_range->last != range.end - 1 || content_range->complete_length != fetch.total()) {
      // A server that ignores Range, or another version of the object (If-Range
      // failed): this path can't help with this object.
      spdlog::warn("path {}: {} answered range {}-{} with {} '{}': not using this path for it",
                   path.config.name, url, range.begin, range.end - 1, header.result_int(),
                   std::string(header[http::field::content_range]));
      // We only split when the server takes ranges: any other answer means the
      // validator or the size differs on this path, i.e. another version.
      fetch.on_version_conflict();
      up.reset();
      fetch.on_path_failed(index);
      break;
    }
    // 4. The body, into the reorder buffer.
    bool stopped_early = false;
    const bool same_connection = true;
    auto ec =
        co_await async_receive_range(fetch, index, up, parser, app_request, target, validator,
                                     /*first_stream=*/false, &up, same_connection, stopped_early);
    if (ec) {
      fail("range", ec);
      break;
    }
    ++work.ranges;
    work.current.reset();
    if (stopped_early || !parser.keep_alive()) {
      // The rest of this response is unwanted, or the server closes: a request
      // pipelined behind it is lost and its range goes back to be claimed again.
      up.reset();
      work.connected = false;
      work.meter.stop();
      if (work.pipelined) {
        fetch.give_back(index, *work.pipelined);
        work.pipelined.reset();
      }
    }
  }
  up.reset();
}

/// The sink's side of a multipath fetch: writes bytes in order as they become contiguous.
/// Returns false if the object could not be completed (the proxy resets the app).
awaitable<bool> async_deliver_in_order(object_fetch& fetch, const byte_sink& sink) {
  const auto& limits = fetch.config().proxy;
  auto& buffer = fetch.buffer();
  auto last_progress = clock_type::now();
  while (buffer.delivered() < fetch.end()) {
    fetch.detect_stalls(clock_type::now());
    auto pieces = buffer.front_pieces(max_write_bytes);
    if (pieces.empty()) {
      if (fetch.all_failed()) co_return false;
      if (clock_type::now() - last_progress > as_duration(limits.io_timeout)) {
        spdlog::warn("no progress for {} ms: giving up", limits.io_timeout.count() / 1000);
        co_return false;
      }
      co_await async_wait_for_wake(fetch.writer_wake(), std::chrono::milliseconds(500));
      continue;
    }
    // Not past an overlap that hasn't been compared yet (paper §4.3).
    std::size_t available = 0;
    for (const auto& piece : pieces) available += piece.size();
    std::size_t allowed = fetch.deliverable(available);
    if (allowed == 0) {
      co_await async_wait_for_wake(fetch.writer_wake(), std::chrono::milliseconds(100));
      continue;
    }
    std::vector<asio::const_buffer> writes;
    for (const auto& piece : pieces) {
      if (allowed == 0) break;
      const std::size_t n = std::min(allowed, piece.size());
      writes.emplace_back(piece.data(), n);
      allowed -= n;
    }
    // One gathered write of what is contiguous now. The buffer only grows meanwhile
    // (fetchers add, only this writer consumes), so the pieces stay valid.
    auto [ec, n] = co_await sink(writes);
    if (ec) co_return false;
    for (const auto& piece : writes) {
      fetch.on_delivered({static_cast<const char*>(piece.data()), piece.size()});
    }
    buffer.consume(n);
    last_progress = clock_type::now();
    fetch.on_window_moved();
  }
  co_return true;
}

}  // namespace

awaitable<bool> async_run_fetch(object_fetch& fetch, fetch_start start, const byte_sink& sink) {
  auto executor = co_await asio::this_coro::executor;
  auto& work = fetch.work();
  for (std::size_t i = 0; i < work.size(); ++i) {
    std::optional<initial_stream> initial;
    if (i == 0) initial.emplace(std::move(start.initial));
    auto early = i < start.early.size() ? start.early[i] : nullptr;
    ++fetch.running;
    asio::co_spawn(
        executor,
        run_path_fetcher(fetch, i, start.request, start.target, start.validator, std::move(initial),
                         i == 0 ? start.first_range_end : 0, std::move(early)),
        asio::bind_cancellation_slot(work[i].cancel->slot(), [&fetch, i](std::exception_ptr error) {
          if (error) {
            try {
              std::rethrow_exception(error);
            } catch (const std::exception& e) {
              spdlog::error("path fetcher {} failed: {}", i, e.what());
            }
            fetch.on_path_failed(i);
          }
          --fetch.running;
          fetch.notify();
        }));
  }
  const bool delivered = co_await async_deliver_in_order(fetch, sink);
  fetch.stop();
  while (fetch.running > 0) {
    co_await async_wait_for_wake(fetch.writer_wake(), std::chrono::milliseconds(200));
  }
  co_return delivered;
}

}  // namespace fleety::mphttp::detail
