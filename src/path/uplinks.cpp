#include "path/uplinks.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <libmnl/libmnl.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <tuple>
#include <vector>

#include "path/link_resolvers.hpp"

namespace fleety::path {
namespace {

bool starts_with_any(std::string_view name, std::initializer_list<std::string_view> prefixes) {
  return std::any_of(prefixes.begin(), prefixes.end(),
                     [&](std::string_view prefix) { return name.starts_with(prefix); });
}

/// Phones' USB tethering and modems (issue 19's list).
constexpr std::array<std::string_view, 6> cellular_drivers = {
    "rndis_host", "cdc_ether", "cdc_ncm", "ipheth", "qmi_wwan", "cdc_mbim"};

int rank(core::path_kind kind) {
  switch (kind) {
    case core::path_kind::wired:
      return 0;
    case core::path_kind::wifi:
      return 1;
    case core::path_kind::cellular:
      return 2;
  }
  return 3;
}

}  // namespace

uplink classify_uplink(const interface_facts& facts) {
  uplink out{facts.name, core::path_kind::wired, {}, false};
  const std::string_view name = facts.name;
  if (facts.devtype == "wireguard" || starts_with_any(name, {"tun", "tap", "wg"})) {
    out.excluded = true;
    out.why = "a tunnel: its packets leave over an uplink anyway";
    return out;
  }
  if (name == "lo" || starts_with_any(name, {"docker", "br-", "virbr", "veth"})) {
    out.excluded = true;
    out.why = "a local bridge or container link";
    return out;
  }
  if (facts.wireless || facts.devtype == "wlan") {
    out.kind = core::path_kind::wifi;
    out.why = "sysfs: a wireless device";
    return out;
  }
  if (facts.devtype == "wwan") {
    out.kind = core::path_kind::cellular;
    out.why = "sysfs: DEVTYPE=wwan";
    return out;
  }
  if (std::find(cellular_drivers.begin(), cellular_drivers.end(), facts.driver) !=
      cellular_drivers.end()) {
    out.kind = core::path_kind::cellular;
    out.why = fmt::format("driver {} (a phone's USB tethering or a modem)", facts.driver);
    return out;
  }
  if (starts_with_any(name, {"wl"})) {
    out.kind = core::path_kind::wifi;
    out.why = fmt::format("the name {}", facts.name);
    return out;
  }
  if (starts_with_any(name, {"ww", "rmnet", "usb"})) {
    out.kind = core::path_kind::cellular;
    out.why = fmt::format("the name {}", facts.name);
    return out;
  }
  out.why = facts.present ? (facts.driver.empty() ? std::string("neither wireless nor a modem")
                                                  : fmt::format("driver {}", facts.driver))
                          : fmt::format("the name {} (no sysfs entry here)", facts.name);
  return out;
}

std::vector<uplink> uplinks_from(const std::vector<default_route>& routes,
                                 const std::vector<interface_facts>& facts) {
  std::map<std::string, unsigned> best_metric;
  for (const auto& route : routes) {
    if (route.interface.empty()) continue;
    auto [it, added] = best_metric.emplace(route.interface, route.metric);
    if (!added) it->second = std::min(it->second, route.metric);
  }
  std::vector<std::pair<uplink, unsigned>> found;
  for (const auto& [name, metric] : best_metric) {
    interface_facts known{name, false, false, {}, {}};
    for (const auto& f : facts) {
      if (f.name == name) known = f;
    }
    auto u = classify_uplink(known);
    if (!u.excluded) found.emplace_back(std::move(u), metric);
  }
  std::stable_sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
    return std::tuple(rank(a.first.kind), a.second) < std::tuple(rank(b.first.kind), b.second);
  });
  std::vector<uplink> out;
  for (auto& [u, metric] : found) out.push_back(std::move(u));
  return out;
}

namespace {

/// The [[path]] of `u`, named by its kind with the first number no name in `taken` has.
core::path_config path_of(const uplink& u, const std::set<std::string>& taken) {
  core::path_config p;
  const std::string base(core::to_string(u.kind));
  p.name = base;
  for (int n = 2; taken.contains(p.name); ++n) p.name = fmt::format("{}-{}", base, n);
  p.interface = u.interface;
  p.kind = u.kind;
  p.cost = u.kind == core::path_kind::cellular ? 10 : 0;
  p.mptcp_backup = u.kind == core::path_kind::cellular;
  p.discovered = u.why;
  return p;
}

}  // namespace

std::vector<core::path_config> paths_of(const std::vector<uplink>& uplinks) {
  std::vector<core::path_config> paths;
  std::set<std::string> taken;
  for (const auto& u : uplinks) {
    paths.push_back(path_of(u, taken));
    taken.insert(paths.back().name);
  }
  return paths;
}

