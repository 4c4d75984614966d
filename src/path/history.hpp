#pragma once
// The path history (issue 6): what fleetyd measured on each path, kept in SQLite so that
// it survives a restart. It seeds the scheduler's estimates and the initial path choice
// (paper §4.4), holds the monthly cellular byte counts of the budget, and the telemetry
// of the paper's §6.1 (throughput before and after each single→multi transition, RTT
// before and after each path switch) for `fleety stats`.
//
// Times are wall-clock (system_clock): unlike steady_clock they mean the same thing after
// a restart. Every operation returns its error (sqlite's message, prefixed with the file
// and what was being done) instead of throwing: the caller logs it and goes on.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/config.hpp"
#include "core/expected.hpp"
#include "path/quality.hpp"

namespace fleety::path {

using wall_clock = std::chrono::system_clock;

/// "2024-03" for any moment of March 2024 in UTC: the key of the monthly cellular budget.
std::string month_of(wall_clock::time_point when);

/// One path's quality at one moment, as the monitor measured it.
struct named_sample {
  std::string path;
  wall_clock::time_point at;
  quality measured;
};

/// A path's samples over a time window.
struct path_summary {
  std::size_t samples = 0;                              ///< all samples, up or not
  std::optional<std::chrono::microseconds> median_rtt;  ///< over samples with an RTT
  /// Over samples with traffic (throughput > 0): an idle path's 0 says nothing of its
  /// capacity.
  std::optional<double> median_throughput_bps;
  std::optional<double> mean_loss;  ///< over samples with a loss value, 0..1
};

/// The paper's §6.1 telemetry over a time window (its Fig. 4 and Fig. 5).
struct telemetry_summary {
  std::size_t transitions = 0;  ///< single→multi transitions
  /// multi − single throughput, what the paper calls the improvement (its median 82 kbit/s,
  /// mean 4.43 Mbit/s).
  std::optional<double> median_gain_bps;
  std::optional<double> mean_gain_bps;
  /// multi / single, over transitions whose single-path throughput was above 0.
  std::optional<double> median_speedup;
  std::optional<double> mean_speedup;
  std::size_t switches = 0;  ///< path switches
  /// RTT after − RTT before: negative when the switch lowered the latency.
  std::optional<std::chrono::microseconds> median_rtt_change;
};

/// One app's bytes on one path in one month.
struct usage_row {
  std::string app;
  std::string path;
  std::uint64_t bytes = 0;
  friend bool operator==(const usage_row&, const usage_row&) = default;
};

/// A host's last download (an object of at least mphttp's predicted_download_bytes): what
/// its next GET likely is, also after a restart (issue 17).
struct host_download {
  std::string host;
  wall_clock::time_point at;
  std::uint64_t bytes = 0;
  friend bool operator==(const host_download&, const host_download&) = default;
};

struct history_options {
  /// Samples, time-to-first-byte, telemetry and download rows older than this are pruned. Usage
  /// rows are not: the budget needs the whole month, and they are few.
  std::chrono::hours retention{24 * 7};
  /// Each table keeps at most this many rows (the newest), so the file stays bounded
  /// (about 100 bytes a row). At 5 samples/s per path, this bounds samples before the
  /// retention does: about 5.5 hours for two paths.
  std::size_t max_rows_per_table = 200'000;
  /// How long a write waits for another connection (the CLI) that holds the lock.
  std::chrono::milliseconds busy_timeout{2'000};
};

/// The history file. Owns its SQLite connection; move-only.
///
/// Each call is a few prepared-statement steps on a local file (WAL, synchronous=NORMAL:
/// a commit does not wait for the disk), one caller at a time (a mutex). After
/// write_behind() the record_... and add_usage calls only queue their write for a thread
/// of the history's own, so that fleetyd's event loop never waits for the disk; reads
/// then wait for at most the one write in progress.
class history {
 public:
  /// Opens `file`, creating it and its schema if it does not exist; ":memory:" gives a
  /// history that lives as long as the object. A file that is not a fleety history, or
  /// that a newer fleety wrote (a higher schema version), is refused and left unchanged.
  /// The error is one line that names the file and what to do.
  static core::expected<history> open(const std::string& file, history_options opts = {});

  history(history&&) noexcept;
  history& operator=(history&&) noexcept;
  /// Writes what is queued first.
  ~history();

  /// Most writes waiting for the writer thread; beyond, a write is dropped (its call
  /// returns the error, and a warning is logged once per 1,000 dropped).
  static constexpr std::size_t max_queued_writes = 4096;

  /// From now on writes are queued for a thread of the history's own, in order, and their
  /// calls return true at once (an error only when max_queued_writes are waiting). A
  /// write that fails there is logged (at most once a minute).
  void write_behind();

  /// Waits until every queued write is done, at most `timeout`; whether they are.
  bool drain(std::chrono::milliseconds timeout);

  /// Writes the samples in one transaction. Prunes (see prune()) at most once a minute,
  /// taking the newest sample's time as now; a failed prune is returned as the error,
  /// though the samples were written.
  core::expected<bool> record_samples(std::span<const named_sample> samples);

  /// The newest sample of `path` taken in [now − max_age, now]: what the estimates start
  /// from after a restart.
  core::expected<std::optional<quality>> latest(std::string_view path,
                                                std::chrono::microseconds max_age,
                                                wall_clock::time_point now) const;

