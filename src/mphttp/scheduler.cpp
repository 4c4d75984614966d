#include "mphttp/scheduler.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace fleety::mphttp {
namespace {

/// Turns real-valued shares into whole bytes that sum exactly to `total`: rounds each
/// to the nearest byte (so 4 999 999.9999 is 5 000 000), then the largest share absorbs
/// the difference.
std::vector<std::uint64_t> to_whole_bytes(const std::vector<double>& shares, std::uint64_t total) {
  std::vector<std::uint64_t> whole(shares.size(), 0);
  if (whole.empty()) return whole;
  std::uint64_t assigned = 0;
  for (std::size_t i = 0; i < shares.size(); ++i) {
    const double clamped = std::clamp(shares[i], 0.0, static_cast<double>(total));
    whole[i] = static_cast<std::uint64_t>(std::llround(clamped));
    assigned += whole[i];
  }
  const auto largest =
      static_cast<std::size_t>(std::max_element(shares.begin(), shares.end()) - shares.begin());
  while (assigned > total) {
    // Take the excess from the largest shares first.
    auto biggest = std::max_element(whole.begin(), whole.end());
    const std::uint64_t cut = std::min(*biggest, assigned - total);
    *biggest -= cut;
    assigned -= cut;
  }
  whole[largest] += total - assigned;
  return whole;
}

/// Equal completion over the paths flagged in `used`; clears flags of dropped paths.
split_plan equal_completion_over(std::uint64_t total_bytes, std::span<const path_estimate> paths,
                                 std::vector<bool> used) {
  const auto d = static_cast<double>(total_bytes);
  for (std::size_t i = 0; i < paths.size(); ++i) {
    if (paths[i].rate_bytes_per_s <= 0) used[i] = false;
  }
  split_plan plan;
  plan.kind = split_case::equal_completion;
  std::vector<double> shares(paths.size(), 0.0);
  // Each round drops at least one path or ends, so at most N rounds.
  for (std::size_t round = 0; round <= paths.size(); ++round) {
    double rate_sum = 0;
    double weighted_lead = 0;
    for (std::size_t i = 0; i < paths.size(); ++i) {
      if (!used[i]) continue;
      rate_sum += paths[i].rate_bytes_per_s;
      weighted_lead += paths[i].rate_bytes_per_s * paths[i].lead_s;
    }
    if (rate_sum <= 0) break;
    const double t = (d + weighted_lead) / rate_sum;
    bool dropped = false;
    for (std::size_t i = 0; i < paths.size(); ++i) {
      if (!used[i]) continue;
      shares[i] = paths[i].rate_bytes_per_s * (t - paths[i].lead_s);
      if (shares[i] <= 0) {
        used[i] = false;
        shares[i] = 0;
        dropped = true;
      }
    }
    plan.completion_s = t;
    if (!dropped) break;
    std::fill(shares.begin(), shares.end(), 0.0);
  }
  if (std::none_of(used.begin(), used.end(), [](bool u) { return u; })) {
    // No usable estimate at all: the first path carries the object.
    std::fill(shares.begin(), shares.end(), 0.0);
    if (!shares.empty()) shares[0] = d;
    plan.kind = split_case::single_path;
    plan.completion_s = paths.empty() || paths[0].rate_bytes_per_s <= 0
                            ? 0
                            : paths[0].lead_s + d / paths[0].rate_bytes_per_s;
  }
  plan.share_bytes = to_whole_bytes(shares, total_bytes);
  return plan;
}

}  // namespace

split_plan split_equal_completion(std::uint64_t total_bytes, std::span<const path_estimate> paths) {
  return equal_completion_over(total_bytes, paths, std::vector<bool>(paths.size(), true));
}

