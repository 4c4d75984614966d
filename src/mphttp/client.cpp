#include "mphttp/client.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <cerrno>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <variant>

#include "core/units.hpp"
#include "dns/path_resolver.hpp"
#include "mphttp/multipath_fetch.hpp"
#include "net/bound_socket.hpp"
#include "net/task_group.hpp"

namespace fleety::mphttp {
namespace {

using namespace detail;
/// Done, or why not (for the user).
using checked = core::expected<std::monostate>;

/// TLS on one upstream connection (OpenSSL, through Beast's ssl_stream).
class openssl_session final : public tls_session {
 private:
  /// A plain handler around `done` for Asio's TLS operations (Boost 1.81's ssl ops don't
  /// take an any_completion_handler). The caller's cancellation (a fetcher stopped, or a
  /// stalled path) cancels the socket's operation, which ends the TLS one.
  auto relay(handler done) {
    auto slot = asio::get_associated_cancellation_slot(done);
    if (slot.is_connected()) {
      slot.assign([this](asio::cancellation_type) {
        error_code ignored;
        stream_.next_layer().socket().cancel(ignored);
      });
    }
    return [done = std::move(done), slot](error_code ec, std::size_t n) mutable {
      if (slot.is_connected()) slot.clear();
      std::move(done)(ec, n);
    };
  }

 public:
  openssl_session(tcp::socket socket, asio::ssl::context& context)
      : stream_(std::move(socket), context) {}
  beast::tcp_stream& tcp() override { return stream_.next_layer(); }
  void read_some(asio::mutable_buffer buffer, handler done) override {
    stream_.async_read_some(buffer, relay(std::move(done)));
  }
  void write_some(asio::const_buffer buffer, handler done) override {
    stream_.async_write_some(buffer, relay(std::move(done)));
  }
  beast::ssl_stream<beast::tcp_stream>& stream() { return stream_; }

 private:
  beast::ssl_stream<beast::tcp_stream> stream_;
};

/// Every https:// connection: SNI for a name (RFC 6066 §3: never for an address), the
/// chain verified against the context's trust store, and the certificate's name (or
/// address) checked against the URL's host (RFC 6125) — whichever server the path
/// reaches, each path its own CDN.
class openssl_connector final : public tls_connector {
 public:
  explicit openssl_connector(asio::ssl::context& context) : context_(context) {}
  awaitable<error_code> async_handshake(upstream& up, const std::string& host,
                                        const core::proxy_config& limits) override {
    auto session = std::make_unique<openssl_session>(up.stream.release_socket(), context_);
    auto& tls = session->stream();
    up.stream.start_tls(std::move(session));
    error_code not_address;
    asio::ip::make_address(host, not_address);
    // (SSL_set_tlsext_host_name is a macro with a C cast over this call.)
    if (not_address && SSL_ctrl(tls.native_handle(), SSL_CTRL_SET_TLSEXT_HOSTNAME,
                                TLSEXT_NAMETYPE_host_name, const_cast<char*>(host.c_str())) != 1) {
      co_return error_code(static_cast<int>(::ERR_get_error()), asio::error::get_ssl_category());
    }
    tls.set_verify_mode(asio::ssl::verify_peer);
    tls.set_verify_callback(asio::ssl::host_name_verification(host));
    up.stream.expires_after(as_duration(limits.connect_timeout));
    auto [ec] = co_await tls.async_handshake(asio::ssl::stream_base::client, nothrow);
    co_return ec;
  }

 private:
  asio::ssl::context& context_;
};

/// SHA-256 of a stream of bytes (OpenSSL's EVP).
class sha256_hasher {
 public:
  sha256_hasher() : ctx_(EVP_MD_CTX_new()) { EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr); }
  ~sha256_hasher() { EVP_MD_CTX_free(ctx_); }
  sha256_hasher(const sha256_hasher&) = delete;
  sha256_hasher& operator=(const sha256_hasher&) = delete;
  void update(const void* data, std::size_t size) { EVP_DigestUpdate(ctx_, data, size); }
  std::string hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    EVP_DigestFinal_ex(ctx_, digest, &size);
    std::string out;
    for (unsigned int i = 0; i < size; ++i) out += fmt::format("{:02x}", digest[i]);
    return out;
  }