  /// `path`'s samples taken in [since, now].
  core::expected<path_summary> summary(std::string_view path, wall_clock::time_point since,
                                       wall_clock::time_point now) const;

  /// A response's time to first byte on `path` from `host`.
  core::expected<bool> record_ttfb(std::string_view path, std::string_view host,
                                   wall_clock::time_point when, std::chrono::microseconds ttfb);

  /// The median time to first byte on `path` since `since`; nullopt if none was recorded.
  core::expected<std::optional<std::chrono::microseconds>> median_ttfb(
      std::string_view path, wall_clock::time_point since) const;

  /// A download from `host` went from one path to several: its throughput just before
  /// (one path) and once split (all paths), in bits/s.
  core::expected<bool> record_transition(wall_clock::time_point when, std::string_view host,
                                         double single_bps, double multi_bps);

  /// `app`'s flow moved from `from_path` to `to_path`; its RTT before and after the move.
  core::expected<bool> record_switch(wall_clock::time_point when, std::string_view app,
                                     std::string_view from_path, std::string_view to_path,
                                     std::chrono::microseconds rtt_before,
                                     std::chrono::microseconds rtt_after);

  /// The transitions and switches recorded since `since`.
  core::expected<telemetry_summary> telemetry(wall_clock::time_point since) const;

  /// Adds `bytes` to what `app` used on `path` in `month` (see month_of()).
  core::expected<bool> add_usage(std::string_view month, std::string_view app,
                                 std::string_view path, std::uint64_t bytes);

  /// Every app's bytes per path in `month`, by app then path.
  core::expected<std::vector<usage_row>> usage(std::string_view month) const;

  /// All apps' bytes on `path` in `month`; 0 if none.
  core::expected<std::uint64_t> usage_total(std::string_view month, std::string_view path) const;

  /// `host` served a download of `bytes` at `when` (replaces what was known of it).
  core::expected<bool> record_download(std::string_view host, wall_clock::time_point when,
                                       std::uint64_t bytes);

  /// The hosts whose last download was at or after `since`, newest first, at most `limit`.
  core::expected<std::vector<host_download>> downloads_since(wall_clock::time_point since,
                                                             std::size_t limit) const;

  /// `path`'s goodput as fleety's own transfers measured it (its estimator's rate, not
  /// what the monitor saw it carry), in bits/s; replaces the path's earlier one.
  core::expected<bool> record_path_rate(std::string_view path, wall_clock::time_point when,
                                        double rate_bps);

  /// `path`'s rate if recorded at or after `since`.
  core::expected<std::optional<double>> path_rate(std::string_view path,
                                                  wall_clock::time_point since) const;

  /// Deletes the rows older than the retention and, beyond each table's row cap, the
  /// oldest recorded; returns how many rows went. record_samples() calls it; call it
  /// yourself when nothing records samples.
  core::expected<std::size_t> prune(wall_clock::time_point now);

 private:
  struct impl;
  explicit history(std::unique_ptr<impl> state);

  /// Runs `job` now (the connection locked), or queues it after write_behind().
  core::expected<bool> write(std::function<core::expected<bool>(history&)> job);
  // The writes themselves, the connection locked by the caller.
  core::expected<bool> record_samples_now(std::span<const named_sample> samples);
  core::expected<bool> record_ttfb_now(std::string_view path, std::string_view host,
                                       wall_clock::time_point when, std::chrono::microseconds ttfb);
  core::expected<bool> record_transition_now(wall_clock::time_point when, std::string_view host,
                                             double single_bps, double multi_bps);
  core::expected<bool> record_switch_now(wall_clock::time_point when, std::string_view app,
                                         std::string_view from_path, std::string_view to_path,
                                         std::chrono::microseconds rtt_before,
                                         std::chrono::microseconds rtt_after);
  core::expected<bool> add_usage_now(std::string_view month, std::string_view app,
                                     std::string_view path, std::uint64_t bytes);
  core::expected<bool> record_download_now(std::string_view host, wall_clock::time_point when,
                                           std::uint64_t bytes);
  core::expected<bool> record_path_rate_now(std::string_view path, wall_clock::time_point when,
                                            double rate_bps);
  core::expected<std::size_t> prune_now(wall_clock::time_point now);

  std::unique_ptr<impl> impl_;  ///< owned; null only in a moved-from history
};

/// The daemon's history (issue 6), where [monitor] history says (its directory made;
/// the retention from history_retention, at least an hour). "" : none. A file that cannot
/// be opened costs the history only (a warning, said once), not the daemon: null then.
std::unique_ptr<history> open_configured_history(const core::monitor_config& config);

/// What `store` (may be null) knows of `path`'s RTT after a restart: the median of the
/// last hour's samples (logged), else zero. Not its rate: a sample's throughput is what
/// the path carried, not what it can carry.
std::chrono::microseconds known_rtt(const history* store, std::string_view path);

/// What `store` (may be null) knows of `path`'s rate after a restart: the rate fleety's
/// transfers measured within the last hour (logged), in bits/s, else zero.
std::uint64_t known_rate_bps(const history* store, std::string_view path);

}  // namespace fleety::path
