// fleetyd: wiring only. Reads the config, opens one resolver per path, the proxy
// listener and (with [intercept]) the interception rules and their listener; runs
// until SIGINT/SIGTERM, reloads the feature rules on SIGHUP.

#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/signal_set.hpp>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <string>

#include "classify/classify.hpp"
#include "core/config.hpp"
#include "core/log.hpp"
#include "core/units.hpp"
#include "dns/duplicator.hpp"
#include "intercept/intercept.hpp"
#include "mphttp/proxy.hpp"
#include "net/bound_socket.hpp"

namespace {

namespace asio = boost::asio;
using namespace fleety;

/// Opens a listening socket; the error names the address and what to do.
core::expected<asio::ip::tcp::acceptor> listen_on(asio::io_context& io,
                                                  const asio::ip::tcp::endpoint& endpoint,
                                                  std::string_view setting) {
  asio::ip::tcp::acceptor acceptor(io);
  boost::system::error_code ec;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return core::make_error(fmt::format(
        "cannot listen on {}:{}: {}{}", endpoint.address().to_string(), endpoint.port(),
        ec.message(),
        ec == asio::error::address_in_use
            ? fmt::format(" (another program uses this port: pick another {} or stop it)", setting)
            : ""));
  }
  return acceptor;
}

/// Interception: fleetyd's table (a stale one from a crash is replaced in the same
/// transaction), the cgroup `fleety run` puts apps in, and the listeners. The table
/// goes away with the object.
class interception {
 public:
  static core::expected<std::unique_ptr<interception>> start(asio::io_context& io,
                                                             const core::config& config,
                                                             dns::duplicator& duplicator) {
    auto self = std::unique_ptr<interception>(new interception());
    const auto& ic = config.intercept;
    net::set_own_socket_mark(ic.mark);
    auto mount = intercept::cgroup2_mount();
    if (!mount) return core::make_error(mount.error());
    // nft names cgroups relative to /sys/fs/cgroup.
    const std::filesystem::path base("/sys/fs/cgroup");
    const std::filesystem::path mount_path(*mount);
    auto relative = mount_path.lexically_relative(base);
    if (relative.empty() || relative.native().starts_with("..")) {
      return core::make_error(fmt::format(
          "the cgroup2 hierarchy is mounted at {}, not below /sys/fs/cgroup where nftables "
          "looks for cgroups",
          *mount));
    }
    const std::string prefix = relative == "." ? "" : relative.string();
    std::error_code fs_ec;
    std::filesystem::create_directories(mount_path / intercept::run_cgroup, fs_ec);
    if (fs_ec) {
      return core::make_error(fmt::format("cannot create the cgroup {}: {}",
                                          (mount_path / intercept::run_cgroup).string(),
                                          fs_ec.message()));
    }
    intercept::ruleset_spec spec;
    spec.tcp_port = ic.tcp_port;
    spec.dns_port = ic.dns_port;
    spec.own_mark = ic.mark;
    spec.cgroup2_prefix = prefix;
    spec.apps.push_back({"fleety run", std::string(intercept::run_cgroup), {}, {}});
    for (const auto& app : config.apps) {
      if (!app.enabled) continue;
      intercept::app_match match{app.name, app.cgroup, app.uid, app.gid};
      if (!app.cgroup.empty() && !std::filesystem::is_directory(mount_path / app.cgroup)) {
        spdlog::warn("app {}: cgroup {} does not exist (yet): not selected by cgroup", app.name,
                     (mount_path / app.cgroup).string());
        match.cgroup.clear();
      }
      if (match.cgroup.empty() && !match.uid && !match.gid) {
        spdlog::info("app {}: runs through `fleety run --app {}`", app.name, app.name);
        continue;
      }
      spec.apps.push_back(std::move(match));
    }
    for (const auto& address : {"127.0.0.1", "::1"}) {
      asio::ip::tcp::endpoint endpoint(asio::ip::make_address(address), ic.tcp_port);
      auto acceptor = listen_on(io, endpoint, "intercept.port");
      if (!acceptor) {
        // A host without IPv6 on loopback only loses IPv6 interception.
        if (std::string_view(address) == "::1") {
          spdlog::warn("intercept: {}: IPv6 connections are not taken over", acceptor.error());
          continue;
        }
        return core::make_error(acceptor.error());
      }
      self->acceptors_.push_back(std::move(acceptor).value());
    }
    // The apps' DNS (UDP and TCP 53) comes to the duplicator.
    for (const auto& address : {"127.0.0.1", "::1"}) {
      const auto ip = asio::ip::make_address(address);
      asio::ip::udp::socket udp(io);
      boost::system::error_code ec;
      udp.open(ip.is_v4() ? asio::ip::udp::v4() : asio::ip::udp::v6(), ec);
      if (!ec) udp.bind({ip, ic.dns_port}, ec);
      auto tcp = listen_on(io, asio::ip::tcp::endpoint(ip, ic.dns_port), "intercept.dns_port");
      if (ec || !tcp) {
        const std::string why =
            ec ? fmt::format("cannot listen on {}:{} (UDP): {}", address, ic.dns_port, ec.message())
               : tcp.error();
        if (std::string_view(address) == "::1") {
          spdlog::warn("intercept: {}: IPv6 DNS is not taken over", why);
          continue;
        }
        return core::make_error(why);
      }
      asio::co_spawn(io, dns::run_dns_udp(std::move(udp), duplicator), asio::detached);
      asio::co_spawn(io, dns::run_dns_tcp(std::move(tcp).value(), duplicator), asio::detached);
    }
    spec.redirect_dns = true;
    if (auto applied = intercept::run_nft(intercept::build_ruleset(spec)); !applied) {
      return core::make_error("cannot load the interception rules (nftables): " + applied.error());
    }
    self->table_loaded_ = true;
    spdlog::info(
        "intercept: table inet {} loaded; apps in cgroup {}/{}{} are taken over on "
        "port {}",
        intercept::table_name, *mount, intercept::run_cgroup,
        spec.apps.size() > 1 ? fmt::format(" and {} configured app(s)", spec.apps.size() - 1) : "",
        ic.tcp_port);
    return self;
  }

