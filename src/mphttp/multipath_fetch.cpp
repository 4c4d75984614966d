#include "mphttp/multipath_fetch.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/this_coro.hpp>
#include <boost/beast/http.hpp>

#include "net/task_group.hpp"

namespace fleety::mphttp::detail {

namespace {

/// One gathered write to the sink at most.
constexpr std::uint64_t max_write_bytes = 1 << 20;

/// What a fetch's loops share; lives in async_run_fetch's frame, which joins them all.
struct fetch_io {
  fetch_io(fetch_state& s, fetch_start& st, net::task_group& group,
           const asio::any_io_executor& executor)
      : state(s), start(st), fetchers(group), writer_wake(executor) {
    for (std::size_t i = 0; i < start.routes.size(); ++i)
      wake.push_back(std::make_unique<asio::steady_timer>(executor));
    members.resize(start.routes.size(), 0);
  }

  fetch_state& state;
  fetch_start& start;
  net::task_group& fetchers;                        ///< the fetchers and path 0's spare connection
  std::vector<net::task_group::member_id> members;  ///< each path's fetcher
  std::vector<std::unique_ptr<asio::steady_timer>> wake;  ///< cancelled to wake a fetcher
  asio::steady_timer writer_wake;

  const std::string& name(std::size_t path) const { return start.routes[path].path->config.name; }

  /// Carries out what the state asked of others, and logs its notes.
  void drain() {
    for (const auto& a : state.take_actions()) {
      switch (a.what) {
        case fetch_action::kind::wake_writer:
          writer_wake.cancel();
          break;
        case fetch_action::kind::wake_path:
          wake[a.path]->cancel();
          break;
        case fetch_action::kind::cancel_path:
          fetchers.cancel(members[a.path]);
          break;
        case fetch_action::kind::abandon_spare:
          if (auto& early = start.routes[a.path].early) early->abandon();
          break;
      }
    }
    for (const auto& n : state.take_notes()) log(n);
  }

