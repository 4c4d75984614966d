#pragma once
// The cellular budget ([budget], issue 6): cellular bytes this month against the monthly
// cap, a new month starting from zero, and what waits for the next history flush: each
// (app, path)'s bytes and each (path, host)'s time-to-first-byte samples, bounded. Pure:
// the month is passed in (path::month_of of the wall clock), nothing is read or written
// here; path_supervisor does the I/O.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fleety::select {

/// Not thread-safe: one io_context thread.
class cellular_budget {
 public:
  /// (app, path) for bytes; (path, host) for time to first byte.
  using key = std::pair<std::string, std::string>;
  /// Bounds of what waits for the next flush and of the bytes per app kept since start:
  /// at most this many keys (more are dropped, their bytes not kept)...
  static constexpr std::size_t max_pending_keys = 1024;
  /// ...and at most this many time-to-first-byte samples per key (more are dropped).
  static constexpr std::size_t max_ttfb_samples = 256;

  /// `cap_bytes`: [budget] cellular_monthly_bytes, 0: no cap. `month`: this month
  /// ("2025-03"); `used_bytes`: the cellular bytes of that month already counted (the
  /// history's). `keep_pending`: there is a history to flush to (else only the bytes per
  /// app since start are kept, for the status).
  cellular_budget(std::uint64_t cap_bytes, std::string month, std::uint64_t used_bytes,
                  bool keep_pending);

  /// `bytes` that app `app` (empty: not a configured app, kept as "-") received on path
  /// `path`.
  void on_app_bytes(std::string_view app, std::string_view path, std::uint64_t bytes);
  /// A response's time to first byte on `path` from `host`.
  void on_ttfb(std::string_view path, std::string_view host, std::chrono::microseconds ttfb);

  /// The paths' byte counters now (`totals[i]`: everything path i received since start;
  /// `cellular[i]`: it is a cellular path) in month `month`. A new month starts the
  /// month's count from zero first. Returns each path's bytes since the last call (the
  /// first call: since start).
  std::vector<std::uint64_t> on_path_totals(const std::vector<std::uint64_t>& totals,
                                            const std::vector<bool>& cellular,
                                            std::string_view month);

  /// Over the cap: cellular only when no other path is up.
  bool capped() const { return cap_bytes_ > 0 && month_bytes_ >= cap_bytes_; }
  /// capped() when it differs from what this last returned (initially: not capped);
  /// nullopt when it is the same. For the one log line and the proxy's flag per change.
  std::optional<bool> capped_change();

  const std::string& month() const { return month_; }
  std::uint64_t month_bytes() const { return month_bytes_; }
  std::uint64_t cap_bytes() const { return cap_bytes_; }

  /// One (app, path)'s or (path, host)'s row of a flush.
  struct usage_row {
    std::string app;
    std::string path;
    std::uint64_t bytes = 0;
    bool operator==(const usage_row&) const = default;
  };
  struct ttfb_row {
    std::string path;
    std::string host;
    std::chrono::microseconds median{0};  ///< of the samples since the last flush
    bool operator==(const ttfb_row&) const = default;
  };
  struct pending {
    std::vector<usage_row> usage;  ///< for month() (taken before a new month is counted)
    std::vector<ttfb_row> ttfb;
  };
  /// What waits for the history, in key order; cleared.
  pending take_pending();

  /// Bytes each app received on each path since start.
  const std::map<key, std::uint64_t>& app_bytes() const { return app_bytes_; }

 private:
  std::uint64_t cap_bytes_;
  std::string month_;
  std::uint64_t month_bytes_;
  bool keep_pending_;
  bool announced_capped_ = false;           ///< what capped_change() last said
  std::vector<std::uint64_t> last_totals_;  ///< per path, at the last on_path_totals
  std::map<key, std::uint64_t> app_bytes_;
  std::map<key, std::uint64_t> pending_usage_;
  std::map<key, std::vector<std::chrono::microseconds>> pending_ttfb_;
};

}  // namespace fleety::select
