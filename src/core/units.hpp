#pragma once
// Parsing of the quantities people write in configs and on command lines:
// rates ("20mbit"), durations ("50ms"), sizes ("32MiB"). Pure functions.

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/expected.hpp"

namespace fleety::core {

/// "20mbit", "500kbit", "1gbit", "64000bit", "2.5mbit" (also "mbps", "Mbit/s") → bits per second.
expected<std::uint64_t> parse_rate_bps(std::string_view text);

/// "50ms", "1s", "250us", "1.5s", "2m" → microseconds. A bare number is rejected: units are
/// required.
expected<std::chrono::microseconds> parse_duration(std::string_view text);

/// "32MiB", "10MB" (decimal), "4096", "512KiB", "1GB" → bytes.
expected<std::uint64_t> parse_size_bytes(std::string_view text);

/// 20'000'000 → "20.0 Mbit/s"
std::string format_rate(double bits_per_second);

/// 104857600 → "100.0 MiB"; 1000000 → "976.6 KiB"
std::string format_size(std::uint64_t bytes);

}  // namespace fleety::core
