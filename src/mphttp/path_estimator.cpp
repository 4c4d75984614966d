#include "mphttp/path_estimator.hpp"

namespace fleety::mphttp {
namespace {
// Weight of a new sample. High on purpose: paths change quickly on a phone, and
// one range already averages over seconds of traffic.
constexpr double rate_gain = 0.5;
constexpr double rtt_gain = 0.25;
}  // namespace

path_estimator::path_estimator(std::uint64_t prior_rate_bps, std::chrono::microseconds prior_rtt)
    : rate_bytes_per_s_(static_cast<double>(prior_rate_bps) / 8.0),
      rtt_s_(static_cast<double>(prior_rtt.count()) / 1e6) {}

void path_estimator::on_transfer(std::uint64_t bytes, std::chrono::microseconds elapsed) {
  if (bytes < min_sample_bytes || elapsed.count() <= 0) return;
  const double sample = static_cast<double>(bytes) / (static_cast<double>(elapsed.count()) / 1e6);
  // The first real sample replaces the prior outright: a configured guess is worth less
  // than one measurement.
  rate_bytes_per_s_ =
      samples_ == 0 ? sample : rate_bytes_per_s_ + rate_gain * (sample - rate_bytes_per_s_);
  ++samples_;
}

void path_estimator::on_rtt(std::chrono::microseconds rtt) {
  if (rtt.count() <= 0) return;
  const double sample = static_cast<double>(rtt.count()) / 1e6;
  rtt_s_ = rtt_samples_ == 0 ? sample : rtt_s_ + rtt_gain * (sample - rtt_s_);
  ++rtt_samples_;
}

}  // namespace fleety::mphttp
