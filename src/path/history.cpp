#include "path/history.hpp"

#include <spdlog/spdlog.h>
#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <functional>
#include <limits>
#include <mutex>
#include <numeric>
#include <thread>
#include <utility>

namespace fleety::path {
namespace {

// Version 1 is the first schema; version 2 adds the hosts' downloads and the paths' rates
// (issue 17: what fleetyd learned of hosts and paths is still known after a restart). Opening an
// older file migrates it; a file with a higher version is refused rather than guessed at.
constexpr std::int64_t schema_version = 2;
// "Flty" in the file header: a SQLite file without it was written by another program,
// and is refused rather than having our tables added to it.
constexpr std::int64_t application_id = 0x466c7479;
constexpr auto prune_interval = std::chrono::minutes(1);

constexpr const char* schema_sql = R"sql(
CREATE TABLE sample (
  path TEXT NOT NULL,
  at_us INTEGER NOT NULL,
  up INTEGER NOT NULL,
  rtt_us INTEGER,
  jitter_us INTEGER,
  loss REAL,
  throughput_bps REAL
);
CREATE INDEX sample_by_path ON sample (path, at_us);
CREATE INDEX sample_by_time ON sample (at_us);
CREATE TABLE ttfb (
  path TEXT NOT NULL,
  host TEXT NOT NULL,
  at_us INTEGER NOT NULL,
  ttfb_us INTEGER NOT NULL
);
CREATE INDEX ttfb_by_path ON ttfb (path, at_us);
CREATE INDEX ttfb_by_time ON ttfb (at_us);
CREATE TABLE transition (
  at_us INTEGER NOT NULL,
  host TEXT NOT NULL,
  single_bps REAL NOT NULL,
  multi_bps REAL NOT NULL
);
CREATE INDEX transition_by_time ON transition (at_us);
CREATE TABLE path_switch (
  at_us INTEGER NOT NULL,
  app TEXT NOT NULL,
  from_path TEXT NOT NULL,
  to_path TEXT NOT NULL,
  rtt_before_us INTEGER NOT NULL,
  rtt_after_us INTEGER NOT NULL
);
CREATE INDEX path_switch_by_time ON path_switch (at_us);
CREATE TABLE usage (
  month TEXT NOT NULL,
  app TEXT NOT NULL,
  path TEXT NOT NULL,
  bytes INTEGER NOT NULL,
  UNIQUE (month, app, path)
);
)sql";

// What version 2 added to version 1 (also part of a new file's schema).
constexpr const char* version_2_sql = R"sql(
CREATE TABLE download (
  host TEXT PRIMARY KEY,
  at_us INTEGER NOT NULL,
  bytes INTEGER NOT NULL
);
CREATE INDEX download_by_time ON download (at_us);
CREATE TABLE path_rate (
  path TEXT PRIMARY KEY,
  at_us INTEGER NOT NULL,
  rate_bps REAL NOT NULL
);
)sql";

// Samples, times to first byte and telemetry expire with the retention.
constexpr std::array<const char*, 6> delete_expired_sql = {
    "DELETE FROM sample WHERE at_us < ?",     "DELETE FROM ttfb WHERE at_us < ?",
    "DELETE FROM transition WHERE at_us < ?", "DELETE FROM path_switch WHERE at_us < ?",
    "DELETE FROM download WHERE at_us < ?",   "DELETE FROM path_rate WHERE at_us < ?",
};
// Every table has a row cap: these delete the row `cap` places below the newest and every
// older one (none if fewer remain). Rowids grow in the order rows were recorded (an upsert
// keeps its row's rowid, and a month's usage rows are created during that month), so the
// smallest rowids are the oldest rows, whatever the wall clock did meanwhile.
constexpr std::array<const char*, 7> delete_beyond_cap_sql = {
    "DELETE FROM sample WHERE rowid <= "
    "(SELECT rowid FROM sample ORDER BY rowid DESC LIMIT 1 OFFSET ?)",
    "DELETE FROM ttfb WHERE rowid <= "
    "(SELECT rowid FROM ttfb ORDER BY rowid DESC LIMIT 1 OFFSET ?)",
    "DELETE FROM transition WHERE rowid <= "
    "(SELECT rowid FROM transition ORDER BY rowid DESC LIMIT 1 OFFSET ?)",
    "DELETE FROM path_switch WHERE rowid <= "
    "(SELECT rowid FROM path_switch ORDER BY rowid DESC LIMIT 1 OFFSET ?)",
    "DELETE FROM usage WHERE rowid <= "
    "(SELECT rowid FROM usage ORDER BY rowid DESC LIMIT 1 OFFSET ?)",
    // (A host's upsert keeps its rowid: the oldest first recorded go first.)
    "DELETE FROM download WHERE rowid <= "
    "(SELECT rowid FROM download ORDER BY rowid DESC LIMIT 1 OFFSET ?)",
    "DELETE FROM path_rate WHERE rowid <= "
    "(SELECT rowid FROM path_rate ORDER BY rowid DESC LIMIT 1 OFFSET ?)",
};

