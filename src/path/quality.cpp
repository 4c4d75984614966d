#include "path/quality.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <utility>

namespace fleety::path {

void quality_tracker::on_rtt(std::chrono::microseconds rtt, clock_type::time_point now) {
  const double sample = static_cast<double>(rtt.count());
  if (!srtt_us_ || seeded_ || now - rtt_at_ > opts_.max_age) {
    // RFC 6298 §2.2: the first measurement sets SRTT and RTTVAR = R/2.
    srtt_us_ = sample;
    rttvar_us_ = sample / 2;
    seeded_ = false;
  } else {
    rttvar_us_ = 0.75 * rttvar_us_ + 0.25 * std::abs(*srtt_us_ - sample);
    srtt_us_ = 0.875 * *srtt_us_ + 0.125 * sample;
  }
  rtt_at_ = now;
}

bool quality_tracker::on_probe_rtt(std::chrono::microseconds rtt, clock_type::time_point now) {
  const double sample = static_cast<double>(rtt.count());
  const auto held = std::exchange(held_probe_us_, std::nullopt);
  if (!srtt_us_ || seeded_ || now - rtt_at_ > opts_.max_age) {
    on_rtt(rtt, now);
    return false;
  }
  const double deviation = std::abs(*srtt_us_ - sample);
  const double band = std::max(4 * rttvar_us_, *srtt_us_ / 4);
  if (deviation <= band) {
    // A held probe followed by one inside the band was jitter: it widens the band, so
    // that a jittery path does not ask for a second probe each time.
    if (held) rttvar_us_ = 0.75 * rttvar_us_ + 0.25 * std::abs(*srtt_us_ - *held);
    rttvar_us_ = 0.75 * rttvar_us_ + 0.25 * deviation;
    srtt_us_ = 0.75 * *srtt_us_ + 0.25 * sample;
    rtt_at_ = now;
    return false;
  }
  if (held && (*held > *srtt_us_) == (sample > *srtt_us_)) {
    // Two in a row on the same side: the path changed. Its new RTT is theirs.
    srtt_us_ = (*held + sample) / 2;
    rttvar_us_ = std::max(std::abs(*held - sample) / 2, *srtt_us_ / 8);
    rtt_at_ = now;
    return false;
  }
  held_probe_us_ = sample;
  return true;
}

void quality_tracker::on_smoothed_rtt(std::chrono::microseconds srtt,
                                      std::chrono::microseconds rttvar,
                                      clock_type::time_point now) {
  srtt_us_ = static_cast<double>(srtt.count());
  rttvar_us_ = static_cast<double>(rttvar.count());
  rtt_at_ = now;
  seeded_ = false;
}

void quality_tracker::seed(const quality& known, clock_type::time_point now) {
  if (!known.rtt) return;
  srtt_us_ = static_cast<double>(known.rtt->count());
  rttvar_us_ = known.jitter ? static_cast<double>(known.jitter->count()) : *srtt_us_ / 2;
  rtt_at_ = now;
  seeded_ = true;
}

std::optional<double> wireless_signal_dbm(std::string_view text, std::string_view interface) {
  // " wlan0: 0000   54.  -56.  -256 ..." : status, link quality, signal level, noise.
  std::size_t line_start = 0;
  while (line_start < text.size()) {
    auto line_end = text.find('\n', line_start);
    if (line_end == std::string_view::npos) line_end = text.size();
    std::string_view line = text.substr(line_start, line_end - line_start);
    line_start = line_end + 1;
    const auto colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string_view name = line.substr(0, colon);
    while (!name.empty() && name.front() == ' ') name.remove_prefix(1);
    if (name != interface) continue;
    std::string_view rest = line.substr(colon + 1);
    std::array<std::string_view, 3> fields{};
    for (auto& field : fields) {
      while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
      const auto end = rest.find(' ');
      field = rest.substr(0, end);
      rest = end == std::string_view::npos ? std::string_view() : rest.substr(end);
    }
    std::string_view level = fields[2];
    if (!level.empty() && level.back() == '.') level.remove_suffix(1);
    double dbm = 0;
    const auto [ptr, ec] = std::from_chars(level.data(), level.data() + level.size(), dbm);
    if (ec != std::errc{} || ptr != level.data() + level.size() || level.empty())
      return std::nullopt;
    return dbm;
  }
  return std::nullopt;
}

void quality_tracker::count_loss(double sent, double lost, clock_type::time_point now) {
  if (now - loss_now_.start >= opts_.window) {
    // A window ended: it becomes the previous one (or both restart after a long gap).
    loss_before_ = (now - loss_now_.start < 2 * opts_.window) ? loss_now_ : loss_window{};
    loss_now_ = loss_window{now, 0, 0};
  }
  loss_now_.sent += sent;
  loss_now_.lost += lost;
  loss_at_ = now;
}

void quality_tracker::on_probe(bool answered, clock_type::time_point now) {
  count_loss(1, answered ? 0 : 1, now);
}

void quality_tracker::on_segments(std::uint64_t sent, std::uint64_t retransmitted,
                                  clock_type::time_point now) {
  if (sent == 0) return;
  count_loss(static_cast<double>(sent), static_cast<double>(std::min(retransmitted, sent)), now);
}

void quality_tracker::on_bytes_received(std::uint64_t total, clock_type::time_point now) {
  if (!bytes_mark_ || total < *bytes_mark_ || now - bytes_mark_at_ > opts_.max_age) {
    bytes_mark_ = total;
    bytes_mark_at_ = now;
    return;
  }
  const auto elapsed = std::chrono::duration<double>(now - bytes_mark_at_).count();
  if (now - bytes_mark_at_ < opts_.window) return;
  throughput_bps_ = static_cast<double>(total - *bytes_mark_) * 8 / elapsed;
  throughput_at_ = now;
  bytes_mark_ = total;
  bytes_mark_at_ = now;
}

quality quality_tracker::current(bool up, clock_type::time_point now) const {
  quality q;
  q.up = up;
  if (srtt_us_ && now - rtt_at_ <= opts_.max_age) {
    q.rtt = std::chrono::microseconds(std::llround(*srtt_us_));
    q.jitter = std::chrono::microseconds(std::llround(rttvar_us_));
  }
  if (now - loss_at_ <= opts_.max_age) {
    const double sent = loss_now_.sent + loss_before_.sent;
    if (sent > 0) q.loss = (loss_now_.lost + loss_before_.lost) / sent;
  }
  if (throughput_bps_ && now - throughput_at_ <= opts_.max_age) q.throughput_bps = throughput_bps_;
  return q;
}

}  // namespace fleety::path
