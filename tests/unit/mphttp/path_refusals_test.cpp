#include "mphttp/path_refusals.hpp"

#include <gtest/gtest.h>

namespace fleety::mphttp {
namespace {

using namespace std::chrono_literals;
using clock = path_refusals::clock;

const clock::time_point t0 = clock::time_point{} + 1000s;

TEST(PathRefusals, RetryAfterIsHonoured) {
  path_refusals r;
  const auto until = r.record("cdn.test", "cell", refusal::rate_limited, 429, 90s, t0);
  EXPECT_EQ(until, t0 + 90s);
  EXPECT_TRUE(r.refused("cdn.test", "cell", t0 + 89s));
  EXPECT_FALSE(r.refused("cdn.test", "cell", t0 + 90s));
  // Another host, another path: not refused.
  EXPECT_FALSE(r.refused("other.test", "cell", t0));
  EXPECT_FALSE(r.refused("cdn.test", "wifi", t0));
  EXPECT_EQ(r.totals().at(refusal::rate_limited), 1u);
}

TEST(PathRefusals, BackoffDoublesWithoutRetryAfter) {
  path_refusals r;
  //           strike: 1    2    3     4     5     6     7
  const int expected_s[] = {30, 60, 120, 240, 480, 600, 600};
  clock::time_point now = t0;
  for (int s : expected_s) {
    const auto until = r.record("cdn.test", "cell", refusal::forbidden, 403, std::nullopt, now);
    EXPECT_EQ(until - now, std::chrono::seconds(s));
    now = until;  // refused again as soon as it is asked again
  }
}

TEST(PathRefusals, StrikesStartAgainLongAfter) {
  path_refusals r;
  auto until = r.record("cdn.test", "cell", refusal::forbidden, 403, std::nullopt, t0);
  until = r.record("cdn.test", "cell", refusal::forbidden, 403, std::nullopt, until);
  EXPECT_EQ(r.active(until - 1s).front().strikes, 2u);
  const auto later = until + path_refusals::max_backoff + 1s;
  EXPECT_EQ(r.record("cdn.test", "cell", refusal::forbidden, 403, std::nullopt, later) - later,
            path_refusals::first_backoff);
}

TEST(PathRefusals, RetryAfterIsBounded) {
  path_refusals r;
  EXPECT_EQ(r.record("a", "cell", refusal::unavailable, 503, 86400s, t0) - t0,
            path_refusals::max_retry_after);
  EXPECT_EQ(r.record("b", "cell", refusal::unavailable, 503, 0s, t0) - t0, 1s);
}

TEST(PathRefusals, BoundedExpiredGoFirst) {
  path_refusals r;
  for (std::size_t i = 0; i < path_refusals::max_entries; ++i)
    r.record("h" + std::to_string(i), "cell", refusal::forbidden, 403, 10s, t0);
  r.record("long", "cell", refusal::forbidden, 403, 100s, t0);
  EXPECT_EQ(r.active(t0).size(), path_refusals::max_entries);
  EXPECT_TRUE(r.refused("long", "cell", t0));
  // Later, the expired ones make room.
  r.record("new", "cell", refusal::forbidden, 403, 100s, t0 + 20s);
  EXPECT_EQ(r.active(t0 + 20s).size(), 2u);
}

}  // namespace
}  // namespace fleety::mphttp
