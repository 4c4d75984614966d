// Which configured app a redirected connection belongs to (its class, its cellular bytes).
#include <spdlog/spdlog.h>

#include <filesystem>

#include "intercept/intercept.hpp"
#include "net/socket_owner.hpp"

namespace fleety::intercept {

namespace {
/// `fleety run` apps live in cgroups fleety/NAME; more than this many are not looked at.
constexpr std::size_t max_run_cgroups = 1024;
constexpr auto refresh_interval = std::chrono::seconds(1);
}  // namespace

app_directory::app_directory(std::vector<core::app_config> apps, std::string cgroup2_mount,
                             std::string default_class)
    : apps_(std::move(apps)),
      mount_(std::move(cgroup2_mount)),
      default_class_(std::move(default_class)) {}

std::string app_directory::class_of(const std::string& app) const {
  for (const auto& a : apps_)
    if (a.name == app && !a.qos_class.empty()) return a.qos_class;
  return default_class_;
}

void app_directory::refresh_cgroups(std::chrono::steady_clock::time_point now) {
  if (mount_.empty() || now - refreshed_ < refresh_interval) return;
  refreshed_ = now;
  cgroup_apps_.clear();
  for (const auto& a : apps_) {
    if (a.cgroup.empty()) continue;
    if (auto id = net::cgroup_id_of(mount_ + "/" + a.cgroup)) cgroup_apps_[*id] = a.name;
  }
  std::error_code ec;
  std::size_t seen = 0;
  const std::filesystem::path run_dir = std::filesystem::path(mount_) / std::string(run_cgroup);
  for (std::filesystem::directory_iterator it(run_dir, ec), end;
       !ec && it != end && seen < max_run_cgroups; it.increment(ec), ++seen) {
    if (!it->is_directory(ec)) continue;
    if (auto id = net::cgroup_id_of(it->path().string()))
      cgroup_apps_.try_emplace(*id, it->path().filename().string());
  }
}

app_identity app_directory::identify(std::optional<std::uint64_t> cgroup_id, std::uint32_t uid) {
  if (cgroup_id) {
    auto it = cgroup_apps_.find(*cgroup_id);
    if (it == cgroup_apps_.end()) {
      refresh_cgroups(std::chrono::steady_clock::now());
      it = cgroup_apps_.find(*cgroup_id);
    }
    if (it != cgroup_apps_.end()) return {it->second, class_of(it->second), std::nullopt};
  }
  for (const auto& a : apps_) {
    if (a.uid && *a.uid == uid) return {a.name, class_of(a.name), std::nullopt};
  }
  return {"", default_class_, std::nullopt};
}

app_identity app_directory::identify_connection(const boost::asio::ip::tcp::endpoint& app,
                                                const boost::asio::ip::tcp::endpoint& destination) {
  auto owner = net::find_tcp_socket_owner(app, destination);
  if (!owner) {
    spdlog::debug("which app is {}? {}", app.address().to_string(), owner.error());
    return {"", default_class_, std::nullopt};
  }
  auto who = identify(owner->cgroup_id, owner->uid);
  who.user = net::socket_user_of(owner->uid);
  return who;
}

}  // namespace fleety::intercept
