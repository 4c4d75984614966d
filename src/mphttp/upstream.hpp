#pragma once
// Connections to servers over one path, shared by the proxy (proxy.cpp), the multipath
// fetch (multipath_fetch.cpp) and the download client (client.cpp): the byte stream
// (plain TCP, or TLS behind an interface so that fleetyd links no OpenSSL), how a path
// connects to where a request's target is served there, and the HTTP/1.1 exchanges on
// such a connection. Internal to src/mphttp: the public interfaces are proxy.hpp and
// client.hpp.

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
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
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "mphttp/byte_range.hpp"
#include "mphttp/fetch_state.hpp"
#include "mphttp/http_rules.hpp"
#include "mphttp/proxy.hpp"
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

inline constexpr std::uint32_t header_limit_bytes = 64 * 1024;
/// The head range a GET asks for is min_split_size, at least this.
inline constexpr std::uint64_t min_head_range_bytes = 256 * 1024;
/// The most "auto" makes min_split_size: an object this big is split whatever the
/// estimates say (they may be stale; the fetch's plan still gives a path nothing when it
/// would not help).
inline constexpr std::uint64_t max_auto_split_bytes = 8 * 1000 * 1000;
/// Issue 17, split when it pays: objects smaller than this come on one path. The config's
/// min_split_size when it sets one; "auto" (the default): split_pays_bytes over the paths'
/// estimates (paths[0] first), a split having to save at least the first path's round trip.
/// `others_connected`: the other paths have a connection open already (early or warm),
/// so each pays its request's round trip and slow start; else a handshake too. In cost
/// mode at least what the first path alone fetches within the tolerance (cellular only
/// when it shortens the fetch beyond it). Within [min_head_range_bytes,
/// max_auto_split_bytes].
std::uint64_t split_threshold_bytes(std::span<path_runtime* const> paths,
                                    const core::scheduler_config& scheduler, bool others_connected);

/// A host that served an object this big (splittable, split or not) lately is predicted
/// to serve more: its next GETs get the other paths ready and a small head range.
inline constexpr std::uint64_t predicted_download_bytes = 512 * 1024;
/// A response relayed on one path this big is a sample of the path's rate.
inline constexpr std::uint64_t min_rate_sample_bytes = 256 * 1024;
/// The least a path asks for before the first answer (split without waiting): less is
/// not worth its request.
inline constexpr std::uint64_t min_asked_range_bytes = 64 * 1024;
/// Of its share of a download of the host's usual size, what a path keeps back from its
/// request before the first answer: claimed as the fetch goes, at the rates it measures
/// then. About a rate estimate's error: a plan from the estimates alone left cellular
/// 60–80 ms behind Wi-Fi on 10 MB at 50/20 (its rate 8 % off).
inline constexpr double kept_back_share = 0.1;
/// Only downloads expected to be at most this big are split before the first answer while
/// a path's rate is a default, not a measured one: a plan from defaults could give a slow
/// path a big range that the fast one then takes over. With every rate measured (lately,
/// or from the history after a restart) the bound is the session's memory.
inline constexpr std::uint64_t max_asked_ahead_bytes = 8 * 1000 * 1000;
/// A first contact's predicted download, its size unknown: the first other path asks for
/// its last this many bytes as soon as it is connected (split without waiting), so that
/// its first byte comes with the first path's, not a round trip after it. About what a
/// new connection brings in its first round trips while the fetch plans its next range;
/// a wrong guess (a small object, not split) costs at most this much.
inline constexpr std::uint64_t suffix_ask_bytes = 192 * 1024;
/// An asked range nobody took is read to its end (to keep its connection warm) when its
/// answer is at most this long; a longer one is cut.
inline constexpr std::uint64_t max_unused_answer_bytes = 256 * 1024;
/// At most this many interim (1xx) responses before the final one: a server that sends
/// more is broken or hostile.
inline constexpr int max_interim_responses = 8;

inline clock_type::duration as_duration(std::chrono::microseconds us) {
  return us;
}

