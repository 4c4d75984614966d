#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "net/bound_socket.hpp"
#include "net/splice.hpp"
#include "select/select.hpp"

namespace fleety::select {
namespace asio = boost::asio;
using asio::awaitable;
using asio::ip::tcp;

namespace {

constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);

}  // namespace

awaitable<relay_totals> async_relay(tcp::socket& app, tcp::socket& server,
                                    clock_type::duration idle_timeout) {
  using namespace asio::experimental::awaitable_operators;
  relay_totals totals;
  auto last_activity = clock_type::now();
  bool failed = false;
  // Each direction ends on its own (half-close); a failure on one side resets the other.
  auto direction = [&](tcp::socket& from, tcp::socket& to,
                       std::uint64_t& moved) -> awaitable<void> {
    // No per-wait timeout: one direction may rightly stay quiet while the other
    // streams; the watchdog below ends the relay when both are idle.
    const auto end =
        co_await net::async_splice(from, to, std::nullopt, std::nullopt, &last_activity);
    moved = end.moved;
    if (end.ec && end.ec != asio::error::operation_aborted && !failed) {
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
