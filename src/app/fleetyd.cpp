// fleetyd: wiring only. Reads the config, opens one resolver per path, the proxy
// listener and (with [intercept]) the interception rules and their listeners; runs
// until SIGINT/SIGTERM, reloads the feature rules on SIGHUP. Every server runs in the
// daemon's task group; shutdown cancels and joins them before the objects they use go.

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/this_coro.hpp>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "app/daemon_control.hpp"
#include "app/uplink_follower.hpp"
#include "classify/classify.hpp"
#include "control/control.hpp"
#include "core/config.hpp"
#include "core/log.hpp"
#include "core/units.hpp"
#include "dns/duplicator.hpp"
#include "intercept/interception.hpp"
#include "mphttp/proxy.hpp"
#include "net/bound_socket.hpp"
#include "net/listen.hpp"
#include "net/service_notify.hpp"
#include "net/task_group.hpp"
#include "path/history.hpp"
#include "path/mptcp_endpoints.hpp"
#include "path/uplinks.hpp"
#include "select/path_supervisor.hpp"

namespace {

namespace asio = boost::asio;
using namespace fleety;

/// stderr for the line that says why fleetyd stops, after the log lines before it.
std::ostream& fleety_stderr() {
  core::flush_logging();
  return std::cerr;
}

/// How often the uplinks are looked at when they were discovered: a new one is a path
/// within 2 s (issue 19).
constexpr auto uplink_check_period = std::chrono::milliseconds(1000);

/// How long shutdown waits for the tasks after cancelling them (twice at most).
constexpr auto shutdown_grace = std::chrono::seconds(2);

/// One runtime per [[path]], its RTT and rate seeded from the history. Empty when
/// none of the interfaces exists or they may not be bound to (said on stderr).
std::vector<mphttp::path_runtime> make_paths(asio::io_context& io, const core::config& config,
                                             const path::history* history, bool discovering) {
  std::vector<mphttp::path_runtime> paths;
  std::vector<std::string> interfaces;
  bool any = discovering;  // (discovered uplinks may all come later)
  for (const auto& p : config.paths) {
    if (p.interface.empty()) {  // a free slot, for an uplink plugged in later
      paths.push_back(mphttp::make_path_runtime(io.get_executor(), p, config));
      continue;
    }
    interfaces.push_back(p.interface);
    any = any || net::interface_exists(p.interface);
    if (!net::interface_exists(p.interface))
      spdlog::warn("path {}: interface {} does not exist (yet): the path is skipped until it does",
                   p.name, p.interface);
    paths.push_back(mphttp::make_path_runtime(
        io.get_executor(), p, config,
        {path::known_rtt(history, p.name), path::known_rate_bps(history, p.name)}));
  }
  // Every upstream socket is bound to its path's interface: say it now, once, if we may not.
  const auto why = !any ? fmt::format(
                              "none of the configured interfaces exists ({}): check "
                              "[[path]] interface = ... against `ip link`",
                              fmt::join(interfaces, ", "))
                        : net::bind_permission_problem(interfaces);
  if (why.empty()) return paths;
  fleety_stderr() << "fleetyd: " << why << "\n";
  return {};
}

/// A listening socket at `address`:`port` of the config, or why not on stderr.
std::optional<asio::ip::tcp::acceptor> listen_at(asio::io_context& io, const std::string& address,
                                                 std::uint16_t port, std::string_view setting) {
  auto acceptor = net::listen_on(io, address, port, setting);
  if (acceptor) return std::move(acceptor).value();
  fleety_stderr() << "fleetyd: " << acceptor.error() << "\n";
  return std::nullopt;
}

/// Each app connection costs descriptors for its upstream sockets on every path and its
/// splice pipes: the soft limit (often 1024) goes up to the hard one, whoever started us.
void raise_open_files_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= limit.rlim_max) return;
  const auto before = limit.rlim_cur;
  limit.rlim_cur = limit.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &limit) == 0)
    spdlog::debug("open files limit raised from {} to {}", before, limit.rlim_cur);
}

