#include <gtest/gtest.h>

#include "select/select.hpp"

namespace fleety::select {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

const auto t0 = clock_type::time_point{} + std::chrono::hours(1);

path_view path_with(bool up, bool cellular, std::optional<milliseconds> rtt,
                    std::optional<double> capacity_bps = std::nullopt) {
  path_view p;
  p.up = up;
  p.cellular = cellular;
  p.quality.up = up;
  if (rtt) {
    p.quality.rtt = *rtt;
    p.quality.jitter = milliseconds(5);
  }
  p.quality.loss = 0.0;
  p.capacity_bps = capacity_bps;
  return p;
}

core::selector_config timing() {
  core::selector_config config;
  config.reset_after = seconds(2);
  config.hysteresis = seconds(5);
  return config;
}

TEST(Meets, LimitsAndUnknownMeasurements) {
  const auto classes = core::builtin_qos_classes();
  const auto& gaming = classes[0];
  const auto& streaming = classes[1];
  EXPECT_TRUE(meets(gaming, path_with(true, false, milliseconds(50))));
  EXPECT_FALSE(meets(gaming, path_with(true, false, milliseconds(400))));
  EXPECT_FALSE(meets(gaming, path_with(false, false, milliseconds(50))));
  // Not measured yet: not held against the path.
  EXPECT_TRUE(meets(gaming, path_with(true, false, std::nullopt)));
  auto lossy = path_with(true, false, milliseconds(50));
  lossy.quality.loss = 0.05;
  EXPECT_FALSE(meets(gaming, lossy));
  EXPECT_DOUBLE_EQ(shortfall(gaming, lossy), 1.5);  // 5% against 2%
  EXPECT_TRUE(meets(streaming, path_with(true, false, milliseconds(400), 20e6)));
  EXPECT_FALSE(meets(streaming, path_with(true, false, milliseconds(10), 2e6)));
}

TEST(Selector, CheapestPathThatMeetsTheClass) {
  selector s(core::builtin_qos_classes(), timing());
  s.update({path_with(true, false, milliseconds(50)), path_with(true, true, milliseconds(60))}, t0);
  EXPECT_EQ(s.choose("gaming", false, t0), 0U);
  EXPECT_EQ(s.choose("messaging", false, t0), 0U);
  EXPECT_EQ(s.choose("no such class", false, t0), 0U);  // the default class
  // Wi-Fi's RTT goes to 400 ms: gaming goes to cellular at once, messaging stays.
  s.update({path_with(true, false, milliseconds(400)), path_with(true, true, milliseconds(60))},
           t0 + milliseconds(200));
  EXPECT_EQ(s.choose("gaming", false, t0 + milliseconds(200)), 1U);
  EXPECT_EQ(s.choose("messaging", false, t0 + milliseconds(200)), 0U);
}

TEST(Selector, NoPathMeetsTheClassTheLeastBadOne) {
  selector s(core::builtin_qos_classes(), timing());
  s.update({path_with(true, false, milliseconds(400)), path_with(true, true, milliseconds(150))},
           t0);
  EXPECT_EQ(s.choose("gaming", false, t0), 1U);
  s.update({path_with(false, false, milliseconds(10)), path_with(false, true, milliseconds(10))},
           t0);
  EXPECT_EQ(s.choose("gaming", false, t0), std::nullopt);
}

TEST(Selector, AFlowIsResetAfterItsPathMissedTheClassForResetAfter) {
  selector s(core::builtin_qos_classes(), timing());
  const std::vector<path_view> good{path_with(true, false, milliseconds(50)),
                                    path_with(true, true, milliseconds(60))};
  const std::vector<path_view> slow_wifi{path_with(true, false, milliseconds(400)),
                                         path_with(true, true, milliseconds(60))};
  s.update(good, t0);
  EXPECT_FALSE(s.should_reset("gaming", 0, false, t0));
  s.update(slow_wifi, t0 + seconds(1));
  EXPECT_FALSE(s.should_reset("gaming", 0, false, t0 + seconds(1)));
  s.update(slow_wifi, t0 + milliseconds(2900));
  EXPECT_FALSE(s.should_reset("gaming", 0, false, t0 + milliseconds(2900)));
  s.update(slow_wifi, t0 + seconds(3));
  EXPECT_TRUE(s.should_reset("gaming", 0, false, t0 + seconds(3)));
  // Not a flow that doesn't care about RTT, nor one already on the better path.
  EXPECT_FALSE(s.should_reset("messaging", 0, false, t0 + seconds(3)));
  EXPECT_FALSE(s.should_reset("gaming", 1, false, t0 + seconds(3)));
  // A blip shorter than reset_after starts the count again.
  s.update(good, t0 + seconds(4));
  s.update(slow_wifi, t0 + seconds(5));
  EXPECT_FALSE(s.should_reset("gaming", 0, false, t0 + seconds(6)));
}

TEST(Selector, NoResetWhenTheOtherPathIsNoBetter) {
  selector s(core::builtin_qos_classes(), timing());
  const std::vector<path_view> both_slow{path_with(true, false, milliseconds(400)),
                                         path_with(true, true, milliseconds(300))};
  s.update(both_slow, t0);
  s.update(both_slow, t0 + seconds(10));
  // Cellular is chosen for new flows (it misses least) but doesn't meet gaming either:
  // resetting the flow would only cost the app a reconnect.
  EXPECT_EQ(s.choose("gaming", false, t0 + seconds(10)), 1U);
  EXPECT_FALSE(s.should_reset("gaming", 0, false, t0 + seconds(10)));
}

TEST(Selector, APathThatGoesDownLosesItsFlowsAtOnce) {
  selector s(core::builtin_qos_classes(), timing());
  s.update({path_with(true, false, milliseconds(50)), path_with(true, true, milliseconds(60))}, t0);
  s.update({path_with(false, false, milliseconds(50)), path_with(true, true, milliseconds(60))},
           t0 + milliseconds(200));
  for (const char* qos : {"gaming", "messaging", "download"}) {
    EXPECT_TRUE(s.should_reset(qos, 0, false, t0 + milliseconds(200))) << qos;
    EXPECT_EQ(s.choose(qos, false, t0 + milliseconds(200)), 1U) << qos;
  }
}

TEST(Selector, BackOnWifiOnlyAfterTheHysteresis) {
  selector s(core::builtin_qos_classes(), timing());
  const std::vector<path_view> good{path_with(true, false, milliseconds(50)),
                                    path_with(true, true, milliseconds(60))};
  s.update(good, t0);
  s.update({path_with(false, false, std::nullopt), path_with(true, true, milliseconds(60))},
           t0 + seconds(1));
  s.update(good, t0 + seconds(2));  // Wi-Fi back
  EXPECT_EQ(s.choose("messaging", false, t0 + seconds(2)), 1U);
  s.update(good, t0 + milliseconds(6900));
  EXPECT_EQ(s.choose("messaging", false, t0 + milliseconds(6900)), 1U);
  s.update(good, t0 + seconds(7));
  EXPECT_EQ(s.choose("messaging", false, t0 + seconds(7)), 0U);
  // Flows that moved to cellular are not reset to go back: that costs the app a
  // reconnect for no gain in its class.
  EXPECT_FALSE(s.should_reset("messaging", 1, false, t0 + seconds(7)));
  // A flap during probation starts the hysteresis again.
  s.update({path_with(false, false, std::nullopt), path_with(true, true, milliseconds(60))},
           t0 + seconds(8));
  s.update(good, t0 + seconds(9));
  s.update(good, t0 + seconds(13));
  EXPECT_EQ(s.choose("messaging", false, t0 + seconds(13)), 1U);
  s.update(good, t0 + seconds(14));
  EXPECT_EQ(s.choose("messaging", false, t0 + seconds(14)), 0U);
}

TEST(Selector, OverTheCellularCapOnlyWhenNothingElseIsUp) {
  selector s(core::builtin_qos_classes(), timing());
  s.update({path_with(true, false, milliseconds(400)), path_with(true, true, milliseconds(60))},
           t0);
  EXPECT_EQ(s.choose("gaming", false, t0), 1U);
  EXPECT_EQ(s.choose("gaming", true, t0), 0U);
  EXPECT_FALSE(s.should_reset("gaming", 0, true, t0 + seconds(10)));
  s.update({path_with(false, false, std::nullopt), path_with(true, true, milliseconds(60))}, t0);
  EXPECT_EQ(s.choose("gaming", true, t0), 1U);
}

}  // namespace
}  // namespace fleety::select

namespace fleety::select {
namespace {

TEST(FlowTable, RegistrationsRemoveTheirFlowAndResetsRunOnce) {
  flow_table table;
  int resets = 0;
  {
    auto a = table.add({1, "game", "gaming", 0, "TCP to a", {}, [&] { ++resets; }});
    auto b = table.add({2, "", "default", 1, "TCP to b", {}, [&] { resets += 10; }});
    EXPECT_EQ(table.flows().size(), 2U);
    EXPECT_EQ(table.reset_if([](const flow_table::flow& f) { return f.path == 0; }), 1U);
    EXPECT_EQ(resets, 1);
    // Already reset: not again while its relay winds down.
    EXPECT_EQ(table.reset_if([](const flow_table::flow&) { return true; }), 1U);
    EXPECT_EQ(resets, 11);
    auto moved = std::move(a);
    EXPECT_EQ(table.flows().size(), 2U);
  }
  EXPECT_TRUE(table.flows().empty());
}

}  // namespace
}  // namespace fleety::select
