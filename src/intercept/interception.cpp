#include "intercept/interception.hpp"

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/ip/v6_only.hpp>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "dns/duplicator.hpp"
#include "net/bound_socket.hpp"
#include "net/listen.hpp"
#include "net/task_group.hpp"

namespace fleety::intercept {

namespace asio = boost::asio;

namespace {

/// Why IPv6 cannot be taken over here, empty if it can: IPv6 is redirected to ::1, which
/// loopback has only when IPv6 is on there.
std::string ipv6_loopback_problem(asio::io_context& io) {
  asio::ip::udp::socket probe(io);
  boost::system::error_code ec;
  probe.open(asio::ip::udp::v6(), ec);
  if (!ec) probe.bind({asio::ip::address_v6::loopback(), 0}, ec);
  return ec ? fmt::format("cannot bind [::1]: {}", ec.message()) : std::string();
}

/// Removes a table inet fleety that no live fleetyd owns (an older fleetyd's, or one left
/// on a kernel without table owners): true if there was one. A live fleetyd's own table
/// refuses this.
bool remove_unowned_table() {
  return run_nft(fmt::format("list table inet {}", table_name)) && run_nft(removal_script(false));
}

}  // namespace

interception::interception(const core::config& config)
    : ic_(config.intercept), apps_(config.apps, config.selector.default_class) {}

core::expected<std::unique_ptr<interception>> interception::start(asio::io_context& io,
                                                                  const core::config& config) {
  auto self = std::unique_ptr<interception>(new interception(config));
  const auto& ic = config.intercept;
  net::set_own_socket_mark(ic.mark);
  auto mount = cgroup2_mount();
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
  std::filesystem::create_directories(self->mount_ / run_cgroup, fs_ec);
  if (fs_ec) {
    return core::make_error(fmt::format("cannot create the cgroup {}: {}",
                                        (self->mount_ / run_cgroup).string(), fs_ec.message()));
  }
  for (const auto& app : config.apps) {
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
    auto tcp = net::listen_on(io, {ip, ic.tcp_port}, "intercept.port", true);
    auto dns_tcp = net::listen_on(io, {ip, ic.dns_port}, "intercept.dns_port", true);
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
                                                net::address_text(ip), ic.dns_port, ec.message());
      if (ip.is_v6()) {
        spdlog::warn("intercept: {}: IPv6 connections and DNS are not taken over", why);
        continue;
      }
      return core::make_error(why);
    }
    listening.push_back(net::address_text(ip));
    self->acceptors_.push_back(std::move(tcp).value());
    self->dns_acceptors_.push_back(std::move(dns_tcp).value());
    self->dns_sockets_.push_back(std::move(dns_udp));
  }
  // A table an older fleetyd left (not owned by any socket) can't be taken over by an
  // owner's transaction: removed first. A live fleetyd's own table stays, and the load
  // below says so.
  (void)remove_unowned_table();
  if (auto applied = self->apply(); !applied) return core::make_error(applied.error());
  spdlog::info(
      "intercept: table inet {} loaded{}; apps in cgroup {}/{} and {} configured app(s) "
      "are taken over on port {}, their DNS on port {} ({})",
      table_name, self->owned_ ? " (owned by fleetyd: gone the moment it dies)" : "", *mount,
      run_cgroup, config.apps.size(), ic.tcp_port, ic.dns_port, fmt::join(listening, ", "));
  return self;
}

void interception::remove_stale() {
  // Without root there is no table of ours to find (and nft would only complain).
  if (::geteuid() != 0) return;
  if (remove_unowned_table())
    spdlog::warn("intercept: removed a stale table inet {} (interception is off)", table_name);
}

void interception::serve(net::task_group& tasks, dns::duplicator& duplicator,
                         mphttp::proxy_context& context, flow_placement& placement) {
  for (auto& socket : dns_sockets_)
    tasks.spawn(dns::run_dns_udp(std::move(socket), duplicator), "DNS server (UDP)");
  for (auto& acceptor : dns_acceptors_)
    tasks.spawn(dns::run_dns_tcp(std::move(acceptor), duplicator), "DNS server (TCP)");
  for (auto& acceptor : acceptors_)
    tasks.spawn(run_intercept_listener(std::move(acceptor), context, placement),
                "intercept listener");
  dns_sockets_.clear();
  dns_acceptors_.clear();
  acceptors_.clear();
}

