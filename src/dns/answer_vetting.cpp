#include "dns/answer_vetting.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <string>

namespace fleety::dns {
namespace {

bool ends_with_label(std::string_view name, std::string_view suffix) {
  if (name.size() < suffix.size()) return false;
  const auto tail = name.substr(name.size() - suffix.size());
  if (!std::equal(tail.begin(), tail.end(), suffix.begin(), suffix.end(),
                  [](char a, char b) { return std::tolower(static_cast<unsigned char>(a)) == b; }))
    return false;
  return name.size() == suffix.size() || name[name.size() - suffix.size() - 1] == '.';
}

bool internal_v4(const boost::asio::ip::address_v4& v4) {
  const auto b = v4.to_bytes();
  return v4.is_loopback() || v4.is_unspecified() || v4.is_multicast() || b[0] == 10 || b[0] == 0 ||
         (b[0] == 172 && (b[1] & 0xf0) == 16) || (b[0] == 192 && b[1] == 168) ||
         (b[0] == 169 && b[1] == 254) || (b[0] == 100 && (b[1] & 0xc0) == 64) ||
         v4 == boost::asio::ip::address_v4::broadcast();
}

}  // namespace

bool is_internal_name(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty() || name.find('.') == std::string_view::npos) return true;
  constexpr std::array<std::string_view, 10> suffixes{"local",    "lan",        "home", "home.arpa",
                                                      "internal", "intranet",   "corp", "localhost",
                                                      "arpa",     "localdomain"};
  return std::any_of(suffixes.begin(), suffixes.end(),
                     [&](std::string_view s) { return ends_with_label(name, s); });
}

bool is_internal_address(const boost::asio::ip::address& address) {
  if (address.is_v4()) return internal_v4(address.to_v4());
  const auto v6 = address.to_v6();
  if (v6.is_v4_mapped())
    return internal_v4(boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, v6));
  const auto b = v6.to_bytes();
  return v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || v6.is_link_local() ||
         (b[0] & 0xfe) == 0xfc;  // fc00::/7, unique local
}

vetted_answer vet_answer(std::string_view name, std::vector<boost::asio::ip::address> addresses,
                         std::chrono::seconds ttl, const answer_rules& rules) {
  vetted_answer out;
  out.ttl = std::clamp(ttl, std::chrono::seconds(0), rules.max_ttl);
  if (!rules.allow_internal && !is_internal_name(name)) {
    const auto kept = std::remove_if(addresses.begin(), addresses.end(),
                                     [](const auto& a) { return is_internal_address(a); });
    out.dropped = static_cast<std::size_t>(addresses.end() - kept);
    addresses.erase(kept, addresses.end());
  }
  out.addresses = std::move(addresses);
  return out;
}

}  // namespace fleety::dns
