#include "control/control.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "net/accept.hpp"
#include "net/task_group.hpp"

namespace fleety::control {
namespace asio = boost::asio;
namespace json = boost::json;
using local = asio::local::stream_protocol;

namespace {

constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);
constexpr std::size_t max_line_bytes = 64 * 1024;

std::string reply_error(std::string_view error) {
  return json_text(json::object{{"ok", false}, {"error", error}});
}

std::string reply_ok(json::object body = {}) {
  body["ok"] = true;
  return json_text(body);
}

}  // namespace

std::string handle_request(std::string_view line, daemon_api& daemon,
                           const peer_credentials& peer) {
  boost::system::error_code ec;
  json::value request = json::parse(line, ec);
  if (ec || !request.is_object()) return reply_error("a request is one JSON object per line");
  const auto& object = request.as_object();
  const auto* cmd = object.if_contains("cmd");
  if (cmd == nullptr || !cmd->is_string()) return reply_error("the request has no \"cmd\"");
  const std::string_view command = cmd->as_string();
  auto name_of = [&]() -> std::string {
    const auto* name = object.if_contains("name");
    return name != nullptr && name->is_string() ? std::string(name->as_string()) : std::string();
  };
  if (command == "status") return reply_ok(status_json(daemon.status()));
  if (command == "apps") return reply_ok({{"apps", apps_json(daemon.apps())}});
  if (command == "stats") {
    auto stats = daemon.stats();
    if (!stats) return reply_error(stats.error());
    return reply_ok(stats_json(*stats));
  }
  const bool for_root_only =
      command == "app.enable" || command == "app.disable" || command == "rules.reload";
  if (for_root_only && !peer.is_root())
    return reply_error(fmt::format("only root may ask {} (run it with sudo)", command));
  if (command == "app.enable" || command == "app.disable" || command == "app.starting") {
    const std::string name = name_of();
    if (name.empty()) return reply_error(fmt::format("{} needs \"name\"", command));
    if (command == "app.starting") {
      const auto* join = object.if_contains("join");
      const bool joining = join != nullptr && join->is_bool() && join->as_bool();
      auto enabled = daemon.app_starting(name, joining ? std::optional(peer) : std::nullopt);
      if (!enabled) return reply_error(enabled.error());
      return reply_ok({{"name", name}, {"enabled", *enabled}});
    }
    auto done = daemon.set_app_enabled(name, command == "app.enable");
    if (!done) return reply_error(done.error());
    return reply_ok({{"name", name}, {"enabled", command == "app.enable"}});
  }
  if (command == "rules.reload") {
    auto count = daemon.reload_rules();
    if (!count) return reply_error(count.error());
    return reply_ok({{"feature_rules", *count}});
  }
  return reply_error(
      fmt::format("unknown cmd \"{}\" (status, apps, stats, app.enable, app.disable, app.starting, "
                  "rules.reload)",
                  command));
}

asio::awaitable<void> run_control_server(local::acceptor acceptor, daemon_api& daemon,
                                         control_timeouts timeouts) {
  // The owner of its connections: it sees its own cancellation as results, and cancels
  // and joins them before it returns.
  co_await asio::this_coro::throw_if_cancelled(false);
  net::task_group connections(co_await asio::this_coro::executor);
  net::accept_errors errors("control socket");
  while (auto accepted = co_await net::async_accept_next(acceptor, errors)) {
    auto& socket = *accepted;
    connections.spawn(
        [](local::socket peer, daemon_api& api, control_timeouts limits) -> asio::awaitable<void> {
          // Asked once: the kernel's record of who connected, which the peer cannot forge.
          peer_credentials caller{.uid = ~0U, .gid = ~0U, .pid = 0};
          ::ucred credentials{};
          socklen_t length = sizeof credentials;
          if (::getsockopt(peer.native_handle(), SOL_SOCKET, SO_PEERCRED, &credentials, &length) ==
              0) {
            caller = {credentials.uid, credentials.gid, credentials.pid};
          }
          // Closes the connection unless cancelled within `timeout`: what was waited for
          // then fails.
          asio::steady_timer deadline(peer.get_executor());
          const auto close_after = [&](std::chrono::milliseconds timeout) {
            deadline.expires_after(timeout);
            deadline.async_wait([&peer](boost::system::error_code wait_ec) {
              if (!wait_ec) peer.close();
            });
          };
          std::string buffer;
          for (;;) {
            close_after(limits.idle);
            auto [read_ec, n] = co_await asio::async_read_until(
                peer, asio::dynamic_buffer(buffer, max_line_bytes), '\n', nothrow);
            deadline.cancel();
            if (read_ec) co_return;
            std::string reply =
                handle_request(std::string_view(buffer).substr(0, n - 1), api, caller) + "\n";
            buffer.erase(0, n);
            close_after(limits.write);
            auto [write_ec, w] = co_await asio::async_write(peer, asio::buffer(reply), nothrow);
            deadline.cancel();
            if (write_ec) co_return;
          }
        }(std::move(socket), daemon, timeouts),
        "control connection");
  }
  connections.cancel();
  co_await connections.async_join();
}

