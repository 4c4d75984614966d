#include "select/path_supervisor.hpp"

#include <spdlog/spdlog.h>

#include "core/units.hpp"
#include "path/history.hpp"
#include "select/selector_round.hpp"

namespace fleety::select {

namespace {

std::vector<path::monitor::path_spec> specs(const core::config& config) {
  std::vector<path::monitor::path_spec> out;
  for (const auto& p : config.paths) out.push_back(path::spec_of(p));
  return out;
}

/// The cellular bytes the history counted this month already.
std::uint64_t cellular_bytes_in(path::history* store, const core::config& config,
                                const std::string& month) {
  std::uint64_t total = 0;
  if (store == nullptr) return total;
  if (auto rows = store->usage(month)) {
    for (const auto& row : *rows) {
      for (const auto& p : config.paths) {
        if (row.app == path_supervisor::all_apps && p.name == row.path &&
            p.kind == core::path_kind::cellular)
          total += row.bytes;
      }
    }
  }
  return total;
}

}  // namespace

path_supervisor::path_supervisor(const boost::asio::any_io_executor& executor,
                                 const core::config& config, path::history* store,
                                 path_counters counters,
                                 std::function<void(bool capped)> on_capped_change)
    : config_(config),
      store_(store),
      counters_(std::move(counters)),
      on_capped_change_(std::move(on_capped_change)),
      selector_(config.classes, config.selector),
      budget_(config.budget.cellular_monthly_bytes, path::month_of(path::wall_clock::now()),
              cellular_bytes_in(store, config, path::month_of(path::wall_clock::now())),
              store != nullptr),
      monitor_(executor, config.monitor, specs(config), store,
               [this](path::clock_type::time_point now) { on_round(now); }) {
  for (const auto& p : config.paths) {
    names_.push_back(p.name);
    cellular_.push_back(p.kind == core::path_kind::cellular);
  }
}

void path_supervisor::assign_path(std::size_t index, const core::path_config& path) {
  if (index >= names_.size()) return;
  names_[index] = path.name;
  cellular_[index] = path.kind == core::path_kind::cellular;
  monitor_.assign(index, path::spec_of(path));
}

void path_supervisor::start() {
  monitor_.start();
}

boost::asio::awaitable<void> path_supervisor::async_stop() {
  co_await monitor_.async_stop();
  count_usage();  // the last second's bytes too
}

void path_supervisor::note_app_bytes(std::string_view app, std::string_view path,
                                     std::uint64_t bytes) {
  budget_.on_app_bytes(app, path, bytes);
}

void path_supervisor::note_ttfb(std::string_view path, std::string_view host,
                                std::chrono::microseconds ttfb) {
  budget_.on_ttfb(path, host, ttfb);
}

void path_supervisor::count_usage() {
  // What waited belongs to the month it was counted in: written before a new one starts.
  auto pending = budget_.take_pending();
  if (store_ != nullptr) {
    const auto now = path::wall_clock::now();
    for (const auto& row : pending.usage)
      (void)store_->add_usage(budget_.month(), row.app, row.path, row.bytes);
    for (const auto& row : pending.ttfb)
      (void)store_->record_ttfb(row.path, row.host, now, row.median);
  }
  std::vector<std::uint64_t> totals;
  for (std::size_t i = 0; i < names_.size(); ++i)
    totals.push_back(counters_.bytes_received ? counters_.bytes_received(i) : 0);
  const auto deltas =
      budget_.on_path_totals(totals, cellular_, path::month_of(path::wall_clock::now()));
  for (std::size_t i = 0; i < deltas.size(); ++i) {
    if (deltas[i] != 0 && store_ != nullptr)
      (void)store_->add_usage(budget_.month(), all_apps, names_[i], deltas[i]);
  }
  if (const auto capped = budget_.capped_change()) {
    spdlog::warn("cellular budget: {} of {} used this month: cellular {}",
                 core::format_size(budget_.month_bytes()), core::format_size(budget_.cap_bytes()),
                 *capped ? "only when no other path is up" : "available again");
    if (on_capped_change_) on_capped_change_(*capped);
  }
}

void path_supervisor::on_round(path::clock_type::time_point now) {
  std::vector<path_view> views;
  for (std::size_t i = 0; i < names_.size(); ++i) {
    path_view view;
    view.up = monitor_.up(i);
    view.cellular = cellular_[i];
    view.quality = monitor_.current(i);
    if (counters_.capacity_bps) view.capacity_bps = counters_.capacity_bps(i);
    views.push_back(view);
  }
  if (now - last_usage_ >= usage_every) {
    last_usage_ = now;
    count_usage();
  }
  const auto moves = selector_round(selector_, views, flows_.flows(), budget_.capped(), now);
  for (const auto& move : moves) {
    const auto& f = flows_.flows().at(move.flow);
    const auto& from_q = views[move.from].quality;
    const auto& to_q = views[move.to].quality;
    spdlog::info("[{}] {} of app {} (class {}): {} {} → {}: reset so that it reconnects", f.id,
                 f.what, f.app.empty() ? "-" : f.app, selector_.qos_class(f.qos).name,
                 move.path_down ? "lost its path" : "misses its class on", names_[move.from],
                 names_[move.to]);
    if (store_ != nullptr && from_q.rtt && to_q.rtt)
      (void)store_->record_switch(path::wall_clock::now(), f.app, names_[move.from],
                                  names_[move.to], *from_q.rtt, *to_q.rtt);
    if (flows_.reset(move.flow)) ++flow_resets_;
  }
}

}  // namespace fleety::select
