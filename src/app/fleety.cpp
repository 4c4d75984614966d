// fleety: the command line. `fleety run [--app NAME] -- CMD ...` runs an unmodified
// program whose TCP connections fleetyd takes over: the program is put in the cgroup
// fleetyd's interception rules select, then exec'd.

#include <fmt/format.h>
#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <boost/json.hpp>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "app/doctor_command.hpp"
#include "app/get_command.hpp"
#include "control/control.hpp"
#include "core/units.hpp"
#include "intercept/intercept.hpp"

namespace {

namespace fs = std::filesystem;
using namespace fleety;

/// An app name from a command: its base name, reduced to the characters a cgroup and
/// the config accept.
std::string app_name_of(const std::string& command) {
  std::string name;
  for (char c : fs::path(command).filename().string()) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    name.push_back(ok ? c : '_');
  }
  while (!name.empty() && (name.front() == '.' || name.front() == '-')) name.erase(0, 1);
  return name.empty() ? std::string("app") : name.substr(0, 64);
}

/// Under sudo, the user who ran it: the program runs as them, not as root.
struct sudo_caller {
  uid_t uid;
  gid_t gid;
  std::string user;
};

std::optional<sudo_caller> sudo_caller_of_environment() {
  const char* uid_text = std::getenv("SUDO_UID");
  const char* gid_text = std::getenv("SUDO_GID");
  const char* user = std::getenv("SUDO_USER");
  if (uid_text == nullptr || gid_text == nullptr || user == nullptr) return std::nullopt;
  const std::string_view uid_view(uid_text);
  const std::string_view gid_view(gid_text);
  sudo_caller caller{0, 0, user};
  if (std::from_chars(uid_view.data(), uid_view.data() + uid_view.size(), caller.uid).ec !=
          std::errc() ||
      std::from_chars(gid_view.data(), gid_view.data() + gid_view.size(), caller.gid).ec !=
          std::errc())
    return std::nullopt;
  return caller;
}

/// Becomes `caller` for good (groups, gid, uid: in that order, or the later calls are not
/// permitted), with their HOME, USER and LOGNAME. Why not, if it fails.
std::string become(const sudo_caller& caller) {
  if (::initgroups(caller.user.c_str(), caller.gid) != 0 || ::setgid(caller.gid) != 0 ||
      ::setuid(caller.uid) != 0)
    return std::strerror(errno);
  if (::setuid(0) == 0) return "root could be regained after dropping it";
  if (const ::passwd* entry = ::getpwuid(caller.uid); entry != nullptr) {
    ::setenv("HOME", entry->pw_dir, 1);
    ::setenv("USER", entry->pw_name, 1);
    ::setenv("LOGNAME", entry->pw_name, 1);
  }
  return {};
}

