#include "select/cellular_budget.hpp"

#include <gtest/gtest.h>

namespace fleety::select {
namespace {

using std::chrono::microseconds;
using std::chrono::milliseconds;

constexpr std::uint64_t MB = 1'000'000;

TEST(CellularBudget, CellularBytesAgainstTheCapAndTheCappedTransitions) {
  // Two paths: wifi (0) and cell (1); 10 MB a month; 4 MB already used this month.
  cellular_budget budget(/*cap_bytes=*/10 * MB, "2025-03", /*used_bytes=*/4 * MB,
                         /*keep_pending=*/true);
  const std::vector<bool> cellular = {false, true};
  struct row {
    std::uint64_t wifi_total;
    std::uint64_t cell_total;
    std::string month;
    std::vector<std::uint64_t> deltas;
    std::uint64_t month_bytes;
    bool capped;
    std::optional<bool> change;
  };
  const row rows[] = {
      // Wi-Fi bytes never count.
      {50 * MB, 0, "2025-03", {50 * MB, 0}, 4 * MB, false, std::nullopt},
      {50 * MB, 5 * MB, "2025-03", {0, 5 * MB}, 9 * MB, false, std::nullopt},
      // Reaching the cap exactly spends it: capped, said once.
      {50 * MB, 6 * MB, "2025-03", {0, 1 * MB}, 10 * MB, true, true},
      {51 * MB, 7 * MB, "2025-03", {1 * MB, 1 * MB}, 11 * MB, true, std::nullopt},
      // A new month: the count starts from zero before this count's bytes.
      {51 * MB, 8 * MB, "2025-04", {0, 1 * MB}, 1 * MB, false, false},
      {51 * MB, 8 * MB, "2025-04", {0, 0}, 1 * MB, false, std::nullopt},
  };
  for (const auto& r : rows) {
    SCOPED_TRACE(r.month + " cell total " + std::to_string(r.cell_total));
    EXPECT_EQ(budget.on_path_totals({r.wifi_total, r.cell_total}, cellular, r.month), r.deltas);
    EXPECT_EQ(budget.month(), r.month);
    EXPECT_EQ(budget.month_bytes(), r.month_bytes);
    EXPECT_EQ(budget.capped(), r.capped);
    EXPECT_EQ(budget.capped_change(), r.change);
  }
}

TEST(CellularBudget, NoCapIsNeverCappedAndASpentOneAtStartIsSaidAtOnce) {
  cellular_budget uncapped(/*cap_bytes=*/0, "2025-03", /*used_bytes=*/900 * MB, false);
  EXPECT_FALSE(uncapped.capped());
  EXPECT_EQ(uncapped.capped_change(), std::nullopt);
  cellular_budget spent(/*cap_bytes=*/10 * MB, "2025-03", /*used_bytes=*/12 * MB, false);
  EXPECT_TRUE(spent.capped());
  EXPECT_EQ(spent.capped_change(), true);
  EXPECT_EQ(spent.capped_change(), std::nullopt);
}

TEST(CellularBudget, AppBytesAndWhatWaitsForTheFlush) {
  cellular_budget budget(0, "2025-03", 0, /*keep_pending=*/true);
  budget.on_app_bytes("game", "cell", 100);
  budget.on_app_bytes("game", "cell", 50);
  budget.on_app_bytes("", "wifi", 7);      // no configured app: "-"
  budget.on_app_bytes("game", "wifi", 0);  // nothing: no row
  budget.on_ttfb("cell", "cdn.test", milliseconds(30));
  budget.on_ttfb("cell", "cdn.test", milliseconds(10));
  budget.on_ttfb("cell", "cdn.test", milliseconds(20));
  budget.on_ttfb("wifi", "cdn.test", milliseconds(40));
  budget.on_ttfb("wifi", "cdn.test", milliseconds(60));  // even count: the upper median
  const auto pending = budget.take_pending();
  EXPECT_EQ(pending.usage,
            (std::vector<cellular_budget::usage_row>{{"-", "wifi", 7}, {"game", "cell", 150}}));
  EXPECT_EQ(pending.ttfb,
            (std::vector<cellular_budget::ttfb_row>{{"cell", "cdn.test", milliseconds(20)},
                                                    {"wifi", "cdn.test", milliseconds(60)}}));
  // Taken: nothing waits any more; the bytes since start stay for the status.
  const auto again = budget.take_pending();
  EXPECT_TRUE(again.usage.empty());
  EXPECT_TRUE(again.ttfb.empty());
  EXPECT_EQ(budget.app_bytes().at({"game", "cell"}), 150U);
  EXPECT_EQ(budget.app_bytes().at({"-", "wifi"}), 7U);
}

TEST(CellularBudget, WithoutAHistoryNothingWaitsButTheStatusStillCounts) {
  cellular_budget budget(0, "2025-03", 0, /*keep_pending=*/false);
  budget.on_app_bytes("game", "cell", 100);
  budget.on_ttfb("cell", "cdn.test", milliseconds(30));
  const auto pending = budget.take_pending();
  EXPECT_TRUE(pending.usage.empty());
  EXPECT_TRUE(pending.ttfb.empty());
  EXPECT_EQ(budget.app_bytes().at({"game", "cell"}), 100U);
}

TEST(CellularBudget, PendingKeysAndSamplesAreBounded) {
  cellular_budget budget(0, "2025-03", 0, /*keep_pending=*/true);
  const std::size_t keys = cellular_budget::max_pending_keys;
  for (std::size_t i = 0; i < keys + 10; ++i)
    budget.on_app_bytes("app" + std::to_string(i), "cell", 1);
  // A key already there still adds up; a new one beyond the bound is dropped.
  budget.on_app_bytes("app0", "cell", 1);
  budget.on_app_bytes("late", "cell", 1);
  for (std::size_t i = 0; i < cellular_budget::max_ttfb_samples + 50; ++i)
    budget.on_ttfb("cell", "one.test", microseconds(i));
  for (std::size_t i = 0; i < keys + 10; ++i)
    budget.on_ttfb("cell", "host" + std::to_string(i), microseconds(1));
  EXPECT_EQ(budget.app_bytes().size(), keys);
  EXPECT_EQ(budget.app_bytes().at({"app0", "cell"}), 2U);
  EXPECT_FALSE(budget.app_bytes().contains({"late", "cell"}));
  const auto pending = budget.take_pending();
  EXPECT_EQ(pending.usage.size(), keys);
  EXPECT_EQ(pending.ttfb.size(), keys);
  // one.test kept its first 256 samples (0..255 µs): their upper median is 128 µs.
  for (const auto& row : pending.ttfb) {
    if (row.host == "one.test") {
      EXPECT_EQ(row.median, microseconds(128));
    }
  }
}

}  // namespace
}  // namespace fleety::select
