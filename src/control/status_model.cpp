#include "control/status_model.hpp"

#include <fmt/format.h>

#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <cmath>
#include <string>

namespace fleety::control {
namespace json = boost::json;

namespace {

/// Milliseconds as a JSON double, null when unknown.
json::value ms(const std::optional<std::chrono::microseconds>& v) {
  if (!v) return nullptr;
  return static_cast<double>(v->count()) / 1000;
}

json::value number(const std::optional<double>& v, double scale = 1) {
  return v ? json::value(*v / scale) : json::value(nullptr);
}

json::array strings(const std::vector<std::string>& items) {
  json::array out;
  for (const auto& item : items) out.emplace_back(item);
  return out;
}

}  // namespace

json::object status_json(const status_model& status) {
  json::array paths;
  for (const auto& p : status.paths) {
    paths.push_back(
        json::object{{"name", p.name},
                     {"interface", p.interface},
                     {"kind", p.kind},
                     {"up", p.up},
                     {"rtt_ms", ms(p.rtt)},
                     {"jitter_ms", ms(p.jitter)},
                     {"throughput_mbps", number(p.throughput_bps, 1e6)},
                     {"loss", number(p.loss)},
                     {"signal_dbm", number(p.signal_dbm)},
                     {"capacity_mbps", p.capacity_bps / 1e6},
                     {"probes", p.probes},
                     {"bytes_received", p.bytes_received},
                     {"requests", p.requests},
                     {"found", p.found.empty() ? json::value(nullptr) : json::value(p.found)},
                     {"dns", json::object{{"servers", strings(p.dns_servers)},
                                          {"found", p.dns_found.empty() ? json::value(nullptr)
                                                                        : json::value(p.dns_found)},
                                          {"fallback", p.dns_fallback}}},
                     {"probe", p.probe.empty() ? json::value(nullptr) : json::value(p.probe)}});
  }
  json::array flows;
  for (const auto& f : status.flows) {
    flows.push_back(json::object{{"id", f.id},
                                 {"app", f.app},
                                 {"class", f.qos_class},
                                 {"path", f.path},
                                 {"what", f.what},
                                 {"seconds", f.seconds}});
  }
  json::array downloads;
  for (const auto& d : status.downloads) {
    json::array shares;
    for (const auto& s : d.paths) {
      shares.push_back(json::object{
          {"path", s.path}, {"bytes", s.bytes}, {"rate_bps", s.rate_bps}, {"failed", s.failed}});
    }
    downloads.push_back(json::object{{"session", d.session},
                                     {"app", d.app},
                                     {"url", d.url},
                                     {"size", d.size},
                                     {"delivered", d.delivered},
                                     {"seconds", d.seconds},
                                     {"paths", std::move(shares)}});
  }
  json::array app_bytes;
  for (const auto& a : status.app_bytes)
    app_bytes.push_back(json::object{{"app", a.app}, {"path", a.path}, {"bytes", a.bytes}});
  json::array refused;
  for (const auto& r : status.refused_paths) {
    refused.push_back(json::object{{"host", r.host},
                                   {"path", r.path},
                                   {"reason", r.reason},
                                   {"status", r.status},
                                   {"seconds_left", r.seconds_left}});
  }
  json::object refusals;
  for (const auto& [reason, count] : status.refusals_total) refusals[reason] = count;
  return {{"paths", std::move(paths)},
          {"flows", std::move(flows)},
          {"downloads", std::move(downloads)},
          {"cellular_month_bytes", status.cellular_month_bytes},
          {"flow_resets", status.flow_resets},
          {"app_bytes", std::move(app_bytes)},
          {"cellular_capped", status.cellular_capped},
          {"sessions_active", status.sessions_active},
          {"sessions_started", status.sessions_started},
          {"multipath_downloads_active", status.multipath_downloads_active},
          {"version_conflicts", status.version_conflicts},
          {"refused_paths", std::move(refused)},
          {"refusals", std::move(refusals)},
          {"intercepting", status.intercepting},
          {"dns", json::object{{"queries", status.dns.queries},
                               {"answered_by_fallback", status.dns.answered_by_fallback},
                               {"failed", status.dns.failed}}},
          {"warm_connections", json::object{{"idle", status.warm.idle},
                                            {"reused", status.warm.reused},
                                            {"parked", status.warm.parked},
                                            {"over_limit", status.warm.over_limit}}}};
}

json::array apps_json(const std::vector<app_status>& apps) {
  json::array out;
  for (const auto& app : apps) {
    json::object entry{{"name", app.name}, {"enabled", app.enabled}};
    entry["cgroup"] = app.cgroup;
    entry["uid"] = app.uid ? json::value(*app.uid) : json::value(nullptr);
    entry["gid"] = app.gid ? json::value(*app.gid) : json::value(nullptr);
    entry["class"] = app.qos_class;
    out.push_back(std::move(entry));
  }
  return out;
}

json::object stats_json(const stats_model& stats) {
  json::array per_path;
  for (const auto& p : stats.paths)
    per_path.push_back(json::object{{"path", p.path}, {"bytes", p.bytes}});
  json::array per_app;
  for (const auto& a : stats.apps)
    per_app.push_back(json::object{{"path", a.path}, {"bytes", a.bytes}, {"app", a.app}});
  return json::object{
      {"month", stats.month},
      {"cellular_bytes", stats.cellular_bytes},
      {"cellular_capped", stats.cellular_capped},
      {"paths", std::move(per_path)},
      {"apps", std::move(per_app)},
      {"telemetry", json::object{{"days", stats.days},
                                 {"transitions", stats.transitions},
                                 {"median_gain_mbps", number(stats.median_gain_bps, 1e6)},
                                 {"mean_gain_mbps", number(stats.mean_gain_bps, 1e6)},
                                 {"median_speedup", number(stats.median_speedup)},
                                 {"mean_speedup", number(stats.mean_speedup)},
                                 {"switches", stats.switches},
                                 {"median_rtt_change_ms", ms(stats.median_rtt_change)}}}};
}

namespace {

void append_json(std::string& out, const json::value& value) {
  switch (value.kind()) {
    case json::kind::double_: {
      const double d = value.get_double();
      out += std::isfinite(d) ? fmt::format("{}", d) : std::string("null");
      return;
    }
    case json::kind::object: {
      out += '{';
      bool first = true;
      for (const auto& [key, member] : value.get_object()) {
        if (!first) out += ',';
        first = false;
        out += json::serialize(json::string(key));
        out += ':';
        append_json(out, member);
      }
      out += '}';
      return;
    }
    case json::kind::array: {
      out += '[';
      bool first = true;
      for (const auto& element : value.get_array()) {
        if (!first) out += ',';
        first = false;
        append_json(out, element);
      }
      out += ']';
      return;
    }
    default:
      out += json::serialize(value);
  }
}

bool has_double(const json::value& value) {
  switch (value.kind()) {
    case json::kind::double_:
      return true;
    case json::kind::object:
      for (const auto& member : value.get_object())
        if (has_double(member.value())) return true;
      return false;
    case json::kind::array:
      for (const auto& element : value.get_array())
        if (has_double(element)) return true;
      return false;
    default:
      return false;
  }
}

}  // namespace

std::string json_text(const json::value& value) {
  // Boost.JSON's own writer where no double needs rewriting (`apps` of 40,000 rows: several
  // times faster than rebuilding it here).
  if (!has_double(value)) return json::serialize(value);
  std::string out;
  append_json(out, value);
  return out;
}

}  // namespace fleety::control