  /// Removes a table left by a fleetyd that crashed while interception was on: it would
  /// send the apps to a port nobody listens on.
  static void remove_stale() {
    if (intercept::run_nft(fmt::format("list table inet {}", intercept::table_name))) {
      if (auto removed = intercept::run_nft(intercept::removal_script()); removed) {
        spdlog::warn("intercept: removed a stale table inet {} (interception is off)",
                     intercept::table_name);
      }
    }
  }

  std::vector<asio::ip::tcp::acceptor>& acceptors() { return acceptors_; }

  ~interception() {
    if (!table_loaded_) return;
    if (auto removed = intercept::run_nft(intercept::removal_script()); !removed) {
      spdlog::error("intercept: cannot remove table inet {}: {}", intercept::table_name,
                    removed.error());
    } else {
      spdlog::info("intercept: table inet {} removed", intercept::table_name);
    }
  }

 private:
  interception() = default;
  std::vector<asio::ip::tcp::acceptor> acceptors_;
  bool table_loaded_ = false;
};

int run(const core::config& config, const std::string& config_path) {
  // A peer that closes while we write must be an error on that connection, not the end
  // of the daemon: splice(2), unlike send(MSG_NOSIGNAL), raises SIGPIPE.
  ::signal(SIGPIPE, SIG_IGN);
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
  context.features = classify::compile_feature_rules(config.features, config.multipath_by_default);
  asio::co_spawn(io, mphttp::run_proxy_listener(std::move(acceptor), context),
                 [](std::exception_ptr e) {
                   if (e) std::rethrow_exception(e);
                 });

  // Paper §4.1: every path's DNS answers, for the duplicator and the relays.
  dns::info_db dns_info;
  std::vector<dns::duplicator::path> dns_paths;
  for (auto& p : paths) dns_paths.push_back({p.config.name, p.config.interface, p.resolver.get()});
  dns::duplicator duplicator(std::move(dns_paths), dns_info);
  context.dns_info = &dns_info;

  std::unique_ptr<interception> intercepting;
  if (config.intercept.enabled) {
    auto started = interception::start(io, config, duplicator);
    if (!started) {
      std::cerr << "fleetyd: intercept: " << started.error() << "\n";
      return 1;
    }
    intercepting = std::move(started).value();
    for (auto& intercept_acceptor : intercepting->acceptors()) {
      asio::co_spawn(io, intercept::run_intercept_listener(std::move(intercept_acceptor), context),
                     [](std::exception_ptr e) {
                       if (e) std::rethrow_exception(e);
                     });
    }
  } else {
    interception::remove_stale();
  }

  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code&, int signal) {
    spdlog::info("signal {}: stopping", signal);
    io.stop();
  });
  // SIGHUP: the feature rules are read again (the rest of the file needs a restart).
  asio::signal_set reload(io, SIGHUP);
  std::function<void(const boost::system::error_code&, int)> on_reload =
      [&](const boost::system::error_code& wait_ec, int) {
        if (wait_ec) return;
        auto fresh = core::load_config(config_path);
        if (!fresh) {
          spdlog::error("SIGHUP: {}: keeping the rules in use", fresh.error());
        } else {
          context.features =
              classify::compile_feature_rules(fresh->features, fresh->multipath_by_default);
          spdlog::info("SIGHUP: {} feature rule(s) loaded from {}", context.features.rules.size(),
                       config_path);
        }
        reload.async_wait(on_reload);
      };
  reload.async_wait(on_reload);

  std::string summary;
  for (const auto& p : paths) {
    summary += fmt::format("{}{} ({}, {}, cost {})", summary.empty() ? "" : ", ", p.config.name,
                           p.config.interface, core::to_string(p.config.kind), p.config.cost);
  }
  spdlog::info("fleetyd listening on {}; paths: {}; scheduler {}",
               fmt::format("{}:{}", config.proxy.listen_address, config.proxy.listen_port), summary,
               config.scheduler.mode == core::scheduler_mode::cost ? "cost" : "aggregate");
  io.run();
  intercepting.reset();
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
    return run(*config, config_path);
  } catch (const std::exception& e) {
    std::cerr << "fleetyd: " << e.what() << "\n";
    return 1;
  }
}
