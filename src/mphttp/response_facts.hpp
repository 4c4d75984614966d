#pragma once
// What a node's answer says beyond its bytes, as plain values for the pure decisions
// (fetch_state): the digests of the whole representation it sent, and why it refused a
// range. Parsed from headers in http_rules.hpp.

#include <string>
#include <string_view>

namespace fleety::mphttp {

/// A digest of the whole representation that a node sent (RFC 9530 Repr-Digest;
/// x-goog-hash; x-amz-checksum-*): the same for any range of the same bytes, so two
/// nodes' values for one algorithm must be equal — else they hold two versions.
/// (Content-Digest and Content-MD5 describe the part a 206 carries: not compared.)
struct representation_digest {
  std::string algorithm;  ///< namespaced, lowercase: "sha-256", "goog-md5", "amz-crc32c"
  std::string value;      ///< as sent (base64)
  bool operator==(const representation_digest&) const = default;
};

/// Why a node's answer to a range request refuses that path for the host (DESIGN.md: a
/// node that refuses a path is not a version conflict).
enum class refusal {
  none,            ///< not a refusal
  redirected,      ///< 3xx: the node sends us elsewhere; not followed for a range
  unauthorized,    ///< 401: e.g. credentials bound to another path's address (signed URL)
  forbidden,       ///< 403: e.g. a token bound to the client's address
  not_found,       ///< 404, 410: the node doesn't have it
  unsatisfiable,   ///< 416: the node's copy is shorter
  rate_limited,    ///< 429: a per-address limit
  unavailable,     ///< 5xx
  ignores_ranges,  ///< a 200 (the whole object) to a range request without If-Range
  other,           ///< any other 4xx, or a 206 of another part than asked
};

/// The refusal a status says (2xx: none; a 200's meaning depends on the request).
refusal refusal_of(unsigned status);
std::string_view to_string(refusal reason);

}  // namespace fleety::mphttp
