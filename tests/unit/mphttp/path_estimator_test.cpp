#include "mphttp/path_estimator.hpp"

#include <gtest/gtest.h>

namespace fleety::mphttp {
namespace {
using namespace std::chrono_literals;

TEST(PathEstimator, PriorUntilMeasured) {
  path_estimator e(/*prior_rate_bps=*/10'000'000, /*prior_rtt=*/50ms);
  EXPECT_DOUBLE_EQ(e.rate_bytes_per_s(), 1'250'000.0);
  EXPECT_DOUBLE_EQ(e.rtt_s(), 0.05);
}

TEST(PathEstimator, FirstSampleReplacesPriorThenAverages) {
  path_estimator e(10'000'000, 50ms);
  e.on_rate(2'500'000);  // 2.5 MB/s
  EXPECT_DOUBLE_EQ(e.rate_bytes_per_s(), 2'500'000.0);
  e.on_rate(1'500'000);  // halfway to 1.5 MB/s
  EXPECT_DOUBLE_EQ(e.rate_bytes_per_s(), 2'000'000.0);
  EXPECT_EQ(e.samples(), 2U);
}

TEST(PathEstimator, EmptySamplesAreIgnored) {
  path_estimator e(10'000'000, 50ms);
  e.on_rate(0);
  EXPECT_EQ(e.samples(), 0U);
  EXPECT_DOUBLE_EQ(e.rate_bytes_per_s(), 1'250'000.0);
}

TEST(PathEstimator, RttLearnsFromKernel) {
  path_estimator e(10'000'000, 50ms);
  e.on_rtt(100ms);
  EXPECT_DOUBLE_EQ(e.rtt_s(), 0.1);
  e.on_rtt(0us);  // no sample
  EXPECT_DOUBLE_EQ(e.rtt_s(), 0.1);
}

}  // namespace
}  // namespace fleety::mphttp

namespace fleety::mphttp {
namespace {

TEST(WindowedRate, NoRateBeforeTheStreakSpansTheMinimum) {
  windowed_rate meter(1.0, 0.2);
  EXPECT_FALSE(meter.rate(0.0));
  meter.start(10.0);
  meter.add(10.1, 100'000);
  EXPECT_FALSE(meter.rate(10.1));  // 0.1 s is slow start, not the path
  meter.add(10.2, 100'000);
  ASSERT_TRUE(meter.rate(10.2));
  EXPECT_NEAR(*meter.rate(10.2), 1'000'000, 1e-6);  // 200 kB in 0.2 s
}

TEST(WindowedRate, OnlyTheLastWindowCounts) {
  windowed_rate meter(1.0, 0.2);
  meter.start(0.0);
  // 2 s at 1 MB/s, then 1 s at 100 kB/s: the window sees only the slow second.
  for (int i = 1; i <= 20; ++i) meter.add(0.1 * i, 100'000);
  for (int i = 1; i <= 10; ++i) meter.add(2.0 + 0.1 * i, 10'000);
  EXPECT_NEAR(*meter.rate(3.0), 100'000, 1e-6);
}

TEST(WindowedRate, RecentRateSeesASpeedUpTheWindowAveragesAway) {
  // Slow start: 1 s at 1 MB/s, then 0.1 s at 4 MB/s. Over the window, 1.3 MB/s; over the
  // last 0.1 s, 4 MB/s (what the next request's lead must be sized for).
  windowed_rate meter(1.0, 0.2);
  meter.start(0.0);
  for (int i = 1; i <= 10; ++i) meter.add(0.1 * i, 100'000);
  EXPECT_FALSE(meter.recent_rate(0.05, 0.1));  // the streak is younger than the span
  for (int i = 1; i <= 4; ++i) meter.add(1.0 + 0.025 * i, 100'000);
  EXPECT_NEAR(*meter.rate(1.1), 1.3e6, 1);
  EXPECT_NEAR(*meter.recent_rate(1.1, 0.1), 4e6, 1);
  // From the sample at or before the span's start.
  EXPECT_NEAR(*meter.recent_rate(1.1, 0.15), 500'000.0 / 0.2, 1);
}

TEST(WindowedRate, SilenceLowersTheRateAndStopEndsTheStreak) {
  windowed_rate meter(1.0, 0.2);
  meter.start(0.0);
  for (int i = 1; i <= 10; ++i) meter.add(0.1 * i, 100'000);
  EXPECT_NEAR(*meter.rate(1.0), 1'000'000, 1e-6);
  EXPECT_NEAR(*meter.rate(2.0), 500'000, 1e-6);  // 1 MB over 2 s since the base sample
  meter.stop();
  EXPECT_FALSE(meter.active());
  EXPECT_FALSE(meter.rate(2.0));
  meter.add(2.1, 5);  // outside a streak: ignored
  EXPECT_FALSE(meter.active());
}

}  // namespace
}  // namespace fleety::mphttp
