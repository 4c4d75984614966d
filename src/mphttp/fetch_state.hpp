#pragma once
// The multipath fetch of one object as a state machine (paper §4.2–§4.3; DESIGN.md "The
// MPHTTP scheduler"; docs/architecture.md draws it). Events in: the first response's
// verdict, a path connected, sent its request, got a response head, got body bytes,
// failed; the app took bytes; time passed. Out: what each path's fetcher does next
// (path_command), what the writer delivers (delivery_command), and which fetchers to wake
// or cancel (fetch_action). Scheduler, claim map, reorder buffer and the consistency
// verifier are called from here. No sockets, no clock (`now` comes in), no logging (notes
// go out): the I/O around it (multipath_fetch.cpp) is one loop per path that carries out
// the commands and reports what happened, plus one writer loop.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "mphttp/byte_range.hpp"
#include "mphttp/claim_map.hpp"
#include "mphttp/path_estimator.hpp"
#include "mphttp/reorder_buffer.hpp"
#include "mphttp/response_facts.hpp"
#include "mphttp/scheduler.hpp"

namespace fleety::mphttp {

using fetch_clock = std::chrono::steady_clock;

/// What a fetch takes from the config.
struct fetch_limits {
  core::scheduler_config scheduler;
  std::chrono::microseconds connect_timeout{5'000'000};  ///< waiting for an early connection
  std::chrono::microseconds io_timeout{15'000'000};      ///< no byte to the app this long: fail
};

/// Issue 17, split without waiting: what a path asked for on its early connection
/// (connected then) before the first answer came, with no If-Range.
struct speculative_ask {
  /// `[begin − overlap, end)` went out. Its answer is this path's first range if it lies
  /// within what the app wants and past path 0's head; else (a 416 past the end) it is
  /// dropped with the connection.
  byte_range range{};
  /// Nonzero: the object's last `suffix_bytes` went out instead (`bytes=-(suffix_bytes +
  /// overlap)`: a first contact, its size unknown), and `range` is unused. Taken when the
  /// object is longer than those bytes, even past the memory window: a suffix is small.
  std::uint64_t suffix_bytes = 0;
};

/// A path as the fetch starts with it, in preference (cost) order: index 0 carries the
/// first request.
struct fetch_path {
  path_estimator* estimator = nullptr;  ///< the path's own, daemon-wide; outlives the fetch
  /// A connection opened early (while the first response header is awaited) is on its
  /// way: its first range can go out without a handshake.
  bool connecting_early = false;
  /// What this path asked for on its early connection before the first answer came.
  std::optional<speculative_ask> speculative{};
};

/// The whole fetch.
enum class fetch_phase {
  awaiting_first_head,  ///< the first path's request is out; other paths may connect early
  relaying,             ///< not split: the first response goes to the app on its path alone
  fetching,             ///< split: every path fetches ranges, the writer delivers in order
  complete,             ///< every byte went to the app
  failed,               ///< no path can go on, or no progress for io_timeout: reset the app
  stopped,              ///< stopped before the end (the session ends, or the app left)
};

/// One path in a fetch. Transitions: docs/architecture.md.
enum class path_phase {
  standby,         ///< before the split: no fetcher yet; its early connection may be on its way
  idle,            ///< no range now: waits to be woken (ranges came back, the window moved)
  awaiting_early,  ///< claimed a range; waits for the connection it opened early
  connecting,      ///< claimed a range; opens a connection for it
  requesting,      ///< connected; the range request is to go out
  awaiting_head,   ///< the request is out; reads its response header
  receiving,       ///< reads the range's body; the next range may be requested behind it
  streaming,       ///< path 0's first response: the object from the start, a range that
                   ///< grows while the bytes after it are unclaimed (paper §4.2)
  failed,          ///< out of this fetch (error, stall, refusal, another version); its
                   ///< ranges went back to the others
  finished,        ///< the fetch ended; the fetcher closes its connections and returns
};

/// A second connection of a path, opened in the background: a path's early connection
/// (before the split), or path 0's spare while its first response streams (its next
/// ranges go there, since the first response is reset when its share ends).
enum class spare_phase {
  none,        ///< no such connection
  connecting,  ///< on its way
  ready,       ///< connected, waiting to be taken
  failed,      ///< could not connect (or nobody waited long enough): connect anew
};

std::string_view to_string(fetch_phase phase);
std::string_view to_string(path_phase phase);

/// What a path's fetcher does next; it reports the outcome with the event named.
struct path_command {
  enum class kind {
    wait,         ///< nothing now: until woken (fetch_action::wake_path) or `until`
    open_spare,   ///< start opening the spare connection in the background → on_spare
    await_spare,  ///< wait for the spare's outcome until `until` (then: failed) → on_spare
    adopt_spare,  ///< the spare becomes the path's connection (no report); for one that
                  ///< asked before the first answer, `range` and `overlap` are what it asked
    connect,      ///< open the path's connection → on_connected / on_failed
    send,         ///< send the request for `range` starting `overlap` bytes early, on the
                  ///< connection, or on the spare if `on_spare` → on_sent / on_failed
    read_head,    ///< read the next response header → on_head / on_failed
    read_body,    ///< read what has arrived of the body → on_body / on_failed
    close,        ///< reset the connection: the rest of its response is not wanted (no report)
    finish,       ///< the fetcher ends: close every connection of the path
  };
  kind what = kind::wait;
  byte_range range{};
  std::uint64_t overlap = 0;
  bool on_spare = false;
  fetch_clock::time_point until{};
  /// send: If-Range, this path's own node's strong validator; empty: none (the path's
  /// first request: the content decides, not another node's validator).
  std::string if_range{};
};

/// Something for the I/O to do for another party than the caller.
struct fetch_action {
  enum class kind {
    wake_writer,    ///< the writer may have bytes to deliver
    wake_path,      ///< path `path` may have work: its wait ends now
    cancel_path,    ///< path `path` is out of the fetch: cancel what its fetcher awaits
    abandon_spare,  ///< nobody takes path `path`'s early connection: close it
  };
  kind what = kind::wake_writer;
  std::size_t path = 0;
  bool operator==(const fetch_action&) const = default;
};

/// Something worth a log line (the I/O chooses the level); also what tests assert on.
struct fetch_note {
  enum class kind {
    requested,          ///< path asks for `range`
    first_byte,         ///< the first byte of `range` arrived
    range_done,         ///< `range` is complete; the path ran at `rate_bps`
    took_tail,          ///< path took `range` from path `other`, which had `seconds` left of it
    spare_taken,        ///< path took its early connection, after waiting `seconds` for it
    stalled,            ///< path brought nothing for `seconds`: its `bytes` left go to the others
    refused,            ///< path's node refused `range`: `status`, `detail` its refusal (and
                        ///< Content-Range); `seconds` its Retry-After, < 0 when it gave none
    validator_changed,  ///< path's If-Range failed (its node's copy changed): asked again
                        ///< without, the content decides
    other_version,      ///< path's bytes differ from what the app has: before `offset` (the
                        ///< overlap), or by `detail` (the size, a digest)
    no_progress,        ///< nothing reached the app for `seconds`: the fetch gives up
    all_failed,         ///< every path failed: the fetch gives up
    retrying,           ///< path's connection failed: its range went to the others; it tries
                        ///< again in `seconds` (attempt `bytes` of max_path_retries)
  };
  kind what = kind::requested;
  std::size_t path = 0;
  std::size_t other = 0;
  byte_range range{};
  std::uint64_t offset = 0;
  std::uint64_t bytes = 0;
  double seconds = 0;
  double rate_bps = 0;
  unsigned status = 0;
  std::string detail{};
};

/// What the first path's response turned out to be (http_rules: decide_split and the
/// head range's rebuilt answer).
struct first_response {
  bool split = false;  ///< fetch [begin, end) of `total` over every path; else relay
  std::uint64_t total = 0;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
  /// The response is our head range: a 206 for [begin, head_end) that ends by itself, on a
  /// connection that goes on with path 0's next ranges. nullopt: the response carries the
  /// object from `begin` to its end (it streams, and is reset where path 0's share ends).
  std::optional<std::uint64_t> head_end;
  /// Path 0's own node's strong validator (If-Range on its later ranges); may be empty.
  std::string validator{};
  /// Digests of the whole representation the first response carried.
  std::vector<representation_digest> digests{};
};

/// A range response's header, as far as the fetch cares.
struct response_head {
  unsigned status = 0;
  std::optional<content_range> range;  ///< Content-Range, parsed
  std::string content_range_text{};    ///< as sent (for the note)
  bool keep_alive = true;              ///< the connection carries another response after it
  std::string validator{};  ///< its strong validator (ETag or Last-Modified); may be empty
  std::vector<representation_digest> digests{};  ///< of the whole representation
  std::optional<std::chrono::seconds> retry_after{};
};

/// What the writer does next.
struct delivery_command {
  enum class kind {
    deliver,   ///< write `pieces` (in order) to the app, then on_delivered
    wait,      ///< until woken (fetch_action::wake_writer) or `until`
    complete,  ///< every byte is delivered
    fail,      ///< give up: reset the app (never a truncated body)
  };
  kind what = kind::wait;
  std::vector<std::span<const char>> pieces{};  ///< valid until the next call into the fetch
  fetch_clock::time_point until{};
};

/// One path's part in the fetch (read-only for the I/O, status and tests).
struct path_work {
  path_estimator* estimator = nullptr;  ///< not owned
  path_phase phase = path_phase::standby;
  spare_phase spare = spare_phase::none;
  bool connection_open = false;  ///< the path's connection is open (for its next request)
  /// The connection's response goes on past what is wanted: reset it before anything else.
  bool close_pending = false;
  bool spare_is_early = false;  ///< the spare is the early connection (not path 0's spare)
  /// A connection is open or on its way (plans count one RTT, not a handshake, to its
  /// first byte).
  bool connected = false;
  /// The range being received. Its end moves down when an idle path takes its tail, and
  /// up while the first response simply goes on into the next bytes.
  std::optional<byte_range> current;
  std::uint64_t requested_end = 0;     ///< where the response to `current` really ends
  std::uint64_t current_received = 0;  ///< bytes of `current` received so far
  std::optional<fetch_clock::time_point> current_first_byte;
  fetch_clock::time_point last_progress{};  ///< when `current` was assigned or last brought bytes
  /// Overlap bytes of the current response not received yet, and those received: the
  /// response starts `overlap` bytes before `current->begin` (paper §4.3).
  std::uint64_t prefix_left = 0;
  std::vector<char> prefix;
  bool response_keep_alive = true;  ///< of the response being read
  /// This path's own node's strong validator, from its first 206 (path 0: the first
  /// response's): If-Range on its later requests. Each node its own: CDN nodes hold the
  /// same bytes under other ETags and Last-Modified (DESIGN.md "Consistency").
  std::string validator;
  bool if_range_sent = false;            ///< the current range's request carried If-Range
  bool pipelined_if_range_sent = false;  ///< the pipelined one's
  bool validator_dropped = false;        ///< If-Range failed once: the validator was let go
  refusal refused = refusal::none;       ///< why its node refused it, if it did
  unsigned refused_status = 0;
  std::optional<std::chrono::seconds> retry_after;  ///< the refusal's Retry-After
  /// Asked before the first answer (fetch_path::speculative), until that answer is known.
  std::optional<speculative_ask> speculative;
  /// A range whose request is already sent behind `current` (HTTP/1.1 pipelining on the
  /// same connection, or on the spare), so the path doesn't idle for an RTT.
  std::optional<byte_range> pipelined;
  bool pipelined_on_spare = false;
  fetch_clock::time_point next_claim_attempt{};  ///< pipelining looks again from then
  fetch_clock::time_point spare_deadline{};      ///< awaiting_early gives up then
  fetch_clock::time_point spare_wait_started{};
  windowed_rate meter;  ///< goodput over the last second of work
  /// The best goodput it had in this fetch (its meter's), and since when its goodput has
  /// been far below that (issue 18 item 7: trickling). Not against the path's estimate:
  /// that is daemon-wide, and downloads running side by side share the path's rate.
  double best_rate = 0;
  std::optional<fetch_clock::time_point> slow_since;
  std::uint64_t bytes = 0;    ///< bytes of the object this path delivered first
  std::uint64_t ranges = 0;   ///< range responses received
  std::uint64_t stolen = 0;   ///< ranges this path took over from another
  std::uint64_t planned = 0;  ///< bytes the scheduler gave it, net of what moved
  unsigned retries = 0;       ///< times on_failed sent it back to idle (max_path_retries)
  fetch_clock::time_point retry_not_before{};  ///< after a failure: no new range before

