#include "net/connect.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <variant>

#include "net/bound_socket.hpp"
#include "net/mptcp.hpp"

namespace fleety::net {

namespace asio = boost::asio;
using boost::system::error_code;

asio::awaitable<error_code> async_connect_on_path(asio::ip::tcp::socket& socket,
                                                  const asio::ip::tcp::endpoint& endpoint,
                                                  const std::string& interface,
                                                  std::chrono::steady_clock::duration timeout,
                                                  transport kind, std::optional<socket_user> user) {
  using namespace asio::experimental::awaitable_operators;
  constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);
  error_code ec;
  {
    // Only around the socket's creation, which records its owner: no await in between.
    const scoped_socket_user as_user(user);
    ec = kind == transport::mptcp ? open_bound_mptcp(socket, endpoint.protocol(), interface)
                                  : open_bound(socket, endpoint.protocol(), interface);
  }
  if (ec) co_return ec;
  asio::steady_timer deadline(co_await asio::this_coro::executor, timeout);
  auto result = co_await (socket.async_connect(endpoint, nothrow) || deadline.async_wait(nothrow));
  ec = result.index() == 0 ? std::get<0>(std::get<0>(result)) : error_code(asio::error::timed_out);
  if (ec) {
    error_code ignored;
    socket.close(ignored);
  }
  co_return ec;
}

}  // namespace fleety::net
