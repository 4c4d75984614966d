#pragma once
// The HTTP decisions of the proxy, as pure functions over Beast's header types
// (RFC 9110 / RFC 9112). No I/O here: unit-tested with literal messages.

#include <boost/beast/http/fields.hpp>
#include <boost/beast/http/message.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace fleety::mphttp {

using request_header = boost::beast::http::request_header<>;
using response_header = boost::beast::http::response_header<>;

/// Where an explicit-proxy request goes (RFC 9112 §3.2.2 absolute-form).
struct proxy_target {
  std::string host;  ///< name or literal address, without brackets
  std::uint16_t port = 80;
  std::string origin_form;  ///< "/path?query" as sent upstream
  std::string authority;    ///< "host[:port]" for a missing Host header
};

/// Parses "http://host[:port]/path?query". nullopt for anything else (https, origin-form,
/// userinfo, a bad port): the proxy answers 400.
std::optional<proxy_target> parse_absolute_target(std::string_view target);

/// Removes hop-by-hop fields (RFC 9110 §7.6.1): Connection and the fields it names,
/// Keep-Alive, Proxy-Connection, Proxy-Authorization, Proxy-Authenticate, TE, Trailer,
/// Transfer-Encoding, Upgrade.
void strip_hop_by_hop(boost::beast::http::fields& fields);

/// "bytes 100-199/1000" (RFC 9110 §14.4).
struct content_range {
  std::uint64_t first = 0;
  std::uint64_t last = 0;  ///< inclusive
  std::uint64_t complete_length = 0;
};
std::optional<content_range> parse_content_range(std::string_view value);

/// The first response's strong validator (RFC 9110 §8.8.1), for If-Range on the other
/// paths: a strong ETag, else Last-Modified; empty when there is none usable.
std::string strong_validator(const response_header& response);

/// Whether the first path may ask for the head of the object only ("Range: bytes=0-N"
/// added to the app's GET), so that its first response ends where we choose instead of
/// being cut short, with what it has in flight thrown away. Only for a GET that has no
/// Range, If-Range or precondition of its own: for those the origin's answer would
/// differ in more than the framing.
bool may_ask_for_head_range(const request_header& request);

/// The 200 the origin would have sent for the whole object, rebuilt from its 206 to our
/// "bytes=0-N": status 200, Content-Length the complete length, without Content-Range
/// and Content-Digest (they describe the part), with Accept-Ranges: bytes (the 206
/// proves it; nginx says it in a 200, not in a 206). nullopt unless the 206 is one range
/// from byte 0, of known complete length, framed by a Content-Length that matches.
std::optional<response_header> whole_object_header(const response_header& partial);

/// Why a GET is, or is not, fetched over several paths.
enum class split_verdict {
  split,             ///< 200 (or 206 to the app's single range) with a known length, at
                     ///< least the threshold, the server takes ranges
  not_get,           ///< only GET is split
  app_conditional,   ///< If-Match / If-None-Match / If-(Un)Modified-Since: passed through
  multipart,         ///< a 206 to several ranges (multipart/byteranges): passed through
  not_ok,            ///< status other than 200 and 206
  unknown_length,    ///< chunked or close-delimited
  too_small,         ///< under min_split_bytes
  no_ranges,         ///< the server does not say Accept-Ranges: bytes
  single_path_only,  ///< fewer than two paths
  host_cooldown,     ///< the host served two versions of an object recently
};
std::string_view to_string(split_verdict verdict);

/// What to fetch over several paths: bytes [begin, end) of an object of `total` bytes
/// (the whole object for a 200, the app's range for a 206).
struct split_decision {
  split_verdict verdict = split_verdict::not_get;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
  std::uint64_t total = 0;
};

/// Decides from the app's request and the first path's response header. The app's own
/// Range (and If-Range) went to the origin unchanged: its single-range 206 is split like
/// a 200, its 200 (If-Range failed, or no range support) is a whole object. A server
/// must say Accept-Ranges: bytes — one that ignores Range would answer the other paths'
/// requests with the whole object (RFC 9110 §14.3).
split_decision decide_split(const request_header& request, const response_header& response,
                            std::uint64_t min_split_bytes, std::size_t usable_paths);

}  // namespace fleety::mphttp
