#include "net/task_group.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/system_error.hpp>
#include <cstdlib>
#include <exception>
#include <utility>

namespace fleety::net {

namespace asio = boost::asio;

task_group::task_group(const asio::any_io_executor& executor)
    : executor_(executor), all_done_(executor) {}

task_group::~task_group() {
  if (!members_.empty()) {
    // A member still running would wake up in a frame whose context is gone: that is a
    // use-after-free later, so stop here with the names of what was left.
    std::string left;
    for (const auto& m : members_) left += (left.empty() ? "" : ", ") + m.what;
    spdlog::critical("task group destroyed with {} member(s) still running: {}", members_.size(),
                     left);
    std::abort();
  }
}

/// A member's place in its group, held by the member's completion handler: it ends when
/// the handler runs, or when the handler is destroyed without running (the io_context
/// was destroyed with the member's frame in it).
class task_group::membership {
 public:
  membership(task_group& group, std::list<member>::iterator which)
      : group_(&group), which_(which) {}
  membership(membership&& other) noexcept
      : group_(std::exchange(other.group_, nullptr)), which_(other.which_) {}
  membership& operator=(membership&&) = delete;
  membership(const membership&) = delete;
  membership& operator=(const membership&) = delete;
  ~membership() {
    if (group_ != nullptr) group_->on_member_done(which_, /*ran=*/false);
  }
  void end() { std::exchange(group_, nullptr)->on_member_done(which_, /*ran=*/true); }

 private:
  task_group* group_;
  std::list<member>::iterator which_;
};

task_group::member_id task_group::spawn(asio::awaitable<void> task, std::string what) {
  // On its way out: the task is not started (its frame, and what was moved into it, go
  // now: a connection accepted during shutdown is closed).
  if (cancelled()) return 0;
  auto it = members_.emplace(members_.end());
  it->what = std::move(what);
  it->id = ++spawned_;
  membership place(*this, it);
  asio::co_spawn(executor_, std::move(task),
                 asio::bind_cancellation_slot(
                     it->signal.slot(),
                     [place = std::move(place), what = it->what](std::exception_ptr e) mutable {
                       if (e) {
                         try {
                           std::rethrow_exception(e);
                         } catch (const boost::system::system_error& error) {
                           // Cancelled while it awaited: that is how members are stopped.
                           if (error.code() != asio::error::operation_aborted)
                             spdlog::error("{} ended by an error: {}", what, error.what());
                         } catch (const std::exception& error) {
                           spdlog::error("{} ended by an error: {}", what, error.what());
                         }
                       }
                       place.end();
                     }));
  return it->id;
}

void task_group::cancel(member_id which, asio::cancellation_type type) {
  for (auto& m : members_) {
    if (m.id == which) {
      m.signal.emit(type);
      return;
    }
  }
}

void task_group::on_member_done(std::list<member>::iterator which, bool ran) {
  members_.erase(which);
  // (Not from a destroyed handler: that happens while the io_context shuts down, when
  // the timer's service may be gone already; nobody waits then anyway.)
  if (members_.empty() && ran) all_done_.cancel();
}

void task_group::cancel(asio::cancellation_type type) {
  cancelled_ = type;
  // (Emitting may complete a member's operation at once, but its completion handler is
  // never called from inside emit: the member ends later, so the list is stable here.)
  for (auto& m : members_) m.signal.emit(type);
}

asio::awaitable<void> task_group::async_join() {
  // The owner may itself be cancelled (that is often why it joins): its next await must
  // not throw before its members have ended.
  const bool was_throwing = co_await asio::this_coro::throw_if_cancelled();
  co_await asio::this_coro::throw_if_cancelled(false);
  while (!members_.empty()) {
    all_done_.expires_after(std::chrono::seconds(1));
    co_await all_done_.async_wait(asio::as_tuple(asio::use_awaitable));
  }
  co_await asio::this_coro::throw_if_cancelled(was_throwing);
}

asio::awaitable<bool> task_group::async_join_within(std::chrono::steady_clock::duration timeout) {
  const bool was_throwing = co_await asio::this_coro::throw_if_cancelled();
  co_await asio::this_coro::throw_if_cancelled(false);
  for (int round = 0; round < 2 && !members_.empty(); ++round) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!members_.empty() && std::chrono::steady_clock::now() < deadline) {
      all_done_.expires_at(
          std::min(deadline, std::chrono::steady_clock::now() + std::chrono::seconds(1)));
      co_await all_done_.async_wait(asio::as_tuple(asio::use_awaitable));
    }
    if (!members_.empty()) {
      std::string left;
      for (const auto& m : members_) left += (left.empty() ? "" : ", ") + m.what;
      spdlog::warn("{} task(s) still running after {} ms: {}{}", members_.size(),
                   std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count(), left,
                   round == 0 ? ": cancelling them again" : "");
      cancel(asio::cancellation_type::terminal);
    }
  }
  co_await asio::this_coro::throw_if_cancelled(was_throwing);
  co_return members_.empty();
}

}  // namespace fleety::net
