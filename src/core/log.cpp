#include "core/log.hpp"

#include <spdlog/async.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <cstdlib>
#include <string>

namespace fleety::core {

std::string_view journal_prefix(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
    case spdlog::level::debug:
      return "<7>";
    case spdlog::level::warn:
      return "<4>";
    case spdlog::level::err:
      return "<3>";
    case spdlog::level::critical:
      return "<2>";
    default:
      return "<6>";
  }
}

namespace {

/// "<6>" for info, "<4>" for warn...: the syslog priority journald reads off the front of
/// a line (sd-daemon(3)), so `journalctl -p warning` finds fleetyd's warnings.
class journal_priority final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    const auto prefix = journal_prefix(msg.level);
    dest.append(prefix.data(), prefix.data() + prefix.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<journal_priority>();
  }
};

}  // namespace

namespace {

/// The pattern (journald's or a terminal's) and the level, for either logger.
void configure(spdlog::logger& logger, spdlog::level::level_enum level) {
  // journald stamps each line itself; JOURNAL_STREAM is set when stderr goes to it.
  if (std::getenv("JOURNAL_STREAM") != nullptr) {
    auto formatter = std::make_unique<spdlog::pattern_formatter>();
    formatter->add_flag<journal_priority>('*').set_pattern("%*%v");
    logger.set_formatter(std::move(formatter));
  } else {
    logger.set_pattern("%Y-%m-%d %H:%M:%S.%e %-5l %v");
  }
  logger.set_level(level);
  logger.flush_on(spdlog::level::info);
}

}  // namespace

void setup_logging(std::string_view level) {
  spdlog::init_thread_pool(log_queue_messages, 1);
  auto logger = spdlog::create_async_nb<spdlog::sinks::stderr_sink_mt>("fleety");
  configure(*logger, spdlog::level::from_str(std::string(level)));
  spdlog::set_default_logger(logger);
}

void flush_logging() {
  const auto level = spdlog::default_logger()->level();
  // Drains the queue and joins the log thread; what is logged after (the last words of a
  // stopping daemon) is written at once, in order with direct writes to stderr.
  spdlog::shutdown();
  auto logger = spdlog::stderr_logger_mt("fleety");
  configure(*logger, level);
  spdlog::set_default_logger(logger);
}

}  // namespace fleety::core
