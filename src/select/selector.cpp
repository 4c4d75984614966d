#include <algorithm>
#include <limits>

#include "select/select.hpp"

namespace fleety::select {

namespace {

/// value / limit − 1 when over the limit, else 0.
double excess(double value, double limit) {
  if (limit <= 0) return value > 0 ? 1.0 : 0.0;
  return std::max(0.0, value / limit - 1.0);
}

}  // namespace

double shortfall(const core::qos_class_config& qos, const path_view& path) {
  if (!path.up) return std::numeric_limits<double>::infinity();
  const auto& q = path.quality;
  double total = 0;
  if (qos.max_rtt && q.rtt)
    total += excess(static_cast<double>(q.rtt->count()), static_cast<double>(qos.max_rtt->count()));
  if (qos.max_jitter && q.jitter)
    total += excess(static_cast<double>(q.jitter->count()),
                    static_cast<double>(qos.max_jitter->count()));
  if (qos.max_loss && q.loss) total += excess(*q.loss, *qos.max_loss);
  if (qos.min_throughput_bps && path.capacity_bps) {
    const auto wanted = static_cast<double>(*qos.min_throughput_bps);
    if (*path.capacity_bps < wanted)
      total += *path.capacity_bps > 0 ? wanted / *path.capacity_bps - 1.0 : 1e6;
  }
  return total;
}

bool meets(const core::qos_class_config& qos, const path_view& path) {
  return path.up && shortfall(qos, path) == 0;
}

selector::selector(std::vector<core::qos_class_config> classes, core::selector_config config)
    : classes_(std::move(classes)), config_(std::move(config)) {
  if (classes_.empty()) classes_.push_back({"default", {}, {}, {}, {}});
  const auto it = std::find_if(classes_.begin(), classes_.end(),
                               [&](const auto& c) { return c.name == config_.default_class; });
  default_class_ = it == classes_.end() ? 0 : static_cast<std::size_t>(it - classes_.begin());
  tracks_.resize(classes_.size());
}

std::size_t selector::class_index(std::string_view qos) const {
  for (std::size_t i = 0; i < classes_.size(); ++i)
    if (classes_[i].name == qos) return i;
  return default_class_;
}

const core::qos_class_config& selector::qos_class(std::string_view qos) const {
  return classes_[class_index(qos)];
}

void selector::update(const std::vector<path_view>& paths, clock_type::time_point now) {
  paths_ = paths;
  for (std::size_t c = 0; c < classes_.size(); ++c) {
    auto& tracks = tracks_[c];
    tracks.resize(paths.size());
    for (std::size_t p = 0; p < paths.size(); ++p) {
      auto& t = tracks[p];
      if (meets(classes_[c], paths[p])) {
        if (!t.met_since) t.met_since = now;
        t.missed_since.reset();
        if (t.on_probation && now - *t.met_since >= config_.hysteresis) t.on_probation = false;
      } else {
        if (!t.missed_since) t.missed_since = now;
        t.met_since.reset();
        t.on_probation = true;
      }
    }
  }
}

bool selector::eligible(const track& t, clock_type::time_point now) const {
  return t.met_since && (!t.on_probation || now - *t.met_since >= config_.hysteresis);
}

bool selector::allowed(std::size_t path, bool cellular_capped) const {
  if (!paths_[path].up) return false;
  if (!cellular_capped || !paths_[path].cellular) return true;
  // Over the cap: cellular only when nothing else is up.
  return std::none_of(paths_.begin(), paths_.end(),
                      [](const path_view& p) { return p.up && !p.cellular; });
}

std::optional<std::size_t> selector::choose(std::string_view qos, bool cellular_capped,
                                            clock_type::time_point now) const {
  const std::size_t c = class_index(qos);
  const auto& tracks = tracks_[c];
  for (std::size_t p = 0; p < paths_.size(); ++p)
    if (allowed(p, cellular_capped) && eligible(tracks[p], now)) return p;
  for (std::size_t p = 0; p < paths_.size(); ++p)
    if (allowed(p, cellular_capped) && meets(classes_[c], paths_[p])) return p;
  std::optional<std::size_t> best;
  double best_shortfall = std::numeric_limits<double>::infinity();
  for (std::size_t p = 0; p < paths_.size(); ++p) {
    if (!allowed(p, cellular_capped)) continue;
    const double s = shortfall(classes_[c], paths_[p]);
    if (!best || s < best_shortfall) {
      best = p;
      best_shortfall = s;
    }
  }
  return best;
}

bool selector::should_reset(std::string_view qos, std::size_t path, bool cellular_capped,
                            clock_type::time_point now) const {
  if (path >= paths_.size()) return false;
  const auto better = choose(qos, cellular_capped, now);
  if (!better || *better == path) return false;
  if (!paths_[path].up) return true;
  const std::size_t c = class_index(qos);
  const auto& t = tracks_[c][path];
  return t.missed_since && now - *t.missed_since >= config_.reset_after &&
         meets(classes_[c], paths_[*better]);
}

}  // namespace fleety::select
