#pragma once
// What fleetyd accepts from a resolver or an HTTP-DNS reply before it connects to it or
// keeps it (issue 18): a path's resolver, or the body of an HTTP response, is input the
// network controls. A public name does not get loopback, private or link-local
// addresses (that would point fleetyd's own connections at this host or its LAN), and no
// answer is kept longer than a cap. Pure.

#include <boost/asio/ip/address.hpp>
#include <chrono>
#include <cstddef>
#include <string_view>
#include <vector>

namespace fleety::dns {

struct answer_rules {
  std::chrono::seconds max_ttl{3600};  ///< `[dns] max_ttl`
  /// `[dns] allow_internal_answers`: a split-horizon network whose public names resolve
  /// to private addresses on purpose.
  bool allow_internal = false;
};

/// A name that only means something inside a network: one label ("router"), or under
/// .local, .lan, .home, .home.arpa, .internal, .intranet, .corp, .localhost, or a
/// reverse-lookup zone (.arpa). Those may resolve to internal addresses.
bool is_internal_name(std::string_view name);

/// Loopback, unspecified, private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local
/// (169.254/16, fe80::/10), shared (100.64/10), multicast, and IPv4-mapped forms of them.
bool is_internal_address(const boost::asio::ip::address& address);

struct vetted_answer {
  std::vector<boost::asio::ip::address> addresses;  ///< may be empty: nothing usable
  std::chrono::seconds ttl{0};
  std::size_t dropped = 0;  ///< internal addresses left out
};

/// The answer for `name` as fleetyd may use it: TTL capped at rules.max_ttl, internal
/// addresses left out for a name that is not internal (unless rules.allow_internal).
vetted_answer vet_answer(std::string_view name, std::vector<boost::asio::ip::address> addresses,
                         std::chrono::seconds ttl, const answer_rules& rules);

}  // namespace fleety::dns
