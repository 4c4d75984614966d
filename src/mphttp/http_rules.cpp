#include "mphttp/http_rules.hpp"

#include <algorithm>
#include <boost/beast/http/field.hpp>
#include <boost/beast/http/rfc7230.hpp>
#include <boost/url/parse.hpp>
#include <boost/url/url.hpp>
#include <charconv>
#include <ctime>
#include <string>
#include <vector>

namespace fleety::mphttp {
namespace http = boost::beast::http;

namespace {

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

/// If-Match, If-None-Match, If-(Un)Modified-Since (RFC 9110 §13.1): the answer depends
/// on the app's own validators, so the request goes as it is, on one path.
bool has_precondition(const request_header& request) {
  for (auto field : {http::field::if_match, http::field::if_none_match,
                     http::field::if_modified_since, http::field::if_unmodified_since}) {
    if (request.find(field) != request.end()) return true;
  }
  return false;
}

std::optional<std::uint64_t> parse_u64(std::string_view text) {
  std::uint64_t value = 0;
  if (text.empty()) return std::nullopt;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return value;
}

}  // namespace

namespace {

/// An http:// (or, with `allow_https`, https://) URL as a target; nullopt otherwise.
std::optional<proxy_target> parse_url_target(std::string_view target, bool allow_https) {
  auto url = boost::urls::parse_uri(target);
  if (!url) return std::nullopt;
  const bool https = iequals(url->scheme(), "https");
  if ((!iequals(url->scheme(), "http") && !(https && allow_https)) || !url->has_authority() ||
      url->has_userinfo()) {
    return std::nullopt;
  }
  proxy_target result;
  result.tls = https;
  result.port = https ? 443 : 80;
  result.host = url->encoded_host_address();
  if (result.host.size() >= 2 && result.host.front() == '[') {
    result.host = result.host.substr(1, result.host.size() - 2);
  }
  if (result.host.empty()) return std::nullopt;
  if (url->has_port()) {
    auto port = parse_u64(url->port());
    if (!port || *port == 0 || *port > 65535) return std::nullopt;
    result.port = static_cast<std::uint16_t>(*port);
  }
  result.authority = url->encoded_authority();
  result.origin_form = url->encoded_path();
  if (result.origin_form.empty()) result.origin_form = "/";
  if (url->has_query()) {
    result.origin_form += '?';
    result.origin_form += url->encoded_query();
  }
  return result;
}

}  // namespace

std::optional<proxy_target> parse_absolute_target(std::string_view target) {
  // An absolute-form request target has no fragment (RFC 9112 §3.2.2).
  if (target.find('#') != std::string_view::npos) return std::nullopt;
  return parse_url_target(target, /*allow_https=*/false);
}

std::optional<proxy_target> parse_download_url(std::string_view url) {
  return parse_url_target(url, /*allow_https=*/true);
}

std::optional<std::string> resolve_location(std::string_view base, std::string_view location) {
  auto base_url = boost::urls::parse_uri(base);
  auto reference = boost::urls::parse_uri_reference(location);
  if (!base_url || !reference) return std::nullopt;
  boost::urls::url resolved;
  if (!boost::urls::resolve(*base_url, *reference, resolved)) return std::nullopt;
  resolved.remove_fragment();
  return std::string(resolved.buffer());
}

std::optional<proxy_target> parse_intercepted_target(std::string_view target,
                                                     std::string_view host_field,
                                                     const boost::asio::ip::address& destination,
                                                     std::uint16_t port) {
  proxy_target result;
  if (!target.empty() && target.front() == '/') {
    auto origin = boost::urls::parse_origin_form(target);
    if (!origin) return std::nullopt;
    result.origin_form = target;
  } else if (auto absolute = parse_absolute_target(target)) {
    result.origin_form = absolute->origin_form;
    if (host_field.empty()) host_field = absolute->authority;
  } else {
    return std::nullopt;
  }
  std::string host(host_field);
  if (!host.empty() && host.front() == '[') {
    const auto close = host.find(']');
    if (close == std::string::npos) return std::nullopt;
    host = host.substr(1, close - 1);
  } else if (const auto colon = host.rfind(':'); colon != std::string::npos) {
    host.resize(colon);
  }
  result.host = host.empty() ? destination.to_string() : host;
  result.port = port;
  result.authority = host_field.empty() ? std::string(result.host) : std::string(host_field);
  result.destination = destination;
  return result;
}

bool wants_upgrade(const request_header& request) {
  if (request.find(http::field::upgrade) == request.end()) return false;
  for (auto it = request.find(http::field::connection);
       it != request.end() && it->name() == http::field::connection; ++it) {
    for (auto token : http::token_list(it->value()))
      if (iequals(token, "upgrade")) return true;
  }
  return false;
}

bool is_for_an_app_proxy(const request_header& request) {
  if (request.method() == http::verb::connect) return true;
  const auto target = request.target();
  return !target.empty() && target.front() != '/' && target != "*";
}

void strip_hop_by_hop(http::fields& fields) {
  // Fields named in Connection are hop-by-hop too (RFC 9110 §7.6.1).
  std::vector<std::string> named;
  for (auto it = fields.find(http::field::connection);
       it != fields.end() && it->name() == http::field::connection; ++it) {
    for (auto token : http::token_list(it->value())) named.emplace_back(token);
  }
  for (const auto& name : named) fields.erase(name);
  for (auto field :
       {http::field::connection, http::field::keep_alive, http::field::proxy_connection,
        http::field::proxy_authorization, http::field::proxy_authenticate, http::field::te,
        http::field::trailer, http::field::transfer_encoding, http::field::upgrade}) {
    fields.erase(field);
  }
}

std::optional<content_range> parse_content_range(std::string_view value) {
  constexpr std::string_view unit = "bytes ";
  if (value.size() <= unit.size() || !iequals(value.substr(0, unit.size()), unit))
    return std::nullopt;
  value.remove_prefix(unit.size());
  const auto dash = value.find('-');
  const auto slash = value.find('/');
  if (dash == std::string_view::npos || slash == std::string_view::npos || dash > slash) {
    return std::nullopt;
  }
  auto first = parse_u64(value.substr(0, dash));
  auto last = parse_u64(value.substr(dash + 1, slash - dash - 1));
  auto length = parse_u64(value.substr(slash + 1));  // "*" (unknown) is refused: we need it
  if (!first || !last || !length || *first > *last || *last >= *length) return std::nullopt;
  return content_range{*first, *last, *length};
}

std::optional<std::uint64_t> parse_unsatisfied_range(std::string_view value) {
  constexpr std::string_view unit = "bytes */";
  if (value.size() <= unit.size() || !iequals(value.substr(0, unit.size()), unit))
    return std::nullopt;
  return parse_u64(value.substr(unit.size()));
}

bool accepts_byte_ranges(const response_header& response) {
  for (auto unit : http::token_list(response[http::field::accept_ranges])) {
    if (iequals(unit, "bytes")) return true;
  }
  return false;
}

namespace {

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

std::string lowercase(std::string_view text) {
  std::string out(text);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

/// "a=1, b=2" → (a, 1), (b, 2); `unwrap` strips a byte sequence's colons (RFC 8941
/// §3.3.5: ":base64:").
void parse_pairs(std::string_view list, std::string_view prefix, bool unwrap,
                 std::vector<representation_digest>& out) {
  while (!list.empty()) {
    const auto comma = list.find(',');
    const auto item = trim(list.substr(0, comma));
    list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
    const auto equals = item.find('=');
    if (equals == std::string_view::npos || equals == 0) continue;
    auto value = trim(item.substr(equals + 1));
    if (unwrap) {
      if (value.size() < 2 || value.front() != ':' || value.back() != ':') continue;
      value = value.substr(1, value.size() - 2);
    }
    if (value.empty()) continue;
    out.push_back(
        {std::string(prefix) + lowercase(trim(item.substr(0, equals))), std::string(value)});
  }
}

}  // namespace

std::vector<representation_digest> representation_digests(const response_header& response) {
  std::vector<representation_digest> out;
  for (const auto& field : response) {
    const std::string name = lowercase(field.name_string());
    if (name == "repr-digest") {
      parse_pairs(field.value(), "", /*unwrap=*/true, out);
    } else if (name == "x-goog-hash") {
      parse_pairs(field.value(), "goog-", /*unwrap=*/false, out);
    } else if (name.starts_with("x-amz-checksum-") && name != "x-amz-checksum-type" &&
               name != "x-amz-checksum-mode" && !trim(field.value()).empty()) {
      out.push_back({"amz-" + name.substr(15), std::string(trim(field.value()))});
    }
  }
  return out;
}

std::optional<std::chrono::seconds> parse_retry_after(std::string_view value,
                                                      std::chrono::system_clock::time_point now) {
  value = trim(value);
  if (auto seconds = parse_u64(value)) return std::chrono::seconds(*seconds);
  // IMF-fixdate (RFC 9110 §5.6.7), the form senders must use: "Sun, 06 Nov 1994 08:49:37 GMT".
  std::tm tm{};
  const std::string text(value);
  const char* end = ::strptime(text.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  if (end == nullptr || *end != '\0') return std::nullopt;
  const auto at = std::chrono::system_clock::from_time_t(::timegm(&tm));
  if (at <= now) return std::chrono::seconds(0);
  return std::chrono::duration_cast<std::chrono::seconds>(at - now);
}

std::string strong_validator(const response_header& response) {
  auto etag = response[http::field::etag];
  if (!etag.empty() && !etag.starts_with("W/")) return std::string(etag);
  auto modified = response[http::field::last_modified];
  return std::string(modified);
}

std::optional<wanted_range> head_range_basis(const request_header& request) {
  if (request.method() != http::verb::get) return std::nullopt;
  if (has_precondition(request)) return std::nullopt;
  const auto range_field = request.find(http::field::range);
  if (range_field == request.end()) {
    if (request.find(http::field::if_range) != request.end()) return std::nullopt;
    return wanted_range{};
  }
  if (request.count(http::field::range) != 1) return std::nullopt;
  // RFC 9110 §14.1.1: "bytes=first-[last]"; suffixes and several ranges are not ours.
  std::string_view value = range_field->value();
  constexpr std::string_view unit = "bytes=";
  if (value.size() <= unit.size() || !iequals(value.substr(0, unit.size()), unit))
    return std::nullopt;
  value.remove_prefix(unit.size());
  const auto dash = value.find('-');
  if (dash == std::string_view::npos || value.find(',') != std::string_view::npos)
    return std::nullopt;
  const auto first = parse_u64(value.substr(0, dash));
  if (!first) return std::nullopt;
  wanted_range wanted{*first, std::nullopt, true};
  if (dash + 1 < value.size()) {
    wanted.last = parse_u64(value.substr(dash + 1));
    if (!wanted.last || *wanted.last < *first) return std::nullopt;
  }
  return wanted;
}

std::string head_range_field(const wanted_range& wanted, std::uint64_t bytes) {
  std::uint64_t last = wanted.first + std::max<std::uint64_t>(bytes, 1) - 1;
  if (wanted.last) last = std::min(last, *wanted.last);
  return "bytes=" + std::to_string(wanted.first) + "-" + std::to_string(last);
}

std::optional<response_header> app_view_of_head_range(const response_header& partial,
                                                      const wanted_range& wanted) {
  if (partial.result() != http::status::partial_content) return std::nullopt;
  if (partial.find(http::field::transfer_encoding) != partial.end()) return std::nullopt;
  const auto range = parse_content_range(partial[http::field::content_range]);
  const auto length = parse_u64(partial[http::field::content_length]);
  if (!range || range->first != wanted.first || !length ||
      *length != range->last + 1 - range->first)
    return std::nullopt;
  const std::uint64_t app_last =
      std::min(wanted.last.value_or(range->complete_length - 1), range->complete_length - 1);
  if (range->last > app_last) return std::nullopt;
  response_header view = partial;
  view.erase("Content-Digest");
  if (wanted.app_range) {
    view.set(http::field::content_range, "bytes " + std::to_string(wanted.first) + "-" +
                                             std::to_string(app_last) + "/" +
                                             std::to_string(range->complete_length));
    view.set(http::field::content_length, std::to_string(app_last + 1 - wanted.first));
    return view;
  }
  view.result(http::status::ok);
  view.erase(http::field::content_range);
  view.set(http::field::content_length, std::to_string(range->complete_length));
  if (view.find(http::field::accept_ranges) == view.end())
    view.set(http::field::accept_ranges, "bytes");
  return view;
}

std::string_view to_string(split_verdict verdict) {
  switch (verdict) {
    case split_verdict::split:
      return "split";
    case split_verdict::not_get:
      return "not a GET";
    case split_verdict::app_conditional:
      return "app sent a condition";
    case split_verdict::multipart:
      return "several ranges";
    case split_verdict::not_ok:
      return "status is not 200";
    case split_verdict::unknown_length:
      return "length unknown";
    case split_verdict::too_small:
      return "small object";
    case split_verdict::no_ranges:
      return "server does not take ranges";
    case split_verdict::single_path_only:
      return "one path only";
    case split_verdict::host_cooldown:
      return "host served two versions lately";
    case split_verdict::not_a_feature:
      return "no feature rule for it";
  }
  return "unknown";
}

split_decision decide_split(const request_header& request, const response_header& response,
                            std::uint64_t min_split_bytes, std::size_t usable_paths) {
  split_decision out;
  auto verdict = [&out](split_verdict v) {
    out.verdict = v;
    return out;
  };
  if (request.method() != http::verb::get) return verdict(split_verdict::not_get);
  if (has_precondition(request)) return verdict(split_verdict::app_conditional);
  if (response.result() != http::status::ok && response.result() != http::status::partial_content) {
    return verdict(split_verdict::not_ok);
  }
  if (response.find(http::field::transfer_encoding) != response.end()) {
    return verdict(split_verdict::unknown_length);
  }
  auto length = parse_u64(response[http::field::content_length]);
  if (!length) return verdict(split_verdict::unknown_length);
  if (response.result() == http::status::ok) {
    out.begin = 0;
    out.end = out.total = *length;
  } else {
    // Several ranges come as multipart/byteranges, without a Content-Range of their own.
    auto range = parse_content_range(response[http::field::content_range]);
    if (!range) return verdict(split_verdict::multipart);
    if (range->last - range->first + 1 != *length) return verdict(split_verdict::unknown_length);
    out.begin = range->first;
    out.end = range->last + 1;
    out.total = range->complete_length;
  }
  // A 206 is itself the proof (servers such as nginx don't repeat Accept-Ranges in it).
  const bool takes_ranges =
      response.result() == http::status::partial_content || accepts_byte_ranges(response);
  if (!takes_ranges) return verdict(split_verdict::no_ranges);
  if (out.end - out.begin < min_split_bytes) return verdict(split_verdict::too_small);
  if (usable_paths < 2) return verdict(split_verdict::single_path_only);
  return verdict(split_verdict::split);
}

split_decision decide_first_answer(const request_header& request, const response_header& answer,
                                   std::optional<std::uint64_t> head_end,
                                   const split_inputs& inputs) {
  auto decision = decide_split(request, answer, inputs.min_split_bytes, inputs.usable_paths);
  if (decision.verdict == split_verdict::split && !inputs.feature_allows)
    decision.verdict = split_verdict::not_a_feature;
  if (decision.verdict == split_verdict::split && !head_end && inputs.host_cooling)
    decision.verdict = split_verdict::host_cooldown;
  // (A host put in cooldown meanwhile still gets the verifier's checks.)
  if (head_end && decision.end > *head_end) decision.verdict = split_verdict::split;
  return decision;
}

}  // namespace fleety::mphttp
