#pragma once
// What fleety believes of a path's rate and RTT: a prior from the config, then
// learned from every transfer. Pure: samples in, estimates out; no clock.

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <utility>

namespace fleety::mphttp {

class path_estimator {
 public:
  /// `prior_rate_bps` and `prior_rtt` are used until samples arrive. `rate_measured`: the
  /// prior rate is one measured before (the config's, the history's), not a default.
  path_estimator(std::uint64_t prior_rate_bps, std::chrono::microseconds prior_rtt,
                 bool rate_measured = false);

  /// A goodput measured over a busy stretch of the path (windowed_rate). The first
  /// sample replaces the prior; later ones are averaged in.
  void on_rate(double bytes_per_s);

  /// The kernel's smoothed RTT of one of the path's connections.
  void on_rtt(std::chrono::microseconds rtt);

  double rate_bytes_per_s() const { return rate_bytes_per_s_; }
  double rtt_s() const { return rtt_s_; }
  std::uint64_t samples() const { return samples_; }
  /// The rate is a measured one: a sample, or a measured prior.
  bool rate_known() const { return prior_measured_ || samples_ > 0; }

 private:
  double rate_bytes_per_s_;  ///< EWMA of goodput, bytes/s
  double rtt_s_;             ///< EWMA of RTT, seconds
  std::uint64_t samples_ = 0;
  std::uint64_t rtt_samples_ = 0;
  bool prior_measured_;
};

/// Goodput of a path right now: bytes over the last `window_s` of a busy streak (the path
/// has a request outstanding all along: ranges pipelined back to back). Ranges are short
/// (a fraction of a second), so a rate per range would be noise; this one spans them.
class windowed_rate {
 public:
  explicit windowed_rate(double window_s = 1.0, double min_span_s = 0.2)
      : window_s_(window_s), min_span_s_(min_span_s) {}

  /// The streak's first byte arrived at `now_s`: bytes are counted after it.
  void start(double now_s);
  /// `bytes` arrived at `now_s` (ignored outside a streak).
  void add(double now_s, std::uint64_t bytes);
  /// The path went idle: the next bytes start a new streak.
  void stop() { samples_.clear(); }
  bool active() const { return !samples_.empty(); }

  /// Bytes/s over the window, once the streak spans `min_span_s`. Measured up to `now_s`,
  /// so a path that stops bringing bytes shows a falling rate.
  std::optional<double> rate(double now_s) const;
  /// Bytes/s over the last `span_s` only (from the sample at or before its start), once the
  /// streak is that old: how fast the bytes come now, where the window's rate still
  /// averages in a slower start.
  std::optional<double> recent_rate(double now_s, double span_s) const;

  static constexpr std::size_t max_samples = 4096;

 private:
  double window_s_;
  double min_span_s_;
  std::deque<std::pair<double, std::uint64_t>> samples_;  ///< (time, bytes since start)
};

}  // namespace fleety::mphttp
