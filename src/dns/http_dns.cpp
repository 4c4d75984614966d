#include "dns/http_dns.hpp"

#include <algorithm>
#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>
#include <cctype>
#include <charconv>
#include <optional>

#include "dns/info_db.hpp"

namespace fleety::dns {
namespace {

namespace json = boost::json;
using address = boost::asio::ip::address;

/// Object keys that name what the addresses beside them are for.
constexpr std::string_view name_keys[] = {"host", "domain", "dn", "name", "hostname"};
/// The longest TTL taken from a reply (a day): a reply can't pin a server for weeks.
constexpr std::int64_t max_ttl_seconds = 86400;

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::optional<address> literal_address(std::string_view text) {
  if (text.size() >= 2 && text.front() == '[' && text.back() == ']')
    text = text.substr(1, text.size() - 2);
  if (text.empty() || text.size() > 45) return std::nullopt;
  boost::system::error_code ec;
  const auto parsed = boost::asio::ip::make_address(std::string(text), ec);
  if (ec || parsed.is_unspecified() || parsed.is_multicast()) return std::nullopt;
  // A scoped IPv6 address ("fe80::1%eth0") only means something on the replier's host.
  if (parsed.is_v6() && parsed.to_v6().scope_id() != 0) return std::nullopt;
  return parsed;
}

/// The host of "scheme://[userinfo@]host[:port][/...]" if it is an address.
std::optional<address> url_host_address(std::string_view url) {
  const auto scheme_end = url.find("://");
  if (scheme_end == std::string_view::npos) return std::nullopt;
  std::string_view rest = url.substr(scheme_end + 3);
  rest = rest.substr(0, rest.find_first_of("/?#"));
  if (const auto at = rest.rfind('@'); at != std::string_view::npos) rest = rest.substr(at + 1);
  if (!rest.empty() && rest.front() == '[')
    return literal_address(rest.substr(0, rest.find(']') + 1));
  return literal_address(rest.substr(0, rest.find(':')));
}

/// An address written as "198.18.10.1", "198.18.10.1:80", "[2001:db8::1]:80" or inside a URL.
std::optional<address> token_address(std::string_view token) {
  if (token.find("://") != std::string_view::npos) return url_host_address(token);
  if (auto a = literal_address(token)) return a;
  if (!token.empty() && token.front() == '[') {
    const auto close = token.find(']');
    if (close != std::string_view::npos) return literal_address(token.substr(0, close + 1));
  }
  const auto colon = token.find(':');
  if (colon != std::string_view::npos && token.find(':', colon + 1) == std::string_view::npos)
    return literal_address(token.substr(0, colon));
  return std::nullopt;
}

bool is_separator(char c) {
  return std::isspace(static_cast<unsigned char>(c)) != 0 ||
         std::string_view(",;|\"'<>(){}").find(c) != std::string_view::npos;
}

/// Calls `found` for each address among the tokens of `text`.
template <class Found>
void for_each_address(std::string_view text, Found found) {
  std::size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && is_separator(text[i])) ++i;
    std::size_t end = i;
    while (end < text.size() && !is_separator(text[end])) ++end;
    if (end > i) {
      if (auto a = token_address(text.substr(i, end - i))) found(*a);
    }
    i = end;
  }
}

/// A name worth recording: a DNS name (letters, digits, '-', '_', dots), not an address.
std::optional<std::string> host_name(std::string_view text) {
  std::string name = info_db::normalize(text);
  if (name.empty() || name.size() > 253 || literal_address(name)) return std::nullopt;
  const bool valid = std::all_of(name.begin(), name.end(), [](unsigned char c) {
    return std::isalnum(c) != 0 || c == '-' || c == '_' || c == '.';
  });
  if (!valid || name.front() == '.' || name.back() == '.' || name.find("..") != std::string::npos)
    return std::nullopt;
  return name;
}

class collector {
 public:
  collector(std::chrono::seconds default_ttl, const http_dns_limits& limits)
      : default_ttl_(default_ttl), limits_(limits) {}

  void add(const std::optional<std::string>& name, const address& a,
           std::optional<std::chrono::seconds> ttl) {
    if (!name) return;
    auto it = std::find_if(answers_.begin(), answers_.end(),
                           [&](const http_dns_answer& x) { return x.name == *name; });
    if (it == answers_.end()) {
      if (answers_.size() >= limits_.max_names) return;
      answers_.push_back({*name, {}, ttl.value_or(default_ttl_)});
      it = answers_.end() - 1;
    } else if (ttl) {
      it->ttl = std::min(it->ttl, *ttl);  // like DNS: the smallest TTL of the records
    }
    if (it->addresses.size() < limits_.max_addresses_per_name &&
        std::find(it->addresses.begin(), it->addresses.end(), a) == it->addresses.end())
      it->addresses.push_back(a);
  }