int run_command(std::string app, const std::vector<std::string>& command, const std::string& socket,
                bool as_root) {
  if (command.empty()) {
    std::cerr << "fleety run: no command given: fleety run [--app NAME] -- CMD [ARGS...]\n";
    return 2;
  }
  if (app.empty()) app = app_name_of(command.front());
  if (!intercept::valid_app_name(app)) {
    std::cerr << "fleety run: app name '" << app
              << "': use letters, digits, '.', '_' or '-' (at most 64)\n";
    return 2;
  }
  const bool root = ::geteuid() == 0;
  const auto caller = root ? sudo_caller_of_environment() : std::nullopt;
  if (as_root && !root) {
    std::cerr << "fleety run: --as-root needs root (sudo fleety run --as-root ...)\n";
    return 2;
  }
  // fleetyd must be intercepting in this network namespace, or the program would just
  // run untouched while the user believes it is multipath. (Root may list the table; for
  // others fleetyd's answer below says whether it intercepts.)
  if (root) {
    if (auto table = intercept::run_nft(fmt::format("list table inet {}", intercept::table_name));
        !table) {
      std::cerr << "fleety run: fleetyd is not intercepting here (no nftables table inet "
                << intercept::table_name
                << "): start fleetyd with [intercept] enabled = true in this network namespace\n";
      return 1;
    }
  }
  // fleetyd makes the app's cgroup, loads its rules and moves this process into it (it
  // knows who we are from the socket: members of group fleety need no root). A disabled
  // app is not run, rather than run untouched by surprise.
  auto answer = control::call(socket, {{"cmd", "app.starting"}, {"name", app}, {"join", true}},
                              std::chrono::seconds(5));
  if (!answer) {
    std::cerr << "fleety run: " << answer.error() << "\n";
    return 1;
  }
  if (const auto* enabled = answer->if_contains("enabled");
      enabled != nullptr && enabled->is_bool() && !enabled->as_bool()) {
    std::cerr << "fleety run: app '" << app << "' is disabled: fleety apps enable " << app << "\n";
    return 1;
  }
  {
    std::ifstream cgroup_file("/proc/self/cgroup");
    std::string membership((std::istreambuf_iterator<char>(cgroup_file)),
                           std::istreambuf_iterator<char>());
    const std::string expected = fmt::format("/{}/{}\n", intercept::run_cgroup, app);
    if (membership.find(expected) == std::string::npos) {
      std::cerr << "fleety run: fleetyd did not move this process into its cgroup "
                << intercept::run_cgroup << "/" << app << " (it is in " << membership
                << "): not running the program untouched\n";
      return 1;
    }
  }
  // The program never runs as root unless root asked: under sudo it runs as the user.
  if (caller && !as_root) {
    if (const auto why = become(*caller); !why.empty()) {
      std::cerr << "fleety run: cannot run as " << caller->user << " (uid " << caller->uid
                << "): " << why << "\n";
      return 1;
    }
  }
  std::vector<char*> argv;
  for (const auto& arg : command) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  ::execvp(argv[0], argv.data());
  std::cerr << "fleety run: cannot run " << command.front() << ": " << std::strerror(errno) << "\n";
  return 127;
}

/// Prints a control reply: JSON for scripts, else `human`'s rendering.
template <class Human>
int show(const std::string& socket, const boost::json::object& request, bool as_json, Human human) {
  auto reply = control::call(socket, request, std::chrono::seconds(5));
  if (!reply) {
    std::cerr << "fleety: " << reply.error() << "\n";
    return 1;
  }
  boost::json::object body = std::move(reply).value();
  if (as_json) {
    body.erase("ok");
    std::cout << control::json_text(body) << "\n";
  } else {
    human(body);
  }
  return 0;
}

double number_of(const boost::json::value& v) {
  return v.is_double()   ? v.as_double()
         : v.is_int64()  ? static_cast<double>(v.as_int64())
         : v.is_uint64() ? static_cast<double>(v.as_uint64())
                         : 0.0;
}

/// "12.3" or "-" for a value that is unknown (null).
std::string measured(const boost::json::value& v, int decimals = 1) {
  if (v.is_null()) return "-";
  return fmt::format("{:.{}f}", number_of(v), decimals);
}