core::expected<bool> interception::set_enabled(const std::string& name, bool enabled) {
  auto before = apps_.set_enabled(name, enabled);
  if (!before) return before;
  if (auto applied = apply(); !applied) {
    (void)apps_.set_enabled(name, *before);
    return applied;
  }
  spdlog::info("app {}: {}", name, enabled ? "enabled" : "disabled");
  return true;
}

core::expected<bool> interception::starting(const std::string& name,
                                            const std::optional<joining_process>& joining) {
  const auto enabled = apps_.starting(name);  // the name is checked here: no "..", no '/'
  if (!enabled) return enabled;
  const auto cgroup = mount_ / run_cgroup / name;
  std::error_code fs_ec;
  std::filesystem::create_directory(cgroup, fs_ec);
  if (fs_ec) {
    return core::make_error(
        fmt::format("cannot create the cgroup {}: {}", cgroup.string(), fs_ec.message()));
  }
  if (auto applied = apply(); !applied) return applied;
  if (!*enabled || !joining) return *enabled;
  // The pid is the kernel's (SO_PEERCRED) and the caller waits for our answer, so it is
  // still that process; its owner is checked all the same where /proc shows it (the
  // systemd unit's ProtectProc=invisible hides other users' processes), so that nobody
  // moves another user's process. A pid that is gone fails the write below (ESRCH).
  struct stat process {};
  const auto proc = fmt::format("/proc/{}", joining->pid);
  if (joining->pid <= 0)
    return core::make_error(fmt::format("no process to run as app '{}'", name));
  if (joining->uid != 0 && ::stat(proc.c_str(), &process) == 0 && process.st_uid != joining->uid) {
    return core::make_error(fmt::format(
        "process {} is not yours: only your own program can become app '{}'", joining->pid, name));
  }
  std::ofstream procs(cgroup / "cgroup.procs");
  procs << joining->pid << std::flush;
  if (!procs) {
    return core::make_error(fmt::format("cannot move process {} into the cgroup {}: {}",
                                        joining->pid, cgroup.string(), std::strerror(errno)));
  }
  spdlog::info("intercept: process {} (uid {}) runs as app {}", joining->pid, joining->uid, name);
  return *enabled;
}

interception::~interception() {
  if (!table_loaded_) return;
  if (auto removed = nft_.run(removal_script(owned_)); !removed) {
    spdlog::error("intercept: cannot remove table inet {}: {}", table_name, removed.error());
  } else {
    spdlog::info("intercept: table inet {} removed", table_name);
  }
}

core::expected<bool> interception::apply() {
  auto spec = apps_.ruleset(ic_, prefix_, [this](const std::string& cgroup) {
    return std::filesystem::is_directory(mount_ / cgroup);
  });
  spec.owned = owned_;
  auto applied = nft_.run(build_ruleset(spec));
  if (!applied && owned_ && !table_loaded_) {
    // A kernel before 5.12 knows no table owner: intercept all the same, and say what is
    // lost. (Any other error fails again below, with its own message.)
    spec.owned = false;
    if (nft_.run(build_ruleset(spec))) {
      owned_ = false;
      spdlog::warn(
          "intercept: this kernel cannot tie the table to fleetyd (nftables table owner, Linux "
          "5.12; it said: {}): if fleetyd dies, its apps stay redirected until it starts again",
          applied.error());
      applied = true;
    }
  }
  if (!applied) {
    const bool taken = applied.error().find("not permitted") != std::string::npos &&
                       run_nft(fmt::format("list table inet {}", table_name));
    return core::make_error(
        "cannot load the interception rules (nftables): " + applied.error() +
        (taken ? fmt::format(" (table inet {} exists and is another process's: is another "
                             "fleetyd running?)",
                             table_name)
               : std::string()));
  }
  table_loaded_ = true;
  return true;
}

}  // namespace fleety::intercept