 private:
  EVP_MD_CTX* ctx_;
};

/// The file the object goes into, in order (the bytes on disk are always a prefix of it),
/// and the record that lets the next run resume it. Until the object is complete its
/// bytes are in FILE.part (issue 18): FILE appears only whole and synced, and a FILE that
/// was there (--force) stays until then.
class output_file {
 public:
  output_file(std::string path) : path_(std::move(path)) {}
  ~output_file() {
    if (fd_ >= 0 && fd_ != STDOUT_FILENO) ::close(fd_);
  }
  output_file(const output_file&) = delete;
  output_file& operator=(const output_file&) = delete;

  bool to_stdout() const { return path_ == "-"; }
  const std::string& path() const { return path_; }
  std::string record_path() const { return path_ + ".fleety"; }
  std::string part_path() const { return path_ + ".part"; }
  std::uint64_t size() const { return size_; }

  /// The size of what a run left: FILE.part if there is one, else FILE (a complete
  /// download, the user's own file, or one to resume with --continue); nullopt when
  /// neither is there.
  std::optional<std::uint64_t> existing_size() {
    if (to_stdout()) return std::nullopt;
    if (auto part = size_of(part_path())) return part;
    auto whole = size_of(path_);
    resumes_whole_file_ = whole.has_value();
    return whole;
  }
  std::optional<resume_record> existing_record() const {
    if (to_stdout()) return std::nullopt;
    std::ifstream in(record_path());
    if (!in) return std::nullopt;
    std::stringstream text;
    text << in.rdbuf();
    return parse_resume_record(text.str());
  }

