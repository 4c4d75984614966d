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
#include "mphttp/reorder_buffer.hpp"
#include "mphttp/scheduler.hpp"
#include "net/bound_socket.hpp"
#include "net/splice.hpp"

namespace fleety::mphttp {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::awaitable;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using clock_type = std::chrono::steady_clock;
constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);

constexpr std::size_t chunk_bytes = 64 * 1024;
/// The head range a GET asks for is min_split_size, at least this.
constexpr std::uint64_t min_head_range_bytes = 256 * 1024;
constexpr std::uint32_t header_limit_bytes = 64 * 1024;
constexpr std::uint64_t max_write_bytes = 1 << 20;  ///< one gathered write to the app

std::chrono::steady_clock::duration as_duration(std::chrono::microseconds us) {
  return us;
}

/// An HTTP/1.1 connection to a server over one path. Owned by one coroutine frame.
struct upstream {
  beast::tcp_stream stream;
  beast::flat_buffer buffer;
  /// The path monitor reads the connection's TCP_INFO while it is open (declared after
  /// the stream: it goes first).
  path::monitor::watch measured;

  explicit upstream(const asio::any_io_executor& executor) : stream(executor) {}
  bool is_open() { return stream.socket().is_open(); }
  void reset() {
    measured = path::monitor::watch{};
    net::close_with_reset(stream.socket());
    buffer.clear();
  }
  /// Takes over `other`'s connection and what it buffered (a tcp_stream can't be
  /// assigned: its socket is moved, which leaves `other` closed).
  void adopt(upstream& other) {
    stream.socket() = std::move(other.stream.socket());
    buffer = std::move(other.buffer);
    measured = std::move(other.measured);
  }
};

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
  auto [connect_ec] = co_await up.stream.async_connect(endpoint, nothrow);
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

