#include "path/mptcp_endpoints.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

namespace fleety::path {

namespace asio = boost::asio;

namespace {

/// The interface's addresses now (getifaddrs), in the kernel's order: primary first.
std::vector<asio::ip::address> addresses_of(const std::string& interface) {
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

}  // namespace

std::vector<planned_endpoint> wanted_endpoints(const std::vector<path_addresses>& paths) {
  std::vector<planned_endpoint> wanted;
  for (const auto& p : paths) {
    if (p.ifindex == 0) continue;
    // One subflow per path and family: its first (primary) IPv4 and IPv6 address.
    bool have_v4 = false;
    bool have_v6 = false;
    for (const auto& a : p.addresses) {
      if (!net::endpoint_address(a) || (a.is_v4() ? have_v4 : have_v6)) continue;
      (a.is_v4() ? have_v4 : have_v6) = true;
      wanted.push_back({{a, p.ifindex, p.backup}, p.path});
    }
  }
  return wanted;
}

bool changes_endpoints(const link_state& before, const link_state& after) {
  return before.exists != after.exists || before.addresses != after.addresses;
}

std::vector<std::uint8_t> still_ours(const std::vector<net::mptcp_endpoint>& existing,
                                     const std::vector<std::uint8_t>& ours) {
  std::vector<std::uint8_t> still;
  for (const auto& e : existing) {
    if (std::find(ours.begin(), ours.end(), e.id) != ours.end()) still.push_back(e.id);
  }
  return still;
}

std::unique_ptr<mptcp_endpoints> mptcp_endpoints::start(monitor& links,
                                                        const core::config& config) {
  auto manager = net::mptcp_path_manager::open();
  if (!manager) {
    spdlog::warn("{}: relayed MPTCP flows get no subflows on other paths", manager.error());
    return nullptr;
  }
  auto self =
      std::unique_ptr<mptcp_endpoints>(new mptcp_endpoints(config, std::move(manager).value()));
  self->raise_limits();
  if (links.watching_links()) {
    self->links_ =
        links.subscribe_links([me = self.get()](const link_state& before, const link_state& after) {
          me->on_link_change(before, after);
        });
  } else {
    spdlog::warn(
        "mptcp: the path monitor watches no links: endpoints follow the addresses at "
        "start only");
  }
  self->sync();
  return self;
}

mptcp_endpoints::mptcp_endpoints(const core::config& config,
                                 std::unique_ptr<net::mptcp_path_manager> manager)
    : config_(config), manager_(std::move(manager)) {}

mptcp_endpoints::~mptcp_endpoints() {
  links_ = monitor::link_subscription{};  // no sync from here on
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

void mptcp_endpoints::on_link_change(const link_state& before, const link_state& after) {
  if (changes_endpoints(before, after)) sync();
}

void mptcp_endpoints::raise_limits() {
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
  spdlog::info("mptcp: limits: subflows {} → {} per connection", limits->subflows, wanted.subflows);
}

void mptcp_endpoints::sync() {
  auto existing = manager_->endpoints();
  if (!existing) {
    spdlog::warn("{}: endpoints not updated", existing.error());
    return;
  }
  std::vector<path_addresses> paths;
  for (const auto& p : config_.paths) {
    const int ifindex = static_cast<int>(::if_nametoindex(p.interface.c_str()));
    paths.push_back({p.name, ifindex, p.mptcp_backup,
                     ifindex == 0 ? std::vector<asio::ip::address>{} : addresses_of(p.interface)});
  }
  const auto planned = wanted_endpoints(paths);
  std::vector<net::wanted_endpoint> wanted;
  for (const auto& w : planned) wanted.push_back(w.endpoint);
  const auto changes = net::plan_endpoint_changes(*existing, ours_, wanted);
  ours_ = still_ours(*existing, ours_);
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
    for (const auto& w : planned)
      if (w.endpoint.address == e.address) path = w.path;
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

}  // namespace fleety::path