  bool out() const { return phase == path_phase::failed || phase == path_phase::finished; }
  std::uint64_t current_left() const {
    return current ? current->size() - std::min(current->size(), current_received) : 0;
  }
  std::uint64_t backlog_bytes() const {
    return current_left() + (pipelined ? pipelined->size() : 0);
  }
  /// Goodput now (over the last second of back-to-back ranges), else the path's estimate.
  double live_rate(fetch_clock::time_point now) const;
  /// Seconds until a new request on this path would bring data at full rate: one RTT on
  /// a connected path; on a new connection one more for the handshake plus what slow
  /// start costs (cwnd doubling from the initial 10 segments up to the path's BDP loses
  /// about RTT·(log2(BDP / initial window) − 1) against a full-rate start).
  double request_lead_s() const;
  /// When this path could start on bytes asked for now: after what it already has (a
  /// request sent now is answered behind it), and never sooner than a request takes.
  double lead_s(fetch_clock::time_point now) const;
  /// A range should keep the path busy for a while: long enough that the next request
  /// goes out (1.5 RTT ahead) well inside it, short enough that the last ranges of an
  /// object finish together.
  double range_time_s(std::chrono::microseconds configured) const;
};

/// One overlap not compared yet: the bytes a later range brought just before its start.
struct overlap_check {
  std::size_t source = 0;   ///< the path whose later range brought `later`
  std::vector<char> later;  ///< its overlap bytes, just before the check's offset
};

/// Issue 18, one memory budget: a download's window (how far past what its app has read
/// it may ask for bytes) is its fair share of the daemon's budget — split evenly between
/// the apps with downloads under way, an app's part evenly between its downloads — at
/// most `per_download`, and no more than what the other downloads have not committed
/// (`others_committed`: held or asked for; a share shrinks as downloads join, but what
/// was asked for before still comes). At least min_window_bytes, so that every download
/// goes on.
inline constexpr std::uint64_t min_window_bytes = 1ULL << 20;
std::uint64_t fair_window_bytes(std::uint64_t budget, std::uint64_t per_download, std::size_t apps,
                                std::size_t downloads_of_app, std::uint64_t others_committed = 0);

/// The state of one multipath fetch. Owned by the session that serves the request; its
/// fetchers and writer are children of that session, joined before it goes.
///
/// Paths claim ranges as they need work (claim_map, choose_claim). While path 0 works
/// from the front — its head range and the ranges after it, or a first response that is
/// the whole object and simply goes on into the next unclaimed bytes — the other paths
/// fill the first memory window from the back: the two meet where their rates put the
/// meeting point. After that every path takes the lowest unclaimed bytes, with its next
/// request pipelined. A path that runs dry takes over the tail of a slow path's range; a
/// path that fails or stalls gives its ranges back; every range but the head starts
/// `overlap` bytes early, and what follows it reaches the app only once those bytes match.
class fetch_state {
 public:
  /// The most a fetcher reads at once, and the margin pipelining keeps for one read.
  static constexpr std::size_t read_chunk_bytes = 64 * 1024;

