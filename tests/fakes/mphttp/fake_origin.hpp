#pragma once
// An in-memory origin behind the fetch's one network seam (upstream_connector): each
// connection is a scripted byte stream (a tls_session, so the real upstream_stream and
// Beast's parsers run unchanged) that answers HTTP/1.1 range requests for one object the
// way the scenario says — in small pieces, closing after each response, answering 200 to
// a range, breaking after so many bytes. No sockets, no timers: reads complete as soon as
// bytes are there, and a read that waits ends when its operation is cancelled.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/http.hpp>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "mphttp/upstream.hpp"

namespace fleety::mphttp::testing {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using boost::system::error_code;

/// How one path's server behaves.
struct origin_script {
  std::size_t piece_bytes = 4096;  ///< the most one read returns
  bool closes_after_each_response = false;
  bool answers_200_to_ranges = false;
  /// The connection breaks (connection_reset) once it sent this many bytes in all.
  std::optional<std::uint64_t> breaks_after_bytes{};
  /// The connection goes silent (no byte, no error) once it sent this many bytes.
  std::optional<std::uint64_t> silent_after_bytes{};
  /// The node's ETag; a range request whose If-Range differs gets the whole object.
  std::string etag = "\"v1\"";
};

/// What a path's server saw.
struct origin_log {
  int connections = 0;
  int requests = 0;
  std::vector<std::string> ranges;    ///< each request's Range field
  std::vector<std::string> if_range;  ///< and its If-Range
};

/// One connection to the origin: requests in, responses out.
class fake_connection final : public detail::tls_session {
 public:
  fake_connection(asio::ip::tcp::socket socket, const std::vector<char>& object,
                  const origin_script& script, origin_log& log)
      : tcp_(std::move(socket)), object_(object), script_(script), log_(log) {
    parser_.emplace();
  }

  beast::tcp_stream& tcp() override { return tcp_; }

  void read_some(asio::mutable_buffer buffer, handler done) override {
    pending_buffer_ = buffer;
    pending_read_.emplace(std::move(done));
    auto slot = asio::get_associated_cancellation_slot(*pending_read_);
    if (slot.is_connected()) {
      slot.assign([this](asio::cancellation_type) {
        if (pending_read_) complete_read(asio::error::operation_aborted, 0);
      });
    }
    try_read();
  }

  void write_some(asio::const_buffer buffer, handler done) override {
    const auto* data = static_cast<const char*>(buffer.data());
    input_.insert(input_.end(), data, data + buffer.size());
    parse_requests();
    post(std::move(done), error_code{}, buffer.size());
    try_read();
  }

 private:
  void post(handler h, error_code ec, std::size_t n) {
    // (The coroutines' handlers run on the io_context's executor, as the stream does.)
    asio::post(tcp_.get_executor(), [h = std::move(h), ec, n]() mutable { std::move(h)(ec, n); });
  }

  void complete_read(error_code ec, std::size_t n) {
    auto slot = asio::get_associated_cancellation_slot(*pending_read_);
    if (slot.is_connected()) slot.clear();
    handler h(std::move(*pending_read_));
    pending_read_.reset();
    post(std::move(h), ec, n);
  }

  void try_read() {
    if (!pending_read_) return;
    if (script_.breaks_after_bytes && sent_ >= *script_.breaks_after_bytes) {
      complete_read(asio::error::connection_reset, 0);
      return;
    }
    if (script_.silent_after_bytes && sent_ >= *script_.silent_after_bytes) return;
    if (output_.empty()) {
      if (closed_) complete_read(asio::error::eof, 0);
      return;  // waits for a request
    }
    std::size_t n = std::min({pending_buffer_.size(), script_.piece_bytes, output_.size()});
    for (const auto& limit : {script_.breaks_after_bytes, script_.silent_after_bytes})
      if (limit) n = static_cast<std::size_t>(std::min<std::uint64_t>(n, *limit - sent_));
    std::copy_n(output_.begin(), n, static_cast<char*>(pending_buffer_.data()));
    output_.erase(output_.begin(), output_.begin() + static_cast<std::ptrdiff_t>(n));
    sent_ += n;
    complete_read(error_code{}, n);
  }