std::vector<core::path_config> slot_layout(const std::vector<core::path_config>& found) {
  std::vector<core::path_config> slots;
  for (const auto kind :
       {core::path_kind::wired, core::path_kind::wifi, core::path_kind::cellular}) {
    bool any = false;
    for (const auto& p : found) {
      if (p.kind != kind) continue;
      slots.push_back(p);
      any = true;
    }
    if (any) continue;
    core::path_config free_slot;
    free_slot.kind = kind;
    free_slot.cost = kind == core::path_kind::cellular ? 10 : 0;
    free_slot.mptcp_backup = kind == core::path_kind::cellular;
    slots.push_back(std::move(free_slot));
  }
  return slots;
}

slot_plan plan_slots(const std::vector<uplink_slot>& slots, const std::vector<uplink>& found) {
  slot_plan plan;
  std::set<std::string> present;
  for (const auto& u : found) present.insert(u.interface);
  std::vector<bool> free(slots.size());
  std::set<std::string> held;
  std::set<std::string> names;
  for (std::size_t i = 0; i < slots.size(); ++i) {
    const auto& slot = slots[i];
    if (!slot.interface.empty() && !present.contains(slot.interface)) {
      plan.changes.push_back({i, std::nullopt});
      free[i] = true;
      continue;
    }
    free[i] = slot.interface.empty();
    if (!free[i]) {
      held.insert(slot.interface);
      names.insert(slot.name);
    }
  }
  // Two passes: first each uplink back in the slot it held last, so that a new one never
  // takes the slot of one that is also back in this look; then the new ones.
  const auto take = [&](const uplink& u, std::size_t slot) {
    free[slot] = false;
    auto path = path_of(u, names);
    names.insert(path.name);
    held.insert(u.interface);
    plan.changes.push_back({slot, std::move(path)});
  };
  for (const auto& u : found) {
    if (held.contains(u.interface)) continue;
    for (std::size_t i = 0; i < slots.size(); ++i) {
      if (free[i] && slots[i].kind == u.kind && slots[i].last_interface == u.interface) {
        take(u, i);
        break;
      }
    }
  }
  for (const auto& u : found) {
    if (held.contains(u.interface)) continue;
    std::optional<std::size_t> chosen;
    for (std::size_t i = 0; i < slots.size() && !chosen; ++i) {
      if (free[i] && slots[i].kind == u.kind) chosen = i;
    }
    if (chosen) {
      take(u, *chosen);
    } else {
      plan.without_slot.push_back(u);
    }
  }
  return plan;
}

// ---- I/O ---------------------------------------------------------------------------

namespace {

struct route_attributes {
  const nlattr* oif = nullptr;
  const nlattr* table = nullptr;
  const nlattr* priority = nullptr;
  const nlattr* multipath = nullptr;
};

int on_route_attribute(const nlattr* attr, void* data) {
  auto& found = *static_cast<route_attributes*>(data);
  if (mnl_attr_type_valid(attr, RTA_MAX) < 0) return MNL_CB_OK;
  switch (mnl_attr_get_type(attr)) {
    case RTA_OIF:
      if (mnl_attr_validate(attr, MNL_TYPE_U32) < 0) return MNL_CB_ERROR;
      found.oif = attr;
      break;
    case RTA_TABLE:
      if (mnl_attr_validate(attr, MNL_TYPE_U32) < 0) return MNL_CB_ERROR;
      found.table = attr;
      break;
    case RTA_PRIORITY:
      if (mnl_attr_validate(attr, MNL_TYPE_U32) < 0) return MNL_CB_ERROR;
      found.priority = attr;
      break;
    case RTA_MULTIPATH:
      found.multipath = attr;
      break;
    default:
      break;
  }
  return MNL_CB_OK;
}

std::string interface_name(unsigned index) {
  char name[IF_NAMESIZE] = {};
  return ::if_indextoname(index, name) != nullptr ? std::string(name) : std::string();
}

int on_route(const nlmsghdr* message, void* data) {
  auto& routes = *static_cast<std::vector<default_route>*>(data);
  if (mnl_nlmsg_get_payload_len(message) < sizeof(rtmsg)) return MNL_CB_OK;
  const auto& route = *static_cast<const rtmsg*>(mnl_nlmsg_get_payload(message));
  // A default route that leads somewhere (not unreachable, blackhole or prohibit).
  if (route.rtm_dst_len != 0 || route.rtm_type != RTN_UNICAST) return MNL_CB_OK;
  route_attributes found;
  if (mnl_attr_parse(message, sizeof route, on_route_attribute, &found) != MNL_CB_OK)
    return MNL_CB_OK;
  const unsigned table = found.table != nullptr ? mnl_attr_get_u32(found.table) : route.rtm_table;
  const unsigned metric = found.priority != nullptr ? mnl_attr_get_u32(found.priority) : 0;
  if (found.oif != nullptr) {
    routes.push_back({interface_name(mnl_attr_get_u32(found.oif)), table, metric});
  } else if (found.multipath != nullptr) {
    const auto* hop = static_cast<const rtnexthop*>(mnl_attr_get_payload(found.multipath));
    auto left = static_cast<int>(mnl_attr_get_payload_len(found.multipath));
    while (RTNH_OK(hop, left)) {
      routes.push_back({interface_name(static_cast<unsigned>(hop->rtnh_ifindex)), table, metric});
      left -= NLMSG_ALIGN(hop->rtnh_len);
      hop = RTNH_NEXT(hop);
    }
  }
  return MNL_CB_OK;
}

bool file_exists(const std::filesystem::path& path) {
  std::error_code ec;
  return std::filesystem::exists(path, ec);
}

}  // namespace

