#include "app/uplink_follower.hpp"

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <set>
#include <string>
#include <utility>

#include "dns/duplicator.hpp"
#include "path/history.hpp"
#include "path/uplinks.hpp"
#include "select/path_supervisor.hpp"

namespace fleety::app {

namespace asio = boost::asio;

namespace {

/// The slot's path with no uplink: down (no interface), its kind's cost kept.
core::path_config free_slot_of(const core::path_config& taken) {
  core::path_config free_slot;
  free_slot.kind = taken.kind;
  free_slot.cost = taken.cost;
  free_slot.mptcp_backup = taken.mptcp_backup;
  return free_slot;
}

/// Makes slot `index` `path` in every part that indexes paths; false (logged) when its
/// resolver cannot be set up, and then nothing changed.
bool assign(uplink_slots& slots, std::size_t index, const core::path_config& path) {
  try {
    mphttp::assign_path_runtime(slots.paths[index], path, slots.config,
                                {path::known_rtt(slots.history, path.name),
                                 path::known_rate_bps(slots.history, path.name)});
  } catch (const std::exception& e) {
    spdlog::error("uplinks: {} not taken up: {}", path.interface, e.what());
    return false;
  }
  slots.supervisor.assign_path(index, path);
  slots.duplicator.rename_path(index, path.name);
  return true;
}

}  // namespace

void log_discovered(const core::path_config& path, std::string_view how) {
  spdlog::info("path {}: {} found as {} ({}){}", path.name, path.interface,
               core::to_string(path.kind), path.discovered, how);
  if (path.dns_fallback) {
    spdlog::warn("path {}: {}", path.name, path.dns_found);
  } else {
    spdlog::info("path {}: DNS {} from {}", path.name, fmt::join(path.dns_servers, ", "),
                 path.dns_found);
  }
  if (auto problem = path::route_problem(path.interface); !problem.empty())
    spdlog::warn("path {}: {}", path.name, problem);
}

asio::awaitable<void> follow_uplinks(uplink_slots slots, std::chrono::milliseconds period) {
  std::vector<std::string> last_interface(slots.paths.size());
  for (std::size_t i = 0; i < slots.paths.size(); ++i)
    last_interface[i] = slots.paths[i].config.interface;
  std::set<std::string> said_without_slot;
  bool said_unreadable = false;
  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (;;) {
    timer.expires_after(period);
    co_await timer.async_wait(asio::use_awaitable);
    auto found = path::discover_uplinks();
    if (!found) {
      if (!std::exchange(said_unreadable, true))
        spdlog::warn("uplinks: {} (said once; the paths stay as they are)", found.error());
      continue;
    }
    said_unreadable = false;
    std::vector<path::uplink_slot> view;
    for (std::size_t i = 0; i < slots.paths.size(); ++i) {
      const auto& p = slots.paths[i].config;
      view.push_back({p.kind, p.interface, p.name, last_interface[i]});
    }
    const auto plan = path::plan_slots(view, *found);
    for (const auto& change : plan.changes) {
      auto& runtime = slots.paths[change.slot];
      if (!change.take) {
        const auto gone = runtime.config;
        if (assign(slots, change.slot, free_slot_of(gone)))
          spdlog::info("path {}: {} has no default route any more: dropped", gone.name,
                       gone.interface);
        continue;
      }
      const auto path = path::with_link_resolvers(*change.take, slots.config.discovery.root);
      if (!assign(slots, change.slot, path)) continue;
      last_interface[change.slot] = path.interface;
      said_without_slot.erase(path.interface);
      log_discovered(path, ", taken up");
    }
    for (const auto& u : plan.without_slot) {
      if (said_without_slot.insert(u.interface).second) {
        spdlog::warn(
            "uplinks: {} ({}) has a default route, but every {} path is taken: restart "
            "fleetyd to take it up too, or name it in a [[path]]",
            u.interface, core::to_string(u.kind), core::to_string(u.kind));
      }
    }
  }
}

}  // namespace fleety::app
