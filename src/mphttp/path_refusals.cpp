#include "mphttp/path_refusals.hpp"

#include <algorithm>

namespace fleety::mphttp {

path_refusals::clock::time_point path_refusals::record(
    std::string_view host, std::string_view path, refusal why, unsigned status,
    std::optional<std::chrono::seconds> retry_after, clock::time_point now) {
  ++totals_[why];
  auto key = std::make_pair(std::string(host), std::string(path));
  auto it = entries_.find(key);
  if (it == entries_.end()) {
    make_room(now);
    it = entries_.emplace(key, entry{key.first, key.second}).first;
  } else if (now - it->second.until > max_backoff) {
    it->second.strikes = 0;  // long past: start again
  }
  auto& e = it->second;
  e.why = why;
  e.status = status;
  ++e.strikes;
  std::chrono::seconds hold = first_backoff;
  if (retry_after) {
    // RFC 9110 §10.2.3: the node says when to ask again.
    hold = std::clamp(*retry_after, std::chrono::seconds(1), max_retry_after);
  } else {
    for (unsigned i = 1; i < e.strikes && hold < max_backoff; ++i) hold *= 2;
    hold = std::min(hold, max_backoff);
  }
  e.until = now + hold;
  return e.until;
}

bool path_refusals::refused(std::string_view host, std::string_view path,
                            clock::time_point now) const {
  const auto it = entries_.find(std::make_pair(std::string(host), std::string(path)));
  return it != entries_.end() && it->second.until > now;
}

std::vector<path_refusals::entry> path_refusals::active(clock::time_point now) const {
  std::vector<entry> out;
  for (const auto& [key, e] : entries_)
    if (e.until > now) out.push_back(e);
  return out;
}

void path_refusals::make_room(clock::time_point now) {
  if (entries_.size() < max_entries) return;
  // Expired ones go first (their strikes with them), then the one that ends soonest.
  std::erase_if(entries_, [now](const auto& kv) { return kv.second.until <= now; });
  if (entries_.size() < max_entries) return;
  entries_.erase(std::min_element(
      entries_.begin(), entries_.end(),
      [](const auto& a, const auto& b) { return a.second.until < b.second.until; }));
}

}  // namespace fleety::mphttp
