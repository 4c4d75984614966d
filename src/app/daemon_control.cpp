#include "app/daemon_control.hpp"

#include <spdlog/spdlog.h>

#include <chrono>

#include "classify/classify.hpp"
#include "core/config.hpp"
#include "path/history.hpp"

namespace fleety::app {

namespace {
constexpr const char* interception_off =
    "interception is off in fleetyd: set [intercept] enabled = true and restart it";
}  // namespace

control::status_model daemon_control::status() {
  control::status_model s;
  const auto& monitor = supervisor_.monitor();
  for (std::size_t i = 0; i < context_.paths.size(); ++i) {
    const auto& p = context_.paths[i];
    // A free slot (uplink discovery keeps room for uplinks plugged in later) is no path.
    if (p.config.interface.empty()) continue;
    const auto q = monitor.current(i);
    s.paths.push_back({p.config.name, p.config.interface,
                       std::string(core::to_string(p.config.kind)), monitor.up(i), q.rtt, q.jitter,
                       q.throughput_bps, q.loss, q.signal_dbm, p.estimator.rate_bytes_per_s() * 8,
                       monitor.probes_sent(i), p.bytes_received, p.requests, p.config.discovered,
                       p.config.dns_servers, p.config.dns_found, p.config.dns_fallback,
                       monitor.probe_description(i)});
  }
  for (const auto& [id, f] : supervisor_.flows().flows()) {
    s.flows.push_back(
        {id, f.app, f.qos, context_.paths[f.path].config.name, f.what,
         std::chrono::duration<double>(std::chrono::steady_clock::now() - f.started).count()});
  }
  for (const auto& d : mphttp::active_downloads(context_)) {
    auto& row = s.downloads.emplace_back(
        control::download_status{d.session, d.app, d.url, d.size, d.delivered, d.seconds, {}});
    for (const auto& p : d.paths) row.paths.push_back({p.name, p.bytes, p.rate_bps, p.failed});
  }
  for (const auto& [key, bytes] : supervisor_.budget().app_bytes())
    s.app_bytes.push_back({key.first, key.second, bytes});
  s.cellular_month_bytes = supervisor_.budget().month_bytes();
  s.flow_resets = supervisor_.flow_resets();
  s.cellular_capped = supervisor_.cellular_capped();
  s.sessions_active = context_.sessions_active;
  s.sessions_started = context_.sessions_started;
  s.multipath_downloads_active = context_.fetches_active;
  s.version_conflicts = context_.version_conflicts;
  const auto now = std::chrono::steady_clock::now();
  for (const auto& r : context_.refusals.active(now)) {
    s.refused_paths.push_back({r.host, r.path, std::string(mphttp::to_string(r.why)), r.status,
                               std::chrono::duration<double>(r.until - now).count()});
  }
  for (const auto& [why, n] : context_.refusals.totals())
    s.refusals_total.emplace_back(std::string(mphttp::to_string(why)), n);
  const auto warm = mphttp::warm_connections_of(context_);
  s.warm = {warm.idle, warm.reused, warm.parked, warm.over_limit};
  s.intercepting = intercepting_ != nullptr;
  const auto& dns = duplicator_.stats();
  s.dns = {dns.queries, dns.answered_by_fallback, dns.failed};
  return s;
}

std::vector<control::app_status> daemon_control::apps() {
  std::vector<control::app_status> out;
  if (intercepting_ == nullptr) return out;
  const auto& table = intercepting_->apps();
  for (const auto& a : table.apps()) {
    out.push_back(
        {a.name, a.enabled, intercept::app_table::cgroup_of(a), a.uid, a.gid, table.class_of(a)});
  }
  return out;
}

core::expected<bool> daemon_control::set_app_enabled(const std::string& name, bool enabled) {
  if (!intercepting_) return core::make_error(interception_off);
  return intercepting_->set_enabled(name, enabled);
}

core::expected<bool> daemon_control::app_starting(
    const std::string& name, const std::optional<control::peer_credentials>& caller) {
  if (!intercepting_) return core::make_error(interception_off);
  std::optional<intercept::joining_process> joining;
  if (caller) joining = intercept::joining_process{caller->pid, caller->uid};
  return intercepting_->starting(name, joining);
}

core::expected<control::stats_model> daemon_control::stats() {
  auto* store = supervisor_.history();
  if (store == nullptr) {
    return core::make_error(
        "fleetyd keeps no path history ([monitor] history is \"\" or could not be opened: "
        "see its log)");
  }
  const auto now = path::wall_clock::now();
  control::stats_model s;
  s.month = path::month_of(now);
  auto usage = store->usage(s.month);
  if (!usage) return core::make_error(usage.error());
  for (const auto& row : *usage) {
    if (row.app == select::path_supervisor::all_apps) {
      s.paths.push_back({row.path, row.bytes});
    } else {
      s.apps.push_back({row.app, row.path, row.bytes});
    }
  }
  auto telemetry = store->telemetry(now - std::chrono::hours(24 * s.days));
  if (!telemetry) return core::make_error(telemetry.error());
  const auto& t = *telemetry;
  s.cellular_bytes = supervisor_.budget().month_bytes();
  s.cellular_capped = supervisor_.cellular_capped();
  s.transitions = t.transitions;
  s.median_gain_bps = t.median_gain_bps;
  s.mean_gain_bps = t.mean_gain_bps;
  s.median_speedup = t.median_speedup;
  s.mean_speedup = t.mean_speedup;
  s.switches = t.switches;
  s.median_rtt_change = t.median_rtt_change;
  return s;
}

core::expected<std::size_t> daemon_control::reload_rules() {
  auto fresh = core::load_config(config_path_);
  if (!fresh) return core::make_error(fresh.error() + " (the rules in use stay)");
  context_.features = classify::compile_feature_rules(*fresh);
  spdlog::info("{} feature rule(s) and {} HTTP-DNS endpoint(s) loaded from {}",
               context_.features.rules.size(), context_.features.http_dns.size(), config_path_);
  return context_.features.rules.size();
}

}  // namespace fleety::app
