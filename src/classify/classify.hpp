#pragma once
// The flow classifier (paper §4.1): what an intercepted TCP flow is, from the first
// bytes the app sends, and whether an HTTP request may become a multipath download
// under the feature rules. Pure functions of data, no I/O: the intercept listener
// peeks and asks, the MPHTTP session asks before it splits.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/config.hpp"

namespace re2 {
class RE2;
}

namespace fleety::classify {

enum class flow_kind {
  need_more,         ///< a prefix of an HTTP request line or of a TLS ClientHello so far
  http,              ///< an HTTP/1.x request line
  tls_client_hello,  ///< a TLS handshake record that starts a ClientHello
  other,             ///< anything else: relayed as bytes
};

struct flow_class {
  flow_kind kind = flow_kind::need_more;
  std::string method;       ///< HTTP: the request method ("GET")
  std::string target;       ///< HTTP: the request target as sent ("/a/b.ts?x=1")
  std::string server_name;  ///< TLS: the SNI host name, lower case; empty if none
};

/// A verdict without details.
inline flow_class flow_of(flow_kind kind) {
  flow_class verdict;
  verdict.kind = kind;
  return verdict;
}

/// How many bytes the classifier may need: a longer request line, or a ClientHello
/// record that does not end within this, is classed with what it has (HTTP: other;
/// TLS: a ClientHello whose SNI may be missing).
inline constexpr std::size_t max_peek_bytes = 16 * 1024 + 5;

/// Classifies a flow from the first bytes the app sent (all of them so far).
flow_class classify_first_bytes(std::string_view bytes);

/// What the feature rules look at in an HTTP request.
struct request_view {
  std::string_view host;    ///< from Host (or the absolute target), without port
  std::string_view target;  ///< the request target ("/path?query")
  std::vector<std::pair<std::string_view, std::string_view>> fields;  ///< name, value
};

/// A compiled RE2 pattern: matching takes time linear in the input (the input is the
/// app's request, which the remote side may shape), and no more than
/// `max_match_input` bytes of it are looked at.
using compiled_pattern = std::shared_ptr<const re2::RE2>;
inline constexpr std::size_t max_match_input = 8 * 1024;

/// One feature rule (config `[[feature]]`): every condition given must hold.
struct feature_rule {
  std::string name;
  std::vector<std::string> hosts;       ///< "example.com", "*.cdn.example.com"; empty: any
  compiled_pattern path_regex;          ///< searched in the path (without the query); or null
  std::string path_regex_text;          ///< as written, for logs
  std::vector<std::string> extensions;  ///< "ts", "m4s" (without the dot, lower case)
  /// Field name (any case) and a pattern searched in its value.
  std::vector<std::pair<std::string, compiled_pattern>> headers;
  std::vector<std::string> headers_text;
  std::optional<std::uint64_t> min_size;  ///< objects smaller than this stay on one path
  bool multipath = true;                  ///< false: matching requests never split
};

/// The rules in order; the first that matches decides.
struct feature_rules {
  std::vector<feature_rule> rules;
  /// When no rule matches: true = any GET may split (by size), false = none.
  bool multipath_by_default = true;
  /// The HTTP-DNS endpoints (config `[[http_dns]]`), reloaded with the rules.
  std::vector<core::http_dns_config> http_dns;
};

struct feature_decision {
  bool multipath = false;
  std::optional<std::uint64_t> min_size;  ///< the matching rule's, if it has one
  std::string rule;                       ///< name of the matching rule; empty: default
};

/// Whether `host` matches `pattern`: exact (case-insensitive), or "*.example.com" for
/// any name below example.com (not example.com itself).
bool host_matches(std::string_view pattern, std::string_view host);

/// The extension of the last path segment, lower case, without the dot ("" if none).
std::string path_extension(std::string_view target);

feature_decision decide_feature(const feature_rules& rules, const request_view& request);

/// Whether the target names what apps download whole (issue 17: "segment and package
/// URLs"): a media segment or file (m4s, ts, mp4, webm, mp3, ...), a package or an
/// archive (deb, rpm, apk, iso, zip, tar.gz, ...), by the extension of its last segment.
/// A prediction only: the first answer's size decides whether it splits.
bool names_a_download(std::string_view target);

/// A request to an HTTP-DNS endpoint: which one, and the name it asks for.
struct http_dns_request {
  const core::http_dns_config* endpoint = nullptr;
  std::string asked_name;  ///< the first name parameter's value, decoded; empty if none
};

/// Whether `request` asks an HTTP-DNS endpoint: one of its host patterns matches the
/// request's host or `destination` (the address the app connected to, "" if none), and
/// the path is the endpoint's or below it ("/d" matches "/d", "/d?x" and "/d/v4", not "/dx").
std::optional<http_dns_request> match_http_dns(const std::vector<core::http_dns_config>& endpoints,
                                               const request_view& request,
                                               std::string_view destination);

/// The config's `[[feature]]` entries, compiled (the config has checked the regexes).
feature_rules compile_feature_rules(const std::vector<core::feature_config>& features,
                                    bool multipath_by_default);

/// All of the config's rules: `[[feature]]`, `[classify]` and `[[http_dns]]`.
feature_rules compile_feature_rules(const core::config& config);

}  // namespace fleety::classify