core::expected<local::acceptor> listen_control(asio::io_context& io, const std::string& path,
                                               std::optional<std::uint32_t> group) {
  namespace fs = std::filesystem;
  std::error_code fs_ec;
  const fs::path socket_path(path);
  if (socket_path.has_parent_path()) {
    const bool made = fs::create_directories(socket_path.parent_path(), fs_ec);
    if (fs_ec)
      return core::make_error(
          fmt::format("cannot create {}: {}", socket_path.parent_path().string(), fs_ec.message()));
    // Under a umask of 077 the group could not reach the socket in it.
    if (made) fs::permissions(socket_path.parent_path(), fs::perms(0755), fs_ec);
  }
  // A socket left by a fleetyd that died; one that answers belongs to a live fleetyd.
  if (fs::exists(socket_path, fs_ec)) {
    if (call(path, json::object{{"cmd", "status"}}, std::chrono::milliseconds(500))) {
      return core::make_error(fmt::format(
          "another fleetyd answers on {}: stop it, or give this one another [control] socket",
          path));
    }
    fs::remove(socket_path, fs_ec);
  }
  local::acceptor acceptor(io);
  boost::system::error_code ec;
  acceptor.open(local(), ec);
  if (!ec) {
    // Created 0600 (root-only, DESIGN.md): umask for the bind, not a chmod after it, so
    // that nobody else can connect in between. Then the group, then its mode.
    const mode_t old_mask = ::umask(0177);
    acceptor.bind(local::endpoint(path), ec);
    ::umask(old_mask);
    // Without CAP_CHOWN root may hand a file only to a group it is a member of (the
    // systemd unit's SupplementaryGroups=fleety). Failing that, the socket stays root's.
    if (!ec && group &&
        (::chown(path.c_str(), static_cast<uid_t>(-1), *group) != 0 ||
         ::chmod(path.c_str(), 0660) != 0)) {
      spdlog::warn("control socket {}: cannot hand it to group {} ({}): root only (0600)", path,
                   *group, std::strerror(errno));
    }
  }
  if (!ec) acceptor.listen(16, ec);
  if (ec) return core::make_error(fmt::format("cannot listen on {}: {}", path, ec.message()));
  return acceptor;
}

core::expected<json::object> call(const std::string& path, const json::object& request,
                                  std::chrono::milliseconds timeout) {
  sockaddr_un address{};
  if (path.size() >= sizeof address.sun_path)
    return core::make_error(fmt::format("control socket path too long: {}", path));
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return core::make_error(std::string("socket: ") + std::strerror(errno));
  struct closer {
    int fd;
    ~closer() { ::close(fd); }
  } close_fd{fd};
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ECONNREFUSED)
      return core::make_error(fmt::format(
          "fleetyd is not running (nothing answers on {}): start it (systemctl start fleetyd, "
          "or fleetyd --config FILE)",
          path));
    if (err == EACCES)
      return core::make_error(
          fmt::format("no permission to use {}: run as root (sudo), or be a member of group fleety "
                      "(sudo usermod -aG fleety $USER, then log in again)",
                      path));
    return core::make_error(fmt::format("cannot connect to {}: {}", path, std::strerror(err)));
  }
  const std::string line = json::serialize(request) + "\n";
  if (::send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size()))
    return core::make_error(fmt::format("cannot send to {}: {}", path, std::strerror(errno)));
  std::string reply;
  char chunk[4096];
  while (reply.find('\n') == std::string::npos) {
    const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n <= 0) {
      return core::make_error(
          n == 0 ? fmt::format("fleetyd closed {} without a reply", path)
                 : fmt::format("no reply from fleetyd within {} ms", timeout.count()));
    }
    reply.append(chunk, static_cast<std::size_t>(n));
    if (reply.size() > max_line_bytes * 16) return core::make_error("reply too long");
  }
  boost::system::error_code ec;
  auto value = json::parse(reply.substr(0, reply.find('\n')), ec);
  if (ec || !value.is_object()) return core::make_error("fleetyd's reply is not JSON");
  auto& object = value.as_object();
  if (const auto* ok = object.if_contains("ok");
      ok == nullptr || !ok->is_bool() || !ok->as_bool()) {
    const auto* error = object.if_contains("error");
    return core::make_error(error != nullptr && error->is_string()
                                ? std::string(error->as_string())
                                : std::string("fleetyd refused the request"));
  }
  return std::move(object);
}

}  // namespace fleety::control
