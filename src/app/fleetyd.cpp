// fleetyd: wiring only. Reads the config, opens one resolver per path and the proxy
// listener, runs until SIGINT/SIGTERM.

#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <cstdlib>
#include <iostream>
#include <string>

#include "core/config.hpp"
#include "core/log.hpp"
#include "core/units.hpp"
#include "mphttp/proxy.hpp"
#include "net/bound_socket.hpp"

namespace {

namespace asio = boost::asio;
using namespace fleety;

int run(const core::config& config) {
  asio::io_context io(1);

  std::vector<mphttp::path_runtime> paths;
  std::size_t present = 0;
  for (const auto& path_config : config.paths) {
    if (net::interface_exists(path_config.interface)) {
      ++present;
    } else {
      spdlog::warn("path {}: interface {} does not exist (yet): the path is skipped until it does",
                   path_config.name, path_config.interface);
    }
    dns::path_resolver::options options;
    options.interface = path_config.interface;
    options.servers = path_config.dns_servers;
    auto resolver = std::make_unique<dns::path_resolver>(io.get_executor(), options);
    mphttp::path_runtime runtime{
        path_config, std::move(resolver),
        mphttp::path_estimator(
            path_config.prior_rate_bps ? path_config.prior_rate_bps
                                       : config.scheduler.default_rate_bps,
            path_config.prior_rtt.count() ? path_config.prior_rtt : config.scheduler.default_rtt)};
    paths.push_back(std::move(runtime));
  }
  if (present == 0) {
    std::string names;
    for (const auto& p : config.paths) names += (names.empty() ? "" : ", ") + p.interface;
    std::cerr << "fleetyd: none of the configured interfaces exists (" << names
              << "): check [[path]] interface = ... against `ip link`\n";
    return 1;
  }

  asio::ip::tcp::acceptor acceptor(io);
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(config.proxy.listen_address, ec);
  if (ec) {
    std::cerr << "fleetyd: proxy.listen: '" << config.proxy.listen_address
              << "' is not an IP address\n";
    return 1;
  }
  const asio::ip::tcp::endpoint endpoint(address, config.proxy.listen_port);
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    std::cerr << "fleetyd: cannot listen on " << endpoint << ": " << ec.message()
              << (ec == asio::error::address_in_use
                      ? " (another program uses this port: pick another "
                        "proxy.listen or stop it)"
                      : "")
              << "\n";
    return 1;
  }
  if (!address.is_loopback()) {
    spdlog::warn(
        "proxy.listen {} is not a loopback address: anyone who can reach it can use fleety",
        config.proxy.listen_address);
  }

  mphttp::proxy_context context{config, paths};
  asio::co_spawn(io, mphttp::run_proxy_listener(std::move(acceptor), context),
                 [](std::exception_ptr e) {
                   if (e) std::rethrow_exception(e);
                 });

  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code&, int signal) {
    spdlog::info("signal {}: stopping", signal);
    io.stop();
  });

  std::string summary;
  for (const auto& p : paths) {
    summary += fmt::format("{}{} ({}, {}, cost {})", summary.empty() ? "" : ", ", p.config.name,
                           p.config.interface, core::to_string(p.config.kind), p.config.cost);
  }
  spdlog::info("fleetyd listening on {}; paths: {}; scheduler {}",
               fmt::format("{}:{}", config.proxy.listen_address, config.proxy.listen_port), summary,
               config.scheduler.mode == core::scheduler_mode::cost ? "cost" : "aggregate");
  io.run();
  for (const auto& p : paths) {
    spdlog::info("path {}: {} received in {} requests", p.config.name,
                 core::format_size(p.bytes_received), p.requests);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fleetyd: multipath HTTP for unmodified apps"};
  std::string config_path = "/etc/fleety/fleety.toml";
  std::string log_level;
  bool check_only = false;
  app.add_option("-c,--config", config_path, "configuration file (TOML)");
  app.add_option("--log-level", log_level,
                 "trace, debug, info, warn, error (overrides [log] level)");
  app.add_flag("--check", check_only, "validate the configuration and exit");
  CLI11_PARSE(app, argc, argv);

  auto config = fleety::core::load_config(config_path);
  if (!config) {
    std::cerr << "fleetyd: " << config.error() << "\n";
    return 2;
  }
  if (check_only) {
    std::cout << config_path << ": ok, " << config->paths.size() << " paths\n";
    return 0;
  }
  fleety::core::setup_logging(log_level.empty() ? config->log_level : log_level);
  try {
    return run(*config);
  } catch (const std::exception& e) {
    std::cerr << "fleetyd: " << e.what() << "\n";
    return 1;
  }
}
