// `fleety get URL [-o FILE]`: the download client, no daemon needed (mphttp::download).
// Here only the command line: paths from --path or the config, the progress line, the
// summary.

#include "app/get_command.hpp"

#include <fmt/format.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cctype>
#include <filesystem>
#include <iostream>

#include "control/status_model.hpp"
#include "core/units.hpp"
#include "mphttp/client.hpp"
#include "path/uplinks.hpp"

namespace fleety::app {
namespace {

bool plain_word(const std::string& text, std::string_view extra) {
  return !text.empty() && std::all_of(text.begin(), text.end(), [&](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           extra.find(c) != std::string_view::npos;
  });
}

/// The [[path]] tables for `--path IFACE[:KIND]` (and --dns for each), in the config's
/// own syntax, so that they are checked exactly as the config's paths are.
core::expected<std::string> paths_toml(const std::vector<std::string>& specs,
                                       const std::vector<std::string>& dns) {
  std::string dns_list;
  for (const auto& server : dns) {
    if (!plain_word(server, ".:[]"))
      return core::make_error(fmt::format("--dns '{}': not an address", server));
    dns_list += fmt::format("{}\"{}\"", dns_list.empty() ? "" : ", ", server);
  }
  std::string text;
  for (const auto& spec : specs) {
    const auto colon = spec.find(':');
    const std::string interface = spec.substr(0, colon);
    const std::string kind = colon == std::string::npos ? "wifi" : spec.substr(colon + 1);
    if (!plain_word(interface, "._-@") || !plain_word(kind, "")) {
      return core::make_error(fmt::format(
          "--path '{}': expected IFACE or IFACE:KIND (KIND wifi, cellular or wired)", spec));
    }
    text += fmt::format("[[path]]\nname = \"{0}\"\ninterface = \"{0}\"\nkind = \"{1}\"\n",
                        interface, kind);
    if (!dns_list.empty()) text += fmt::format("dns = [{}]\n", dns_list);
  }
  return text;
}

std::size_t terminal_width() {
  winsize size{};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 20) return size.ws_col;
  return 100;
}

boost::json::object result_json(const mphttp::download_result& r,
                                const std::optional<std::string>& expected) {
  boost::json::object o;
  o["ok"] = r.ok;
  o["exit_code"] = r.exit_code;
  if (!r.error.empty()) o["error"] = r.error;
  o["url"] = r.url;
  o["file"] = r.file;
  o["bytes"] = r.size;
  o["resumed_from"] = r.resumed_from;
  o["fetched"] = r.fetched;
  o["seconds"] = r.seconds;
  o["rate_bps"] = r.seconds > 0 ? static_cast<double>(r.fetched) * 8 / r.seconds : 0.0;
  o["multipath"] = r.multipath;
  if (!r.sha256.empty()) o["sha256"] = r.sha256;
  if (expected && !r.sha256.empty()) o["sha256_ok"] = *expected == r.sha256;
  boost::json::array paths;
  for (const auto& p : r.paths) {
    paths.push_back(boost::json::object{{"name", p.name},
                                        {"interface", p.interface},
                                        {"bytes", p.bytes},
                                        {"rate_bps", p.rate_bps}});
  }
  o["paths"] = std::move(paths);
  return o;
}

}  // namespace

void add_get_options(CLI::App& get, get_args& args) {
  get.add_flag("--json", args.json, "the summary as JSON on standard output");
  get.add_option("url", args.url, "http:// or https:// URL")->required();
  get.add_option("-o,--output", args.output,
                 "the file (default: the URL's last path segment; '-': standard output)");
  get.add_option("--path", args.paths,
                 "a path: IFACE[:KIND], KIND wifi (default), cellular or wired; in preference "
                 "order (default: the config's [[path]])");
  get.add_option("--dns", args.dns, "DNS server for the --path paths (default: the system's)");
  get.add_option("-c,--config", args.config,
                 "config whose [[path]] and [scheduler] to use (default /etc/fleety/fleety.toml)");
  get.add_option("--mode", args.mode, "cost (Wi-Fi first; default) or aggregate")
      ->check(CLI::IsMember({"cost", "aggregate"}));
  get.add_option("--cacert", args.ca_file,
                 "trust only these CA certificates (PEM), not the system's, for https");
  get.add_option("--sha256", args.sha256, "the file's expected sha256: exit 3 if it differs");
  get.add_flag("--continue", args.resume_any,
               "resume a file that has no resume record (as curl -C -)");
  get.add_flag("--force", args.force, "overwrite the file if it is there");
  get.add_option("--max-time", args.max_time_s, "give up after this many seconds");
  get.add_flag("-q,--quiet", args.quiet, "no progress line");
  get.add_flag("-v,--verbose", args.verbose, "log what each path does");
}

