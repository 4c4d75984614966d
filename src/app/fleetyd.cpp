// fleetyd: wiring only. Reads the config, opens one resolver per path, the proxy
// listener and (with [intercept]) the interception rules and their listener; runs
// until SIGINT/SIGTERM, reloads the feature rules on SIGHUP.

#include <arpa/inet.h>
#include <fmt/ranges.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/json.hpp>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "classify/classify.hpp"
#include "control/control.hpp"
#include "core/config.hpp"
#include "core/log.hpp"
#include "core/units.hpp"
#include "dns/duplicator.hpp"
#include "intercept/intercept.hpp"
#include "mphttp/proxy.hpp"
#include "net/bound_socket.hpp"
#include "net/mptcp.hpp"
#include "net/socket_owner.hpp"
#include "path/history.hpp"
#include "path/link_watcher.hpp"
#include "path/monitor.hpp"
#include "select/select.hpp"

namespace {

namespace asio = boost::asio;
using namespace fleety;

/// "127.0.0.1" or "[::]".
std::string address_text(const asio::ip::address& address) {
  return address.is_v6() ? fmt::format("[{}]", address.to_string()) : address.to_string();
}

/// Opens a listening socket; the error names the address and what to do. `v6_only`: an
/// IPv6 socket takes no IPv4 (IPV6_V6ONLY), which has a listener of its own.
core::expected<asio::ip::tcp::acceptor> listen_on(asio::io_context& io,
                                                  const asio::ip::tcp::endpoint& endpoint,
                                                  std::string_view setting, bool v6_only = false) {
  asio::ip::tcp::acceptor acceptor(io);
  boost::system::error_code ec;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec && v6_only && endpoint.address().is_v6())
    acceptor.set_option(asio::ip::v6_only(true), ec);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return core::make_error(fmt::format(
        "cannot listen on {}:{}: {}{}", address_text(endpoint.address()), endpoint.port(),
        ec.message(),
        ec == asio::error::address_in_use
            ? fmt::format(" (another program uses this port: pick another {} or stop it)", setting)
            : ""));
  }
  return acceptor;
}

/// Why IPv6 cannot be taken over here, empty if it can: IPv6 is redirected to ::1, which
/// loopback has only when IPv6 is on there.
std::string ipv6_loopback_problem(asio::io_context& io) {
  asio::ip::udp::socket probe(io);
  boost::system::error_code ec;
  probe.open(asio::ip::udp::v6(), ec);
  if (!ec) probe.bind({asio::ip::address_v6::loopback(), 0}, ec);
  return ec ? fmt::format("cannot bind [::1]: {}", ec.message()) : std::string();
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
    self->default_class_ = config.selector.default_class;
    for (const auto& app : config.apps) {
      self->apps_.push_back({app.name, app.cgroup, app.uid, app.gid, app.enabled, app.qos_class});
      if (!app.cgroup.empty() && !std::filesystem::is_directory(self->mount_ / app.cgroup)) {
        spdlog::warn("app {}: cgroup {} does not exist (yet): not selected by cgroup", app.name,
                     (self->mount_ / app.cgroup).string());
      }
    }
    // Per address family: the redirected connections, and the apps' DNS (UDP and TCP
    // 53) for the duplicator. IPv4 arrives on 127.0.0.1. IPv6 arrives on ::1, or, to a
    // link-local destination, on the app's own address on that link (build_ruleset: a
    // socket tied to its link has no route to ::1): the IPv6 listeners take [::], IPv6
    // only, and the table drops what reaches these ports from outside. A host without
    // IPv6 on loopback only loses IPv6.
    std::vector<std::string> listening;
    for (const auto& address : {"127.0.0.1", "::"}) {
      const auto ip = asio::ip::make_address(address);
      if (ip.is_v6()) {
        if (const auto why = ipv6_loopback_problem(io); !why.empty()) {
          spdlog::warn("intercept: {}: IPv6 connections and DNS are not taken over", why);
          continue;
        }
      }
      auto tcp = listen_on(io, asio::ip::tcp::endpoint(ip, ic.tcp_port), "intercept.port", true);
      auto dns_tcp =
          listen_on(io, asio::ip::tcp::endpoint(ip, ic.dns_port), "intercept.dns_port", true);
      asio::ip::udp::socket dns_udp(io);
      boost::system::error_code ec;
      dns_udp.open(ip.is_v4() ? asio::ip::udp::v4() : asio::ip::udp::v6(), ec);
      if (!ec && ip.is_v6()) dns_udp.set_option(asio::ip::v6_only(true), ec);
      if (!ec) dns_udp.bind({ip, ic.dns_port}, ec);
      if (!tcp || !dns_tcp || ec) {
        const std::string why = !tcp ? tcp.error()
                                : !dns_tcp
                                    ? dns_tcp.error()
                                    : fmt::format("cannot listen on {}:{} (UDP): {}",
                                                  address_text(ip), ic.dns_port, ec.message());
        if (ip.is_v6()) {
          spdlog::warn("intercept: {}: IPv6 connections and DNS are not taken over", why);
          continue;
        }
        return core::make_error(why);
      }
      listening.push_back(address_text(ip));
      self->acceptors_.push_back(std::move(tcp).value());
      asio::co_spawn(io, dns::run_dns_udp(std::move(dns_udp), duplicator), asio::detached);
      asio::co_spawn(io, dns::run_dns_tcp(std::move(dns_tcp).value(), duplicator), asio::detached);
    }
    if (auto applied = self->apply(); !applied) return core::make_error(applied.error());
    spdlog::info(
        "intercept: table inet {} loaded; apps in cgroup {}/{} and {} configured app(s) "
        "are taken over on port {}, their DNS on port {} ({})",
        intercept::table_name, *mount, intercept::run_cgroup, config.apps.size(), ic.tcp_port,
        ic.dns_port, fmt::join(listening, ", "));
    return self;
  }

  /// Removes a table left by a fleetyd that crashed while interception was on: it would
  /// send the apps to a port nobody listens on.
  static void remove_stale() {
    // Without root there is no table of ours to find (and nft would only complain).
    if (::geteuid() != 0) return;
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
      entry["class"] = app.qos_class.empty() ? default_class_ : app.qos_class;
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
      apps_.push_back({name, "", std::nullopt, std::nullopt, true, ""});
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
    std::string qos_class;  ///< empty: [selector] default_class
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
  std::string default_class_ = "default";
  std::vector<asio::ip::tcp::acceptor> acceptors_;
  bool table_loaded_ = false;
};