/// TLS over an upstream's TCP connection (the download client's https://). An interface,
/// so that the engine and fleetyd don't link OpenSSL: client.cpp has the implementation;
/// tests put an in-memory server behind it.
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
  bool has_tls() const { return tls_ != nullptr; }
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

/// One connection counted against its host's limit on its path (connection_pool): the
/// count goes down when the connection closes. Move-only.
class connection_slot {
 public:
  connection_slot() = default;
  explicit connection_slot(std::shared_ptr<std::size_t> count) : count_(std::move(count)) {
    ++*count_;
  }
  connection_slot(connection_slot&& other) noexcept : count_(std::move(other.count_)) {}
  connection_slot& operator=(connection_slot&& other) noexcept {
    if (this != &other) {
      release();
      count_ = std::move(other.count_);
    }
    return *this;
  }
  connection_slot(const connection_slot&) = delete;
  connection_slot& operator=(const connection_slot&) = delete;
  ~connection_slot() { release(); }
  void release() {
    if (count_) --*count_;
    count_.reset();
  }

 private:
  std::shared_ptr<std::size_t> count_;  ///< shared with the pool's count for the host
};

/// An HTTP/1.1 connection to a server over one path. Owned by one coroutine frame (or,
/// while idle, by the connection pool).
struct upstream {
  upstream_stream stream;
  beast::flat_buffer buffer;
  /// The path monitor reads the connection's TCP_INFO while it is open (declared after
  /// the stream: it goes first).
  path::monitor::watch measured;
  /// Counted against its host's connection limit on its path while open.
  connection_slot slot;
  /// Taken idle from the pool: the server may have closed it meanwhile (RFC 9112 §9.3.1),
  /// so a request without a body that gets no answer on it goes again on a new one.
  bool reused = false;

