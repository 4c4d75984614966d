#pragma once
// Byte ranges of an object: ours ([begin, end)) and HTTP's Content-Range (RFC 9110 §14.4,
// inclusive). Plain values, shared by the pure decisions and the HTTP rules.

#include <cstdint>

namespace fleety::mphttp {

/// [begin, end) of an object.
struct byte_range {
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
  std::uint64_t size() const { return end - begin; }
  bool operator==(const byte_range&) const = default;
};

/// "bytes 100-199/1000" (RFC 9110 §14.4).
struct content_range {
  std::uint64_t first = 0;
  std::uint64_t last = 0;  ///< inclusive
  std::uint64_t complete_length = 0;
  bool operator==(const content_range&) const = default;
};

}  // namespace fleety::mphttp
