#include "mphttp/path_estimator.hpp"

#include <algorithm>
#include <iterator>

namespace fleety::mphttp {
namespace {
// Weight of a new sample. High on purpose: paths change quickly on a phone, and
// each sample already averages over a second of traffic (windowed_rate).
constexpr double rate_gain = 0.5;
constexpr double rtt_gain = 0.25;
}  // namespace

path_estimator::path_estimator(std::uint64_t prior_rate_bps, std::chrono::microseconds prior_rtt,
                               bool rate_measured)
    : rate_bytes_per_s_(static_cast<double>(prior_rate_bps) / 8.0),
      rtt_s_(static_cast<double>(prior_rtt.count()) / 1e6),
      prior_measured_(rate_measured) {}

void path_estimator::on_rate(double bytes_per_s) {
  if (bytes_per_s <= 0) return;
  rate_bytes_per_s_ = samples_ == 0
                          ? bytes_per_s
                          : rate_bytes_per_s_ + rate_gain * (bytes_per_s - rate_bytes_per_s_);
  ++samples_;
}

void path_estimator::on_rtt(std::chrono::microseconds rtt) {
  if (rtt.count() <= 0) return;
  const double sample = static_cast<double>(rtt.count()) / 1e6;
  rtt_s_ = rtt_samples_ == 0 ? sample : rtt_s_ + rtt_gain * (sample - rtt_s_);
  ++rtt_samples_;
}

void windowed_rate::start(double now_s) {
  samples_.clear();
  samples_.emplace_back(now_s, 0);
}

void windowed_rate::add(double now_s, std::uint64_t bytes) {
  if (samples_.empty()) return;
  samples_.emplace_back(now_s, samples_.back().second + bytes);
  // Keep one sample at or before the window's start as the base of the measurement.
  while (samples_.size() > 2 && samples_[1].first <= now_s - window_s_) samples_.pop_front();
  while (samples_.size() > max_samples) samples_.pop_front();
}

std::optional<double> windowed_rate::rate(double now_s) const {
  if (samples_.size() < 2) return std::nullopt;
  const auto& base = samples_.front();
  const double span = now_s - base.first;
  if (span < min_span_s_ - 1e-9) return std::nullopt;
  return static_cast<double>(samples_.back().second - base.second) / span;
}

std::optional<double> windowed_rate::recent_rate(double now_s, double span_s) const {
  if (samples_.size() < 2 || span_s <= 0) return std::nullopt;
  const double since = now_s - span_s;
  if (samples_.front().first > since + 1e-9) return std::nullopt;  // a younger streak
  // The last sample at or before `since`: the base of the measurement.
  auto after = std::upper_bound(
      samples_.begin(), samples_.end(), since,
      [](double t, const std::pair<double, std::uint64_t>& sample) { return t < sample.first; });
  const auto& base = *std::prev(after);
  const double span = now_s - base.first;
  if (span <= 0) return std::nullopt;
  return static_cast<double>(samples_.back().second - base.second) / span;
}

}  // namespace fleety::mphttp
