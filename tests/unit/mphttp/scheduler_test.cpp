#include "mphttp/scheduler.hpp"

#include <gtest/gtest.h>

#include <limits>
#include <numeric>
#include <vector>

namespace fleety::mphttp {
namespace {

constexpr double mbit = 1e6 / 8;  // bytes per second in one Mbit/s

std::uint64_t sum(const split_plan& plan) {
  return std::accumulate(plan.share_bytes.begin(), plan.share_bytes.end(), std::uint64_t{0});
}

TEST(SplitEqualCompletion, EqualPathsShareEqually) {
  // 100 MB over 20 + 20 Mbit/s, 50 ms each: T = (1e8 + 2·2.5e6·0.05) / 5e6 = 20.05 s.
  const path_estimate paths[] = {{/*rate=*/20 * mbit, /*lead=*/0.05}, {20 * mbit, 0.05}};
  const auto plan = split_equal_completion(100'000'000, paths);
  EXPECT_NEAR(plan.completion_s, 20.05, 1e-9);
  EXPECT_EQ(plan.share_bytes[0], 50'000'000U);
  EXPECT_EQ(plan.share_bytes[1], 50'000'000U);
}

TEST(SplitEqualCompletion, FasterAndNearerPathTakesMore) {
  // 10 MB over 50 Mbit/s (lead 50 ms) and 20 Mbit/s (lead 100 ms):
  // T = (1e7 + 6.25e6·0.05 + 2.5e6·0.1) / 8.75e6 = 1.2071428… s
  // D1 = 6.25e6·(T − 0.05) = 7 232 142.9, D2 = 2.5e6·(T − 0.1) = 2 767 857.1
  const path_estimate paths[] = {{50 * mbit, 0.05}, {20 * mbit, 0.10}};
  const auto plan = split_equal_completion(10'000'000, paths);
  EXPECT_NEAR(plan.completion_s, 1.2071428571, 1e-9);
  EXPECT_NEAR(static_cast<double>(plan.share_bytes[0]), 7'232'142.86, 1.0);
  EXPECT_NEAR(static_cast<double>(plan.share_bytes[1]), 2'767'857.14, 1.0);
  EXPECT_EQ(sum(plan), 10'000'000U);
}

TEST(SplitEqualCompletion, PathThatCannotHelpIsDropped) {
  // 1 MB at 1 MB/s each, but path 2 only starts after 5 s: T would be 3 s, D2 < 0,
  // so path 2 is dropped and path 1 alone finishes at 1 s.
  const path_estimate paths[] = {{1e6, 0.0}, {1e6, 5.0}};
  const auto plan = split_equal_completion(1'000'000, paths);
  EXPECT_EQ(plan.share_bytes[0], 1'000'000U);
  EXPECT_EQ(plan.share_bytes[1], 0U);
  EXPECT_NEAR(plan.completion_s, 1.0, 1e-9);
}

TEST(SplitEqualCompletion, ZeroRatePathGetsNothing) {
  const path_estimate paths[] = {{0.0, 0.05}, {20 * mbit, 0.05}};
  const auto plan = split_equal_completion(5'000'000, paths);
  EXPECT_EQ(plan.share_bytes[0], 0U);
  EXPECT_EQ(plan.share_bytes[1], 5'000'000U);
}

TEST(SplitEqualCompletion, NoRateAtAllFallsBackToFirstPath) {
  const path_estimate paths[] = {{0.0, 0.0}, {0.0, 0.0}};
  const auto plan = split_equal_completion(123, paths);
  EXPECT_EQ(plan.share_bytes[0], 123U);
  EXPECT_EQ(plan.kind, split_case::single_path);
}

TEST(SplitEqualCompletion, TinyObjectsSumExactly) {
  const path_estimate paths[] = {{3.0, 0.0}, {3.0, 0.0}, {3.0, 0.0}};
  for (std::uint64_t d = 0; d < 20; ++d) {
    EXPECT_EQ(sum(split_equal_completion(d, paths)), d) << "D=" << d;
  }
}

TEST(SplitEqualCompletion, UnknownRttIsZeroLead) {
  const path_estimate paths[] = {{2e6, 0.0}, {1e6, 0.0}};
  const auto plan = split_equal_completion(3'000'000, paths);
  EXPECT_EQ(plan.share_bytes[0], 2'000'000U);
  EXPECT_EQ(plan.share_bytes[1], 1'000'000U);
}

const split_policy cost{/*cost_aware=*/true, /*tolerance_s=*/1.0};
const split_policy aggregate{/*cost_aware=*/false, /*tolerance_s=*/1.0};

TEST(PlanSplit, Case1WifiAloneWhenItFinishesWithinTolerance) {
  // 1 MB on 20 Mbit/s Wi-Fi: 0.05 + 0.4 = 0.45 s ≤ 1 s.
  const path_estimate paths[] = {{20 * mbit, 0.05}, {20 * mbit, 0.05}};
  const auto plan = plan_split(1'000'000, paths, cost);
  EXPECT_EQ(plan.kind, split_case::single_path);
  EXPECT_EQ(plan.share_bytes[0], 1'000'000U);
  EXPECT_EQ(plan.share_bytes[1], 0U);
  EXPECT_NEAR(plan.completion_s, 0.45, 1e-9);
}

TEST(PlanSplit, Case2EqualCompletionWhenEvenBothNeedLongerThanTolerance) {
  // 10 MB: T = (1e7 + 2.5e5) / 5e6 = 2.05 s > 1 s.
  const path_estimate paths[] = {{20 * mbit, 0.05}, {20 * mbit, 0.05}};
  const auto plan = plan_split(10'000'000, paths, cost);
  EXPECT_EQ(plan.kind, split_case::equal_completion);
  EXPECT_EQ(plan.share_bytes[0], 5'000'000U);
  EXPECT_EQ(plan.share_bytes[1], 5'000'000U);
}

TEST(PlanSplit, Case3WifiFilledToToleranceCellularTakesTheRest) {
  // 3 MB: Wi-Fi alone 1.25 s > 1 s; both T = 0.65 s ≤ 1 s →
  // Wi-Fi 2.5e6·(1 − 0.05) = 2 375 000, cellular 625 000.
  const path_estimate paths[] = {{20 * mbit, 0.05}, {20 * mbit, 0.05}};
  const auto plan = plan_split(3'000'000, paths, cost);
  EXPECT_EQ(plan.kind, split_case::tolerance_fill);
  EXPECT_EQ(plan.share_bytes[0], 2'375'000U);
  EXPECT_EQ(plan.share_bytes[1], 625'000U);
}

TEST(PlanSplit, AggregateModeIgnoresTolerance) {
  const path_estimate paths[] = {{20 * mbit, 0.05}, {20 * mbit, 0.05}};
  const auto plan = plan_split(1'000'000, paths, aggregate);
  EXPECT_EQ(plan.kind, split_case::equal_completion);
  EXPECT_EQ(plan.share_bytes[0], 500'000U);
  EXPECT_EQ(plan.share_bytes[1], 500'000U);
}

TEST(PlanSplit, ThreePathsInCostOrderUseTheSmallestPrefixThatFits) {
  // Wi-Fi 1 MB/s, wired 1 MB/s, cellular 1 MB/s, no lead; 2.5 MB:
  // Wi-Fi alone 2.5 s; all three T = 0.833 s ≤ 1; first two T = 1.25 s > 1;
  // so all three: Wi-Fi and wired filled to 1 s (1 MB each), cellular 0.5 MB.
  const path_estimate paths[] = {{1e6, 0.0}, {1e6, 0.0}, {1e6, 0.0}};
  const auto plan = plan_split(2'500'000, paths, cost);
  EXPECT_EQ(plan.kind, split_case::tolerance_fill);
  EXPECT_EQ(plan.share_bytes[0], 1'000'000U);
  EXPECT_EQ(plan.share_bytes[1], 1'000'000U);
  EXPECT_EQ(plan.share_bytes[2], 500'000U);
}

TEST(PlanSplit, SlowWifiStillUsedFirstInCost) {
  // Wi-Fi 0.5 Mbit/s, cellular 20 Mbit/s, 10 MB: both needed for long → equal completion,
  // Wi-Fi gets its small rate share: T = (1e7 + 62500·0.05 + 2.5e6·0.05)/2 562 500.
  const path_estimate paths[] = {{0.5 * mbit, 0.05}, {20 * mbit, 0.05}};
  const auto plan = plan_split(10'000'000, paths, cost);
  EXPECT_EQ(plan.kind, split_case::equal_completion);
  const double t = (1e7 + 62'500 * 0.05 + 2.5e6 * 0.05) / 2'562'500;
  EXPECT_NEAR(static_cast<double>(plan.share_bytes[0]), 62'500 * (t - 0.05), 1.0);
}

}  // namespace
}  // namespace fleety::mphttp

namespace fleety::mphttp {
namespace {

TEST(PlanAhead, ExpectedObjectSplitByEqualCompletionInConsecutiveRanges) {
  // 2 MB expected, both 2.5 MB/s; Wi-Fi's first byte in one RTT (50 ms), cellular's in
  // two (it connects): T = (2e6 + 2.5e6·0.05 + 2.5e6·0.1) / 5e6 = 0.475 s.
  const std::vector<path_estimate> paths{{2.5e6, 0.05}, {2.5e6, 0.10}};
  const auto ranges = plan_ahead(2'000'000, paths, 64 * 1024, 64 * 1024, 0.0);
  ASSERT_EQ(ranges.size(), 2u);
  EXPECT_EQ(ranges[0].begin, 0u);
  EXPECT_NEAR(static_cast<double>(ranges[0].size()), 2.5e6 * (0.475 - 0.05), 2);
  EXPECT_EQ(ranges[1].begin, ranges[0].end);
  EXPECT_EQ(ranges[1].end, 2'000'000u);
}

TEST(PlanAhead, EachPathKeepsBackPartOfItsRegionForLater) {
  // 10 MB at 50/20 Mbit/s (6.25 / 2.5 MB/s), both first bytes in 50 ms: regions
  // [0, 7.14 MB) and [7.14 MB, 10 MB). A tenth kept back: Wi-Fi asks for its region's
  // front, cellular for its back; the 1 MB between waits for the rates measured meanwhile.
  const std::vector<path_estimate> paths{{6.25e6, 0.05}, {2.5e6, 0.05}};
  const auto ranges = plan_ahead(10'000'000, paths, 64 * 1024, 64 * 1024, 0.1);
  const double wifi_region = 10e6 * 6.25 / 8.75;
  EXPECT_EQ(ranges[0].begin, 0u);
  EXPECT_NEAR(static_cast<double>(ranges[0].end), 0.9 * wifi_region, 2);
  EXPECT_EQ(ranges[1].end, 10'000'000u);
  EXPECT_NEAR(static_cast<double>(ranges[1].size()), 0.9 * (10e6 - wifi_region), 2);
  EXPECT_NEAR(static_cast<double>(ranges[1].begin - ranges[0].end), 0.1 * 10e6, 4);
}

TEST(PlanAhead, ShortObjectKeepsNothingBack) {
  // 1 MB at 20/20 Mbit/s: a tenth of a 500 kB region is below the least request; each
  // path asks for its whole region, consecutive (its estimate's error is that small).
  const std::vector<path_estimate> paths{{2.5e6, 0.05}, {2.5e6, 0.05}};
  const auto ranges = plan_ahead(1'000'000, paths, 64 * 1024, 64 * 1024, 0.1);
  EXPECT_EQ(ranges[0], (byte_range{0, 500'000}));
  EXPECT_EQ(ranges[1], (byte_range{500'000, 1'000'000}));
}

TEST(PlanAhead, FirstPathGetsAtLeastItsMinimum) {
  // A fast second path would take nearly everything: the head keeps 256 KiB.
  const std::vector<path_estimate> paths{{0.1e6, 0.05}, {10e6, 0.02}};
  const auto ranges = plan_ahead(1'000'000, paths, 256 * 1024, 64 * 1024, 0.0);
  EXPECT_EQ(ranges[0].size(), 256u * 1024);
  EXPECT_EQ(ranges[1], (byte_range{256 * 1024, 1'000'000}));
}

TEST(PlanAhead, PartTooSmallForItsRequestStaysWithTheFirstPath) {
  // 300 kB on fast Wi-Fi: cellular's equal-completion part (T = 48 ms: 20 kB) is not
  // worth a request of its own.
  const std::vector<path_estimate> paths{{10e6, 0.02}, {2.5e6, 0.04}};
  const auto ranges = plan_ahead(300'000, paths, 64 * 1024, 64 * 1024, 0.0);
  EXPECT_EQ(ranges[0], (byte_range{0, 300'000}));
  EXPECT_EQ(ranges[1].size(), 0u);
}

TEST(PlanAhead, SlowPathThatWouldFinishLaterGetsNothing) {
  const std::vector<path_estimate> paths{{10e6, 0.02}, {0.01e6, 2.0}};
  const auto ranges = plan_ahead(2'000'000, paths, 64 * 1024, 64 * 1024, 0.0);
  EXPECT_EQ(ranges[0].size(), 2'000'000u);
  EXPECT_EQ(ranges[1].size(), 0u);
}

}  // namespace
}  // namespace fleety::mphttp

namespace fleety::mphttp {
namespace {

TEST(SplitPays, TwoEqualPathsPayFromTheSecondPathsLeadPlusTheMargin) {
  // 20/20 Mbit/s (2.5 MB/s), cellular's first byte 0.155 s after the size is known, a
  // margin of 50 ms: (0.05·5e6 + 2.5e6·0.155)·2.5e6/2.5e6 = 637 500 bytes. Check the rule
  // itself: alone 637.5 kB take 0.255 s; split, T = (637 500 + 2.5e6·0.155)/5e6 = 0.205 s.
  const std::vector<path_estimate> paths{{2.5e6, 0.0}, {2.5e6, 0.155}};
  const auto d = split_pays_bytes(paths, 0.05);
  EXPECT_NEAR(static_cast<double>(d), 637'500, 1);
  const double alone = static_cast<double>(d) / 2.5e6;
  const double split = (static_cast<double>(d) + 2.5e6 * 0.155) / 5e6;
  EXPECT_NEAR(alone - split, 0.05, 1e-6);
}

TEST(SplitPays, FastFirstPathNeedsABiggerObject) {
  // Wi-Fi 50, cellular 20 Mbit/s: (0.05·8.75e6 + 2.5e6·0.155)·6.25e6/2.5e6 ≈ 2.06 MB.
  const std::vector<path_estimate> paths{{6.25e6, 0.0}, {2.5e6, 0.155}};
  EXPECT_NEAR(static_cast<double>(split_pays_bytes(paths, 0.05)), 2'062'500, 1);
}

TEST(SplitPays, TheBestOtherPathDecides) {
  const std::vector<path_estimate> paths{{2.5e6, 0.0}, {0.1e6, 0.5}, {2.5e6, 0.155}};
  EXPECT_NEAR(static_cast<double>(split_pays_bytes(paths, 0.05)), 637'500, 1);
}

TEST(SplitPays, NoOtherRateNeverSplitsNoFirstRateAlwaysDoes) {
  const std::vector<path_estimate> alone{{2.5e6, 0.0}, {0.0, 0.1}};
  EXPECT_EQ(split_pays_bytes(alone, 0.05), std::numeric_limits<std::uint64_t>::max());
  const std::vector<path_estimate> dead_first{{0.0, 0.0}, {2.5e6, 0.1}};
  EXPECT_EQ(split_pays_bytes(dead_first, 0.05), 0u);
  EXPECT_EQ(split_pays_bytes({}, 0.05), std::numeric_limits<std::uint64_t>::max());
}

}  // namespace
}  // namespace fleety::mphttp
