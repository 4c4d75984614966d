#include <fmt/format.h>
#include <fmt/ranges.h>
#include <grp.h>
#include <pwd.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "intercept/intercept.hpp"

namespace fleety::intercept {
namespace {

/// Sorted, without repeats: nft refuses a set with an element twice.
template <class T>
std::vector<T> unique_sorted(std::vector<T> values) {
  std::sort(values.begin(), values.end());
  values.erase(std::unique(values.begin(), values.end()), values.end());
  return values;
}

}  // namespace

std::string build_access_rules(const access_spec& spec) {
  const auto tcp = unique_sorted(spec.tcp_ports);
  const auto udp = unique_sorted(spec.udp_ports);
  auto uids = spec.uids;
  uids.push_back(0);
  uids = unique_sorted(std::move(uids));
  std::string rules;
  rules += removal_script(spec.owned, access_table_name);
  rules += fmt::format("table inet {} {{\n", access_table_name);
  if (spec.owned) rules += "  flags owner;\n";
  rules += "  chain output {\n";
  // After the nat hook (-100): a redirected connection already has fleetyd's port here.
  rules += "    type filter hook output priority 0; policy accept;\n";
  // No conntrack unless interception is on (its nat needs it anyway): tracking every
  // connection to the proxy made a flood of 3,000 lose connects (e2e.limits).
  // An enrolled app's connections and DNS, redirected by fleety's own table: whoever
  // runs it, root enrolled it (a configured [[app]]) or fleetyd did (`fleety run`).
  if (spec.redirects) rules += "    ct status dnat return\n";
  rules += fmt::format("    meta skuid {{ {} }} return\n", fmt::join(uids, ", "));
  if (spec.gid) rules += fmt::format("    meta skgid {} return\n", *spec.gid);
  // A reset (and port unreachable) fails the connect at once: the user sees a refusal,
  // not a hang.
  if (!tcp.empty()) {
    rules += fmt::format(
        "    fib daddr type local tcp dport {{ {} }} tcp flags & (syn | ack) == syn reject with "
        "tcp reset comment \"{}\"\n",
        fmt::join(tcp, ", "), spec.who);
  }
  if (!udp.empty()) {
    rules += fmt::format("    fib daddr type local udp dport {{ {} }} reject comment \"{}\"\n",
                         fmt::join(udp, ", "), spec.who);
  }
  rules += "  }\n}\n";
  return rules;
}

core::expected<group_members> members_of_group(const std::string& name) {
  group_members out;
  out.name = name;
  std::vector<char> buffer(16 * 1024);
  ::group entry{};
  ::group* found = nullptr;
  int err = 0;
  // Bounded: a group file that needs more than 1 MiB for one group is not one we serve.
  while ((err = ::getgrnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found)) ==
             ERANGE &&
         buffer.size() < (1U << 20))
    buffer.resize(buffer.size() * 2);
  if (err != 0)
    return core::make_error(fmt::format("cannot look up group '{}': {}", name, std::strerror(err)));
  if (found == nullptr) return core::make_error(fmt::format("there is no group '{}'", name));
  out.gid = entry.gr_gid;
  std::vector<char> user_buffer(16 * 1024);
  for (char** member = entry.gr_mem; member != nullptr && *member != nullptr; ++member) {
    ::passwd user{};
    ::passwd* user_found = nullptr;
    if (::getpwnam_r(*member, &user, user_buffer.data(), user_buffer.size(), &user_found) == 0 &&
        user_found != nullptr) {
      out.uids.push_back(user.pw_uid);
      out.users.emplace_back(*member);
    }
  }
  return out;
}

access_guard::access_guard(access_spec spec) : spec_(std::move(spec)) {}

core::expected<std::unique_ptr<access_guard>> access_guard::start(access_spec spec) {
  std::unique_ptr<access_guard> guard(new access_guard(std::move(spec)));
  auto applied = guard->nft_.run(build_access_rules(guard->spec_));
  if (!applied && guard->spec_.owned) {
    // A kernel before 5.12 knows no table owner: the rules then outlive a crash, which
    // only keeps refusing others at ports nobody listens on.
    guard->spec_.owned = false;
    applied = guard->nft_.run(build_access_rules(guard->spec_));
  }
  if (!applied) return core::make_error(applied.error());
  guard->loaded_ = true;
  return guard;
}

core::expected<bool> access_guard::update_members(std::vector<std::uint32_t> uids,
                                                  std::optional<std::uint32_t> gid) {
  access_spec next = spec_;
  next.uids = std::move(uids);
  next.gid = gid;
  auto applied = nft_.run(build_access_rules(next));
  if (!applied) return applied;
  spec_ = std::move(next);
  return true;
}

access_guard::~access_guard() {
  if (!loaded_) return;
  if (auto removed = nft_.run(removal_script(spec_.owned, access_table_name)); !removed)
    spdlog::error("access: cannot remove table inet {}: {}", access_table_name, removed.error());
}

}  // namespace fleety::intercept
