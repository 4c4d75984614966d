#include "app/doctor_command.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>

#include "control/control.hpp"
#include "control/status_model.hpp"
#include "intercept/intercept.hpp"
#include "net/bound_socket.hpp"

namespace fleety::app {

using verdict = doctor_check::verdict;

std::vector<doctor_check> doctor_checks(const machine_facts& f) {
  std::vector<doctor_check> out;
  // The uplinks: what there is to combine.
  {
    doctor_check c{"uplinks", verdict::ok, {}, {}};
    std::vector<std::string> named;
    for (const auto& u : f.uplinks) {
      named.push_back(fmt::format("{} {} ({})", core::to_string(u.kind), u.interface, u.why));
    }
    const std::string list = fmt::format("{}", fmt::join(named, "; "));
    if (!f.uplinks_error.empty()) {
      c = {"uplinks", verdict::fail, f.uplinks_error, "check `ip route show table all`"};
    } else if (f.uplinks.empty()) {
      c = {"uplinks", verdict::fail, "no interface has a default route",
           "connect Wi-Fi, a phone (USB tethering) or a modem, or name a [[path]]"};
    } else if (f.uplinks.size() == 1) {
      c = {"uplinks", verdict::warn, "one only: " + list,
           "connect a second uplink (a phone's USB tethering, a modem) to combine them"};
    } else {
      c.detail = list;
    }
    out.push_back(std::move(c));
  }
  // Binding sockets to each uplink.
  if (!f.uplinks.empty()) {
    out.push_back(
        f.bind_problem.empty()
            ? doctor_check{"bind to uplinks",
                           verdict::ok,
                           "sockets may be bound to each uplink (SO_BINDTODEVICE)",
                           {}}
            : doctor_check{"bind to uplinks", verdict::fail, f.bind_problem,
                           "run fleetyd from its systemd unit (CAP_NET_RAW), or as root"});
  }
  // Routing: a socket bound to each uplink must reach the Internet through it.
  if (!f.uplinks.empty() && f.bind_problem.empty()) {
    out.push_back(f.route_problems.empty()
                      ? doctor_check{"routing",
                                     verdict::ok,
                                     "a socket bound to each uplink has a route through it",
                                     {}}
                      : doctor_check{"routing", verdict::fail,
                                     fmt::format("{}", fmt::join(f.route_problems, "; ")),
                                     "add a policy rule (ip rule add oif IFACE lookup TABLE) or "
                                     "a default route through it in the main table"});
  }
  // Each path's resolvers: per-ISP CDN nodes need each path's own, and a LAN's resolver
  // may not answer over cellular.
  {
    const std::string system = fmt::format("{}", fmt::join(f.resolvers, ", "));
    const bool local_stub =
        std::any_of(f.resolvers.begin(), f.resolvers.end(),
                    [](const std::string& r) { return r.starts_with("127.") || r == "::1"; });
    std::vector<std::string> own;
    std::vector<std::string> without;
    for (const auto& u : f.uplink_resolvers) {
      if (u.servers.empty()) {
        without.push_back(u.interface);
      } else {
        own.push_back(
            fmt::format("{}: {} from {}", u.interface, fmt::join(u.servers, ", "), u.found));
      }
    }
    const std::string system_words =
        f.resolvers.empty() ? std::string("/etc/resolv.conf names no server")
        : local_stub
            ? fmt::format(
                  "the system's is a local stub ({}): those paths do not reach their own ISP's CDN "
                  "node",
                  system)
            : fmt::format("they ask the system's ({}), which may not answer over every uplink",
                          system);
    if (!f.uplink_resolvers.empty() && without.empty()) {
      out.push_back({"resolvers",
                     verdict::ok,
                     fmt::format("each uplink's own: {}", fmt::join(own, "; ")),
                     {}});
    } else if (f.uplink_resolvers.empty()) {
      out.push_back(
          {"resolvers", verdict::warn, "no uplink: " + system_words, "connect an uplink"});
    } else {
      out.push_back({"resolvers", verdict::warn,
                     fmt::format("no servers of their own found for {} (systemd-resolved, "
                                 "networkd, NetworkManager, DHCP leases): {}{}",
                                 fmt::join(without, ", "), system_words,
                                 own.empty() ? std::string()
                                             : fmt::format("; found: {}", fmt::join(own, "; "))),
                     "give those [[path]]s their link's servers: dns = [\"...\"]"});
    }
  }
  // Interception: cgroup v2 and nftables.
  out.push_back(f.cgroup2 ? doctor_check{"cgroup v2", verdict::ok, *f.cgroup2, {}}
                          : doctor_check{"cgroup v2", verdict::warn,
                                         f.cgroup2_error + " (fleety run and [[app]] by cgroup)",
                                         "boot with systemd.unified_cgroup_hierarchy=1"});
  if (!f.nftables) {
    out.push_back({"nftables", verdict::skipped, "needs root to try", "sudo fleety doctor"});
  } else if (!*f.nftables) {
    out.push_back({"nftables", verdict::fail, f.nftables_error + " (interception, [access])",
                   "apt-get install nftables; modprobe nf_tables"});
  } else if (!f.nftables_owner.value_or(false)) {
    out.push_back({"nftables", verdict::warn,
                   "no table ownership (Linux < 5.12): if fleetyd dies, its apps stay "
                   "redirected until it restarts",
                   "a kernel from 5.12 on (Debian 12's 6.1 has it)"});
  } else {
    out.push_back({"nftables", verdict::ok, "tables owned by fleetyd (fail open)", {}});
  }
  // MPTCP for relayed flows.
  if (!f.mptcp_enabled) {
    out.push_back({"mptcp", verdict::warn, "this kernel has no MPTCP ([mptcp] uses plain TCP)",
                   "a kernel with CONFIG_MPTCP (Debian 12's has it)"});
  } else if (*f.mptcp_enabled == 0) {
    out.push_back({"mptcp", verdict::warn, "net.mptcp.enabled = 0 ([mptcp] uses plain TCP)",
                   "sysctl -w net.mptcp.enabled=1"});
  } else {
    out.push_back({"mptcp", verdict::ok, "net.mptcp.enabled = 1", {}});
  }
  // The daemon.
  out.push_back(f.daemon_error.empty()
                    ? doctor_check{"fleetyd", verdict::ok, "answers on " + f.control_socket, {}}
                    : doctor_check{"fleetyd", verdict::warn, f.daemon_error,
                                   "systemctl enable --now fleetyd"});
  return out;
}

namespace {

std::string read_first_line(const std::string& file) {
  std::ifstream in(file);
  std::string line;
  std::getline(in, line);
  return line;
}

std::string_view verdict_name(verdict v) {
  switch (v) {
    case verdict::ok:
      return "ok";
    case verdict::warn:
      return "warn";
    case verdict::fail:
      return "FAIL";
    case verdict::skipped:
      return "skip";
  }
  return "?";
}

}  // namespace

machine_facts gather_machine_facts(const std::string& socket) {
  machine_facts f;
  f.root = ::geteuid() == 0;
  f.control_socket = socket;
  if (auto mount = intercept::cgroup2_mount()) {
    f.cgroup2 = *mount;
  } else {
    f.cgroup2_error = mount.error();
  }
  if (f.root) {
    // A table of our own, made and dropped in one transaction per try: owned, then plain.
    constexpr std::string_view probe_table = "fleety_doctor";
    if (intercept::run_nft(intercept::removal_script(true, probe_table))) {
      f.nftables = true;
      f.nftables_owner = true;
    } else if (auto plain = intercept::run_nft(intercept::removal_script(false, probe_table))) {
      f.nftables = true;
      f.nftables_owner = false;
    } else {
      f.nftables = false;
      f.nftables_error = plain.error();
    }
  }
  const std::string mptcp = read_first_line("/proc/sys/net/mptcp/enabled");
  if (!mptcp.empty()) f.mptcp_enabled = mptcp == "1" ? 1 : 0;
  if (auto uplinks = path::discover_uplinks()) {
    f.uplinks = std::move(uplinks).value();
  } else {
    f.uplinks_error = uplinks.error();
  }
  std::vector<std::string> interfaces;
  for (const auto& u : f.uplinks) interfaces.push_back(u.interface);
  f.bind_problem = net::bind_permission_problem(interfaces);
  if (f.bind_problem.empty()) {
    for (const auto& interface : interfaces) {
      if (auto problem = path::route_problem(interface); !problem.empty())
        f.route_problems.push_back(std::move(problem));
    }
  }
  for (const auto& p : path::paths_of(f.uplinks)) {
    auto found = path::with_link_resolvers(p);
    f.uplink_resolvers.push_back(
        {p.interface, std::move(found.dns_servers), std::move(found.dns_found)});
  }
  std::ifstream resolv("/etc/resolv.conf");
  for (std::string line; std::getline(resolv, line);) {
    std::istringstream words(line);
    std::string key, server;
    if (words >> key >> server && key == "nameserver") f.resolvers.push_back(server);
  }
  if (auto answer = control::call(socket, {{"cmd", "status"}}, std::chrono::seconds(2)); !answer) {
    f.daemon_error = answer.error();
  }
  return f;
}

int run_doctor(const std::string& socket, bool as_json) {
  const auto checks = doctor_checks(gather_machine_facts(socket));
  bool failed = false;
  boost::json::array rows;
  for (const auto& c : checks) {
    failed = failed || c.result == verdict::fail;
    if (as_json) {
      rows.push_back(boost::json::object{{"check", c.name},
                                         {"result", verdict_name(c.result)},
                                         {"detail", c.detail},
                                         {"fix", c.fix}});
      continue;
    }
    std::cout << fmt::format("{:<4}  {:<15}  {}\n", verdict_name(c.result), c.name, c.detail);
    if (!c.fix.empty() && c.result != verdict::ok)
      std::cout << fmt::format("{:<4}  {:<15}  fix: {}\n", "", "", c.fix);
  }
  if (as_json) std::cout << control::json_text(boost::json::object{{"checks", rows}}) << "\n";
  return failed ? 1 : 0;
}

}  // namespace fleety::app
