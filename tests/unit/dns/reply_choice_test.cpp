#include "dns/reply_choice.hpp"

#include <gtest/gtest.h>

#include <vector>

namespace fleety::dns {
namespace {

using verdict = reply_choice::verdict;
constexpr auto P = reply_status::pending;
constexpr auto S = reply_status::succeeded;
constexpr auto F = reply_status::failed;

TEST(ChooseReply, PreferredPathFirstThenTheFirstOtherSuccess) {
  struct row {
    std::vector<reply_status> statuses;  // index 0: the preferred path
    bool deadline_passed;
    reply_choice expected;
  };
  const row rows[] = {
      // The preferred path answered: its reply, whatever the others do.
      {{S}, false, {verdict::use, /*path=*/0}},
      {{S, P, P}, false, {verdict::use, 0}},
      {{S, F, S}, false, {verdict::use, 0}},
      // The preferred path is pending: undecided, even when another succeeded.
      {{P}, false, {verdict::wait, 0}},
      {{P, S}, false, {verdict::wait, 0}},
      {{P, F, F}, false, {verdict::wait, 0}},
      // It failed: the first other success, not waiting for a pending one before it.
      {{F, S}, false, {verdict::use, 1}},
      {{F, S, S}, false, {verdict::use, 1}},
      {{F, P, S}, false, {verdict::use, 2}},
      {{F, F, S}, false, {verdict::use, 2}},
      // It failed and no other succeeded yet: wait while one may still.
      {{F, P}, false, {verdict::wait, 0}},
      {{F, F, P}, false, {verdict::wait, 0}},
      // Every path failed.
      {{F}, false, {verdict::fail, 0}},
      {{F, F, F}, false, {verdict::fail, 0}},
      // Nobody asked.
      {{}, false, {verdict::fail, 0}},
      // At the deadline, pending counts as failed: the verdict is never wait.
      {{P}, true, {verdict::fail, 0}},
      {{P, S}, true, {verdict::use, 1}},
      {{P, P, S}, true, {verdict::use, 2}},
      {{F, P}, true, {verdict::fail, 0}},
      {{S, P}, true, {verdict::use, 0}},
      {{P, P}, true, {verdict::fail, 0}},
  };
  for (const auto& r : rows) {
    std::string text;
    for (auto s : r.statuses) text += s == P ? 'P' : s == S ? 'S' : 'F';
    EXPECT_EQ(choose_reply(r.statuses, r.deadline_passed), r.expected)
        << text << (r.deadline_passed ? " at the deadline" : "");
  }
}

}  // namespace
}  // namespace fleety::dns
