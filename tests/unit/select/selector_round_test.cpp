#include "select/selector_round.hpp"

#include <gtest/gtest.h>

namespace fleety::select {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

const auto t0 = clock_type::time_point{} + std::chrono::hours(1);

path_view path_with(bool up, bool cellular, milliseconds rtt) {
  path_view p;
  p.up = up;
  p.cellular = cellular;
  p.quality.up = up;
  p.quality.rtt = rtt;
  p.quality.jitter = milliseconds(5);
  p.quality.loss = 0.0;
  return p;
}

core::selector_config timing() {
  core::selector_config config;
  config.reset_after = seconds(2);
  config.hysteresis = seconds(5);
  return config;
}

/// A flow table with flows of `qos` on `path`, each counting its resets.
struct flows_on_paths {
  flow_table table;
  std::vector<flow_table::registration> held;
  std::map<std::uint64_t, int> resets;
  void add(std::uint64_t id, std::string qos, std::size_t path) {
    held.push_back(
        table.add({id, "app", std::move(qos), path, "TCP", t0, [this, id] { ++resets[id]; }}));
  }
};

TEST(SelectorRound, FlowsOnAPathThatWentDownMoveAtOnce) {
  selector s(core::builtin_qos_classes(), timing());
  flows_on_paths f;
  f.add(/*id=*/1, "gaming", /*path=*/0);
  f.add(2, "messaging", 0);
  f.add(3, "gaming", 1);
  const std::vector<path_view> both = {path_with(true, false, milliseconds(50)),
                                       path_with(true, true, milliseconds(60))};
  EXPECT_TRUE(selector_round(s, both, f.table.flows(), /*capped=*/false, t0).empty());
  // Wi-Fi goes down: its flows go to cellular; the one on cellular stays.
  const std::vector<path_view> wifi_down = {path_with(false, false, milliseconds(50)),
                                            path_with(true, true, milliseconds(60))};
  const auto moves = selector_round(s, wifi_down, f.table.flows(), false, t0 + milliseconds(200));
  EXPECT_EQ(moves, (std::vector<flow_move>{{/*flow=*/1, /*from=*/0, /*to=*/1, /*path_down=*/true},
                                           {2, 0, 1, true}}));
}

TEST(SelectorRound, AFlowMissingItsClassMovesOnlyAfterResetAfter) {
  selector s(core::builtin_qos_classes(), timing());
  flows_on_paths f;
  f.add(1, "gaming", 0);
  f.add(2, "messaging", 0);  // messaging tolerates a slow path: never moves
  const path_view cell = path_with(true, true, milliseconds(60));
  struct row {
    milliseconds at;
    milliseconds wifi_rtt;
    std::vector<flow_move> expected;
  };
  const row rows[] = {
      {milliseconds(0), milliseconds(50), {}},
      {milliseconds(200), milliseconds(400), {}},   // misses gaming since 200 ms
      {milliseconds(2000), milliseconds(400), {}},  // 1.8 s: not yet
      {milliseconds(2200), milliseconds(400), {{1, 0, 1, /*path_down=*/false}}},  // 2 s
  };
  for (const auto& r : rows) {
    SCOPED_TRACE(r.at.count());
    EXPECT_EQ(selector_round(s, {path_with(true, false, r.wifi_rtt), cell}, f.table.flows(), false,
                             t0 + r.at),
              r.expected);
  }
}

TEST(SelectorRound, AFlowBeingResetIsNotNamedAgain) {
  selector s(core::builtin_qos_classes(), timing());
  flows_on_paths f;
  f.add(1, "gaming", 0);
  const std::vector<path_view> wifi_down = {path_with(false, false, milliseconds(50)),
                                            path_with(true, true, milliseconds(60))};
  auto moves = selector_round(s, wifi_down, f.table.flows(), false, t0);
  ASSERT_EQ(moves.size(), 1U);
  EXPECT_TRUE(f.table.reset(moves[0].flow));
  EXPECT_EQ(f.resets[1], 1);
  // Its relay has not ended yet (it is still listed), but its reset is used up.
  EXPECT_TRUE(selector_round(s, wifi_down, f.table.flows(), false, t0 + milliseconds(200)).empty());
  EXPECT_FALSE(f.table.reset(1));
  EXPECT_FALSE(f.table.reset(99));
  EXPECT_EQ(f.resets[1], 1);
}

TEST(SelectorRound, OverTheBudgetCellularOnlyWhenNothingElseIsUp) {
  selector s(core::builtin_qos_classes(), timing());
  flows_on_paths f;
  f.add(1, "gaming", 0);
  const std::vector<path_view> wifi_down = {path_with(false, false, milliseconds(50)),
                                            path_with(true, true, milliseconds(60))};
  // Capped, but Wi-Fi is down: cellular is the only path, so the flow moves there.
  EXPECT_EQ(selector_round(s, wifi_down, f.table.flows(), /*capped=*/true, t0),
            (std::vector<flow_move>{{1, 0, 1, true}}));
  // A flow on cellular while capped and Wi-Fi is up again: back to Wi-Fi.
  flows_on_paths g;
  g.add(2, "messaging", 1);
  const std::vector<path_view> both = {path_with(true, false, milliseconds(50)),
                                       path_with(true, true, milliseconds(60))};
  EXPECT_TRUE(selector_round(s, both, g.table.flows(), /*capped=*/false, t0).empty());
}

}  // namespace
}  // namespace fleety::select
