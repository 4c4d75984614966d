#pragma once
// One logger for the daemon: spdlog to stderr, journald-friendly (no colour, and
// without timestamps when journald adds its own).

#include <spdlog/spdlog.h>

#include <string_view>

namespace fleety::core {

/// Sets the level ("info", "debug", ...) and a pattern that suits a terminal or journald.
void setup_logging(std::string_view level);

}  // namespace fleety::core