void print_status(const boost::json::object& s) {
  std::cout << fmt::format("{:<8} {:<10} {:<9} {:<5} {:>8} {:>9} {:>7} {:>8} {:>12}\n", "path",
                           "interface", "kind", "up", "RTT ms", "jitter ms", "loss %", "Mbit/s",
                           "received");
  for (const auto& p : s.at("paths").as_array()) {
    const auto& path = p.as_object();
    const auto& loss = path.at("loss");
    std::cout << fmt::format(
        "{:<8} {:<10} {:<9} {:<5} {:>8} {:>9} {:>7} {:>8} {:>12}\n",
        std::string(path.at("name").as_string()), std::string(path.at("interface").as_string()),
        std::string(path.at("kind").as_string()), path.at("up").as_bool() ? "up" : "DOWN",
        measured(path.at("rtt_ms")), measured(path.at("jitter_ms")),
        loss.is_null() ? std::string("-") : fmt::format("{:.1f}", number_of(loss) * 100),
        measured(path.at("throughput_mbps")),
        core::format_size(static_cast<std::uint64_t>(number_of(path.at("bytes_received")))));
  }
  for (const auto& p : s.at("paths").as_array()) {
    const std::string name(p.at("name").as_string());
    const auto* found = p.as_object().if_contains("found");
    if (found != nullptr && found->is_string()) {
      std::cout << fmt::format("  {} found on {}: {}\n", name,
                               std::string(p.at("interface").as_string()),
                               std::string(found->as_string()));
    }
    const auto* dns = p.as_object().if_contains("dns");
    if (dns != nullptr && dns->is_object()) {
      const auto& d = dns->as_object();
      const auto* from = d.if_contains("found");
      const bool fallback = d.if_contains("fallback") != nullptr && d.at("fallback").is_bool() &&
                            d.at("fallback").as_bool();
      if (from != nullptr && from->is_string()) {
        std::cout << fmt::format("  {} DNS: {}{}\n", name, fallback ? "WARNING " : "",
                                 std::string(from->as_string()));
      }
    }
    const auto* probe = p.as_object().if_contains("probe");
    if (probe != nullptr && probe->is_string())
      std::cout << fmt::format("  {} probes: {}\n", name, std::string(probe->as_string()));
  }
  if (const auto* flows = s.if_contains("flows"); flows != nullptr && !flows->as_array().empty()) {
    std::cout << fmt::format("\n{:<7} {:<14} {:<10} {:<6} {:>8}  {}\n", "flow", "app", "class",
                             "path", "seconds", "what");
    for (const auto& f : flows->as_array()) {
      const auto& flow = f.as_object();
      const std::string app(flow.at("app").as_string());
      std::cout << fmt::format("{:<7} {:<14} {:<10} {:<6} {:>8.0f}  {}\n", number_of(flow.at("id")),
                               app.empty() ? "-" : app, std::string(flow.at("class").as_string()),
                               std::string(flow.at("path").as_string()),
                               number_of(flow.at("seconds")),
                               std::string(flow.at("what").as_string()));
    }
    std::cout << "\n";
  }
  if (const auto* downloads = s.if_contains("downloads");
      downloads != nullptr && !downloads->as_array().empty()) {
    std::cout << fmt::format("\n{:<7} {:<14} {:>22}  {}\n", "session", "app", "progress",
                             "paths, url");
    for (const auto& d : downloads->as_array()) {
      const auto& row = d.as_object();
      const auto size = static_cast<std::uint64_t>(number_of(row.at("size")));
      const auto done = static_cast<std::uint64_t>(number_of(row.at("delivered")));
      std::string shares;
      for (const auto& p : row.at("paths").as_array()) {
        const auto& share = p.as_object();
        shares += fmt::format(
            "{} {} ({}), ", std::string(share.at("path").as_string()),
            core::format_size(static_cast<std::uint64_t>(number_of(share.at("bytes")))),
            share.at("failed").as_bool() ? "failed"
                                         : core::format_rate(number_of(share.at("rate_bps"))));
      }
      const std::string app(row.at("app").as_string());
      std::cout << fmt::format(
          "{:<7} {:<14} {:>22}  {}{}\n", number_of(row.at("session")), app.empty() ? "-" : app,
          fmt::format(
              "{} / {} {:3.0f}%", core::format_size(done), core::format_size(size),
              size > 0 ? 100.0 * static_cast<double>(done) / static_cast<double>(size) : 100.0),
          shares, std::string(row.at("url").as_string()));
    }
    std::cout << "\n";
  }
  if (const auto* refused = s.if_contains("refused_paths");
      refused != nullptr && !refused->as_array().empty()) {
    // Not version conflicts: a node that refuses one path (a token bound to an address, a
    // per-address limit) keeps that path off the host for a while.
    for (const auto& r : refused->as_array()) {
      const auto& row = r.as_object();
      std::cout << fmt::format(
          "refused: {} for {} ({} {}), {:.0f} s left\n", std::string(row.at("path").as_string()),
          std::string(row.at("host").as_string()), number_of(row.at("status")),
          std::string(row.at("reason").as_string()), number_of(row.at("seconds_left")));
    }
  }
  std::cout << fmt::format(
      "sessions: {} active, {} since start; multipath downloads: {}; "
      "interception: {}\n",
      number_of(s.at("sessions_active")), number_of(s.at("sessions_started")),
      number_of(s.at("multipath_downloads_active")), s.at("intercepting").as_bool() ? "on" : "off");
  if (const auto* warm = s.if_contains("warm_connections")) {
    const auto& w = warm->as_object();
    std::cout << fmt::format(
        "warm connections: {} idle, {} requests reused one, {} not opened (host limit)\n",
        number_of(w.at("idle")), number_of(w.at("reused")), number_of(w.at("over_limit")));
  }
  if (const auto* used = s.if_contains("cellular_month_bytes")) {
    std::cout << fmt::format("cellular this month: {}{}\n",
                             core::format_size(static_cast<std::uint64_t>(number_of(*used))),
                             s.at("cellular_capped").as_bool()
                                 ? " (over the budget: only when nothing else is up)"
                                 : "");
  }
}