  fetch_state(const fetch_limits& limits, std::vector<fetch_path> paths,
              fetch_clock::time_point now);

  // ---- The fetch ----------------------------------------------------------------------

  /// Where the window's size comes from (fair_window_bytes of the daemon's budget, which
  /// changes as downloads come and go); without one it is memory_per_session.
  void set_window_source(std::function<std::uint64_t()> window_bytes) {
    window_source_ = std::move(window_bytes);
  }

  /// The first path's response header came: split, or relay on path 0 alone.
  void on_first_response(const first_response& response, fetch_clock::time_point now);
  /// Stops every fetcher (the writer is done, or the session ends).
  void stop();

  fetch_phase phase() const { return phase_; }
  std::uint64_t total() const { return total_; }
  std::uint64_t begin() const { return begin_; }
  std::uint64_t end() const { return end_; }
  std::uint64_t delivered() const { return buffer_.delivered(); }
  /// Bytes held for the app, not delivered yet (bounded by the memory window).
  std::uint64_t buffered_bytes() const { return buffer_.buffered_bytes(); }
  /// Held, or asked for and still to come: what the fetch may come to hold.
  std::uint64_t committed_bytes() const;
  std::size_t path_count() const { return work_.size(); }
  const path_work& path(std::size_t index) const { return work_[index]; }
  bool all_failed() const;
  /// Times this fetch saw a second version of the object (overlap, size or validator).
  std::uint64_t mismatches() const { return mismatches_; }
  fetch_clock::time_point started() const { return started_; }