  /// Opens FILE.part keeping its first `keep` bytes (hashed into `hash`), nothing after.
  /// Bytes kept from FILE itself (--continue) move to FILE.part first.
  checked open(std::uint64_t keep, sha256_hasher& hash) {
    if (to_stdout()) {
      fd_ = STDOUT_FILENO;
      return std::monostate{};
    }
    if (keep > 0 && resumes_whole_file_ && ::rename(path_.c_str(), part_path().c_str()) != 0)
      return core::make_error(fmt::format("{}: {}", path_, std::strerror(errno)));
    const std::string part = part_path();
    fd_ = ::open(part.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) return core::make_error(fmt::format("{}: {}", part, std::strerror(errno)));
    // Before anything is cut: a second run on the same file would interleave its bytes.
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      return core::make_error(
          errno == EWOULDBLOCK
              ? fmt::format("{}: another fleety get is writing it", path_)
              : fmt::format("{}: cannot lock it: {}", path_, std::strerror(errno)));
    }
    if (::ftruncate(fd_, static_cast<off_t>(keep)) != 0)
      return core::make_error(fmt::format("{}: {}", part, std::strerror(errno)));
    std::vector<char> chunk(1 << 20);
    std::uint64_t hashed = 0;
    while (hashed < keep) {
      const auto want =
          static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), keep - hashed));
      const ssize_t got = ::pread(fd_, chunk.data(), want, static_cast<off_t>(hashed));
      if (got <= 0)
        return core::make_error(fmt::format("{}: reading it back: {}", part,
                                            got == 0 ? "short file" : std::strerror(errno)));
      hash.update(chunk.data(), static_cast<std::size_t>(got));
      hashed += static_cast<std::uint64_t>(got);
    }
    if (::lseek(fd_, static_cast<off_t>(keep), SEEK_SET) < 0)
      return core::make_error(fmt::format("{}: {}", part, std::strerror(errno)));
    size_ = keep;
    return std::monostate{};
  }

  checked write_record(const resume_record& record) {
    if (to_stdout()) return std::monostate{};
    const std::string temporary = record_path() + ".tmp";
    {
      std::ofstream out(temporary, std::ios::trunc);
      out << format_resume_record(record);
      if (!out.flush()) return core::make_error(fmt::format("{}: cannot write it", temporary));
    }
    if (::rename(temporary.c_str(), record_path().c_str()) != 0)
      return core::make_error(fmt::format("{}: {}", record_path(), std::strerror(errno)));
    return std::monostate{};
  }
  void remove_record() {
    if (!to_stdout()) ::unlink(record_path().c_str());
  }

  /// Writes every piece (or fails).
  error_code write(const std::vector<asio::const_buffer>& pieces, std::size_t& written) {
    written = 0;
    for (const auto& piece : pieces) {
      const char* data = static_cast<const char*>(piece.data());
      std::size_t left = piece.size();
      while (left > 0) {
        const ssize_t n = ::write(fd_, data, left);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return error_code(errno, boost::system::system_category());
        data += n;
        left -= static_cast<std::size_t>(n);
        written += static_cast<std::size_t>(n);
      }
    }
    size_ += written;
    return {};
  }

  /// Makes what was written durable (an interrupted run keeps it for the next).
  void sync() {
    if (!to_stdout() && fd_ >= 0) ::fsync(fd_);
  }

  /// The object is whole: FILE.part, synced, becomes FILE (replacing what was there), the
  /// rename made durable too, then the record goes.
  checked complete() {
    if (to_stdout()) return std::monostate{};
    if (::fsync(fd_) != 0)
      return core::make_error(fmt::format("{}: {}", part_path(), std::strerror(errno)));
    if (::rename(part_path().c_str(), path_.c_str()) != 0) {
      return core::make_error(
          fmt::format("{}: cannot rename it to {}: {}", part_path(), path_, std::strerror(errno)));
    }
    auto directory = std::filesystem::path(path_).parent_path();
    if (directory.empty()) directory = ".";
    if (const int dir = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dir >= 0) {
      ::fsync(dir);
      ::close(dir);
    }
    remove_record();
    return std::monostate{};
  }

 private:
  static std::optional<std::uint64_t> size_of(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return std::nullopt;
    return static_cast<std::uint64_t>(st.st_size);
  }

  std::string path_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
  bool resumes_whole_file_ = false;  ///< existing_size() found FILE, not FILE.part
};

/// What outlives the download's coroutines: a signal or the time limit stops the event
/// loop, and the result is read from here.
struct download_state {
  explicit download_state(const download_options& o) : options(o) {}
  const download_options& options;
  download_result result;
  std::vector<path_runtime> paths;
  std::unique_ptr<output_file> file;
  clock_type::time_point started = clock_type::now();
  std::optional<std::uint64_t> total;
  const fetch_state* fetch = nullptr;            ///< the multipath fetch under way, if any
  std::vector<const path_runtime*> fetch_paths;  ///< its paths, in its order
  bool finished = false;

  void note(const std::string& text) const {
    if (options.on_note) options.on_note(text);
  }
  void fail(std::string error, int code = 1) {
    result.ok = false;
    result.exit_code = code;
    result.error = std::move(error);
  }
};

/// The progress callback about every 250 ms: each path's rate over the last second.
class progress_meter {
 public:
  explicit progress_meter(download_state& state) : state_(state) {}

