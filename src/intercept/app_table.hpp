#pragma once
// The apps interception knows and whether each is enabled (the control socket changes
// that, `fleety run --app` adds apps), and the nftables ruleset for them as they are now.
// Pure: which cgroup directories exist is asked of a predicate, the rules are applied by
// `interception` (interception.hpp).

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "core/config.hpp"
#include "core/expected.hpp"
#include "intercept/intercept.hpp"

namespace fleety::intercept {

/// Whether a cgroup directory (below the cgroup2 mount, e.g. "fleety/curl") exists.
using cgroup_exists = std::function<bool(const std::string& cgroup)>;

/// The apps, in the config's order, then those `fleety run --app` started. Not
/// thread-safe.
class app_table {
 public:
  /// `default_class`: the class of an app that names none ([selector] default_class).
  app_table(std::vector<core::app_config> apps, std::string default_class);

  const std::vector<core::app_config>& apps() const { return apps_; }
  /// The app named `name`; nullptr if there is none.
  const core::app_config* find(std::string_view name) const;

  /// The cgroup an app's processes are in: its configured one, else the one `fleety run
  /// --app NAME` makes ("fleety/NAME").
  static std::string cgroup_of(const core::app_config& app);
  /// The app's QoS class, the default filled in.
  std::string class_of(const core::app_config& app) const;

  /// Enables or disables `name`. Returns whether it was enabled before (to undo it when
  /// the rules cannot be loaded); the error names the apps there are.
  [[nodiscard]] core::expected<bool> set_enabled(std::string_view name, bool enabled);

  /// `fleety run --app NAME` is about to start NAME in its cgroup fleety/NAME: an unknown
  /// name becomes a new, enabled app. Returns whether the app is enabled; the error says
  /// why a name is refused (not a valid_app_name, or max_run_apps added already).
  [[nodiscard]] core::expected<bool> starting(std::string_view name);

  /// The ruleset for the apps as they are now. `ports`: tcp_port, dns_port and mark from
  /// there; `cgroup2_prefix`: the mount relative to /sys/fs/cgroup (ruleset_spec). Apps in
  /// "fleety" (`fleety run`) are always selected; an enabled app by each of its cgroup,
  /// uid and gid, its cgroup only if it exists (nft refuses a missing one); a disabled
  /// app's fleety/NAME is excluded, if it exists (else no process is in it to let pass).
  ruleset_spec ruleset(const core::intercept_config& ports, std::string cgroup2_prefix,
                       const cgroup_exists& exists) const;

 private:
  core::app_config* find_mutable(std::string_view name);

  std::vector<core::app_config> apps_;
  std::size_t configured_ = 0;  ///< apps_ from the config; those after came from fleety run
  std::string default_class_;
};

}  // namespace fleety::intercept
