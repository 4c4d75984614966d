#include "mphttp/proxy.hpp"
#include "net/bound_socket.hpp"

namespace fleety::mphttp {

namespace {

/// The estimator a path starts with: the config's prior, else the history's, else the
/// scheduler's defaults.
path_estimator first_estimate(const core::path_config& path, const core::config& config,
                              known_path_estimate known) {
  const auto& scheduler = config.scheduler;
  const auto rtt = path.prior_rtt.count() ? path.prior_rtt : known.rtt;
  const auto rate = path.prior_rate_bps ? path.prior_rate_bps
                    : known.rate_bps    ? known.rate_bps
                                        : scheduler.default_rate_bps;
  return path_estimator(rate, rtt.count() ? rtt : scheduler.default_rtt,
                        path.prior_rate_bps != 0 || known.rate_bps != 0);
}

}  // namespace

path_runtime make_path_runtime(const boost::asio::any_io_executor& executor,
                               const core::path_config& path, const core::config& config,
                               known_path_estimate known) {
  dns::path_resolver::options options;
  options.interface = path.interface;
  options.servers = path.dns_servers;
  options.rules = answer_rules_of(config);
  return path_runtime{path, std::make_unique<dns::path_resolver>(executor, options),
                      first_estimate(path, config, known)};
}

void assign_path_runtime(path_runtime& runtime, const core::path_config& path,
                         const core::config& config, known_path_estimate known) {
  runtime.resolver->rebind(path.interface, path.dns_servers);
  runtime.config = path;
  runtime.estimator = first_estimate(path, config, known);
}

bool path_runtime::is_up() const {
  return monitor != nullptr ? monitor->up(index) : net::interface_exists(config.interface);
}

}  // namespace fleety::mphttp
