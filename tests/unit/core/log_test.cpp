#include "core/log.hpp"

#include <gtest/gtest.h>

namespace fleety::core {
namespace {

TEST(JournalPrefix, SyslogPrioritiesJournaldReads) {
  EXPECT_EQ(journal_prefix(spdlog::level::critical), "<2>");
  EXPECT_EQ(journal_prefix(spdlog::level::err), "<3>");
  EXPECT_EQ(journal_prefix(spdlog::level::warn), "<4>");
  EXPECT_EQ(journal_prefix(spdlog::level::info), "<6>");
  EXPECT_EQ(journal_prefix(spdlog::level::debug), "<7>");
  EXPECT_EQ(journal_prefix(spdlog::level::trace), "<7>");
}

}  // namespace
}  // namespace fleety::core