struct database_closer {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
struct statement_finalizer {
  void operator()(sqlite3_stmt* raw) const { sqlite3_finalize(raw); }
};
using database_handle = std::unique_ptr<sqlite3, database_closer>;
using statement_handle = std::unique_ptr<sqlite3_stmt, statement_finalizer>;

std::int64_t micros_since_epoch(wall_clock::time_point when) {
  return std::chrono::duration_cast<std::chrono::microseconds>(when.time_since_epoch()).count();
}

std::int64_t clamp_to_int64(std::uint64_t value) {
  return static_cast<std::int64_t>(
      std::min<std::uint64_t>(value, std::numeric_limits<std::int64_t>::max()));
}

// One use of a prepared statement: binds parameters in order, steps, and resets the
// statement when it goes out of scope. A statement left mid-result would keep its read
// transaction open, and that keeps WAL checkpoints from reclaiming the log.
class query {
 public:
  explicit query(sqlite3_stmt* prepared) : statement_(prepared) {}
  ~query() {
    sqlite3_reset(statement_);
    sqlite3_clear_bindings(statement_);
  }
  query(const query&) = delete;
  query& operator=(const query&) = delete;

  query& bind(std::int64_t value) { return check(sqlite3_bind_int64(statement_, ++index_, value)); }
  query& bind(double value) { return check(sqlite3_bind_double(statement_, ++index_, value)); }
  query& bind(std::string_view text) {
    // An empty view may have no data pointer, and sqlite binds a null pointer as NULL.
    return check(sqlite3_bind_text(statement_, ++index_, text.empty() ? "" : text.data(),
                                   static_cast<int>(text.size()), SQLITE_STATIC));
  }
  query& bind(std::chrono::microseconds value) { return bind(std::int64_t{value.count()}); }
  query& bind(wall_clock::time_point when) { return bind(micros_since_epoch(when)); }
  template <class T>
  query& bind(const std::optional<T>& value) {
    if (value) return bind(*value);
    return check(sqlite3_bind_null(statement_, ++index_));
  }

  /// SQLITE_ROW, SQLITE_DONE or the error code (of a failed bind, if one failed).
  int step() { return bind_result_ != SQLITE_OK ? bind_result_ : sqlite3_step(statement_); }

  bool is_null(int column) const { return sqlite3_column_type(statement_, column) == SQLITE_NULL; }
  std::int64_t int64(int column) const { return sqlite3_column_int64(statement_, column); }
  double real(int column) const { return sqlite3_column_double(statement_, column); }
  std::string text(int column) const {
    const auto* chars = sqlite3_column_text(statement_, column);
    if (chars == nullptr) return {};
    return {reinterpret_cast<const char*>(chars),
            static_cast<std::size_t>(sqlite3_column_bytes(statement_, column))};
  }
  std::optional<std::int64_t> optional_int64(int column) const {
    if (is_null(column)) return std::nullopt;
    return int64(column);
  }
  std::optional<double> optional_real(int column) const {
    if (is_null(column)) return std::nullopt;
    return real(column);
  }

 private:
  query& check(int result) {
    if (bind_result_ == SQLITE_OK) bind_result_ = result;
    return *this;
  }

  sqlite3_stmt* statement_;  ///< not owned: a statement of history::impl
  int index_ = 0;            ///< the last parameter bound (parameters count from 1)
  int bind_result_ = SQLITE_OK;
};

// Runs a statement that returns no rows (BEGIN, COMMIT, DELETE).
int run(sqlite3_stmt* prepared) {
  query once(prepared);
  return once.step();
}

struct transaction_statements {
  statement_handle begin, commit, rollback;
};

// Rolls back a write transaction unless commit() succeeded: on any failure the caller
// just returns its error.
class write_transaction {
 public:
  explicit write_transaction(const transaction_statements& statements)
      : statements_(statements), began_(run(statements_.begin.get()) == SQLITE_DONE) {}
  ~write_transaction() {
    if (began_ && !committed_) run(statements_.rollback.get());
  }
  write_transaction(const write_transaction&) = delete;
  write_transaction& operator=(const write_transaction&) = delete;

  bool began() const { return began_; }
  bool commit() {
    committed_ = run(statements_.commit.get()) == SQLITE_DONE;
    return committed_;
  }

 private:
  const transaction_statements& statements_;  ///< not owned: history::impl's
  bool began_;
  bool committed_ = false;
};

std::optional<double> median(std::vector<double> values) {
  if (values.empty()) return std::nullopt;
  const auto middle = values.begin() + static_cast<std::ptrdiff_t>(values.size() / 2);
  std::nth_element(values.begin(), middle, values.end());
  if (values.size() % 2 == 1) return *middle;
  // Even count: the mean of the two middle values; the lower one is the largest below.
  const double lower = *std::max_element(values.begin(), middle);
  return (lower + *middle) / 2;
}

std::optional<double> mean(const std::vector<double>& values) {
  if (values.empty()) return std::nullopt;
  return std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size());
}

