#pragma once
// Bytes of one object that arrived out of order, kept until everything before them
// has gone to the app. Pure data structure; the session bounds what it may hold by
// only requesting ranges inside its window.

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
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

  /// Bytes are held in blocks of block_bytes (or one larger piece), filled as a path's
  /// contiguous bytes arrive: one allocation size for the daemon's whole buffer (glibc
  /// reuses a freed block for the next one instead of fragmenting between read sizes),
  /// and a map node per 64 KiB rather than per read.
  static constexpr std::size_t block_bytes = 64 * 1024;

 private:
  struct chunk {
    std::unique_ptr<char[]> block;
    std::size_t size = 0;      ///< bytes held, from the start of the block
    std::size_t capacity = 0;  ///< bytes the block has room for
    int source = 0;            ///< the path that fetched them
    std::span<const char> bytes() const { return {block.get(), size}; }
  };
  std::map<std::uint64_t, chunk> chunks_;  ///< start offset → bytes; never overlapping
  std::uint64_t delivered_;                ///< bytes before this went to the app
  std::uint64_t front_consumed_ = 0;       ///< bytes of the first chunk already taken
  std::uint64_t buffered_ = 0;             ///< bytes held, not yet delivered
};

}  // namespace fleety::mphttp
