#pragma once
// One logger for the daemon: spdlog to stderr, journald-friendly (no colour, and
// without timestamps when journald adds its own).

#include <spdlog/spdlog.h>

#include <string_view>

namespace fleety::core {

/// The syslog priority prefix journald reads off a line for `level` ("<6>" for info,
/// "<4>" warn, "<3>" error, "<7>" debug and trace, "<2>" critical).
std::string_view journal_prefix(spdlog::level::level_enum level);

/// Sets the level ("info", "debug", ...) and a pattern that suits a terminal or journald.
void setup_logging(std::string_view level);

}  // namespace fleety::core