  download_progress sample() {
    const auto now = clock_type::now();
    history_.push_back({now, snapshot()});
    while (history_.size() > 2 && now - history_[1].when >= std::chrono::seconds(1))
      history_.pop_front();
    const auto& oldest = history_.front();
    const double span_s = std::chrono::duration<double>(now - oldest.when).count();
    download_progress progress;
    progress.total = state_.total;
    progress.done = state_.file ? state_.file->size() : 0;
    progress.resumed_from = state_.result.resumed_from;
    progress.elapsed_s = std::chrono::duration<double>(now - state_.started).count();
    const auto& latest = history_.back().bytes;
    auto rate = [&](std::size_t i) {
      return span_s > 0.05 ? static_cast<double>(latest[i] - oldest.bytes[i]) * 8 / span_s : 0.0;
    };
    for (std::size_t i = 0; i < state_.paths.size(); ++i) {
      const auto& p = state_.paths[i];
      progress.paths.push_back(
          {p.config.name, p.config.interface, p.bytes_received, rate(i), failed(i)});
    }
    // The total rate is what the paths carry together, so that the line adds up: the
    // file's own rate lags it while the reorder buffer fills (early in a split).
    progress.rate_bps = 0;
    for (const auto& p : progress.paths) progress.rate_bps += p.rate_bps;
    return progress;
  }

 private:
  struct point {
    clock_type::time_point when;
    std::vector<std::uint64_t> bytes;  ///< per path
  };
  std::vector<std::uint64_t> snapshot() const {
    std::vector<std::uint64_t> bytes;
    for (const auto& p : state_.paths) bytes.push_back(p.bytes_received);
    return bytes;
  }
  /// Whether the fetch under way gave up on state.paths[i].
  bool failed(std::size_t i) const {
    if (state_.fetch == nullptr) return false;
    for (std::size_t k = 0; k < state_.fetch_paths.size(); ++k) {
      if (state_.fetch_paths[k]->index == i)
        return state_.fetch->path(k).phase == path_phase::failed;
    }
    return false;
  }

  download_state& state_;
  std::deque<point> history_;
};

/// "wifi (wlan0)", or "wlan0" for a path named after its interface.
std::string path_label(const path_runtime& path) {
  const auto& c = path.config;
  return c.name == c.interface ? c.name : fmt::format("{} ({})", c.name, c.interface);
}

/// The request every path sends (the ranges repeat its fields).
request_header make_request(const proxy_target& target) {
  http::request<http::empty_body> request{http::verb::get, target.origin_form, 11};
  request.set(http::field::host, target.authority);
  request.set(http::field::user_agent, "fleety/" FLEETY_VERSION);
  request.set(http::field::accept, "*/*");
  // Ranges are of the identity body: a compressed one would differ per server.
  request.set(http::field::accept_encoding, "identity");
  return request.base();
}

/// The first request's answer: the connection it came on, its parser, its path.
struct first_exchange {
  explicit first_exchange(const asio::any_io_executor& executor) : up(executor) {}
  upstream up;
  std::unique_ptr<http::response_parser<http::buffer_body>> parser;
};

/// Sends the first request on the first path that connects (preference order).
awaitable<checked> async_first_request(first_exchange& out, std::vector<path_runtime*>& paths,
                                       const proxy_target& target, const request_header& request,
                                       const core::proxy_config& limits,
                                       upstream_connector& connector) {
  const auto connected = co_await async_connect_first(out.up, paths, target, connector);
  if (!connected.connected) {
    std::string failures;
    for (const auto& [path, ec] : connected.failures)
      failures +=
          fmt::format("{}{}: {}", failures.empty() ? "" : "; ", path_label(*path), ec.message());
    co_return core::make_error(
        fmt::format("cannot reach {}:{}: {}", target.host, target.port, failures));
  }
  http::request<http::empty_body> message;
  message.base() = request;
  ++paths[0]->requests;
  out.up.stream.expires_after(as_duration(limits.io_timeout));
  if (auto [ec, n] = co_await http::async_write(out.up.stream, message, nothrow); ec) {
    co_return core::make_error(
        fmt::format("sending the request on {}: {}", paths[0]->config.name, ec.message()));
  }
  out.parser = make_response_parser(/*head_request=*/false);
  if (auto ec = co_await async_read_final_header(out.up, out.parser, false,
                                                 as_duration(limits.io_timeout))) {
    co_return core::make_error(fmt::format("no answer from {} on {}: {}", target.authority,
                                           paths[0]->config.name, ec.message()));
  }
  co_return std::monostate{};
}

