#include "intercept/app_table.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

namespace fleety::intercept {

app_table::app_table(std::vector<core::app_config> apps, std::string default_class)
    : apps_(std::move(apps)), configured_(apps_.size()), default_class_(std::move(default_class)) {}

bool valid_app_name(std::string_view name) {
  if (name.empty() || name.size() > 64 || name.front() == '.' || name.front() == '-') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

const core::app_config* app_table::find(std::string_view name) const {
  for (const auto& app : apps_)
    if (app.name == name) return &app;
  return nullptr;
}

core::app_config* app_table::find_mutable(std::string_view name) {
  return const_cast<core::app_config*>(std::as_const(*this).find(name));
}

std::string app_table::cgroup_of(const core::app_config& app) {
  return app.cgroup.empty() ? fmt::format("{}/{}", run_cgroup, app.name) : app.cgroup;
}

std::string app_table::class_of(const core::app_config& app) const {
  return app.qos_class.empty() ? default_class_ : app.qos_class;
}

core::expected<bool> app_table::set_enabled(std::string_view name, bool enabled) {
  auto* app = find_mutable(name);
  if (app == nullptr) {
    std::string names;
    for (const auto& a : apps_) names += (names.empty() ? "" : ", ") + a.name;
    return core::make_error(
        fmt::format("no app named '{}' (apps: {})", name, names.empty() ? "none yet" : names));
  }
  const bool before = app->enabled;
  app->enabled = enabled;
  return before;
}

core::expected<bool> app_table::starting(std::string_view name) {
  if (!valid_app_name(name)) {
    return core::make_error(fmt::format(
        "app name '{}': use letters, digits, '.', '_' or '-' (at most 64, not first '.' or '-')",
        name.substr(0, 80)));
  }
  if (const auto* app = find(name)) return app->enabled;
  if (apps_.size() >= configured_ + max_run_apps) {
    return core::make_error(fmt::format(
        "app '{}': fleety run has added {} apps already, the most fleetyd keeps rules for "
        "(restart fleetyd to forget them)",
        name, max_run_apps));
  }
  core::app_config added;
  added.name = std::string(name);
  apps_.push_back(std::move(added));
  return true;
}

ruleset_spec app_table::ruleset(const core::intercept_config& ports, std::string cgroup2_prefix,
                                const cgroup_exists& exists) const {
  ruleset_spec spec;
  spec.tcp_port = ports.tcp_port;
  spec.dns_port = ports.dns_port;
  spec.redirect_dns = true;  // the duplicator listens on dns_port before the rules load
  spec.own_mark = ports.mark;
  spec.cgroup2_prefix = std::move(cgroup2_prefix);
  spec.apps.push_back({"fleety run", std::string(run_cgroup), {}, {}});
  for (const auto& app : apps_) {
    const std::string run_cgroup_of_app = fmt::format("{}/{}", run_cgroup, app.name);
    if (!app.enabled) {
      // nft needs the cgroup to exist; one that doesn't has no process to let pass.
      if (exists(run_cgroup_of_app)) spec.excluded_cgroups.push_back(run_cgroup_of_app);
      continue;
    }
    app_match match{app.name, app.cgroup, app.uid, app.gid};
    if (!match.cgroup.empty() && !exists(match.cgroup)) match.cgroup.clear();
    if (!match.cgroup.empty() || match.uid || match.gid) spec.apps.push_back(std::move(match));
  }
  return spec;
}

}  // namespace fleety::intercept
