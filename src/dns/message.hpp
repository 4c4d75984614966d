#pragma once
// DNS messages as the duplicator sees them (RFC 1035 §4.1): the question of a query,
// the replies it builds itself, and the addresses an answer carries. Pure functions.

#include <boost/asio/ip/address.hpp>
#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace fleety::dns {

struct question {
  std::uint16_t id = 0;
  std::string name;  ///< lower case, no trailing dot
  std::uint16_t type = 0;
  std::uint16_t qclass = 0;
  bool has_additional = false;  ///< e.g. an EDNS OPT record: the app takes > 512 bytes
};

/// The question of a standard query (QR 0, opcode QUERY, one question); nullopt for
/// anything else or a malformed message.
std::optional<question> parse_query(std::span<const std::uint8_t> message);

/// A reply to `query` with no answers and `rcode` (1 FORMERR, 2 SERVFAIL, 4 NOTIMP). A
/// message too short to have an ID gets none (nullopt).
std::optional<std::vector<std::uint8_t>> error_reply(std::span<const std::uint8_t> query,
                                                     std::uint8_t rcode);

/// `reply` cut to its header and question with TC set, for a UDP client whose limit it
/// exceeds (it asks again over TCP, RFC 1035 §4.2.1).
std::vector<std::uint8_t> truncated_reply(std::span<const std::uint8_t> reply);

/// The response code of a reply (0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED).
std::optional<std::uint8_t> response_code(std::span<const std::uint8_t> reply);

/// The A and AAAA addresses in a reply's answer section and their smallest TTL.
struct answer_addresses {
  std::vector<boost::asio::ip::address> addresses;
  std::chrono::seconds ttl{0};
};
answer_addresses addresses_in(std::span<const std::uint8_t> reply);

}  // namespace fleety::dns