  // ---- A path's fetcher ---------------------------------------------------------------

  /// What path `index` does next. Call again after carrying it out (and reporting).
  path_command next_command(std::size_t index, fetch_clock::time_point now);
  /// The spare connection (open_spare, or the early one) connected, or not.
  void on_spare(std::size_t index, bool connected, fetch_clock::time_point now);
  void on_connected(std::size_t index, fetch_clock::time_point now);
  void on_sent(std::size_t index, fetch_clock::time_point now);
  void on_head(std::size_t index, const response_head& head, fetch_clock::time_point now);
  /// `data`: body bytes just read (maybe none: only framing came); `response_done`: the
  /// response's body ended with them.
  void on_body(std::size_t index, std::span<const char> data, bool response_done,
               fetch_clock::time_point now);
  /// The path's connection, request or response failed: its ranges go back to the others.
  /// It tries again after a pause (1 s, then 2 s: a link that flapped, a connection slot
  /// taken), at most max_path_retries times in this fetch; then it is out.
  void on_failed(std::size_t index, fetch_clock::time_point now);
  static constexpr unsigned max_path_retries = 2;

  // ---- The writer ---------------------------------------------------------------------

  /// What the writer does next: runs the stall check, resolves the overlap check at the
  /// delivery point, and hands out what is contiguous (at most `max_bytes`).
  delivery_command next_delivery(fetch_clock::time_point now, std::uint64_t max_bytes);
  /// The app took the first `bytes` of what next_delivery handed out.
  void on_delivered(std::uint64_t bytes, fetch_clock::time_point now);

