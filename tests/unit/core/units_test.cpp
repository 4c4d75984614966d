#include "core/units.hpp"

#include <gtest/gtest.h>

namespace fleety::core {
namespace {

TEST(Units, Rates) {
  EXPECT_EQ(*parse_rate_bps("20mbit"), 20'000'000U);
  EXPECT_EQ(*parse_rate_bps("500kbit"), 500'000U);
  EXPECT_EQ(*parse_rate_bps("0.5mbit"), 500'000U);
  EXPECT_EQ(*parse_rate_bps("1Gbit"), 1'000'000'000U);
  EXPECT_EQ(*parse_rate_bps(" 20 Mbit/s "), 20'000'000U);
  EXPECT_FALSE(parse_rate_bps("20"));
  EXPECT_FALSE(parse_rate_bps("fast"));
  EXPECT_FALSE(parse_rate_bps("20mb"));
}

TEST(Units, Durations) {
  EXPECT_EQ(*parse_duration("50ms"), std::chrono::milliseconds(50));
  EXPECT_EQ(*parse_duration("1.5s"), std::chrono::milliseconds(1500));
  EXPECT_EQ(*parse_duration("250us"), std::chrono::microseconds(250));
  EXPECT_EQ(*parse_duration("2m"), std::chrono::minutes(2));
  EXPECT_FALSE(parse_duration("50"));
  EXPECT_FALSE(parse_duration("ms"));
}

TEST(Units, Sizes) {
  EXPECT_EQ(*parse_size_bytes("32MiB"), 32U << 20);
  EXPECT_EQ(*parse_size_bytes("10MB"), 10'000'000U);
  EXPECT_EQ(*parse_size_bytes("4096"), 4096U);
  EXPECT_EQ(*parse_size_bytes("512KiB"), 512U << 10);
  EXPECT_FALSE(parse_size_bytes("lots"));
  EXPECT_FALSE(parse_size_bytes("1e99999GB"));
}

TEST(Units, Formatting) {
  EXPECT_EQ(format_rate(20e6), "20.0 Mbit/s");
  EXPECT_EQ(format_rate(500e3), "500.0 kbit/s");
  EXPECT_EQ(format_size(100U << 20), "100.0 MiB");
  EXPECT_EQ(format_size(512), "512 B");
}

}  // namespace
}  // namespace fleety::core