  explicit upstream(const asio::any_io_executor& executor) : stream(executor) {}
  bool is_open() { return stream.socket().is_open(); }
  /// Closes with a reset (the rest of a response is not wanted) and forgets what it held.
  void reset();
  /// Takes over `other`'s connection and what it buffered.
  void adopt(upstream& other) {
    stream.adopt(other.stream);
    buffer = std::move(other.buffer);
    measured = std::move(other.measured);
    slot = std::move(other.slot);
    reused = std::exchange(other.reused, false);
  }
  /// Whether another request may follow on this connection now: open, the last response
  /// read to its end (`parser` done; none: no request yet) with keep-alive, nothing
  /// buffered past it.
  bool reusable_after(const http::response_parser<http::buffer_body>* parser) {
    return is_open() && buffer.size() == 0 &&
           (parser == nullptr || (parser->is_done() && parser->keep_alive()));
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

/// How the connections of a request are opened: on a path, to where the request's target
/// is served there. The one seam between a fetch and the network: path_connector is the
/// real one; tests plug in in-memory servers.
class upstream_connector {
 public:
  virtual ~upstream_connector() = default;
  /// Connects `up` on `path` for `target`: to the app's own destination when
  /// `to_destination` (the path whose resolver gave the app that address), else to the
  /// path's own server for the host (paper §4.1: each path its own CDN node).
  virtual awaitable<error_code> async_connect(upstream& up, path_runtime& path,
                                              const proxy_target& target, bool to_destination) = 0;
  /// `up` is done with (idle, reusable_after its last response): for the next request to
  /// the same place on the path (a pool keeps it), or closed.
  virtual void release(upstream& up, path_runtime& path, const proxy_target& target,
                       bool to_destination) {
    (void)path;
    (void)target;
    (void)to_destination;
    up.reset();
  }
  /// The local user whose flow the connections are for (their sockets are theirs); none:
  /// fleetyd's own.
  virtual std::optional<net::socket_user> user() const { return std::nullopt; }
  /// `up`, at the end of its use: released if reusable_after `parser`, else reset.
  void finish_with(upstream& up, const http::response_parser<http::buffer_body>* parser,
                   path_runtime& path, const proxy_target& target, bool to_destination) {
    if (up.reusable_after(parser)) {
      release(up, path, target, to_destination);
    } else {
      up.reset();
    }
  }
};

/// The real connector: sockets bound to the path's interface, each path to its own
/// server, with TLS when `tls` is set (fleety get's https://; the proxy relays TLS as
/// bytes it cannot read, so its connector has none).
class path_connector final : public upstream_connector {
 public:
  /// `user`: the app's user, whose owner rules then apply to the sockets (issue 18).
  path_connector(const core::proxy_config& limits, tls_connector* tls = nullptr,
                 std::optional<net::socket_user> user = std::nullopt)
      : limits_(limits), tls_(tls), user_(user) {}
  awaitable<error_code> async_connect(upstream& up, path_runtime& path, const proxy_target& target,
                                      bool to_destination) override;
  std::optional<net::socket_user> user() const override { return user_; }
  bool tls() const { return tls_ != nullptr; }

 private:
  const core::proxy_config& limits_;
  tls_connector* tls_;
  std::optional<net::socket_user> user_;
};

/// Connects a socket bound to the path's interface to `endpoint`; the path's estimator
/// learns the handshake's RTT, and the monitor watches the connection.
/// `user`: whose socket it is (net::scoped_socket_user); none: fleetyd's.
awaitable<error_code> async_connect_endpoint(upstream& up, path_runtime& path,
                                             const tcp::endpoint& endpoint,
                                             const core::proxy_config& limits,
                                             std::optional<net::socket_user> user = std::nullopt);

/// Resolves `host` through the path and connects a socket bound to the path's interface.
awaitable<error_code> async_connect_on_path(upstream& up, path_runtime& path,
                                            const std::string& host, std::uint16_t port,
                                            const core::proxy_config& limits,
                                            std::optional<net::socket_user> user = std::nullopt);

/// Where a request's first connection went: every path tried before it and why it failed.
struct first_connect {
  bool connected = false;
  std::size_t index = 0;  ///< where the path that connected was in preference order
  std::vector<std::pair<const path_runtime*, error_code>> failures;  ///< in the order tried
};

/// Connects `up` on the first of `paths` (preference order) that reaches `target` and
/// moves that path to the front; the others keep their order. The preferred path
/// (paths[0] before the move) goes to the app's own destination.
awaitable<first_connect> async_connect_first(upstream& up, std::vector<path_runtime*>& paths,
                                             const proxy_target& target,
                                             upstream_connector& connector);

/// A response parser with our limits: headers up to 64 KiB, bodies of any length (we
/// stream them), no body expected for a HEAD.
std::unique_ptr<http::response_parser<http::buffer_body>> make_response_parser(bool head_request);

/// Called with each interim response (1xx but 101) before the final one.
using interim_handler = std::function<awaitable<void>(const response_header&)>;

/// Reads the final response header into `parser`, past interim 1xx responses (101 is
/// final: an Upgrade's answer) — at most max_interim_responses of them, each given to
/// `on_interim` (may be empty) — each header within `timeout`.
awaitable<error_code> async_read_final_header(
    upstream& up, std::unique_ptr<http::response_parser<http::buffer_body>>& parser,
    bool head_request, clock_type::duration timeout, const interim_handler& on_interim = {});

/// Reads what has arrived of a response's body (header already in `parser`) into `chunk`:
/// read_some, not read, so that a slow path shows progress (and is not taken for stalled)
/// long before it fills a whole chunk. Returns the bytes it got (0: only framing came).
awaitable<std::pair<error_code, std::size_t>> async_read_body_some(
    upstream& up, http::response_parser<http::buffer_body>& parser, std::span<char> chunk,
    const core::proxy_config& limits);

/// The request a path sends upstream: the app's end-to-end fields, origin-form target.
http::request<http::empty_body> upstream_request(const request_header& app_request,
                                                 const proxy_target& target);

/// The range request for `range`, starting `overlap` bytes early, with If-Range
/// `validator` (if any; never the app's own If-Range).
http::request<http::empty_body> range_request(const request_header& app_request,
                                              const proxy_target& target,
                                              const std::string& validator, byte_range range,
                                              std::uint64_t overlap);

/// The request for the object's last `suffix_bytes` and `overlap` before them
/// (`bytes=-N`, RFC 9110 §14.1.1): the one range that needs no size. No If-Range.
http::request<http::empty_body> suffix_range_request(const request_header& app_request,
                                                     const proxy_target& target,
                                                     std::uint64_t suffix_bytes,
                                                     std::uint64_t overlap);

/// Sends a range request for `range`, starting `overlap` bytes early, with If-Range
/// `validator` (if any), on `up`.
awaitable<error_code> async_request_range(upstream& up, const request_header& app_request,
                                          const proxy_target& target, const std::string& validator,
                                          byte_range range, std::uint64_t overlap,
                                          const core::proxy_config& limits);

/// Waits until `timer` is cancelled (someone's wake) or `timeout` passes.
awaitable<void> async_wait_for_wake(asio::steady_timer& timer, clock_type::duration timeout);

/// A connection a path opens in the background: before the split is known (so that, if
/// the object is split, the path's first range goes out at once instead of a handshake
/// later: a whole RTT of the path, 120 ms on a slow cellular link), or path 0's spare
/// while its first response streams. The connecting task owns `up` until `result` is
/// set; then the path's fetcher may take it.
struct early_connection {
  explicit early_connection(const asio::any_io_executor& executor)
      : up(executor), ready(executor) {}
  upstream up;
  std::optional<error_code> result;  ///< set when the connect has ended
  bool abandoned = false;            ///< nobody will take it: released when it connects
  asio::steady_timer ready;          ///< cancelled when `result` is set
  /// Where an unused connection goes (the connector's release: a pool keeps it warm for
  /// the host's next request on the path); set by async_connect_early.
  std::function<void(upstream&)> release_unused;
  /// Issue 17, split without waiting: a range request to send as soon as it connects —
  /// this path's guessed part of a predicted download — while `may_ask` (cleared once the
  /// first answer is in: then the fetch plans). `asked`: it went out, its answer pending.
  struct range_ask {
    http::request<http::empty_body> request;
    speculative_ask part;  ///< what the request asks for, as the fetch takes it
  };
  std::optional<range_ask> ask;
  bool may_ask = true;
  bool asked = false;
  /// Nobody takes its asked range (the object was smaller, or not split): the answer
  /// pending on it — a 416, or a short 206 — is read and the connection released (it
  /// stays warm for the host's next segment), by a task this starts; unset: closed.
  std::function<void()> release_after_answer;
  bool reading_answer = false;  ///< that task has the connection now
  /// Nobody takes it: released now if connected (if an answer is pending, once that is
  /// read), else as soon as it connects.
  void abandon() {
    abandoned = true;
    if (!up.is_open() || reading_answer) return;
    if (asked) {
      // (Only once the request is out: a write under way can't be read behind.)
      if (release_after_answer && result && !*result) {
        reading_answer = true;
        std::exchange(release_after_answer, nullptr)();
      } else {
        up.reset();
      }
      return;
    }
    if (release_unused && up.reusable_after(nullptr)) {
      release_unused(up);
    } else {
      up.reset();
    }
  }
};

/// Reads the answer pending on `early`'s connection (its asked range nobody took): at
/// most `max_body` bytes of body, each read within `timeout`; then the connection is
/// released for reuse if the answer ended with keep-alive, else closed.
awaitable<void> async_release_after_answer(std::shared_ptr<early_connection> early,
                                           std::uint64_t max_body, clock_type::duration timeout);

/// Connects `early` on the path (its own server for the target). Spawn it in a task group
/// that outlives the fetch that may take the connection.
awaitable<void> async_connect_early(std::shared_ptr<early_connection> early, path_runtime& path,
                                    proxy_target target, upstream_connector& connector,
                                    bool to_destination);

}  // namespace fleety::mphttp::detail