first_answer answer_of(const http::response_parser<http::buffer_body>& parser) {
  const auto& header = parser.get().base();
  first_answer answer;
  answer.status = header.result_int();
  answer.range = parse_content_range(header[http::field::content_range]);
  if (!answer.range && answer.status == 416) {
    // No part, only the length.
    if (auto length = parse_unsatisfied_range(header[http::field::content_range]))
      answer.range = content_range{0, 0, *length};
  }
  if (parser.content_length() && !parser.chunked())
    answer.content_length = *parser.content_length();
  answer.accepts_ranges = accepts_byte_ranges(header);
  answer.has_location = header.find(http::field::location) != header.end();
  answer.reason_phrase = header.reason();
  return answer;
}

/// Reads the rest of a response's body (one path) into the sink.
awaitable<error_code> async_receive_body(upstream& up,
                                         http::response_parser<http::buffer_body>& parser,
                                         path_runtime& path, const core::proxy_config& limits,
                                         const byte_sink& sink) {
  std::vector<char> chunk(fetch_state::read_chunk_bytes);
  while (!parser.is_done()) {
    auto [ec, got] = co_await async_read_body_some(up, parser, chunk, limits);
    if (ec) co_return ec;
    if (got == 0) continue;
    path.bytes_received += got;
    const std::vector<asio::const_buffer> piece{asio::buffer(chunk.data(), got)};
    if (auto [write_ec, written] = co_await sink(piece); write_ec) co_return write_ec;
  }
  co_return error_code{};
}

