#pragma once
// `fleety doctor`: what fleety needs from this machine, checked, each problem with its fix
// in one line (issue 19). The verdicts are a pure function of the facts gathered.

#include <optional>
#include <string>
#include <vector>

#include "path/uplinks.hpp"

namespace fleety::app {

/// What `fleety doctor` looked at on this machine.
struct machine_facts {
  bool root = false;
  std::optional<std::string> cgroup2;  ///< the cgroup2 mount; none: cgroup2_error says why
  std::string cgroup2_error;
  /// nftables: whether a table could be made (root only), and whether with `flags owner`.
  std::optional<bool> nftables;
  std::optional<bool> nftables_owner;
  std::string nftables_error;
  std::optional<int> mptcp_enabled;  ///< net.mptcp.enabled; none: no MPTCP in this kernel
  std::vector<path::uplink> uplinks;
  std::string uplinks_error;
  std::string bind_problem;  ///< net::bind_permission_problem of the uplinks ("" = may bind)
  /// net::route_problem of each uplink that has one (policy routing).
  std::vector<std::string> route_problems;
  std::vector<std::string> resolvers;  ///< nameserver lines of /etc/resolv.conf
  /// Each uplink's own DNS servers (path::with_link_resolvers), in f.uplinks' order.
  struct uplink_dns {
    std::string interface;
    std::vector<std::string> servers;  ///< empty: none found
    std::string found;                 ///< where from ("systemd-resolved (...)"), or why none
  };
  std::vector<uplink_dns> uplink_resolvers;
  std::string daemon_error;  ///< "" when fleetyd answered on its control socket
  std::string control_socket;
};

struct doctor_check {
  enum class verdict { ok, warn, fail, skipped };
  std::string name;
  verdict result = verdict::ok;
  std::string detail;
  std::string fix;  ///< one line; empty when nothing is to be done
};

/// The checks, in the order they are printed.
std::vector<doctor_check> doctor_checks(const machine_facts& facts);

/// Gathers the facts of this machine (control socket: `socket`).
machine_facts gather_machine_facts(const std::string& socket);

/// Prints the checks (or JSON); 1 when one failed, else 0.
int run_doctor(const std::string& socket, bool as_json);

}  // namespace fleety::app