/// Keeps fleetyd's local ports to root and the [access] group (issue 18 item 5). Without
/// the rules (no CAP_NET_ADMIN, [access] everyone) every local user may use them: said once.
std::unique_ptr<intercept::access_guard> guard_local_ports(
    const core::config& config, const std::optional<intercept::group_members>& group) {
  if (config.access.everyone) {
    spdlog::info("access: the proxy and DNS ports serve every local user ([access] everyone)");
    return nullptr;
  }
  intercept::access_spec spec;
  spec.tcp_ports = {config.proxy.listen_port};
  if (config.intercept.enabled) {
    spec.redirects = true;
    spec.tcp_ports.push_back(config.intercept.tcp_port);
    spec.tcp_ports.push_back(config.intercept.dns_port);
    spec.udp_ports.push_back(config.intercept.dns_port);
  }
  if (config.metrics.enabled) spec.tcp_ports.push_back(config.metrics.listen_port);
  spec.who = "fleetyd: root only";
  if (group) {
    spec.gid = group->gid;
    spec.uids = group->uids;
    spec.who = fmt::format("fleetyd: root and group {}", group->name);
  }
  const std::string ports = fmt::format("{}", fmt::join(spec.tcp_ports, ", "));
  auto guard = intercept::access_guard::start(std::move(spec));
  if (!guard) {
    spdlog::warn(
        "access: cannot keep fleetyd's ports to root and group {} ({}): every local "
        "user may use them",
        config.access.group, guard.error());
    return nullptr;
  }
  spdlog::info("access: fleetyd's ports ({}) refuse other local users (nftables table inet {})",
               ports, intercept::access_table_name);
  return std::move(guard).value();
}

