#pragma once
// The HTTP decisions of the proxy, as pure functions over Beast's header types
// (RFC 9110 / RFC 9112). No I/O here: unit-tested with literal messages.

#include <boost/asio/ip/address.hpp>
#include <boost/beast/http/fields.hpp>
#include <boost/beast/http/message.hpp>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mphttp/byte_range.hpp"
#include "mphttp/response_facts.hpp"

namespace fleety::mphttp {

using request_header = boost::beast::http::request_header<>;
using response_header = boost::beast::http::response_header<>;

/// Where a request goes: an explicit-proxy request's absolute-form URL (RFC 9112
/// §3.2.2), or an intercepted request's Host and the address the app connected to.
struct proxy_target {
  std::string host;  ///< name or literal address, without brackets
  std::uint16_t port = 80;
  std::string origin_form;  ///< "/path?query" as sent upstream
  std::string authority;    ///< "host[:port]" for a missing Host header
  bool tls = false;         ///< an https:// URL (the download client only)
  /// Intercepted: the address the app connected to. The first path goes there (the app
  /// chose it); the others to their own resolver's answer for `host`, else there too.
  std::optional<boost::asio::ip::address> destination;
  /// Where each other path goes instead of `destination`: the DNS information database's
  /// counterpart of it for that path (path name, address), when it knows one.
  std::vector<std::pair<std::string, boost::asio::ip::address>> path_servers;

  const boost::asio::ip::address* server_on(std::string_view path) const {
    for (const auto& [name, address] : path_servers)
      if (name == path) return &address;
    return nullptr;
  }
};

/// Parses "http://host[:port]/path?query". nullopt for anything else (https, origin-form,
/// userinfo, a bad port): the proxy answers 400.
std::optional<proxy_target> parse_absolute_target(std::string_view target);

/// A URL to download (`fleety get`): "http://" or "https://" host[:port] path?query; the
/// fragment is not sent. nullopt for anything else (another scheme, userinfo, a bad port).
std::optional<proxy_target> parse_download_url(std::string_view url);

/// Where a redirect's Location (RFC 9110 §10.2.2, maybe relative) points from `base`,
/// without fragment; nullopt when it doesn't parse.
std::optional<std::string> resolve_location(std::string_view base, std::string_view location);

/// An intercepted request: its target (origin-form, or absolute-form http://) and Host
/// field, sent to `destination`:`port`. The host is Host's (else the destination's
/// address); the port is always the one the app connected to. nullopt for a target
/// that is neither (the session answers 400).
std::optional<proxy_target> parse_intercepted_target(std::string_view target,
                                                     std::string_view host_field,
                                                     const boost::asio::ip::address& destination,
                                                     std::uint16_t port);

/// Whether the app asks to switch protocols (RFC 9110 §7.8): an Upgrade field, named in
/// Connection (WebSocket's handshake, RFC 6455 §4.1).
bool wants_upgrade(const request_header& request);

/// Whether an intercepted connection's request is meant for a proxy the app itself uses:
/// CONNECT, or a target in absolute form (RFC 9112 §3.2.2). The connection is then relayed
/// as bytes to where the app sent it: that proxy, not us, is its server.
bool is_for_an_app_proxy(const request_header& request);

/// Removes hop-by-hop fields (RFC 9110 §7.6.1): Connection and the fields it names,
/// Keep-Alive, Proxy-Connection, Proxy-Authorization, Proxy-Authenticate, TE, Trailer,
/// Transfer-Encoding, Upgrade.
void strip_hop_by_hop(boost::beast::http::fields& fields);

std::optional<content_range> parse_content_range(std::string_view value);
/// The complete length of a 416's "bytes */1000" (RFC 9110 §14.4: unsatisfied-range).
std::optional<std::uint64_t> parse_unsatisfied_range(std::string_view value);

/// The digests of the whole representation in a response (response_facts.hpp).
std::vector<representation_digest> representation_digests(const response_header& response);

/// Retry-After (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date taken against `now`;
/// nullopt when it doesn't parse. A date in the past is 0 s.
std::optional<std::chrono::seconds> parse_retry_after(std::string_view value,
                                                      std::chrono::system_clock::time_point now);

/// Whether the response says Accept-Ranges: bytes (RFC 9110 §14.3; any case, in a list).
bool accepts_byte_ranges(const response_header& response);

/// The first response's strong validator (RFC 9110 §8.8.1), for If-Range on the other
/// paths: a strong ETag, else Last-Modified; empty when there is none usable.
std::string strong_validator(const response_header& response);

/// What the app asked for, as the first path's head range can stand in for it: the
/// whole object (no Range), or its single range "first-" or "first-last".
struct wanted_range {
  std::uint64_t first = 0;
  std::optional<std::uint64_t> last;  ///< inclusive; none: to the end of the object
  bool app_range = false;             ///< the app sent this Range (else: the whole object)
};

/// Whether the first path may ask for the head of what the app wants only, so that its
/// first response ends where we choose instead of being cut short with what it has in
/// flight thrown away. Only for a GET whose answer can be rebuilt exactly from the head
/// range's 206: no precondition (If-Match, If-None-Match, If-(Un)Modified-Since), no
/// suffix or multiple ranges, no If-Range without a Range (our Range would give it a
/// meaning it doesn't have). nullopt otherwise: the request goes as is.
std::optional<wanted_range> head_range_basis(const request_header& request);

/// The Range field the first path sends instead of the app's: at most `bytes` bytes from
/// the start of `wanted`.
std::string head_range_field(const wanted_range& wanted, std::uint64_t bytes);

/// The response the origin would have sent the app, rebuilt from its 206 to the head
/// range of `wanted`: for the whole object its 200 (Content-Length the complete length,
/// no Content-Range, Accept-Ranges: bytes — the 206 proves it, and nginx says it in a
/// 200, not in a 206); for the app's range the 206 to that range (Content-Range and
/// Content-Length of the app's range, cut to the object). Content-Digest, which
/// describes the part, is dropped. nullopt unless the 206 is one part starting where
/// `wanted` does, within it, of known complete length, framed by a matching
/// Content-Length.
std::optional<response_header> app_view_of_head_range(const response_header& partial,
                                                      const wanted_range& wanted);

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
  not_a_feature,     ///< the feature rules keep this request on one path
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

/// What else decides a split, besides the answer.
struct split_inputs {
  std::uint64_t min_split_bytes = 0;
  std::size_t usable_paths = 0;
  bool feature_allows = true;  ///< the feature rules let this request split
  bool host_cooling = false;   ///< the host served two versions lately
};

/// The verdict on the first path's answer, for the proxy and the download client alike.
/// `answer` is what the origin answers to what is wanted: its own answer, or the one
/// rebuilt from our head range's 206 (app_view_of_head_range), which then ends at
/// `head_end`. decide_split's rules, vetoed by the feature rules and the host's cooldown
/// — but what lies past a head range must be fetched anyway, so that is over every path.
split_decision decide_first_answer(const request_header& request, const response_header& answer,
                                   std::optional<std::uint64_t> head_end,
                                   const split_inputs& inputs);

}  // namespace fleety::mphttp
