#include "net/accept.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <utility>

namespace fleety::net {

bool log_throttle::allow(std::chrono::steady_clock::time_point now, std::uint64_t& suppressed) {
  if (last_ && now - *last_ < interval_) {
    ++held_;
    return false;
  }
  last_ = now;
  suppressed = std::exchange(held_, 0);
  return true;
}

accept_errors::verdict accept_errors::on_error(const boost::system::error_code& ec,
                                               std::chrono::steady_clock::time_point now) {
  verdict out;
  const int code = ec.category() == boost::system::system_category() ? ec.value() : 0;
  const bool exhausted = code == EMFILE || code == ENFILE || code == ENOBUFS || code == ENOMEM;
  if (exhausted) {
    pause_ = pause_.count() == 0 ? first_pause : std::min(pause_ * 2, longest_pause);
    out.pause = pause_;
  }
  std::uint64_t suppressed = 0;
  if (throttle_.allow(now, suppressed)) {
    out.log_line =
        fmt::format("{}: accept failed: {}{}{}", what_, ec.message(),
                    exhausted ? " (retrying in up to 1 s steps)" : "",
                    suppressed > 0 ? fmt::format("; {} more accept errors not logged", suppressed)
                                   : std::string());
  }
  return out;
}

void log_accept_error(const std::string& line) {
  spdlog::warn("{}", line);
}

}  // namespace fleety::net