/// The path history (issue 6): opened where the config says; a file that cannot be
/// opened costs the history only (said once), not the daemon.
std::unique_ptr<path::history> open_history(const core::monitor_config& config) {
  if (config.history_file.empty()) return nullptr;
  const std::filesystem::path file(config.history_file);
  std::error_code ec;
  if (file.has_parent_path()) std::filesystem::create_directories(file.parent_path(), ec);
  path::history_options options;
  options.retention = std::chrono::duration_cast<std::chrono::hours>(config.history_retention);
  if (options.retention.count() == 0) options.retention = std::chrono::hours(1);
  auto opened = path::history::open(config.history_file, options);
  if (!opened) {
    spdlog::warn("path history: {}; going on without it ([monitor] history)", opened.error());
    return nullptr;
  }
  return std::make_unique<path::history>(std::move(opened).value());
}

/// Paths as the selector sees them (issue 6): the monitor measures them, the selector
/// decides for relayed flows after each round, flows that must move are reset, and
/// cellular bytes are counted against the monthly budget.
class path_supervision {
 public:
  path_supervision(asio::io_context& io, const core::config& config, mphttp::proxy_context& context,
                   path::history* store)
      : config_(config),
        context_(context),
        store_(store),
        selector_(config.classes, config.selector),
        monitor_(io.get_executor(), config.monitor, specs(config), store,
                 [this](path::clock_type::time_point now) { on_round(now); }),
        month_(path::month_of(path::wall_clock::now())) {
    last_bytes_.resize(context.paths.size(), 0);
    if (store_ != nullptr) {
      if (auto rows = store_->usage(month_)) {
        for (const auto& row : *rows)
          if (row.app == all_apps && is_cellular(row.path)) cellular_month_bytes_ += row.bytes;
      }
    }
    auto mount = intercept::cgroup2_mount();
    apps_ = std::make_unique<intercept::app_directory>(config.apps, mount ? *mount : std::string(),
                                                       config.selector.default_class);
    placement_.selector = &selector_;
    placement_.flows = &flows_;
    placement_.monitor = &monitor_;
    placement_.identify = [this](const asio::ip::tcp::endpoint& app,
                                 const asio::ip::tcp::endpoint& destination) {
      auto owner = net::find_tcp_socket_owner(app, destination);
      if (!owner) {
        spdlog::debug("which app is {}? {}", app.address().to_string(), owner.error());
        return intercept::app_identity{"", config_.selector.default_class};
      }
      return apps_->identify(owner->cgroup_id, owner->uid);
    };
    placement_.cellular_capped = [this] { return cellular_capped(); };
    placement_.count = [this](const intercept::app_identity& who, std::size_t path,
                              std::uint64_t bytes) {
      note_app_bytes(who.app, context_.paths[path].config.name, bytes);
    };
  }