split_plan plan_split(std::uint64_t total_bytes, std::span<const path_estimate> paths,
                      const split_policy& policy) {
  if (paths.empty()) return {};
  if (!policy.cost_aware || paths.size() == 1) {
    return split_equal_completion(total_bytes, paths);
  }
  const auto d = static_cast<double>(total_bytes);
  const path_estimate& cheapest = paths[0];
  // Case 1: the cheapest path alone is fast enough.
  if (cheapest.rate_bytes_per_s > 0 &&
      cheapest.lead_s + d / cheapest.rate_bytes_per_s <= policy.tolerance_s) {
    split_plan plan;
    plan.kind = split_case::single_path;
    plan.share_bytes.assign(paths.size(), 0);
    plan.share_bytes[0] = total_bytes;
    plan.completion_s = cheapest.lead_s + d / cheapest.rate_bytes_per_s;
    return plan;
  }
  // Case 2: even all paths together need more than T_tol.
  split_plan everyone = split_equal_completion(total_bytes, paths);
  if (everyone.completion_s > policy.tolerance_s) return everyone;
  // Case 3: the smallest prefix that can finish within T_tol; its cheaper paths work
  // until T_tol and its most expensive path takes what is left.
  for (std::size_t k = 2; k <= paths.size(); ++k) {
    std::vector<bool> prefix(paths.size(), false);
    std::fill(prefix.begin(), prefix.begin() + static_cast<std::ptrdiff_t>(k), true);
    split_plan candidate = equal_completion_over(total_bytes, paths, prefix);
    if (candidate.completion_s > policy.tolerance_s && k < paths.size()) continue;
    std::vector<double> shares(paths.size(), 0.0);
    double filled = 0;
    for (std::size_t i = 0; i + 1 < k; ++i) {
      shares[i] = std::max(0.0, paths[i].rate_bytes_per_s * (policy.tolerance_s - paths[i].lead_s));
      shares[i] = std::min(shares[i], d - filled);
      filled += shares[i];
    }
    shares[k - 1] = d - filled;
    split_plan plan;
    plan.kind = split_case::tolerance_fill;
    plan.share_bytes = to_whole_bytes(shares, total_bytes);
    const path_estimate& last = paths[k - 1];
    plan.completion_s =
        last.rate_bytes_per_s > 0 ? last.lead_s + shares[k - 1] / last.rate_bytes_per_s : 0;
    plan.completion_s =
        std::max(plan.completion_s, std::min(policy.tolerance_s, everyone.completion_s));
    return plan;
  }
  return everyone;
}

double request_lead_s(double rate_bytes_per_s, double rtt_s, bool connected) {
  if (connected) return rtt_s;
  constexpr double initial_window_bytes = 10 * 1448;
  const double bdp = rate_bytes_per_s * rtt_s;
  const double slow_start =
      bdp > 2 * initial_window_bytes ? rtt_s * (std::log2(bdp / initial_window_bytes) - 1) : 0;
  return 2 * rtt_s + slow_start;
}

std::uint64_t split_pays_bytes(std::span<const path_estimate> paths, double margin_s) {
  constexpr auto never = std::numeric_limits<std::uint64_t>::max();
  if (paths.empty()) return never;
  const double r0 = paths[0].rate_bytes_per_s;
  if (r0 <= 0) return 0;
  double best = std::numeric_limits<double>::infinity();
  for (std::size_t i = 1; i < paths.size(); ++i) {
    const double ri = paths[i].rate_bytes_per_s;
    if (ri <= 0) continue;
    const double lead = std::max(0.0, paths[i].lead_s);
    best = std::min(best, (std::max(0.0, margin_s) * (r0 + ri) + ri * lead) * r0 / ri);
  }
  if (!std::isfinite(best) || best >= static_cast<double>(never)) return never;
  return static_cast<std::uint64_t>(std::ceil(best));
}

std::vector<byte_range> plan_ahead(std::uint64_t expected_bytes,
                                   std::span<const path_estimate> paths,
                                   std::uint64_t min_first_bytes, std::uint64_t min_part_bytes,
                                   double kept_back) {
  std::vector<byte_range> out(paths.size());
  if (paths.empty() || expected_bytes == 0) return out;
  const auto plan = split_equal_completion(expected_bytes, paths);
  std::vector<std::uint64_t> share = plan.share_bytes;
  // Path 0's part at least min_first_bytes: taken from the others, from the back.
  if (share[0] < min_first_bytes) {
    std::uint64_t missing = std::min(min_first_bytes, expected_bytes) - share[0];
    for (std::size_t i = share.size(); i-- > 1 && missing > 0;) {
      const std::uint64_t moved = std::min(missing, share[i]);
      share[i] -= moved;
      share[0] += moved;
      missing -= moved;
    }
  }
  // A part too small for its request goes to the path before it (which then runs on).
  for (std::size_t i = share.size(); i-- > 1;) {
    if (share[i] > 0 && share[i] < min_part_bytes) {
      share[i - 1] += share[i];
      share[i] = 0;
    }
  }
  // What a path keeps back of its region: none when that is too small for a request of
  // its own (a short object: its estimate's error is as small).
  const double fraction = std::clamp(kept_back, 0.0, 1.0);
  auto part_of = [fraction, min_part_bytes](std::uint64_t region) {
    const auto back =
        static_cast<std::uint64_t>(std::floor(fraction * static_cast<double>(region)));
    return back < min_part_bytes ? region : region - back;
  };
  std::uint64_t at = 0;
  for (std::size_t i = 0; i < share.size(); ++i) {
    const std::uint64_t end = at + share[i];
    if (i == 0) {
      out[i] = {0, std::min(end, std::max(part_of(share[i]), min_first_bytes))};
    } else if (const auto part = part_of(share[i]); part >= min_part_bytes) {
      out[i] = {end - part, end};
    } else {
      out[i] = {end, end};
    }
    at = end;
  }
  return out;
}

}  // namespace fleety::mphttp