awaitable<void> async_download(download_state& state, tls_connector& tls_connection) {
  // Stopped from outside (a signal, --max-time): what we await ends with
  // operation_aborted, and the download ends as a failure that download() reports.
  co_await asio::this_coro::throw_if_cancelled(false);
  const auto& options = state.options;
  const auto& config = options.config;
  const auto& limits = config.proxy;
  auto executor = co_await asio::this_coro::executor;
  auto& result = state.result;
  path_connector plain(limits);
  path_connector secure(limits, &tls_connection);

  auto target = parse_download_url(options.url);
  if (!target) {
    state.fail(fmt::format("'{}' is not an http:// or https:// URL", options.url));
    co_return;
  }
  result.file = options.output.empty() ? default_file_name(target->origin_form) : options.output;
  state.file = std::make_unique<output_file>(result.file);
  auto& file = *state.file;
  start_point start;
  if (!file.to_stdout()) {
    start =
        decide_start(file.existing_size(), file.existing_record(), options.url, options.existing);
    if (!start.error.empty()) {
      state.fail(fmt::format("{}: {}", file.path(), start.error), 2);
      co_return;
    }
    if (!start.note.empty()) state.note(fmt::format("{}: {}", file.path(), start.note));
  }

  std::vector<path_runtime*> paths;
  for (auto& p : state.paths) paths.push_back(&p);

  std::uint64_t offset = start.offset;
  std::string validator = start.validator;
  std::optional<std::uint64_t> expected_total = start.total;
  bool starts_over = start.truncate;
  std::string current_url = options.url;
  first_exchange first(executor);
  first_answer answer;
  answer_plan plan;
  // Split when it pays (issue 17): the other paths connect once the size is known.
  const std::uint64_t min_split_bytes =
      split_threshold_bytes(paths, config.scheduler, /*others_connected=*/false);
  const std::uint64_t head_bytes = std::max<std::uint64_t>(min_split_bytes, min_head_range_bytes);
  int redirects = 0;
  bool restarted = false;
  while (true) {
    auto request = make_request(*target);
    // With other paths to split onto, the first asks for the head only (its response
    // then ends where its first range does); alone, for everything from `offset`.
    if (paths.size() >= 2) {
      request.set(http::field::range,
                  head_range_field(wanted_range{offset, std::nullopt, true}, head_bytes));
    } else if (offset > 0) {
      request.set(http::field::range, fmt::format("bytes={}-", offset));
    }
    if (!validator.empty() && offset > 0) request.set(http::field::if_range, validator);
    first.up.reset();
    first.parser.reset();
    auto sent = co_await async_first_request(first, paths, *target, request, limits,
                                             target->tls ? secure : plain);
    if (!sent) {
      state.fail(sent.error());
      co_return;
    }
    answer = answer_of(*first.parser);
    plan = plan_first_answer(answer, offset, expected_total);
    if (plan.kind == answer_kind::redirect) {
      const std::string_view location = first.parser->get()[http::field::location];
      auto next = resolve_location(current_url, location);
      auto next_target = next ? parse_download_url(*next) : std::nullopt;
      if (!next_target) {
        state.fail(
            fmt::format("{} redirects to '{}', which fleety cannot follow", current_url, location));
        co_return;
      }
      if (target->tls && !next_target->tls) {
        state.fail(
            fmt::format("{} redirects to '{}': not following https to http (the download would go "
                        "unencrypted and unauthenticated)",
                        current_url, *next));
        co_return;
      }
      if (++redirects > options.max_redirects) {
        state.fail(
            fmt::format("more than {} redirects (the last to {})", options.max_redirects, *next));
        co_return;
      }
      state.note(fmt::format("{} {} → {}", first.parser->get().result_int(), current_url, *next));
      current_url = *next;
      target = next_target;
      first.up.reset();
      continue;
    }
    if (plan.kind == answer_kind::restart && !restarted) {
      state.note(fmt::format("{}: {}: starting over", file.path(), plan.reason));
      restarted = true;
      offset = 0;
      validator.clear();
      expected_total.reset();
      starts_over = true;
      first.up.reset();
      continue;
    }
    break;
  }
  result.url = current_url;
  auto& first_path = *paths[0];
  if (plan.kind == answer_kind::fail || plan.kind == answer_kind::restart) {
    state.fail(fmt::format("{}: {} (over {})", current_url, plan.reason, path_label(first_path)));
    co_return;
  }
  if (plan.starts_over) {
    state.note(fmt::format("{}: {}: starting over", file.path(), plan.reason));
    starts_over = true;
    offset = 0;
  }
  const std::uint64_t keep = starts_over ? 0 : offset;
  sha256_hasher hash;
  if (auto opened = file.open(keep, hash); !opened) {
    state.fail(opened.error());
    co_return;
  }
  result.resumed_from = keep;
  state.total = plan.total;
  if (plan.kind == answer_kind::complete) {
    state.note(fmt::format("{}: already complete", file.path()));
    first.up.reset();
  }

  // What the record holds lets the next run resume; for an object of unknown length
  // there is nothing to resume against.
  const std::string object_validator = strong_validator(first.parser->get().base());
  if (plan.total && plan.kind != answer_kind::complete) {
    if (auto written = file.write_record({options.url, object_validator, *plan.total}); !written) {
      state.fail(written.error());
      co_return;
    }
  }

  auto to_file = [&](const std::vector<asio::const_buffer>& pieces)
      -> awaitable<std::pair<error_code, std::size_t>> {
    std::size_t written = 0;
    auto ec = file.write(pieces, written);
    for (const auto& piece : pieces) hash.update(piece.data(), piece.size());
    result.fetched += written;
    co_return std::pair{ec, written};
  };

  // The same rule as the proxy's: a head range that ends before the object does is split;
  // a whole answer when decide_split says so.
  const request_header request = make_request(*target);
  split_decision decision;
  if (plan.kind == answer_kind::ranged) {
    if (auto whole = app_view_of_head_range(first.parser->get().base(),
                                            wanted_range{plan.begin, std::nullopt, plan.begin > 0}))
      decision =
          decide_first_answer(request, *whole, plan.head_end, {min_split_bytes, paths.size()});
  } else if (plan.kind == answer_kind::whole) {
    decision = decide_first_answer(request, first.parser->get().base(), std::nullopt,
                                   {min_split_bytes, paths.size()});
  }
  error_code ec;
  bool delivered = true;
  if (plan.kind == answer_kind::complete) {
    // nothing to fetch
  } else if (decision.verdict == split_verdict::split) {
    result.multipath = true;
    std::vector<fetch_route> routes;
    for (std::size_t i = 0; i < paths.size(); ++i) routes.push_back({paths[i], i == 0, nullptr});
    close_early_asks(routes);
    fetch_state fetch(limits_of(config), fetch_paths_of(routes), clock_type::now());
    fetch.on_first_response(
        {true, decision.total, decision.begin, decision.end,
         plan.kind == answer_kind::ranged ? std::optional(plan.head_end) : std::nullopt,
         object_validator, representation_digests(first.parser->get().base())},
        clock_type::now());
    state.fetch = &fetch;
    state.fetch_paths.assign(paths.begin(), paths.end());
    // A named variable, not a temporary in the co_await: GCC 12 destroys such temporaries
    // twice (GCC PR 100611).
    fetch_start start_from{request,
                           *target,
                           initial_stream{std::move(first.up), std::move(first.parser)},
                           std::move(routes),
                           target->tls ? secure : plain,
                           limits,
                           current_url};
    delivered = co_await async_run_fetch(fetch, std::move(start_from), to_file);
    state.fetch = nullptr;
    for (std::size_t i = 0; i < fetch.path_count(); ++i) {
      if (fetch.path(i).phase == path_phase::failed)
        state.note(fmt::format("path {} failed during the download", paths[i]->config.name));
    }
    if (fetch.mismatches() > 0)
      state.note(
          fmt::format("{} served two versions of the object: the file holds one, "
                      "from the paths that agreed with its first bytes",
                      target->host));
  } else {
    ec = co_await async_receive_body(first.up, *first.parser, first_path, limits, to_file);
    delivered = !ec;
  }
  result.size = file.size();
  if (!delivered || (plan.total && file.size() != *plan.total)) {
    file.sync();
    state.fail(fmt::format("{}: download failed after {} of {}{}; {}", current_url,
                           core::format_size(file.size()),
                           plan.total ? core::format_size(*plan.total) : std::string("?"),
                           ec ? ": " + ec.message() : std::string(),
                           plan.total && !file.to_stdout() ? "run the same command again to resume"
                                                           : "the file is incomplete"));
    co_return;
  }
  if (auto completed = file.complete(); !completed) {
    state.fail(completed.error());
    co_return;
  }
  result.sha256 = hash.hex();
  result.ok = true;
  result.exit_code = 0;
  if (options.expected_sha256 && *options.expected_sha256 != result.sha256) {
    state.fail(fmt::format("{}: sha256 is {}, not {} as expected: the file is kept but "
                           "is not what you asked for",
                           file.path(), result.sha256, *options.expected_sha256),
               3);
  }
}

}  // namespace

