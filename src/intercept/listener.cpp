// The intercept listener: takes over redirected connections, classifies them on their
// first bytes and hands each to the MPHTTP session or to the relay.
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <memory>

#include "classify/classify.hpp"
#include "intercept/intercept.hpp"
#include "mphttp/proxy.hpp"
#include "net/bound_socket.hpp"
#include "net/connect.hpp"
#include "net/listen.hpp"
#include "net/mptcp.hpp"
#include "path/monitor.hpp"
#include "select/select.hpp"

namespace fleety::intercept {
namespace asio = boost::asio;
using asio::awaitable;
using asio::ip::tcp;
using clock_type = std::chrono::steady_clock;

namespace {

constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);
/// Idle relayed flows (a chat app's long-lived connection) may stay quiet for long; one
/// that moves nothing for this long is closed.
constexpr auto relay_idle_timeout = std::chrono::minutes(30);

const char* kind_name(classify::flow_kind kind) {
  switch (kind) {
    case classify::flow_kind::http:
      return "HTTP";
    case classify::flow_kind::tls_client_hello:
      return "TLS";
    case classify::flow_kind::need_more:
    case classify::flow_kind::other:
      break;
  }
  return "TCP";
}

/// Peeks at what the app sent (it stays in the socket) until the classifier decides,
/// the app closes, or `timeout` passes (then: other, e.g. a protocol where the server
/// speaks first).
awaitable<classify::flow_class> async_peek_and_classify(tcp::socket& app,
                                                        clock_type::duration timeout) {
  using namespace asio::experimental::awaitable_operators;
  const auto deadline = clock_type::now() + timeout;
  const auto bytes = std::make_unique_for_overwrite<char[]>(classify::max_peek_bytes);
  asio::steady_timer timer(co_await asio::this_coro::executor);
  std::size_t seen = 0;
  while (clock_type::now() < deadline) {
    timer.expires_at(deadline);
    auto ready =
        co_await (app.async_wait(tcp::socket::wait_read, nothrow) || timer.async_wait(nothrow));
    if (ready.index() == 1) break;  // timed out
    const ssize_t n =
        ::recv(app.native_handle(), bytes.get(), classify::max_peek_bytes, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) co_return classify::flow_of(classify::flow_kind::other);  // app closed
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      co_return classify::flow_of(classify::flow_kind::other);
    }
    auto verdict =
        classify::classify_first_bytes(std::string_view(bytes.get(), static_cast<std::size_t>(n)));
    if (verdict.kind != classify::flow_kind::need_more) co_return verdict;
    if (static_cast<std::size_t>(n) == seen) {
      // The socket stays readable with the same bytes: let more arrive.
      timer.expires_after(std::chrono::milliseconds(5));
      co_await timer.async_wait(nothrow);
    }
    seen = static_cast<std::size_t>(n);
  }
  co_return classify::flow_of(classify::flow_kind::other);
}

/// Where a flow to `destination` goes on `path`: the app chose the address its DNS
/// answer gave (the preferred path's); another path goes to the server its own resolver
/// named for the same host, when the DNS information database knows it (paper §4.1).
tcp::endpoint server_on_path(const mphttp::proxy_context& context, const tcp::endpoint& destination,
                             const mphttp::path_runtime& path) {
  if (context.dns_info == nullptr) return destination;
  const auto own = context.dns_info->counterpart(destination.address(), path.config.name,
                                                 dns::info_db::clock_type::now());
  return own ? tcp::endpoint(*own, destination.port()) : destination;
}