  std::vector<http_dns_answer> take() { return std::move(answers_); }

 private:
  std::chrono::seconds default_ttl_;
  const http_dns_limits& limits_;
  std::vector<http_dns_answer> answers_;
};

std::optional<std::chrono::seconds> ttl_of(const json::value& v) {
  std::int64_t seconds = -1;
  if (v.is_int64()) seconds = v.get_int64();
  if (v.is_uint64())
    seconds = static_cast<std::int64_t>(std::min<std::uint64_t>(v.get_uint64(), max_ttl_seconds));
  if (v.is_double() && v.get_double() >= 0)
    seconds = static_cast<std::int64_t>(std::min(v.get_double(), 1e9));
  if (v.is_string()) {
    const auto& s = v.get_string();
    std::from_chars(s.data(), s.data() + s.size(), seconds);
  }
  if (seconds < 0) return std::nullopt;
  return std::chrono::seconds(std::min(seconds, max_ttl_seconds));
}

void walk(const json::value& v, const std::optional<std::string>& name,
          std::optional<std::chrono::seconds> ttl, collector& out) {
  if (v.is_string()) {
    const auto& s = v.get_string();
    for_each_address(std::string_view(s.data(), s.size()),
                     [&](const address& a) { out.add(name, a, ttl); });
    return;
  }
  if (v.is_array()) {
    for (const auto& element : v.get_array()) walk(element, name, ttl, out);
    return;
  }
  if (!v.is_object()) return;
  const auto& object = v.get_object();
  std::optional<std::string> own_name = name;
  std::optional<std::chrono::seconds> own_ttl = ttl;
  for (const auto& member : object) {
    const std::string_view key(member.key().data(), member.key().size());
    if (iequals(key, "ttl")) {
      if (auto t = ttl_of(member.value())) own_ttl = t;
      continue;
    }
    if (member.value().is_string() &&
        std::any_of(std::begin(name_keys), std::end(name_keys),
                    [&](std::string_view k) { return iequals(key, k); })) {
      const auto& s = member.value().get_string();
      if (auto n = host_name(std::string_view(s.data(), s.size()))) own_name = std::move(n);
    }
  }
  for (const auto& member : object) walk(member.value(), own_name, own_ttl, out);
}

/// DNSPod's "a;b,N": the TTL after the last comma.
std::optional<std::chrono::seconds> trailing_ttl(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back())))
    text.remove_suffix(1);
  const auto comma = text.rfind(',');
  if (comma == std::string_view::npos || comma + 1 == text.size()) return std::nullopt;
  const auto digits = text.substr(comma + 1);
  std::int64_t seconds = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), seconds);
  if (ec != std::errc{} || end != digits.data() + digits.size() || seconds < 0) return std::nullopt;
  return std::chrono::seconds(std::min(seconds, max_ttl_seconds));
}

}  // namespace

std::vector<http_dns_answer> parse_http_dns_reply(std::string_view body,
                                                  std::string_view asked_name,
                                                  std::chrono::seconds default_ttl,
                                                  const http_dns_limits& limits) {
  collector out(default_ttl, limits);
  const auto asked = host_name(asked_name);
  const auto first = body.find_first_not_of(" \t\r\n");
  if (first != std::string_view::npos && (body[first] == '{' || body[first] == '[')) {
    boost::system::error_code ec;
    const json::value document = json::parse(body, ec);
    if (!ec) {
      walk(document, asked, std::nullopt, out);
      return out.take();
    }
  }
  const auto ttl = trailing_ttl(body);
  for_each_address(body, [&](const address& a) { out.add(asked, a, ttl); });
  return out.take();
}

std::vector<http_dns_answer> answers_for_asked(std::vector<http_dns_answer> answers,
                                               std::string_view asked_name,
                                               std::size_t unasked_names) {
  std::vector<std::string> asked;
  for (std::size_t at = 0; at <= asked_name.size();) {
    const std::size_t comma = std::min(asked_name.find(',', at), asked_name.size());
    if (auto name = info_db::normalize(asked_name.substr(at, comma - at)); !name.empty())
      asked.push_back(std::move(name));
    at = comma + 1;
  }
  std::vector<http_dns_answer> out;
  for (auto& answer : answers) {
    const bool wanted = asked.empty()
                            ? out.size() < unasked_names
                            : std::find(asked.begin(), asked.end(), answer.name) != asked.end();
    if (wanted) out.push_back(std::move(answer));
  }
  return out;
}

}  // namespace fleety::dns
