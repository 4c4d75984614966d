#pragma once
// The owner of a set of coroutines (STYLE.md "Every co_spawn is tracked in a task group";
// Beast's task_group in its advanced server example): it spawns them, cancels them and
// waits for them. Whoever holds a task_group holds what its members use, and joins them
// before it destroys any of it: then no coroutine frame outlives what it refers to.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/cancellation_type.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <string>

namespace fleety::net {

/// Coroutines with one owner. Not thread-safe: one io_context thread (STYLE.md).
///
/// A member's cancellation slot is the group's, so cancel() reaches whatever the member
/// awaits. A member that ends by an exception is logged once (spdlog, with `what`); the
/// exception goes no further. The group must not be destroyed while it has members:
/// its owner calls async_join (after cancel, on the way out) first. So a coroutine that
/// owns a group runs with `this_coro::throw_if_cancelled(false)` (it sees its own
/// cancellation as operation_aborted results): otherwise, once cancelled, its very
/// co_await of async_join would throw and unwind its frame, group included, under
/// members still running (the destructor aborts the process rather than let them).
class task_group {
 public:
  explicit task_group(const boost::asio::any_io_executor& executor);
  ~task_group();
  task_group(const task_group&) = delete;
  task_group& operator=(const task_group&) = delete;

  /// Names one member, for cancel(member_id).
  using member_id = std::uint64_t;

  /// Starts `task` as a member, on the group's executor. `what` names it in logs. A group
  /// that was cancelled is on its way out: the task is dropped without being started (the
  /// id returned then names nobody).
  member_id spawn(boost::asio::awaitable<void> task, std::string what);

  /// Emits `type` to every member's cancellation slot; tasks spawned later are dropped.
  void cancel(boost::asio::cancellation_type type = boost::asio::cancellation_type::terminal);
  /// Emits `type` to one member's slot (nothing if it has ended); the group goes on.
  void cancel(member_id which,
              boost::asio::cancellation_type type = boost::asio::cancellation_type::terminal);

  /// Returns once the group has no members. Never throws on the caller's own
  /// cancellation: an owner that is being cancelled must still wait for its members.
  boost::asio::awaitable<void> async_join();

  /// async_join, bounded: after `timeout` the members still running are cancelled again
  /// and waited for once more, up to `timeout`. Returns false if members remain (logged,
  /// with what they are).
  boost::asio::awaitable<bool> async_join_within(std::chrono::steady_clock::duration timeout);

  std::size_t size() const { return members_.size(); }
  bool empty() const { return members_.empty(); }
  bool cancelled() const { return cancelled_ != boost::asio::cancellation_type::none; }
  /// Members spawned since the group was made (for tests and logs).
  std::uint64_t spawned() const { return spawned_; }

 private:
  struct member {
    boost::asio::cancellation_signal signal;
    std::string what;
    member_id id = 0;
  };
  class membership;
  void on_member_done(std::list<member>::iterator which, bool ran);

  boost::asio::any_io_executor executor_;
  std::list<member> members_;           ///< owned; stable addresses for the signals' slots
  boost::asio::steady_timer all_done_;  ///< cancelled when the last member ends
  boost::asio::cancellation_type cancelled_ = boost::asio::cancellation_type::none;
  std::uint64_t spawned_ = 0;
};

}  // namespace fleety::net
