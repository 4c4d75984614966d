// libFuzzer target for the HTTP-DNS reply parser: any body an endpoint (or something
// pretending to be one) may send. Besides memory safety (ASan/UBSan) it checks the
// parser's promises: bounded output, no empty answers, names normalized, TTLs capped.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "dns/http_dns.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  const fleety::dns::http_dns_limits limits{.max_names = 8, .max_addresses_per_name = 4};
  const auto answers =
      fleety::dns::parse_http_dns_reply(body, "asked.example", std::chrono::seconds(60), limits);
  if (answers.size() > limits.max_names) std::abort();
  for (const auto& answer : answers) {
    if (answer.addresses.empty() || answer.addresses.size() > limits.max_addresses_per_name)
      std::abort();
    if (answer.name.empty() || answer.name.back() == '.') std::abort();
    for (char c : answer.name)
      if (c >= 'A' && c <= 'Z') std::abort();
    if (answer.ttl.count() < 0 || answer.ttl.count() > 86400) std::abort();
    for (const auto& a : answer.addresses)
      if (a.is_unspecified() || a.is_multicast()) std::abort();
  }
  return 0;
}
