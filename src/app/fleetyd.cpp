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
#include <boost/json.hpp>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <string>

#include "classify/classify.hpp"
#include "control/control.hpp"
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
/// transaction), the cgroup `fleety run` puts apps in, the apps and whether each is
/// enabled (the control socket changes that), and the listeners. The table goes away
/// with the object.
class interception {
 public:
  static core::expected<std::unique_ptr<interception>> start(asio::io_context& io,
                                                             const core::config& config,
                                                             dns::duplicator& duplicator) {
    auto self = std::unique_ptr<interception>(new interception(config.intercept));
    const auto& ic = config.intercept;
    net::set_own_socket_mark(ic.mark);
    auto mount = intercept::cgroup2_mount();
    if (!mount) return core::make_error(mount.error());
    // nft names cgroups relative to /sys/fs/cgroup.
    const std::filesystem::path base("/sys/fs/cgroup");
    self->mount_ = *mount;
    auto relative = self->mount_.lexically_relative(base);
    if (relative.empty() || relative.native().starts_with("..")) {
      return core::make_error(fmt::format(
          "the cgroup2 hierarchy is mounted at {}, not below /sys/fs/cgroup where nftables "
          "looks for cgroups",
          *mount));
    }
    self->prefix_ = relative == "." ? "" : relative.string();
    std::error_code fs_ec;
    std::filesystem::create_directories(self->mount_ / intercept::run_cgroup, fs_ec);
    if (fs_ec) {
      return core::make_error(fmt::format("cannot create the cgroup {}: {}",
                                          (self->mount_ / intercept::run_cgroup).string(),
                                          fs_ec.message()));
    }
    for (const auto& app : config.apps) {
      self->apps_.push_back({app.name, app.cgroup, app.uid, app.gid, app.enabled});
      if (!app.cgroup.empty() && !std::filesystem::is_directory(self->mount_ / app.cgroup)) {
        spdlog::warn("app {}: cgroup {} does not exist (yet): not selected by cgroup", app.name,
                     (self->mount_ / app.cgroup).string());
      }
    }
    // Per loopback address: the redirected connections, and the apps' DNS (UDP and TCP
    // 53) for the duplicator. A host without IPv6 on loopback only loses IPv6.
    for (const auto& address : {"127.0.0.1", "::1"}) {
      const auto ip = asio::ip::make_address(address);
      auto tcp = listen_on(io, asio::ip::tcp::endpoint(ip, ic.tcp_port), "intercept.port");
      auto dns_tcp = listen_on(io, asio::ip::tcp::endpoint(ip, ic.dns_port), "intercept.dns_port");
      asio::ip::udp::socket dns_udp(io);
      boost::system::error_code ec;
      dns_udp.open(ip.is_v4() ? asio::ip::udp::v4() : asio::ip::udp::v6(), ec);
      if (!ec) dns_udp.bind({ip, ic.dns_port}, ec);
      if (!tcp || !dns_tcp || ec) {
        const std::string why = !tcp       ? tcp.error()
                                : !dns_tcp ? dns_tcp.error()
                                           : fmt::format("cannot listen on {}:{} (UDP): {}",
                                                         address, ic.dns_port, ec.message());
        if (ip.is_v6()) {
          spdlog::warn("intercept: {}: IPv6 connections and DNS are not taken over", why);
          continue;
        }
        return core::make_error(why);
      }
      self->acceptors_.push_back(std::move(tcp).value());
      asio::co_spawn(io, dns::run_dns_udp(std::move(dns_udp), duplicator), asio::detached);
      asio::co_spawn(io, dns::run_dns_tcp(std::move(dns_tcp).value(), duplicator), asio::detached);
    }
    if (auto applied = self->apply(); !applied) return core::make_error(applied.error());
    spdlog::info(
        "intercept: table inet {} loaded; apps in cgroup {}/{} and {} configured app(s) "
        "are taken over on port {}, their DNS on port {}",
        intercept::table_name, *mount, intercept::run_cgroup, config.apps.size(), ic.tcp_port,
        ic.dns_port);
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

  boost::json::array apps_json() const {
    boost::json::array out;
    for (const auto& app : apps_) {
      boost::json::object entry{{"name", app.name}, {"enabled", app.enabled}};
      entry["cgroup"] =
          app.cgroup.empty() ? fmt::format("{}/{}", intercept::run_cgroup, app.name) : app.cgroup;
      entry["uid"] = app.uid ? boost::json::value(*app.uid) : boost::json::value(nullptr);
      entry["gid"] = app.gid ? boost::json::value(*app.gid) : boost::json::value(nullptr);
      out.push_back(std::move(entry));
    }
    return out;
  }

  core::expected<bool> set_enabled(const std::string& name, bool enabled) {
    auto* app = find(name);
    if (app == nullptr) {
      std::string names;
      for (const auto& a : apps_) names += (names.empty() ? "" : ", ") + a.name;
      return core::make_error(
          fmt::format("no app named '{}' (apps: {})", name, names.empty() ? "none yet" : names));
    }
    const bool before = app->enabled;
    app->enabled = enabled;
    if (auto applied = apply(); !applied) {
      app->enabled = before;
      return applied;
    }
    spdlog::info("app {}: {}", name, enabled ? "enabled" : "disabled");
    return true;
  }

  /// `fleety run --app NAME` made the cgroup fleety/NAME: the rules learn it.
  core::expected<bool> starting(const std::string& name) {
    auto* app = find(name);
    if (app == nullptr) {
      apps_.push_back({name, "", std::nullopt, std::nullopt, true});
      app = &apps_.back();
    }
    const bool enabled = app->enabled;
    if (auto applied = apply(); !applied) return applied;
    return enabled;
  }

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
  struct app_state {
    std::string name;
    std::string cgroup;  ///< configured; empty: fleety/<name> (`fleety run --app`)
    std::optional<std::uint32_t> uid;
    std::optional<std::uint32_t> gid;
    bool enabled = true;
  };

  explicit interception(const core::intercept_config& ic) : ic_(ic) {}

  app_state* find(const std::string& name) {
    for (auto& app : apps_)
      if (app.name == name) return &app;
    return nullptr;
  }

  /// The rules for the apps as they are now, loaded in one transaction.
  core::expected<bool> apply() {
    intercept::ruleset_spec spec;
    spec.tcp_port = ic_.tcp_port;
    spec.dns_port = ic_.dns_port;
    spec.redirect_dns = true;
    spec.own_mark = ic_.mark;
    spec.cgroup2_prefix = prefix_;
    spec.apps.push_back({"fleety run", std::string(intercept::run_cgroup), {}, {}});
    for (const auto& app : apps_) {
      const std::string run_cgroup = fmt::format("{}/{}", intercept::run_cgroup, app.name);
      if (!app.enabled) {
        // nft needs the cgroup to exist; one that doesn't has no process to let pass.
        if (std::filesystem::is_directory(mount_ / run_cgroup))
          spec.excluded_cgroups.push_back(run_cgroup);
        continue;
      }
      intercept::app_match match{app.name, app.cgroup, app.uid, app.gid};
      if (!match.cgroup.empty() && !std::filesystem::is_directory(mount_ / match.cgroup))
        match.cgroup.clear();
      if (!match.cgroup.empty() || match.uid || match.gid) spec.apps.push_back(std::move(match));
    }
    if (auto applied = intercept::run_nft(intercept::build_ruleset(spec)); !applied) {
      return core::make_error("cannot load the interception rules (nftables): " + applied.error());
    }
    table_loaded_ = true;
    return true;
  }

  const core::intercept_config& ic_;
  std::filesystem::path mount_;
  std::string prefix_;
  std::vector<app_state> apps_;
  std::vector<asio::ip::tcp::acceptor> acceptors_;
  bool table_loaded_ = false;
};

/// What the fleety CLI may ask (control socket).
class daemon_control : public control::daemon_api {
 public:
  daemon_control(mphttp::proxy_context& context, interception* intercepting,
                 const dns::duplicator& duplicator, std::string config_path)
      : context_(context),
        intercepting_(intercepting),
        duplicator_(duplicator),
        config_path_(std::move(config_path)) {}