/// Connects on `path` to where `target` is served: the app's own destination when
/// `to_destination` (the first path of an intercepted request: the app chose it), else
/// the path's counterpart of that destination, else the path's own resolver's answer for
/// the host (each path to its own CDN, paper §4.1), falling back to the app's destination
/// when the host doesn't resolve there.
awaitable<error_code> async_connect_to_target(upstream& up, path_runtime& path,
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
template <bool is_request>
awaitable<error_code> async_relay_body(beast::tcp_stream& input, beast::flat_buffer& input_buffer,
                                       http::parser<is_request, http::buffer_body>& parser,
                                       beast::tcp_stream& output,
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

/// Seconds since an arbitrary epoch, for the pure rate meter.
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

double seconds_of(clock_type::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

/// One path's part in a multipath fetch.
struct path_work {
  path_runtime* path = nullptr;  ///< not owned
  /// The range being received. Its end moves down when an idle path takes its tail, and
  /// up while the first path's response simply goes on into the next bytes.
  std::optional<byte_range> current;
  std::uint64_t requested_end = 0;     ///< where the response to `current` really ends
  std::uint64_t current_received = 0;  ///< bytes of `current` received so far
  std::optional<clock_type::time_point> current_first_byte;
  clock_type::time_point last_progress{};  ///< when `current` was assigned or last brought bytes
  /// Overlap bytes of the current response not received yet, and those received: the
  /// response starts `overlap` bytes before `current->begin` (paper §4.3).
  std::uint64_t prefix_left = 0;
  std::vector<char> prefix;
  /// A range whose request is already sent behind `current` (HTTP/1.1 pipelining on the
  /// same connection, or on the spare one), so the path doesn't idle for an RTT.
  std::optional<byte_range> pipelined;
  bool connected = false;
  bool failed = false;
  windowed_rate meter;                       ///< goodput over the last second of work
  std::uint64_t bytes = 0;                   ///< bytes of the object this path delivered first
  std::uint64_t ranges = 0;                  ///< range responses received
  std::uint64_t stolen = 0;                  ///< ranges this path took over from another
  std::unique_ptr<asio::steady_timer> wake;  ///< cancelled to wake the fetcher
  std::unique_ptr<asio::cancellation_signal> cancel;  ///< terminal cancellation of the fetcher

  std::uint64_t current_left() const {
    return current ? current->size() - std::min(current->size(), current_received) : 0;
  }
  std::uint64_t backlog_bytes() const {
    return current_left() + (pipelined ? pipelined->size() : 0);
  }
  /// Goodput now (over the last second of back-to-back ranges), else the path's estimate.
  double live_rate(clock_type::time_point now) const {
    if (auto measured = meter.rate(seconds_of(now)); measured && *measured > 0) return *measured;
    return path->estimator.rate_bytes_per_s();
  }
  /// Seconds until a new request on this path would bring data at full rate: one RTT on
  /// a connected path; on a new connection one more for the handshake plus what slow
  /// start costs (cwnd doubling from the initial 10 segments up to the path's BDP loses
  /// about RTT·(log2(BDP / initial window) − 1) against a full-rate start).
  double request_lead_s() const {
    const double rtt = path->estimator.rtt_s();
    if (connected) return rtt;
    constexpr double initial_window_bytes = 10 * 1448;
    const double bdp = path->estimator.rate_bytes_per_s() * rtt;
    const double slow_start =
        bdp > 2 * initial_window_bytes ? rtt * (std::log2(bdp / initial_window_bytes) - 1) : 0;
    return 2 * rtt + slow_start;
  }
  /// When this path could start on bytes asked for now: after what it already has (a
  /// request sent now is answered behind it), and never sooner than a request takes.
  double lead_s(clock_type::time_point now) const {
    const double rate = live_rate(now);
    const double backlog_s = rate > 0 ? static_cast<double>(backlog_bytes()) / rate : 0.0;
    return connected ? std::max(request_lead_s(), backlog_s) : request_lead_s() + backlog_s;
  }
  /// A range should keep the path busy for a while: long enough that the next request
  /// goes out (1.5 RTT ahead) well inside it, short enough that the last ranges of an
  /// object finish together.
  double range_time_s(std::chrono::microseconds configured) const {
    return std::max(static_cast<double>(configured.count()) / 1e6, 3 * path->estimator.rtt_s());
  }
};

/// Shared state of one multipath fetch. Lives in the session's frame, which waits for
/// every fetcher to end before it returns: references to it never dangle.
///
/// Paths claim ranges as they need work (claim_map, choose_claim). While the first path
/// works from the front — its head range and the ranges after it, or a first response
/// that is the whole object and simply goes on into the next unclaimed bytes — the other
/// paths fill the object (or the first memory window of it) from the back: the two meet
/// where their rates put the meeting point. After that every path takes the lowest
/// unclaimed bytes, with its next request pipelined.
class object_fetch {
 public:
  /// Fetches bytes [begin, end) of an object of `total` bytes (the app's range, or all).
  object_fetch(const asio::any_io_executor& executor, const core::config& config,
               std::vector<path_runtime*> paths, std::uint64_t total, std::uint64_t begin,
               std::uint64_t end)
      : config_(config),
        total_(total),
        begin_(begin),
        end_(end),
        buffer_(begin),
        claims_(total),
        writer_wake_(executor) {
    // Outside the range: nobody's to fetch.
    claims_.claim({0, begin});
    claims_.claim({end, total});
    for (auto* path : paths) {
      path_work w;
      w.path = path;
      w.wake = std::make_unique<asio::steady_timer>(executor);
      w.cancel = std::make_unique<asio::cancellation_signal>();
      work_.push_back(std::move(w));
    }
    planned_share_.assign(work_.size(), 0);
  }

  const core::config& config() const { return config_; }
  std::uint64_t total() const { return total_; }
  std::uint64_t begin() const { return begin_; }
  std::uint64_t end() const { return end_; }
  reorder_buffer& buffer() { return buffer_; }
  std::vector<path_work>& work() { return work_; }
  bool stopping() const { return stopping_; }
  bool all_failed() const {
    return std::all_of(work_.begin(), work_.end(), [](const path_work& w) { return w.failed; });
  }
  std::uint64_t planned_share(std::size_t index) const { return planned_share_[index]; }
  int running = 0;  ///< fetcher coroutines not yet ended

  /// Something changed (data arrived, a path failed, the window moved): wake everyone.
  void notify() {
    writer_wake_.cancel();
    for (auto& w : work_) w.wake->cancel();
  }

  /// The app took bytes: fetchers that found nothing to claim inside the window may now.
  void on_window_moved() {
    if (!window_blocked_) return;
    window_blocked_ = false;
    for (auto& w : work_) w.wake->cancel();
  }

  void stop() {
    stopping_ = true;
    for (auto& w : work_) w.cancel->emit(asio::cancellation_type::terminal);
    notify();
  }

  asio::steady_timer& writer_wake() { return writer_wake_; }

  /// Bytes that arrived from path `index` at `offset`.
  void on_data(std::size_t index, std::uint64_t offset, std::span<const char> data) {
    auto& w = work_[index];
    w.bytes += buffer_.add(offset, data, static_cast<int>(index));
    writer_wake_.cancel();
  }

  /// Bytes a range request asks for before the range itself, to compare with what the
  /// earlier range brought (consistency verifier, paper §4.3). None for the object's head.
  std::uint64_t overlap_for(std::uint64_t begin) const {
    // Before the fetch's first byte the app has nothing to compare with.
    if (begin <= begin_) return 0;
    return std::min<std::uint64_t>(begin - begin_, config_.scheduler.overlap_bytes);
  }

  /// Path `index` received the whole overlap before `begin`: no byte at or after `begin`
  /// reaches the app until it matched the bytes the app got just before `begin`.
  void on_overlap(std::size_t index, std::uint64_t begin, std::vector<char> bytes) {
    checks_[begin] = overlap_check{static_cast<int>(index), std::move(bytes)};
  }

  /// The most the writer may deliver now from the front of `buffer_`, given pending
  /// checks; resolves the check at the delivery point. 0 with `conflict` set when the
  /// check there failed (handled: the later range is dropped and fetched again).
  std::size_t deliverable(std::size_t available) {
    const std::uint64_t at = buffer_.delivered();
    auto gate = checks_.lower_bound(at);
    if (gate != checks_.end() && gate->first == at) {
      if (!check_at_delivery_point(gate)) return 0;
      gate = checks_.lower_bound(at);
    }
    if (gate == checks_.end()) return available;
    return static_cast<std::size_t>(std::min<std::uint64_t>(available, gate->first - at));
  }

  /// The writer delivered `data`: keep its tail, the "earlier" side of the next check.
  void on_delivered(std::span<const char> data) {
    const std::size_t keep = config_.scheduler.overlap_bytes;
    if (data.size() > keep) data = data.last(keep);
    recent_.insert(recent_.end(), data.begin(), data.end());
    if (recent_.size() > keep)
      recent_.erase(recent_.begin(), recent_.end() - static_cast<std::ptrdiff_t>(keep));
  }

  /// Times this fetch saw a second version of the object (overlap, size or validator).
  std::uint64_t mismatches() const { return mismatches_; }
  void on_version_conflict() { ++mismatches_; }

  /// Path `index` will not fetch `range` after all (its request was lost with its
  /// connection): someone else claims it.
  void give_back(std::size_t index, byte_range range) {
    claims_.release(range);
    planned_share_[index] -= std::min(planned_share_[index], range.size());
    notify();
  }

  /// A path failed: what it had not fetched goes back to be claimed by the others.
  void on_path_failed(std::size_t index) {
    auto& w = work_[index];
    w.failed = true;
    if (index == 0) first_stream_alive_ = false;
    if (w.current_left() > 0)
      give_back(index, {w.current->begin + w.current_received, w.current->end});
    if (w.pipelined) give_back(index, *w.pipelined);
    w.current.reset();
    w.pipelined.reset();
    w.meter.stop();
    notify();
  }

  /// A path whose range brings no bytes for a while is taken as failed while another path
  /// can go on (DESIGN.md: "a path that stalls ... has its remaining ranges re-requested
  /// on the other paths"): its ranges go back and its fetcher is cancelled. The last path
  /// left is not judged here: it has the I/O timeout like any connection.
  void detect_stalls(clock_type::time_point now) {
    for (std::size_t i = 0; i < work_.size(); ++i) {
      auto& w = work_[i];
      if (w.failed || w.current_left() == 0) continue;
      const double rtt = w.path->estimator.rtt_s();
      // Before the first byte a range also waits for a connect and the server.
      const double limit_s = w.current_first_byte ? std::max(1.0, 4 * rtt) : std::max(3.0, 8 * rtt);
      const double silent_s = std::chrono::duration<double>(now - w.last_progress).count();
      if (silent_s < limit_s) continue;
      const bool another_alive =
          std::any_of(work_.begin(), work_.end(),
                      [&](const path_work& other) { return &other != &w && !other.failed; });
      if (!another_alive) continue;
      spdlog::warn("path {}: no data for {:.1f} s: its {} bytes left go to the other paths",
                   w.path->config.name, silent_s, w.backlog_bytes());
      on_path_failed(i);
      w.cancel->emit(asio::cancellation_type::terminal);
    }
  }

  /// Path 0 already receives the object (or the app's range) from its start: it claims
  /// the head. `bounded_end`: where its response ends (it asked for the head only);
  /// nullopt: the response is the whole object, and path 0 claims what the plan gives it.
  /// Returns where its first range ends.
  std::uint64_t claim_first_range(std::optional<std::uint64_t> bounded_end) {
    first_stream_alive_ = true;
    if (bounded_end) {
      const byte_range head{begin_, std::min(*bounded_end, end_)};
      claims_.claim(head);
      planned_share_[0] += head.size();
      return head.end;
    }
    auto range = claim(0, claim_side::front, 0, window_end(), clock_type::now());
    if (!range) return 0;
    return range->end;
  }

  /// Path 0's first response goes on past its current range: claim the bytes right after
  /// it if nobody has them, so it keeps streaming. False when the stream has met bytes
  /// another path claimed (or the plan wants nothing more from path 0 now): it ends there.
  bool extend_first_stream(std::size_t index) {
    auto& w = work_[index];
    if (index != 0 || !first_stream_alive_ || !w.current || w.failed || stopping_) return false;
    const std::uint64_t end = w.current->end;
    auto next = claims_.lowest_unclaimed(end, window_end());
    std::optional<byte_range> range;
    if (next && next->begin == end)
      range = claim(index, claim_side::front, end, window_end(), clock_type::now());
    if (!range || range->begin != end) {
      if (range) give_back(index, *range);
      first_stream_alive_ = false;
      return false;
    }
    w.current->end = range->end;
    w.requested_end = range->end;
    return true;
  }

  /// The next range for path `index`, or nothing for now: what the plan gives it of the
  /// unclaimed bytes, else the tail of the range another path is slowly receiving.
  std::optional<byte_range> take_range(std::size_t index) {
    auto& w = work_[index];
    if (w.failed || stopping_) return std::nullopt;
    const auto now = clock_type::now();
    // While path 0 streams the head, the others fill the first window from its end.
    const bool from_back = first_stream_alive_ && index != 0;
    auto range =
        from_back ? claim(index, claim_side::back, buffer_.delivered(),
                          std::min(end_, begin_ + config_.scheduler.memory_per_session_bytes), now)
                  : std::nullopt;
    if (!range && !window_trickle())
      range = claim(index, claim_side::front, buffer_.delivered(), window_end(), now);
    if (!range) {
      if (claims_.lowest_unclaimed(window_end(), end_)) window_blocked_ = true;
      range = steal_tail(index);
    }
    return range;
  }

 private:
  /// No range is claimed past this: the app's delivery point plus the session's memory.
  std::uint64_t window_end() const {
    return std::min(end_, buffer_.delivered() + config_.scheduler.memory_per_session_bytes);
  }

  /// All that is left to claim in the window is a sliver at its end, which grows only as
  /// fast as a slow path delivers the bytes at the delivery point. Claiming it would keep
  /// a fast path busy with tiny requests at the slow path's pace — and never dry enough
  /// to take over the slow path's tail, which is what frees the window.
  bool window_trickle() const {
    const auto run = claims_.lowest_unclaimed(buffer_.delivered(), window_end());
    return run && run->end == window_end() && window_end() < end_ && run->size() < min_range_bytes;
  }

  /// DESIGN.md's cost rule, applied to what is left: T_tol bounds the whole download,
  /// so what is left of it shrinks as the download goes on (past it, the rule is equal
  /// completion, as for a download that needs cellular from the start).
  split_policy policy(clock_type::time_point now) const {
    const auto& sched = config_.scheduler;
    const double elapsed_s = std::chrono::duration<double>(now - started_).count();
    const double tolerance_s = static_cast<double>(sched.tolerance.count()) / 1e6;
    return {sched.mode == core::scheduler_mode::cost, std::max(0.0, tolerance_s - elapsed_s)};
  }

  std::optional<byte_range> claim(std::size_t index, claim_side side, std::uint64_t from,
                                  std::uint64_t limit, clock_type::time_point now) {
    std::vector<path_estimate> estimates(work_.size());
    for (std::size_t i = 0; i < work_.size(); ++i) {
      const auto& w = work_[i];
      estimates[i] = {w.failed ? 0.0 : w.live_rate(now), w.lead_s(now)};
    }
    claim_inputs in;
    in.path = index;
    in.paths = estimates;
    in.policy = policy(now);
    in.side = side;
    in.from = from;
    in.limit = limit;
    in.range_time_s = work_[index].range_time_s(config_.scheduler.range_time);
    in.min_range_bytes = min_range_bytes;
    auto range = choose_claim(claims_, in);
    if (!range) return std::nullopt;
    claims_.claim(*range);
    planned_share_[index] += range->size();
    return range;
  }

  /// DESIGN.md: "when a path runs dry while another still has a long tail, the tail of
  /// the slow path's range is re-requested on the free path". The split point is where
  /// both would finish together; the slow path stops there.
  std::optional<byte_range> steal_tail(std::size_t index) {
    // Worth a request even when small: the slow path may need seconds for it.
    constexpr std::uint64_t min_steal_bytes = 16 * 1024;
    const auto now = clock_type::now();
    auto& thief = work_[index];
    std::size_t victim = work_.size();
    double longest = 0;
    for (std::size_t i = 0; i < work_.size(); ++i) {
      const auto& w = work_[i];
      // A path with a pipelined request can't be cut short without losing that request.
      if (i == index || w.failed || !w.current || w.pipelined || w.current_left() < min_steal_bytes)
        continue;
      const double rate = std::max(w.live_rate(now), 1.0);
      const double time_left = static_cast<double>(w.current_left()) / rate;
      if (time_left > longest) {
        longest = time_left;
        victim = i;
      }
    }
    if (victim == work_.size() || longest <= thief.request_lead_s()) return std::nullopt;
    auto& slow = work_[victim];
    // The same rule as for claims, on the slow path's rest: paths in cost order, so in
    // cost mode a costlier thief gets nothing while the cheaper path finishes in time.
    const path_estimate slow_estimate{slow.live_rate(now), 0.0};
    const path_estimate thief_estimate{thief.live_rate(now), thief.request_lead_s()};
    const bool thief_cheaper = index < victim;
    const path_estimate both[] = {thief_cheaper ? thief_estimate : slow_estimate,
                                  thief_cheaper ? slow_estimate : thief_estimate};
    const split_plan plan = plan_split(slow.current_left(), both, policy(now));
    const std::uint64_t thief_share = plan.share_bytes[thief_cheaper ? 0 : 1];
    // Cutting the slow path's response throws away what it has in flight (about its
    // BDP): only worth it when the download ends clearly sooner.
    const double saved_s = longest - plan.completion_s;
    const double min_saving_s = std::max(0.05, 2 * slow.path->estimator.rtt_s());
    if (thief_share < min_steal_bytes || saved_s < min_saving_s) return std::nullopt;
    const std::uint64_t cut = slow.current->end - thief_share;
    const byte_range taken{cut, slow.current->end};
    spdlog::debug("path {} takes [{}, {}) from path {} ({:.2f} s left there)",
                  thief.path->config.name, cut, slow.current->end, slow.path->config.name, longest);
    slow.current->end = cut;
    if (victim == 0) first_stream_alive_ = false;
    planned_share_[victim] -= std::min(planned_share_[victim], taken.size());
    planned_share_[index] += taken.size();
    ++thief.stolen;
    return taken;
  }

  struct overlap_check {
    int source;               ///< path whose later range brought `later`
    std::vector<char> later;  ///< its overlap bytes, just before the check's offset
  };

  /// Compares the check at the delivery point; true when it passed (and is gone).
  bool check_at_delivery_point(std::map<std::uint64_t, overlap_check>::iterator gate) {
    const std::uint64_t at = gate->first;
    const overlap_check check = std::move(gate->second);
    checks_.erase(gate);
    const std::size_t n = std::min(check.later.size(), recent_.size());
    if (std::equal(check.later.end() - static_cast<std::ptrdiff_t>(n), check.later.end(),
                   recent_.end() - static_cast<std::ptrdiff_t>(n))) {
      return true;
    }
    // Two versions of the object (a stale cache on one path): the later range is
    // dropped, its path is done with this object and the rest comes from the others.
    ++mismatches_;
    const auto source = static_cast<std::size_t>(check.source);
    auto& later = work_[source];
    spdlog::warn(
        "path {}: its bytes before offset {} differ from what the app already has: another "
        "version of the object; dropping its ranges, the rest comes over the other paths",
        later.path->config.name, at);
    for (const auto& [begin, end] : buffer_.evict(at, check.source)) {
      later.bytes -= std::min(later.bytes, end - begin);
      give_back(source, {begin, end});
    }
    for (auto it = checks_.begin(); it != checks_.end();) {
      it = it->second.source == check.source ? checks_.erase(it) : std::next(it);
    }
    on_path_failed(source);
    later.cancel->emit(asio::cancellation_type::terminal);
    return false;
  }

  static constexpr std::uint64_t min_range_bytes = 64 * 1024;

  const core::config& config_;
  std::uint64_t total_;
  std::uint64_t begin_;
  std::uint64_t end_;
  std::vector<path_work> work_;
  reorder_buffer buffer_;
  claim_map claims_;
  /// Path 0 still reads its first response (the whole object) and it is still wanted.
  bool first_stream_alive_ = false;
  /// A path found nothing to claim only because of the memory window.
  bool window_blocked_ = false;
  clock_type::time_point started_ = clock_type::now();
  /// Bytes the scheduler gave each path, net of what moved (for logs and tests).
  std::vector<std::uint64_t> planned_share_;
  asio::steady_timer writer_wake_;
  bool stopping_ = false;
  std::map<std::uint64_t, overlap_check> checks_;  ///< by offset: overlaps not compared yet
  std::vector<char> recent_;                       ///< the last overlap_bytes delivered to the app
  std::uint64_t mismatches_ = 0;                   ///< overlaps that differed (two versions seen)
};

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
    parser.get().body().data = chunk.data();
    parser.get().body().size = chunk.size();
    up.stream.expires_after(as_duration(limits.io_timeout));
    // read_some, not read: return with whatever arrived, so a slow path shows progress
    // (and is not taken for stalled) long before it fills a whole chunk.
    auto [ec, n] = co_await http::async_read_some(up.stream, up.buffer, parser, nothrow);
    if (ec == http::error::need_buffer) ec = {};
    if (ec) co_return ec;
    if (fetch.stopping()) co_return asio::error::operation_aborted;
    const std::size_t got = chunk.size() - parser.get().body().size;
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

/// What the first path already opened: its connection, mid-body, at offset 0.
struct initial_stream {
  upstream up;
  std::unique_ptr<http::response_parser<http::buffer_body>> parser;
  /// The response is the head we asked for, not the whole object: it ends by itself and
  /// the connection goes on with the path's next ranges.
  bool bounded = false;
};

/// A connection a path opens while the first path still waits for its response header,
/// so that, if the object is split, the path's first range goes out at once instead of
/// a handshake later (a whole RTT of the path: 120 ms on a slow cellular link). The
/// connecting coroutine owns it until `result` is set; then the path's fetcher takes it.
struct early_connection {
  explicit early_connection(const asio::any_io_executor& executor)
      : up(executor), ready(executor) {}
  upstream up;
  std::optional<error_code> result;  ///< set when the connect has ended
  bool abandoned = false;            ///< nobody will take it: close it when it connects
  asio::steady_timer ready;          ///< cancelled when `result` is set
};

/// Connects `early` on the path (resolving the host there first).
awaitable<void> async_connect_early(std::shared_ptr<early_connection> early, path_runtime& path,
                                    proxy_target target, core::proxy_config limits) {
  auto ec = co_await async_connect_to_target(early->up, path, target, limits,
                                             /*to_destination=*/false);
  if (!ec && early->abandoned) early->up.reset();
  early->result = early->abandoned ? error_code(asio::error::operation_aborted) : ec;
  early->ready.cancel();
}

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
  const std::string url = fmt::format("http://{}{}", target.authority, target.origin_form);
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
      auto ec = co_await async_connect_to_target(up, path, target, limits, index == 0);
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
        if (auto ec = co_await async_connect_to_target(up, path, target, limits, index == 0)) {
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

/// The app's side of a multipath fetch: writes bytes in order as they become contiguous.
/// Returns false if the object could not be completed (the caller resets the app).
awaitable<bool> async_deliver_in_order(object_fetch& fetch, beast::tcp_stream& app) {
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
    app.expires_after(as_duration(limits.io_timeout));
    auto [ec, n] = co_await asio::async_write(app, writes, nothrow);
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
  std::size_t first_index = paths.size();
  bool reused = false;
  if (ctx.kept && !has_body && ctx.kept->serves(paths[0], ctx.target) && ctx.kept->up.is_open()) {
    first.adopt(ctx.kept->up);
    first_index = 0;
    reused = true;
  }
  ctx.kept.reset();
  error_code connect_ec;
  for (std::size_t i = 0; i < paths.size() && !reused; ++i) {
    connect_ec = co_await async_connect_to_target(first, *paths[i], ctx.target, limits, i == 0);
    if (!connect_ec) {
      first_index = i;
      break;
    }
    spdlog::warn("[{}] path {}: cannot reach {}:{}: {}", ctx.session_id, paths[i]->config.name,
                 ctx.target.host, ctx.target.port, connect_ec.message());
  }
  if (first_index == paths.size()) {
    const bool timed_out =
        connect_ec == beast::error::timeout || connect_ec == dns::errc::timed_out;
    co_await async_write_error(
        ctx.app, timed_out ? http::status::gateway_timeout : http::status::bad_gateway,
        fmt::format("cannot reach {}: {}", ctx.target.authority, connect_ec.message()),
        ctx.request.version(), limits);
    co_return false;
  }
  // The first path goes to the front; the others keep their order.
  std::rotate(paths.begin(), paths.begin() + static_cast<std::ptrdiff_t>(first_index),
              paths.begin() + static_cast<std::ptrdiff_t>(first_index) + 1);
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
      ec =
          co_await async_connect_to_target(first, first_path, ctx.target, limits, first_index == 0);
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

  for (std::size_t i = 0; i < paths.size(); ++i) {
    std::optional<initial_stream> initial;
    if (i == 0)
      initial.emplace(initial_stream{std::move(first), std::move(parser), app_view.has_value()});
    ++fetch.running;
    asio::co_spawn(
        executor,
        run_path_fetcher(fetch, i, ctx.request, ctx.target, validator, std::move(initial),
                         i == 0 ? first_range_end : 0, i == 0 ? nullptr : early_for(paths[i])),
        asio::bind_cancellation_slot(fetch.work()[i].cancel->slot(),
                                     [&fetch, i](std::exception_ptr error) {
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

  ++ctx.proxy.fetches_active;
  const bool delivered = co_await async_deliver_in_order(fetch, ctx.app);
  spdlog::debug("[{}] delivery ended", ctx.session_id);
  fetch.stop();
  while (fetch.running > 0) {
    co_await async_wait_for_wake(fetch.writer_wake(), std::chrono::milliseconds(200));
  }
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
  asio::co_spawn(executor, pump(app, up.stream, up_bytes), finish);
  asio::co_spawn(executor, pump(up.stream, app, down_bytes), finish);
  while (left > 0) co_await async_wait_for_wake(done, std::chrono::seconds(1));
  used->bytes_received += down_bytes;
}

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