int run_get(const get_args& args, bool as_json) {
  as_json = as_json || args.json;
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>("get", sink);
  const bool tty = ::isatty(STDERR_FILENO) == 1 && !args.quiet;
  logger->set_pattern(tty ? "\r\033[Kfleety get: %v" : "fleety get: %v");
  logger->set_level(args.verbose ? spdlog::level::debug : spdlog::level::warn);
  spdlog::set_default_logger(logger);
  auto say = [&](const std::string& text) {
    std::cerr << (tty ? "\r\033[K" : "") << "fleety get: " << text << "\n";
  };

  mphttp::download_options options;
  options.url = args.url;
  options.output = args.output;
  const std::string config_path = !args.config.empty() ? args.config
                                  : std::filesystem::exists("/etc/fleety/fleety.toml")
                                      ? "/etc/fleety/fleety.toml"
                                      : std::string();
  if (!config_path.empty() && (args.paths.empty() || !args.config.empty())) {
    auto loaded = core::load_config(config_path);
    if (!loaded) {
      say(loaded.error());
      return 2;
    }
    options.config = *loaded;
  }
  if (!args.paths.empty()) {
    auto toml = paths_toml(args.paths, args.dns);
    auto parsed = toml ? core::parse_config(*toml, "--path") : core::make_error(toml.error());
    if (!parsed) {
      say(parsed.error());
      return 2;
    }
    options.config.paths = parsed->paths;
  }
  if (options.config.paths.empty()) {
    // No --path and no [[path]]: the uplinks of this machine (issue 19).
    auto found = path::discover_paths(options.config.discovery.root);
    if (found && found->empty()) {
      found = core::make_error(
          "no uplink: no interface has a default route (ip route show table all); connect one, "
          "or name it in a [[path]] (name, interface, kind)");
    }
    if (!found) {
      say(found.error() + ", or give --path IFACE");
      return 2;
    }
    options.config.paths = std::move(found).value();
    if (!args.quiet) {
      for (const auto& p : options.config.paths)
        say(fmt::format("path {} on {} ({})", p.name, p.interface, p.discovered));
    }
  }
  if (args.mode == "aggregate") options.config.scheduler.mode = core::scheduler_mode::aggregate;
  if (args.mode == "cost") options.config.scheduler.mode = core::scheduler_mode::cost;
  options.ca_file = args.ca_file;
  if (!args.sha256.empty()) {
    std::string hex = args.sha256;
    std::transform(hex.begin(), hex.end(), hex.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (hex.size() != 64 ||
        !std::all_of(hex.begin(), hex.end(), [](unsigned char c) { return std::isxdigit(c); })) {
      say(fmt::format("--sha256 '{}': expected 64 hexadecimal digits", args.sha256));
      return 2;
    }
    options.expected_sha256 = hex;
  }
  if (args.force && args.resume_any) {
    say("--force and --continue: choose one");
    return 2;
  }
  options.existing = args.force        ? mphttp::existing_file::overwrite
                     : args.resume_any ? mphttp::existing_file::resume
                                       : mphttp::existing_file::refuse;
  options.max_time = std::chrono::seconds(args.max_time_s);
  options.on_note = say;
  if (!args.quiet) {
    const std::size_t width = tty ? terminal_width() : 200;
    auto last_line = std::chrono::steady_clock::time_point{};
    options.on_progress = [tty, width, last_line](const mphttp::download_progress& p) mutable {
      if (tty) {
        std::cerr << "\r" << mphttp::render_progress(p, width - 1) << "\033[K" << std::flush;
        return;
      }
      // A pipe or a log gets a line a second, not a redrawn one.
      const auto now = std::chrono::steady_clock::now();
      if (now - last_line < std::chrono::seconds(1)) return;
      last_line = now;
      std::cerr << mphttp::render_progress(p, width) << "\n";
    };
  }

  const auto result = mphttp::download(options);
  if (tty) std::cerr << "\r\033[K";
  if (!result.ok && !result.error.empty()) say(result.error);
  if (as_json) {
    (result.file == "-" ? std::cerr : std::cout)
        << control::json_text(result_json(result, options.expected_sha256)) << "\n";
  } else if (result.sha256.size() == 64) {
    const double rate =
        result.seconds > 0 ? static_cast<double>(result.fetched) * 8 / result.seconds : 0;
    std::cerr << fmt::format(
        "{} {}: {} in {:.1f} s = {}{}{}\n", result.ok ? "saved" : "got", result.file,
        core::format_size(result.fetched), result.seconds, core::format_rate(rate),
        result.multipath ? fmt::format(" over {} paths", result.paths.size())
                         : std::string(" over one path"),
        result.resumed_from > 0
            ? fmt::format(" (resumed at {})", core::format_size(result.resumed_from))
            : std::string());
    for (const auto& p : result.paths) {
      std::cerr << fmt::format(
          "  {:<16} {:>10}  {}\n",
          p.name == p.interface ? p.name : fmt::format("{} ({})", p.name, p.interface),
          core::format_size(p.bytes), core::format_rate(p.rate_bps));
    }
    std::cerr << fmt::format("  sha256 {}{}\n", result.sha256,
                             !options.expected_sha256                    ? ""
                             : *options.expected_sha256 == result.sha256 ? " (as expected)"
                                                                         : " (NOT as expected)");
  }
  return result.exit_code;
}

}  // namespace fleety::app
