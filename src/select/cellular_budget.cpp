#include "select/cellular_budget.hpp"

#include <algorithm>

namespace fleety::select {

cellular_budget::cellular_budget(std::uint64_t cap_bytes, std::string month,
                                 std::uint64_t used_bytes, bool keep_pending)
    : cap_bytes_(cap_bytes),
      month_(std::move(month)),
      month_bytes_(used_bytes),
      keep_pending_(keep_pending) {}

void cellular_budget::on_app_bytes(std::string_view app, std::string_view path,
                                   std::uint64_t bytes) {
  if (bytes == 0) return;
  key k(app.empty() ? std::string("-") : std::string(app), std::string(path));
  if (app_bytes_.size() < max_pending_keys || app_bytes_.contains(k)) app_bytes_[k] += bytes;
  if (!keep_pending_) return;
  if (pending_usage_.size() >= max_pending_keys && !pending_usage_.contains(k)) return;
  pending_usage_[std::move(k)] += bytes;
}

void cellular_budget::on_ttfb(std::string_view path, std::string_view host,
                              std::chrono::microseconds ttfb) {
  if (!keep_pending_) return;
  key k{std::string(path), std::string(host)};
  if (pending_ttfb_.size() >= max_pending_keys && !pending_ttfb_.contains(k)) return;
  auto& samples = pending_ttfb_[std::move(k)];
  if (samples.size() < max_ttfb_samples) samples.push_back(ttfb);
}

std::vector<std::uint64_t> cellular_budget::on_path_totals(const std::vector<std::uint64_t>& totals,
                                                           const std::vector<bool>& cellular,
                                                           std::string_view month) {
  if (month != month_) {
    month_ = std::string(month);
    month_bytes_ = 0;
  }
  last_totals_.resize(totals.size(), 0);
  std::vector<std::uint64_t> deltas(totals.size(), 0);
  for (std::size_t i = 0; i < totals.size(); ++i) {
    deltas[i] = totals[i] - last_totals_[i];
    last_totals_[i] = totals[i];
    if (i < cellular.size() && cellular[i]) month_bytes_ += deltas[i];
  }
  return deltas;
}

std::optional<bool> cellular_budget::capped_change() {
  const bool now = capped();
  if (now == announced_capped_) return std::nullopt;
  announced_capped_ = now;
  return now;
}

cellular_budget::pending cellular_budget::take_pending() {
  pending out;
  for (auto& [k, bytes] : pending_usage_) out.usage.push_back({k.first, k.second, bytes});
  pending_usage_.clear();
  for (auto& [k, samples] : pending_ttfb_) {
    // The upper median of an even count: the sample at size / 2 once partly sorted.
    auto middle = samples.begin() + static_cast<std::ptrdiff_t>(samples.size() / 2);
    std::nth_element(samples.begin(), middle, samples.end());
    out.ttfb.push_back({k.first, k.second, *middle});
  }
  pending_ttfb_.clear();
  return out;
}

}  // namespace fleety::select