namespace {

std::string rtnetlink_error() {
  return fmt::format("rtnetlink: {}", std::strerror(errno));
}

/// One RTM_GETROUTE exchange: its socket, and its request (`flags`, `family`) built in
/// `buffer` for the caller to finish and send.
struct route_query {
  std::unique_ptr<mnl_socket, decltype(&mnl_socket_close)> socket{nullptr, &mnl_socket_close};
  std::vector<char> buffer;
  nlmsghdr* request = nullptr;
  rtmsg* route = nullptr;
  unsigned sequence = 0;
};

core::expected<route_query> open_route_query(std::uint16_t flags, unsigned char family) {
  route_query q;
  q.socket.reset(mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC));
  if (!q.socket || mnl_socket_bind(q.socket.get(), 0, MNL_SOCKET_AUTOPID) < 0)
    return core::make_error(rtnetlink_error());
  // The kernel answers within the send; a second is plenty, and bounds a wedged socket.
  timeval timeout{1, 0};
  ::setsockopt(mnl_socket_get_fd(q.socket.get()), SOL_SOCKET, SO_RCVTIMEO, &timeout,
               sizeof timeout);
  // (MNL_SOCKET_BUFFER_SIZE is the page size, or 8 KiB: a run-time value.)
  q.buffer.resize(MNL_SOCKET_BUFFER_SIZE);
  q.request = mnl_nlmsg_put_header(q.buffer.data());
  q.request->nlmsg_type = RTM_GETROUTE;
  q.request->nlmsg_flags = flags;
  q.sequence = static_cast<unsigned>(std::time(nullptr));
  q.request->nlmsg_seq = q.sequence;
  q.route = static_cast<rtmsg*>(mnl_nlmsg_put_extra_header(q.request, sizeof(rtmsg)));
  q.route->rtm_family = family;
  return q;
}

}  // namespace

core::expected<std::vector<default_route>> read_default_routes() {
  auto query = open_route_query(NLM_F_REQUEST | NLM_F_DUMP, AF_UNSPEC);
  if (!query) return core::make_error(query.error());
  auto& q = query.value();
  if (mnl_socket_sendto(q.socket.get(), q.request, q.request->nlmsg_len) < 0)
    return core::make_error(rtnetlink_error());
  std::vector<default_route> routes;
  const unsigned port = mnl_socket_get_portid(q.socket.get());
  for (int messages = 0; messages < 100'000; ++messages) {
    const auto n = mnl_socket_recvfrom(q.socket.get(), q.buffer.data(), q.buffer.size());
    if (n < 0) return core::make_error(rtnetlink_error());
    const int run = mnl_cb_run(q.buffer.data(), static_cast<std::size_t>(n), q.sequence, port,
                               on_route, &routes);
    if (run == MNL_CB_STOP) return routes;
    if (run < 0) return core::make_error(rtnetlink_error());
  }
  return core::make_error("rtnetlink: the route dump did not end");
}

namespace {

/// Whether the kernel answered with a route (RTM_NEWROUTE).
int on_route_answer(const nlmsghdr* message, void* data) {
  if (message->nlmsg_type == RTM_NEWROUTE) *static_cast<bool*>(data) = true;
  return MNL_CB_OK;
}

}  // namespace

