#pragma once
// Which bytes of an object some path is fetching (or has fetched), and which nobody has
// claimed yet. Paths claim ranges as they need work (DESIGN.md: "ranges handed out in
// order"), give back what they could not fetch, and the next claim comes from what is
// left. Pure data structure: no I/O, no clock.

#include <cstdint>
#include <map>
#include <optional>
#include <span>

#include "mphttp/byte_range.hpp"
#include "mphttp/scheduler.hpp"

namespace fleety::mphttp {

class claim_map {
 public:
  explicit claim_map(std::uint64_t total) : total_(total), unclaimed_(total) {}

  std::uint64_t total() const { return total_; }
  std::uint64_t unclaimed_bytes() const { return unclaimed_; }

  /// Marks `range` claimed; it must be unclaimed (and inside the object).
  void claim(byte_range range);
  /// Gives `range` back (a path failed or dropped it); it must be claimed.
  void release(byte_range range);
  bool is_claimed(std::uint64_t offset) const;

  /// The unclaimed run that starts at the lowest unclaimed offset ≥ `from`, cut at `limit`.
  std::optional<byte_range> lowest_unclaimed(std::uint64_t from, std::uint64_t limit) const;
  /// The unclaimed run that ends at the highest unclaimed offset < `limit`.
  std::optional<byte_range> highest_unclaimed(std::uint64_t limit) const;

 private:
  std::uint64_t total_;
  std::uint64_t unclaimed_;
  std::map<std::uint64_t, std::uint64_t> claimed_;  ///< begin → end; disjoint, merged when adjacent
};

/// Where a path takes its next range from.
enum class claim_side {
  front,  ///< the lowest unclaimed bytes: what the app needs soonest
  back,   ///< the highest unclaimed bytes below a limit, while the first path streams the
          ///< head of the object without a break (paper §4.2: it keeps its first response)
};

/// Everything the next-claim decision needs, as numbers.
struct claim_inputs {
  std::size_t path = 0;                  ///< who asks; index into `estimates`
  std::span<const path_estimate> paths;  ///< every path of the fetch, in cost order; a
                                         ///< failed path has rate 0; `lead_s` is when the
                                         ///< path could start on new bytes (its backlog)
  split_policy policy;
  claim_side side = claim_side::front;
  std::uint64_t from = 0;     ///< front: no bytes before this (the app's delivery point)
  std::uint64_t limit = 0;    ///< nothing at or past this (memory window; back: where it starts)
  double range_time_s = 0.3;  ///< a range should take about this long on the path
  std::uint64_t min_range_bytes = 64 * 1024;
  /// Far from the end a range may take this fraction of the path's share of what is left
  /// (guided self-scheduling), up to `max_range_time_s` of its rate: each range boundary
  /// costs the path a few packets of rate (the server's response ends, the next starts),
  /// so a long download gets few long ranges early and short ones only near its end, where
  /// they balance the paths. 0: ranges of `range_time_s` only.
  double share_fraction = 0;
  double max_range_time_s = 0;
};

/// The next range path `in.path` should fetch, or nothing (the plan gives it no more bytes
/// now, or nothing is left within the limit). The plan is DESIGN.md's rule on everything
/// still unclaimed, with each path's backlog as its lead: the path's share of that caps the
/// range, so near the end the ranges shrink to the equal-completion split (cost mode: the
/// cellular share of case 3, nothing in case 1). Otherwise a range is about
/// `range_time_s` of the path's rate, or `share_fraction` of its share when that is more
/// (at most `max_range_time_s` of its rate), at least `min_range_bytes`; a sliver smaller
/// than that left next to it is taken along.
std::optional<byte_range> choose_claim(const claim_map& claims, const claim_inputs& in);

}  // namespace fleety::mphttp