void print_stats(const boost::json::object& s) {
  std::cout << fmt::format(
      "cellular in {}: {}{}\n", std::string(s.at("month").as_string()),
      core::format_size(static_cast<std::uint64_t>(number_of(s.at("cellular_bytes")))),
      s.at("cellular_capped").as_bool() ? " (over the budget)" : "");
  std::cout << fmt::format("\n{:<20} {:<8} {:>12}\n", "app", "path", "bytes");
  for (const auto& a : s.at("apps").as_array()) {
    const auto& row = a.as_object();
    std::cout << fmt::format(
        "{:<20} {:<8} {:>12}\n", std::string(row.at("app").as_string()),
        std::string(row.at("path").as_string()),
        core::format_size(static_cast<std::uint64_t>(number_of(row.at("bytes")))));
  }
  for (const auto& p : s.at("paths").as_array()) {
    const auto& row = p.as_object();
    std::cout << fmt::format(
        "{:<20} {:<8} {:>12}\n", "(all, path total)", std::string(row.at("path").as_string()),
        core::format_size(static_cast<std::uint64_t>(number_of(row.at("bytes")))));
  }
  const auto& t = s.at("telemetry").as_object();
  std::cout << fmt::format(
      "\nlast {} days: {} single→multipath transitions: throughput gain median {} Mbit/s, mean {} "
      "Mbit/s (speed-up median {}, mean {})\n",
      number_of(t.at("days")), number_of(t.at("transitions")), measured(t.at("median_gain_mbps")),
      measured(t.at("mean_gain_mbps")), measured(t.at("median_speedup"), 2),
      measured(t.at("mean_speedup"), 2));
  std::cout << fmt::format("{} path switches: RTT change median {} ms\n",
                           number_of(t.at("switches")), measured(t.at("median_rtt_change_ms")));
}

void print_apps(const boost::json::object& reply) {
  const auto& apps = reply.at("apps").as_array();
  if (apps.empty()) {
    std::cout << "no apps (interception off, or none configured or started yet)\n";
    return;
  }
  std::cout << fmt::format("{:<20} {:<9} {:<10} {}\n", "app", "state", "class", "selected by");
  for (const auto& a : apps) {
    const auto& app = a.as_object();
    std::string by = "cgroup " + std::string(app.at("cgroup").as_string());
    if (!app.at("uid").is_null()) by += fmt::format(", uid {}", number_of(app.at("uid")));
    if (!app.at("gid").is_null()) by += fmt::format(", gid {}", number_of(app.at("gid")));
    const auto* qos = app.if_contains("class");
    std::cout << fmt::format("{:<20} {:<9} {:<10} {}\n", std::string(app.at("name").as_string()),
                             app.at("enabled").as_bool() ? "enabled" : "disabled",
                             qos != nullptr ? std::string(qos->as_string()) : std::string("-"), by);
  }
}

}  // namespace