std::optional<std::chrono::microseconds> as_micros(std::optional<double> value) {
  if (!value) return std::nullopt;
  return std::chrono::microseconds(std::llround(*value));
}

// What a person can do about the error that kept `file` from opening.
std::string open_hint(const std::string& file, int code) {
  if (file == ":memory:") return "";
  switch (code & 0xff) {
    case SQLITE_CANTOPEN: {
      std::error_code ignored;
      if (std::filesystem::is_directory(file, ignored)) return " (it is a directory: name a file)";
      auto directory = std::filesystem::path(file).parent_path().string();
      if (directory.empty()) directory = ".";
      return " (does " + directory + " exist and is it writable?)";
    }
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
      return " (it is not a fleety history: move it away, or choose another file)";
    case SQLITE_READONLY:
    case SQLITE_PERM:
      return " (fleetyd writes its history there: make it writable, or choose another file)";
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return " (another program holds it locked)";
    default:
      return "";
  }
}

core::error_message open_error(const std::string& file, sqlite3* db, int code) {
  const char* reason = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(code);
  return core::make_error("cannot open " + file + ": " + reason + open_hint(file, code));
}

core::error_message refusal(const std::string& file, const std::string& why) {
  return core::make_error("cannot open " + file + ": " + why);
}

// One integer out of a statement such as "PRAGMA user_version"; nullopt with the error in
// `db` when it failed.
std::optional<std::int64_t> single_integer(sqlite3* db, const char* sql) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db, sql, -1, &raw, nullptr) != SQLITE_OK) return std::nullopt;
  statement_handle owned(raw);
  if (sqlite3_step(raw) != SQLITE_ROW) return std::nullopt;
  return sqlite3_column_int64(raw, 0);
}

bool execute(sqlite3* db, const std::string& sql) {
  return sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK;
}

// Refuses what isn't ours or is too new, and creates the schema in an empty file. All of
// it in one write transaction, so that two fleetyds starting at once create it once; the
// transaction writes nothing unless the schema is created, so a refused file is unchanged.
std::optional<core::error_message> check_or_create_schema(const std::string& file, sqlite3* db) {
  const auto failed = [&] { return open_error(file, db, sqlite3_extended_errcode(db)); };
  if (!execute(db, "BEGIN IMMEDIATE")) return failed();
  struct rollback_unless_committed {
    sqlite3* db;
    bool committed = false;
    ~rollback_unless_committed() {
      if (!committed) execute(db, "ROLLBACK");
    }
  } transaction{db};

  const auto id = single_integer(db, "PRAGMA application_id");
  const auto version = id ? single_integer(db, "PRAGMA user_version") : std::nullopt;
  const auto objects =
      version ? single_integer(db, "SELECT count(*) FROM sqlite_master") : std::nullopt;
  if (!objects) return failed();

  if (*id == 0 && *version == 0 && *objects == 0) {
    const auto stamp = "PRAGMA application_id = " + std::to_string(application_id) +
                       "; PRAGMA user_version = " + std::to_string(schema_version);
    if (!execute(db, schema_sql) || !execute(db, version_2_sql) || !execute(db, stamp))
      return failed();
  } else if (*id != application_id || *version < 1) {
    return refusal(file, "it is not a fleety history (application_id " + std::to_string(*id) +
                             ", user_version " + std::to_string(*version) +
                             "): move it away, or choose another file");
  } else if (*version > schema_version) {
    return refusal(file, "a newer fleety wrote it (schema version " + std::to_string(*version) +
                             ", this fleety reads up to " + std::to_string(schema_version) +
                             "): upgrade fleety, or move the file away");
  } else if (*version == 1) {
    if (!execute(db, version_2_sql) || !execute(db, "PRAGMA user_version = 2")) return failed();
  }
  if (!execute(db, "COMMIT")) return failed();
  transaction.committed = true;
  return std::nullopt;
}

}  // namespace

std::string month_of(wall_clock::time_point when) {
  const std::chrono::year_month_day day{std::chrono::floor<std::chrono::days>(when)};
  char text[32];
  std::snprintf(text, sizeof text, "%04d-%02u", static_cast<int>(day.year()),
                static_cast<unsigned>(day.month()));
  return text;
}

struct history::impl {
  std::string file;
  history_options opts;
  // Before the statements: members go in reverse order, so they are finalized before the
  // connection closes.
  database_handle db;
  transaction_statements transactions;
  statement_handle insert_sample, latest_sample, samples_between;
  statement_handle insert_ttfb, ttfb_since;
  statement_handle insert_transition, transitions_since, insert_switch, switches_since;
  statement_handle add_usage, usage_of_month, usage_total;
  statement_handle record_download, downloads_since, record_path_rate, path_rate_since;
  std::array<statement_handle, delete_expired_sql.size()> delete_expired;
  std::array<statement_handle, delete_beyond_cap_sql.size()> delete_beyond_cap;
  std::optional<wall_clock::time_point> last_prune;  ///< when prune() last ran, if it has

