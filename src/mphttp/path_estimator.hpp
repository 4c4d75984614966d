#pragma once
// What fleety believes of a path's rate and RTT: a prior from the config, then
// learned from every transfer. Pure: samples in, estimates out; no clock.

#include <chrono>
#include <cstdint>

namespace fleety::mphttp {

class path_estimator {
 public:
  /// `prior_rate_bps` and `prior_rtt` are used until samples arrive.
  path_estimator(std::uint64_t prior_rate_bps, std::chrono::microseconds prior_rtt);

  /// A transfer moved `bytes` in `elapsed` between its first and its last byte. Samples
  /// shorter than `min_sample_bytes` say more about slow start than about the path; ignored.
  void on_transfer(std::uint64_t bytes, std::chrono::microseconds elapsed);

  /// The kernel's smoothed RTT of one of the path's connections.
  void on_rtt(std::chrono::microseconds rtt);

  double rate_bytes_per_s() const { return rate_bytes_per_s_; }
  double rtt_s() const { return rtt_s_; }
  std::uint64_t samples() const { return samples_; }

  static constexpr std::uint64_t min_sample_bytes = 256 * 1024;

 private:
  double rate_bytes_per_s_;  ///< EWMA of goodput, bytes/s
  double rtt_s_;             ///< EWMA of RTT, seconds
  std::uint64_t samples_ = 0;
  std::uint64_t rtt_samples_ = 0;
};

}  // namespace fleety::mphttp
