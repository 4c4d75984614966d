#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>

#include "net/bound_socket.hpp"
#include "select/select.hpp"

namespace fleety::select {
namespace asio = boost::asio;
using asio::awaitable;
using asio::ip::tcp;
using clock_type = std::chrono::steady_clock;

namespace {

constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);
constexpr std::size_t splice_chunk = 256 * 1024;

/// A pipe for splice(2); both ends closed on destruction.
struct splice_pipe {
  int read_end = -1;
  int write_end = -1;
  splice_pipe() {
    int fds[2];
    if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) == 0) {
      read_end = fds[0];
      write_end = fds[1];
      // A bigger pipe moves more per splice call; the default (64 KiB) is the fallback.
      ::fcntl(write_end, F_SETPIPE_SZ, static_cast<int>(splice_chunk));
    }
  }
  ~splice_pipe() {
    if (read_end >= 0) ::close(read_end);
    if (write_end >= 0) ::close(write_end);
  }
  splice_pipe(const splice_pipe&) = delete;
  splice_pipe& operator=(const splice_pipe&) = delete;
  bool ok() const { return read_end >= 0; }
};

enum class pump_end { eof, failed, cancelled };

/// Moves bytes from `from` to `to` until `from` ends (then `to`'s sending half is shut).
awaitable<pump_end> pump(tcp::socket& from, tcp::socket& to, std::uint64_t& moved,
                         clock_type::time_point& last_activity) {
  splice_pipe pipe;
  if (!pipe.ok()) co_return pump_end::failed;
  for (;;) {
    const ssize_t in = ::splice(from.native_handle(), nullptr, pipe.write_end, nullptr,
                                splice_chunk, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (in == 0) {
      boost::system::error_code ignored;
      to.shutdown(tcp::socket::shutdown_send, ignored);
      co_return pump_end::eof;
    }
    if (in < 0) {
      if (errno != EAGAIN && errno != EINTR) co_return pump_end::failed;
      auto [ec] = co_await from.async_wait(tcp::socket::wait_read, nothrow);
      if (ec)
        co_return ec == asio::error::operation_aborted ? pump_end::cancelled : pump_end::failed;
      continue;
    }
    last_activity = clock_type::now();
    std::size_t left = static_cast<std::size_t>(in);
    while (left > 0) {
      const ssize_t out = ::splice(pipe.read_end, nullptr, to.native_handle(), nullptr, left,
                                   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (out < 0) {
        if (errno != EAGAIN && errno != EINTR) co_return pump_end::failed;
        auto [ec] = co_await to.async_wait(tcp::socket::wait_write, nothrow);
        if (ec)
          co_return ec == asio::error::operation_aborted ? pump_end::cancelled : pump_end::failed;
        continue;
      }
      left -= static_cast<std::size_t>(out);
      moved += static_cast<std::uint64_t>(out);
      last_activity = clock_type::now();
    }
  }
}

}  // namespace

std::optional<std::size_t> choose_path(const std::vector<path_state>& paths) {
  for (std::size_t i = 0; i < paths.size(); ++i) {
    if (paths[i].up) return i;
  }
  return std::nullopt;
}

awaitable<relay_totals> async_relay(tcp::socket& app, tcp::socket& server,
                                    clock_type::duration idle_timeout) {
  using namespace asio::experimental::awaitable_operators;
  relay_totals totals;
  app.non_blocking(true);
  server.non_blocking(true);
  auto last_activity = clock_type::now();
  bool failed = false;
  // Each direction ends on its own (half-close); a failure on one side resets the other.
  auto direction = [&](tcp::socket& from, tcp::socket& to,
                       std::uint64_t& moved) -> awaitable<void> {
    const auto end = co_await pump(from, to, moved, last_activity);
    if (end == pump_end::failed && !failed) {
      failed = true;
      net::close_with_reset(to);
      net::close_with_reset(from);
    }
  };
  auto watchdog = [&]() -> awaitable<void> {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    while (clock_type::now() - last_activity < idle_timeout) {
      timer.expires_at(last_activity + idle_timeout);
      co_await timer.async_wait(nothrow);
    }
    totals.idle_timeout = true;
  };
  co_await ((direction(app, server, totals.app_to_server) &&
             direction(server, app, totals.server_to_app)) ||
            watchdog());
  totals.reset = failed;
  if (totals.idle_timeout) {
    net::close_with_reset(app);
    net::close_with_reset(server);
  }
  co_return totals;
}

}  // namespace fleety::select
