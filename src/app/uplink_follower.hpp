#pragma once
// Uplink hot-plug (issue 19): with no [[path]] in the config, fleetyd looks at the
// machine's default routes every second and fits what it finds into its path slots
// (path::plan_slots): a tethered phone plugged in, or a Wi-Fi that connects after boot,
// is a path within 2 s; one that is gone frees its slot. Wiring only: the decisions are
// path::plan_slots', the parts that change are each component's assign call.

#include <boost/asio/awaitable.hpp>
#include <string_view>
#include <vector>

#include "core/config.hpp"
#include "mphttp/proxy.hpp"

namespace fleety::dns {
class duplicator;
}
namespace fleety::path {
class history;
}
namespace fleety::select {
class path_supervisor;
}

namespace fleety::app {

/// What the follower changes when an uplink takes or leaves a slot. Every reference
/// outlives the follower's task (the daemon's task group joins it first).
struct uplink_slots {
  const core::config& config;
  std::vector<mphttp::path_runtime>& paths;
  select::path_supervisor& supervisor;
  dns::duplicator& duplicator;
  const path::history* history = nullptr;
};

/// Says in the log that `path` was found (`how` follows its reason: "; a [[path]] in the
/// config overrides it", ", taken up"), with where its DNS servers came from, and what keeps its
/// traffic from leaving through it (path::route_problem), if anything.
void log_discovered(const core::path_config& path, std::string_view how);

/// Follows the uplinks until cancelled: every `period`, the default routes are read and
/// the slots changed to fit them; each change is logged.
boost::asio::awaitable<void> follow_uplinks(uplink_slots slots, std::chrono::milliseconds period);

}  // namespace fleety::app