int main(int argc, char** argv) {
  // "fleety run [--app NAME] -- CMD ...": what follows "--" is the command, untouched
  // (CLI11 would reorder it); without "--" the first word that is not run's own option
  // starts the command.
  std::vector<std::string> args(argv + 1, argv + argc);
  std::vector<std::string> command;
  bool has_separator = false;
  if (auto separator = std::find(args.begin(), args.end(), "--"); separator != args.end()) {
    command.assign(separator + 1, args.end());
    args.erase(separator, args.end());
    has_separator = true;
  }
  CLI::App cli{"fleety: multipath for unmodified apps (the daemon is fleetyd)"};
  cli.require_subcommand(1);
  const char* env_socket = std::getenv("FLEETY_CONTROL");
  std::string socket =
      env_socket != nullptr ? env_socket : std::string(control::default_socket_path);
  bool as_json = false;
  cli.add_option("--socket", socket,
                 "fleetyd's control socket (default $FLEETY_CONTROL or " +
                     std::string(control::default_socket_path) + ")");
  cli.add_flag("--json", as_json, "machine-readable output (before or after the command)");
  // `fleety status --json` as well as `fleety --json status`: what a subcommand does not
  // know goes to fleety's own options.
  cli.fallthrough();

  auto* run = cli.add_subcommand(
      "run", "run a program whose TCP and DNS fleetyd takes over (root or group fleety)");
  std::string app;
  run->add_option("--app", app, "name the app (default: the command's name)");
  bool as_root = false;
  run->add_flag("--as-root", as_root,
                "under sudo, run the program as root (by default it runs as the user who ran "
                "sudo)");
  run->footer("Usage: fleety run [--app NAME] -- CMD [ARGS...]");
  if (!has_separator) run->prefix_command();

  auto* status = cli.add_subcommand("status", "paths, sessions, interception");
  auto* watch = cli.add_subcommand("watch", "the status, refreshed until interrupted");
  double watch_interval = 1.0;
  unsigned watch_count = 0;
  watch->add_option("--interval", watch_interval, "seconds between refreshes (default 1)")
      ->check(CLI::Range(0.1, 3600.0));
  watch->add_option("--count", watch_count, "stop after this many (default: until Ctrl-C)");
  auto* stats = cli.add_subcommand(
      "stats", "cellular bytes per app this month; multipath and switch telemetry");
  auto* apps = cli.add_subcommand("apps", "the apps fleetyd takes over");
  std::string app_name;
  auto* enable = apps->add_subcommand("enable", "take the app over again");
  enable->add_option("name", app_name, "the app")->required();
  auto* disable = apps->add_subcommand("disable", "leave the app alone");
  disable->add_option("name", app_name, "the app")->required();
  auto* get =
      cli.add_subcommand("get", "download a URL over every path, without fleetyd (http and https)");
  app::get_args get_args;
  app::add_get_options(*get, get_args);
  auto* doctor = cli.add_subcommand(
      "doctor", "check what fleety needs from this machine, each problem with its fix");
  auto* rules = cli.add_subcommand("rules", "the feature rules");
  rules->add_subcommand("reload", "read the config's [[feature]] rules again")->required(false);
  rules->require_subcommand(1);

  std::reverse(args.begin(), args.end());  // CLI11 parses a reversed vector
  try {
    cli.parse(args);
  } catch (const CLI::ParseError& e) {
    return cli.exit(e);
  }
  if (run->parsed()) {
    if (!has_separator) command = run->remaining();
    return run_command(app, command, socket, as_root);
  }
  if (get->parsed()) return app::run_get(get_args, as_json);
  if (doctor->parsed()) return app::run_doctor(socket, as_json);
  if (status->parsed()) return show(socket, {{"cmd", "status"}}, as_json, print_status);
  if (watch->parsed()) {
    // A terminal gets the view redrawn in place; a pipe gets one status after another.
    const bool redraw = !as_json && ::isatty(STDOUT_FILENO) == 1;
    for (unsigned n = 0; watch_count == 0 || n < watch_count; ++n) {
      if (n > 0) std::this_thread::sleep_for(std::chrono::duration<double>(watch_interval));
      if (redraw) std::cout << "\033[H\033[2J";
      if (const int rc = show(socket, {{"cmd", "status"}}, as_json, print_status); rc != 0)
        return rc;
      if (!as_json && !redraw) std::cout << "\n";
      std::cout.flush();
    }
    return 0;
  }
  if (enable->parsed() || disable->parsed()) {
    const bool on = enable->parsed();
    return show(socket, {{"cmd", on ? "app.enable" : "app.disable"}, {"name", app_name}}, as_json,
                [&](const boost::json::object&) {
                  std::cout << "app " << app_name << ": " << (on ? "enabled" : "disabled") << "\n";
                });
  }
  if (apps->parsed()) return show(socket, {{"cmd", "apps"}}, as_json, print_apps);
  if (stats->parsed()) return show(socket, {{"cmd", "stats"}}, as_json, print_stats);
  if (rules->parsed()) {
    return show(socket, {{"cmd", "rules.reload"}}, as_json, [](const boost::json::object& r) {
      std::cout << number_of(r.at("feature_rules")) << " feature rule(s) loaded\n";
    });
  }
  return 2;
}
