#include "dns/duplicator.hpp"

#include <spdlog/spdlog.h>

#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <memory>

#include "dns/message.hpp"
#include "net/bound_socket.hpp"

namespace fleety::dns {
namespace asio = boost::asio;
using asio::awaitable;
using clock_type = std::chrono::steady_clock;

namespace {

constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);
constexpr std::uint8_t rcode_formerr = 1;
constexpr std::uint8_t rcode_servfail = 2;
constexpr std::uint8_t rcode_refused = 5;
/// Every path's resolver has its own deadline (options::timeout); this bounds the wait
/// even if one misbehaves.
constexpr auto answer_deadline = std::chrono::seconds(6);
constexpr auto tcp_idle_timeout = std::chrono::seconds(10);

bool usable(const boost::system::result<std::vector<std::uint8_t>>& reply) {
  if (!reply) return false;
  const auto rcode = response_code(*reply);
  return rcode && *rcode != rcode_servfail && *rcode != rcode_refused;
}

}  // namespace

awaitable<std::optional<std::vector<std::uint8_t>>> duplicator::async_answer(
    std::vector<std::uint8_t> query) {
  auto executor = co_await asio::this_coro::executor;
  ++stats_.queries;
  const auto q = parse_query(query);
  if (!q) {
    ++stats_.malformed;
    co_return error_reply(query, rcode_formerr);
  }
  std::vector<std::size_t> up;
  for (std::size_t k = 0; k < paths_.size(); ++k) {
    if (net::interface_exists(paths_[k].interface)) up.push_back(k);
  }
  if (up.empty()) {
    ++stats_.failed;
    co_return error_reply(query, rcode_servfail);
  }

  // Shared with the per-path queries, which may outlive this call: a late answer still
  // goes into the database.
  struct gathering {
    explicit gathering(const asio::any_io_executor& ex, std::size_t n) : wake(ex), replies(n) {}
    asio::steady_timer wake;
    std::vector<std::optional<boost::system::result<std::vector<std::uint8_t>>>> replies;
    std::size_t done = 0;
  };
  auto state = std::make_shared<gathering>(executor, paths_.size());
  for (std::size_t k : up) {
    asio::co_spawn(
        executor,
        [](duplicator& self, std::shared_ptr<gathering> shared, std::size_t index,
           std::vector<std::uint8_t> message, std::string name) -> awaitable<void> {
          const auto& p = self.paths_[index];
          auto reply = co_await p.resolver->async_query(std::move(message));
          if (reply && response_code(*reply) == 0) {
            auto found = addresses_in(*reply);
            if (!found.addresses.empty()) {
              const auto now = clock_type::now();
              self.db_.record(name, p.name, found.addresses, found.ttl, now);
              p.resolver->remember(name, resolution{found.addresses, found.ttl});
              spdlog::debug("dns: {} on {}: {} (ttl {} s)", name, p.name,
                            found.addresses.front().to_string(), found.ttl.count());
            }
          }
          shared->replies[index] = std::move(reply);
          ++shared->done;
          shared->wake.cancel();
        }(*this, state, k, query, q->name),
        asio::detached);
  }

  const std::size_t preferred = up.front();
  const auto deadline = clock_type::now() + answer_deadline;
  while (true) {
    const auto& mine = state->replies[preferred];
    if (mine && usable(*mine)) co_return mine->value();
    if (mine || clock_type::now() >= deadline) {
      // The preferred path failed (or is late beyond reason): the first good other one.
      for (std::size_t k : up) {
        if (k != preferred && state->replies[k] && usable(*state->replies[k])) {
          ++stats_.answered_by_fallback;
          spdlog::info("dns: {} answered by {}: {} failed", q->name, paths_[k].name,
                       paths_[preferred].name);
          co_return state->replies[k]->value();
        }
      }
      if (state->done == up.size() || clock_type::now() >= deadline) {
        ++stats_.failed;
        // Relay the preferred path's own error reply (SERVFAIL, REFUSED) if it has one.
        if (mine && *mine) co_return mine->value();
        co_return error_reply(query, rcode_servfail);
      }
    }
    state->wake.expires_at(deadline);
    co_await state->wake.async_wait(nothrow);
  }
}

