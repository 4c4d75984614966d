#pragma once
// One logger for the daemon: spdlog to stderr, journald-friendly (no colour, and
// without timestamps when journald adds its own), written by a thread of its own so that
// a slow reader of stderr (journald under load, a full pipe) never stalls the event loop.

#include <spdlog/spdlog.h>

#include <string_view>

namespace fleety::core {

/// The syslog priority prefix journald reads off a line for `level` ("<6>" for info,
/// "<4>" warn, "<3>" error, "<7>" debug and trace, "<2>" critical).
std::string_view journal_prefix(spdlog::level::level_enum level);

/// Messages waiting for the log thread at most; past that the oldest are dropped (the
/// event loop never waits for the log).
inline constexpr std::size_t log_queue_messages = 1024;

/// Sets the level ("info", "debug", ...) and a pattern that suits a terminal or journald;
/// messages are queued (log_queue_messages) and written by one background thread.
void setup_logging(std::string_view level);

/// Writes what is queued and stops the log thread: before the process exits, and before
/// anything else writes to stderr directly (so that the lines keep their order).
void flush_logging();

}  // namespace fleety::core
