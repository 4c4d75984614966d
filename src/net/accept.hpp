#pragma once
// Accept loops that survive running out of descriptors or memory: the failing accept()
// is retried after a growing pause instead of at once (which spins a core and floods the
// log while nothing closes), and its errors are logged once per interval with a count.

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

namespace fleety::net {

/// Says at most one line per `interval`: the first event logs, the ones after it within
/// the interval are counted and their number goes with the next line that is let out.
class log_throttle {
 public:
  explicit log_throttle(std::chrono::steady_clock::duration interval = std::chrono::seconds(10))
      : interval_(interval) {}
  /// Whether to log now; `suppressed` gets how many were held back since the last line.
  bool allow(std::chrono::steady_clock::time_point now, std::uint64_t& suppressed);

 private:
  std::chrono::steady_clock::duration interval_;
  std::optional<std::chrono::steady_clock::time_point> last_;
  std::uint64_t held_ = 0;
};

/// What an accept loop does after accept() failed (pure but for its own state; time
/// passed in). Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) the error
/// comes back at once while nothing closes: pause, 10 ms doubling up to 1 s. Anything
/// else (a connection reset before it was taken) is retried at once.
class accept_errors {
 public:
  explicit accept_errors(std::string what) : what_(std::move(what)) {}

  struct verdict {
    std::chrono::milliseconds pause{0};
    std::optional<std::string> log_line;  ///< to log (warning), when the throttle lets it
  };
  verdict on_error(const boost::system::error_code& ec, std::chrono::steady_clock::time_point now);
  /// A connection was accepted: the next error starts from the shortest pause.
  void on_success() { pause_ = std::chrono::milliseconds(0); }

  static constexpr std::chrono::milliseconds first_pause{10};
  static constexpr std::chrono::milliseconds longest_pause{1000};

 private:
  std::string what_;
  std::chrono::milliseconds pause_{0};
  log_throttle throttle_;
};

/// Logs an accept_errors line (spdlog, warning).
void log_accept_error(const std::string& line);

/// The next connection of `acceptor`, retrying failed accepts as `errors` says; nullopt
/// once the acceptor is closed or the calling coroutine is cancelled.
template <typename Acceptor>
boost::asio::awaitable<std::optional<typename Acceptor::protocol_type::socket>> async_accept_next(
    Acceptor& acceptor, accept_errors& errors) {
  namespace asio = boost::asio;
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return std::nullopt;
    if (!ec) {
      errors.on_success();
      co_return std::move(socket);
    }
    const auto verdict = errors.on_error(ec, std::chrono::steady_clock::now());
    if (verdict.log_line) log_accept_error(*verdict.log_line);
    if (verdict.pause.count() > 0) {
      asio::steady_timer pause(acceptor.get_executor(), verdict.pause);
      auto [wait_ec] = co_await pause.async_wait(asio::as_tuple(asio::use_awaitable));
      if (wait_ec) co_return std::nullopt;  // cancelled
    }
  }
}

}  // namespace fleety::net
