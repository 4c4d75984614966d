#include "core/units.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>

namespace fleety::core {
namespace {

struct number_and_unit {
  double number;
  std::string unit;  // lower-cased, surrounding spaces removed
};

expected<number_and_unit> split_number(std::string_view text, std::string_view what) {
  auto trimmed = text;
  while (!trimmed.empty() && std::isspace(static_cast<unsigned char>(trimmed.front())))
    trimmed.remove_prefix(1);
  while (!trimmed.empty() && std::isspace(static_cast<unsigned char>(trimmed.back())))
    trimmed.remove_suffix(1);
  std::size_t digits = 0;
  while (digits < trimmed.size() &&
         (std::isdigit(static_cast<unsigned char>(trimmed[digits])) || trimmed[digits] == '.')) {
    ++digits;
  }
  if (digits == 0) {
    return make_error(fmt::format("'{}' is not a {}: it must start with a number", text, what));
  }
  double number = 0;
  auto [end, ec] = std::from_chars(trimmed.data(), trimmed.data() + digits, number);
  if (ec != std::errc{} || end != trimmed.data() + digits || !std::isfinite(number)) {
    return make_error(fmt::format("'{}' is not a {}: bad number", text, what));
  }
  std::string unit(trimmed.substr(digits));
  unit.erase(
      std::remove_if(unit.begin(), unit.end(), [](unsigned char c) { return std::isspace(c); }),
      unit.end());
  std::transform(unit.begin(), unit.end(), unit.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return number_and_unit{number, unit};
}

template <class Table>
const double* find_factor(const Table& table, const std::string& unit) {
  for (const auto& [name, factor] : table) {
    if (unit == name) return &factor;
  }
  return nullptr;
}

expected<std::uint64_t> checked_product(double number, double factor, std::string_view text,
                                        std::string_view what) {
  const double value = number * factor;
  if (value > static_cast<double>(std::numeric_limits<std::uint64_t>::max() / 2)) {
    return make_error(fmt::format("'{}' is too large a {}", text, what));
  }
  return static_cast<std::uint64_t>(std::llround(value));
}

}  // namespace

expected<std::uint64_t> parse_rate_bps(std::string_view text) {
  static constexpr std::pair<std::string_view, double> units[] = {
      {"bit", 1.0},  {"bps", 1.0},  {"bit/s", 1.0},  {"kbit", 1e3}, {"kbps", 1e3}, {"kbit/s", 1e3},
      {"mbit", 1e6}, {"mbps", 1e6}, {"mbit/s", 1e6}, {"gbit", 1e9}, {"gbps", 1e9}, {"gbit/s", 1e9}};
  auto parts = split_number(text, "rate");
  if (!parts) return make_error(parts.error());
  const double* factor = find_factor(units, parts->unit);
  if (factor == nullptr) {
    return make_error(
        fmt::format("'{}' is not a rate: use a unit such as 500kbit, 20mbit or 1gbit", text));
  }
  return checked_product(parts->number, *factor, text, "rate");
}

expected<std::chrono::microseconds> parse_duration(std::string_view text) {
  static constexpr std::pair<std::string_view, double> units[] = {
      {"us", 1.0}, {"ms", 1e3}, {"s", 1e6}, {"m", 60e6}, {"min", 60e6}, {"h", 3600e6}};
  auto parts = split_number(text, "duration");
  if (!parts) return make_error(parts.error());
  const double* factor = find_factor(units, parts->unit);
  if (factor == nullptr) {
    return make_error(
        fmt::format("'{}' is not a duration: use a unit such as 250us, 50ms or 2s", text));
  }
  auto micros = checked_product(parts->number, *factor, text, "duration");
  if (!micros) return make_error(micros.error());
  return std::chrono::microseconds(static_cast<std::int64_t>(*micros));
}

expected<std::uint64_t> parse_size_bytes(std::string_view text) {
  static constexpr std::pair<std::string_view, double> units[] = {
      {"", 1.0},     {"b", 1.0},       {"kb", 1e3},        {"mb", 1e6},
      {"gb", 1e9},   {"kib", 1024.0},  {"mib", 1048576.0}, {"gib", 1073741824.0},
      {"k", 1024.0}, {"m", 1048576.0}, {"g", 1073741824.0}};
  auto parts = split_number(text, "size");
  if (!parts) return make_error(parts.error());
  const double* factor = find_factor(units, parts->unit);
  if (factor == nullptr) {
    return make_error(
        fmt::format("'{}' is not a size: use a unit such as 512KiB, 32MiB or 10MB", text));
  }
  return checked_product(parts->number, *factor, text, "size");
}

std::string format_rate(double bits_per_second) {
  if (bits_per_second >= 1e9) return fmt::format("{:.2f} Gbit/s", bits_per_second / 1e9);
  if (bits_per_second >= 1e6) return fmt::format("{:.1f} Mbit/s", bits_per_second / 1e6);
  return fmt::format("{:.1f} kbit/s", bits_per_second / 1e3);
}

std::string format_size(std::uint64_t bytes) {
  const auto b = static_cast<double>(bytes);
  if (bytes >= (1ULL << 30)) return fmt::format("{:.1f} GiB", b / (1ULL << 30));
  if (bytes >= (1ULL << 20)) return fmt::format("{:.1f} MiB", b / (1ULL << 20));
  if (bytes >= (1ULL << 10)) return fmt::format("{:.1f} KiB", b / (1ULL << 10));
  return fmt::format("{} B", bytes);
}

}  // namespace fleety::core
