#include "net/task_group.hpp"

#include <gtest/gtest.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>

namespace fleety::net {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);

/// Waits `duration` (or until cancelled); counts how it ended.
asio::awaitable<void> sleeper(std::chrono::milliseconds duration, int& finished, int& aborted) {
  asio::steady_timer timer(co_await asio::this_coro::executor, duration);
  auto [ec] = co_await timer.async_wait(nothrow);
  (ec == asio::error::operation_aborted ? aborted : finished)++;
}

TEST(TaskGroup, JoinWaitsForEveryMember) {
  asio::io_context io;
  task_group group(io.get_executor());
  int finished = 0;
  int aborted = 0;
  bool joined = false;
  group.spawn(sleeper(20ms, finished, aborted), "a");
  group.spawn(sleeper(40ms, finished, aborted), "b");
  EXPECT_EQ(group.size(), 2u);
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        co_await group.async_join();
        joined = true;
        EXPECT_EQ(finished, 2);
      },
      asio::detached);
  io.run_for(2s);
  EXPECT_TRUE(joined);
  EXPECT_TRUE(group.empty());
  EXPECT_EQ(aborted, 0);
  EXPECT_EQ(group.spawned(), 2u);
}

TEST(TaskGroup, CancelReachesWhatMembersAwait) {
  asio::io_context io;
  task_group group(io.get_executor());
  int finished = 0;
  int aborted = 0;
  for (int i = 0; i < 3; ++i) group.spawn(sleeper(60s, finished, aborted), "sleeper");
  const auto started = std::chrono::steady_clock::now();
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        asio::steady_timer t(io, 10ms);
        co_await t.async_wait(nothrow);
        group.cancel();
        co_await group.async_join();
      },
      asio::detached);
  io.run_for(5s);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 2s);
  EXPECT_EQ(aborted, 3);
  EXPECT_EQ(finished, 0);
  EXPECT_TRUE(group.empty());
}

asio::awaitable<void> note_run(bool& ran, std::shared_ptr<int> held) {
  ran = true;
  (void)held;
  co_return;
}

TEST(TaskGroup, CancelOneMemberTheOthersGoOn) {
  asio::io_context io;
  task_group group(io.get_executor());
  int finished = 0;
  int aborted = 0;
  const auto first = group.spawn(sleeper(60s, finished, aborted), "first");
  group.spawn(sleeper(20ms, finished, aborted), "second");
  group.cancel(first);
  io.run_for(2s);
  EXPECT_EQ(aborted, 1);
  EXPECT_EQ(finished, 1);
  EXPECT_TRUE(group.empty());
  group.cancel(first);  // ended: names nobody now
}

TEST(TaskGroup, TaskSpawnedAfterCancelIsNotStarted) {
  asio::io_context io;
  task_group group(io.get_executor());
  group.cancel();
  bool started = false;
  auto flag = std::make_shared<int>(0);
  group.spawn(note_run(started, flag), "late");
  // The task's frame went at once, with what was moved into it.
  EXPECT_EQ(flag.use_count(), 1);
  io.run_for(100ms);
  EXPECT_FALSE(started);
  EXPECT_TRUE(group.empty());
}

asio::awaitable<void> thrower() {
  throw std::runtime_error("boom");
  co_return;
}

TEST(TaskGroup, MemberThatThrowsLeavesTheGroupAndTheOthersGoOn) {
  asio::io_context io;
  task_group group(io.get_executor());
  int finished = 0;
  int aborted = 0;
  group.spawn(thrower(), "thrower");
  group.spawn(sleeper(10ms, finished, aborted), "sleeper");
  io.run_for(1s);
  EXPECT_TRUE(group.empty());
  EXPECT_EQ(finished, 1);
}

/// Takes a while to stop: goes on for 30 ms after its first cancellation.
asio::awaitable<void> slow_to_stop(int& finished) {
  co_await asio::this_coro::throw_if_cancelled(false);
  asio::steady_timer t(co_await asio::this_coro::executor, 60s);
  co_await t.async_wait(nothrow);
  t.expires_after(30ms);
  co_await t.async_wait(nothrow);
  ++finished;
}

/// Owns a group with one slow member; when cancelled, cancels and joins it.
asio::awaitable<void> owner(int& finished, bool& inner_empty_at_exit) {
  // An owner of a group sees its cancellation as results, never as a throw.
  co_await asio::this_coro::throw_if_cancelled(false);
  task_group inner(co_await asio::this_coro::executor);
  inner.spawn(slow_to_stop(finished), "slow to stop");
  asio::steady_timer wait(co_await asio::this_coro::executor, 60s);
  co_await wait.async_wait(nothrow);  // the outer cancel ends this wait
  inner.cancel();
  co_await inner.async_join();
  inner_empty_at_exit = inner.empty();
}

TEST(TaskGroup, JoinOfACancelledOwnerStillWaits) {
  // The owner is cancelled (its parent shuts down) and joins its members on the way out:
  // the join must not throw before they are gone.
  asio::io_context io;
  task_group outer(io.get_executor());
  int finished = 0;
  bool inner_empty_at_exit = false;
  outer.spawn(owner(finished, inner_empty_at_exit), "owner");
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        asio::steady_timer t(io, 10ms);
        co_await t.async_wait(nothrow);
        outer.cancel();
        co_await outer.async_join();
      },
      asio::detached);
  io.run_for(5s);
  EXPECT_TRUE(outer.empty());
  EXPECT_TRUE(inner_empty_at_exit);
  EXPECT_EQ(finished, 1);
}

/// Doesn't end in time: every wait is retried, cancellations ignored (a broken member);
/// it ends by itself after 300 ms.
asio::awaitable<void> stubborn() {
  co_await asio::this_coro::throw_if_cancelled(false);
  for (int i = 0; i < 30; ++i) {
    asio::steady_timer t(co_await asio::this_coro::executor, 10ms);
    co_await t.async_wait(nothrow);
  }
}

TEST(TaskGroup, JoinWithinGivesUpOnAMemberThatNeverEnds) {
  auto io = std::make_unique<asio::io_context>();
  auto group = std::make_unique<task_group>(io->get_executor());
  group->spawn(stubborn(), "stubborn");
  std::optional<bool> joined;
  asio::co_spawn(
      *io,
      [&]() -> asio::awaitable<void> {
        group->cancel();
        joined = co_await group->async_join_within(50ms);
      },
      asio::detached);
  const auto started = std::chrono::steady_clock::now();
  while (!joined && std::chrono::steady_clock::now() - started < 5s) io->run_one_for(100ms);
  ASSERT_TRUE(joined.has_value());
  EXPECT_FALSE(*joined);
  EXPECT_EQ(group->size(), 1u);
  // (A group cannot outlive its io_context: let the member end before both go.)
  io->run_for(2s);
  EXPECT_TRUE(group->empty());
}

}  // namespace
}  // namespace fleety::net
