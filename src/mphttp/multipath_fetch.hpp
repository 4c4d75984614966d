#pragma once
// The multipath fetch of one object (paper §4.2, §4.3), shared by the proxy (proxy.cpp:
// bytes to the app's connection) and the download client (client.cpp: bytes to a file):
// upstream connections on a path, plain or TLS; each path's fetcher of range requests;
// the in-order delivery with the consistency verifier. Internal to src/mphttp: the
// public interfaces are proxy.hpp and client.hpp.

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "mphttp/claim_map.hpp"
#include "mphttp/http_rules.hpp"
#include "mphttp/proxy.hpp"
#include "mphttp/reorder_buffer.hpp"
#include "mphttp/scheduler.hpp"
#include "net/bound_socket.hpp"

namespace fleety::mphttp::detail {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::awaitable;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using clock_type = std::chrono::steady_clock;
inline constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);

inline constexpr std::size_t chunk_bytes = 64 * 1024;
/// The head range a GET asks for is min_split_size, at least this.
inline constexpr std::uint64_t min_head_range_bytes = 256 * 1024;
inline constexpr std::uint32_t header_limit_bytes = 64 * 1024;
inline constexpr std::uint64_t max_write_bytes = 1 << 20;  ///< one gathered write to the sink

inline clock_type::duration as_duration(std::chrono::microseconds us) {
  return us;
}

