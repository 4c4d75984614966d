#pragma once
// One round of the selector (paper §4.4, issue 6): after each path monitor round, every
// path's view goes into the selector, and the relayed flows that must leave their path are
// named with where they would go. Pure: the flows are reset (and the switches recorded) by
// path_supervisor.

#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

#include "select/select.hpp"

namespace fleety::select {

/// A relayed flow that must leave its path: it is reset so that its app reconnects, and
/// its new connection takes `to` (what selector::choose gives now).
struct flow_move {
  std::uint64_t flow = 0;  ///< its id in the flow table
  std::size_t from = 0;    ///< the path it is on
  std::size_t to = 0;      ///< the path a new flow of its class takes now
  bool path_down = false;  ///< `from` is down (else: it has missed the class for too long)

  bool operator==(const flow_move&) const = default;
};

/// Feeds `views` (every path, in preference order) to `s` at `now`, then returns the flows
/// of `flows` that should be reset (selector::should_reset with `cellular_capped`), in id
/// order. A flow whose reset is already under way (no reset function left) is not named
/// again.
std::vector<flow_move> selector_round(selector& s, const std::vector<path_view>& views,
                                      const std::map<std::uint64_t, flow_table::flow>& flows,
                                      bool cellular_capped, clock_type::time_point now);

}  // namespace fleety::select
