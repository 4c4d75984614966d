#include "path/history.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

namespace fleety::path {
namespace {

using namespace std::chrono_literals;
using std::chrono::microseconds;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// 2024-03-10 12:00:00 UTC: a fixed wall-clock time, so that tests are hermetic.
constexpr wall_clock::time_point t0 = std::chrono::sys_days{std::chrono::year{2024} / 3 / 10} + 12h;

quality measured(std::optional<microseconds> rtt, std::optional<double> throughput_bps = {},
                 std::optional<double> loss = {}) {
  quality q;
  q.up = true;
  q.rtt = rtt;
  q.jitter = rtt ? std::optional<microseconds>(*rtt / 10) : std::nullopt;
  q.loss = loss;
  q.throughput_bps = throughput_bps;
  return q;
}

std::string contents(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Runs SQL on `file` through a connection of its own, as another program would.
void run_sql(const std::string& file, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(file.c_str(), &db), SQLITE_OK);
  char* message = nullptr;
  EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &message), SQLITE_OK)
      << (message != nullptr ? message : "");
  sqlite3_free(message);
  sqlite3_close(db);
}

class HistoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (std::filesystem::temp_directory_path() / "fleety-history-XXXXXX");
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string file(const std::string& name = "history.db") const { return dir_ + "/" + name; }

  history open(history_options opts = {}) {
    auto opened = history::open(file(), opts);
    if (!opened) ADD_FAILURE() << opened.error();
    return std::move(opened).value();
  }

  // How many samples of `path` the file holds.
  static std::size_t sample_count(const history& h, std::string_view path) {
    return h.summary(path, wall_clock::time_point{}, t0 + 24h)->samples;
  }

  std::string dir_;
};

