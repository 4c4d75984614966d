#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "intercept/intercept.hpp"

namespace fleety::intercept {
namespace {

/// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape_mount_field(std::string_view field) {
  std::string out;
  for (std::size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size() &&
        std::all_of(field.begin() + static_cast<std::ptrdiff_t>(i) + 1,
                    field.begin() + static_cast<std::ptrdiff_t>(i) + 4,
                    [](char c) { return c >= '0' && c <= '7'; })) {
      out.push_back(static_cast<char>((field[i + 1] - '0') * 64 + (field[i + 2] - '0') * 8 +
                                      (field[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(field[i]);
    }
  }
  return out;
}

std::size_t depth_of(std::string_view cgroup) {
  return static_cast<std::size_t>(std::count(cgroup.begin(), cgroup.end(), '/')) + 1;
}

}  // namespace

std::string build_ruleset(const ruleset_spec& spec) {
  std::string rules;
  rules += removal_script(spec.owned);
  rules += fmt::format("table inet {} {{\n", table_name);
  if (spec.owned) rules += "  flags owner;\n";
  rules += "  chain output {\n";
  // dstnat for locally generated packets; REDIRECT sends them to 127.0.0.1 / ::1.
  rules += "    type nat hook output priority -100; policy accept;\n";
  // fleetyd's own upstream connections and DNS queries pass untouched.
  if (spec.own_mark != 0) rules += fmt::format("    meta mark {:#x} return\n", spec.own_mark);
  for (const auto& cgroup : spec.excluded_cgroups) {
    rules += fmt::format(
        "    socket cgroupv2 level {} \"{}\" return comment \"disabled: {}\"\n", depth_of(cgroup),
        spec.cgroup2_prefix.empty() ? cgroup : spec.cgroup2_prefix + "/" + cgroup, cgroup);
  }
  for (const auto& app : spec.apps) {
    if (!app.cgroup.empty()) {
      const std::string path =
          spec.cgroup2_prefix.empty() ? app.cgroup : spec.cgroup2_prefix + "/" + app.cgroup;
      rules += fmt::format("    socket cgroupv2 level {} \"{}\" goto app comment \"{}\"\n",
                           depth_of(app.cgroup), path, app.name);
    }
    if (app.uid)
      rules += fmt::format("    meta skuid {} goto app comment \"{}\"\n", *app.uid, app.name);
    if (app.gid)
      rules += fmt::format("    meta skgid {} goto app comment \"{}\"\n", *app.gid, app.name);
  }
  rules += "  }\n";
  rules += "  chain app {\n";
  // A link-local destination (fe80::1%wlan0) binds the app's socket to that interface, and
  // the kernel has no route to ::1 through it: a redirect leaves the SYN unroutable (the
  // app's connect times out). Those go to the app's own address on that link instead (a
  // local address, looped back), where fleetyd's IPv6 listener on [::] takes them, and
  // IP6T_SO_ORIGINAL_DST gives their scope (the interface).
  const auto to_link_local = [](std::string_view what, std::uint16_t port) {
    return fmt::format("    ip6 daddr {} {} dnat ip6 to ip6 saddr : {}\n", link_local_net, what,
                       port);
  };
  // DNS first, also to a resolver on loopback (systemd-resolved's 127.0.0.53): the
  // query is the app's, wherever it was going.
  if (spec.redirect_dns) {
    rules += to_link_local("meta l4proto { tcp, udp } th dport 53", spec.dns_port);
    rules += fmt::format("    udp dport 53 redirect to :{}\n", spec.dns_port);
    rules += fmt::format("    tcp dport 53 redirect to :{}\n", spec.dns_port);
  }
  // Other connections to this host stay the app's own business.
  rules += "    ip daddr 127.0.0.0/8 return\n";
  rules += "    ip6 daddr ::1 return\n";
  rules += to_link_local("meta l4proto tcp", spec.tcp_port);
  rules += fmt::format("    meta l4proto tcp redirect to :{}\n", spec.tcp_port);
  rules += "  }\n";
  // fleetyd's IPv6 listeners are on [::]: IPv6 that reaches its ports from the network
  // (not looped back from this host) is dropped. Redirected and link-local DNATed
  // connections arrive on lo. (IPv4 listens on 127.0.0.1 only.)
  std::vector<std::uint16_t> ports;
  for (const auto port : {spec.tcp_port, spec.dns_port}) {
    if (port != 0 && std::find(ports.begin(), ports.end(), port) == ports.end())
      ports.push_back(port);
  }
  if (!ports.empty()) {
    rules += "  chain input {\n";
    rules += "    type filter hook input priority 0; policy accept;\n";
    rules += fmt::format(
        "    meta nfproto ipv6 iif != \"lo\" meta l4proto {{ tcp, udp }} th dport {{ {} }} drop "
        "comment \"fleetyd's ports: this host only\"\n",
        fmt::join(ports, ", "));
    rules += "  }\n";
  }
  rules += "}\n";
  return rules;
}

std::string removal_script(bool owned, std::string_view table) {
  // The add must name the flags the table has: the owner flag can't be dropped or taken.
  return fmt::format("add table inet {0}{1}\ndelete table inet {0}\n", table,
                     owned ? " { flags owner; }" : "");
}

std::optional<std::string> cgroup2_mount_in(std::string_view mountinfo) {
  std::size_t pos = 0;
  while (pos < mountinfo.size()) {
    const std::size_t end = std::min(mountinfo.find('\n', pos), mountinfo.size());
    const std::string_view line = mountinfo.substr(pos, end - pos);
    pos = end + 1;
    // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER"
    const auto separator = line.find(" - ");
    if (separator == std::string_view::npos) continue;
    if (!line.substr(separator + 3).starts_with("cgroup2 ")) continue;
    std::istringstream fields{std::string(line.substr(0, separator))};
    std::string id, parent, device, root, mount_point;
    if (!(fields >> id >> parent >> device >> root >> mount_point)) continue;
    return unescape_mount_field(mount_point);
  }
  return std::nullopt;
}

core::expected<std::string> cgroup2_mount() {
  std::ifstream file("/proc/self/mountinfo");
  std::ostringstream text;
  text << file.rdbuf();
  if (!file) return core::make_error("cannot read /proc/self/mountinfo");
  if (auto mount = cgroup2_mount_in(text.str())) return *mount;
  return core::make_error(
      "no cgroup2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup/unified), or "
      "/sys is this network namespace's own: start fleetyd with `nsenter --net=...`, not "
      "`ip netns exec`");
}

std::string refusal_of_intercepted(
    const std::optional<boost::asio::ip::tcp::endpoint>& original,
    const boost::asio::ip::tcp::endpoint& local, const std::vector<std::uint16_t>& own_ports,
    const std::function<bool(const boost::asio::ip::address&)>& is_local) {
  if (!original || original->address().is_loopback() || *original == local)
    return "no redirected destination (a connection to the intercept port itself)";
  if (std::find(own_ports.begin(), own_ports.end(), original->port()) != own_ports.end() &&
      is_local(original->address()))
    return "its destination is fleetyd's own listener on this host (it would loop)";
  return {};
}

std::vector<std::uint16_t> own_tcp_ports(const core::config& config) {
  std::vector<std::uint16_t> ports{config.proxy.listen_port, config.intercept.tcp_port,
                                   config.intercept.dns_port};
  if (config.metrics.enabled) ports.push_back(config.metrics.listen_port);
  return ports;
}

}  // namespace fleety::intercept
