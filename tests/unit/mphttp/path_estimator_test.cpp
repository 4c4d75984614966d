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
  e.on_transfer(/*bytes=*/2'500'000, /*elapsed=*/1s);  // 2.5 MB/s
  EXPECT_DOUBLE_EQ(e.rate_bytes_per_s(), 2'500'000.0);
  e.on_transfer(1'500'000, 1s);  // halfway to 1.5 MB/s
  EXPECT_DOUBLE_EQ(e.rate_bytes_per_s(), 2'000'000.0);
}

TEST(PathEstimator, TinyTransfersAreIgnored) {
  path_estimator e(10'000'000, 50ms);
  e.on_transfer(1000, 1ms);
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