int run(const core::config& config, const std::string& config_path, bool discovering) {
  // A peer that closes while we write must be an error on that connection, not the end
  // of the daemon: splice(2), unlike send(MSG_NOSIGNAL), raises SIGPIPE.
  ::signal(SIGPIPE, SIG_IGN);
  raise_open_files_limit();
  asio::io_context io(1);
  // Declared in the order they are needed: destroyed in reverse, after every task.
  const auto history = path::open_configured_history(config.monitor);
  auto paths = make_paths(io, config, history.get(), discovering);
  if (paths.empty()) return 1;
  // From now on the event loop only queues the history's writes, a thread of its own does
  // the disk; reads (the start's, `fleety stats`) wait for at most the write in progress.
  if (history) history->write_behind();
  // [access]: the group whose members may use fleety besides root.
  std::optional<intercept::group_members> access_group;
  if (!config.access.group.empty()) {
    if (auto group = intercept::members_of_group(config.access.group)) {
      access_group = std::move(group).value();
      spdlog::info("access: root and group {} (gid {}; members: {}) may use fleety",
                   access_group->name, access_group->gid,
                   access_group->users.empty()
                       ? std::string("none listed")
                       : fmt::format("{}", fmt::join(access_group->users, ", ")));
    } else {
      spdlog::warn(
          "access: {}: only root may use fleety (groupadd --system {}, then add the "
          "users who may)",
          group.error(), config.access.group);
    }
  }
  // Before anything listens: no moment when every local user may use the ports.
  const auto local_ports_guard = guard_local_ports(config, access_group);
  auto proxy_acceptor =
      listen_at(io, config.proxy.listen_address, config.proxy.listen_port, "proxy.listen");
  if (!proxy_acceptor) return 1;
  if (!proxy_acceptor->local_endpoint().address().is_loopback()) {
    spdlog::warn(
        "proxy.listen {} is not a loopback address: anyone who can reach it can use fleety",
        config.proxy.listen_address);
  }
  mphttp::proxy_context context{config, paths};
  context.features = classify::compile_feature_rules(config);
  // Paper §4.1: every path's DNS answers, vetted by [dns].
  dns::info_db dns_info(4096, mphttp::answer_rules_of(config));
  context.dns_info = &dns_info;
  select::path_supervisor supervisor(
      io.get_executor(), config, history.get(),
      {[&paths](std::size_t i) { return paths[i].estimator.rate_bytes_per_s() * 8; },
       [&paths](std::size_t i) { return paths[i].bytes_received; }},
      [&context](bool capped) { context.cellular_capped = capped; });
  std::vector<dns::duplicator::path> dns_paths;
  for (std::size_t i = 0; i < paths.size(); ++i) {
    paths[i].monitor = &supervisor.monitor();
    paths[i].index = i;
    dns_paths.push_back({paths[i].config.name, paths[i].resolver.get()});
  }
  dns::duplicator duplicator(io.get_executor(), std::move(dns_paths), dns_info,
                             supervisor.monitor().as_liveness());
  if (history) {
    context.on_transition = [store = history.get()](const std::string& host, double single_bps,
                                                    double multi_bps) {
      (void)store->record_transition(path::wall_clock::now(), host, single_bps, multi_bps);
    };
    // A download's end: what it taught of the host and of each path's rate.
    context.on_download = [store = history.get(), &paths](const std::string& host,
                                                          std::uint64_t size) {
      const auto now = path::wall_clock::now();
      (void)store->record_download(host, now, size);
      for (const auto& p : paths) {
        if (p.estimator.samples() > 0)
          (void)store->record_path_rate(p.config.name, now, p.estimator.rate_bytes_per_s() * 8);
      }
    };
    // What the hosts downloaded lately before a restart: their next GETs are predicted.
    const auto now = path::wall_clock::now();
    if (auto known =
            history->downloads_since(now - mphttp::proxy_context::download_prediction_lifetime,
                                     mphttp::proxy_context::max_cooling_hosts)) {
      for (const auto& d : *known) mphttp::remember_download(context, d.host, d.bytes, now - d.at);
    }
    // Per request: kept in memory and written once a second (a write per request cost
    // small requests 40% of their rate).
    context.on_app_bytes = [&supervisor](const std::string& app, const mphttp::path_runtime& path,
                                         std::uint64_t bytes) {
      supervisor.note_app_bytes(app, path.config.name, bytes);
    };
    context.on_ttfb = [&supervisor](const mphttp::path_runtime& path, const std::string& host,
                                    std::chrono::microseconds ttfb) {
      supervisor.note_ttfb(path.config.name, host, ttfb);
    };
  }
  supervisor.start();
  const auto mount = intercept::cgroup2_mount();
  intercept::app_directory app_names(config.apps, mount ? *mount : std::string(),
                                     config.selector.default_class);
  intercept::flow_placement placement{
      &supervisor.path_selector(),
      &supervisor.flows(),
      &supervisor.monitor(),
      supervisor.monitor().as_liveness(),
      [&app_names](const auto& app, const auto& to) {
        return app_names.identify_connection(app, to);
      },
      [&supervisor] { return supervisor.cellular_capped(); },
      [&](const intercept::app_identity& who, std::size_t path, std::uint64_t bytes) {
        supervisor.note_app_bytes(who.app, paths[path].config.name, bytes);
      }};

  std::unique_ptr<intercept::interception> intercepting;
  if (config.intercept.enabled) {
    auto started = intercept::interception::start(io, config);
    if (!started) {
      // (EPERM from nft, EACCES making the cgroup: both want the same privileges.)
      const bool denied = (started.error().find("not permitted") != std::string::npos ||
                           started.error().find("Permission denied") != std::string::npos) &&
                          started.error().find("another fleetyd") == std::string::npos;
      fleety_stderr() << "fleetyd: intercept: " << started.error()
                      << (denied ? " ([intercept] needs CAP_NET_ADMIN for its nftables table and "
                                   "socket marks: run fleetyd as root, or with CAP_NET_ADMIN and "
                                   "CAP_NET_RAW as the systemd unit does)"
                                 : "")
                      << "\n";
      return 1;
    }
    intercepting = std::move(started).value();
  } else {
    intercept::interception::remove_stale();
  }
  // [mptcp]: the kernel path manager's endpoints, for the relayed flows' other subflows.
  std::unique_ptr<path::mptcp_endpoints> mptcp;
  if (config.mptcp.enabled && !config.intercept.enabled)
    spdlog::warn("[mptcp] enabled = true without [intercept]: no relayed flow uses MPTCP");
  if (config.mptcp.enabled && config.intercept.enabled)
    mptcp = path::mptcp_endpoints::start(supervisor.monitor(), config);

  app::daemon_control control_api(context, intercepting.get(), duplicator, supervisor, config_path);
  auto control_acceptor = control::listen_control(
      io, config.control_socket,
      access_group ? std::optional<std::uint32_t>(access_group->gid) : std::nullopt);
  if (!control_acceptor) {
    fleety_stderr() << "fleetyd: control socket: " << control_acceptor.error() << "\n";
    return 1;
  }
  std::optional<asio::ip::tcp::acceptor> metrics_acceptor;
  if (config.metrics.enabled) {
    metrics_acceptor =
        listen_at(io, config.metrics.listen_address, config.metrics.listen_port, "metrics.listen");
    if (!metrics_acceptor) return 1;
    spdlog::info("metrics at http://{}:{}/metrics", config.metrics.listen_address,
                 config.metrics.listen_port);
  }

  // Everything opened: the servers start, each owned by the daemon's task group.
  net::task_group tasks(io.get_executor());
  context.background = &tasks;
  tasks.spawn(mphttp::run_proxy_listener(std::move(*proxy_acceptor), context), "proxy listener");
  if (discovering) {
    tasks.spawn(app::follow_uplinks({config, paths, supervisor, duplicator, history.get()},
                                    uplink_check_period),
                "uplink follower");
  }
  if (intercepting) intercepting->serve(tasks, duplicator, context, placement);
  tasks.spawn(control::run_control_server(std::move(control_acceptor).value(), control_api),
              "control server");
  if (metrics_acceptor)
    tasks.spawn(control::run_metrics_server(std::move(*metrics_acceptor), control_api),
                "metrics server");
  // systemd (Type=notify, WatchdogSec): pinged from this event loop, so a hung loop is
  // killed and restarted — and its apps go direct meanwhile.
  const net::service_notifier notifier;
  tasks.spawn(net::run_watchdog_keepalive(notifier), "watchdog keepalive");

  // SIGHUP: the feature rules are read again (the rest of the file needs a restart).
  asio::signal_set reload(io, SIGHUP);
  std::function<void(const boost::system::error_code&, int)> on_reload =
      [&](const boost::system::error_code& wait_ec, int) {
        if (wait_ec) return;
        if (auto count = control_api.reload_rules(); !count)
          spdlog::error("SIGHUP: {}", count.error());
        // A user added to the [access] group since: the ports serve them from now on.
        if (local_ports_guard && access_group) {
          auto group = intercept::members_of_group(access_group->name);
          auto updated = group ? local_ports_guard->update_members(group->uids, group->gid)
                               : core::expected<bool>(core::make_error(group.error()));
          if (updated) {
            spdlog::info("SIGHUP: group {} has {} member(s) listed", group->name,
                         group->uids.size());
          } else {
            spdlog::error("SIGHUP: access of group {} not updated: {}", access_group->name,
                          updated.error());
          }
        }
        reload.async_wait(on_reload);
      };
  reload.async_wait(on_reload);
  // SIGINT/SIGTERM: every task cancelled (the accept loops end; each server cancels and
  // joins its connections) and waited for; then the monitor's probes and the DNS queries;
  // only then does the io_context stop. The shutdown coroutine's completion stops it.
  bool joined = false;
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& ec, int signal) {
    if (ec) return;
    spdlog::info("signal {}: stopping", signal);
    notifier.stopping();
    reload.cancel();
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          co_await asio::this_coro::throw_if_cancelled(false);
          tasks.cancel();
          joined = co_await tasks.async_join_within(shutdown_grace);
          co_await supervisor.async_stop();
          co_await duplicator.async_stop();
        },
        [&io](const std::exception_ptr&) { io.stop(); });
  });

  std::string summary;
  for (const auto& p : paths) {
    if (p.config.interface.empty()) continue;
    summary += fmt::format("{}{} ({}, {}, cost {})", summary.empty() ? "" : ", ", p.config.name,
                           p.config.interface, core::to_string(p.config.kind), p.config.cost);
  }
  if (summary.empty()) summary = "none yet";
  spdlog::info("fleetyd listening on {}:{}; paths: {}; scheduler {}", config.proxy.listen_address,
               config.proxy.listen_port, summary,
               config.scheduler.mode == core::scheduler_mode::cost ? "cost" : "aggregate");
  notifier.ready(fmt::format("listening on {}:{}; paths: {}", config.proxy.listen_address,
                             config.proxy.listen_port, summary));
  io.run();
  intercepting.reset();  // apps go direct again
  mptcp.reset();
  std::error_code removed;
  std::filesystem::remove(config.control_socket, removed);
  if (!joined) {
    // A task that did not end holds references to everything above: nothing more may be
    // destroyed (its group would abort the process). Leave now.
    spdlog::critical("fleetyd: tasks did not end within {} s of the signal: exiting at once",
                     2 * shutdown_grace.count());
    spdlog::default_logger()->flush();
    std::_Exit(1);
  }
  for (const auto& p : paths) {
    if (p.config.interface.empty()) continue;
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
    std::cout << config_path << ": ok, "
              << (config->paths.empty() ? std::string("no [[path]]: the uplinks are found at start")
                                        : std::to_string(config->paths.size()) + " paths")
              << "\n";
    return 0;
  }
  fleety::core::setup_logging(log_level.empty() ? config->log_level : log_level);
  const bool discovering = config->paths.empty();
  if (discovering) {
    // Zero configuration: every interface with a default route is a path (issue 19), and
    // the slots keep room for uplinks that come later (app/uplink_follower.hpp).
    auto found = fleety::path::discover_paths(config->discovery.root);
    if (!found) {
      fleety_stderr() << "fleetyd: " << found.error() << "\n";
      return 1;
    }
    auto paths = std::move(found).value();
    for (const auto& p : paths)
      fleety::app::log_discovered(p, "; a [[path]] in the config overrides it");
    if (paths.empty()) {
      spdlog::warn(
          "no uplink yet (no interface has a default route): fleetyd takes each one up as it "
          "comes");
    }
    config.value().paths = fleety::path::slot_layout(paths);
  }
  int status = 1;
  try {
    status = run(*config, config_path, discovering);
  } catch (const std::exception& e) {
    fleety_stderr() << "fleetyd: " << e.what() << "\n";
  }
  fleety::core::flush_logging();
  return status;
}