download_result download(const download_options& options) {
  asio::io_context io;
  download_state state(options);
  state.result.url = options.url;
  std::string missing;
  for (const auto& path_config : options.config.paths) {
    if (!net::interface_exists(path_config.interface)) {
      missing += (missing.empty() ? "" : ", ") + path_config.interface;
      continue;
    }
    try {
      state.paths.push_back(make_path_runtime(io.get_executor(), path_config, options.config));
    } catch (const std::exception& e) {
      state.fail(fmt::format("path {}: {}", path_config.name, e.what()), 2);
      return state.result;
    }
  }
  if (state.paths.empty()) {
    state.fail(missing.empty() ? "no path: give --path IFACE (or [[path]] in the config)"
                               : fmt::format("none of the paths' interfaces exists ({}): check "
                                             "`ip link`",
                                             missing),
               2);
    return state.result;
  }
  if (!missing.empty()) state.note(fmt::format("not using {}: no such interface", missing));
  for (std::size_t i = 0; i < state.paths.size(); ++i) state.paths[i].index = i;

  asio::ssl::context tls_context(asio::ssl::context::tls_client);
  tls_context.set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                          asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                          asio::ssl::context::no_tlsv1_1);
  error_code tls_ec;
  // --cacert replaces the system's trust store (as curl's does): a user who names the CA
  // of a server means that one, not any CA the system trusts.
  if (options.ca_file.empty()) {
    tls_context.set_default_verify_paths(tls_ec);
  } else {
    tls_context.load_verify_file(options.ca_file, tls_ec);
    if (tls_ec) {
      state.fail(fmt::format("--cacert {}: {}", options.ca_file, tls_ec.message()), 2);
      return state.result;
    }
  }
  // HTTP/1.1 only: ranges go one per request on each connection.
  static constexpr unsigned char alpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  SSL_CTX_set_alpn_protos(tls_context.native_handle(), alpn, sizeof alpn);

  progress_meter meter(state);
  asio::steady_timer progress_timer(io);
  bool stopped_by_user = false;
  bool timed_out = false;
  // Everything that runs is in `tasks`: a signal or the time limit cancels them, and
  // io.run() returns once they have all ended (nothing outlives what it uses).
  net::task_group tasks(io.get_executor());
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const error_code& ec, int) {
    if (ec) return;
    stopped_by_user = true;
    tasks.cancel();
  });
  asio::steady_timer deadline(io);
  if (options.max_time.count() > 0) {
    deadline.expires_after(options.max_time);
    deadline.async_wait([&](const error_code& ec) {
      if (ec) return;
      timed_out = true;
      tasks.cancel();
    });
  }
  tasks.spawn(
      [](download_state& s, progress_meter& m, asio::steady_timer& timer) -> awaitable<void> {
        co_await asio::this_coro::throw_if_cancelled(false);
        while (!s.finished) {
          if (s.options.on_progress && s.file) s.options.on_progress(m.sample());
          timer.expires_after(std::chrono::milliseconds(250));
          co_await timer.async_wait(nothrow);
          if ((co_await asio::this_coro::cancellation_state).cancelled() !=
              asio::cancellation_type::none)
            break;
        }
      }(state, meter, progress_timer),
      "progress");
  openssl_connector connector(tls_context);
  tasks.spawn(
      [](download_state& s, tls_connector& tls, asio::steady_timer& progress,
         asio::signal_set& signal_wait, asio::steady_timer& limit) -> awaitable<void> {
        try {
          co_await async_download(s, tls);
        } catch (const std::exception& e) {
          s.fail(fmt::format("internal error: {}", e.what()));
        }
        s.finished = true;
        progress.cancel();
        signal_wait.cancel();
        limit.cancel();
      }(state, connector, progress_timer, signals, deadline),
      "download");
  io.run();
  auto& result = state.result;
  // (A signal that arrived as the download ended changes nothing.)
  if ((stopped_by_user || timed_out) && !result.ok) {
    const std::uint64_t have = state.file ? state.file->size() : 0;
    state.fail(
        fmt::format("{} after {}{}; run the same command again to resume",
                    stopped_by_user ? "interrupted" : "--max-time reached", core::format_size(have),
                    state.total ? " of " + core::format_size(*state.total) : ""),
        stopped_by_user ? 130 : 1);
    if (state.file) state.file->sync();
  }
  result.seconds = std::chrono::duration<double>(clock_type::now() - state.started).count();
  if (options.on_progress && state.file) options.on_progress(meter.sample());
  for (const auto& p : state.paths) {
    result.paths.push_back(
        {p.config.name, p.config.interface, p.bytes_received,
         static_cast<double>(p.bytes_received) * 8 / std::max(result.seconds, 1e-6), false});
  }
  return result;
}

}  // namespace fleety::mphttp
