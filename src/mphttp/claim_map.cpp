#include "mphttp/claim_map.hpp"

#include <algorithm>
#include <cassert>
#include <iterator>

namespace fleety::mphttp {

void claim_map::claim(byte_range range) {
  if (range.size() == 0) return;
  assert(range.end <= total_);
  unclaimed_ -= std::min(unclaimed_, range.size());
  auto next = claimed_.lower_bound(range.begin);
  assert(next == claimed_.end() || next->first >= range.end);
  // Merge with a neighbour on either side so lookups stay O(log n) in the runs.
  if (next != claimed_.end() && next->first == range.end) {
    range.end = next->second;
    next = claimed_.erase(next);
  }
  if (next != claimed_.begin()) {
    auto before = std::prev(next);
    assert(before->second <= range.begin);
    if (before->second == range.begin) {
      before->second = range.end;
      return;
    }
  }
  claimed_.emplace(range.begin, range.end);
}

void claim_map::release(byte_range range) {
  if (range.size() == 0) return;
  auto it = claimed_.upper_bound(range.begin);
  assert(it != claimed_.begin());
  --it;
  assert(it->first <= range.begin && it->second >= range.end);
  const std::uint64_t run_end = it->second;
  if (it->first == range.begin) {
    claimed_.erase(it);
  } else {
    it->second = range.begin;
  }
  if (run_end > range.end) claimed_.emplace(range.end, run_end);
  unclaimed_ += range.size();
}

bool claim_map::is_claimed(std::uint64_t offset) const {
  auto it = claimed_.upper_bound(offset);
  if (it == claimed_.begin()) return false;
  --it;
  return offset < it->second;
}

std::optional<byte_range> claim_map::lowest_unclaimed(std::uint64_t from,
                                                      std::uint64_t limit) const {
  limit = std::min(limit, total_);
  std::uint64_t begin = from;
  auto it = claimed_.upper_bound(begin);
  if (it != claimed_.begin()) {
    auto before = std::prev(it);
    if (before->second > begin) begin = before->second;  // `from` is inside a claimed run
  }
  if (begin >= limit) return std::nullopt;
  const std::uint64_t end = it == claimed_.end() ? limit : std::min(limit, it->first);
  return byte_range{begin, end};
}

std::optional<byte_range> claim_map::highest_unclaimed(std::uint64_t limit) const {
  std::uint64_t end = std::min(limit, total_);
  auto it = claimed_.lower_bound(end);  // first run starting at or after `end`
  if (it != claimed_.begin()) {
    auto before = std::prev(it);
    if (before->second >= end) end = before->first;  // `limit` is inside a claimed run
    if (end == 0) return std::nullopt;
    it = claimed_.lower_bound(end);
    if (it == claimed_.begin()) return byte_range{0, end};
    before = std::prev(it);
    if (before->second >= end) return std::nullopt;  // unreachable after the step above
    return byte_range{before->second, end};
  }
  if (end == 0) return std::nullopt;
  return byte_range{0, end};
}

std::optional<byte_range> choose_claim(const claim_map& claims, const claim_inputs& in) {
  if (claims.unclaimed_bytes() == 0 || in.path >= in.paths.size()) return std::nullopt;
  const path_estimate& self = in.paths[in.path];
  if (self.rate_bytes_per_s <= 0) return std::nullopt;
  const split_plan plan = plan_split(claims.unclaimed_bytes(), in.paths, in.policy);
  const std::uint64_t share = plan.share_bytes[in.path];
  if (share == 0) return std::nullopt;

  std::optional<byte_range> run;
  if (in.side == claim_side::back) run = claims.highest_unclaimed(in.limit);
  const bool from_back = run.has_value();
  if (!run) run = claims.lowest_unclaimed(in.from, in.limit);
  if (!run) return std::nullopt;

  const double by_time = self.rate_bytes_per_s * in.range_time_s;
  const double by_share = std::min(static_cast<double>(share) * in.share_fraction,
                                   self.rate_bytes_per_s * in.max_range_time_s);
  const auto wanted = static_cast<std::uint64_t>(std::max(by_time, by_share));
  std::uint64_t size = std::min(share, std::max(wanted, in.min_range_bytes));
  if (run->size() < size + in.min_range_bytes) size = run->size();  // no sliver left behind
  size = std::min(size, run->size());
  if (from_back) return byte_range{run->end - size, run->end};
  return byte_range{run->begin, run->begin + size};
}

}  // namespace fleety::mphttp
