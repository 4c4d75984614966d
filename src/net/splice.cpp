#include "net/splice.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>

namespace fleety::net {
namespace asio = boost::asio;
using asio::ip::tcp;
using clock_type = std::chrono::steady_clock;

namespace {

constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);
constexpr std::size_t pipe_bytes = 1024 * 1024;

/// A pipe for splice(2); both ends closed on destruction.
struct splice_pipe {
  int read_end = -1;
  int write_end = -1;
  splice_pipe() {
    int fds[2];
    if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) == 0) {
      read_end = fds[0];
      write_end = fds[1];
      // A bigger pipe moves more per call; the default 64 KiB still works if refused
      // (unprivileged processes are limited by /proc/sys/fs/pipe-max-size).
      ::fcntl(write_end, F_SETPIPE_SZ, static_cast<int>(pipe_bytes));
    }
  }
  ~splice_pipe() {
    if (read_end >= 0) ::close(read_end);
    if (write_end >= 0) ::close(write_end);
  }
  splice_pipe(const splice_pipe&) = delete;
  splice_pipe& operator=(const splice_pipe&) = delete;
};

/// Waits until `socket` is ready, within `timeout` if given.
asio::awaitable<boost::system::error_code> async_ready(
    tcp::socket& socket, tcp::socket::wait_type what, std::optional<clock_type::duration> timeout) {
  using namespace asio::experimental::awaitable_operators;
  if (!timeout) {
    auto [ec] = co_await socket.async_wait(what, nothrow);
    co_return ec;
  }
  asio::steady_timer timer(co_await asio::this_coro::executor, *timeout);
  auto first = co_await (socket.async_wait(what, nothrow) || timer.async_wait(nothrow));
  if (first.index() == 1) co_return asio::error::timed_out;
  co_return std::get<0>(std::get<0>(first));
}

boost::system::error_code last_error() {
  return {errno, boost::system::system_category()};
}

}  // namespace

asio::awaitable<splice_result> async_splice(tcp::socket& from, tcp::socket& to,
                                            std::optional<std::uint64_t> limit,
                                            std::optional<clock_type::duration> wait_timeout,
                                            clock_type::time_point* last_activity) {
  splice_result result;
  splice_pipe pipe;
  if (pipe.read_end < 0) {
    result.ec = last_error();
    co_return result;
  }
  boost::system::error_code ec;
  from.non_blocking(true, ec);
  if (!ec) to.non_blocking(true, ec);
  if (ec) {
    result.ec = ec;
    co_return result;
  }
  while (!limit || result.moved < *limit) {
    const std::size_t want =
        limit ? static_cast<std::size_t>(std::min<std::uint64_t>(*limit - result.moved, pipe_bytes))
              : pipe_bytes;
    const ssize_t in = ::splice(from.native_handle(), nullptr, pipe.write_end, nullptr, want,
                                SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (in == 0) {
      if (limit) {
        result.ec = asio::error::eof;
      } else {
        to.shutdown(tcp::socket::shutdown_send, ec);
      }
      co_return result;
    }
    if (in < 0) {
      if (errno != EAGAIN && errno != EINTR) {
        result.ec = last_error();
        co_return result;
      }
      if ((result.ec = co_await async_ready(from, tcp::socket::wait_read, wait_timeout)))
        co_return result;
      continue;
    }
    if (last_activity != nullptr) *last_activity = clock_type::now();
    std::size_t left = static_cast<std::size_t>(in);
    while (left > 0) {
      const ssize_t out = ::splice(pipe.read_end, nullptr, to.native_handle(), nullptr, left,
                                   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (out < 0) {
        if (errno != EAGAIN && errno != EINTR) {
          result.ec = last_error();
          co_return result;
        }
        if ((result.ec = co_await async_ready(to, tcp::socket::wait_write, wait_timeout)))
          co_return result;
        continue;
      }
      left -= static_cast<std::size_t>(out);
      result.moved += static_cast<std::uint64_t>(out);
      if (last_activity != nullptr) *last_activity = clock_type::now();
    }
  }
  co_return result;
}

}  // namespace fleety::net
