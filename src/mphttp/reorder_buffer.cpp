#include "mphttp/reorder_buffer.hpp"

#include <algorithm>
#include <cstring>

namespace fleety::mphttp {

std::uint64_t reorder_buffer::add(std::uint64_t offset, std::span<const char> data, int source) {
  std::uint64_t begin = std::max(offset, delivered_);
  const std::uint64_t end = offset + data.size();
  std::uint64_t stored = 0;
  // Walk the held chunks that could overlap [begin, end) and store only the gaps.
  auto it = chunks_.upper_bound(begin);
  if (it != chunks_.begin()) {
    auto prev = std::prev(it);
    const std::uint64_t prev_begin = prev->first + (prev == chunks_.begin() ? front_consumed_ : 0);
    const std::uint64_t prev_end = prev->first + prev->second.size;
    if (prev_begin <= begin && prev_end > begin) begin = prev_end;
  }
  while (begin < end) {
    it = chunks_.lower_bound(begin);
    const std::uint64_t gap_end = it == chunks_.end() ? end : std::min(end, it->first);
    std::uint64_t at = begin;
    if (gap_end > at && it != chunks_.begin()) {
      // The same path's bytes right after its previous ones: into that block's room.
      auto& prev = std::prev(it)->second;
      if (std::prev(it)->first + prev.size == at && prev.source == source &&
          prev.size < prev.capacity) {
        const std::size_t n = std::min<std::uint64_t>(prev.capacity - prev.size, gap_end - at);
        std::memcpy(prev.block.get() + prev.size, data.data() + (at - offset), n);
        prev.size += n;
        at += n;
      }
    }
    if (gap_end > at) {
      const std::size_t n = gap_end - at;
      chunk fresh{std::make_unique_for_overwrite<char[]>(std::max(n, block_bytes)), n,
                  std::max(n, block_bytes), source};
      std::memcpy(fresh.block.get(), data.data() + (at - offset), n);
      chunks_.emplace(at, std::move(fresh));
    }
    stored += gap_end - begin;
    if (it == chunks_.end()) break;
    begin = std::max(gap_end, it->first + it->second.size);
  }
  buffered_ += stored;
  return stored;
}

std::span<const char> reorder_buffer::front() const {
  if (chunks_.empty()) return {};
  const auto& [offset, held] = *chunks_.begin();
  if (offset + front_consumed_ != delivered_) return {};
  return held.bytes().subspan(front_consumed_);
}

std::vector<std::span<const char>> reorder_buffer::front_pieces(std::uint64_t max_bytes) const {
  std::vector<std::span<const char>> pieces;
  std::uint64_t next = delivered_;
  for (auto it = chunks_.begin(); it != chunks_.end() && max_bytes > 0; ++it) {
    const std::uint64_t skip = it == chunks_.begin() ? front_consumed_ : 0;
    if (it->first + skip != next) break;
    auto piece = it->second.bytes().subspan(skip);
    if (piece.size() > max_bytes) piece = piece.first(max_bytes);
    pieces.push_back(piece);
    next += piece.size();
    max_bytes -= piece.size();
  }
  return pieces;
}

void reorder_buffer::consume(std::uint64_t bytes) {
  while (bytes > 0 && !chunks_.empty()) {
    auto first = chunks_.begin();
    const std::uint64_t left = first->second.size - front_consumed_;
    const std::uint64_t take = std::min(left, bytes);
    front_consumed_ += take;
    delivered_ += take;
    buffered_ -= take;
    bytes -= take;
    if (front_consumed_ == first->second.size) {
      chunks_.erase(first);
      front_consumed_ = 0;
    }
  }
}

}  // namespace fleety::mphttp

namespace fleety::mphttp {

std::vector<std::pair<std::uint64_t, std::uint64_t>> reorder_buffer::evict(std::uint64_t from,
                                                                           int source) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> dropped;
  for (auto it = chunks_.lower_bound(from); it != chunks_.end();) {
    if (it->second.source != source) {
      ++it;
      continue;
    }
    const bool partly_delivered = it == chunks_.begin() && front_consumed_ > 0;
    const std::uint64_t begin = it->first + (partly_delivered ? front_consumed_ : 0);
    const std::uint64_t end = it->first + it->second.size;
    if (partly_delivered) front_consumed_ = 0;
    buffered_ -= end - begin;
    if (!dropped.empty() && dropped.back().second == begin) {
      dropped.back().second = end;
    } else {
      dropped.emplace_back(begin, end);
    }
    it = chunks_.erase(it);
  }
  return dropped;
}

}  // namespace fleety::mphttp
