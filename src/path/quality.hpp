#pragma once
// A path's quality as the selector sees it (paper §4.4): RTT, jitter, loss and
// throughput, estimated from what fleetyd's own sockets on the path report (TCP_INFO)
// and from light probes while the path is idle. Pure: samples in, estimate out.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string_view>

namespace fleety::path {

using clock_type = std::chrono::steady_clock;

/// What is known of a path now. Unknown values (never measured, or measured too long
/// ago to mean anything) are empty.
struct quality {
  bool up = false;
  std::optional<std::chrono::microseconds> rtt;     ///< smoothed round-trip time
  std::optional<std::chrono::microseconds> jitter;  ///< mean deviation of the RTT
  std::optional<double> loss;                       ///< fraction of packets lost, 0..1
  std::optional<double> throughput_bps;             ///< bits/s received lately (0 while idle)
  std::optional<double> signal_dbm;                 ///< Wi-Fi signal level, where the system says
};

/// The signal level (dBm) of `interface` in a /proc/net/wireless text; nullopt when the
/// interface isn't listed or its level isn't a number.
std::optional<double> wireless_signal_dbm(std::string_view proc_net_wireless,
                                          std::string_view interface);

/// Smooths a path's samples (RFC 6298's gains for RTT and its deviation) and forgets
/// them when they get old.
class quality_tracker {
 public:
  struct options {
    /// Samples older than this no longer count (the estimate becomes unknown).
    std::chrono::milliseconds max_age{10'000};
    /// The window over which throughput and loss are measured.
    std::chrono::milliseconds window{1'000};
  };

  quality_tracker() : quality_tracker(options{}) {}
  explicit quality_tracker(options opts) : opts_(opts) {}

  /// One RTT measured on the path (a probe's connect time): smoothed in.
  void on_rtt(std::chrono::microseconds rtt, clock_type::time_point now);
  /// An idle path's probe, one a second at most: RFC 6298's gains, made for a sample per
  /// ACK, would take a dozen probes to follow a step (50 → 400 ms showed 167 ms after 3 s).
  /// A sample within the estimate's band (4 deviations, at least a quarter of it) is
  /// smoothed in with gain 1/4; one outside it is held, and returns true: the caller
  /// probes again at once. A second on the same side confirms the step and the estimate
  /// takes it; one back inside the band was an outlier and is smoothed in alone.
  bool on_probe_rtt(std::chrono::microseconds rtt, clock_type::time_point now);
  /// An RTT the kernel already smoothed (TCP_INFO of a busy socket on the path) with its
  /// mean deviation: taken as it is, so a change shows without a second smoothing lag.
  void on_smoothed_rtt(std::chrono::microseconds srtt, std::chrono::microseconds rttvar,
                       clock_type::time_point now);
  /// A probe answered or not: a lost probe counts as loss.
  void on_probe(bool answered, clock_type::time_point now);
  /// Segments a socket on the path sent, and how many of them were retransmitted,
  /// since the last report (deltas).
  void on_segments(std::uint64_t sent, std::uint64_t retransmitted, clock_type::time_point now);
  /// The path's running total of bytes received (all its sockets); throughput is its
  /// rate of change.
  void on_bytes_received(std::uint64_t total, clock_type::time_point now);

  /// Starts from what the path history knew (after a restart), until the first sample
  /// replaces it (a seed is not smoothed with: it may be old).
  void seed(const quality& known, clock_type::time_point now);

  quality current(bool up, clock_type::time_point now) const;

 private:
  options opts_;
  std::optional<double> srtt_us_;
  bool seeded_ = false;
  double rttvar_us_ = 0;
  clock_type::time_point rtt_at_{};
  std::optional<double> held_probe_us_;  ///< a probe outside the band, awaiting a second
  // Loss: packets sent and lost in the current and previous windows.
  struct loss_window {
    clock_type::time_point start{};
    double sent = 0;
    double lost = 0;
  };
  loss_window loss_now_, loss_before_;
  clock_type::time_point loss_at_{};
  // Throughput: the byte counter at the start of the window.
  std::optional<std::uint64_t> bytes_mark_;
  clock_type::time_point bytes_mark_at_{};
  std::optional<double> throughput_bps_;
  clock_type::time_point throughput_at_{};

  void count_loss(double sent, double lost, clock_type::time_point now);
};

}  // namespace fleety::path