  void log(const fetch_note& n) const {
    using kind = fetch_note::kind;
    switch (n.what) {
      case kind::requested:
        spdlog::debug("path {}: requests [{}, {})", name(n.path), n.range.begin, n.range.end);
        break;
      case kind::first_byte:
        spdlog::debug("path {}: first byte of [{}, {})", name(n.path), n.range.begin, n.range.end);
        break;
      case kind::range_done:
        spdlog::debug("path {}: [{}, {}) done, {:.1f} Mbit/s", name(n.path), n.range.begin,
                      n.range.end, n.rate_bps * 1e-6);
        break;
      case kind::took_tail:
        spdlog::debug("path {} takes [{}, {}) from path {} ({:.2f} s left there)", name(n.path),
                      n.range.begin, n.range.end, name(n.other), n.seconds);
        break;
      case kind::spare_taken:
        spdlog::debug("path {}: takes the connection it opened early (waited {:.0f} ms for it)",
                      name(n.path), n.seconds * 1e3);
        break;
      case kind::stalled:
        if (!n.detail.empty()) {
          spdlog::warn(
              "path {}: {} of {} after {} bytes of [{}, {}): its range goes to the "
              "other paths",
              name(n.path), n.detail, start.url, n.bytes, n.range.begin, n.range.end);
        } else {
          spdlog::warn("path {}: no data for {:.1f} s: its {} bytes left go to the other paths",
                       name(n.path), n.seconds, n.bytes);
        }
        break;
      case kind::refused:
        spdlog::warn(
            "path {}: {} answered range {}-{} with {} ({}{}): not using this path for it{}",
            name(n.path), start.url, n.range.begin, n.range.end - 1, n.status,
            to_string(state.path(n.path).refused), n.detail.empty() ? "" : ", " + n.detail,
            n.seconds >= 0 ? fmt::format(" (Retry-After {:.0f} s)", n.seconds) : "");
        break;
      case kind::validator_changed:
        spdlog::info(
            "path {}: its node's copy of {} changed (If-Range failed): asking again "
            "without its old validator",
            name(n.path), start.url);
        break;
      case kind::other_version:
        if (n.detail.empty()) {
          spdlog::warn(
              "path {}: its bytes before offset {} differ from what the app already has: another "
              "version of the object; dropping its ranges, the rest comes over the other paths",
              name(n.path), n.offset);
        } else {
          spdlog::warn(
              "path {}: {}: another version of the object; dropping its ranges, the rest comes "
              "over the other paths",
              name(n.path), n.detail);
        }
        break;
      case kind::no_progress:
        spdlog::warn("no progress for {:.0f} ms: giving up", n.seconds * 1e3);
        break;
      case kind::all_failed:
        spdlog::debug("{}: every path failed after {} bytes", start.url, n.bytes);
        break;
      case kind::retrying:
        spdlog::info("path {}: tries {} again in {:.0f} s (attempt {} of {})", name(n.path),
                     start.url, n.seconds, n.bytes, fetch_state::max_path_retries);
        break;
    }
  }
};

/// The range response's header as the state wants it.
response_head head_of(const http::response_parser<http::buffer_body>& parser) {
  const auto& header = parser.get().base();
  response_head head;
  head.status = header.result_int();
  head.content_range_text = std::string(header[http::field::content_range]);
  head.range = parse_content_range(head.content_range_text);
  head.keep_alive = parser.keep_alive();
  head.validator = strong_validator(header);
  head.digests = representation_digests(header);
  if (auto retry = header.find(http::field::retry_after); retry != header.end())
    head.retry_after = parse_retry_after(retry->value(), std::chrono::system_clock::now());
  return head;
}

/// The request `sent` again on a new connection of the route's path, when `on` was a warm
/// one the server closed while it was idle (RFC 9112 §9.3.1: it may do so at any time).
awaitable<error_code> async_request_again_on_new_connection(upstream& on, const fetch_route& route,
                                                            fetch_start& start,
                                                            const path_command& sent) {
  auto& path = *route.path;
  spdlog::debug("path {}: its warm connection for {} was closed: a new one", path.config.name,
                start.url);
  on.reset();
  if (auto ec =
          co_await start.connector.async_connect(on, path, start.target, route.to_destination))
    co_return ec;
  on.reused = false;
  co_return co_await async_request_range(on, start.request, start.target, sent.if_range, sent.range,
                                         sent.overlap, start.limits);
}

/// One path's fetcher: carries out the state's commands on the path's connection (and
/// its spare), reporting each outcome, until the state says finish.
// GCC 12 takes Asio's coroutine frame allocation (aligned_alloc) and its sized operator
// delete for a mismatched pair once the frame grows past some size (-Wmismatched-new-delete,
// a false positive: Asio frees that memory with the matching aligned free).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
awaitable<void> run_path_fetcher(fetch_io& io, std::size_t index) {
  // Stopping cancels what we await; the state then says finish. (Our own cancellation
  // must not throw at the next await instead.)
  co_await asio::this_coro::throw_if_cancelled(false);
  auto executor = co_await asio::this_coro::executor;
  auto& state = io.state;
  auto& start = io.start;
  auto& route = start.routes[index];
  auto& path = *route.path;
  const auto& limits = start.limits;
  // The path's connection; path 0's carries the first response, its header read.
  upstream up(executor);
  std::unique_ptr<http::response_parser<http::buffer_body>> parser;
  // Path 0's first head range: its header, read by the session, is this range's head.
  // (A whole first response streams instead: it has no read_head.)
  bool first_head = false;
  if (index == 0) {
    up.adopt(start.initial.up);
    parser = std::move(start.initial.parser);
    first_head = true;
  }
  // The connection opened in the background: the early one, or path 0's spare.
  std::shared_ptr<early_connection> spare = route.early;
  bool spare_reported = spare == nullptr;
  std::vector<char> chunk(fetch_state::read_chunk_bytes);
  auto fail = [&](std::string_view what, const error_code& ec) {
    // A path already out (stalled, cancelled, stopped) was logged when it went.
    if (state.phase() == fetch_phase::fetching && !state.path(index).out()) {
      const auto& w = state.path(index);
      spdlog::warn("path {}: {} of {} failed after {} bytes of [{}, {}): {}", path.config.name,
                   what, start.url, w.current_received, w.current ? w.current->begin : 0,
                   w.current ? w.current->end : 0, ec.message());
    }
    up.reset();
    state.on_failed(index, clock_type::now());
  };

  // The last range request sent: a warm connection the server closed while it was idle
  // takes it again on a new one, once.
  std::optional<path_command> last_sent;

  for (;;) {
    if (!spare_reported && spare->result) {
      spare_reported = true;
      state.on_spare(index, !*spare->result, clock_type::now());
    }
    const path_command command = state.next_command(index, clock_type::now());
    io.drain();
    using kind = path_command::kind;
    switch (command.what) {
      case kind::finish:
        // A connection whose last response was read to its end stays warm for the host's
        // next request on this path.
        start.connector.finish_with(up, parser.get(), path, start.target, route.to_destination);
        if (spare) spare->abandon();
        co_return;
      case kind::wait:
        co_await async_wait_for_wake(*io.wake[index], command.until - clock_type::now());
        break;
      case kind::open_spare:
        spare = std::make_shared<early_connection>(executor);
        spare_reported = false;
        io.fetchers.spawn(
            async_connect_early(spare, path, start.target, start.connector, route.to_destination),
            fmt::format("spare connection on path {}", path.config.name));
        break;
      case kind::await_spare:
        if (!spare->result)
          co_await async_wait_for_wake(spare->ready, command.until - clock_type::now());
        if (!spare->result) {
          // Not in time: nobody takes it; the path connects anew.
          spare->abandon();
          spare_reported = true;
          state.on_spare(index, false, clock_type::now());
        }
        break;
      case kind::adopt_spare:
        if (spare->asked) {
          // Its range went out before the first answer: the response to read is that one.
          // (As the state took it: a suffix's absolute range.)
          last_sent = path_command{kind::send, command.range, command.overlap};
        }
        up.adopt(spare->up);
        spare.reset();
        spare_reported = true;
        break;
      case kind::connect:
        if (auto ec = co_await start.connector.async_connect(up, path, start.target,
                                                             route.to_destination)) {
          fail("connect", ec);
        } else {
          state.on_connected(index, clock_type::now());
        }
        break;
      case kind::send: {
        auto& on = command.on_spare ? spare->up : up;
        ++path.requests;
        last_sent = command;
        auto ec = co_await async_request_range(on, start.request, start.target, command.if_range,
                                               command.range, command.overlap, limits);
        if (ec && on.reused)
          ec = co_await async_request_again_on_new_connection(on, route, start, command);
        if (ec) {
          fail("request", ec);
        } else {
          state.on_sent(index, clock_type::now());
        }
        break;
      }
      case kind::read_head:
        // (Path 0's first range: the session has read its header already.)
        if (!std::exchange(first_head, false)) {
          parser = make_response_parser(/*head_request=*/false);
          up.stream.expires_after(as_duration(limits.io_timeout));
          auto [ec, n] = co_await http::async_read_header(up.stream, up.buffer, *parser, nothrow);
          if (ec && up.reused && !parser->got_some() && last_sent) {
            parser = make_response_parser(/*head_request=*/false);
            ec = co_await async_request_again_on_new_connection(up, route, start, *last_sent);
            if (!ec) {
              up.stream.expires_after(as_duration(limits.io_timeout));
              std::tie(ec, n) =
                  co_await http::async_read_header(up.stream, up.buffer, *parser, nothrow);
            }
          }
          if (ec) {
            fail("response", ec);
            break;
          }
        }
        up.reused = false;  // it answered: alive
        state.on_head(index, head_of(*parser), clock_type::now());
        break;
      case kind::read_body: {
        first_head = false;
        const bool streaming = state.path(index).phase == path_phase::streaming;
        auto [ec, got] = co_await async_read_body_some(up, *parser, chunk, limits);
        if (ec) {
          fail(streaming ? "first response" : "range", ec);
          break;
        }
        path.bytes_received += got;
        state.on_body(index, std::span<const char>(chunk.data(), got), parser->is_done(),
                      clock_type::now());
        break;
      }
      case kind::close:
        start.connector.finish_with(up, parser.get(), path, start.target, route.to_destination);
        parser.reset();
        break;
    }
    io.drain();
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

/// The sink's side: writes bytes in order as they become contiguous. False if the object
/// could not be completed (the proxy resets the app).
awaitable<bool> async_deliver_in_order(fetch_io& io, const byte_sink& sink) {
  auto& state = io.state;
  std::vector<asio::const_buffer> writes;
  for (;;) {
    // The session is going away: stop (our own waits are not cancelled twice).
    if ((co_await asio::this_coro::cancellation_state).cancelled() != asio::cancellation_type::none)
      co_return false;
    auto next = state.next_delivery(clock_type::now(), max_write_bytes);
    io.drain();
    switch (next.what) {
      case delivery_command::kind::complete:
        co_return true;
      case delivery_command::kind::fail:
        co_return false;
      case delivery_command::kind::wait:
        co_await async_wait_for_wake(io.writer_wake, next.until - clock_type::now());
        break;
      case delivery_command::kind::deliver: {
        writes.clear();
        for (const auto& piece : next.pieces) writes.emplace_back(piece.data(), piece.size());
        // One gathered write of what is contiguous now. The buffer only grows meanwhile
        // (fetchers add, only this writer consumes), so the pieces stay valid.
        auto [ec, n] = co_await sink(writes);
        if (ec) co_return false;
        state.on_delivered(n, clock_type::now());
        io.drain();
        break;
      }
    }
  }
}

}  // namespace

void close_early_asks(const std::vector<fetch_route>& routes) {
  for (const auto& r : routes) {
    if (!r.early) continue;
    r.early->may_ask = false;
    if (r.early->asked && !r.early->result) r.early->abandon();
  }
}

std::vector<fetch_path> fetch_paths_of(const std::vector<fetch_route>& routes) {
  std::vector<fetch_path> out;
  for (const auto& r : routes) {
    const auto& early = r.early;
    fetch_path p{&r.path->estimator, false, std::nullopt};
    if (early) {
      const bool connected = early->result && !*early->result;
      if (early->asked && connected) {
        p.speculative = early->ask->part;
      } else {
        p.connecting_early = !early->asked && (!early->result || connected);
      }
    }
    out.push_back(p);
  }
  return out;
}

void abandon_unwanted_early(fetch_state& state, const std::vector<fetch_route>& routes) {
  for (const auto& a : state.take_actions()) {
    if (a.what == fetch_action::kind::abandon_spare && routes[a.path].early)
      routes[a.path].early->abandon();
  }
}

awaitable<bool> async_run_fetch(fetch_state& state, fetch_start start, const byte_sink& sink) {
  // We own the fetchers: they are joined before we return, cancelled or not.
  const bool was_throwing = co_await asio::this_coro::throw_if_cancelled();
  co_await asio::this_coro::throw_if_cancelled(false);
  auto executor = co_await asio::this_coro::executor;
  net::task_group fetchers(executor);
  fetch_io io(state, start, fetchers, executor);
  for (std::size_t i = 0; i < start.routes.size(); ++i) {
    io.members[i] =
        fetchers.spawn(run_path_fetcher(io, i), fmt::format("fetcher on path {}", io.name(i)));
  }
  const bool delivered = co_await async_deliver_in_order(io, sink);
  state.stop();
  io.drain();
  co_await fetchers.async_join();
  co_await asio::this_coro::throw_if_cancelled(was_throwing);
  co_return delivered;
}

}  // namespace fleety::mphttp::detail
