#include "net/service_notify.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>

namespace fleety::net {
namespace {

template <typename Number>
std::optional<Number> whole_number(const char* text) {
  if (text == nullptr || *text == '\0') return std::nullopt;
  Number value{};
  const char* end = text + std::strlen(text);
  const auto [rest, ec] = std::from_chars(text, end, value);
  if (ec != std::errc() || rest != end) return std::nullopt;
  return value;
}

}  // namespace

notify_settings notify_settings_from(const std::function<const char*(const char*)>& getenv,
                                     long pid) {
  notify_settings out;
  if (const char* socket = getenv("NOTIFY_SOCKET");
      socket != nullptr && (socket[0] == '/' || socket[0] == '@') &&
      std::strlen(socket) < sizeof(sockaddr_un::sun_path)) {
    out.socket_path = socket;
  }
  const auto usec = whole_number<unsigned long long>(getenv("WATCHDOG_USEC"));
  const char* watchdog_pid = getenv("WATCHDOG_PID");
  const auto for_pid = whole_number<long>(watchdog_pid);
  const bool ours = watchdog_pid == nullptr || (for_pid && *for_pid == pid);
  if (usec && *usec > 0 && ours) out.watchdog = std::chrono::microseconds(*usec);
  return out;
}

service_notifier::service_notifier()
    : settings_(notify_settings_from([](const char* name) { return std::getenv(name); },
                                     static_cast<long>(::getpid()))) {}

std::optional<std::chrono::microseconds> service_notifier::keepalive_interval() const {
  if (!supervised() || !settings_.watchdog) return std::nullopt;
  return *settings_.watchdog / 2;
}

bool service_notifier::send(std::string_view message) const {
  if (!supervised()) return false;
  sockaddr_un address{};
  if (settings_.socket_path.size() >= sizeof(address.sun_path)) return false;
  address.sun_family = AF_UNIX;
  const std::string& path = settings_.socket_path;
  std::memcpy(address.sun_path, path.data(), path.size());
  if (path[0] == '@') address.sun_path[0] = '\0';  // the abstract namespace
  const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  // A datagram socket's send does not block on a full receiver for long: MSG_DONTWAIT
  // so that a stuck service manager can't stall the event loop.
  const ssize_t sent = ::sendto(fd, message.data(), message.size(), MSG_NOSIGNAL | MSG_DONTWAIT,
                                reinterpret_cast<const sockaddr*>(&address), length);
  const int saved = errno;
  ::close(fd);
  errno = saved;
  return sent == static_cast<ssize_t>(message.size());
}

void service_notifier::ready(std::string_view status) const {
  send("READY=1\nSTATUS=" + std::string(status));
}

void service_notifier::stopping() const {
  send("STOPPING=1");
}

void service_notifier::keepalive() const {
  send("WATCHDOG=1");
}

boost::asio::awaitable<void> run_watchdog_keepalive(const service_notifier& notifier) {
  const auto interval = notifier.keepalive_interval();
  if (!interval) co_return;
  co_await boost::asio::this_coro::throw_if_cancelled(false);
  boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor);
  for (;;) {
    notifier.keepalive();
    timer.expires_after(*interval);
    boost::system::error_code ec;
    co_await timer.async_wait(boost::asio::redirect_error(boost::asio::use_awaitable, ec));
    if (ec) co_return;  // cancelled: the daemon stops
  }
}

}  // namespace fleety::net
