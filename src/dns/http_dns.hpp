#pragma once
// HTTP-DNS replies (paper §4.1): apps that resolve names over HTTP instead of DNS (video
// platforms do) get addresses in a JSON document, a plain list ("198.18.10.1;198.18.10.2,
// 300") or inside URLs. This reads the addresses out of such a reply so that the DNS
// information database learns them for the path the reply came over. Pure, bounded.

#include <boost/asio/ip/address.hpp>
#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace fleety::dns {

/// The addresses a reply gives for one name.
struct http_dns_answer {
  std::string name;  ///< normalized ("video.example.com")
  std::vector<boost::asio::ip::address> addresses;
  std::chrono::seconds ttl{0};
};

struct http_dns_limits {
  std::size_t max_names = 64;
  std::size_t max_addresses_per_name = 16;
};

/// The answers in an HTTP-DNS reply body.
///
/// JSON (a body that parses as JSON): every string that is an address, holds addresses
/// ("a;b"), or is a URL whose host is an address, counts. Its name is the nearest
/// enclosing object's "host", "domain", "dn", "name" or "hostname" (as in
/// {"host":"a.com","ips":["198.18.10.1"],"ttl":60} or DoH's JSON {"Answer":[{"name":
/// "a.com.","TTL":60,"data":"198.18.10.1"}]}), else `asked_name`; its TTL the nearest
/// enclosing "ttl" (any case), else `default_ttl`.
/// Anything else is text: the addresses and URL hosts among its tokens are `asked_name`'s;
/// a trailing ",N" is the TTL (DNSPod's "a;b,N").
/// Addresses without a name (no `asked_name`) are left out; so is anything past `limits`.
std::vector<http_dns_answer> parse_http_dns_reply(std::string_view body,
                                                  std::string_view asked_name,
                                                  std::chrono::seconds default_ttl,
                                                  const http_dns_limits& limits = {});

/// The answers fleetyd may keep from a reply to a query for `asked_name` (one name, or a
/// batch "a.com,b.com"): those for the names asked, so that a reply cannot place
/// addresses for names the app never looked up. A query whose name fleetyd could not
/// read keeps the reply's first `unasked_names` names.
std::vector<http_dns_answer> answers_for_asked(std::vector<http_dns_answer> answers,
                                               std::string_view asked_name,
                                               std::size_t unasked_names = 4);

}  // namespace fleety::dns