TEST_F(HistoryTest, SurvivesCloseAndReopen) {
  {
    auto h = open();
    const std::vector<named_sample> samples = {
        {"wifi", t0, measured(30ms, 20e6, 0.01)},
        {"cell", t0, measured(60ms, 0, 0.0)},
    };
    ASSERT_TRUE(h.record_samples(samples));
    ASSERT_TRUE(h.record_ttfb("wifi", "cdn.fleety.test", t0, 42ms));
    ASSERT_TRUE(h.add_usage("2024-03", "wget", "cell", 1'000));
    ASSERT_TRUE(
        h.record_transition(t0, "cdn.fleety.test", /*single_bps=*/10e6, /*multi_bps=*/30e6));
    ASSERT_TRUE(h.record_switch(t0, "game", "wifi", "cell", /*rtt_before=*/400ms,
                                /*rtt_after=*/60ms));
  }
  auto h = open();
  const auto wifi = h.latest("wifi", 1s, t0 + 500ms);
  ASSERT_TRUE(wifi) << wifi.error();
  ASSERT_TRUE(wifi->has_value());
  EXPECT_TRUE((*wifi)->up);
  EXPECT_EQ((*wifi)->rtt, microseconds(30ms));
  EXPECT_EQ((*wifi)->jitter, microseconds(3ms));
  EXPECT_EQ((*wifi)->loss, 0.01);
  EXPECT_EQ((*wifi)->throughput_bps, 20e6);
  EXPECT_EQ((*h.latest("cell", 1s, t0))->rtt, microseconds(60ms));
  EXPECT_EQ(*h.median_ttfb("wifi", t0 - 1h), microseconds(42ms));
  EXPECT_THAT(*h.usage("2024-03"), ElementsAre(usage_row{"wget", "cell", 1'000}));
  const auto telemetry = h.telemetry(t0 - 1h);
  EXPECT_EQ(telemetry->transitions, 1U);
  EXPECT_EQ(telemetry->switches, 1U);
  EXPECT_EQ(telemetry->median_rtt_change, microseconds(-340ms));
}

TEST_F(HistoryTest, InMemoryHistoryWorks) {
  auto opened = history::open(":memory:");
  ASSERT_TRUE(opened) << opened.error();
  history& h = opened.value();
  const named_sample sample{"wifi", t0, measured(25ms)};
  ASSERT_TRUE(h.record_samples({&sample, 1}));
  EXPECT_EQ((*h.latest("wifi", 1s, t0))->rtt, microseconds(25ms));
}

TEST_F(HistoryTest, UnknownValuesStayUnknown) {
  auto h = open();
  named_sample down{"cell", t0, quality{}};
  ASSERT_TRUE(h.record_samples({&down, 1}));
  const auto found = *h.latest("cell", 1s, t0);
  ASSERT_TRUE(found);
  EXPECT_FALSE(found->up);
  EXPECT_FALSE(found->rtt);
  EXPECT_FALSE(found->jitter);
  EXPECT_FALSE(found->loss);
  EXPECT_FALSE(found->throughput_bps);
}

TEST_F(HistoryTest, LatestIsTheNewestSampleWithinMaxAge) {
  auto h = open();
  const std::vector<named_sample> samples = {
      {"wifi", t0, measured(10ms)},
      {"wifi", t0 + 2s, measured(20ms)},
      {"cell", t0 + 3s, measured(90ms)},
  };
  ASSERT_TRUE(h.record_samples(samples));
  EXPECT_EQ((*h.latest("wifi", 5s, t0 + 4s))->rtt, microseconds(20ms));
  // Just within and just past max_age of the newest wifi sample.
  EXPECT_TRUE(h.latest("wifi", 5s, t0 + 7s)->has_value());
  EXPECT_FALSE(h.latest("wifi", 5s, t0 + 7s + 1ms)->has_value());
  // A sample dated after now (the clock stepped back) is not taken for the latest.
  EXPECT_EQ((*h.latest("wifi", 5s, t0 + 1s))->rtt, microseconds(10ms));
  EXPECT_FALSE(h.latest("lte", 1h, t0 + 4s)->has_value());
}

TEST_F(HistoryTest, SummaryMediansAreTheRealMedians) {
  auto h = open();
  // RTTs 30, 10, 50, 20, 40 ms (median 30); throughputs with traffic 5, 1, 3, 2 Mbit/s
  // (median 2.5; the idle samples' 0 don't count); losses 0.1, 0.3 (mean 0.2).
  const std::vector<named_sample> samples = {
      {"wifi", t0 + 1s, measured(30ms, 5e6, 0.1)},
      {"wifi", t0 + 2s, measured(10ms, 0)},
      {"wifi", t0 + 3s, measured(50ms, 1e6, 0.3)},
      {"wifi", t0 + 4s, measured(20ms, 3e6)},
      {"wifi", t0 + 5s, measured(40ms, 2e6)},
      {"wifi", t0 + 6s, measured(std::nullopt, 0)},
      // Outside the window, and another path's.
      {"wifi", t0 - 1s, measured(900ms, 90e6, 0.9)},
      {"cell", t0 + 1s, measured(900ms, 90e6, 0.9)},
  };
  ASSERT_TRUE(h.record_samples(samples));
  const auto summary = h.summary("wifi", t0, t0 + 1min);
  ASSERT_TRUE(summary) << summary.error();
  EXPECT_EQ(summary->samples, 6U);
  EXPECT_EQ(summary->median_rtt, microseconds(30ms));
  EXPECT_DOUBLE_EQ(*summary->median_throughput_bps, 2.5e6);
  EXPECT_DOUBLE_EQ(*summary->mean_loss, 0.2);

  const auto empty = h.summary("lte", t0, t0 + 1min);
  EXPECT_EQ(empty->samples, 0U);
  EXPECT_FALSE(empty->median_rtt);
  EXPECT_FALSE(empty->median_throughput_bps);
  EXPECT_FALSE(empty->mean_loss);
}

TEST_F(HistoryTest, MedianTtfbOfOddAndEvenCounts) {
  auto h = open();
  EXPECT_FALSE(h.median_ttfb("wifi", t0)->has_value());
  ASSERT_TRUE(h.record_ttfb("wifi", "a.test", t0, 300ms));
  ASSERT_TRUE(h.record_ttfb("wifi", "a.test", t0, 100ms));
  ASSERT_TRUE(h.record_ttfb("wifi", "b.test", t0, 200ms));
  ASSERT_TRUE(h.record_ttfb("cell", "a.test", t0, 5s));
  ASSERT_TRUE(h.record_ttfb("wifi", "a.test", t0 - 1h, 5s));  // before `since`
  EXPECT_EQ(*h.median_ttfb("wifi", t0), microseconds(200ms));
  ASSERT_TRUE(h.record_ttfb("wifi", "b.test", t0, 700ms));
  EXPECT_EQ(*h.median_ttfb("wifi", t0), microseconds(250ms));
}

TEST_F(HistoryTest, TelemetrySummaryLikeThePapersFigures) {
  auto h = open();
  // Gains 20, 5, 15 Mbit/s (median 15, mean 13.33); speedups 3, 1.25, 4 (median 3,
  // mean 2.75). A transition from a stalled path (0 bit/s) has a gain but no speedup.
  ASSERT_TRUE(h.record_transition(t0, "a.test", /*single_bps=*/10e6, /*multi_bps=*/30e6));
  ASSERT_TRUE(h.record_transition(t0, "a.test", /*single_bps=*/20e6, /*multi_bps=*/25e6));
  ASSERT_TRUE(h.record_transition(t0, "b.test", /*single_bps=*/5e6, /*multi_bps=*/20e6));
  ASSERT_TRUE(h.record_transition(t0 - 1h, "b.test", /*single_bps=*/1e6, /*multi_bps=*/99e6));
  // RTT changes −60, +10, −150 ms: median −60.
  ASSERT_TRUE(h.record_switch(t0, "game", "wifi", "cell", 100ms, 40ms));
  ASSERT_TRUE(h.record_switch(t0, "game", "cell", "wifi", 50ms, 60ms));
  ASSERT_TRUE(h.record_switch(t0, "chat", "wifi", "cell", 200ms, 50ms));
  const auto telemetry = h.telemetry(t0);
  ASSERT_TRUE(telemetry) << telemetry.error();
  EXPECT_EQ(telemetry->transitions, 3U);
  EXPECT_DOUBLE_EQ(*telemetry->median_gain_bps, 15e6);
  EXPECT_NEAR(*telemetry->mean_gain_bps, 40e6 / 3, 1);
  EXPECT_DOUBLE_EQ(*telemetry->median_speedup, 3);
  EXPECT_DOUBLE_EQ(*telemetry->mean_speedup, 2.75);
  EXPECT_EQ(telemetry->switches, 3U);
  EXPECT_EQ(telemetry->median_rtt_change, microseconds(-60ms));

  ASSERT_TRUE(h.record_transition(t0, "c.test", /*single_bps=*/0, /*multi_bps=*/8e6));
  const auto with_stall = h.telemetry(t0);
  EXPECT_EQ(with_stall->transitions, 4U);
  EXPECT_DOUBLE_EQ(*with_stall->median_gain_bps, 11.5e6);
  EXPECT_DOUBLE_EQ(*with_stall->median_speedup, 3);

  const auto nothing = h.telemetry(t0 + 1s);
  EXPECT_EQ(nothing->transitions, 0U);
  EXPECT_FALSE(nothing->median_gain_bps);
  EXPECT_FALSE(nothing->median_rtt_change);
}

TEST_F(HistoryTest, UsageAccumulatesPerMonthAppAndPath) {
  auto h = open();
  ASSERT_TRUE(h.add_usage("2024-03", "wget", "cell", 100));
  ASSERT_TRUE(h.add_usage("2024-03", "wget", "cell", 50));
  ASSERT_TRUE(h.add_usage("2024-03", "wget", "wifi", 7));
  ASSERT_TRUE(h.add_usage("2024-03", "curl", "cell", 3));
  ASSERT_TRUE(h.add_usage("2024-04", "wget", "cell", 1'000));
  EXPECT_THAT(*h.usage("2024-03"),
              ElementsAre(usage_row{"curl", "cell", 3}, usage_row{"wget", "cell", 150},
                          usage_row{"wget", "wifi", 7}));
  EXPECT_THAT(*h.usage("2024-04"), ElementsAre(usage_row{"wget", "cell", 1'000}));
  EXPECT_TRUE(h.usage("2024-05")->empty());
  EXPECT_EQ(*h.usage_total("2024-03", "cell"), 153U);
  EXPECT_EQ(*h.usage_total("2024-03", "wifi"), 7U);
  EXPECT_EQ(*h.usage_total("2024-05", "cell"), 0U);
}

TEST(MonthOf, IsTheUtcMonth) {
  using namespace std::chrono;
  EXPECT_EQ(month_of(sys_days{year{2024} / 3 / 31} + 23h + 59min + 59s), "2024-03");
  EXPECT_EQ(month_of(sys_days{year{2024} / 4 / 1}), "2024-04");
  EXPECT_EQ(month_of(sys_days{year{1999} / 12 / 31} + 12h), "1999-12");
  EXPECT_EQ(month_of(wall_clock::time_point{}), "1970-01");
}

TEST_F(HistoryTest, RetentionPrunesTheOldest) {
  auto h = open({.retention = 1h});
  const std::vector<named_sample> samples = {
      {"wifi", t0 - 2h, measured(10ms)},
      {"wifi", t0 - 30min, measured(20ms)},
      {"wifi", t0, measured(30ms)},
  };
  // The first record_samples() prunes, with its newest sample's time as now.
  ASSERT_TRUE(h.record_samples(samples));
  EXPECT_EQ(sample_count(h, "wifi"), 2U);
  EXPECT_EQ(h.summary("wifi", t0 - 3h, t0 - 1h)->samples, 0U);

  ASSERT_TRUE(h.record_ttfb("wifi", "a.test", t0 - 2h, 1s));
  ASSERT_TRUE(h.record_ttfb("wifi", "a.test", t0, 2s));
  ASSERT_TRUE(h.record_transition(t0 - 2h, "a.test", 1e6, 2e6));
  ASSERT_TRUE(h.record_switch(t0 - 2h, "game", "wifi", "cell", 1s, 2s));
  ASSERT_TRUE(h.add_usage("2024-01", "wget", "cell", 5));
  const auto pruned = h.prune(t0);
  ASSERT_TRUE(pruned) << pruned.error();
  EXPECT_EQ(*pruned, 3U);
  EXPECT_EQ(*h.median_ttfb("wifi", t0 - 3h), microseconds(2s));
  EXPECT_EQ(h.telemetry(t0 - 3h)->transitions, 0U);
  EXPECT_EQ(h.telemetry(t0 - 3h)->switches, 0U);
  // The budget needs the whole month: usage is not subject to the retention.
  EXPECT_EQ(*h.usage_total("2024-01", "cell"), 5U);
  EXPECT_EQ(sample_count(h, "wifi"), 2U);
}

TEST_F(HistoryTest, RowCapKeepsTheNewestRows) {
  auto h = open({.max_rows_per_table = 3});
  for (int month = 1; month <= 5; ++month) {
    ASSERT_TRUE(h.add_usage("2024-0" + std::to_string(month), "wget", "cell", 1));
  }
  std::vector<named_sample> samples;
  samples.reserve(5);
  for (int i = 0; i < 5; ++i) {
    samples.push_back(
        {"wifi", t0 + std::chrono::seconds(i), measured(std::chrono::milliseconds(i))});
  }
  ASSERT_TRUE(h.record_samples(samples));  // prunes: its first call
  EXPECT_EQ(sample_count(h, "wifi"), 3U);
  EXPECT_EQ(h.summary("wifi", t0, t0 + 1s)->samples, 0U);
  EXPECT_EQ(h.summary("wifi", t0 + 2s, t0 + 4s)->median_rtt, microseconds(3ms));
  EXPECT_TRUE(h.usage("2024-02")->empty());
  EXPECT_EQ(*h.usage_total("2024-03", "cell"), 1U);
  EXPECT_EQ(*h.prune(t0 + 5s), 0U);
}

TEST_F(HistoryTest, RecordingPrunesAtMostOnceAMinute) {
  auto h = open({.retention = 1h});
  const named_sample first{"wifi", t0, measured(10ms)};
  ASSERT_TRUE(h.record_samples({&first, 1}));  // the first call prunes
  const std::vector<named_sample> with_expired = {
      {"wifi", t0 - 2h, measured(10ms)},
      {"wifi", t0 + 30s, measured(10ms)},
  };
  ASSERT_TRUE(h.record_samples(with_expired));
  EXPECT_EQ(sample_count(h, "wifi"), 3U);  // 30 s after the last prune: none
  const named_sample later{"wifi", t0 + 61s, measured(10ms)};
  ASSERT_TRUE(h.record_samples({&later, 1}));
  EXPECT_EQ(sample_count(h, "wifi"), 3U);  // the expired one went
  EXPECT_EQ(h.summary("wifi", t0 - 3h, t0 - 1h)->samples, 0U);
}

TEST_F(HistoryTest, AHostsLastDownloadReplacesItsEarlierOneAndSurvivesReopen) {
  {
    auto h = open();
    ASSERT_TRUE(h.record_download("cdn.a.test", t0 - 2h, 4'000'000));
    ASSERT_TRUE(h.record_download("cdn.b.test", t0 - 30min, 2'000'000));
    ASSERT_TRUE(h.record_download("cdn.a.test", t0 - 10min, 10'000'000));
  }
  auto h = open();
  EXPECT_THAT(*h.downloads_since(t0 - 1h, 10),
              ElementsAre(host_download{"cdn.a.test", t0 - 10min, 10'000'000},
                          host_download{"cdn.b.test", t0 - 30min, 2'000'000}));
  EXPECT_THAT(*h.downloads_since(t0 - 1h, 1),
              ElementsAre(host_download{"cdn.a.test", t0 - 10min, 10'000'000}));
  EXPECT_THAT(*h.downloads_since(t0 - 20min, 10),
              ElementsAre(host_download{"cdn.a.test", t0 - 10min, 10'000'000}));
}

TEST_F(HistoryTest, DownloadsExpireWithTheRetentionAndTheRowCap) {
  auto h = open({.retention = 1h, .max_rows_per_table = 2});
  ASSERT_TRUE(h.record_download("old.test", t0 - 2h, 1'000'000));
  ASSERT_TRUE(h.record_download("a.test", t0 - 3min, 1'000'000));
  ASSERT_TRUE(h.record_download("b.test", t0 - 2min, 1'000'000));
  ASSERT_TRUE(h.record_download("c.test", t0 - 1min, 1'000'000));
  ASSERT_TRUE(h.prune(t0));
  const auto left = h.downloads_since(wall_clock::time_point{}, 10);
  ASSERT_EQ(left->size(), 2U);
  EXPECT_EQ((*left)[0].host, "c.test");
  EXPECT_EQ((*left)[1].host, "b.test");
}

TEST_F(HistoryTest, APathsRateIsItsLastAndExpiresWithTheRetention) {
  auto h = open({.retention = 1h});
  EXPECT_EQ(*h.path_rate("wifi", t0 - 1h), std::nullopt);
  ASSERT_TRUE(h.record_path_rate("wifi", t0 - 20min, 30e6));
  ASSERT_TRUE(h.record_path_rate("wifi", t0 - 10min, 48e6));
  ASSERT_TRUE(h.record_path_rate("cell", t0 - 2h, 19e6));
  EXPECT_EQ(*h.path_rate("wifi", t0 - 1h), std::optional<double>(48e6));
  EXPECT_EQ(*h.path_rate("wifi", t0 - 5min), std::nullopt);  // older than asked
  EXPECT_EQ(*h.path_rate("cell", wall_clock::time_point{}), std::optional<double>(19e6));
  ASSERT_TRUE(h.prune(t0));
  EXPECT_EQ(*h.path_rate("cell", wall_clock::time_point{}), std::nullopt);
}

TEST_F(HistoryTest, AVersionOneFileIsMigratedKeepingItsRows) {
  // What fleety with schema version 1 made: no download table.
  run_sql(file(),
          "CREATE TABLE usage (month TEXT NOT NULL, app TEXT NOT NULL, path TEXT NOT NULL, "
          "bytes INTEGER NOT NULL, UNIQUE (month, app, path)); "
          "CREATE TABLE sample (path TEXT NOT NULL, at_us INTEGER NOT NULL, up INTEGER NOT NULL, "
          "rtt_us INTEGER, jitter_us INTEGER, loss REAL, throughput_bps REAL); "
          "CREATE TABLE ttfb (path TEXT NOT NULL, host TEXT NOT NULL, at_us INTEGER NOT NULL, "
          "ttfb_us INTEGER NOT NULL); "
          "CREATE TABLE transition (at_us INTEGER NOT NULL, host TEXT NOT NULL, "
          "single_bps REAL NOT NULL, multi_bps REAL NOT NULL); "
          "CREATE TABLE path_switch (at_us INTEGER NOT NULL, app TEXT NOT NULL, "
          "from_path TEXT NOT NULL, to_path TEXT NOT NULL, rtt_before_us INTEGER NOT NULL, "
          "rtt_after_us INTEGER NOT NULL); "
          "INSERT INTO usage VALUES ('2024-03', 'wget', 'cell', 7); "
          "PRAGMA application_id = 1181512825; PRAGMA user_version = 1");
  auto h = open();
  EXPECT_EQ(*h.usage_total("2024-03", "cell"), 7U);
  ASSERT_TRUE(h.record_download("cdn.a.test", t0, 3'000'000));
  EXPECT_EQ(h.downloads_since(t0 - 1h, 10)->size(), 1U);
  ASSERT_TRUE(h.record_path_rate("wifi", t0, 48e6));
  EXPECT_EQ(*h.path_rate("wifi", t0), std::optional<double>(48e6));
}

TEST_F(HistoryTest, FileFromANewerFleetyIsRefusedAndLeftUnchanged) {
  { open(); }
  run_sql(file(), "PRAGMA user_version = 99");
  const std::string before = contents(file());
  const auto opened = history::open(file());
  ASSERT_FALSE(opened);
  EXPECT_THAT(opened.error(), HasSubstr("cannot open " + file()));
  EXPECT_THAT(opened.error(), HasSubstr("a newer fleety wrote it (schema version 99"));
  EXPECT_EQ(contents(file()), before);
}

TEST_F(HistoryTest, AnotherProgramsDatabaseIsRefusedAndLeftUnchanged) {
  run_sql(file(), "CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('mine')");
  const std::string before = contents(file());
  const auto opened = history::open(file());
  ASSERT_FALSE(opened);
  EXPECT_THAT(opened.error(), HasSubstr("it is not a fleety history"));
  EXPECT_EQ(contents(file()), before);
}

TEST_F(HistoryTest, MissingDirectoryGivesAClearError) {
  const std::string missing = file("no/such/dir/history.db");
  const auto opened = history::open(missing);
  ASSERT_FALSE(opened);
  EXPECT_EQ(opened.error(), "cannot open " + missing + ": unable to open database file (does " +
                                dir_ + "/no/such/dir exist and is it writable?)");
}

TEST_F(HistoryTest, FileThatIsNotADatabaseGivesAClearError) {
  std::ofstream(file()) << "hello";
  const auto opened = history::open(file());
  ASSERT_FALSE(opened);
  EXPECT_THAT(opened.error(), HasSubstr("cannot open " + file() + ": file is not a database"));
  EXPECT_THAT(opened.error(), HasSubstr("move it away"));
  EXPECT_EQ(contents(file()), "hello");
}

TEST_F(HistoryTest, WriteErrorsAreReturnedNotThrown) {
  auto h = open({.busy_timeout = 10ms});
  // Another connection holds the write lock for longer than the busy timeout.
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(file().c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  const named_sample sample{"wifi", t0, measured(10ms)};
  const auto recorded = h.record_samples({&sample, 1});
  ASSERT_FALSE(recorded);
  EXPECT_THAT(recorded.error(),
              HasSubstr("history " + file() + ": recording samples: database is locked"));
  const auto added = h.add_usage("2024-03", "wget", "cell", 1);
  ASSERT_FALSE(added);
  EXPECT_THAT(added.error(), HasSubstr("adding usage: database is locked"));
  sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr);
  sqlite3_close(other);
  // Once the lock is gone, the history works again.
  EXPECT_TRUE(h.record_samples({&sample, 1}));
  EXPECT_EQ(sample_count(h, "wifi"), 1U);
}

TEST_F(HistoryTest, UsesWriteAheadLogging) {
  { open(); }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(file().c_str(), &db), SQLITE_OK);
  sqlite3_stmt* mode = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &mode, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(mode), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(mode, 0)), "wal");
  sqlite3_finalize(mode);
  sqlite3_close(db);
}

// Another program's write lock on `file` (BEGIN IMMEDIATE) until the object goes.
class write_lock_holder {
 public:
  explicit write_lock_holder(const std::string& file) {
    EXPECT_EQ(sqlite3_open(file.c_str(), &db_), SQLITE_OK);
    EXPECT_EQ(sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  }
  ~write_lock_holder() { release(); }
  void release() {
    if (db_ == nullptr) return;
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    sqlite3_close(db_);
    db_ = nullptr;
  }

 private:
  sqlite3* db_ = nullptr;
};

TEST_F(HistoryTest, WrittenBehindTheCallerInOrderAndAllBeforeClose) {
  {
    auto h = open();
    h.write_behind();
    for (int i = 0; i < 500; ++i) {
      ASSERT_TRUE(h.add_usage("2024-03", "wget", "cell", 2));
      if (i % 100 == 0) {
        ASSERT_TRUE(h.usage("2024-03"));  // reads meanwhile, on the same connection
      }
    }
    ASSERT_TRUE(h.drain(5s));
    EXPECT_EQ(*h.usage_total("2024-03", "cell"), 1'000U);
    history moved = std::move(h);  // the writer follows the history it belongs to
    for (int i = 0; i < 300; ++i) ASSERT_TRUE(moved.record_download("cdn.fleety.test", t0, 7));
    ASSERT_TRUE(moved.add_usage("2024-03", "wget", "cell", 1));
  }  // closed with writes still queued: they are written first
  auto h = open();
  EXPECT_EQ(*h.usage_total("2024-03", "cell"), 1'001U);
  EXPECT_EQ(h.downloads_since(t0 - 1h, 10)->size(), 1U);
}

TEST_F(HistoryTest, AWriteBehindCallerNeverWaitsForTheDiskAndTheQueueIsBounded) {
  history_options opts;
  opts.busy_timeout = 5s;
  auto h = open(opts);
  h.write_behind();
  write_lock_holder other(file());  // the CLI (or a slow disk) holds the file
  const auto started = std::chrono::steady_clock::now();
  std::size_t accepted = 0;
  std::size_t refused = 0;
  for (std::size_t i = 0; i < history::max_queued_writes + 50; ++i) {
    if (h.add_usage("2024-03", "wget", "cell", 1)) {
      ++accepted;
    } else {
      ++refused;
    }
  }
  const auto took = std::chrono::steady_clock::now() - started;
  EXPECT_LT(took, 500ms) << "the caller waited for the locked file";
  // The writer holds one job while it waits for the lock; the queue holds the bound.
  EXPECT_GE(accepted, history::max_queued_writes);
  EXPECT_LE(accepted, history::max_queued_writes + 1);
  EXPECT_EQ(accepted + refused, history::max_queued_writes + 50);
  other.release();
  ASSERT_TRUE(h.drain(10s));
  EXPECT_EQ(*h.usage_total("2024-03", "cell"), accepted);
}

}  // namespace
}  // namespace fleety::path