  void parse_requests() {
    while (!input_.empty() && !closed_after_response_) {
      error_code ec;
      const auto used = parser_->put(asio::buffer(input_.data(), input_.size()), ec);
      if (ec == http::error::need_more) return;
      input_.erase(input_.begin(), input_.begin() + static_cast<std::ptrdiff_t>(used));
      if (ec) return;
      if (!parser_->is_done()) return;
      respond(parser_->get());
      parser_.emplace();
    }
  }

  void respond(const http::request<http::empty_body>& request) {
    ++log_.requests;
    const std::string range(request[http::field::range]);
    const std::string if_range(request[http::field::if_range]);
    log_.ranges.push_back(range);
    log_.if_range.push_back(if_range);
    std::uint64_t first = 0;
    std::uint64_t last = object_.size() - 1;
    bool partial = false;
    // RFC 9110 §13.1.5: a validator that doesn't match means the whole object.
    const bool if_range_holds = if_range.empty() || if_range == script_.etag;
    if (!range.empty() && !script_.answers_200_to_ranges && if_range_holds) {
      // "bytes=a-b" or "bytes=a-"
      const auto dash = range.find('-');
      first = std::stoull(range.substr(6, dash - 6));
      if (dash + 1 < range.size())
        last = std::min<std::uint64_t>(std::stoull(range.substr(dash + 1)), last);
      partial = true;
    }
    http::response<http::empty_body> head{
        partial ? http::status::partial_content : http::status::ok, 11};
    head.set(http::field::accept_ranges, "bytes");
    head.set(http::field::etag, script_.etag);
    if (partial)
      head.set(http::field::content_range, "bytes " + std::to_string(first) + "-" +
                                               std::to_string(last) + "/" +
                                               std::to_string(object_.size()));
    head.content_length(last - first + 1);
    head.keep_alive(!script_.closes_after_each_response);
    std::ostringstream text;
    text << head.base();
    const std::string header = std::move(text).str();
    output_.insert(output_.end(), header.begin(), header.end());
    output_.insert(output_.end(), object_.begin() + static_cast<std::ptrdiff_t>(first),
                   object_.begin() + static_cast<std::ptrdiff_t>(last + 1));
    if (script_.closes_after_each_response) {
      closed_after_response_ = true;
      closed_ = true;
    }
  }

  beast::tcp_stream tcp_;
  const std::vector<char>& object_;
  const origin_script& script_;
  origin_log& log_;
  std::vector<char> input_;
  std::deque<char> output_;
  std::optional<http::request_parser<http::empty_body>> parser_;
  bool closed_ = false;  ///< after the queued bytes: end of stream
  bool closed_after_response_ = false;
  std::uint64_t sent_ = 0;
  asio::mutable_buffer pending_buffer_;
  /// (In an optional: Boost 1.81's any_completion_handler move-assignment wraps the
  /// handler in another one instead of moving it, one level deeper each time.)
  std::optional<handler> pending_read_;
};

/// The connector: every path reaches its own in-memory server for the object.
class fake_origin final : public detail::upstream_connector {
 public:
  struct path_server {
    std::vector<char> object;
    origin_script script;
    origin_log log;
    /// The next connections "connected" are warm ones (upstream::reused) that the server
    /// closed while they were idle: a request goes out, the answer is a reset.
    int closed_warm_connections = 0;
    origin_script closed_script{.breaks_after_bytes = 0};
  };

  /// One server per path index (path_runtime::index).
  std::vector<std::unique_ptr<path_server>> servers;

  path_server& add(std::vector<char> object, origin_script script = {}) {
    servers.push_back(std::make_unique<path_server>(path_server{std::move(object), script, {}}));
    return *servers.back();
  }

  asio::awaitable<error_code> async_connect(detail::upstream& up, path_runtime& path,
                                            const proxy_target&, bool) override {
    auto& server = *servers.at(path.index);
    ++server.log.connections;
    up.reset();
    asio::ip::tcp::socket socket(up.stream.get_executor());
    socket.open(asio::ip::tcp::v4());  // open, never connected: is_open() says so
    const bool closed_warm = server.closed_warm_connections > 0;
    if (closed_warm) --server.closed_warm_connections;
    up.stream.start_tls(std::make_unique<fake_connection>(
        std::move(socket), server.object, closed_warm ? server.closed_script : server.script,
        server.log));
    up.reused = closed_warm;
    co_return error_code{};
  }
};

}  // namespace fleety::mphttp::testing
