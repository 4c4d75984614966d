#pragma once
// Bytes of one object that arrived out of order, kept until everything before them
// has gone to the app. Pure data structure; the session bounds what it may hold by
// only requesting ranges inside its window.

#include <cstdint>
#include <map>
#include <span>
#include <utility>
#include <vector>

namespace fleety::mphttp {

class reorder_buffer {
 public:
  /// Starts delivering at `first_offset` (0 for a whole object).
  explicit reorder_buffer(std::uint64_t first_offset = 0) : delivered_(first_offset) {}

  /// Stores `data` found at `offset`, fetched by `source` (a path index). Bytes before the
  /// delivery point, and bytes already held, are ignored (a range fetched twice counts
  /// once). Returns bytes newly stored.
  std::uint64_t add(std::uint64_t offset, std::span<const char> data, int source = 0);

  /// Drops every held chunk starting at or after `from` that `source` brought (another version of
  /// the object: the consistency verifier refused it). Returns the dropped intervals as
  /// [begin, end) pairs, in offset order, for re-fetching.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> evict(std::uint64_t from, int source);

  /// The next bytes for the app, contiguous from `delivered()`; empty when they are missing.
  std::span<const char> front() const;

  /// Up to `max_bytes` of the next bytes for the app as consecutive pieces (for one
  /// gathered write); empty when the byte at `delivered()` is missing.
  std::vector<std::span<const char>> front_pieces(std::uint64_t max_bytes) const;

  /// The app took `bytes` from the front.
  void consume(std::uint64_t bytes);

  std::uint64_t delivered() const { return delivered_; }
  std::uint64_t buffered_bytes() const { return buffered_; }

 private:
  struct chunk {
    std::vector<char> bytes;
    int source = 0;  ///< the path that fetched them
  };
  std::map<std::uint64_t, chunk> chunks_;  ///< start offset → bytes; never overlapping
  std::uint64_t delivered_;                ///< bytes before this went to the app
  std::uint64_t front_consumed_ = 0;       ///< bytes of the first chunk already taken
  std::uint64_t buffered_ = 0;             ///< bytes held, not yet delivered
};

}  // namespace fleety::mphttp