/// Relays a flow that is not split to the app's destination, on the path the selector
/// picks for the app's class (else the first that is up), trying the others in
/// preference order when it doesn't connect. The flow stays in the flow table while it
/// lasts, so that the selector can reset it off a path that went down or stopped meeting
/// its class; its socket counts toward its path's measurements.
awaitable<void> async_relay_flow(tcp::socket app, tcp::endpoint destination,
                                 const classify::flow_class& flow, const app_identity& who,
                                 mphttp::proxy_context& context, flow_placement& placement,
                                 std::uint64_t id) {
  auto executor = co_await asio::this_coro::executor;
  const auto started = clock_type::now();
  const std::string what =
      flow.server_name.empty()
          ? fmt::format("{} to {}:{}", kind_name(flow.kind), destination.address().to_string(),
                        destination.port())
          : fmt::format("{} to {} ({}:{})", kind_name(flow.kind), flow.server_name,
                        destination.address().to_string(), destination.port());
  const bool capped = placement.cellular_capped && placement.cellular_capped();
  std::vector<std::size_t> order;
  if (placement.selector != nullptr) {
    if (auto chosen = placement.selector->choose(who.qos, capped, clock_type::now()))
      order.push_back(*chosen);
  }
  for (std::size_t k = 0; k < context.paths.size(); ++k) {
    if (path::is_up(placement.up, k) && std::find(order.begin(), order.end(), k) == order.end())
      order.push_back(k);
  }
  tcp::socket server(executor);
  std::optional<std::size_t> used;
  boost::system::error_code ec = asio::error::network_down;
  for (std::size_t k : order) {
    auto& path = context.paths[k];
    const auto target = server_on_path(context, destination, path);
    // [mptcp] (issue 6, item 8): an MPTCP upstream whose initial subflow leaves on this
    // path; the kernel's path manager adds the other paths' subflows, and a server without
    // MPTCP gets plain TCP within the same handshake.
    ec = co_await net::async_connect_on_path(
        server, target, path.config.interface, context.config.proxy.connect_timeout,
        context.config.mptcp.enabled ? net::transport::mptcp : net::transport::tcp, who.user);
    if (!ec) {
      used = k;
      if (context.config.mptcp.enabled) {
        spdlog::debug("[{}] {}: {} on {}", id, what,
                      net::speaks_mptcp(server.native_handle())
                          ? "MPTCP, initial subflow"
                          : "plain TCP (no MPTCP with the server)",
                      path.config.name);
      }
      break;
    }
    spdlog::info("[{}] {}: cannot connect on {}: {}", id, what, path.config.name, ec.message());
  }
  if (!used) {
    // The app sees the connection fail as it would have without us.
    spdlog::warn("[{}] {}: no path connects ({}): resetting the app", id, what, ec.message());
    net::close_with_reset(app);
    co_return;
  }
  auto& path = context.paths[*used];
  const std::string app_name = who.app.empty() ? std::string("-") : who.app;
  spdlog::info("[{}] {} of app {} (class {}) on {}", id, what, app_name,
               who.qos.empty() ? "default" : who.qos, path.config.name);
  bool moved = false;
  path::monitor::watch measured;
  if (placement.monitor != nullptr)
    measured = placement.monitor->watch_socket(*used, server.native_handle());
  select::flow_table::registration listed;
  if (placement.flows != nullptr) {
    listed = placement.flows->add(
        {id, who.app, who.qos, *used, what, started, [&app, &server, &moved, &measured] {
           moved = true;
           measured = path::monitor::watch{};  // its fd is closing
           net::close_with_reset(app);
           net::close_with_reset(server);
         }});
  }
  const auto totals = co_await select::async_relay(app, server, relay_idle_timeout);
  path.bytes_received += totals.server_to_app;
  if (placement.count) placement.count(who, *used, totals.app_to_server + totals.server_to_app);
  spdlog::info("[{}] {} relayed on {}: {} up, {} down in {:.1f} s{}", id, what, path.config.name,
               totals.app_to_server, totals.server_to_app,
               std::chrono::duration<double>(clock_type::now() - started).count(),
               moved                 ? " (reset: moved off its path)"
               : totals.idle_timeout ? " (idle timeout)"
               : totals.reset        ? " (reset)"
                                     : "");
}

awaitable<void> serve_intercepted(tcp::socket app, mphttp::proxy_context& context,
                                  flow_placement& placement, std::uint64_t id) {
  const auto destination = original_destination(app);
  boost::system::error_code local_ec;
  const auto local = app.local_endpoint(local_ec);
  if (const auto why = refusal_of_intercepted(destination, local, own_tcp_ports(context.config),
                                              net::is_local_address);
      local_ec || !why.empty()) {
    spdlog::warn("[{}] intercepted connection refused: {}", id,
                 local_ec ? local_ec.message() : why);
    net::close_with_reset(app);
    co_return;
  }
  boost::system::error_code nodelay_ec;
  app.set_option(tcp::no_delay(true), nodelay_ec);  // relayed writes carry the app's own pace
  const auto flow = co_await async_peek_and_classify(app, context.config.intercept.peek_timeout);
  // Which app this is: its class places a relayed flow, and its bytes are counted as its.
  app_identity who;
  if (placement.identify) {
    boost::system::error_code peer_ec;
    const auto peer = app.remote_endpoint(peer_ec);
    if (!peer_ec) who = placement.identify(peer, *destination);
  }
  if (flow.kind == classify::flow_kind::http) {
    spdlog::debug("[{}] intercepted HTTP to {}:{}: {} {}", id, destination->address().to_string(),
                  destination->port(), flow.method, flow.target);
    co_await mphttp::run_intercepted_http_session(std::move(app), *destination, context, id,
                                                  std::move(who.app), who.user);
    co_return;
  }
  co_await async_relay_flow(std::move(app), *destination, flow, who, context, placement, id);
}

}  // namespace

awaitable<void> run_intercept_listener(tcp::acceptor acceptor, mphttp::proxy_context& context,
                                       flow_placement& placement) {
  co_await mphttp::run_accept_loop(std::move(acceptor), context, "intercepted",
                                   [&context, &placement](tcp::socket socket, std::uint64_t id) {
                                     return serve_intercepted(std::move(socket), context, placement,
                                                              id);
                                   });
}

}  // namespace fleety::intercept