inline double seconds_of(clock_type::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

/// TLS over an upstream's TCP connection (the download client's https://). An interface,
/// so that the engine and fleetyd don't link OpenSSL: client.cpp has the implementation.
class tls_session {
 public:
  using handler = asio::any_completion_handler<void(error_code, std::size_t)>;
  virtual ~tls_session() = default;
  virtual beast::tcp_stream& tcp() = 0;
  virtual void read_some(asio::mutable_buffer buffer, handler done) = 0;
  virtual void write_some(asio::const_buffer buffer, handler done) = 0;
};

/// The byte stream of an upstream connection: plain TCP, or TLS over it. An Asio
/// AsyncStream either way, so Beast reads and writes both alike; timeouts and the socket
/// are the TCP layer's.
class upstream_stream {
 public:
  using executor_type = beast::tcp_stream::executor_type;

  explicit upstream_stream(const asio::any_io_executor& executor) : plain_(executor) {}

  beast::tcp_stream& tcp_layer() { return tls_ ? tls_->tcp() : plain_; }
  tcp::socket& socket() { return tcp_layer().socket(); }
  void expires_after(clock_type::duration timeout) { tcp_layer().expires_after(timeout); }
  void expires_never() { tcp_layer().expires_never(); }
  executor_type get_executor() { return plain_.get_executor(); }

  /// The connected socket, for a TLS session to take over (then start_tls).
  tcp::socket release_socket() { return std::move(plain_.socket()); }
  void start_tls(std::unique_ptr<tls_session> session) { tls_ = std::move(session); }
  /// Forgets the TLS layer of a connection closed already.
  void drop_tls() { tls_.reset(); }
  /// Takes over `other`'s connection (a tcp_stream can't be assigned: its socket is
  /// moved, which leaves `other` closed).
  void adopt(upstream_stream& other) {
    plain_.socket() = std::move(other.plain_.socket());
    tls_ = std::move(other.tls_);
  }

  template <class MutableBuffers, class Token>
  auto async_read_some(const MutableBuffers& buffers, Token&& token) {
    return asio::async_initiate<Token, void(error_code, std::size_t)>(
        [this](auto handler, const MutableBuffers& b) {
          if (!tls_) {
            plain_.async_read_some(b, std::move(handler));
            return;
          }
          // read_some may fill fewer bytes than offered: the first buffer is enough.
          asio::mutable_buffer first;
          for (auto it = asio::buffer_sequence_begin(b); it != asio::buffer_sequence_end(b); ++it) {
            first = *it;
            if (first.size() > 0) break;
          }
          tls_->read_some(first, std::move(handler));
        },
        token, buffers);
  }
  template <class ConstBuffers, class Token>
  auto async_write_some(const ConstBuffers& buffers, Token&& token) {
    return asio::async_initiate<Token, void(error_code, std::size_t)>(
        [this](auto handler, const ConstBuffers& b) {
          if (!tls_) {
            plain_.async_write_some(b, std::move(handler));
            return;
          }
          // write_some may take fewer bytes than offered: a header's many small pieces go
          // as one TLS record, copied together (bounded), not one record each.
          const std::size_t total = asio::buffer_size(b);
          if (asio::buffer_sequence_begin(b) != asio::buffer_sequence_end(b) &&
              asio::const_buffer(*asio::buffer_sequence_begin(b)).size() == total) {
            tls_->write_some(*asio::buffer_sequence_begin(b), std::move(handler));
            return;
          }
          write_scratch_.resize(std::min<std::size_t>(total, max_tls_gather_bytes));
          const std::size_t n = asio::buffer_copy(asio::buffer(write_scratch_), b);
          tls_->write_some(asio::buffer(write_scratch_.data(), n), std::move(handler));
        },
        token, buffers);
  }

 private:
  static constexpr std::size_t max_tls_gather_bytes = 16 * 1024;  ///< one TLS record
  beast::tcp_stream plain_;  ///< the connection while it is plain (closed under TLS)
  std::unique_ptr<tls_session> tls_;
  std::vector<char> write_scratch_;  ///< pieces gathered for one TLS write
};

/// An HTTP/1.1 connection to a server over one path. Owned by one coroutine frame.
struct upstream {
  upstream_stream stream;
  beast::flat_buffer buffer;
  /// The path monitor reads the connection's TCP_INFO while it is open (declared after
  /// the stream: it goes first).
  path::monitor::watch measured;

  explicit upstream(const asio::any_io_executor& executor) : stream(executor) {}
  bool is_open() { return stream.socket().is_open(); }
  void reset() {
    measured = path::monitor::watch{};
    net::close_with_reset(stream.socket());
    stream.drop_tls();
    buffer.clear();
  }
  /// Takes over `other`'s connection and what it buffered.
  void adopt(upstream& other) {
    stream.adopt(other.stream);
    buffer = std::move(other.buffer);
    measured = std::move(other.measured);
  }
};

/// Puts TLS on fresh connections: the handshake for `host` on `up`'s connection, after
/// which up.stream carries TLS (client.cpp: SNI, the chain and the name verified).
class tls_connector {
 public:
  virtual ~tls_connector() = default;
  virtual awaitable<error_code> async_handshake(upstream& up, const std::string& host,
                                                const core::proxy_config& limits) = 0;
};

/// How connections of a fetch are secured: nothing (http://), or TLS by `connector` on
/// every path (https://, the download client only: the proxy relays TLS as bytes it
/// cannot read).
struct tls_client {
  tls_connector* connector = nullptr;
  explicit operator bool() const { return connector != nullptr; }
};

/// A response parser with our limits: headers up to 64 KiB, bodies of any length (we
/// stream them), no body expected for a HEAD.
std::unique_ptr<http::response_parser<http::buffer_body>> make_response_parser(bool head_request);

/// Waits until `timer` is cancelled (someone's notify) or `timeout` passes.
awaitable<void> async_wait_for_wake(asio::steady_timer& timer, clock_type::duration timeout);

/// Connects a socket bound to the path's interface to `endpoint`.
awaitable<error_code> async_connect_endpoint(upstream& up, path_runtime& path,
                                             const tcp::endpoint& endpoint,
                                             const core::proxy_config& limits);

/// Resolves `host` through the path and connects a socket bound to the path's interface.
awaitable<error_code> async_connect_on_path(upstream& up, path_runtime& path,
                                            const std::string& host, std::uint16_t port,
                                            const core::proxy_config& limits);

/// Connects on `path` to where `target` is served: the app's own destination when
/// `to_destination` (the first path of an intercepted request: the app chose it), else
/// the path's counterpart of that destination, else the path's own resolver's answer for
/// the host (each path to its own CDN, paper §4.1), falling back to the app's destination
/// when the host doesn't resolve there. With `tls`, then the TLS handshake: SNI and the
/// certificate checked for target.host, whichever server of the path answers.
awaitable<error_code> async_connect_to_target(upstream& up, path_runtime& path,
                                              const proxy_target& target,
                                              const core::proxy_config& limits, bool to_destination,
                                              tls_client tls = {});

/// Where a request's first connection went: every path tried before it and why it failed.
struct first_connect {
  bool connected = false;
  std::size_t index = 0;  ///< where the path that connected was in preference order
  std::vector<std::pair<const path_runtime*, error_code>> failures;  ///< in the order tried
};

/// Connects `up` on the first of `paths` (preference order) that reaches `target` and
/// moves that path to the front; the others keep their order. The first path goes to the
/// app's own destination (async_connect_to_target's to_destination).
awaitable<first_connect> async_connect_first(upstream& up, std::vector<path_runtime*>& paths,
                                             const proxy_target& target,
                                             const core::proxy_config& limits, tls_client tls = {});

/// Reads what has arrived of a response's body (header already in `parser`) into `chunk`:
/// read_some, not read, so that a slow path shows progress (and is not taken for stalled)
/// long before it fills a whole chunk. Returns the bytes it got (0: only framing came).
awaitable<std::pair<error_code, std::size_t>> async_read_body_some(
    upstream& up, http::response_parser<http::buffer_body>& parser, std::span<char> chunk,
    const core::proxy_config& limits);

/// The request a path sends upstream: the app's end-to-end fields, origin-form target.
http::request<http::empty_body> upstream_request(const request_header& app_request,
                                                 const proxy_target& target);

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
  /// With `tls`, every connection of the fetch is TLS (fleety get's https://).
  object_fetch(const asio::any_io_executor& executor, const core::config& config,
               std::vector<path_runtime*> paths, std::uint64_t total, std::uint64_t begin,
               std::uint64_t end, tls_client tls = {})
      : config_(config),
        tls_(tls),
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
  tls_client tls() const { return tls_; }
  std::uint64_t total() const { return total_; }
  std::uint64_t begin() const { return begin_; }
  std::uint64_t end() const { return end_; }
  reorder_buffer& buffer() { return buffer_; }
  std::uint64_t delivered() const { return buffer_.delivered(); }
  std::vector<path_work>& work() { return work_; }
  const std::vector<path_work>& work() const { return work_; }
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
  tls_client tls_;
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
                                    proxy_target target, core::proxy_config limits,
                                    tls_client tls = {});

/// Where a multipath fetch's bytes go, in order: the app's connection (the proxy) or a
/// file (the download client). Returns the bytes it took; an error ends the fetch.
using byte_sink = std::function<awaitable<std::pair<error_code, std::size_t>>(
    const std::vector<asio::const_buffer>&)>;

/// What one multipath fetch starts from: the request every path's ranges repeat, where
/// it goes, the first response's validator (If-Range), path 0's response already under
/// way and where its first range ends, and the other paths' early connections (by path
/// index; may be shorter, or hold nulls).
struct fetch_start {
  const request_header& request;
  const proxy_target& target;
  std::string validator;
  initial_stream initial;
  std::uint64_t first_range_end = 0;
  std::vector<std::shared_ptr<early_connection>> early;
};

/// Runs `fetch` to its end: one fetcher per path, the bytes in order into `sink`, every
/// overlap compared before the bytes after it go out. True when the sink got every byte
/// of [fetch.begin(), fetch.end()); returns only after every fetcher has ended.
awaitable<bool> async_run_fetch(object_fetch& fetch, fetch_start start, const byte_sink& sink);

}  // namespace fleety::mphttp::detail
