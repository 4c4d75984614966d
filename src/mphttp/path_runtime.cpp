#include "mphttp/proxy.hpp"
#include "net/bound_socket.hpp"

namespace fleety::mphttp {

path_runtime make_path_runtime(const boost::asio::any_io_executor& executor,
                               const core::path_config& path, const core::config& config,
                               std::chrono::microseconds known_rtt) {
  const auto& scheduler = config.scheduler;
  dns::path_resolver::options options;
  options.interface = path.interface;
  options.servers = path.dns_servers;
  options.rules = answer_rules_of(config);
  const auto rtt = path.prior_rtt.count() ? path.prior_rtt : known_rtt;
  return path_runtime{
      path, std::make_unique<dns::path_resolver>(executor, options),
      path_estimator(path.prior_rate_bps ? path.prior_rate_bps : scheduler.default_rate_bps,
                     rtt.count() ? rtt : scheduler.default_rtt)};
}

bool path_runtime::is_up() const {
  return monitor != nullptr ? monitor->up(index) : net::interface_exists(config.interface);
}

}  // namespace fleety::mphttp
