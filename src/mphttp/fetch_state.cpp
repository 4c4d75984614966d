#include "mphttp/fetch_state.hpp"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <utility>

namespace fleety::mphttp {

namespace {

double seconds_of(fetch_clock::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

double seconds_between(fetch_clock::time_point from, fetch_clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

double seconds_of(std::chrono::microseconds d) {
  return static_cast<double>(d.count()) / 1e6;
}

/// An idle path looks for work again this often (besides being woken): the other paths'
/// tails grow relative to what is left, and one may become worth taking over.
constexpr auto idle_poll = std::chrono::milliseconds(50);
/// Pipelining found nothing to claim: it asks again this much later, not on every read.
constexpr auto claim_retry = std::chrono::milliseconds(20);
/// The writer's waits when it has nothing to deliver, and when an overlap check holds it.
constexpr auto writer_idle = std::chrono::milliseconds(500);
constexpr auto writer_gate = std::chrono::milliseconds(100);

}  // namespace

std::string_view to_string(fetch_phase phase) {
  switch (phase) {
    case fetch_phase::awaiting_first_head:
      return "awaiting first head";
    case fetch_phase::relaying:
      return "relaying";
    case fetch_phase::fetching:
      return "fetching";
    case fetch_phase::complete:
      return "complete";
    case fetch_phase::failed:
      return "failed";
    case fetch_phase::stopped:
      return "stopped";
  }
  return "?";
}

std::string_view to_string(path_phase phase) {
  switch (phase) {
    case path_phase::standby:
      return "standby";
    case path_phase::idle:
      return "idle";
    case path_phase::awaiting_early:
      return "awaiting early connection";
    case path_phase::connecting:
      return "connecting";
    case path_phase::requesting:
      return "requesting";
    case path_phase::awaiting_head:
      return "awaiting head";
    case path_phase::receiving:
      return "receiving";
    case path_phase::streaming:
      return "streaming";
    case path_phase::failed:
      return "failed";
    case path_phase::finished:
      return "finished";
  }
  return "?";
}

// ---- path_work ----------------------------------------------------------------------

double path_work::live_rate(fetch_clock::time_point now) const {
  if (auto measured = meter.rate(seconds_of(now)); measured && *measured > 0) return *measured;
  return estimator->rate_bytes_per_s();
}

double path_work::request_lead_s() const {
  return mphttp::request_lead_s(estimator->rate_bytes_per_s(), estimator->rtt_s(), connected);
}

double path_work::lead_s(fetch_clock::time_point now) const {
  const double rate = live_rate(now);
  const double backlog_s = rate > 0 ? static_cast<double>(backlog_bytes()) / rate : 0.0;
  return connected ? std::max(request_lead_s(), backlog_s) : request_lead_s() + backlog_s;
}

double path_work::range_time_s(std::chrono::microseconds configured) const {
  return std::max(seconds_of(configured), 3 * estimator->rtt_s());
}

// ---- the fetch ----------------------------------------------------------------------

std::uint64_t fair_window_bytes(std::uint64_t budget, std::uint64_t per_download, std::size_t apps,
                                std::size_t downloads_of_app, std::uint64_t others_committed) {
  const std::uint64_t share =
      budget / std::max<std::size_t>(apps, 1) / std::max<std::size_t>(downloads_of_app, 1);
  const std::uint64_t uncommitted = budget > others_committed ? budget - others_committed : 0;
  return std::max(min_window_bytes, std::min({per_download, share, uncommitted}));
}

std::uint64_t fetch_state::committed_bytes() const {
  std::uint64_t committed = buffer_.buffered_bytes();
  for (const auto& w : work_) committed += w.backlog_bytes();
  return committed;
}

fetch_state::fetch_state(const fetch_limits& limits, std::vector<fetch_path> paths,
                         fetch_clock::time_point now)
    : limits_(limits), started_(now), last_delivery_(now) {
  for (const auto& p : paths) {
    path_work w;
    w.estimator = p.estimator;
    if (p.connecting_early) {
      w.spare = spare_phase::connecting;
      w.spare_is_early = true;
      w.connected = true;
    }
    if (p.speculative) {
      // Its request is out on its early connection, which is connected.
      w.spare = spare_phase::ready;
      w.spare_is_early = true;
      w.connected = true;
      w.speculative = p.speculative;
    }
    work_.push_back(std::move(w));
  }
}

void fetch_state::on_first_response(const first_response& response, fetch_clock::time_point now) {
  if (phase_ != fetch_phase::awaiting_first_head) return;
  if (!response.split || work_.empty()) {
    phase_ = fetch_phase::relaying;
    for (std::size_t i = 0; i < work_.size(); ++i) {
      auto& w = work_[i];
      if (w.spare == spare_phase::connecting || w.spare == spare_phase::ready)
        actions_.push_back({fetch_action::kind::abandon_spare, i});
      w.spare = spare_phase::none;
      w.phase = path_phase::finished;
    }
    return;
  }
  phase_ = fetch_phase::fetching;
  total_ = response.total;
  begin_ = response.begin;
  end_ = response.end;
  buffer_ = reorder_buffer(begin_);
  claims_ = claim_map(total_);
  // Outside the range: nobody's to fetch.
  claims_.claim({0, begin_});
  claims_.claim({end_, total_});
  started_ = now;
  last_delivery_ = now;
  for (auto& w : work_) w.phase = path_phase::idle;

  digests_ = response.digests;
  auto& first = work_[0];
  first.connection_open = true;
  first.connected = true;
  first.validator = response.validator;
  const std::uint64_t first_end = claim_first_range(response.head_end, now);
  if (response.head_end) {
    // Our head range: its request went out with the first request, its header is read
    // (the fetcher reports it again as this range's head, to be checked like any other).
    begin_range(first, {begin_, first_end}, now);
    first.phase = path_phase::awaiting_head;
  } else if (first_end > begin_) {
    // Paper §4.2: the first path keeps the response it already has for its share, then
    // is reset; its share grows while the bytes after it are unclaimed.
    begin_range(first, {begin_, first_end}, now);
    first.requested_end = end_;
    first.phase = path_phase::streaming;
  } else {
    // The plan gives path 0 nothing now: its first response isn't wanted.
    first.close_pending = true;
    first.connection_open = false;
    first.connected = false;
  }
  take_speculative_ranges(now);
}

void fetch_state::take_speculative_ranges(fetch_clock::time_point now) {
  for (std::size_t i = 1; i < work_.size(); ++i) {
    auto& w = work_[i];
    if (!w.speculative) continue;
    const speculative_ask asked = *std::exchange(w.speculative, std::nullopt);
    // The server's answer ends at the object's end at the latest; a suffix's is the
    // object's last bytes with the overlap before them, if the object is that long (else
    // it is the whole object).
    const std::uint64_t overlap = limits_.scheduler.overlap_bytes;
    const bool suffix = asked.suffix_bytes > 0;
    const byte_range usable =
        suffix ? (total_ >= asked.suffix_bytes + overlap
                      ? byte_range{total_ - asked.suffix_bytes, total_}
                      : byte_range{})
               : byte_range{asked.range.begin, std::min(asked.range.end, total_)};
    const auto free = claims_.lowest_unclaimed(usable.begin, usable.end);
    // Wanted as it will come: from where it was asked (its overlap before it), all of it
    // the app's and nobody else's yet, within the memory window (a suffix, small, may lie
    // past it: the reorder buffer holds it until the app gets there).
    const bool wanted = begin_ == 0 && usable.end > usable.begin && usable.end <= end_ &&
                        (suffix || usable.end <= window_end()) && free &&
                        free->begin == usable.begin && free->end == usable.end;
    if (!wanted) {
      // Past the end (a 416 is on its way) or not ours: dropped with its connection.
      actions_.push_back({fetch_action::kind::abandon_spare, i});
      w.spare = spare_phase::none;
      w.connected = false;
      continue;
    }
    claims_.claim(usable);
    w.planned += usable.size();
    // Taken like a range pipelined on the spare: adopt it, then read its head.
    w.pipelined = usable;
    w.pipelined_on_spare = true;
    w.pipelined_if_range_sent = false;
    w.last_progress = now;
    notes_.push_back({fetch_note::kind::requested, i, 0, usable});
  }
}

void fetch_state::stop() {
  if (phase_ == fetch_phase::fetching)
    phase_ = buffer_.delivered() >= end_ ? fetch_phase::complete : fetch_phase::stopped;
  for (std::size_t i = 0; i < work_.size(); ++i) {
    actions_.push_back({fetch_action::kind::cancel_path, i});
  }
  actions_.push_back({fetch_action::kind::wake_writer, 0});
}

bool fetch_state::all_failed() const {
  return std::all_of(work_.begin(), work_.end(),
                     [](const path_work& w) { return w.phase == path_phase::failed; });
}

std::vector<fetch_action> fetch_state::take_actions() {
  return std::exchange(actions_, {});
}

std::vector<fetch_note> fetch_state::take_notes() {
  return std::exchange(notes_, {});
}

// ---- a path's fetcher ---------------------------------------------------------------

void fetch_state::begin_range(path_work& w, byte_range range, fetch_clock::time_point now) {
  w.current = range;
  w.requested_end = range.end;
  w.current_received = 0;
  w.current_first_byte.reset();
  w.last_progress = now;
  w.prefix_left = overlap_for(range.begin);
  w.prefix.clear();
}

path_command fetch_state::next_command(std::size_t index, fetch_clock::time_point now) {
  using kind = path_command::kind;
  auto& w = work_[index];
  if (phase_ != fetch_phase::fetching || w.out()) {
    if (w.phase != path_phase::failed) w.phase = path_phase::finished;
    return {kind::finish};
  }
  if (w.close_pending) {
    w.close_pending = false;
    return {kind::close};
  }
  switch (w.phase) {
    case path_phase::streaming:
      if (w.spare == spare_phase::none) {
        // While it streams, a spare connection on the same path gets ready for its next
        // range, which goes out about an RTT before the share ends: no idle gap.
        w.spare = spare_phase::connecting;
        return {kind::open_spare};
      }
      [[fallthrough]];
    case path_phase::receiving:
      if (auto pipelined = maybe_pipeline(index, now)) return *pipelined;
      return {kind::read_body};
    case path_phase::awaiting_head:
      return {kind::read_head};
    case path_phase::requesting: {
      const byte_range asked{w.current->begin, w.requested_end};
      note({.what = fetch_note::kind::requested, .path = index, .range = asked});
      w.if_range_sent = !w.validator.empty();
      return {kind::send, asked, overlap_for(asked.begin), false, {}, w.validator};
    }
    case path_phase::connecting:
      return {kind::connect};
    case path_phase::awaiting_early:
      if (w.spare == spare_phase::ready) {
        if (w.spare_is_early) {
          note({.what = fetch_note::kind::spare_taken,
                .path = index,
                .seconds = seconds_between(w.spare_wait_started, now)});
        }
        w.spare = spare_phase::none;
        w.spare_is_early = false;
        w.connection_open = true;
        w.connected = true;
        w.phase = path_phase::requesting;
        return {kind::adopt_spare};
      }
      if (w.spare == spare_phase::connecting && now < w.spare_deadline)
        return {kind::await_spare, {}, 0, false, w.spare_deadline};
      // It failed, or didn't connect in time: a connection of its own.
      w.spare = spare_phase::none;
      w.connected = false;
      w.phase = path_phase::connecting;
      return {kind::connect};
    case path_phase::idle:
      if (now < w.retry_not_before) return {kind::wait, {}, 0, false, w.retry_not_before};
      break;
    case path_phase::standby:
    case path_phase::failed:
    case path_phase::finished:
      return {kind::finish};
  }

  // Idle: the range already requested behind the last one, or a new one.
  if (w.pipelined) {
    if (w.pipelined_on_spare) {
      // Requested on the spare while the first response streamed: the spare is the
      // path's connection now, and the response to come is on it.
      // (Its range with it: a suffix asked before the size was known is absolute now.)
      w.pipelined_on_spare = false;
      w.spare = spare_phase::none;
      w.connection_open = true;
      w.connected = true;
      return {kind::adopt_spare, *w.pipelined, overlap_for(w.pipelined->begin)};
    }
    begin_range(w, *w.pipelined, now);
    w.pipelined.reset();
    w.if_range_sent = w.pipelined_if_range_sent;
    w.phase = path_phase::awaiting_head;
    return {kind::read_head};
  }
  auto range = take_range(index, now);
  if (!range) {
    w.meter.stop();  // idle: the next bytes start a new measurement
    return {kind::wait, {}, 0, false, now + idle_poll};
  }
  begin_range(w, *range, now);
  if (w.connection_open) {
    w.phase = path_phase::requesting;
    return next_command(index, now);
  }
  if (w.spare == spare_phase::ready || w.spare == spare_phase::connecting) {
    w.phase = path_phase::awaiting_early;
    w.spare_wait_started = now;
    w.spare_deadline = now + limits_.connect_timeout;
    if (!w.spare_is_early && w.spare == spare_phase::ready) {
      // Path 0's spare, ready: just take it.
      w.spare = spare_phase::none;
      w.connection_open = true;
      w.connected = true;
      w.phase = path_phase::requesting;
      return {kind::adopt_spare};
    }
    return next_command(index, now);
  }
  w.spare = spare_phase::none;
  w.connected = false;
  w.phase = path_phase::connecting;
  return {kind::connect};
}

std::optional<path_command> fetch_state::maybe_pipeline(std::size_t index,
                                                        fetch_clock::time_point now) {
  auto& w = work_[index];
  if (w.pipelined || w.current_left() == 0) return std::nullopt;
  const bool streaming = w.phase == path_phase::streaming;
  // Behind this response on the same connection (unless it was cut short: it will be
  // reset), or on the spare when this response won't be finished.
  const bool can_pipeline = streaming ? w.spare == spare_phase::ready
                                      : w.response_keep_alive && w.current->end == w.requested_end;
  // The next request must arrive before this response ends: an RTT ahead at least, with
  // margin for a rate that grows (slow start) faster than the meter shows; a range of
  // ours goes out halfway through the current one (but no more than range_time of the
  // path's rate ahead: a long range on a slow path — the head range — must not be
  // pipelined seconds early, since a path with a pipelined request is not cut short, and
  // other paths may need its tail).
  // At the rate of its last round trips if that is more, while there are bytes to claim: a
  // new connection's slow start, or a shaper's burst, brings the range's end sooner than
  // the last second's rate says. (Not when all is claimed: then the next range would be
  // another path's tail, taken over no sooner than it must be.)
  const double rtt_s = w.estimator->rtt_s();
  const double recent = claims_.unclaimed_bytes() > 0
                            ? w.meter.recent_rate(seconds_of(now), 2 * rtt_s).value_or(0.0)
                            : 0.0;
  const double rate = std::max(w.live_rate(now), recent);
  const double rtt_bytes = rate * rtt_s;
  const double range_time_bytes = rate * w.range_time_s(limits_.scheduler.range_time);
  const double lead_bytes =
      (streaming ? 1.5 * rtt_bytes
                 : std::max(2 * rtt_bytes, std::min(static_cast<double>(w.current->size()) / 2,
                                                    range_time_bytes))) +
      read_chunk_bytes;
  if (static_cast<double>(w.current_left()) > lead_bytes || now < w.next_claim_attempt)
    return std::nullopt;
  if (streaming && extend_first_stream(index, now)) return std::nullopt;  // it goes on
  if (!can_pipeline) return std::nullopt;
  w.next_claim_attempt = now + claim_retry;
  auto next = take_range(index, now);
  if (!next) return std::nullopt;
  w.pipelined = next;
  w.pipelined_on_spare = streaming;
  w.pipelined_if_range_sent = !w.validator.empty();
  note({.what = fetch_note::kind::requested, .path = index, .range = *next});
  return path_command{
      path_command::kind::send, *next, overlap_for(next->begin), streaming, {}, w.validator};
}

void fetch_state::on_spare(std::size_t index, bool connected, fetch_clock::time_point) {
  auto& w = work_[index];
  if (w.spare != spare_phase::connecting) return;
  w.spare = connected ? spare_phase::ready : spare_phase::failed;
  if (!connected && !w.connection_open && w.phase != path_phase::streaming) w.connected = false;
}

void fetch_state::on_connected(std::size_t index, fetch_clock::time_point) {
  auto& w = work_[index];
  if (w.phase != path_phase::connecting) return;
  w.connection_open = true;
  w.connected = true;
  w.phase = path_phase::requesting;
}

void fetch_state::on_sent(std::size_t index, fetch_clock::time_point) {
  auto& w = work_[index];
  if (w.phase == path_phase::requesting) w.phase = path_phase::awaiting_head;
}

void fetch_state::on_head(std::size_t index, const response_head& head, fetch_clock::time_point) {
  auto& w = work_[index];
  if (w.phase != path_phase::awaiting_head || !w.current) return;
  const byte_range asked{w.current->begin, w.requested_end};
  // A node that refuses the path (DESIGN.md): not another version. The path is out of
  // this fetch, its range goes back to the others; the session keeps it off the host.
  auto refuse = [&](refusal why, std::string detail) {
    w.refused = why;
    w.refused_status = head.status;
    w.retry_after = head.retry_after;
    note({.what = fetch_note::kind::refused,
          .path = index,
          .range = asked,
          .seconds = head.retry_after ? static_cast<double>(head.retry_after->count()) : -1.0,
          .status = head.status,
          .detail = std::move(detail)});
    fail_path(index, /*cancel=*/false);
  };
  // Bytes that differ: two versions. The path is dropped; the app gets the first one.
  auto other_version = [&](std::string why) {
    ++mismatches_;
    note({.what = fetch_note::kind::other_version,
          .path = index,
          .range = asked,
          .status = head.status,
          .detail = std::move(why)});
    fail_path(index, /*cancel=*/false);
  };
  const std::uint64_t first = w.current->begin - overlap_for(w.current->begin);
  // Identity across nodes is by content: the size, the digests of the whole
  // representation, and the overlap (checked as it is delivered). Another node's
  // validator says nothing either way. Another size is another version, whatever part came
  // (a suffix of another length is also another part, but the length says more).
  if (head.status == 206 && head.range && head.range->complete_length != total_) {
    other_version("size " + std::to_string(head.range->complete_length) + ", not " +
                  std::to_string(total_));
    return;
  }
  if (head.status == 206 && head.range && head.range->first == first &&
      head.range->last + 1 == w.requested_end) {
    // The part we asked for (RFC 9110 §14.4).
    if (auto algorithm = digest_conflict(head.digests)) {
      other_version("its " + *algorithm + " digest differs");
      return;
    }
    if (w.validator.empty()) w.validator = head.validator;
    w.response_keep_alive = head.keep_alive;
    w.phase = path_phase::receiving;
    return;
  }
  if (head.status == 206) {
    refuse(refusal::other, "another part: " + head.content_range_text);
    return;
  }
  if (head.status == 200) {
    if (w.if_range_sent && !w.validator_dropped) {
      // If-Range failed (RFC 9110 §13.1.5): this node's copy changed since the path's
      // last range. Asked again without it, the content decides; the whole object
      // response is not read.
      note({.what = fetch_note::kind::validator_changed, .path = index, .range = asked});
      w.validator.clear();
      w.validator_dropped = true;
      give_back(index, *w.current);
      w.current.reset();
      if (w.pipelined) {
        give_back(index, *w.pipelined);
        w.pipelined.reset();
      }
      w.close_pending = true;
      w.connection_open = false;
      w.connected = false;
      w.phase = path_phase::idle;
      return;
    }
    // The node ignores Range: the whole object is no use to this path. Closed.
    refuse(refusal::ignores_ranges, "200 to a range request");
    return;
  }
  const auto why = refusal_of(head.status);
  refuse(why == refusal::none ? refusal::other : why, head.content_range_text);
}

std::optional<std::string> fetch_state::digest_conflict(
    const std::vector<representation_digest>& digests) {
  for (const auto& d : digests) {
    for (const auto& known : digests_) {
      if (known.algorithm == d.algorithm && known.value != d.value) return d.algorithm;
    }
  }
  for (const auto& d : digests) {
    const bool known = std::any_of(digests_.begin(), digests_.end(),
                                   [&](const auto& k) { return k.algorithm == d.algorithm; });
    if (!known) digests_.push_back(d);
  }
  return std::nullopt;
}

void fetch_state::on_body(std::size_t index, std::span<const char> data, bool response_done,
                          fetch_clock::time_point now) {
  auto& w = work_[index];
  if ((w.phase != path_phase::receiving && w.phase != path_phase::streaming) || !w.current) return;
  if (!data.empty()) {
    if (!w.current_first_byte) {
      w.current_first_byte = now;
      note({.what = fetch_note::kind::first_byte, .path = index, .range = *w.current});
    }
    w.last_progress = now;
    // The first bytes of a streak came in over the request's RTT: the rate counts after them.
    if (w.meter.active()) {
      w.meter.add(seconds_of(now), data.size());
    } else {
      w.meter.start(seconds_of(now));
    }
    if (w.prefix_left > 0) {
      // The overlap comes first: kept aside for the verifier, not delivered.
      const auto take =
          static_cast<std::size_t>(std::min<std::uint64_t>(w.prefix_left, data.size()));
      w.prefix.insert(w.prefix.end(), data.begin(),
                      data.begin() + static_cast<std::ptrdiff_t>(take));
      w.prefix_left -= take;
      data = data.subspan(take);
      // No byte at or after current->begin reaches the app until the overlap matched
      // the bytes the app got just before it.
      if (w.prefix_left == 0)
        checks_[w.current->begin] = overlap_check{index, std::exchange(w.prefix, {})};
    }
    // The range's end may have moved down (another path took the tail): drop the rest.
    const std::uint64_t usable = std::min<std::uint64_t>(data.size(), w.current_left());
    w.bytes += buffer_.add(w.current->begin + w.current_received, data.first(usable),
                           static_cast<int>(index));
    w.current_received += usable;
    actions_.push_back({fetch_action::kind::wake_writer, index});
  }
  if (w.current_left() == 0) {
    finish_range(index, response_done, now);
  } else if (response_done) {
    // The response ended before its range did.
    note({.what = fetch_note::kind::stalled,
          .path = index,
          .range = *w.current,
          .bytes = w.current_received,
          .detail = "response ended early"});
    fail_path(index, /*cancel=*/false);
  }
}

void fetch_state::finish_range(std::size_t index, bool response_done, fetch_clock::time_point now) {
  auto& w = work_[index];
  ++w.ranges;
  auto measured = w.meter.rate(seconds_of(now));
  if (!measured && w.current_first_byte) {
    // A range too short for the meter's window (a segment's part: 300 kB in 0.13 s)
    // still says what the path did, from its first byte to its last: without it a path
    // that only ever gets short ranges keeps an old estimate, and with it a small share.
    const double span_s = seconds_between(*w.current_first_byte, now);
    if (span_s >= std::max(min_range_span_s, w.estimator->rtt_s()) &&
        w.current_received >= min_range_sample_bytes)
      measured = static_cast<double>(w.current_received) / span_s;
  }
  if (measured) w.estimator->on_rate(*measured);
  note({.what = fetch_note::kind::range_done,
        .path = index,
        .range = *w.current,
        .rate_bps = w.live_rate(now) * 8});
  w.current.reset();
  if (w.phase == path_phase::streaming) {
    // The first response is not wanted past its share: reset it (paper §4.2); the spare
    // connection carries the path's next ranges.
    w.close_pending = true;
    w.connection_open = false;
    w.connected = w.spare == spare_phase::ready || w.spare == spare_phase::connecting;
    if (!w.pipelined) w.meter.stop();
  } else if (!response_done || !w.response_keep_alive) {
    // The rest of this response is unwanted, or the server closes: a request pipelined
    // behind it is lost and its range goes back to be claimed again.
    w.close_pending = true;
    w.connection_open = false;
    w.connected = false;
    w.meter.stop();
    if (w.pipelined) {
      give_back(index, *w.pipelined);
      w.pipelined.reset();
    }
  }
  w.phase = path_phase::idle;
}

void fetch_state::on_failed(std::size_t index, fetch_clock::time_point now) {
  auto& w = work_[index];
  if (w.out()) return;
  if (w.retries >= max_path_retries) {
    fail_path(index, /*cancel=*/false);
    return;
  }
  const auto pause = std::chrono::seconds(1) * (1U << w.retries);
  ++w.retries;
  note({.what = fetch_note::kind::retrying,
        .path = index,
        .range = w.current ? *w.current : byte_range{},
        .bytes = w.retries,
        .seconds = std::chrono::duration<double>(pause).count()});
  fail_path(index, /*cancel=*/false);
  w.phase = path_phase::idle;
  w.connected = false;
  w.retry_not_before = now + pause;
  // A spare still connecting (path 0's, opened while its first response streamed) is
  // forgotten: its outcome, when the fetcher reports it, changes nothing, and the fetcher
  // abandons it at the end. The path connects anew.
  w.spare = spare_phase::none;
  w.spare_is_early = false;
  w.pipelined_on_spare = false;
}

void fetch_state::fail_path(std::size_t index, bool cancel) {
  auto& w = work_[index];
  w.phase = path_phase::failed;
  w.connection_open = false;
  if (index == 0) first_stream_alive_ = false;
  if (w.current_left() > 0)
    give_back(index, {w.current->begin + w.current_received, w.current->end});
  if (w.pipelined) give_back(index, *w.pipelined);
  w.current.reset();
  w.pipelined.reset();
  w.meter.stop();
  if (cancel) actions_.push_back({fetch_action::kind::cancel_path, index});
  notify();
}

void fetch_state::give_back(std::size_t index, byte_range range) {
  claims_.release(range);
  work_[index].planned -= std::min(work_[index].planned, range.size());
  notify();
}

void fetch_state::notify() {
  actions_.push_back({fetch_action::kind::wake_writer, 0});
  wake_paths();
}

void fetch_state::wake_paths() {
  for (std::size_t i = 0; i < work_.size(); ++i) {
    if (!work_[i].out()) actions_.push_back({fetch_action::kind::wake_path, i});
  }
}

// ---- claims -------------------------------------------------------------------------

std::uint64_t fetch_state::claim_first_range(std::optional<std::uint64_t> bounded_end,
                                             fetch_clock::time_point now) {
  first_stream_alive_ = true;
  if (bounded_end) {
    const byte_range head{begin_, std::min(*bounded_end, end_)};
    claims_.claim(head);
    work_[0].planned += head.size();
    return head.end;
  }
  auto range = claim(0, claim_side::front, 0, window_end(), now);
  if (!range) return 0;
  return range->end;
}

bool fetch_state::extend_first_stream(std::size_t index, fetch_clock::time_point now) {
  auto& w = work_[index];
  if (index != 0 || !first_stream_alive_ || !w.current || w.out()) return false;
  const std::uint64_t end = w.current->end;
  auto next = claims_.lowest_unclaimed(end, window_end());
  std::optional<byte_range> range;
  if (next && next->begin == end) range = claim(index, claim_side::front, end, window_end(), now);
  if (!range || range->begin != end) {
    // The stream met bytes another path claimed (or the plan wants nothing more from
    // path 0 now): it ends there.
    if (range) give_back(index, *range);
    first_stream_alive_ = false;
    return false;
  }
  w.current->end = range->end;
  w.requested_end = range->end;
  return true;
}

std::optional<byte_range> fetch_state::take_range(std::size_t index, fetch_clock::time_point now) {
  auto& w = work_[index];
  if (w.out() || phase_ != fetch_phase::fetching) return std::nullopt;
  // A trickling path's range holds the app up however much is left to claim elsewhere.
  if (auto taken = take_over_trickling(index, now)) return taken;
  // While path 0 works from the front, the others fill the first window from its end.
  const bool from_back = first_stream_alive_ && index != 0;
  auto range = from_back ? claim(index, claim_side::back, buffer_.delivered(),
                                 std::min(end_, begin_ + window_bytes()), now)
                         : std::nullopt;
  if (!range && !window_trickle())
    range = claim(index, claim_side::front, buffer_.delivered(), window_end(), now);
  if (!range) {
    if (claims_.lowest_unclaimed(window_end(), end_)) window_blocked_ = true;
    range = steal_tail(index, now);
  }
  return range;
}

std::uint64_t fetch_state::window_bytes() const {
  return window_source_ ? window_source_() : limits_.scheduler.memory_per_session_bytes;
}

std::uint64_t fetch_state::window_end() const {
  return std::min(end_, buffer_.delivered() + window_bytes());
}

bool fetch_state::window_trickle() const {
  // All that is left to claim in the window is a sliver at its end, which grows only as
  // fast as a slow path delivers the bytes at the delivery point. Claiming it would keep
  // a fast path busy with tiny requests at the slow path's pace — and never dry enough
  // to take over the slow path's tail, which is what frees the window.
  const auto run = claims_.lowest_unclaimed(buffer_.delivered(), window_end());
  return run && run->end == window_end() && window_end() < end_ && run->size() < min_range_bytes;
}

split_policy fetch_state::policy(fetch_clock::time_point now) const {
  // DESIGN.md's cost rule, applied to what is left: T_tol bounds the whole download, so
  // what is left of it shrinks as the download goes on (past it, the rule is equal
  // completion, as for a download that needs cellular from the start).
  const auto& sched = limits_.scheduler;
  const double elapsed_s = seconds_between(started_, now);
  return {sched.mode == core::scheduler_mode::cost,
          std::max(0.0, seconds_of(sched.tolerance) - elapsed_s)};
}

std::optional<byte_range> fetch_state::claim(std::size_t index, claim_side side, std::uint64_t from,
                                             std::uint64_t limit, fetch_clock::time_point now) {
  std::vector<path_estimate> estimates(work_.size());
  for (std::size_t i = 0; i < work_.size(); ++i) {
    const auto& w = work_[i];
    estimates[i] = {w.phase == path_phase::failed ? 0.0 : w.live_rate(now), w.lead_s(now)};
  }
  claim_inputs in;
  in.path = index;
  in.paths = estimates;
  in.policy = policy(now);
  in.side = side;
  in.from = from;
  in.limit = limit;
  in.range_time_s = work_[index].range_time_s(limits_.scheduler.range_time);
  in.min_range_bytes = min_range_bytes;
  in.share_fraction = range_share_fraction;
  in.max_range_time_s = max_range_times * in.range_time_s;
  auto range = choose_claim(claims_, in);
  if (!range) return std::nullopt;
  claims_.claim(*range);
  work_[index].planned += range->size();
  return range;
}

namespace {
// Worth a request even when small: the slow path may need seconds for it.
constexpr std::uint64_t min_steal_bytes = 16 * 1024;
}  // namespace

std::optional<byte_range> fetch_state::steal_tail(std::size_t index, fetch_clock::time_point now) {
  // DESIGN.md: "when a path runs dry while another still has a long tail, the tail of
  // the slow path's range is re-requested on the free path".
  std::size_t victim = work_.size();
  double longest = 0;
  for (std::size_t i = 0; i < work_.size(); ++i) {
    const auto& w = work_[i];
    // A path with a pipelined request can't be cut short without losing that request.
    if (i == index || w.out() || !w.current || w.pipelined || w.current_left() < min_steal_bytes)
      continue;
    const double rate = std::max(w.live_rate(now), 1.0);
    const double time_left = static_cast<double>(w.current_left()) / rate;
    if (time_left > longest) {
      longest = time_left;
      victim = i;
    }
  }
  if (victim == work_.size()) return std::nullopt;
  return steal_from(index, victim, longest, now);
}

void fetch_state::note_trickling(fetch_clock::time_point now) {
  for (auto& w : work_) {
    const auto measured = w.meter.rate(seconds_of(now));
    if (measured) w.best_rate = std::max(w.best_rate, *measured);
    const bool slow = !w.out() && w.current_left() > 0 && w.current_first_byte && measured &&
                      *measured < trickle_fraction * w.best_rate;
    if (!slow) {
      w.slow_since.reset();
    } else if (!w.slow_since) {
      w.slow_since = now;
    }
  }
}

std::optional<byte_range> fetch_state::take_over_trickling(std::size_t index,
                                                           fetch_clock::time_point now) {
  // Issue 18 item 7: a path far below its own pace for a few seconds (a trickle: not
  // silent, so not stalled) holds up the app at its range, wherever that is in the
  // object: the others would reach it only once the memory window fills. Its rest is
  // taken over now, its pipelined request too (its connection is reset at the cut).
  note_trickling(now);
  if (work_[index].slow_since) return std::nullopt;  // not onto another trickle
  std::size_t victim = work_.size();
  double longest = 0;
  for (std::size_t i = 0; i < work_.size(); ++i) {
    const auto& w = work_[i];
    if (i == index || w.out() || !w.slow_since || w.pipelined_on_spare ||
        w.current_left() < min_steal_bytes)
      continue;
    const double patience_s = std::max(trickle_time_s, 8 * w.estimator->rtt_s());
    if (seconds_between(*w.slow_since, now) < patience_s) continue;
    const double time_left =
        static_cast<double>(w.backlog_bytes()) / std::max(w.live_rate(now), 1.0);
    if (time_left > longest) {
      longest = time_left;
      victim = i;
    }
  }
  if (victim == work_.size()) return std::nullopt;
  auto& slow = work_[victim];
  auto taken = steal_from(index, victim, longest, now);
  if (taken && slow.pipelined) {
    give_back(victim, *slow.pipelined);
    slow.pipelined.reset();
  }
  return taken;
}

std::optional<byte_range> fetch_state::steal_from(std::size_t index, std::size_t victim,
                                                  double longest, fetch_clock::time_point now) {
  // The split point is where both would finish together; the slow path stops there.
  auto& thief = work_[index];
  if (longest <= thief.request_lead_s()) return std::nullopt;
  auto& slow = work_[victim];
  // The same rule as for claims, on the slow path's rest: paths in cost order, so in cost
  // mode a costlier thief gets nothing while the cheaper path finishes in time.
  const path_estimate slow_estimate{slow.live_rate(now), 0.0};
  const path_estimate thief_estimate{thief.live_rate(now), thief.request_lead_s()};
  const bool thief_cheaper = index < victim;
  const path_estimate both[] = {thief_cheaper ? thief_estimate : slow_estimate,
                                thief_cheaper ? slow_estimate : thief_estimate};
  const split_plan plan = plan_split(slow.current_left(), both, policy(now));
  const std::uint64_t thief_share = plan.share_bytes[thief_cheaper ? 0 : 1];
  // Cutting the slow path's response throws away what it has in flight (about its BDP)
  // and its warm connection: the path's next range — of this object, or of the next one
  // an app fetches (issue 17: segments one after another) — pays a handshake and slow
  // start again. Only worth it when the download ends sooner by more than that.
  const double saved_s = longest - plan.completion_s;
  const double rtt = slow.estimator->rtt_s();
  const double cold_start_s =
      mphttp::request_lead_s(slow.estimator->rate_bytes_per_s(), rtt, false) - rtt;
  const double min_saving_s = std::max({0.05, 2 * rtt, cold_start_s});
  if (thief_share < min_steal_bytes || saved_s < min_saving_s) return std::nullopt;
  const std::uint64_t cut = slow.current->end - thief_share;
  const byte_range taken{cut, slow.current->end};
  note({.what = fetch_note::kind::took_tail,
        .path = index,
        .other = victim,
        .range = taken,
        .seconds = longest});
  slow.current->end = cut;
  if (victim == 0) first_stream_alive_ = false;
  slow.planned -= std::min(slow.planned, taken.size());
  thief.planned += taken.size();
  ++thief.stolen;
  return taken;
}

std::uint64_t fetch_state::overlap_for(std::uint64_t begin) const {
  // Before the fetch's first byte the app has nothing to compare with.
  if (begin <= begin_) return 0;
  return std::min<std::uint64_t>(begin - begin_, limits_.scheduler.overlap_bytes);
}

void fetch_state::detect_stalls(fetch_clock::time_point now) {
  // A path whose range brings no bytes for a while is taken as failed while another path
  // can go on (DESIGN.md: "a path that stalls ... has its remaining ranges re-requested
  // on the other paths"). The last path left is not judged here: it has the I/O timeout
  // like any connection.
  for (std::size_t i = 0; i < work_.size(); ++i) {
    auto& w = work_[i];
    if (w.out() || w.current_left() == 0) continue;
    const double rtt = w.estimator->rtt_s();
    // Before the first byte a range also waits for a connect and the server.
    const double limit_s = w.current_first_byte ? std::max(1.0, 4 * rtt) : std::max(3.0, 8 * rtt);
    const double silent_s = seconds_between(w.last_progress, now);
    if (silent_s < limit_s) continue;
    const bool another_alive = std::any_of(work_.begin(), work_.end(), [&](const path_work& o) {
      return &o != &w && o.phase != path_phase::failed;
    });
    if (!another_alive) continue;
    note({.what = fetch_note::kind::stalled,
          .path = i,
          .range = *w.current,
          .bytes = w.backlog_bytes(),
          .seconds = silent_s});
    fail_path(i, /*cancel=*/true);
  }
}

// ---- the writer ---------------------------------------------------------------------

delivery_command fetch_state::next_delivery(fetch_clock::time_point now, std::uint64_t max_bytes) {
  using kind = delivery_command::kind;
  if (phase_ == fetch_phase::complete) return {kind::complete};
  if (phase_ != fetch_phase::fetching) return {kind::fail};
  if (buffer_.delivered() >= end_) {
    phase_ = fetch_phase::complete;
    return {kind::complete};
  }
  detect_stalls(now);
  auto pieces = buffer_.front_pieces(max_bytes);
  if (pieces.empty()) {
    if (all_failed()) {
      note({.what = fetch_note::kind::all_failed, .bytes = buffer_.delivered() - begin_});
      phase_ = fetch_phase::failed;
      return {kind::fail};
    }
    if (now - last_delivery_ > limits_.io_timeout) {
      note(
          {.what = fetch_note::kind::no_progress, .seconds = seconds_between(last_delivery_, now)});
      phase_ = fetch_phase::failed;
      return {kind::fail};
    }
    return {kind::wait, {}, now + writer_idle};
  }
  // Not past an overlap that hasn't been compared yet (paper §4.3).
  std::size_t available = 0;
  for (const auto& piece : pieces) available += piece.size();
  std::size_t allowed = deliverable(available);
  if (allowed == 0) return {kind::wait, {}, now + writer_gate};
  delivery_command out{kind::deliver};
  for (const auto& piece : pieces) {
    if (allowed == 0) break;
    const std::size_t n = std::min(allowed, piece.size());
    out.pieces.push_back(piece.first(n));
    allowed -= n;
  }
  return out;
}

void fetch_state::on_delivered(std::uint64_t bytes, fetch_clock::time_point now) {
  // Keep the tail of what the app got: the "earlier" side of the next check.
  const std::size_t keep = limits_.scheduler.overlap_bytes;
  for (auto piece : buffer_.front_pieces(bytes)) {
    if (piece.size() > keep) piece = piece.last(keep);
    recent_.insert(recent_.end(), piece.begin(), piece.end());
    if (recent_.size() > keep)
      recent_.erase(recent_.begin(), recent_.end() - static_cast<std::ptrdiff_t>(keep));
  }
  buffer_.consume(bytes);
  if (bytes > 0) last_delivery_ = now;
  // The app took bytes: fetchers that found nothing to claim inside the window may now.
  if (window_blocked_) {
    window_blocked_ = false;
    wake_paths();
  }
}

std::size_t fetch_state::deliverable(std::size_t available) {
  const std::uint64_t at = buffer_.delivered();
  auto gate = checks_.lower_bound(at);
  if (gate != checks_.end() && gate->first == at) {
    if (!check_at_delivery_point(gate)) return 0;
    gate = checks_.lower_bound(at);
  }
  if (gate == checks_.end()) return available;
  return static_cast<std::size_t>(std::min<std::uint64_t>(available, gate->first - at));
}

bool fetch_state::check_at_delivery_point(std::map<std::uint64_t, overlap_check>::iterator gate) {
  const std::uint64_t at = gate->first;
  const overlap_check check = std::move(gate->second);
  checks_.erase(gate);
  const std::size_t n = std::min(check.later.size(), recent_.size());
  if (std::equal(check.later.end() - static_cast<std::ptrdiff_t>(n), check.later.end(),
                 recent_.end() - static_cast<std::ptrdiff_t>(n))) {
    return true;
  }
  // Two versions of the object (a stale cache on one path): the later range is dropped,
  // its path is done with this object and the rest comes from the others.
  ++mismatches_;
  auto& later = work_[check.source];
  note({.what = fetch_note::kind::other_version, .path = check.source, .offset = at});
  for (const auto& [b, e] : buffer_.evict(at, static_cast<int>(check.source))) {
    later.bytes -= std::min(later.bytes, e - b);
    give_back(check.source, {b, e});
  }
  for (auto it = checks_.begin(); it != checks_.end();) {
    it = it->second.source == check.source ? checks_.erase(it) : std::next(it);
  }
  fail_path(check.source, /*cancel=*/true);
  return false;
}

}  // namespace fleety::mphttp
