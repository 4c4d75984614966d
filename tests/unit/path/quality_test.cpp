#include "path/quality.hpp"

#include <gtest/gtest.h>

namespace fleety::path {
namespace {

using std::chrono::microseconds;
using std::chrono::milliseconds;

const auto t0 = clock_type::time_point{} + std::chrono::hours(1);

TEST(QualityTracker, NothingMeasuredIsUnknown) {
  quality_tracker tracker;
  const auto q = tracker.current(true, t0);
  EXPECT_TRUE(q.up);
  EXPECT_FALSE(q.rtt);
  EXPECT_FALSE(q.jitter);
  EXPECT_FALSE(q.loss);
  EXPECT_FALSE(q.throughput_bps);
}

TEST(QualityTracker, ProbeRttsAreSmoothedAsRfc6298) {
  quality_tracker tracker;
  tracker.on_rtt(milliseconds(100), t0);
  auto q = tracker.current(true, t0);
  EXPECT_EQ(*q.rtt, milliseconds(100));
  EXPECT_EQ(*q.jitter, milliseconds(50));
  tracker.on_rtt(milliseconds(20), t0 + milliseconds(200));
  q = tracker.current(true, t0 + milliseconds(200));
  // RTTVAR = 3/4·50 + 1/4·|100−20| = 57.5 ms; SRTT = 7/8·100 + 1/8·20 = 90 ms.
  EXPECT_EQ(*q.rtt, milliseconds(90));
  EXPECT_EQ(*q.jitter, microseconds(57'500));
}

TEST(QualityTracker, AnIdlePathsProbesFollowAConfirmedStepAndSkipAnOutlier) {
  quality_tracker tracker;
  auto at = [](int s) { return t0 + std::chrono::seconds(s); };
  for (int s = 0; s < 5; ++s) EXPECT_FALSE(tracker.on_probe_rtt(milliseconds(50), at(s)));
  EXPECT_EQ(*tracker.current(true, at(4)).rtt, milliseconds(50));
  // One slow probe: held, and a second one asked for; the estimate stays.
  EXPECT_TRUE(tracker.on_probe_rtt(milliseconds(400), at(5)));
  EXPECT_EQ(*tracker.current(true, at(5)).rtt, milliseconds(50));
  // The second one confirms the step: the estimate is the new RTT at once (RFC 6298's
  // gains would have shown 94 ms).
  EXPECT_FALSE(tracker.on_probe_rtt(milliseconds(410), at(5) + milliseconds(410)));
  EXPECT_EQ(*tracker.current(true, at(6)).rtt, milliseconds(405));
  // And back down: the same.
  EXPECT_TRUE(tracker.on_probe_rtt(milliseconds(50), at(7)));
  EXPECT_FALSE(tracker.on_probe_rtt(milliseconds(50), at(7) + milliseconds(50)));
  EXPECT_EQ(*tracker.current(true, at(8)).rtt, milliseconds(50));
  // An outlier, then a normal probe: the outlier is dropped, the normal one smoothed in.
  EXPECT_TRUE(tracker.on_probe_rtt(milliseconds(400), at(9)));
  EXPECT_FALSE(tracker.on_probe_rtt(milliseconds(50), at(9) + milliseconds(50)));
  EXPECT_EQ(*tracker.current(true, at(10)).rtt, milliseconds(50));
  // Within the band (a quarter of the estimate): smoothed with gain 1/4, no second probe.
  EXPECT_FALSE(tracker.on_probe_rtt(milliseconds(58), at(11)));
  EXPECT_EQ(*tracker.current(true, at(11)).rtt, milliseconds(52));
}

TEST(QualityTracker, KernelSmoothedRttIsTakenAsItIs) {
  quality_tracker tracker;
  tracker.on_rtt(milliseconds(50), t0);
  tracker.on_smoothed_rtt(milliseconds(400), milliseconds(30), t0 + milliseconds(200));
  const auto q = tracker.current(true, t0 + milliseconds(200));
  EXPECT_EQ(*q.rtt, milliseconds(400));
  EXPECT_EQ(*q.jitter, milliseconds(30));
}

TEST(QualityTracker, OldSamplesAreForgotten) {
  quality_tracker tracker({.max_age = milliseconds(5000), .window = milliseconds(1000)});
  tracker.on_rtt(milliseconds(80), t0);
  tracker.on_probe(false, t0);
  EXPECT_TRUE(tracker.current(true, t0 + milliseconds(5000)).rtt);
  const auto stale = tracker.current(true, t0 + milliseconds(5001));
  EXPECT_FALSE(stale.rtt);
  EXPECT_FALSE(stale.loss);
  // A new sample after a long silence starts afresh, not smoothed with the old one.
  tracker.on_rtt(milliseconds(20), t0 + milliseconds(9000));
  EXPECT_EQ(*tracker.current(true, t0 + milliseconds(9000)).rtt, milliseconds(20));
}

TEST(QualityTracker, LossOverTheLastTwoWindows) {
  quality_tracker tracker({.max_age = milliseconds(10'000), .window = milliseconds(1000)});
  for (int i = 0; i < 4; ++i) tracker.on_probe(i != 0, t0 + milliseconds(100 * i));
  EXPECT_DOUBLE_EQ(*tracker.current(true, t0 + milliseconds(400)).loss, 0.25);
  tracker.on_segments(1000, 10, t0 + milliseconds(1500));  // next window
  EXPECT_DOUBLE_EQ(*tracker.current(true, t0 + milliseconds(1500)).loss, 11.0 / 1004.0);
  tracker.on_segments(100, 0, t0 + milliseconds(2600));  // the first window drops out
  EXPECT_DOUBLE_EQ(*tracker.current(true, t0 + milliseconds(2600)).loss, 10.0 / 1100.0);
  tracker.on_segments(100, 200, t0 + milliseconds(6000));  // after a gap; capped at sent
  EXPECT_DOUBLE_EQ(*tracker.current(true, t0 + milliseconds(6000)).loss, 1.0);
}

TEST(QualityTracker, ThroughputFromTheByteCounterOverAWindow) {
  quality_tracker tracker({.max_age = milliseconds(3000), .window = milliseconds(1000)});
  tracker.on_bytes_received(1'000'000, t0);
  tracker.on_bytes_received(1'600'000, t0 + milliseconds(500));  // window not over yet
  EXPECT_FALSE(tracker.current(true, t0 + milliseconds(500)).throughput_bps);
  tracker.on_bytes_received(3'500'000, t0 + milliseconds(1000));
  EXPECT_DOUBLE_EQ(*tracker.current(true, t0 + milliseconds(1000)).throughput_bps, 20e6);
  tracker.on_bytes_received(3'500'000, t0 + milliseconds(2000));  // idle: zero
  EXPECT_DOUBLE_EQ(*tracker.current(true, t0 + milliseconds(2000)).throughput_bps, 0);
  // A counter that went back (a path's sockets replaced) restarts the measurement.
  tracker.on_bytes_received(10, t0 + milliseconds(3000));
  EXPECT_DOUBLE_EQ(*tracker.current(true, t0 + milliseconds(3000)).throughput_bps, 0);
}

TEST(QualityTracker, AHistorySeedIsReplacedByTheFirstRealSample) {
  quality_tracker tracker;
  quality known;
  known.rtt = milliseconds(400);
  known.jitter = milliseconds(20);
  tracker.seed(known, t0);
  EXPECT_EQ(*tracker.current(true, t0).rtt, milliseconds(400));
  tracker.on_rtt(milliseconds(50), t0 + milliseconds(100));  // not smoothed with the seed
  EXPECT_EQ(*tracker.current(true, t0 + milliseconds(100)).rtt, milliseconds(50));
  tracker.on_rtt(milliseconds(50), t0 + milliseconds(200));
  EXPECT_EQ(*tracker.current(true, t0 + milliseconds(200)).rtt, milliseconds(50));
}

TEST(WirelessSignal, LevelOfTheInterfaceFromProcNetWireless) {
  const char* text =
      "Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE\n"
      " face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22\n"
      "wlp2s0: 0000   54.  -56.  -256        0      0      0      0      0        0\n"
      " wlan0: 0000   70.  -40.  -256        0      0      0      0      0        0\n";
  EXPECT_EQ(wireless_signal_dbm(text, "wlp2s0"), -56.0);
  EXPECT_EQ(wireless_signal_dbm(text, "wlan0"), -40.0);
  EXPECT_EQ(wireless_signal_dbm(text, "rmnet0"), std::nullopt);
  EXPECT_EQ(wireless_signal_dbm("wlan0: 0000 bad", "wlan0"), std::nullopt);
  EXPECT_EQ(wireless_signal_dbm("", "wlan0"), std::nullopt);
}

}  // namespace
}  // namespace fleety::path
