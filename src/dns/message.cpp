#include "dns/message.hpp"

#include <algorithm>

namespace fleety::dns {
namespace {

constexpr std::size_t header_size = 12;
constexpr std::uint16_t type_a = 1;
constexpr std::uint16_t type_aaaa = 28;

std::uint16_t u16(std::span<const std::uint8_t> m, std::size_t at) {
  return static_cast<std::uint16_t>((m[at] << 8) | m[at + 1]);
}

/// Skips a (possibly compressed) name at `at`; the offset after it, or nullopt.
std::optional<std::size_t> skip_name(std::span<const std::uint8_t> m, std::size_t at) {
  for (int labels = 0; labels < 128; ++labels) {
    if (at >= m.size()) return std::nullopt;
    const std::uint8_t length = m[at];
    if (length == 0) return at + 1;
    if ((length & 0xc0) == 0xc0) return at + 2 <= m.size() ? std::optional(at + 2) : std::nullopt;
    if ((length & 0xc0) != 0) return std::nullopt;
    at += 1 + length;
  }
  return std::nullopt;
}

}  // namespace

std::optional<question> parse_query(std::span<const std::uint8_t> m) {
  if (m.size() < header_size || m.size() > 65535) return std::nullopt;
  const std::uint16_t flags = u16(m, 2);
  if ((flags & 0x8000) != 0 || ((flags >> 11) & 0xf) != 0) return std::nullopt;  // QR, opcode
  if (u16(m, 4) != 1 || u16(m, 6) != 0 || u16(m, 8) != 0) return std::nullopt;
  question q;
  q.id = u16(m, 0);
  q.has_additional = u16(m, 10) != 0;
  std::size_t at = header_size;
  // The question's name is never compressed (nothing precedes it to point to).
  while (true) {
    if (at >= m.size()) return std::nullopt;
    const std::uint8_t length = m[at++];
    if (length == 0) break;
    if ((length & 0xc0) != 0 || at + length > m.size()) return std::nullopt;
    if (!q.name.empty()) q.name.push_back('.');
    for (std::size_t k = 0; k < length; ++k) {
      const auto c = static_cast<char>(m[at + k]);
      q.name.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c);
    }
    at += length;
    if (q.name.size() > 253) return std::nullopt;
  }
  if (at + 4 > m.size()) return std::nullopt;
  q.type = u16(m, at);
  q.qclass = u16(m, at + 2);
  return q;
}

std::optional<std::vector<std::uint8_t>> error_reply(std::span<const std::uint8_t> query,
                                                     std::uint8_t rcode) {
  if (query.size() < header_size) return std::nullopt;
  std::vector<std::uint8_t> reply(query.begin(), query.begin() + header_size);
  // Keep the question when it parses, so the client can match the reply.
  if (parse_query(query)) {
    auto end = skip_name(query, header_size);
    if (end && *end + 4 <= query.size())
      reply.assign(query.begin(), query.begin() + static_cast<std::ptrdiff_t>(*end + 4));
  }
  const bool keeps_question = reply.size() > header_size;
  reply[2] = static_cast<std::uint8_t>(0x80 | (query[2] & 0x79));  // QR, opcode, RD kept
  reply[3] = static_cast<std::uint8_t>(0x80 | (rcode & 0x0f));     // RA
  reply[4] = 0;
  reply[5] = keeps_question ? 1 : 0;
  std::fill(reply.begin() + 6, reply.begin() + header_size, 0);
  return reply;
}

std::vector<std::uint8_t> truncated_reply(std::span<const std::uint8_t> reply) {
  std::vector<std::uint8_t> out(reply.begin(), reply.begin() + static_cast<std::ptrdiff_t>(std::min(
                                                                   reply.size(), header_size)));
  if (out.size() < header_size) return out;
  std::size_t end = header_size;
  if (u16(reply, 4) == 1) {
    if (auto after = skip_name(reply, header_size); after && *after + 4 <= reply.size())
      end = *after + 4;
  }
  out.assign(reply.begin(), reply.begin() + static_cast<std::ptrdiff_t>(end));
  out[2] |= 0x02;  // TC
  out[5] = end > header_size ? 1 : 0;
  out[4] = 0;
  std::fill(out.begin() + 6, out.begin() + header_size, 0);
  return out;
}

std::optional<std::uint8_t> response_code(std::span<const std::uint8_t> reply) {
  if (reply.size() < header_size) return std::nullopt;
  return static_cast<std::uint8_t>(reply[3] & 0x0f);
}

answer_addresses addresses_in(std::span<const std::uint8_t> m) {
  answer_addresses out;
  if (m.size() < header_size) return out;
  const std::uint16_t questions = u16(m, 4);
  const std::uint16_t answers = u16(m, 6);
  std::size_t at = header_size;
  for (std::uint16_t k = 0; k < questions; ++k) {
    auto after = skip_name(m, at);
    if (!after || *after + 4 > m.size()) return out;
    at = *after + 4;
  }
  std::optional<std::uint32_t> smallest_ttl;
  for (std::uint16_t k = 0; k < answers; ++k) {
    auto after = skip_name(m, at);
    if (!after || *after + 10 > m.size()) return out;
    at = *after;
    const std::uint16_t type = u16(m, at);
    const std::uint32_t ttl = (static_cast<std::uint32_t>(u16(m, at + 4)) << 16) | u16(m, at + 6);
    const std::uint16_t length = u16(m, at + 8);
    at += 10;
    if (at + length > m.size()) return out;
    if (type == type_a && length == 4) {
      boost::asio::ip::address_v4::bytes_type bytes;
      std::copy_n(m.begin() + static_cast<std::ptrdiff_t>(at), 4, bytes.begin());
      out.addresses.emplace_back(boost::asio::ip::address_v4(bytes));
      smallest_ttl = std::min(smallest_ttl.value_or(ttl), ttl);
    } else if (type == type_aaaa && length == 16) {
      boost::asio::ip::address_v6::bytes_type bytes;
      std::copy_n(m.begin() + static_cast<std::ptrdiff_t>(at), 16, bytes.begin());
      out.addresses.emplace_back(boost::asio::ip::address_v6(bytes));
      smallest_ttl = std::min(smallest_ttl.value_or(ttl), ttl);
    }
    at += length;
  }
  out.ttl = std::chrono::seconds(smallest_ttl.value_or(0));
  return out;
}

}  // namespace fleety::dns
