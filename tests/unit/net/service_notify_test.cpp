#include "net/service_notify.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <string>

namespace fleety::net {
namespace {

using namespace std::chrono_literals;

notify_settings from(const std::map<std::string, std::string>& env, long pid = 42) {
  return notify_settings_from(
      [&env](const char* name) -> const char* {
        auto it = env.find(name);
        return it == env.end() ? nullptr : it->second.c_str();
      },
      pid);
}

TEST(NotifySettings, NotUnderSystemdNothingIsSent) {
  const auto settings = from({});
  EXPECT_TRUE(settings.socket_path.empty());
  EXPECT_FALSE(settings.watchdog);
  const service_notifier notifier(settings);
  EXPECT_FALSE(notifier.supervised());
  EXPECT_FALSE(notifier.keepalive_interval());
  EXPECT_FALSE(notifier.send("READY=1"));
}

TEST(NotifySettings, WatchdogForThisProcessOnlyAndPingedAtHalfItsTime) {
  auto s = from({{"NOTIFY_SOCKET", "/run/systemd/notify"}, {"WATCHDOG_USEC", "20000000"}});
  EXPECT_EQ(s.socket_path, "/run/systemd/notify");
  ASSERT_TRUE(s.watchdog);
  EXPECT_EQ(*s.watchdog, 20s);
  EXPECT_EQ(service_notifier(s).keepalive_interval(), std::chrono::microseconds(10s));
  // Meant for another process (a parent that exec'd us would have passed its own pid).
  s = from({{"NOTIFY_SOCKET", "@abstract"}, {"WATCHDOG_USEC", "1000"}, {"WATCHDOG_PID", "7"}});
  EXPECT_EQ(s.socket_path, "@abstract");
  EXPECT_FALSE(s.watchdog);
  s = from({{"NOTIFY_SOCKET", "@abstract"}, {"WATCHDOG_USEC", "1000"}, {"WATCHDOG_PID", "42"}});
  EXPECT_TRUE(s.watchdog);
}

TEST(NotifySettings, MalformedValuesCountAsAbsent) {
  EXPECT_TRUE(from({{"NOTIFY_SOCKET", "relative/path"}}).socket_path.empty());
  EXPECT_TRUE(from({{"NOTIFY_SOCKET", "/" + std::string(200, 'x')}}).socket_path.empty());
  EXPECT_FALSE(from({{"NOTIFY_SOCKET", "/n"}, {"WATCHDOG_USEC", "12x"}}).watchdog);
  EXPECT_FALSE(from({{"NOTIFY_SOCKET", "/n"}, {"WATCHDOG_USEC", "0"}}).watchdog);
  EXPECT_FALSE(from({{"NOTIFY_SOCKET", "/n"}, {"WATCHDOG_USEC", "-5"}}).watchdog);
  // A path too long for a socket address is never copied into one.
  EXPECT_FALSE(service_notifier(notify_settings{"/" + std::string(200, 'x'), {}}).send("X=1"));
}

TEST(ServiceNotifier, MessagesArriveAsDatagramsOnTheSocket) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("fleety-notify-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "notify").string();
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address), 0);
  timeval wait{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);

  const service_notifier notifier(notify_settings{path, 2s});
  auto receive = [fd] {
    char buffer[512];
    const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    return n > 0 ? std::string(buffer, static_cast<std::size_t>(n)) : std::string("(nothing)");
  };
  notifier.ready("2 paths up");
  EXPECT_EQ(receive(), "READY=1\nSTATUS=2 paths up");
  notifier.keepalive();
  EXPECT_EQ(receive(), "WATCHDOG=1");
  notifier.stopping();
  EXPECT_EQ(receive(), "STOPPING=1");
  ::close(fd);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace fleety::net
