#include "dns/info_db.hpp"

#include <algorithm>
#include <cctype>

namespace fleety::dns {

std::string info_db::normalize(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  std::string out(name);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

info_db::clock_type::time_point info_db::entry::expires() const {
  auto latest = clock_type::time_point::min();
  for (const auto& [path, a] : by_path) latest = std::max(latest, a.expires);
  return latest;
}

void info_db::record(std::string_view name, std::string_view path, std::vector<address> addresses,
                     std::chrono::seconds ttl, clock_type::time_point now) {
  const std::string key = normalize(name);
  if (key.empty()) return;
  auto vetted = vet_answer(key, std::move(addresses), ttl, rules_);
  addresses = std::move(vetted.addresses);
  ttl = vetted.ttl;
  if (addresses.empty()) {
    if (auto it = names_.find(key); it != names_.end()) {
      it->second.by_path.erase(std::string(path));
      if (it->second.by_path.empty()) names_.erase(it);
    }
    return;
  }
  auto& slot = names_[key].by_path[std::string(path)];
  slot.addresses = std::move(addresses);
  slot.expires = now + ttl;
  slot.recorded = now;
  if (names_.size() > max_names_) evict(now);
}

void info_db::evict(clock_type::time_point now) {
  // Expired names first; then, while still over the bound, the one that expires first.
  std::erase_if(names_, [now](const auto& item) { return item.second.expires() <= now; });
  while (names_.size() > max_names_) {
    auto soonest = std::min_element(names_.begin(), names_.end(), [](const auto& a, const auto& b) {
      return a.second.expires() < b.second.expires();
    });
    names_.erase(soonest);
  }
}

std::optional<std::vector<info_db::address>> info_db::addresses(std::string_view name,
                                                                std::string_view path,
                                                                clock_type::time_point now) const {
  auto it = names_.find(normalize(name));
  if (it == names_.end()) return std::nullopt;
  auto p = it->second.by_path.find(path);
  if (p == it->second.by_path.end() || p->second.expires <= now) return std::nullopt;
  return p->second.addresses;
}

std::optional<std::string> info_db::name_of(const address& addr, clock_type::time_point now) const {
  const std::string* best = nullptr;
  auto best_time = clock_type::time_point::min();
  for (const auto& [name, e] : names_) {
    for (const auto& [path, a] : e.by_path) {
      if (a.expires <= now || a.recorded < best_time) continue;
      if (std::find(a.addresses.begin(), a.addresses.end(), addr) != a.addresses.end()) {
        best = &name;
        best_time = a.recorded;
      }
    }
  }
  if (best == nullptr) return std::nullopt;
  return *best;
}

std::optional<info_db::address> info_db::counterpart(const address& addr, std::string_view path,
                                                     clock_type::time_point now) const {
  const auto name = name_of(addr, now);
  if (!name) return std::nullopt;
  const auto own = addresses(*name, path, now);
  if (!own || std::find(own->begin(), own->end(), addr) != own->end()) return std::nullopt;
  for (const auto& candidate : *own) {
    if (candidate.is_v4() == addr.is_v4()) return candidate;
  }
  return std::nullopt;
}

std::size_t info_db::size(clock_type::time_point now) const {
  return static_cast<std::size_t>(
      std::count_if(names_.begin(), names_.end(),
                    [now](const auto& item) { return item.second.expires() > now; }));
}

}  // namespace fleety::dns