std::string route_problem(const std::string& interface) {
  const unsigned ifindex = ::if_nametoindex(interface.c_str());
  if (ifindex == 0) return fmt::format("{} does not exist", interface);
  auto query = open_route_query(NLM_F_REQUEST, AF_INET);
  if (!query) return query.error();
  auto& q = query.value();
  q.route->rtm_dst_len = 32;
  // The routing table's entry that matches, not the route the kernel would make: with no
  // entry it guesses "on the link" for a socket bound to a device, and answers that.
  q.route->rtm_flags = RTM_F_FIB_MATCH;
  mnl_attr_put_u32(q.request, RTA_DST, htonl(0xC0000201U));  // 192.0.2.1 (RFC 5737)
  mnl_attr_put_u32(q.request, RTA_OIF, ifindex);
  if (mnl_socket_sendto(q.socket.get(), q.request, q.request->nlmsg_len) < 0)
    return rtnetlink_error();
  const auto n = mnl_socket_recvfrom(q.socket.get(), q.buffer.data(), q.buffer.size());
  if (n < 0) return rtnetlink_error();
  bool answered = false;
  const int run = mnl_cb_run(q.buffer.data(), static_cast<std::size_t>(n), q.sequence,
                             mnl_socket_get_portid(q.socket.get()), on_route_answer, &answered);
  const std::string fix = fmt::format(
      "its default route is in a table no rule leads to for it (ip rule add oif {} lookup "
      "TABLE)",
      interface);
  if (run < 0)
    return fmt::format("no route to the Internet through {} ({}): {}", interface,
                       std::strerror(errno), fix);
  if (!answered) return fmt::format("no route to the Internet through {}: {}", interface, fix);
  return {};
}

interface_facts read_interface_facts(const std::string& name, const std::string& sysfs) {
  namespace fs = std::filesystem;
  interface_facts facts;
  facts.name = name;
  const fs::path dir = fs::path(sysfs) / name;
  facts.present = file_exists(dir);
  if (!facts.present) return facts;
  facts.wireless = file_exists(dir / "wireless") || file_exists(dir / "phy80211");
  std::ifstream uevent(dir / "uevent");
  for (std::string line; std::getline(uevent, line);) {
    if (line.starts_with("DEVTYPE=")) facts.devtype = line.substr(8);
  }
  std::error_code ec;
  const auto driver = fs::read_symlink(dir / "device" / "driver", ec);
  if (!ec) facts.driver = driver.filename().string();
  return facts;
}

core::expected<std::vector<uplink>> discover_uplinks() {
  auto routes = read_default_routes();
  if (!routes) return core::make_error(routes.error());
  std::set<std::string> names;
  for (const auto& r : *routes) names.insert(r.interface);
  std::vector<interface_facts> facts;
  for (const auto& name : names) facts.push_back(read_interface_facts(name));
  return uplinks_from(*routes, facts);
}

core::expected<std::vector<core::path_config>> discover_paths(const std::string& root) {
  auto uplinks = discover_uplinks();
  if (!uplinks) return core::make_error("cannot list the uplinks: " + uplinks.error());
  auto paths = paths_of(*uplinks);
  for (auto& p : paths) p = with_link_resolvers(std::move(p), root);
  return paths;
}

namespace {

/// Whether this process is in another network namespace than init's (a lab, a container):
/// the machine's per-link state then describes other links, whatever their index. Unknown
/// (no permission to look at init's) counts as the same.
bool in_own_network_namespace() {
  std::error_code ec_self;
  std::error_code ec_init;
  const auto self = std::filesystem::read_symlink("/proc/self/ns/net", ec_self);
  const auto init = std::filesystem::read_symlink("/proc/1/ns/net", ec_init);
  return !ec_self && !ec_init && self != init;
}

}  // namespace

core::path_config with_link_resolvers(core::path_config path, const std::string& root) {
  if (!path.dns_servers.empty()) return path;
  if (root == "/" && in_own_network_namespace()) {
    path.dns_fallback = true;
    path.dns_found = fmt::format(
        "fleetyd runs in a network namespace of its own, whose links the machine's state "
        "files do not describe: the system's resolvers, through {}",
        path.interface);
    return path;
  }
  const auto found =
      find_link_resolvers(path.interface, ::if_nametoindex(path.interface.c_str()), root);
  if (found.servers.empty()) {
    path.dns_fallback = true;
    path.dns_found = fmt::format(
        "no DNS servers of {} found (systemd-resolved, networkd, NetworkManager, DHCP "
        "leases): the system's resolvers, through {}",
        path.interface, path.interface);
    return path;
  }
  path.dns_servers = found.servers;
  path.dns_found = fmt::format("{} ({})", found.source, found.file);
  return path;
}

}  // namespace fleety::path
