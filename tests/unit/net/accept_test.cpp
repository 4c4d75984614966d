#include "net/accept.hpp"

#include <gtest/gtest.h>

#include <cerrno>

namespace fleety::net {
namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

boost::system::error_code system_error(int code) {
  return {code, boost::system::system_category()};
}

TEST(AcceptErrors, OutOfDescriptorsPausesTenMillisecondsDoublingToOneSecond) {
  accept_errors errors("proxy");
  const auto t0 = clock_type::time_point{} + 1h;
  std::vector<std::chrono::milliseconds> pauses;
  for (int i = 0; i < 9; ++i) pauses.push_back(errors.on_error(system_error(EMFILE), t0).pause);
  EXPECT_EQ(pauses, (std::vector<std::chrono::milliseconds>{10ms, 20ms, 40ms, 80ms, 160ms, 320ms,
                                                            640ms, 1000ms, 1000ms}));
  // A connection got through: the next shortage starts again from the shortest pause.
  errors.on_success();
  EXPECT_EQ(errors.on_error(system_error(ENFILE), t0).pause, 10ms);
  EXPECT_EQ(errors.on_error(system_error(ENOBUFS), t0).pause, 20ms);
  EXPECT_EQ(errors.on_error(system_error(ENOMEM), t0).pause, 40ms);
}

TEST(AcceptErrors, OtherErrorsAreRetriedAtOnce) {
  accept_errors errors("proxy");
  EXPECT_EQ(errors.on_error(system_error(ECONNABORTED), clock_type::now()).pause, 0ms);
}

TEST(AcceptErrors, OneLogLinePerTenSecondsWithTheCountHeldBack) {
  accept_errors errors("proxy");
  const auto t0 = clock_type::time_point{} + 1h;
  auto first = errors.on_error(system_error(EMFILE), t0);
  ASSERT_TRUE(first.log_line);
  EXPECT_NE(first.log_line->find("proxy: accept failed: "), std::string::npos) << *first.log_line;
  // A spinning accept would give thousands of lines a second: none until 10 s passed.
  for (int i = 0; i < 1000; ++i)
    EXPECT_FALSE(errors.on_error(system_error(EMFILE), t0 + 9s).log_line);
  const auto next = errors.on_error(system_error(EMFILE), t0 + 10s);
  ASSERT_TRUE(next.log_line);
  EXPECT_NE(next.log_line->find("1000 more accept errors not logged"), std::string::npos)
      << *next.log_line;
}

TEST(LogThrottle, FirstEventLogsThenOncePerInterval) {
  log_throttle throttle(1s);
  const auto t0 = clock_type::time_point{} + 1h;
  std::uint64_t held = 99;
  EXPECT_TRUE(throttle.allow(t0, held));
  EXPECT_EQ(held, 0U);
  EXPECT_FALSE(throttle.allow(t0 + 500ms, held));
  EXPECT_FALSE(throttle.allow(t0 + 999ms, held));
  EXPECT_TRUE(throttle.allow(t0 + 1s, held));
  EXPECT_EQ(held, 2U);
}

}  // namespace
}  // namespace fleety::net
