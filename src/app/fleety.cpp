// fleety: the command line. `fleety run [--app NAME] -- CMD ...` runs an unmodified
// program whose TCP connections fleetyd takes over: the program is put in the cgroup
// fleetyd's interception rules select, then exec'd.

#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

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

bool valid_app_name(const std::string& name) {
  if (name.empty() || name.size() > 64 || name.front() == '.' || name.front() == '-') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

int run_command(std::string app, const std::vector<std::string>& command) {
  if (command.empty()) {
    std::cerr << "fleety run: no command given: fleety run [--app NAME] -- CMD [ARGS...]\n";
    return 2;
  }
  if (app.empty()) app = app_name_of(command.front());
  if (!valid_app_name(app)) {
    std::cerr << "fleety run: app name '" << app
              << "': use letters, digits, '.', '_' or '-' (at most 64)\n";
    return 2;
  }
  if (::geteuid() != 0) {
    std::cerr << "fleety run: needs root (it moves the program into fleety's cgroup): run it "
                 "with sudo\n";
    return 1;
  }
  // fleetyd must be intercepting in this network namespace, or the program would just
  // run untouched while the user believes it is multipath.
  if (auto table = intercept::run_nft(fmt::format("list table inet {}", intercept::table_name));
      !table) {
    std::cerr << "fleety run: fleetyd is not intercepting here (no nftables table inet "
              << intercept::table_name
              << "): start fleetyd with [intercept] enabled = true in this network namespace\n";
    return 1;
  }
  auto mount = intercept::cgroup2_mount();
  if (!mount) {
    std::cerr << "fleety run: " << mount.error() << "\n";
    return 1;
  }
  const fs::path cgroup = fs::path(*mount) / intercept::run_cgroup / app;
  std::error_code ec;
  fs::create_directories(cgroup, ec);
  if (ec) {
    std::cerr << "fleety run: cannot create the cgroup " << cgroup.string() << ": " << ec.message()
              << "\n";
    return 1;
  }
  {
    std::ofstream procs(cgroup / "cgroup.procs");
    procs << ::getpid() << std::flush;
    if (!procs) {
      std::cerr << "fleety run: cannot move into the cgroup " << cgroup.string() << ": "
                << std::strerror(errno) << "\n";
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
  auto* run = cli.add_subcommand(
      "run", "run a program whose TCP connections fleetyd takes over (needs root)");
  std::string app;
  run->add_option("--app", app, "name the app (default: the command's name)");
  run->footer("Usage: fleety run [--app NAME] -- CMD [ARGS...]");
  if (!has_separator) run->prefix_command();
  std::reverse(args.begin(), args.end());  // CLI11 parses a reversed vector
  try {
    cli.parse(args);
  } catch (const CLI::ParseError& e) {
    return cli.exit(e);
  }
  if (!run->parsed()) return 2;
  if (!has_separator) command = run->remaining();
  return run_command(app, command);
}