  // ---- Out ----------------------------------------------------------------------------

  /// What the I/O must do for others since the last call; cleared.
  std::vector<fetch_action> take_actions();
  /// Notes since the last call; cleared.
  std::vector<fetch_note> take_notes();

 private:
  void begin_range(path_work& w, byte_range range, fetch_clock::time_point now);
  std::optional<path_command> maybe_pipeline(std::size_t index, fetch_clock::time_point now);
  void finish_range(std::size_t index, bool response_done, fetch_clock::time_point now);
  void fail_path(std::size_t index, bool cancel);
  void give_back(std::size_t index, byte_range range);
  void notify();
  void wake_paths();
  void detect_stalls(fetch_clock::time_point now);
  /// The ranges other paths asked for before the first answer: theirs if still wanted.
  void take_speculative_ranges(fetch_clock::time_point now);
  std::uint64_t claim_first_range(std::optional<std::uint64_t> bounded_end,
                                  fetch_clock::time_point now);
  bool extend_first_stream(std::size_t index, fetch_clock::time_point now);
  std::optional<byte_range> take_range(std::size_t index, fetch_clock::time_point now);
  std::uint64_t window_bytes() const;
  std::uint64_t window_end() const;
  bool window_trickle() const;
  split_policy policy(fetch_clock::time_point now) const;
  std::optional<byte_range> claim(std::size_t index, claim_side side, std::uint64_t from,
                                  std::uint64_t limit, fetch_clock::time_point now);
  std::optional<byte_range> steal_tail(std::size_t index, fetch_clock::time_point now);
  std::optional<byte_range> take_over_trickling(std::size_t index, fetch_clock::time_point now);
  std::optional<byte_range> steal_from(std::size_t index, std::size_t victim, double time_left_s,
                                       fetch_clock::time_point now);
  void note_trickling(fetch_clock::time_point now);
  std::uint64_t overlap_for(std::uint64_t begin) const;
  std::optional<std::string> digest_conflict(const std::vector<representation_digest>& digests);
  std::size_t deliverable(std::size_t available);
  bool check_at_delivery_point(std::map<std::uint64_t, overlap_check>::iterator gate);
  void note(fetch_note n) { notes_.push_back(std::move(n)); }

