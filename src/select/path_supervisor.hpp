#pragma once
// Paths as the selector sees them (issue 6), the I/O around the pure parts: the path
// monitor measures the paths; after each of its rounds the selector decides for the
// relayed flows (selector_round) and the flows that must move are reset, their switch
// recorded in the history; once a second the paths' bytes are counted against the
// cellular budget (cellular_budget) and what waits for the history is written to it.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "core/config.hpp"
#include "path/monitor.hpp"
#include "select/cellular_budget.hpp"
#include "select/select.hpp"

namespace fleety::path {
class history;
}

namespace fleety::select {

/// Owns the monitor, the selector, the flow table and the budget. Not thread-safe: one
/// io_context thread.
class path_supervisor {
 public:
  /// The history's usage rows' app for all of a path's bytes (relays, downloads; probes
  /// aside).
  static constexpr std::string_view all_apps = "*";

  /// What the paths' users count, read each round: path i's capacity (what it can carry,
  /// bits/s: the scheduler's estimate) and every response byte it received since start.
  struct path_counters {
    std::function<double(std::size_t path)> capacity_bps;
    std::function<std::uint64_t(std::size_t path)> bytes_received;
  };

  /// `config` and `store` (may be null: no history) outlive the object; paths are
  /// config.paths, in that order. `on_capped_change(capped)`: the budget was spent or is
  /// available again (once per change; the first time when it is spent already).
  path_supervisor(const boost::asio::any_io_executor& executor, const core::config& config,
                  path::history* store, path_counters counters,
                  std::function<void(bool capped)> on_capped_change);

  /// Starts the monitor (and with it the rounds).
  void start();
  /// Stops the monitor and waits for its probes; the last bytes are counted and written.
  boost::asio::awaitable<void> async_stop();

  /// Path `index` is `path` from now on (an uplink took its slot, or left it: empty
  /// interface): its name, kind and the monitor's view of it.
  void assign_path(std::size_t index, const core::path_config& path);

  /// An app's bytes on a path (by name), counted for the status and added to the
  /// history's usage at the next flush.
  void note_app_bytes(std::string_view app, std::string_view path, std::uint64_t bytes);
  /// A response's time to first byte; the history gets each (path, host)'s median.
  void note_ttfb(std::string_view path, std::string_view host, std::chrono::microseconds ttfb);

  path::monitor& monitor() { return monitor_; }
  const path::monitor& monitor() const { return monitor_; }
  select::selector& path_selector() { return selector_; }
  flow_table& flows() { return flows_; }
  const flow_table& flows() const { return flows_; }
  const cellular_budget& budget() const { return budget_; }
  bool cellular_capped() const { return budget_.capped(); }
  /// Relayed flows reset to move them off their path, since start.
  std::uint64_t flow_resets() const { return flow_resets_; }
  path::history* history() const { return store_; }

 private:
  void on_round(path::clock_type::time_point now);
  /// The paths' bytes since the last count, against the budget; the history flushed.
  void count_usage();

  /// How often the paths' bytes are counted against the budget and flushed (by time: the
  /// monitor also calls back between its rounds, when a probe answers).
  static constexpr auto usage_every = std::chrono::seconds(1);

  const core::config& config_;
  path::history* store_;  ///< not owned; may be null
  path_counters counters_;
  std::function<void(bool)> on_capped_change_;
  std::vector<std::string> names_;  ///< per path
  std::vector<bool> cellular_;      ///< per path
  select::selector selector_;
  flow_table flows_;
  cellular_budget budget_;
  path::monitor monitor_;  ///< last: its rounds use the members above
  path::clock_type::time_point last_usage_{};
  std::uint64_t flow_resets_ = 0;
};

}  // namespace fleety::select
