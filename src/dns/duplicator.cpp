#include "dns/duplicator.hpp"

#include <spdlog/spdlog.h>

#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <memory>

#include "dns/message.hpp"
#include "dns/reply_choice.hpp"
#include "net/accept.hpp"

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
  std::vector<std::size_t> up;  // the paths asked, in preference order
  for (std::size_t k = 0; k < paths_.size(); ++k) {
    if (fleety::path::is_up(up_, k)) up.push_back(k);
  }
  if (up.empty() || queries_.cancelled()) {
    ++stats_.failed;
    co_return error_reply(query, rcode_servfail);
  }

  // Shared with the per-path queries, which may outlive this call: a late answer still
  // goes into the database.
  struct gathering {
    explicit gathering(const asio::any_io_executor& ex, std::size_t n) : wake(ex), replies(n) {}
    asio::steady_timer wake;
    /// Per path asked (as `up`): its reply once it came.
    std::vector<std::optional<boost::system::result<std::vector<std::uint8_t>>>> replies;
  };
  auto state = std::make_shared<gathering>(executor, up.size());
  for (std::size_t n = 0; n < up.size(); ++n) {
    queries_.spawn(
        [](duplicator& self, std::shared_ptr<gathering> shared, std::size_t index, std::size_t slot,
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
          shared->replies[slot] = std::move(reply);
          shared->wake.cancel();
        }(*this, state, up[n], n, query, q->name),
        "dns query on " + paths_[up[n]].name);
  }

  const auto deadline = clock_type::now() + answer_deadline;
  std::vector<reply_status> statuses(up.size());
  for (;;) {
    for (std::size_t n = 0; n < up.size(); ++n) {
      const auto& r = state->replies[n];
      statuses[n] = !r           ? reply_status::pending
                    : usable(*r) ? reply_status::succeeded
                                 : reply_status::failed;
    }
    // (Every resolver has its own deadline; this one bounds the wait if one misbehaves.)
    const auto choice = choose_reply(statuses, clock_type::now() >= deadline);
    if (choice.decision == reply_choice::verdict::use) {
      if (choice.path != 0) {
        ++stats_.answered_by_fallback;
        spdlog::info("dns: {} answered by {}: {} failed", q->name, paths_[up[choice.path]].name,
                     paths_[up.front()].name);
      }
      co_return state->replies[choice.path]->value();
    }
    if (choice.decision == reply_choice::verdict::fail) {
      ++stats_.failed;
      // Relay the preferred path's own error reply (SERVFAIL, REFUSED) if it has one.
      const auto& mine = state->replies.front();
      if (mine && *mine) co_return mine->value();
      co_return error_reply(query, rcode_servfail);
    }
    state->wake.expires_at(deadline);
    co_await state->wake.async_wait(nothrow);
  }
}

awaitable<void> duplicator::async_stop() {
  queries_.cancel();
  co_await queries_.async_join();
}

awaitable<void> run_dns_udp(asio::ip::udp::socket socket, duplicator& dns,
                            std::size_t max_in_flight) {
  // The owner of the answering coroutines: it sees its own cancellation as results, and
  // cancels and joins them before its frame (and the socket they send on) goes.
  co_await asio::this_coro::throw_if_cancelled(false);
  net::task_group answering(co_await asio::this_coro::executor);
  std::array<std::uint8_t, 65535> datagram{};
  for (;;) {
    asio::ip::udp::endpoint sender;
    auto [ec, n] = co_await socket.async_receive_from(asio::buffer(datagram), sender, nothrow);
    if (ec == asio::error::operation_aborted || !socket.is_open()) break;
    if (ec) continue;
    if (answering.size() >= max_in_flight) continue;  // the app's resolver retries
    answering.spawn(
        [](asio::ip::udp::socket& out, duplicator& d, asio::ip::udp::endpoint to,
           std::vector<std::uint8_t> query)
            -> awaitable<void> {
          const auto q = parse_query(query);
          auto reply = co_await d.async_answer(query);
          if (!reply || !out.is_open()) co_return;
          // RFC 1035 §4.2.1: 512 bytes without EDNS; with an OPT record (RFC 6891) the
          // app takes more: 1232, the size DNS flag day 2020 settled on.
          const std::size_t limit = q && q->has_additional ? 1232 : 512;
          if (reply->size() > limit) *reply = truncated_reply(*reply);
          co_await out.async_send_to(asio::buffer(*reply), to, nothrow);
        }(socket, dns, sender,
            std::vector<std::uint8_t>(datagram.begin(), datagram.begin() + static_cast<long>(n))),
        "dns query (UDP)");
  }
  answering.cancel();
  co_await answering.async_join();
}

awaitable<void> run_dns_tcp(asio::ip::tcp::acceptor acceptor, duplicator& dns,
                            std::size_t max_connections) {
  co_await asio::this_coro::throw_if_cancelled(false);
  net::task_group connections(co_await asio::this_coro::executor);
  net::accept_errors errors("DNS over TCP");
  while (auto accepted = co_await net::async_accept_next(acceptor, errors)) {
    auto& socket = *accepted;
    if (connections.size() >= max_connections) continue;  // closed by the socket's destructor
    connections.spawn(
        [](boost::beast::tcp_stream stream, duplicator& d) -> awaitable<void> {
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
        }(boost::beast::tcp_stream(std::move(socket)), dns),
        "dns connection (TCP)");
  }
  connections.cancel();
  co_await connections.async_join();
}

}  // namespace fleety::dns