  /// The connection, one user at a time: the loop's reads and the writer's jobs.
  std::mutex connection;
  history* owner = nullptr;  ///< the history this is the state of (moves update it)

  // Write-behind (history::write_behind): jobs for the writer thread, in order.
  std::mutex queue_mutex;
  std::condition_variable queue_changed;
  std::deque<std::function<core::expected<bool>(history&)>> jobs;
  bool writing = false;   ///< a job taken off the queue is running
  bool stopping = false;  ///< the history is closing: drain, then end
  std::size_t dropped = 0;
  std::chrono::steady_clock::time_point last_failure_logged{};
  std::thread writer;

  void run_writer();
  void stop_writer();

  core::error_message error(std::string_view doing) const {
    return core::make_error("history " + file + ": " + std::string(doing) + ": " +
                            sqlite3_errmsg(db.get()));
  }
};

core::expected<history> history::open(const std::string& file, history_options opts) {
  sqlite3* raw = nullptr;
  const int opened =
      sqlite3_open_v2(file.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
  database_handle db(raw);
  if (opened != SQLITE_OK) return open_error(file, db.get(), opened);
  sqlite3_extended_result_codes(db.get(), 1);
  sqlite3_busy_timeout(db.get(), static_cast<int>(opts.busy_timeout.count()));
  // sqlite falls back to read-only when it cannot write the file; every record would fail.
  if (sqlite3_db_readonly(db.get(), "main") == 1) {
    return refusal(file, "the file is read-only" + open_hint(file, SQLITE_READONLY));
  }
  if (auto refused = check_or_create_schema(file, db.get())) return std::move(*refused);
  // Only now that the file is known to be ours: switching to WAL rewrites its header.
  // WAL lets the CLI read while fleetyd writes; synchronous=NORMAL then loses at most the
  // last commits on power loss, never the file.
  if (!execute(db.get(), "PRAGMA journal_mode = WAL") ||
      !execute(db.get(), "PRAGMA synchronous = NORMAL")) {
    return open_error(file, db.get(), sqlite3_extended_errcode(db.get()));
  }

  auto state = std::make_unique<impl>();
  state->file = file;
  state->opts = opts;
  bool prepared = true;
  const auto prepare = [&](statement_handle& into, const char* sql) {
    if (!prepared) return;
    sqlite3_stmt* made = nullptr;
    prepared = sqlite3_prepare_v3(db.get(), sql, -1, SQLITE_PREPARE_PERSISTENT, &made, nullptr) ==
               SQLITE_OK;
    into.reset(made);
  };
  prepare(state->transactions.begin, "BEGIN IMMEDIATE");
  prepare(state->transactions.commit, "COMMIT");
  prepare(state->transactions.rollback, "ROLLBACK");
  prepare(state->insert_sample,
          "INSERT INTO sample (path, at_us, up, rtt_us, jitter_us, loss, throughput_bps) "
          "VALUES (?, ?, ?, ?, ?, ?, ?)");
  prepare(state->latest_sample,
          "SELECT up, rtt_us, jitter_us, loss, throughput_bps FROM sample "
          "WHERE path = ? AND at_us BETWEEN ? AND ? ORDER BY at_us DESC LIMIT 1");
  prepare(state->samples_between,
          "SELECT rtt_us, loss, throughput_bps FROM sample "
          "WHERE path = ? AND at_us BETWEEN ? AND ?");
  prepare(state->insert_ttfb, "INSERT INTO ttfb (path, host, at_us, ttfb_us) VALUES (?, ?, ?, ?)");
  prepare(state->ttfb_since, "SELECT ttfb_us FROM ttfb WHERE path = ? AND at_us >= ?");
  prepare(state->insert_transition,
          "INSERT INTO transition (at_us, host, single_bps, multi_bps) VALUES (?, ?, ?, ?)");
  prepare(state->transitions_since,
          "SELECT single_bps, multi_bps FROM transition WHERE at_us >= ?");
  prepare(state->insert_switch,
          "INSERT INTO path_switch (at_us, app, from_path, to_path, rtt_before_us, "
          "rtt_after_us) VALUES (?, ?, ?, ?, ?, ?)");
  prepare(state->switches_since,
          "SELECT rtt_after_us - rtt_before_us FROM path_switch WHERE at_us >= ?");
  prepare(state->add_usage,
          "INSERT INTO usage (month, app, path, bytes) VALUES (?, ?, ?, ?) "
          "ON CONFLICT (month, app, path) DO UPDATE SET bytes = bytes + excluded.bytes");
  prepare(state->usage_of_month,
          "SELECT app, path, bytes FROM usage WHERE month = ? ORDER BY app, path");
  prepare(state->usage_total,
          "SELECT coalesce(sum(bytes), 0) FROM usage WHERE month = ? AND path = ?");
  prepare(state->record_download,
          "INSERT INTO download (host, at_us, bytes) VALUES (?, ?, ?) "
          "ON CONFLICT (host) DO UPDATE SET at_us = excluded.at_us, bytes = excluded.bytes");
  prepare(state->downloads_since,
          "SELECT host, at_us, bytes FROM download WHERE at_us >= ? ORDER BY at_us DESC LIMIT ?");
  prepare(state->record_path_rate,
          "INSERT INTO path_rate (path, at_us, rate_bps) VALUES (?, ?, ?) "
          "ON CONFLICT (path) DO UPDATE SET at_us = excluded.at_us, rate_bps = excluded.rate_bps");
  prepare(state->path_rate_since, "SELECT rate_bps FROM path_rate WHERE path = ? AND at_us >= ?");
  for (std::size_t i = 0; i < delete_expired_sql.size(); ++i) {
    prepare(state->delete_expired[i], delete_expired_sql[i]);
  }
  for (std::size_t i = 0; i < delete_beyond_cap_sql.size(); ++i) {
    prepare(state->delete_beyond_cap[i], delete_beyond_cap_sql[i]);
  }
  if (!prepared) return open_error(file, db.get(), sqlite3_extended_errcode(db.get()));
  state->db = std::move(db);
  return history(std::move(state));
}

history::history(std::unique_ptr<impl> state) : impl_(std::move(state)) {
  impl_->owner = this;
}

history::history(history&& other) noexcept : impl_(std::move(other.impl_)) {
  if (impl_) {
    const std::lock_guard connection(impl_->connection);
    impl_->owner = this;
  }
}

history& history::operator=(history&& other) noexcept {
  if (this != &other) {
    if (impl_) impl_->stop_writer();
    impl_ = std::move(other.impl_);
    if (impl_) {
      const std::lock_guard connection(impl_->connection);
      impl_->owner = this;
    }
  }
  return *this;
}

history::~history() {
  if (impl_) impl_->stop_writer();
}

void history::write_behind() {
  const std::lock_guard queue(impl_->queue_mutex);
  if (impl_->writer.joinable()) return;
  impl_->writer = std::thread([state = impl_.get()] { state->run_writer(); });
}

bool history::drain(std::chrono::milliseconds timeout) {
  std::unique_lock queue(impl_->queue_mutex);
  return impl_->queue_changed.wait_for(queue, timeout,
                                       [this] { return impl_->jobs.empty() && !impl_->writing; });
}

core::expected<bool> history::write(std::function<core::expected<bool>(history&)> job) {
  {
    std::unique_lock queue(impl_->queue_mutex);
    if (impl_->writer.joinable()) {
      if (impl_->jobs.size() >= max_queued_writes) {
        // The disk is far behind: lose this record rather than memory or the loop's time.
        if (impl_->dropped++ % 1000 == 0) {
          spdlog::warn("history {}: {} writes waiting; dropped {} so far", impl_->file,
                       impl_->jobs.size(), impl_->dropped);
        }
        return core::make_error("history " + impl_->file + ": writes behind, one dropped");
      }
      impl_->jobs.push_back(std::move(job));
      queue.unlock();
      impl_->queue_changed.notify_all();
      return true;
    }
  }
  const std::lock_guard connection(impl_->connection);
  return job(*this);
}

void history::impl::run_writer() {
  for (;;) {
    std::function<core::expected<bool>(history&)> job;
    {
      std::unique_lock queue(queue_mutex);
      queue_changed.wait(queue, [this] { return stopping || !jobs.empty(); });
      if (jobs.empty()) return;  // stopping, and everything written
      job = std::move(jobs.front());
      jobs.pop_front();
      writing = true;
    }
    core::expected<bool> done = true;
    {
      const std::lock_guard guard(connection);
      done = job(*owner);
    }
    const auto now = std::chrono::steady_clock::now();
    if (!done && now - last_failure_logged >= std::chrono::minutes(1)) {
      last_failure_logged = now;
      spdlog::warn("{} (said at most once a minute)", done.error());
    }
    {
      const std::lock_guard queue(queue_mutex);
      writing = false;
    }
    queue_changed.notify_all();
  }
}

void history::impl::stop_writer() {
  {
    const std::lock_guard queue(queue_mutex);
    if (!writer.joinable()) return;
    stopping = true;
  }
  queue_changed.notify_all();
  writer.join();  // after the queued writes: each is a few statements on a local file
}

core::expected<bool> history::record_samples(std::span<const named_sample> samples) {
  return write([samples = std::vector<named_sample>(samples.begin(), samples.end())](
                   history& self) { return self.record_samples_now(samples); });
}

core::expected<bool> history::record_ttfb(std::string_view path, std::string_view host,
                                          wall_clock::time_point when,
                                          std::chrono::microseconds ttfb) {
  return write([path = std::string(path), host = std::string(host), when, ttfb](history& self) {
    return self.record_ttfb_now(path, host, when, ttfb);
  });
}

core::expected<bool> history::record_transition(wall_clock::time_point when, std::string_view host,
                                                double single_bps, double multi_bps) {
  return write([when, host = std::string(host), single_bps, multi_bps](history& self) {
    return self.record_transition_now(when, host, single_bps, multi_bps);
  });
}

core::expected<bool> history::record_switch(wall_clock::time_point when, std::string_view app,
                                            std::string_view from_path, std::string_view to_path,
                                            std::chrono::microseconds rtt_before,
                                            std::chrono::microseconds rtt_after) {
  return write([when, app = std::string(app), from_path = std::string(from_path),
                to_path = std::string(to_path), rtt_before, rtt_after](history& self) {
    return self.record_switch_now(when, app, from_path, to_path, rtt_before, rtt_after);
  });
}

core::expected<bool> history::add_usage(std::string_view month, std::string_view app,
                                        std::string_view path, std::uint64_t bytes) {
  return write([month = std::string(month), app = std::string(app), path = std::string(path),
                bytes](history& self) { return self.add_usage_now(month, app, path, bytes); });
}

core::expected<bool> history::record_download(std::string_view host, wall_clock::time_point when,
                                              std::uint64_t bytes) {
  return write([host = std::string(host), when, bytes](history& self) {
    return self.record_download_now(host, when, bytes);
  });
}

core::expected<bool> history::record_path_rate(std::string_view path, wall_clock::time_point when,
                                               double rate_bps) {
  return write([path = std::string(path), when, rate_bps](history& self) {
    return self.record_path_rate_now(path, when, rate_bps);
  });
}

core::expected<std::size_t> history::prune(wall_clock::time_point now) {
  const std::lock_guard connection(impl_->connection);
  return prune_now(now);
}

core::expected<bool> history::record_samples_now(std::span<const named_sample> samples) {
  if (samples.empty()) return true;
  {
    write_transaction transaction(impl_->transactions);
    if (!transaction.began()) return impl_->error("recording samples");
    for (const auto& sample : samples) {
      const quality& measured = sample.measured;
      query insert(impl_->insert_sample.get());
      insert.bind(sample.path)
          .bind(sample.at)
          .bind(std::int64_t{measured.up})
          .bind(measured.rtt)
          .bind(measured.jitter)
          .bind(measured.loss)
          .bind(measured.throughput_bps);
      if (insert.step() != SQLITE_DONE) return impl_->error("recording samples");
    }
    if (!transaction.commit()) return impl_->error("recording samples");
  }

  const auto now =
      std::max_element(samples.begin(), samples.end(), [](const auto& a, const auto& b) {
        return a.at < b.at;
      })->at;
  // A clock stepped back (now before the last prune) restarts the interval from now.
  const bool prune_due =
      !impl_->last_prune || now < *impl_->last_prune || now - *impl_->last_prune >= prune_interval;
  if (prune_due) {
    auto pruned = prune_now(now);
    if (!pruned) return core::make_error(pruned.error());
  }
  return true;
}

core::expected<std::optional<quality>> history::latest(std::string_view path,
                                                       std::chrono::microseconds max_age,
                                                       wall_clock::time_point now) const {
  const std::lock_guard connection(impl_->connection);
  query newest(impl_->latest_sample.get());
  newest.bind(path).bind(now - max_age).bind(now);
  const int stepped = newest.step();
  if (stepped == SQLITE_DONE) return std::optional<quality>{};
  if (stepped != SQLITE_ROW) return impl_->error("reading the latest sample");
  quality found;
  found.up = newest.int64(0) != 0;
  if (auto rtt = newest.optional_int64(1)) found.rtt = std::chrono::microseconds(*rtt);
  if (auto jitter = newest.optional_int64(2)) found.jitter = std::chrono::microseconds(*jitter);
  found.loss = newest.optional_real(3);
  found.throughput_bps = newest.optional_real(4);
  return std::optional<quality>{found};
}

core::expected<path_summary> history::summary(std::string_view path, wall_clock::time_point since,
                                              wall_clock::time_point now) const {
  const std::lock_guard connection(impl_->connection);
  query rows(impl_->samples_between.get());
  rows.bind(path).bind(since).bind(now);
  path_summary result;
  std::vector<double> rtts_us, throughputs_bps, losses;
  int stepped;
  while ((stepped = rows.step()) == SQLITE_ROW) {
    ++result.samples;
    if (!rows.is_null(0)) rtts_us.push_back(static_cast<double>(rows.int64(0)));
    if (!rows.is_null(1)) losses.push_back(rows.real(1));
    if (!rows.is_null(2) && rows.real(2) > 0) throughputs_bps.push_back(rows.real(2));
  }
  if (stepped != SQLITE_DONE) return impl_->error("summarizing samples");
  result.median_rtt = as_micros(median(std::move(rtts_us)));
  result.median_throughput_bps = median(std::move(throughputs_bps));
  result.mean_loss = mean(losses);
  return result;
}

core::expected<bool> history::record_ttfb_now(std::string_view path, std::string_view host,
                                              wall_clock::time_point when,
                                              std::chrono::microseconds ttfb) {
  query insert(impl_->insert_ttfb.get());
  insert.bind(path).bind(host).bind(when).bind(ttfb);
  if (insert.step() != SQLITE_DONE) return impl_->error("recording a time to first byte");
  return true;
}

core::expected<std::optional<std::chrono::microseconds>> history::median_ttfb(
    std::string_view path, wall_clock::time_point since) const {
  const std::lock_guard connection(impl_->connection);
  query rows(impl_->ttfb_since.get());
  rows.bind(path).bind(since);
  std::vector<double> ttfbs_us;
  int stepped;
  while ((stepped = rows.step()) == SQLITE_ROW) {
    ttfbs_us.push_back(static_cast<double>(rows.int64(0)));
  }
  if (stepped != SQLITE_DONE) return impl_->error("reading times to first byte");
  return as_micros(median(std::move(ttfbs_us)));
}

core::expected<bool> history::record_transition_now(wall_clock::time_point when,
                                                    std::string_view host, double single_bps,
                                                    double multi_bps) {
  query insert(impl_->insert_transition.get());
  insert.bind(when).bind(host).bind(single_bps).bind(multi_bps);
  if (insert.step() != SQLITE_DONE) return impl_->error("recording a transition");
  return true;
}

core::expected<bool> history::record_switch_now(wall_clock::time_point when, std::string_view app,
                                                std::string_view from_path,
                                                std::string_view to_path,
                                                std::chrono::microseconds rtt_before,
                                                std::chrono::microseconds rtt_after) {
  query insert(impl_->insert_switch.get());
  insert.bind(when).bind(app).bind(from_path).bind(to_path).bind(rtt_before).bind(rtt_after);
  if (insert.step() != SQLITE_DONE) return impl_->error("recording a path switch");
  return true;
}

core::expected<telemetry_summary> history::telemetry(wall_clock::time_point since) const {
  const std::lock_guard connection(impl_->connection);
  telemetry_summary result;
  std::vector<double> gains_bps, speedups;
  {
    query rows(impl_->transitions_since.get());
    rows.bind(since);
    int stepped;
    while ((stepped = rows.step()) == SQLITE_ROW) {
      const double single_bps = rows.real(0);
      const double multi_bps = rows.real(1);
      ++result.transitions;
      gains_bps.push_back(multi_bps - single_bps);
      if (single_bps > 0) speedups.push_back(multi_bps / single_bps);
    }
    if (stepped != SQLITE_DONE) return impl_->error("reading transitions");
  }
  std::vector<double> rtt_changes_us;
  {
    query rows(impl_->switches_since.get());
    rows.bind(since);
    int stepped;
    while ((stepped = rows.step()) == SQLITE_ROW) {
      ++result.switches;
      rtt_changes_us.push_back(static_cast<double>(rows.int64(0)));
    }
    if (stepped != SQLITE_DONE) return impl_->error("reading path switches");
  }
  result.mean_gain_bps = mean(gains_bps);
  result.median_gain_bps = median(std::move(gains_bps));
  result.mean_speedup = mean(speedups);
  result.median_speedup = median(std::move(speedups));
  result.median_rtt_change = as_micros(median(std::move(rtt_changes_us)));
  return result;
}

core::expected<bool> history::add_usage_now(std::string_view month, std::string_view app,
                                            std::string_view path, std::uint64_t bytes) {
  query upsert(impl_->add_usage.get());
  upsert.bind(month).bind(app).bind(path).bind(clamp_to_int64(bytes));
  if (upsert.step() != SQLITE_DONE) return impl_->error("adding usage");
  return true;
}

core::expected<std::vector<usage_row>> history::usage(std::string_view month) const {
  const std::lock_guard connection(impl_->connection);
  query rows(impl_->usage_of_month.get());
  rows.bind(month);
  std::vector<usage_row> result;
  int stepped;
  while ((stepped = rows.step()) == SQLITE_ROW) {
    result.push_back({rows.text(0), rows.text(1),
                      static_cast<std::uint64_t>(std::max<std::int64_t>(rows.int64(2), 0))});
  }
  if (stepped != SQLITE_DONE) return impl_->error("reading usage");
  return result;
}

core::expected<std::uint64_t> history::usage_total(std::string_view month,
                                                   std::string_view path) const {
  const std::lock_guard connection(impl_->connection);
  query total(impl_->usage_total.get());
  total.bind(month).bind(path);
  if (total.step() != SQLITE_ROW) return impl_->error("reading usage");
  return static_cast<std::uint64_t>(std::max<std::int64_t>(total.int64(0), 0));
}

core::expected<bool> history::record_download_now(std::string_view host,
                                                  wall_clock::time_point when,
                                                  std::uint64_t bytes) {
  query upsert(impl_->record_download.get());
  upsert.bind(host).bind(when).bind(clamp_to_int64(bytes));
  if (upsert.step() != SQLITE_DONE) return impl_->error("recording a download");
  return true;
}

core::expected<std::vector<host_download>> history::downloads_since(wall_clock::time_point since,
                                                                    std::size_t limit) const {
  const std::lock_guard connection(impl_->connection);
  query rows(impl_->downloads_since.get());
  rows.bind(since).bind(clamp_to_int64(limit));
  std::vector<host_download> result;
  int stepped;
  while ((stepped = rows.step()) == SQLITE_ROW) {
    result.push_back({rows.text(0),
                      wall_clock::time_point(std::chrono::microseconds(rows.int64(1))),
                      static_cast<std::uint64_t>(std::max<std::int64_t>(rows.int64(2), 0))});
  }
  if (stepped != SQLITE_DONE) return impl_->error("reading downloads");
  return result;
}

core::expected<bool> history::record_path_rate_now(std::string_view path,
                                                   wall_clock::time_point when, double rate_bps) {
  query upsert(impl_->record_path_rate.get());
  upsert.bind(path).bind(when).bind(rate_bps);
  if (upsert.step() != SQLITE_DONE) return impl_->error("recording a path's rate");
  return true;
}

core::expected<std::optional<double>> history::path_rate(std::string_view path,
                                                         wall_clock::time_point since) const {
  const std::lock_guard connection(impl_->connection);
  query row(impl_->path_rate_since.get());
  row.bind(path).bind(since);
  const int stepped = row.step();
  if (stepped == SQLITE_ROW) return std::optional<double>(row.real(0));
  if (stepped != SQLITE_DONE) return impl_->error("reading a path's rate");
  return std::optional<double>();
}

core::expected<std::size_t> history::prune_now(wall_clock::time_point now) {
  write_transaction transaction(impl_->transactions);
  if (!transaction.began()) return impl_->error("pruning");
  std::size_t deleted = 0;
  const auto cutoff = now - impl_->opts.retention;
  for (const auto& expired : impl_->delete_expired) {
    query drop(expired.get());
    drop.bind(cutoff);
    if (drop.step() != SQLITE_DONE) return impl_->error("pruning");
    deleted += static_cast<std::size_t>(sqlite3_changes(impl_->db.get()));
  }
  const auto cap = clamp_to_int64(impl_->opts.max_rows_per_table);
  for (const auto& beyond_cap : impl_->delete_beyond_cap) {
    query drop(beyond_cap.get());
    drop.bind(cap);
    if (drop.step() != SQLITE_DONE) return impl_->error("pruning");
    deleted += static_cast<std::size_t>(sqlite3_changes(impl_->db.get()));
  }
  if (!transaction.commit()) return impl_->error("pruning");
  impl_->last_prune = now;
  return deleted;
}

std::unique_ptr<history> open_configured_history(const core::monitor_config& config) {
  if (config.history_file.empty()) return nullptr;
  const std::filesystem::path file(config.history_file);
  std::error_code ec;
  if (file.has_parent_path()) std::filesystem::create_directories(file.parent_path(), ec);
  history_options options;
  options.retention = std::chrono::duration_cast<std::chrono::hours>(config.history_retention);
  if (options.retention.count() == 0) options.retention = std::chrono::hours(1);
  auto opened = history::open(config.history_file, options);
  if (!opened) {
    spdlog::warn("path history: {}; going on without it ([monitor] history)", opened.error());
    return nullptr;
  }
  return std::make_unique<history>(std::move(opened).value());
}

std::chrono::microseconds known_rtt(const history* store, std::string_view path) {
  if (store == nullptr) return std::chrono::microseconds{0};
  const auto now = wall_clock::now();
  auto known = store->summary(path, now - std::chrono::hours(1), now);
  if (!known || !known->median_rtt) return std::chrono::microseconds{0};
  spdlog::info("path {}: history of the last hour: {} samples, median RTT {} ms", path,
               known->samples, known->median_rtt->count() / 1000);
  return *known->median_rtt;
}

std::uint64_t known_rate_bps(const history* store, std::string_view path) {
  if (store == nullptr) return 0;
  const auto known = store->path_rate(path, wall_clock::now() - std::chrono::hours(1));
  if (!known || !*known || **known < 1) return 0;
  spdlog::info("path {}: rate measured within the last hour {:.1f} Mbit/s", path, **known / 1e6);
  return static_cast<std::uint64_t>(**known);
}

}  // namespace fleety::path