  /// An app's bytes on a path, added to the history's usage at the next flush.
  void note_app_bytes(const std::string& app, const std::string& path, std::uint64_t bytes) {
    if (bytes == 0) return;
    auto key = std::make_pair(app.empty() ? std::string("-") : app, path);
    if (app_bytes_.size() < max_pending_keys || app_bytes_.contains(key)) app_bytes_[key] += bytes;
    if (store_ == nullptr) return;
    if (pending_usage_.size() >= max_pending_keys && !pending_usage_.contains(key)) return;
    pending_usage_[std::move(key)] += bytes;
  }

  /// A response's time to first byte; the history gets each (path, host)'s median of
  /// the second.
  void note_ttfb(const std::string& path, const std::string& host, std::chrono::microseconds ttfb) {
    if (store_ == nullptr) return;
    auto key = std::make_pair(path, host);
    if (pending_ttfb_.size() >= max_pending_keys && !pending_ttfb_.contains(key)) return;
    auto& samples = pending_ttfb_[std::move(key)];
    if (samples.size() < max_ttfb_samples) samples.push_back(ttfb);
  }

  void start() { monitor_.start(); }
  void stop() {
    monitor_.stop();
    count_usage();  // the last second's bytes too
  }
  /// The usage rows' app for all of a path's bytes (relays, downloads, probes aside).
  static constexpr std::string_view all_apps = "*";

  intercept::flow_placement& placement() { return placement_; }
  const path::monitor& monitor() const { return monitor_; }
  path::monitor& monitor() { return monitor_; }
  path::history* history() const { return store_; }
  const select::flow_table& flows() const { return flows_; }
  bool cellular_capped() const {
    return config_.budget.cellular_monthly_bytes > 0 &&
           cellular_month_bytes_ >= config_.budget.cellular_monthly_bytes;
  }
  std::uint64_t cellular_month_bytes() const { return cellular_month_bytes_; }
  std::uint64_t flow_resets() const { return flow_resets_; }
  /// Bytes each app received on each path since start.
  const std::map<std::pair<std::string, std::string>, std::uint64_t>& app_bytes() const {
    return app_bytes_;
  }

 private:
  static std::vector<path::monitor::path_spec> specs(const core::config& config) {
    std::vector<path::monitor::path_spec> out;
    for (const auto& p : config.paths)
      out.push_back(
          {p.name, p.interface, p.kind == core::path_kind::cellular, path::probe_target(p)});
    return out;
  }

  bool is_cellular(std::string_view name) const {
    return std::any_of(config_.paths.begin(), config_.paths.end(), [&](const core::path_config& p) {
      return p.name == name && p.kind == core::path_kind::cellular;
    });
  }

  void flush_pending() {
    const auto now = path::wall_clock::now();
    for (const auto& [key, bytes] : pending_usage_)
      (void)store_->add_usage(month_, key.first, key.second, bytes);
    pending_usage_.clear();
    for (auto& [key, samples] : pending_ttfb_) {
      auto middle = samples.begin() + static_cast<std::ptrdiff_t>(samples.size() / 2);
      std::nth_element(samples.begin(), middle, samples.end());
      (void)store_->record_ttfb(key.first, key.second, now, *middle);
    }
    pending_ttfb_.clear();
  }

  void count_usage() {
    if (store_ != nullptr) flush_pending();
    const auto month = path::month_of(path::wall_clock::now());
    if (month != month_) {
      month_ = month;
      cellular_month_bytes_ = 0;
    }
    for (std::size_t i = 0; i < context_.paths.size(); ++i) {
      const auto& p = context_.paths[i];
      const auto delta = p.bytes_received - last_bytes_[i];
      last_bytes_[i] = p.bytes_received;
      if (delta == 0) continue;
      if (p.config.kind == core::path_kind::cellular) cellular_month_bytes_ += delta;
      if (store_ != nullptr) (void)store_->add_usage(month_, all_apps, p.config.name, delta);
    }
    const bool capped = cellular_capped();
    if (capped != context_.cellular_capped) {
      spdlog::warn("cellular budget: {} of {} used this month: cellular {}",
                   core::format_size(cellular_month_bytes_),
                   core::format_size(config_.budget.cellular_monthly_bytes),
                   capped ? "only when no other path is up" : "available again");
    }
    context_.cellular_capped = capped;
  }

