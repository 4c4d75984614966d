#pragma once
// fleetyd's side of the control socket: what the fleety CLI may ask, answered by reading
// the daemon's parts into the control models (wiring: no decision is taken here).

#include <string>
#include <vector>

#include "control/control.hpp"
#include "dns/duplicator.hpp"
#include "intercept/interception.hpp"
#include "mphttp/proxy.hpp"
#include "select/path_supervisor.hpp"

namespace fleety::app {

/// Everything it refers to outlives it (fleetyd's run()). Called on the io thread.
class daemon_control : public control::daemon_api {
 public:
  /// `intercepting`: null without [intercept]. `config_path`: read again on rules.reload.
  daemon_control(mphttp::proxy_context& context, intercept::interception* intercepting,
                 const dns::duplicator& duplicator, const select::path_supervisor& supervisor,
                 std::string config_path)
      : context_(context),
        intercepting_(intercepting),
        duplicator_(duplicator),
        supervisor_(supervisor),
        config_path_(std::move(config_path)) {}

  control::status_model status() override;
  std::vector<control::app_status> apps() override;
  core::expected<bool> set_app_enabled(const std::string& name, bool enabled) override;
  core::expected<bool> app_starting(
      const std::string& name, const std::optional<control::peer_credentials>& caller) override;
  core::expected<control::stats_model> stats() override;
  core::expected<std::size_t> reload_rules() override;

 private:
  mphttp::proxy_context& context_;
  intercept::interception* intercepting_;  ///< not owned; null without [intercept]
  const dns::duplicator& duplicator_;
  const select::path_supervisor& supervisor_;
  std::string config_path_;
};

}  // namespace fleety::app
