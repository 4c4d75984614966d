#pragma once
// The MPHTTP split (DESIGN.md "The MPHTTP scheduler", paper §4.2): how many bytes
// of an object each path fetches so that all finish together, with Wi-Fi
// priority. Pure functions of numbers: no sockets, no clocks.

#include <cstdint>
#include <span>
#include <vector>

#include "mphttp/byte_range.hpp"

namespace fleety::mphttp {

/// What the scheduler knows of one path when it plans.
struct path_estimate {
  double rate_bytes_per_s = 0;  ///< R_i, expected goodput
  /// Time from now until the path's first byte of a new range would arrive: RTT_i for
  /// a connected idle path, 2·RTT_i when a connection must be opened first, plus the
  /// time the path still needs for the work it already has (its backlog).
  double lead_s = 0;
};

/// Seconds until a new request on a path brings data at full rate: one RTT on a
/// connected path (a warm connection); on a new connection one more for the handshake
/// plus what slow start costs (cwnd doubling from the initial 10 segments up to the
/// path's BDP loses about RTT·(log2(BDP / initial window) − 1) against a full-rate start).
double request_lead_s(double rate_bytes_per_s, double rtt_s, bool connected);

/// The planning policy.
struct split_policy {
  /// true: Wi-Fi (the cheapest paths) first within `tolerance_s`; false: pure aggregation.
  bool cost_aware = true;
  double tolerance_s = 1.0;  ///< T_tol
};

/// Which of DESIGN.md's cases produced a plan (for logs, metrics and tests).
enum class split_case {
  single_path,       ///< case 1: the cheapest path alone finishes within T_tol
  equal_completion,  ///< case 2 (or aggregate mode): all used paths finish at the same T
  tolerance_fill,    ///< case 3: cheaper paths filled up to T_tol, the next takes the rest
};

struct split_plan {
  std::vector<std::uint64_t> share_bytes;  ///< per path, same order as the input; sums to D
  split_case kind = split_case::equal_completion;
  double completion_s = 0;  ///< when the last used path is expected to finish
};

/// Equal completion over the paths: T = (D + Σ R_i·lead_i) / Σ R_i, D_i = R_i·(T − lead_i);
/// paths whose share would be ≤ 0 are dropped and T recomputed. Shares are whole bytes
/// summing exactly to `total_bytes`. Paths with rate ≤ 0 get nothing; if no path has a
/// positive rate, the first path gets everything.
split_plan split_equal_completion(std::uint64_t total_bytes, std::span<const path_estimate> paths);

/// DESIGN.md's full rule. `paths` must be in cost order (cheapest first).
/// Cost-aware: 1. the first path alone if lead_0 + D/R_0 ≤ T_tol; 2. equal completion over
/// all paths if its T > T_tol; 3. otherwise the smallest prefix of paths whose equal
/// completion fits in T_tol: all but its last path are filled up to T_tol and its last
/// path takes the rest. Aggregate: equal completion over all paths.
split_plan plan_split(std::uint64_t total_bytes, std::span<const path_estimate> paths,
                      const split_policy& policy);

/// Issue 17, split when it pays: the smallest object that ends sooner, by at least
/// `margin_s`, when its rest is fetched over the other paths too than on the first path
/// alone. Counted from the moment the size is known (the first path's first byte): the
/// first path goes on at its rate (`paths[0].lead_s` is ignored), each other path starts
/// after its lead (a round trip; a handshake and slow start on a new connection). Splitting
/// over path i beats path 0 alone by D·r_i/(r_0·(r_0+r_i)) − r_i·L_i/(r_0+r_i), so the
/// threshold is min over i of (margin·(r_0+r_i) + r_i·L_i)·r_0/r_i. 0 when path 0 has no
/// rate (anything may split); UINT64_MAX when no other path has one.
std::uint64_t split_pays_bytes(std::span<const path_estimate> paths, double margin_s);

/// Issue 17, split without waiting: the parts of an object expected to be about
/// `expected_bytes` long that each path asks for at once, before the first answer says
/// the size. The object is shared by equal completion in consecutive regions from 0
/// (path 0's first; a path the plan leaves out gets an empty range). A path asks for its
/// region but the fraction `kept_back` of it (none if that is below `min_part_bytes`):
/// path 0 its front, every other path its back. The bytes between are claimed as the
/// fetch goes, at the rates it measures then, so that an estimate some percent off (a
/// cold connection's slow start, a shaper's burst) leaves no path idle at the end. Path
/// 0's part is at least `min_first_bytes`; a region below `min_part_bytes` is not worth a
/// request and goes to the path before it; a part below it is not asked for (the path
/// waits for the size).
std::vector<byte_range> plan_ahead(std::uint64_t expected_bytes,
                                   std::span<const path_estimate> paths,
                                   std::uint64_t min_first_bytes, std::uint64_t min_part_bytes,
                                   double kept_back);

}  // namespace fleety::mphttp