  void on_round(path::clock_type::time_point now) {
    std::vector<select::path_view> views;
    for (std::size_t i = 0; i < context_.paths.size(); ++i) {
      const auto& p = context_.paths[i];
      select::path_view view;
      view.up = monitor_.up(i);
      view.cellular = p.config.kind == core::path_kind::cellular;
      view.quality = monitor_.current(i);
      view.capacity_bps = p.estimator.rate_bytes_per_s() * 8;
      views.push_back(view);
    }
    selector_.update(views, now);
    if (++rounds_ % usage_every_rounds == 0) count_usage();
    const bool capped = cellular_capped();
    flows_.reset_if([&](const select::flow_table::flow& f) {
      if (!selector_.should_reset(f.qos, f.path, capped, now)) return false;
      const auto to = selector_.choose(f.qos, capped, now).value_or(f.path);
      const auto& from_q = views[f.path].quality;
      const auto& to_q = views[to].quality;
      spdlog::info("[{}] {} of app {} (class {}): {} {} → {}: reset so that it reconnects", f.id,
                   f.what, f.app.empty() ? "-" : f.app, selector_.qos_class(f.qos).name,
                   views[f.path].up ? "misses its class on" : "lost its path",
                   context_.paths[f.path].config.name, context_.paths[to].config.name);
      if (store_ != nullptr && from_q.rtt && to_q.rtt)
        (void)store_->record_switch(path::wall_clock::now(), f.app,
                                    context_.paths[f.path].config.name,
                                    context_.paths[to].config.name, *from_q.rtt, *to_q.rtt);
      ++flow_resets_;
      return true;
    });
  }

  static constexpr std::uint64_t usage_every_rounds = 5;
  /// Bounds of what waits for the next flush: (app, path) and (path, host) keys, and
  /// time-to-first-byte samples per key.
  static constexpr std::size_t max_pending_keys = 1024;
  static constexpr std::size_t max_ttfb_samples = 256;
  std::map<std::pair<std::string, std::string>, std::uint64_t> pending_usage_;
  std::map<std::pair<std::string, std::string>, std::uint64_t> app_bytes_;
  std::uint64_t flow_resets_ = 0;
  std::map<std::pair<std::string, std::string>, std::vector<std::chrono::microseconds>>
      pending_ttfb_;
  const core::config& config_;
  mphttp::proxy_context& context_;
  path::history* store_;
  select::selector selector_;
  select::flow_table flows_;
  path::monitor monitor_;
  std::unique_ptr<intercept::app_directory> apps_;
  intercept::flow_placement placement_;
  std::string month_;
  std::uint64_t cellular_month_bytes_ = 0;
  std::vector<std::uint64_t> last_bytes_;
  std::uint64_t rounds_ = 0;
};

/// What the fleety CLI may ask (control socket).
class daemon_control : public control::daemon_api {
 public:
  daemon_control(mphttp::proxy_context& context, interception* intercepting,
                 const dns::duplicator& duplicator, const path_supervision& paths,
                 std::string config_path)
      : context_(context),
        intercepting_(intercepting),
        duplicator_(duplicator),
        supervision_(paths),
        config_path_(std::move(config_path)) {}