awaitable<void> run_dns_udp(asio::ip::udp::socket socket_in, duplicator& dns,
                            std::size_t max_in_flight) {
  auto executor = co_await asio::this_coro::executor;
  // Shared with the answering coroutines, which may still send after this loop ends.
  auto socket = std::make_shared<asio::ip::udp::socket>(std::move(socket_in));
  auto in_flight = std::make_shared<std::size_t>(0);
  std::array<std::uint8_t, 65535> datagram{};
  for (;;) {
    asio::ip::udp::endpoint sender;
    auto [ec, n] = co_await socket->async_receive_from(asio::buffer(datagram), sender, nothrow);
    if (ec == asio::error::operation_aborted || !socket->is_open()) co_return;
    if (ec) continue;
    if (*in_flight >= max_in_flight) continue;  // the app's resolver retries
    ++*in_flight;
    asio::co_spawn(
        executor,
        [](std::shared_ptr<asio::ip::udp::socket> out, std::shared_ptr<std::size_t> count,
           duplicator& d, asio::ip::udp::endpoint to, std::vector<std::uint8_t> query)
            -> awaitable<void> {
          const auto q = parse_query(query);
          auto reply = co_await d.async_answer(query);
          --*count;
          if (!reply || !out->is_open()) co_return;
          // RFC 1035 §4.2.1: 512 bytes without EDNS; with an OPT record (RFC 6891) the
          // app takes more: 1232, the size DNS flag day 2020 settled on.
          const std::size_t limit = q && q->has_additional ? 1232 : 512;
          if (reply->size() > limit) *reply = truncated_reply(*reply);
          co_await out->async_send_to(asio::buffer(*reply), to, nothrow);
        }(socket, in_flight, dns, sender,
            std::vector<std::uint8_t>(datagram.begin(), datagram.begin() + static_cast<long>(n))),
        asio::detached);
  }
}

awaitable<void> run_dns_tcp(asio::ip::tcp::acceptor acceptor, duplicator& dns,
                            std::size_t max_connections) {
  auto executor = co_await asio::this_coro::executor;
  auto open = std::make_shared<std::size_t>(0);
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(nothrow);
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
    if (ec) continue;
    if (*open >= max_connections) continue;  // closed by the socket's destructor
    ++*open;
    asio::co_spawn(
        executor,
        [](boost::beast::tcp_stream stream, std::shared_ptr<std::size_t> count,
           duplicator& d) -> awaitable<void> {
          for (;;) {
            std::array<std::uint8_t, 2> length{};
            stream.expires_after(tcp_idle_timeout);
            auto [read_ec, n] = co_await asio::async_read(stream, asio::buffer(length), nothrow);
            if (read_ec) break;
            std::vector<std::uint8_t> query((length[0] << 8) | length[1]);
            stream.expires_after(tcp_idle_timeout);
            auto [body_ec, m] = co_await asio::async_read(stream, asio::buffer(query), nothrow);
            if (body_ec) break;
            auto reply = co_await d.async_answer(std::move(query));
            if (!reply) break;
            const std::array<std::uint8_t, 2> reply_length{
                static_cast<std::uint8_t>(reply->size() >> 8),
                static_cast<std::uint8_t>(reply->size() & 0xff)};
            const std::array<asio::const_buffer, 2> parts{asio::buffer(reply_length),
                                                          asio::buffer(*reply)};
            stream.expires_after(tcp_idle_timeout);
            auto [write_ec, w] = co_await asio::async_write(stream, parts, nothrow);
            if (write_ec) break;
          }
          --*count;
        }(boost::beast::tcp_stream(std::move(socket)), open, dns),
        asio::detached);
  }
}

}  // namespace fleety::dns
