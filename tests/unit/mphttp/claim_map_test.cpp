#include "mphttp/claim_map.hpp"

#include <gtest/gtest.h>

namespace fleety::mphttp {
namespace {

constexpr double mbit = 1e6 / 8;  // bytes per second in one Mbit/s
constexpr std::uint64_t MB = 1'000'000;

TEST(ClaimMap, ClaimAndReleaseKeepTheUnclaimedCount) {
  claim_map claims(10 * MB);
  claims.claim({0, 2 * MB});
  claims.claim({8 * MB, 10 * MB});
  EXPECT_EQ(claims.unclaimed_bytes(), 6 * MB);
  claims.claim({2 * MB, 3 * MB});  // merges with [0, 2 MB)
  EXPECT_EQ(claims.unclaimed_bytes(), 5 * MB);
  claims.claim({7 * MB, 8 * MB});  // merges with [8 MB, 10 MB)
  EXPECT_EQ(claims.unclaimed_bytes(), 4 * MB);
  claims.release({7 * MB, 8 * MB});
  EXPECT_TRUE(claims.is_claimed(2'999'999));
  EXPECT_FALSE(claims.is_claimed(3 * MB));
  claims.release({1 * MB, 2 * MB});  // splits the run
  EXPECT_FALSE(claims.is_claimed(1 * MB));
  EXPECT_TRUE(claims.is_claimed(999'999));
  EXPECT_TRUE(claims.is_claimed(2 * MB));
  EXPECT_EQ(claims.unclaimed_bytes(), 6 * MB);
}

TEST(ClaimMap, LowestUnclaimedSkipsClaimedRunsAndStopsAtTheLimit) {
  claim_map claims(10 * MB);
  claims.claim({0, 2 * MB});
  claims.claim({5 * MB, 6 * MB});
  EXPECT_EQ(claims.lowest_unclaimed(0, 10 * MB), (byte_range{2 * MB, 5 * MB}));
  EXPECT_EQ(claims.lowest_unclaimed(1 * MB, 4 * MB), (byte_range{2 * MB, 4 * MB}));
  EXPECT_EQ(claims.lowest_unclaimed(5 * MB, 10 * MB), (byte_range{6 * MB, 10 * MB}));
  EXPECT_EQ(claims.lowest_unclaimed(3 * MB, 10 * MB), (byte_range{3 * MB, 5 * MB}));
  EXPECT_FALSE(claims.lowest_unclaimed(0, 2 * MB));  // all claimed below the limit
}

TEST(ClaimMap, HighestUnclaimedEndsBelowTheLimit) {
  claim_map claims(10 * MB);
  EXPECT_EQ(claims.highest_unclaimed(20 * MB), (byte_range{0, 10 * MB}));  // cut at the end
  claims.claim({8 * MB, 10 * MB});
  claims.claim({3 * MB, 4 * MB});
  EXPECT_EQ(claims.highest_unclaimed(10 * MB), (byte_range{4 * MB, 8 * MB}));
  EXPECT_EQ(claims.highest_unclaimed(9 * MB), (byte_range{4 * MB, 8 * MB}));  // limit inside a run
  EXPECT_EQ(claims.highest_unclaimed(6 * MB), (byte_range{4 * MB, 6 * MB}));
  EXPECT_EQ(claims.highest_unclaimed(4 * MB), (byte_range{0, 3 * MB}));
  claims.claim({0, 3 * MB});
  EXPECT_FALSE(claims.highest_unclaimed(4 * MB));
}

/// Two paths: Wi-Fi 50 Mbit/s, cellular 20 Mbit/s, both idle and connected (lead 50 ms).
struct TwoPaths {
  path_estimate paths[2] = {{50 * mbit, 0.05}, {20 * mbit, 0.05}};
  claim_inputs inputs(std::size_t path, claim_side side, std::uint64_t from, std::uint64_t limit,
                      bool cost_aware = false) const {
    claim_inputs in;
    in.path = path;
    in.paths = paths;
    in.policy = {cost_aware, 1.0};
    in.side = side;
    in.from = from;
    in.limit = limit;
    return in;
  }
};

TEST(ChooseClaim, FrontRangeIsAboutRangeTimeOfThePathsRate) {
  claim_map claims(100 * MB);
  TwoPaths two;
  // 0.3 s at 50 Mbit/s = 1 875 000 bytes, from the delivery point.
  auto range = choose_claim(claims, two.inputs(0, claim_side::front, 0, 32 * MB));
  ASSERT_TRUE(range);
  EXPECT_EQ(*range, (byte_range{0, 1'875'000}));
  claims.claim(*range);
  // Cellular: 0.3 s at 20 Mbit/s = 750 000 bytes, right after.
  range = choose_claim(claims, two.inputs(1, claim_side::front, 0, 32 * MB));
  ASSERT_TRUE(range);
  EXPECT_EQ(*range, (byte_range{1'875'000, 2'625'000}));
}

TEST(ChooseClaim, BackRangeComesFromTheTopOfTheLimit) {
  claim_map claims(100 * MB);
  claims.claim({0, 1'875'000});  // the first path's stream
  TwoPaths two;
  auto range = choose_claim(claims, two.inputs(1, claim_side::back, 0, 32 * MB));
  ASSERT_TRUE(range);
  EXPECT_EQ(*range, (byte_range{32 * MB - 750'000, 32 * MB}));
}

TEST(ChooseClaim, BackSideFallsBackToTheFrontWhenNothingIsLeftBelowTheLimit) {
  claim_map claims(100 * MB);
  claims.claim({0, 32 * MB});
  TwoPaths two;
  auto range = choose_claim(claims, two.inputs(1, claim_side::back, 0, 32 * MB));
  EXPECT_FALSE(range);  // the window is full: wait
  range = choose_claim(claims, two.inputs(1, claim_side::back, 0, 40 * MB));
  ASSERT_TRUE(range);
  EXPECT_EQ(*range, (byte_range{40 * MB - 750'000, 40 * MB}));
}

TEST(ChooseClaim, NearTheEndRangesShrinkToTheEqualCompletionShare) {
  // 1 MB left, Wi-Fi idle, cellular idle: T = (1e6 + 6.25e6·0.05 + 2.5e6·0.05) / 8.75e6
  // = 0.16429 s; cellular's share 2.5e6·(T − 0.05) = 285 714 bytes, less than 0.3 s worth.
  claim_map claims(10 * MB);
  claims.claim({0, 9 * MB});
  TwoPaths two;
  auto range = choose_claim(claims, two.inputs(1, claim_side::front, 0, 32 * MB));
  ASSERT_TRUE(range);
  EXPECT_NEAR(static_cast<double>(range->size()), 285'714, 1);
  EXPECT_EQ(range->begin, 9 * MB);
}

TEST(ChooseClaim, PathWithALongBacklogGetsNothingAtTheEnd) {
  // 500 kB left; cellular still has 2 s of backlog: equal completion drops it.
  claim_map claims(10 * MB);
  claims.claim({0, 9'500'000});
  TwoPaths two;
  two.paths[1].lead_s = 2.0;
  EXPECT_FALSE(choose_claim(claims, two.inputs(1, claim_side::front, 0, 32 * MB)));
  auto range = choose_claim(claims, two.inputs(0, claim_side::front, 0, 32 * MB));
  ASSERT_TRUE(range);
  EXPECT_EQ(*range, (byte_range{9'500'000, 10 * MB}));  // Wi-Fi takes all of it
}

TEST(ChooseClaim, CostModeKeepsCellularOutWhenWifiFinishesWithinTolerance) {
  // 4 MB left: Wi-Fi alone needs 0.05 + 4e6 / 6.25e6 = 0.69 s ≤ 1 s: case 1.
  claim_map claims(10 * MB);
  claims.claim({0, 6 * MB});
  TwoPaths two;
  EXPECT_FALSE(choose_claim(claims, two.inputs(1, claim_side::front, 0, 32 * MB, true)));
  // Aggregate mode uses cellular for the same bytes.
  EXPECT_TRUE(choose_claim(claims, two.inputs(1, claim_side::front, 0, 32 * MB, false)));
}

TEST(ChooseClaim, SliverNextToTheRangeIsTakenAlong) {
  claim_map claims(100 * MB);
  claims.claim({0, 1'100'000});
  claims.claim({3 * MB, 100 * MB});
  TwoPaths two;
  two.paths[1].rate_bytes_per_s = 0;  // Wi-Fi alone: its share is all that is left
  // 1.9 MB left; Wi-Fi's 0.3 s is 1.875 MB: all of it, no 25 kB remnant.
  auto range = choose_claim(claims, two.inputs(0, claim_side::front, 0, 32 * MB));
  ASSERT_TRUE(range);
  EXPECT_EQ(*range, (byte_range{1'100'000, 3 * MB}));
}

TEST(ChooseClaim, FarFromTheEndARangeTakesAFractionOfTheShare) {
  // 10 MB, nothing claimed, both idle: T = (1e7 + 6.25e6·0.05 + 2.5e6·0.05) / 8.75e6
  // = 1.19286 s; Wi-Fi's share 6.25e6·(T − 0.05) = 7 142 857 bytes. Half of it (3 571 428)
  // is more than 0.3 s (1 875 000) and less than 8·0.3 s of its rate (15 MB).
  claim_map claims(10 * MB);
  TwoPaths two;
  auto in = two.inputs(0, claim_side::front, 0, 32 * MB);
  in.share_fraction = 0.5;
  in.max_range_time_s = 2.4;
  auto range = choose_claim(claims, in);
  ASSERT_TRUE(range);
  EXPECT_NEAR(static_cast<double>(range->size()), 3'571'428, 2);
  // The cap: no more than max_range_time_s of the path's rate (0.4 s: 2.5 MB).
  in.max_range_time_s = 0.4;
  range = choose_claim(claims, in);
  ASSERT_TRUE(range);
  EXPECT_EQ(range->size(), 2'500'000U);
  // 3 MB left: T = 0.39286 s, Wi-Fi's share 2 142 857; half of it is less than range_time's
  // worth, which rules again.
  claims.claim({0, 7 * MB});
  in.max_range_time_s = 2.4;
  range = choose_claim(claims, in);
  ASSERT_TRUE(range);
  EXPECT_EQ(range->size(), 1'875'000U);
}

TEST(ChooseClaim, FailedPathGetsNothing) {
  claim_map claims(10 * MB);
  TwoPaths two;
  two.paths[1].rate_bytes_per_s = 0;
  EXPECT_FALSE(choose_claim(claims, two.inputs(1, claim_side::front, 0, 32 * MB)));
}

}  // namespace
}  // namespace fleety::mphttp