  boost::json::object status() override {
    boost::json::array paths;
    for (const auto& p : context_.paths) {
      paths.push_back(
          boost::json::object{{"name", p.config.name},
                              {"interface", p.config.interface},
                              {"kind", std::string(core::to_string(p.config.kind))},
                              {"up", net::interface_exists(p.config.interface)},
                              {"rtt_ms", p.estimator.rtt_s() * 1000},
                              {"throughput_mbps", p.estimator.rate_bytes_per_s() * 8 / 1e6},
                              {"loss", nullptr},
                              {"bytes_received", p.bytes_received},
                              {"requests", p.requests}});
    }
    const auto& dns = duplicator_.stats();
    return {{"paths", std::move(paths)},
            {"sessions_active", context_.sessions_active},
            {"sessions_started", context_.sessions_started},
            {"multipath_downloads_active", context_.fetches_active},
            {"version_conflicts", context_.version_conflicts},
            {"intercepting", intercepting_ != nullptr},
            {"dns", boost::json::object{{"queries", dns.queries},
                                        {"answered_by_fallback", dns.answered_by_fallback},
                                        {"failed", dns.failed}}}};
  }
  boost::json::array apps() override {
    return intercepting_ ? intercepting_->apps_json() : boost::json::array{};
  }
  core::expected<bool> set_app_enabled(const std::string& name, bool enabled) override {
    if (!intercepting_) return core::make_error(interception_off);
    return intercepting_->set_enabled(name, enabled);
  }
  core::expected<bool> app_starting(const std::string& name) override {
    if (!intercepting_) return core::make_error(interception_off);
    return intercepting_->starting(name);
  }
  core::expected<std::size_t> reload_rules() override {
    auto fresh = core::load_config(config_path_);
    if (!fresh) return core::make_error(fresh.error() + " (the rules in use stay)");
    context_.features =
        classify::compile_feature_rules(fresh->features, fresh->multipath_by_default);
    spdlog::info("{} feature rule(s) loaded from {}", context_.features.rules.size(), config_path_);
    return context_.features.rules.size();
  }

 private:
  static constexpr const char* interception_off =
      "interception is off in fleetyd: set [intercept] enabled = true and restart it";
  mphttp::proxy_context& context_;
  interception* intercepting_;
  const dns::duplicator& duplicator_;
  std::string config_path_;
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
  // The fleety CLI's socket.
  daemon_control control_api(context, intercepting.get(), duplicator, config_path);
  auto control_acceptor = control::listen_control(io, config.control_socket);
  if (!control_acceptor) {
    std::cerr << "fleetyd: control socket: " << control_acceptor.error() << "\n";
    return 1;
  }
  asio::co_spawn(io, control::run_control_server(std::move(control_acceptor).value(), control_api),
                 asio::detached);

  // SIGHUP: the feature rules are read again (the rest of the file needs a restart).
  asio::signal_set reload(io, SIGHUP);
  std::function<void(const boost::system::error_code&, int)> on_reload =
      [&](const boost::system::error_code& wait_ec, int) {
        if (wait_ec) return;
        if (auto count = control_api.reload_rules(); !count)
          spdlog::error("SIGHUP: {}", count.error());
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
  std::error_code removed;
  std::filesystem::remove(config.control_socket, removed);
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