  boost::json::object status() override {
    auto ms = [](const std::optional<std::chrono::microseconds>& v) -> boost::json::value {
      if (!v) return nullptr;
      return static_cast<double>(v->count()) / 1000;
    };
    boost::json::array paths;
    for (std::size_t i = 0; i < context_.paths.size(); ++i) {
      const auto& p = context_.paths[i];
      const auto q = supervision_.monitor().current(i);
      paths.push_back(boost::json::object{
          {"name", p.config.name},
          {"interface", p.config.interface},
          {"kind", std::string(core::to_string(p.config.kind))},
          {"up", q.up},
          {"rtt_ms", ms(q.rtt)},
          {"jitter_ms", ms(q.jitter)},
          {"throughput_mbps",
           q.throughput_bps ? boost::json::value(*q.throughput_bps / 1e6) : nullptr},
          {"loss", q.loss ? boost::json::value(*q.loss) : nullptr},
          {"signal_dbm", q.signal_dbm ? boost::json::value(*q.signal_dbm) : nullptr},
          {"capacity_mbps", p.estimator.rate_bytes_per_s() * 8 / 1e6},
          {"probes", supervision_.monitor().probes_sent(i)},
          {"bytes_received", p.bytes_received},
          {"requests", p.requests}});
    }
    boost::json::array flows;
    for (const auto& [id, f] : supervision_.flows().flows()) {
      flows.push_back(boost::json::object{
          {"id", id},
          {"app", f.app},
          {"class", f.qos},
          {"path", context_.paths[f.path].config.name},
          {"what", f.what},
          {"seconds",
           std::chrono::duration<double>(std::chrono::steady_clock::now() - f.started).count()}});
    }
    boost::json::array downloads;
    for (const auto& d : mphttp::active_downloads(context_)) {
      boost::json::array shares;
      for (const auto& p : d.paths) {
        shares.push_back(boost::json::object{
            {"path", p.name}, {"bytes", p.bytes}, {"rate_bps", p.rate_bps}, {"failed", p.failed}});
      }
      downloads.push_back(boost::json::object{{"session", d.session},
                                              {"app", d.app},
                                              {"url", d.url},
                                              {"size", d.size},
                                              {"delivered", d.delivered},
                                              {"seconds", d.seconds},
                                              {"paths", std::move(shares)}});
    }
    const auto& dns = duplicator_.stats();
    return {{"paths", std::move(paths)},
            {"flows", std::move(flows)},
            {"downloads", std::move(downloads)},
            {"cellular_month_bytes", supervision_.cellular_month_bytes()},
            {"flow_resets", supervision_.flow_resets()},
            {"app_bytes", app_bytes_json()},
            {"cellular_capped", supervision_.cellular_capped()},
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
  boost::json::array app_bytes_json() const {
    boost::json::array out;
    for (const auto& [key, bytes] : supervision_.app_bytes())
      out.push_back(
          boost::json::object{{"app", key.first}, {"path", key.second}, {"bytes", bytes}});
    return out;
  }

  core::expected<boost::json::object> stats() override {
    auto* store = supervision_.history();
    if (store == nullptr) {
      return core::make_error(
          "fleetyd keeps no path history ([monitor] history is \"\" or could not be opened: "
          "see its log)");
    }
    const auto now = path::wall_clock::now();
    const auto month = path::month_of(now);
    auto usage = store->usage(month);
    if (!usage) return core::make_error(usage.error());
    boost::json::array per_app;
    boost::json::array per_path;
    for (const auto& row : *usage) {
      boost::json::object entry{{"path", row.path}, {"bytes", row.bytes}};
      if (row.app == path_supervision::all_apps) {
        per_path.push_back(std::move(entry));
      } else {
        entry["app"] = row.app;
        per_app.push_back(std::move(entry));
      }
    }
    auto telemetry = store->telemetry(now - std::chrono::hours(24 * 30));
    if (!telemetry) return core::make_error(telemetry.error());
    auto number = [](const std::optional<double>& v) -> boost::json::value {
      return v ? boost::json::value(*v) : nullptr;
    };
    auto mbps = [](const std::optional<double>& v) -> boost::json::value {
      return v ? boost::json::value(*v / 1e6) : nullptr;
    };
    const auto& t = *telemetry;
    return boost::json::object{
        {"month", month},
        {"cellular_bytes", supervision_.cellular_month_bytes()},
        {"cellular_capped", supervision_.cellular_capped()},
        {"paths", std::move(per_path)},
        {"apps", std::move(per_app)},
        {"telemetry",
         boost::json::object{
             {"days", 30},
             {"transitions", t.transitions},
             {"median_gain_mbps", mbps(t.median_gain_bps)},
             {"mean_gain_mbps", mbps(t.mean_gain_bps)},
             {"median_speedup", number(t.median_speedup)},
             {"mean_speedup", number(t.mean_speedup)},
             {"switches", t.switches},
             {"median_rtt_change_ms",
              t.median_rtt_change
                  ? boost::json::value(static_cast<double>(t.median_rtt_change->count()) / 1000)
                  : nullptr}}}};
  }
  core::expected<std::size_t> reload_rules() override {
    auto fresh = core::load_config(config_path_);
    if (!fresh) return core::make_error(fresh.error() + " (the rules in use stay)");
    context_.features = classify::compile_feature_rules(*fresh);
    spdlog::info("{} feature rule(s) and {} HTTP-DNS endpoint(s) loaded from {}",
                 context_.features.rules.size(), context_.features.http_dns.size(), config_path_);
    return context_.features.rules.size();
  }

 private:
  static constexpr const char* interception_off =
      "interception is off in fleetyd: set [intercept] enabled = true and restart it";
  mphttp::proxy_context& context_;
  interception* intercepting_;
  const dns::duplicator& duplicator_;
  const path_supervision& supervision_;
  std::string config_path_;
};

/// [mptcp] (issue 6, item 8): the endpoints of the kernel's MPTCP path manager from which
/// relayed MPTCP connections get a subflow on each other path. One per path's interface and
/// address family, for its primary address (flags subflow, plus backup for mptcp_backup
/// paths: by default the cellular ones), bound to that interface; kept in step with
/// address changes (a link watcher of its own); the subflow limit raised to paths − 1.
/// Endpoints someone else configured are left as they are. With the object go fleetyd's
/// own endpoints, and the limits it raised come back (unless changed meanwhile).
class mptcp_endpoints {
 public:
  /// Null (after a warning) when the path manager cannot be used: relayed flows are then
  /// MPTCP on their initial path only.
  static std::unique_ptr<mptcp_endpoints> start(asio::io_context& io, const core::config& config) {
    auto manager = net::mptcp_path_manager::open();
    if (!manager) {
      spdlog::warn("{}: relayed MPTCP flows get no subflows on other paths", manager.error());
      return nullptr;
    }
    auto self =
        std::unique_ptr<mptcp_endpoints>(new mptcp_endpoints(config, std::move(manager).value()));
    self->raise_limits();
    std::vector<std::string> interfaces;
    for (const auto& p : config.paths) interfaces.push_back(p.interface);
    self->links_ = std::make_unique<path::link_watcher>(
        io.get_executor(), interfaces,
        [me = self.get()](const path::link_state& before, const path::link_state& after) {
          if (before.exists != after.exists || before.addresses != after.addresses) me->sync();
        });
    if (auto watching = self->links_->start(); !watching) {
      spdlog::warn("mptcp: {}: endpoints follow the addresses at start only", watching.error());
      self->links_.reset();
    }
    self->sync();
    return self;
  }

  ~mptcp_endpoints() {
    links_.reset();  // no sync from here on
    for (const auto id : ours_) {
      if (auto removed = manager_->remove(id); !removed) {
        spdlog::warn("{} (endpoint id {})", removed.error(), id);
      } else {
        spdlog::info("mptcp: endpoint id {} removed", id);
      }
    }
    if (!raised_) return;
    if (auto now = manager_->limits(); now && *now == raised_->second) {
      if (auto restored = manager_->set_limits(raised_->first); !restored)
        spdlog::warn("{}", restored.error());
    }
  }
  mptcp_endpoints(const mptcp_endpoints&) = delete;
  mptcp_endpoints& operator=(const mptcp_endpoints&) = delete;

 private:
  mptcp_endpoints(const core::config& config, std::unique_ptr<net::mptcp_path_manager> manager)
      : config_(config), manager_(std::move(manager)) {}

  void raise_limits() {
    auto limits = manager_->limits();
    if (!limits) {
      spdlog::warn("{}: limits left as they are", limits.error());
      return;
    }
    const auto wanted = net::limits_for_paths(*limits, config_.paths.size());
    if (wanted == *limits) return;
    if (auto set = manager_->set_limits(wanted); !set) {
      spdlog::warn("{}: at most {} more subflows per connection", set.error(), limits->subflows);
      return;
    }
    raised_ = {*limits, wanted};
    spdlog::info("mptcp: limits: subflows {} → {} per connection", limits->subflows,
                 wanted.subflows);
  }

  /// The interface's addresses now (getifaddrs).
  static std::vector<asio::ip::address> addresses_of(const std::string& interface) {
    std::vector<asio::ip::address> out;
    ifaddrs* all = nullptr;
    if (::getifaddrs(&all) != 0) return out;
    for (const ifaddrs* a = all; a != nullptr; a = a->ifa_next) {
      if (a->ifa_addr == nullptr || interface != a->ifa_name) continue;
      if (a->ifa_addr->sa_family == AF_INET) {
        const auto* in = reinterpret_cast<const sockaddr_in*>(a->ifa_addr);
        out.push_back(asio::ip::address_v4(ntohl(in->sin_addr.s_addr)));
      } else if (a->ifa_addr->sa_family == AF_INET6) {
        const auto* in6 = reinterpret_cast<const sockaddr_in6*>(a->ifa_addr);
        asio::ip::address_v6::bytes_type bytes;
        std::memcpy(bytes.data(), &in6->sin6_addr, bytes.size());
        out.push_back(asio::ip::address_v6(bytes));
      }
    }
    ::freeifaddrs(all);
    return out;
  }

  /// Brings the kernel's endpoints in line with the paths' addresses now.
  void sync() {
    auto existing = manager_->endpoints();
    if (!existing) {
      spdlog::warn("{}: endpoints not updated", existing.error());
      return;
    }
    std::vector<net::wanted_endpoint> wanted;
    std::vector<std::string> path_of;  // per wanted endpoint: its path's name
    for (const auto& p : config_.paths) {
      const int ifindex = static_cast<int>(::if_nametoindex(p.interface.c_str()));
      if (ifindex == 0) continue;
      // One subflow per path and family: its first (primary) IPv4 and IPv6 address.
      bool have_v4 = false;
      bool have_v6 = false;
      for (const auto& a : addresses_of(p.interface)) {
        if (!net::endpoint_address(a) || (a.is_v4() ? have_v4 : have_v6)) continue;
        (a.is_v4() ? have_v4 : have_v6) = true;
        wanted.push_back({a, ifindex, p.mptcp_backup});
        path_of.push_back(p.name);
      }
    }
    const auto changes = net::plan_endpoint_changes(*existing, ours_, wanted);
    std::vector<std::uint8_t> still;  // own ids still in the kernel
    for (const auto& e : *existing) {
      if (std::find(ours_.begin(), ours_.end(), e.id) != ours_.end()) still.push_back(e.id);
    }
    ours_ = std::move(still);
    for (const auto id : changes.remove) {
      if (auto removed = manager_->remove(id); !removed) {
        spdlog::warn("{} (endpoint id {})", removed.error(), id);
        continue;
      }
      spdlog::info("mptcp: endpoint id {} removed (its address or interface changed)", id);
      ours_.erase(std::remove(ours_.begin(), ours_.end(), id), ours_.end());
    }
    for (const auto& e : changes.add) {
      std::string path = "?";
      for (std::size_t i = 0; i < wanted.size(); ++i)
        if (wanted[i].address == e.address) path = path_of[i];
      if (auto added = manager_->add(e); !added) {
        spdlog::warn("{} ({} for path {})", added.error(), net::describe(e), path);
        continue;
      }
      ours_.push_back(e.id);
      spdlog::info("mptcp: endpoint {} added for path {}", net::describe(e), path);
    }
    for (const auto& e : changes.foreign) {
      if (reported_.insert(e.id).second)
        spdlog::info("mptcp: endpoint {} was configured by someone else: left as it is",
                     net::describe(e));
    }
  }

  const core::config& config_;
  std::unique_ptr<net::mptcp_path_manager> manager_;  ///< owned; the kernel's path manager
  std::unique_ptr<path::link_watcher> links_;         ///< owned; null when rtnetlink failed
  std::vector<std::uint8_t> ours_;                    ///< ids of the endpoints fleetyd added
  std::set<std::uint8_t> reported_;                   ///< someone else's endpoints already logged
  /// The limits before and after fleetyd raised them; empty when it did not.
  std::optional<std::pair<net::mptcp_limits, net::mptcp_limits>> raised_;
};

int run(const core::config& config, const std::string& config_path) {
  // A peer that closes while we write must be an error on that connection, not the end
  // of the daemon: splice(2), unlike send(MSG_NOSIGNAL), raises SIGPIPE.
  ::signal(SIGPIPE, SIG_IGN);
  asio::io_context io(1);

  const auto history = open_history(config.monitor);
  std::vector<mphttp::path_runtime> paths;
  std::size_t present = 0;
  for (const auto& path_config : config.paths) {
    if (net::interface_exists(path_config.interface)) {
      ++present;
    } else {
      spdlog::warn("path {}: interface {} does not exist (yet): the path is skipped until it does",
                   path_config.name, path_config.interface);
    }
    // The history's RTT of the last hour seeds what the config doesn't say. Not its rate:
    // a sample's throughput is what the path carried, not what it can carry.
    std::chrono::microseconds known_rtt{0};
    if (history) {
      const auto now = path::wall_clock::now();
      if (auto known = history->summary(path_config.name, now - std::chrono::hours(1), now);
          known && known->median_rtt) {
        known_rtt = *known->median_rtt;
        spdlog::info("path {}: history of the last hour: {} samples, median RTT {} ms",
                     path_config.name, known->samples, known->median_rtt->count() / 1000);
      }
    }
    paths.push_back(
        mphttp::make_path_runtime(io.get_executor(), path_config, config.scheduler, known_rtt));
  }
  if (present == 0) {
    std::string names;
    for (const auto& p : config.paths) names += (names.empty() ? "" : ", ") + p.interface;
    std::cerr << "fleetyd: none of the configured interfaces exists (" << names
              << "): check [[path]] interface = ... against `ip link`\n";
    return 1;
  }
  // Every upstream socket is bound to its path's interface: without the privilege for
  // that, each request would fail later, one by one. Say so now, once.
  for (const auto& p : config.paths) {
    if (!net::interface_exists(p.interface)) continue;
    asio::ip::tcp::socket probe(io);
    const auto bound = net::open_bound(probe, asio::ip::tcp::v4(), p.interface);
    if (bound == boost::system::errc::operation_not_permitted) {
      std::cerr << "fleetyd: not allowed to bind sockets to " << p.interface
                << " (SO_BINDTODEVICE needs CAP_NET_RAW on this kernel): run it as root, or give "
                   "it "
                   "CAP_NET_RAW and CAP_NET_ADMIN (the systemd unit does)\n";
      return 1;
    }
    break;
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
  context.features = classify::compile_feature_rules(config);
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
  path_supervision supervision(io, config, context, history.get());
  for (std::size_t i = 0; i < paths.size(); ++i) {
    paths[i].monitor = &supervision.monitor();
    paths[i].index = i;
  }
  if (history) {
    context.on_transition = [store = history.get()](const std::string& host, double single_bps,
                                                    double multi_bps) {
      (void)store->record_transition(path::wall_clock::now(), host, single_bps, multi_bps);
    };
    // Per request: kept in memory and written once a second (a write per request cost
    // small requests 40% of their rate).
    context.on_app_bytes = [&supervision](const std::string& app, const mphttp::path_runtime& path,
                                          std::uint64_t bytes) {
      supervision.note_app_bytes(app, path.config.name, bytes);
    };
    context.on_ttfb = [&supervision](const mphttp::path_runtime& path, const std::string& host,
                                     std::chrono::microseconds ttfb) {
      supervision.note_ttfb(path.config.name, host, ttfb);
    };
  }
  supervision.start();

  std::unique_ptr<interception> intercepting;
  if (config.intercept.enabled) {
    auto started = interception::start(io, config, duplicator);
    if (!started) {
      const bool denied = started.error().find("not permitted") != std::string::npos;
      std::cerr << "fleetyd: intercept: " << started.error()
                << (denied ? " ([intercept] needs CAP_NET_ADMIN for its nftables table and "
                             "socket marks: run fleetyd as root, or with CAP_NET_ADMIN and "
                             "CAP_NET_RAW as the systemd unit does)"
                           : "")
                << "\n";
      return 1;
    }
    intercepting = std::move(started).value();
    for (auto& intercept_acceptor : intercepting->acceptors()) {
      asio::co_spawn(io,
                     intercept::run_intercept_listener(std::move(intercept_acceptor), context,
                                                       supervision.placement()),
                     [](std::exception_ptr e) {
                       if (e) std::rethrow_exception(e);
                     });
    }
  } else {
    interception::remove_stale();
  }
  // [mptcp]: the kernel path manager's endpoints, for the relayed flows' other subflows.
  std::unique_ptr<mptcp_endpoints> mptcp;
  if (config.mptcp.enabled) {
    if (config.intercept.enabled) {
      mptcp = mptcp_endpoints::start(io, config);
    } else {
      spdlog::warn("[mptcp] enabled = true without [intercept]: no relayed flow uses MPTCP");
    }
  }

  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code&, int signal) {
    spdlog::info("signal {}: stopping", signal);
    io.stop();
  });
  // The fleety CLI's socket.
  daemon_control control_api(context, intercepting.get(), duplicator, supervision, config_path);
  auto control_acceptor = control::listen_control(io, config.control_socket);
  if (!control_acceptor) {
    std::cerr << "fleetyd: control socket: " << control_acceptor.error() << "\n";
    return 1;
  }
  asio::co_spawn(io, control::run_control_server(std::move(control_acceptor).value(), control_api),
                 asio::detached);
  if (config.metrics.enabled) {
    boost::system::error_code metrics_ec;
    const auto metrics_address = asio::ip::make_address(config.metrics.listen_address, metrics_ec);
    if (metrics_ec) {
      std::cerr << "fleetyd: metrics.listen: '" << config.metrics.listen_address
                << "' is not an IP address\n";
      return 1;
    }
    auto metrics_acceptor = listen_on(
        io, asio::ip::tcp::endpoint(metrics_address, config.metrics.listen_port), "metrics.listen");
    if (!metrics_acceptor) {
      std::cerr << "fleetyd: " << metrics_acceptor.error() << "\n";
      return 1;
    }
    spdlog::info("metrics at http://{}:{}/metrics", config.metrics.listen_address,
                 config.metrics.listen_port);
    asio::co_spawn(io,
                   control::run_metrics_server(std::move(metrics_acceptor).value(), control_api),
                   asio::detached);
  }

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
  supervision.stop();
  intercepting.reset();
  mptcp.reset();
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
