#pragma once
// The paths a host's nodes refused lately (DESIGN.md: a node that refuses a path — 403,
// 429 with Retry-After, 5xx — makes that path ineligible for that host for a while; that
// is not a version conflict). Pure: `now` comes in. Bounded.

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mphttp/response_facts.hpp"

namespace fleety::mphttp {

class path_refusals {
 public:
  using clock = std::chrono::steady_clock;

  /// A path without Retry-After is kept off the host this long the first time, twice as
  /// long each time again, at most `max_backoff`.
  static constexpr std::chrono::seconds first_backoff{30};
  static constexpr std::chrono::seconds max_backoff{600};
  /// A Retry-After beyond this is taken as this (a node's mistake must not last a day).
  static constexpr std::chrono::seconds max_retry_after{3600};
  static constexpr std::size_t max_entries = 4096;

  struct entry {
    std::string host;
    std::string path;
    refusal why = refusal::none;
    unsigned status = 0;
    clock::time_point until{};
    unsigned strikes = 0;  ///< refusals in a row (the backoff's exponent)
  };

  /// `path`'s node for `host` refused it (`status`, `why`) at `now`, with its Retry-After
  /// if it gave one. Returns until when the path is off the host.
  clock::time_point record(std::string_view host, std::string_view path, refusal why,
                           unsigned status, std::optional<std::chrono::seconds> retry_after,
                           clock::time_point now);

  /// Whether `path` is off `host` now.
  bool refused(std::string_view host, std::string_view path, clock::time_point now) const;

  /// The refusals in force now (for the status), oldest host first.
  std::vector<entry> active(clock::time_point now) const;

  /// Refusals recorded since start, by reason (for the metrics).
  const std::map<refusal, std::uint64_t>& totals() const { return totals_; }

 private:
  void make_room(clock::time_point now);

  std::map<std::pair<std::string, std::string>, entry, std::less<>> entries_;
  std::map<refusal, std::uint64_t> totals_;
};

}  // namespace fleety::mphttp