  static constexpr std::uint64_t min_range_bytes = 64 * 1024;
  /// Far from the end, a range takes up to half of the path's share of what is left, but
  /// no more than this many range_times of its rate (claim_inputs::share_fraction).
  static constexpr double range_share_fraction = 0.5;
  /// A path whose goodput stays below this fraction of the best it had in this fetch for
  /// trickle_time_s (or 8 RTT) has the rest of its range taken over, wherever it is.
  static constexpr double trickle_fraction = 0.25;
  static constexpr double trickle_time_s = 2.0;
  static constexpr double max_range_times = 8;
  /// A whole range is a rate sample when it lasted this long and brought this much.
  static constexpr double min_range_span_s = 0.05;
  static constexpr std::uint64_t min_range_sample_bytes = 64 * 1024;

  fetch_limits limits_;
  fetch_phase phase_ = fetch_phase::awaiting_first_head;
  std::uint64_t total_ = 0;
  std::uint64_t begin_ = 0;
  std::uint64_t end_ = 0;
  std::vector<path_work> work_;
  reorder_buffer buffer_;
  claim_map claims_{0};
  /// Path 0 works from the front of the first window (its head range, or its first
  /// response going on): the others fill that window from the back.
  bool first_stream_alive_ = false;
  /// A path found nothing to claim only because of the memory window.
  bool window_blocked_ = false;
  std::function<std::uint64_t()> window_source_;
  fetch_clock::time_point started_;
  fetch_clock::time_point last_delivery_;
  std::map<std::uint64_t, overlap_check> checks_;  ///< by offset: not compared yet
  std::vector<char> recent_;                       ///< the last overlap_bytes delivered to the app
  /// Digests of the whole representation the nodes sent so far, one per algorithm.
  std::vector<representation_digest> digests_;
  std::uint64_t mismatches_ = 0;
  std::vector<fetch_action> actions_;
  std::vector<fetch_note> notes_;
};

}  // namespace fleety::mphttp
