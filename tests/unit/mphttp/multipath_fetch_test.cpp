#include "mphttp/multipath_fetch.hpp"

#include <gtest/gtest.h>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <optional>
#include <vector>

#include "../../fakes/mphttp/fake_origin.hpp"

// The fetchers' and the writer's loops (multipath_fetch.cpp) over scripted in-memory
// streams: the real Beast parsing, pipelining, reconnects and cancellation, no sockets.

namespace fleety::mphttp {
namespace {

using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace http = boost::beast::http;
using testing::fake_origin;
using testing::origin_script;

std::vector<char> object_bytes(std::size_t size, unsigned seed) {
  std::vector<char> out(size);
  unsigned x = seed;
  for (auto& c : out) {
    x = x * 1103515245u + 12345u;
    c = static_cast<char>(x >> 16);
  }
  return out;
}

path_runtime make_path(const std::string& name, std::size_t index) {
  core::path_config config;
  config.name = name;
  config.interface = "";
  path_runtime path{config, nullptr, path_estimator(20'000'000, std::chrono::milliseconds(50))};
  path.index = index;
  return path;
}

struct fetch_run {
  std::optional<bool> delivered;
  std::vector<char> sink;
  std::vector<path_phase> phases;
  std::vector<std::uint64_t> bytes;
  std::vector<std::uint64_t> stolen;  ///< per path: tails it took over from another
  std::uint64_t mismatches = 0;
};

/// Fetches the object (`size` bytes) over the fake origin's paths: path 0 asks the head
/// range (or the whole object, `whole_first`) as the proxy would, then the fetch runs.
/// `cancel_after`: the caller's cancellation comes then.
fetch_run run_fetch(fake_origin& origin, std::size_t size, bool whole_first = false,
                    std::optional<std::chrono::milliseconds> cancel_after = std::nullopt) {
  asio::io_context io;
  std::vector<path_runtime> paths;
  for (std::size_t i = 0; i < origin.servers.size(); ++i)
    paths.push_back(make_path(i == 0 ? "wifi" : "cell" + std::to_string(i), i));
  core::config config;
  config.scheduler.mode = core::scheduler_mode::aggregate;
  config.scheduler.memory_per_session_bytes = 1 << 20;
  config.scheduler.min_split_bytes = 256 * 1024;
  proxy_target target;
  target.host = "cdn.test";
  target.authority = "cdn.test";
  target.origin_form = "/object";
  http::request<http::empty_body> app_request{http::verb::get, "/object", 11};
  app_request.set(http::field::host, "cdn.test");
  const request_header request = app_request.base();

  fetch_run run;
  asio::cancellation_signal cancel;
  auto main = [&]() -> asio::awaitable<void> {
    std::vector<detail::fetch_route> routes;
    for (auto& p : paths) routes.push_back({&p, routes.empty(), nullptr});
    detail::initial_stream initial{detail::upstream(io.get_executor()), nullptr};
    // The first request, as the session sends it.
    co_await origin.async_connect(initial.up, paths[0], target, true);
    auto first = detail::upstream_request(request, target);
    const std::uint64_t head_end = 256 * 1024;
    if (!whole_first) first.set(http::field::range, "bytes=0-" + std::to_string(head_end - 1));
    co_await http::async_write(initial.up.stream, first, detail::nothrow);
    initial.parser = detail::make_response_parser(false);
    auto ec = co_await detail::async_read_final_header(initial.up, initial.parser, false,
                                                       std::chrono::seconds(5));
    EXPECT_FALSE(ec) << ec.message();
    fetch_state state(detail::limits_of(config), detail::fetch_paths_of(routes),
                      std::chrono::steady_clock::now());
    state.on_first_response(
        {true, size, 0, size, whole_first ? std::nullopt : std::optional<std::uint64_t>(head_end)},
        std::chrono::steady_clock::now());
    detail::byte_sink sink = [&run](const std::vector<asio::const_buffer>& pieces)
        -> asio::awaitable<std::pair<boost::system::error_code, std::size_t>> {
      std::size_t n = 0;
      for (const auto& piece : pieces) {
        const auto* data = static_cast<const char*>(piece.data());
        run.sink.insert(run.sink.end(), data, data + piece.size());
        n += piece.size();
      }
      co_return std::pair{boost::system::error_code{}, n};
    };
    detail::fetch_start start{request, target,       std::move(initial),      std::move(routes),
                              origin,  config.proxy, "http://cdn.test/object"};
    run.delivered = co_await detail::async_run_fetch(state, std::move(start), sink);
    for (std::size_t i = 0; i < state.path_count(); ++i) {
      run.phases.push_back(state.path(i).phase);
      run.bytes.push_back(state.path(i).bytes);
      run.stolen.push_back(state.path(i).stolen);
    }
    run.mismatches = state.mismatches();
  };
  asio::co_spawn(io, main(), asio::bind_cancellation_slot(cancel.slot(), [](std::exception_ptr e) {
                   if (e) std::rethrow_exception(e);
                 }));
  if (cancel_after) {
    io.run_for(*cancel_after);
    cancel.emit(asio::cancellation_type::terminal);
  }
  io.run_for(20s);
  EXPECT_TRUE(io.stopped()) << "the fetch left work behind (a fetcher not joined?)";
  return run;
}

TEST(MultipathFetch, TwoPathsKeepAliveAndPipelined) {
  fake_origin origin;
  const auto object = object_bytes(3'000'000, 7);
  auto& wifi = origin.add(object, {.piece_bytes = 1500});
  auto& cell = origin.add(object, {.piece_bytes = 1500});
  const auto run = run_fetch(origin, object.size());
  ASSERT_EQ(run.delivered, true);
  EXPECT_TRUE(run.sink == object);
  EXPECT_GT(run.bytes[1], 0u);
  // Every range of a path on its one keep-alive connection. The in-memory origin has no
  // rate of its own (a loaded machine makes one path's reader fall behind): where the
  // other path took over a tail, the cut response cost the slow path its connection, and
  // that is the only reason for another (none when the slow path had nothing left).
  EXPECT_LE(wifi.log.connections, 1 + static_cast<int>(run.stolen[1]));
  EXPECT_LE(cell.log.connections, 1 + static_cast<int>(run.stolen[0]));
  EXPECT_GT(cell.log.requests, 1);
}

TEST(MultipathFetch, WarmConnectionClosedWhileIdleIsReplacedOnce) {
  // The cellular path's connection comes warm from the pool, but its node closed it
  // meanwhile: the range request goes again on a new connection; the path stays in.
  fake_origin origin;
  const auto object = object_bytes(3'000'000, 17);
  origin.add(object);
  auto& cell = origin.add(object);
  cell.closed_warm_connections = 1;
  const auto run = run_fetch(origin, object.size());
  ASSERT_EQ(run.delivered, true);
  EXPECT_TRUE(run.sink == object);
  EXPECT_EQ(run.phases[1], path_phase::finished);
  EXPECT_GT(run.bytes[1], 0u);
  EXPECT_EQ(cell.log.connections, 2);
}

TEST(MultipathFetch, ServerThatClosesAfterEachResponse) {
  fake_origin origin;
  const auto object = object_bytes(2'000'000, 8);
  origin.add(object, {.closes_after_each_response = true});
  auto& cell = origin.add(object, {.closes_after_each_response = true});
  const auto run = run_fetch(origin, object.size());
  ASSERT_EQ(run.delivered, true);
  EXPECT_TRUE(run.sink == object);
  // A new connection for every range.
  EXPECT_EQ(cell.log.connections, cell.log.requests);
}

TEST(MultipathFetch, NodeAnswering200ToRangesIsDropped) {
  fake_origin origin;
  const auto object = object_bytes(2'000'000, 9);
  origin.add(object);
  auto& cell = origin.add(object, {.answers_200_to_ranges = true});
  const auto run = run_fetch(origin, object.size());
  ASSERT_EQ(run.delivered, true);
  EXPECT_TRUE(run.sink == object);
  EXPECT_EQ(run.phases[1], path_phase::failed);
  EXPECT_EQ(run.bytes[1], 0u);
  EXPECT_EQ(run.mismatches, 0u);  // a refusal, not another version (issue 16)
  EXPECT_EQ(cell.log.requests, 1);
}

TEST(MultipathFetch, EachPathSendsItsOwnNodesValidator) {
  // Two nodes, the same bytes under other ETags (issue 16): the cellular path's first
  // request has no If-Range, its later ones its own node's ETag; none is refused.
  fake_origin origin;
  const auto object = object_bytes(3'000'000, 16);
  origin.add(object, {.etag = "\"wifi-node\""});
  auto& cell = origin.add(object, {.etag = "\"cell-node\""});
  const auto run = run_fetch(origin, object.size());
  ASSERT_EQ(run.delivered, true);
  EXPECT_TRUE(run.sink == object);
  EXPECT_EQ(run.mismatches, 0u);
  EXPECT_EQ(run.phases[1], path_phase::finished);
  ASSERT_GT(cell.log.if_range.size(), 1u);
  EXPECT_EQ(cell.log.if_range[0], "");
  for (std::size_t i = 1; i < cell.log.if_range.size(); ++i)
    EXPECT_EQ(cell.log.if_range[i], "\"cell-node\"") << i;
}

TEST(MultipathFetch, ConnectionThatBreaksGivesItsRangeBack) {
  fake_origin origin;
  const auto object = object_bytes(2'000'000, 10);
  origin.add(object);
  origin.add(object, {.breaks_after_bytes = 200'000});
  const auto run = run_fetch(origin, object.size());
  ASSERT_EQ(run.delivered, true);
  EXPECT_TRUE(run.sink == object);
  // The broken path tries again after a pause; by then Wi-Fi has fetched the rest.
  EXPECT_NE(run.phases[1], path_phase::failed);
  EXPECT_LT(run.bytes[1], 200'000u);
}

TEST(MultipathFetch, OtherVersionOnOnePathIsNeverSpliced) {
  fake_origin origin;
  const auto object = object_bytes(2'000'000, 11);
  origin.add(object);
  origin.add(object_bytes(2'000'000, 12));
  const auto run = run_fetch(origin, object.size());
  ASSERT_EQ(run.delivered, true);
  EXPECT_TRUE(run.sink == object);
  EXPECT_GE(run.mismatches, 1u);
  EXPECT_EQ(run.phases[1], path_phase::failed);
}

TEST(MultipathFetch, WholeFirstResponseIsResetAndGoesOnOnItsSpare) {
  fake_origin origin;
  const auto object = object_bytes(3'000'000, 13);
  auto& wifi = origin.add(object, {.piece_bytes = 2000});
  origin.add(object, {.piece_bytes = 2000});
  const auto run = run_fetch(origin, object.size(), /*whole_first=*/true);
  ASSERT_EQ(run.delivered, true);
  EXPECT_TRUE(run.sink == object);
  // The first connection (whole object), then the spare it opened.
  EXPECT_GE(wifi.log.connections, 2);
}

TEST(MultipathFetch, BothPathsBreakTheFetchFailsWithAPrefix) {
  fake_origin origin;
  const auto object = object_bytes(2'000'000, 14);
  origin.add(object, {.breaks_after_bytes = 300'000});
  origin.add(object, {.breaks_after_bytes = 100'000});
  const auto run = run_fetch(origin, object.size());
  ASSERT_EQ(run.delivered, false);
  ASSERT_LT(run.sink.size(), object.size());
  EXPECT_TRUE(std::equal(run.sink.begin(), run.sink.end(), object.begin()));
}

TEST(MultipathFetch, CancelledCallerStopsAndJoinsEveryFetcher) {
  // Both servers go silent: the fetchers wait on their reads (the last path left is not
  // judged stalled; it has the I/O timeout) until the caller is cancelled; then the fetch
  // returns false with all of them joined (run_fetch checks that nothing is left).
  fake_origin origin;
  const auto object = object_bytes(2'000'000, 15);
  origin.add(object, {.silent_after_bytes = 100'000});
  origin.add(object, {.silent_after_bytes = 100'000});
  const auto run = run_fetch(origin, object.size(), false, 30ms);
  ASSERT_TRUE(run.delivered.has_value());
  EXPECT_FALSE(*run.delivered);
}

// Split when it pays (issue 17): the threshold from the paths' estimates.
TEST(SplitThreshold, FollowsTheRatesTheLeadsAndTheMode) {
  std::vector<path_runtime> owned;
  owned.push_back(make_path("wifi", 0));
  owned.push_back(make_path("cell", 1));
  std::vector<path_runtime*> paths{&owned[0], &owned[1]};
  core::scheduler_config scheduler;
  scheduler.mode = core::scheduler_mode::aggregate;
  // 20/20 Mbit/s, RTT 50 ms. Cellular connected already: a round trip and slow start
  // (log2(125 000 / 14 480) − 1 = 2.11 RTT) ≈ 0.156 s; the split must save Wi-Fi's RTT:
  // (0.05·5e6 + 2.5e6·0.156)·1 ≈ 639 kB. A new connection adds a round trip: 764 kB.
  EXPECT_NEAR(static_cast<double>(detail::split_threshold_bytes(paths, scheduler, true)), 638'900,
              1'000);
  EXPECT_NEAR(static_cast<double>(detail::split_threshold_bytes(paths, scheduler, false)), 763'900,
              1'000);
  // A faster Wi-Fi needs a bigger object before cellular helps.
  owned[0].estimator.on_rate(50e6 / 8);
  const auto fast_wifi = detail::split_threshold_bytes(paths, scheduler, true);
  EXPECT_GT(fast_wifi, 1'800'000U);
  EXPECT_LT(fast_wifi, 2'400'000U);
  // Cost mode: nothing Wi-Fi alone fetches within the tolerance (1 s) is split.
  scheduler.mode = core::scheduler_mode::cost;
  EXPECT_EQ(detail::split_threshold_bytes(paths, scheduler, true), 6'250'000U);
  // A size in the config is the threshold; one path never splits.
  scheduler.min_split_bytes = 123;
  EXPECT_EQ(detail::split_threshold_bytes(paths, scheduler, true), 123U);
  scheduler.min_split_bytes.reset();
  paths.pop_back();
  EXPECT_EQ(detail::split_threshold_bytes(paths, scheduler, true), 8'000'000U);
}

}  // namespace
}  // namespace fleety::mphttp
