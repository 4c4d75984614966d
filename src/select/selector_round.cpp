#include "select/selector_round.hpp"

namespace fleety::select {

std::vector<flow_move> selector_round(selector& s, const std::vector<path_view>& views,
                                      const std::map<std::uint64_t, flow_table::flow>& flows,
                                      bool cellular_capped, clock_type::time_point now) {
  s.update(views, now);
  std::vector<flow_move> moves;
  for (const auto& [id, f] : flows) {
    if (!f.reset || !s.should_reset(f.qos, f.path, cellular_capped, now)) continue;
    const auto to = s.choose(f.qos, cellular_capped, now).value_or(f.path);
    moves.push_back({id, f.path, to, f.path < views.size() && !views[f.path].up});
  }
  return moves;
}

}  // namespace fleety::select
