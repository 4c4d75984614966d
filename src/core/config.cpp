#include "core/config.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <re2/re2.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <fstream>
#include <set>
#include <sstream>

#include "core/units.hpp"

namespace fleety::core {
namespace {

/// Carries the file name and turns a node into "FILE:LINE: ".
struct context {
  std::string_view source;

  std::string where(const toml::node& node) const {
    const auto& begin = node.source().begin;
    if (begin.line == 0) return fmt::format("{}: ", source);
    return fmt::format("{}:{}: ", source, begin.line);
  }
};

/// Rejects keys we don't know: a typo must not be silently ignored.
std::optional<std::string> check_keys(const context& ctx, const toml::table& table,
                                      std::string_view section,
                                      std::initializer_list<std::string_view> known) {
  for (const auto& [key, node] : table) {
    if (std::find(known.begin(), known.end(), key.str()) == known.end()) {
      std::string list;
      for (auto k : known) list += fmt::format("{}{}", list.empty() ? "" : ", ", k);
      return fmt::format("{}unknown key '{}' in {} (known: {})", ctx.where(node), key.str(),
                         section, list);
    }
  }
  return std::nullopt;
}

std::optional<std::string> read_string(const context& ctx, const toml::table& table,
                                       std::string_view key, std::string_view section,
                                       std::string& out) {
  const toml::node* node = table.get(key);
  if (node == nullptr) return std::nullopt;
  const auto* value = node->as_string();
  if (value == nullptr) {
    return fmt::format("{}{}.{} must be a string", ctx.where(*node), section, key);
  }
  out = value->get();
  return std::nullopt;
}

template <class Parsed, class Parser, class Store>
std::optional<std::string> read_unit(const context& ctx, const toml::table& table,
                                     std::string_view key, std::string_view section, Parser parser,
                                     Store store) {
  const toml::node* node = table.get(key);
  if (node == nullptr) return std::nullopt;
  std::string text;
  if (const auto* s = node->as_string()) {
    text = s->get();
  } else if (const auto* i = node->as_integer()) {
    text = std::to_string(i->get());
  } else {
    return fmt::format("{}{}.{} must be a string such as \"20mbit\", \"50ms\" or \"32MiB\"",
                       ctx.where(*node), section, key);
  }
  auto parsed = parser(text);
  if (!parsed) return fmt::format("{}{}.{}: {}", ctx.where(*node), section, key, parsed.error());
  return store(*parsed, *node);
}

/// `listen = "ADDRESS:PORT"` ("127.0.0.1:3128" or "[::1]:3128") of `section`.
std::optional<std::string> read_listen(const context& ctx, const toml::table& table,
                                       std::string_view section, std::string_view example,
                                       std::string& address, std::uint16_t& port_out) {
  const toml::node* node = table.get("listen");
  if (node == nullptr) return std::nullopt;
  std::string listen;
  if (auto e = read_string(ctx, table, "listen", section, listen)) return e;
  const auto colon = listen.rfind(':');
  if (colon == std::string::npos || colon + 1 == listen.size()) {
    return fmt::format("{}{}.listen '{}' must be ADDRESS:PORT, e.g. \"{}\"", ctx.where(*node),
                       section, listen, example);
  }
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  unsigned port = 0;
  const std::string port_text = listen.substr(colon + 1);
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc{} || end != port_text.data() + port_text.size() || port > 65535) {
    return fmt::format("{}{}.listen '{}': '{}' is not a port number (0-65535)", ctx.where(*node),
                       section, listen, port_text);
  }
  address = host;
  port_out = static_cast<std::uint16_t>(port);
  return std::nullopt;
}

std::optional<std::string> read_integer(const context& ctx, const toml::table& table,
                                        std::string_view key, std::string_view section,
                                        std::int64_t min, std::int64_t max, std::int64_t& out);

std::optional<std::string> read_proxy(const context& ctx, const toml::table& table,
                                      proxy_config& proxy) {
  if (auto e = check_keys(ctx, table, "[proxy]",
                          {"listen", "connect_timeout", "io_timeout", "stream_idle_timeout",
                           "max_connections", "connections_per_host", "idle_connections",
                           "idle_connection_timeout", "connect_ports"})) {
    return e;
  }
  if (auto e = read_listen(ctx, table, "proxy", "127.0.0.1:3128", proxy.listen_address,
                           proxy.listen_port))
    return e;
  auto store_duration = [](std::chrono::microseconds& target) {
    return [&target](std::chrono::microseconds value,
                     const toml::node&) -> std::optional<std::string> {
      target = value;
      return std::nullopt;
    };
  };
  if (auto e = read_unit<std::chrono::microseconds>(ctx, table, "connect_timeout", "proxy",
                                                    parse_duration,
                                                    store_duration(proxy.connect_timeout))) {
    return e;
  }
  if (auto e = read_unit<std::chrono::microseconds>(
          ctx, table, "io_timeout", "proxy", parse_duration, store_duration(proxy.io_timeout))) {
    return e;
  }
  if (auto e = read_unit<std::chrono::microseconds>(ctx, table, "stream_idle_timeout", "proxy",
                                                    parse_duration,
                                                    store_duration(proxy.stream_idle_timeout))) {
    return e;
  }
  std::int64_t count = proxy.max_connections;
  if (auto e = read_integer(ctx, table, "max_connections", "proxy", 1, 100000, count)) return e;
  proxy.max_connections = static_cast<std::uint32_t>(count);
  count = static_cast<std::int64_t>(proxy.connections_per_host);
  if (auto e = read_integer(ctx, table, "connections_per_host", "proxy", 1, 64, count)) return e;
  proxy.connections_per_host = static_cast<std::size_t>(count);
  count = static_cast<std::int64_t>(proxy.idle_connections);
  if (auto e = read_integer(ctx, table, "idle_connections", "proxy", 0, 1024, count)) return e;
  proxy.idle_connections = static_cast<std::size_t>(count);
  if (auto e = read_unit<std::chrono::microseconds>(
          ctx, table, "idle_connection_timeout", "proxy", parse_duration,
          store_duration(proxy.idle_connection_timeout))) {
    return e;
  }
  if (const toml::node* node = table.get("connect_ports")) {
    const auto* list = node->as_array();
    if (list == nullptr)
      return fmt::format("{}proxy.connect_ports must be a list of ports ([443])", ctx.where(*node));
    proxy.connect_ports.clear();
    for (const auto& entry : *list) {
      const auto port = entry.value<std::int64_t>();
      if (!port || *port < 1 || *port > 65535)
        return fmt::format("{}proxy.connect_ports: each must be a port from 1 to 65535",
                           ctx.where(entry));
      proxy.connect_ports.push_back(static_cast<std::uint16_t>(*port));
    }
  }
  return std::nullopt;
}

/// "198.51.100.1:443" or "[2001:db8::1]:443": a literal address and a port above 0.
bool valid_host_port(std::string_view text) {
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos || colon + 1 == text.size()) return false;
  std::string_view host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string_view::npos) {
    return false;  // an IPv6 address needs its brackets
  }
  unsigned port = 0;
  const auto digits = text.substr(colon + 1);
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
  if (ec != std::errc{} || end != digits.data() + digits.size() || port == 0 || port > 65535)
    return false;
  in6_addr v6{};
  in_addr v4{};
  const std::string h(host);
  return ::inet_pton(AF_INET, h.c_str(), &v4) == 1 || ::inet_pton(AF_INET6, h.c_str(), &v6) == 1;
}

std::optional<std::string> read_path(const context& ctx, const toml::table& table,
                                     path_config& path) {
  if (auto e = check_keys(
          ctx, table, "[[path]]",
          {"name", "interface", "kind", "cost", "dns", "rate", "rtt", "probe", "mptcp_backup"})) {
    return e;
  }
  for (auto key : {"name", "interface", "kind"}) {
    if (!table.contains(key)) {
      return fmt::format("{}[[path]] needs '{}'", ctx.where(table), key);
    }
  }
  if (auto e = read_string(ctx, table, "name", "path", path.name)) return e;
  if (auto e = read_string(ctx, table, "interface", "path", path.interface)) return e;
  if (path.name.empty()) return fmt::format("{}path.name must not be empty", ctx.where(table));
  // IFNAMSIZ is 16 including the terminating NUL.
  if (path.interface.empty() || path.interface.size() > 15 ||
      path.interface.find_first_of("/ \t") != std::string::npos) {
    return fmt::format("{}path '{}': '{}' is not a valid interface name",
                       ctx.where(*table.get("interface")), path.name, path.interface);
  }
  std::string kind;
  if (auto e = read_string(ctx, table, "kind", "path", kind)) return e;
  if (kind == "wifi") {
    path.kind = path_kind::wifi;
  } else if (kind == "cellular") {
    path.kind = path_kind::cellular;
  } else if (kind == "wired") {
    path.kind = path_kind::wired;
  } else {
    return fmt::format("{}path '{}': unknown kind '{}' (expected wifi, cellular or wired)",
                       ctx.where(*table.get("kind")), path.name, kind);
  }
  path.cost = path.kind == path_kind::cellular ? 10 : 0;
  path.mptcp_backup = path.kind == path_kind::cellular;
  if (const toml::node* node = table.get("cost")) {
    const auto* value = node->as_integer();
    if (value == nullptr || value->get() < 0 || value->get() > 1000000) {
      return fmt::format("{}path '{}': cost must be a whole number from 0 to 1000000",
                         ctx.where(*node), path.name);
    }
    path.cost = static_cast<int>(value->get());
  }
  if (const toml::node* node = table.get("dns")) {
    auto add = [&](const toml::node& entry) -> std::optional<std::string> {
      const auto* s = entry.as_string();
      if (s == nullptr || s->get().empty()) {
        return fmt::format("{}path '{}': dns must be a list of server addresses", ctx.where(entry),
                           path.name);
      }
      path.dns_servers.push_back(s->get());
      return std::nullopt;
    };
    if (const auto* list = node->as_array()) {
      for (const auto& entry : *list) {
        if (auto e = add(entry)) return e;
      }
    } else if (auto e = add(*node)) {
      return e;
    }
  }
  if (auto e = read_unit<std::uint64_t>(
          ctx, table, "rate", "path", parse_rate_bps,
          [&](std::uint64_t v, const toml::node& n) -> std::optional<std::string> {
            if (v == 0)
              return fmt::format("{}path '{}': rate must be above 0", ctx.where(n), path.name);
            path.prior_rate_bps = v;
            return std::nullopt;
          })) {
    return e;
  }
  if (const toml::node* node = table.get("mptcp_backup")) {
    const auto* value = node->as_boolean();
    if (value == nullptr) {
      return fmt::format("{}path '{}': mptcp_backup must be true or false", ctx.where(*node),
                         path.name);
    }
    path.mptcp_backup = value->get();
  }
  if (auto e = read_string(ctx, table, "probe", "path", path.probe)) return e;
  if (!path.probe.empty() && !valid_host_port(path.probe)) {
    return fmt::format(
        "{}path '{}': probe '{}' must be ADDRESS:PORT (\"198.51.100.1:443\", "
        "\"[2001:db8::1]:443\")",
        ctx.where(*table.get("probe")), path.name, path.probe);
  }
  return read_unit<std::chrono::microseconds>(
      ctx, table, "rtt", "path", parse_duration,
      [&](std::chrono::microseconds v, const toml::node&) -> std::optional<std::string> {
        path.prior_rtt = v;
        return std::nullopt;
      });
}

std::optional<std::string> read_scheduler(const context& ctx, const toml::table& table,
                                          scheduler_config& s) {
  if (auto e = check_keys(
          ctx, table, "[scheduler]",
          {"mode", "tolerance", "range_time", "mismatch_cooldown", "memory_per_session",
           "memory_budget", "min_split_size", "overlap", "default_rate", "default_rtt"})) {
    return e;
  }
  if (const toml::node* node = table.get("mode")) {
    std::string mode;
    if (auto e = read_string(ctx, table, "mode", "scheduler", mode)) return e;
    if (mode == "cost") {
      s.mode = scheduler_mode::cost;
    } else if (mode == "aggregate") {
      s.mode = scheduler_mode::aggregate;
    } else {
      return fmt::format("{}scheduler.mode '{}' is unknown (expected \"cost\" or \"aggregate\")",
                         ctx.where(*node), mode);
    }
  }
  auto duration_into = [&ctx](std::chrono::microseconds& target, std::chrono::microseconds min,
                              std::string_view key) {
    return [&target, min, key, &ctx](std::chrono::microseconds v,
                                     const toml::node& n) -> std::optional<std::string> {
      if (v < min) {
        return fmt::format("{}scheduler.{} must be at least {} ms", ctx.where(n), key,
                           min.count() / 1000);
      }
      target = v;
      return std::nullopt;
    };
  };
  auto size_into = [&ctx](std::uint64_t& target, std::uint64_t min, std::uint64_t max,
                          std::string_view key) {
    return [&target, min, max, key, &ctx](std::uint64_t v,
                                          const toml::node& n) -> std::optional<std::string> {
      if (v < min || v > max) {
        return fmt::format("{}scheduler.{} must be from {} to {}", ctx.where(n), key,
                           format_size(min), format_size(max));
      }
      target = v;
      return std::nullopt;
    };
  };
  using us = std::chrono::microseconds;
  if (auto e = read_unit<us>(ctx, table, "tolerance", "scheduler", parse_duration,
                             duration_into(s.tolerance, us(0), "tolerance")))
    return e;
  if (auto e = read_unit<us>(ctx, table, "range_time", "scheduler", parse_duration,
                             duration_into(s.range_time, us(10'000), "range_time")))
    return e;
  if (auto e = read_unit<us>(ctx, table, "mismatch_cooldown", "scheduler", parse_duration,
                             duration_into(s.mismatch_cooldown, us(0), "mismatch_cooldown")))
    return e;
  if (auto e = read_unit<us>(ctx, table, "default_rtt", "scheduler", parse_duration,
                             duration_into(s.default_rtt, us(0), "default_rtt")))
    return e;
  if (auto e = read_unit<std::uint64_t>(
          ctx, table, "memory_per_session", "scheduler", parse_size_bytes,
          size_into(s.memory_per_session_bytes, 1ULL << 20, 4ULL << 30, "memory_per_session")))
    return e;
  if (auto e = read_unit<std::uint64_t>(
          ctx, table, "memory_budget", "scheduler", parse_size_bytes,
          size_into(s.memory_budget_bytes, 4ULL << 20, 64ULL << 30, "memory_budget")))
    return e;
  if (const auto* auto_split = table.get_as<std::string>("min_split_size");
      auto_split != nullptr && auto_split->get() == "auto") {
    s.min_split_bytes.reset();
  } else if (table.contains("min_split_size")) {
    std::uint64_t fixed = 0;
    if (auto e =
            read_unit<std::uint64_t>(ctx, table, "min_split_size", "scheduler", parse_size_bytes,
                                     size_into(fixed, 0, 1ULL << 40, "min_split_size")))
      return e;
    s.min_split_bytes = fixed;
  }
  if (auto e = read_unit<std::uint64_t>(ctx, table, "overlap", "scheduler", parse_size_bytes,
                                        size_into(s.overlap_bytes, 0, 1ULL << 20, "overlap")))
    return e;
  return read_unit<std::uint64_t>(
      ctx, table, "default_rate", "scheduler", parse_rate_bps,
      [&](std::uint64_t v, const toml::node& n) -> std::optional<std::string> {
        if (v == 0) return fmt::format("{}scheduler.default_rate must be above 0", ctx.where(n));
        s.default_rate_bps = v;
        return std::nullopt;
      });
}

std::optional<std::string> read_bool(const context& ctx, const toml::table& table,
                                     std::string_view key, std::string_view section, bool& out) {
  const toml::node* node = table.get(key);
  if (node == nullptr) return std::nullopt;
  const auto* value = node->as_boolean();
  if (value == nullptr)
    return fmt::format("{}{}.{} must be true or false", ctx.where(*node), section, key);
  out = value->get();
  return std::nullopt;
}

std::optional<std::string> read_integer(const context& ctx, const toml::table& table,
                                        std::string_view key, std::string_view section,
                                        std::int64_t min, std::int64_t max, std::int64_t& out) {
  const toml::node* node = table.get(key);
  if (node == nullptr) return std::nullopt;
  const auto* value = node->as_integer();
  if (value == nullptr || value->get() < min || value->get() > max) {
    return fmt::format("{}{}.{} must be a whole number from {} to {}", ctx.where(*node), section,
                       key, min, max);
  }
  out = value->get();
  return std::nullopt;
}

/// A string or a list of strings, none empty.
std::optional<std::string> read_string_list(const context& ctx, const toml::table& table,
                                            std::string_view key, std::string_view section,
                                            std::vector<std::string>& out) {
  const toml::node* node = table.get(key);
  if (node == nullptr) return std::nullopt;
  auto add = [&](const toml::node& entry) -> std::optional<std::string> {
    const auto* value = entry.as_string();
    if (value == nullptr || value->get().empty())
      return fmt::format("{}{}.{} must be a list of non-empty strings", ctx.where(entry), section,
                         key);
    out.push_back(value->get());
    return std::nullopt;
  };
  if (const auto* list = node->as_array()) {
    for (const auto& entry : *list)
      if (auto e = add(entry)) return e;
    return std::nullopt;
  }
  return add(*node);
}

/// A DNS time to live ("60s", "1h"): from 1 s to 24 h.
std::optional<std::string> read_ttl(const context& ctx, const toml::table& table,
                                    std::string_view key, std::string_view section,
                                    std::chrono::seconds& out) {
  return read_unit<std::chrono::microseconds>(
      ctx, table, key, section, parse_duration,
      [&](std::chrono::microseconds v, const toml::node& node) -> std::optional<std::string> {
        if (v < std::chrono::seconds(1) || v > std::chrono::hours(24))
          return fmt::format("{}{}.{} must be from 1s to 24h", ctx.where(node), section, key);
        out = std::chrono::duration_cast<std::chrono::seconds>(v);
        return std::nullopt;
      });
}

std::optional<std::string> check_regex(const context& ctx, const toml::node& node,
                                       std::string_view what, const std::string& pattern) {
  re2::RE2::Options options;
  options.set_log_errors(false);
  const re2::RE2 compiled(pattern, options);
  if (!compiled.ok()) {
    return fmt::format(
        "{}{}: '{}' is not a valid regular expression ({}; RE2 syntax: no backreferences or "
        "lookaround)",
        ctx.where(node), what, pattern, compiled.error());
  }
  return std::nullopt;
}

std::optional<std::string> read_intercept(const context& ctx, const toml::table& table,
                                          intercept_config& out) {
  if (auto e = check_keys(ctx, table, "[intercept]",
                          {"enabled", "port", "dns_port", "mark", "peek_timeout"}))
    return e;
  if (auto e = read_bool(ctx, table, "enabled", "intercept", out.enabled)) return e;
  std::int64_t value = out.tcp_port;
  if (auto e = read_integer(ctx, table, "port", "intercept", 1, 65535, value)) return e;
  out.tcp_port = static_cast<std::uint16_t>(value);
  value = out.dns_port;
  if (auto e = read_integer(ctx, table, "dns_port", "intercept", 1, 65535, value)) return e;
  out.dns_port = static_cast<std::uint16_t>(value);
  if (out.dns_port == out.tcp_port && table.contains("dns_port")) {
    return fmt::format("{}intercept.dns_port must differ from intercept.port",
                       ctx.where(*table.get("dns_port")));
  }
  value = out.mark;
  if (auto e = read_integer(ctx, table, "mark", "intercept", 1, 0xffffffffLL, value)) return e;
  out.mark = static_cast<std::uint32_t>(value);
  return read_unit<std::chrono::microseconds>(
      ctx, table, "peek_timeout", "intercept", parse_duration,
      [&](std::chrono::microseconds v, const toml::node& n) -> std::optional<std::string> {
        if (v < std::chrono::milliseconds(10) || v > std::chrono::seconds(60))
          return fmt::format("{}intercept.peek_timeout must be from 10ms to 60s", ctx.where(n));
        out.peek_timeout = v;
        return std::nullopt;
      });
}

std::optional<std::string> read_app(const context& ctx, const toml::table& table, app_config& app) {
  if (auto e =
          check_keys(ctx, table, "[[app]]", {"name", "cgroup", "uid", "gid", "enabled", "class"}))
    return e;
  if (!table.contains("name")) return fmt::format("{}[[app]] needs 'name'", ctx.where(table));
  if (auto e = read_string(ctx, table, "name", "app", app.name)) return e;
  // The name becomes a cgroup directory (fleety run) and a key in the CLI.
  static const re2::RE2 valid_name("[A-Za-z0-9][A-Za-z0-9._-]{0,63}");
  if (!re2::RE2::FullMatch(app.name, valid_name)) {
    return fmt::format(
        "{}app name '{}': use letters, digits, '.', '_' or '-' (at most 64, not starting with "
        "'.' or '-')",
        ctx.where(*table.get("name")), app.name);
  }
  if (auto e = read_string(ctx, table, "cgroup", "app", app.cgroup)) return e;
  if (app.cgroup.find("..") != std::string::npos) {
    return fmt::format("{}app '{}': cgroup '{}' must not contain '..'",
                       ctx.where(*table.get("cgroup")), app.name, app.cgroup);
  }
  while (!app.cgroup.empty() && app.cgroup.front() == '/') app.cgroup.erase(0, 1);
  std::int64_t id = -1;
  if (auto e = read_integer(ctx, table, "uid", "app", 0, 0xfffffffeLL, id)) return e;
  if (id >= 0) app.uid = static_cast<std::uint32_t>(id);
  id = -1;
  if (auto e = read_integer(ctx, table, "gid", "app", 0, 0xfffffffeLL, id)) return e;
  if (id >= 0) app.gid = static_cast<std::uint32_t>(id);
  if (auto e = read_bool(ctx, table, "enabled", "app", app.enabled)) return e;
  return read_string(ctx, table, "class", "app", app.qos_class);
}

std::optional<std::string> read_class(const context& ctx, const toml::table& table,
                                      qos_class_config& out) {
  if (auto e = check_keys(ctx, table, "[[class]]",
                          {"name", "max_rtt", "max_jitter", "max_loss", "min_throughput"}))
    return e;
  if (!table.contains("name")) return fmt::format("{}[[class]] needs 'name'", ctx.where(table));
  if (auto e = read_string(ctx, table, "name", "class", out.name)) return e;
  auto store = [](std::optional<std::chrono::microseconds>& target) {
    return [&target](std::chrono::microseconds v, const toml::node&) -> std::optional<std::string> {
      target = v;
      return std::nullopt;
    };
  };
  if (auto e = read_unit<std::chrono::microseconds>(ctx, table, "max_rtt", "class", parse_duration,
                                                    store(out.max_rtt)))
    return e;
  if (auto e = read_unit<std::chrono::microseconds>(ctx, table, "max_jitter", "class",
                                                    parse_duration, store(out.max_jitter)))
    return e;
  if (const toml::node* node = table.get("max_loss")) {
    const auto value = node->value<double>();
    if (!value || *value < 0 || *value > 1) {
      return fmt::format("{}class '{}': max_loss must be a fraction from 0 to 1 (0.02 is 2%)",
                         ctx.where(*node), out.name);
    }
    out.max_loss = *value;
  }
  return read_unit<std::uint64_t>(
      ctx, table, "min_throughput", "class", parse_rate_bps,
      [&](std::uint64_t v, const toml::node&) -> std::optional<std::string> {
        out.min_throughput_bps = v;
        return std::nullopt;
      });
}

std::optional<std::string> read_selector(const context& ctx, const toml::table& table,
                                         selector_config& out) {
  if (auto e = check_keys(ctx, table, "[selector]", {"default_class", "reset_after", "hysteresis"}))
    return e;
  if (auto e = read_string(ctx, table, "default_class", "selector", out.default_class)) return e;
  auto bounded = [&](std::chrono::microseconds& target, std::string_view key) {
    return [&target, &ctx, key](std::chrono::microseconds v,
                                const toml::node& n) -> std::optional<std::string> {
      if (v < std::chrono::milliseconds(200) || v > std::chrono::hours(1))
        return fmt::format("{}selector.{} must be from 200ms to 1h", ctx.where(n), key);
      target = v;
      return std::nullopt;
    };
  };
  if (auto e = read_unit<std::chrono::microseconds>(ctx, table, "reset_after", "selector",
                                                    parse_duration,
                                                    bounded(out.reset_after, "reset_after")))
    return e;
  return read_unit<std::chrono::microseconds>(ctx, table, "hysteresis", "selector", parse_duration,
                                              bounded(out.hysteresis, "hysteresis"));
}

std::optional<std::string> read_monitor(const context& ctx, const toml::table& table,
                                        monitor_config& out) {
  if (auto e = check_keys(
          ctx, table, "[monitor]",
          {"interval", "probe_interval", "cellular_probe_budget", "history", "history_retention"}))
    return e;
  auto bounded = [&](std::chrono::microseconds& target, std::string_view key,
                     std::chrono::microseconds low, std::chrono::microseconds high) {
    return [&target, &ctx, key, low, high](std::chrono::microseconds v,
                                           const toml::node& n) -> std::optional<std::string> {
      if (v < low || v > high)
        return fmt::format("{}monitor.{} must be from {} ms to {} s", ctx.where(n), key,
                           low.count() / 1000, high.count() / 1'000'000);
      target = v;
      return std::nullopt;
    };
  };
  using std::chrono::hours;
  using std::chrono::milliseconds;
  using std::chrono::seconds;
  if (auto e = read_unit<std::chrono::microseconds>(
          ctx, table, "interval", "monitor", parse_duration,
          bounded(out.interval, "interval", milliseconds(50), seconds(60))))
    return e;
  if (auto e = read_unit<std::chrono::microseconds>(
          ctx, table, "probe_interval", "monitor", parse_duration,
          bounded(out.probe_interval, "probe_interval", milliseconds(100), hours(1))))
    return e;
  if (auto e = read_unit<std::chrono::microseconds>(
          ctx, table, "history_retention", "monitor", parse_duration,
          bounded(out.history_retention, "history_retention", seconds(60), hours(24 * 366))))
    return e;
  if (auto e = read_string(ctx, table, "history", "monitor", out.history_file)) return e;
  return read_unit<std::uint64_t>(
      ctx, table, "cellular_probe_budget", "monitor", parse_size_bytes,
      [&](std::uint64_t v, const toml::node&) -> std::optional<std::string> {
        out.cellular_probe_budget_Bps = v;
        return std::nullopt;
      });
}

std::optional<std::string> read_feature(const context& ctx, const toml::table& table,
                                        feature_config& feature) {
  if (auto e = check_keys(
          ctx, table, "[[feature]]",
          {"name", "hosts", "path_regex", "extensions", "headers", "min_size", "multipath"}))
    return e;
  if (!table.contains("name")) return fmt::format("{}[[feature]] needs 'name'", ctx.where(table));
  if (auto e = read_string(ctx, table, "name", "feature", feature.name)) return e;
  if (auto e = read_string_list(ctx, table, "hosts", "feature", feature.hosts)) return e;
  if (auto e = read_string(ctx, table, "path_regex", "feature", feature.path_regex)) return e;
  if (!feature.path_regex.empty()) {
    if (auto e =
            check_regex(ctx, *table.get("path_regex"),
                        fmt::format("feature '{}': path_regex", feature.name), feature.path_regex))
      return e;
  }
  if (auto e = read_string_list(ctx, table, "extensions", "feature", feature.extensions)) return e;
  for (auto& extension : feature.extensions) {
    if (extension.front() == '.') extension.erase(0, 1);
    std::transform(extension.begin(), extension.end(), extension.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  }
  if (const toml::node* node = table.get("headers")) {
    const auto* headers = node->as_table();
    if (headers == nullptr) {
      return fmt::format(
          "{}feature '{}': headers must be a table, e.g. headers = {{ "
          "\"User-Agent\" = \"Player\" }}",
          ctx.where(*node), feature.name);
    }
    for (const auto& [name, value] : *headers) {
      const auto* pattern = value.as_string();
      if (pattern == nullptr) {
        return fmt::format("{}feature '{}': header '{}' must map to a regex string",
                           ctx.where(value), feature.name, name.str());
      }
      if (auto e = check_regex(ctx, value,
                               fmt::format("feature '{}': header '{}'", feature.name, name.str()),
                               pattern->get()))
        return e;
      feature.headers.emplace_back(std::string(name.str()), pattern->get());
    }
  }
  if (auto e = read_unit<std::uint64_t>(
          ctx, table, "min_size", "feature", parse_size_bytes,
          [&](std::uint64_t v, const toml::node&) -> std::optional<std::string> {
            feature.min_size = v;
            return std::nullopt;
          }))
    return e;
  return read_bool(ctx, table, "multipath", "feature", feature.multipath);
}

std::optional<std::string> read_http_dns(const context& ctx, const toml::table& table,
                                         http_dns_config& endpoint) {
  if (auto e =
          check_keys(ctx, table, "[[http_dns]]",
                     {"name", "hosts", "path", "name_parameters", "default_ttl", "max_reply_size"}))
    return e;
  if (!table.contains("name")) return fmt::format("{}[[http_dns]] needs 'name'", ctx.where(table));
  if (auto e = read_string(ctx, table, "name", "http_dns", endpoint.name)) return e;
  if (auto e = read_string_list(ctx, table, "hosts", "http_dns", endpoint.hosts)) return e;
  if (endpoint.hosts.empty()) {
    return fmt::format(
        "{}http_dns '{}' needs 'hosts': the endpoint's host names or addresses, e.g. hosts = "
        "[\"203.0.113.1\"]",
        ctx.where(table), endpoint.name);
  }
  if (auto e = read_string(ctx, table, "path", "http_dns", endpoint.path)) return e;
  if (endpoint.path.empty() || endpoint.path.front() != '/' ||
      endpoint.path.find_first_of("?# ") != std::string::npos) {
    return fmt::format("{}http_dns '{}': path '{}' must start with '/' and have no query",
                       ctx.where(*table.get("path")), endpoint.name, endpoint.path);
  }
  if (table.contains("name_parameters")) {
    endpoint.name_parameters.clear();
    if (auto e =
            read_string_list(ctx, table, "name_parameters", "http_dns", endpoint.name_parameters))
      return e;
  }
  if (auto e = read_ttl(ctx, table, "default_ttl", "http_dns", endpoint.default_ttl)) return e;
  return read_unit<std::uint64_t>(
      ctx, table, "max_reply_size", "http_dns", parse_size_bytes,
      [&](std::uint64_t v, const toml::node& node) -> std::optional<std::string> {
        if (v < 512 || v > (16ULL << 20))
          return fmt::format("{}http_dns.max_reply_size must be from 512B to 16MiB",
                             ctx.where(node));
        endpoint.max_reply_bytes = v;
        return std::nullopt;
      });
}

/// [[NAME]] entries, each read by `read_one`.
template <class Entry, class Reader>
std::optional<std::string> read_array_of_tables(const context& ctx, const toml::table& root,
                                                std::string_view name, std::vector<Entry>& out,
                                                Reader read_one) {
  const toml::node* node = root.get(name);
  if (node == nullptr) return std::nullopt;
  const auto* array = node->as_array();
  if (array == nullptr)
    return fmt::format("{}{} must be an array of tables: write [[{}]]", ctx.where(*node), name,
                       name);
  for (const auto& entry : *array) {
    const auto* table = entry.as_table();
    if (table == nullptr)
      return fmt::format("{}each [[{}]] must be a table", ctx.where(entry), name);
    Entry value;
    if (auto e = read_one(ctx, *table, value)) return e;
    out.push_back(std::move(value));
  }
  return std::nullopt;
}

}  // namespace

std::vector<qos_class_config> builtin_qos_classes() {
  using std::chrono::milliseconds;
  return {
      {"gaming", milliseconds(100), milliseconds(30), 0.02, std::nullopt},
      {"streaming", std::nullopt, std::nullopt, std::nullopt, 5'000'000},
      {"download", std::nullopt, std::nullopt, std::nullopt, 1'000'000},
      {"messaging", std::nullopt, std::nullopt, std::nullopt, std::nullopt},
      {"default", std::nullopt, std::nullopt, std::nullopt, std::nullopt},
  };
}

std::string_view to_string(path_kind kind) {
  switch (kind) {
    case path_kind::wifi:
      return "wifi";
    case path_kind::cellular:
      return "cellular";
    case path_kind::wired:
      return "wired";
  }
  return "unknown";
}

expected<config> parse_config(std::string_view toml_text, std::string_view source_name) {
  const context ctx{source_name};
  toml::table root;
  try {
    root = toml::parse(toml_text, source_name);
  } catch (const toml::parse_error& error) {
    return make_error(
        fmt::format("{}:{}: {}", source_name, error.source().begin.line, error.description()));
  }
  config result;
  if (auto e = check_keys(ctx, root, "the file",
                          {"proxy", "path", "scheduler", "log", "intercept", "app", "feature",
                           "http_dns", "classify", "control", "class", "selector", "monitor",
                           "budget", "mptcp", "metrics", "dns", "access", "discovery"})) {
    return make_error(*e);
  }
  if (const toml::node* node = root.get("intercept")) {
    const auto* table = node->as_table();
    if (table == nullptr) return make_error(ctx.where(*node) + "[intercept] must be a table");
    if (auto e = read_intercept(ctx, *table, result.intercept)) return make_error(*e);
  }
  if (const toml::node* node = root.get("dns")) {
    const auto* table = node->as_table();
    if (table == nullptr) return make_error(ctx.where(*node) + "[dns] must be a table");
    if (auto e = check_keys(ctx, *table, "[dns]", {"max_ttl", "allow_internal_answers"}))
      return make_error(*e);
    if (auto e = read_bool(ctx, *table, "allow_internal_answers", "dns",
                           result.dns.allow_internal_answers))
      return make_error(*e);
    if (auto e = read_ttl(ctx, *table, "max_ttl", "dns", result.dns.max_ttl)) return make_error(*e);
  }
  if (const toml::node* node = root.get("classify")) {
    const auto* table = node->as_table();
    if (table == nullptr) return make_error(ctx.where(*node) + "[classify] must be a table");
    if (auto e = check_keys(ctx, *table, "[classify]", {"multipath_by_default"}))
      return make_error(*e);
    if (auto e =
            read_bool(ctx, *table, "multipath_by_default", "classify", result.multipath_by_default))
      return make_error(*e);
  }
  if (const toml::node* node = root.get("control")) {
    const auto* table = node->as_table();
    if (table == nullptr) return make_error(ctx.where(*node) + "[control] must be a table");
    if (auto e = check_keys(ctx, *table, "[control]", {"socket"})) return make_error(*e);
    if (auto e = read_string(ctx, *table, "socket", "control", result.control_socket))
      return make_error(*e);
    if (result.control_socket.empty() || result.control_socket.front() != '/' ||
        result.control_socket.size() > 107) {
      return make_error(
          fmt::format("{}control.socket '{}' must be an absolute path (at most 107 "
                      "characters)",
                      ctx.where(*table->get("socket")), result.control_socket));
    }
  }
  if (const toml::node* node = root.get("access")) {
    const auto* table = node->as_table();
    if (table == nullptr) return make_error(ctx.where(*node) + "[access] must be a table");
    if (auto e = check_keys(ctx, *table, "[access]", {"group", "everyone"})) return make_error(*e);
    if (auto e = read_string(ctx, *table, "group", "access", result.access.group))
      return make_error(*e);
    const auto& group = result.access.group;
    if (group.size() > 32 || !std::all_of(group.begin(), group.end(), [](char c) {
          return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '-' || c == '.';
        })) {
      return make_error(fmt::format("{}access.group '{}' is not a group name",
                                    ctx.where(*table->get("group")), group));
    }
    if (auto e = read_bool(ctx, *table, "everyone", "access", result.access.everyone))
      return make_error(*e);
  }
  if (const toml::node* node = root.get("discovery")) {
    const auto* table = node->as_table();
    if (table == nullptr) return make_error(ctx.where(*node) + "[discovery] must be a table");
    if (auto e = check_keys(ctx, *table, "[discovery]", {"root"})) return make_error(*e);
    if (auto e = read_string(ctx, *table, "root", "discovery", result.discovery.root))
      return make_error(*e);
    if (result.discovery.root.empty() || result.discovery.root.front() != '/') {
      return make_error(fmt::format("{}discovery.root '{}' must be an absolute path",
                                    ctx.where(*table->get("root")), result.discovery.root));
    }
  }
  if (auto e = read_array_of_tables(ctx, root, "app", result.apps, read_app)) return make_error(*e);
  {
    std::set<std::string> app_names;
    for (const auto& app : result.apps) {
      if (!app_names.insert(app.name).second)
        return make_error(fmt::format("{}: app name '{}' is used twice", source_name, app.name));
    }
  }
  if (auto e = read_array_of_tables(ctx, root, "feature", result.features, read_feature))
    return make_error(*e);
  if (auto e = read_array_of_tables(ctx, root, "http_dns", result.http_dns, read_http_dns))
    return make_error(*e);
  {
    // A [[class]] of a built-in class's name replaces it.
    std::vector<qos_class_config> classes;
    if (auto e = read_array_of_tables(ctx, root, "class", classes, read_class))
      return make_error(*e);
    std::set<std::string> seen;
    for (auto& c : classes) {
      if (!seen.insert(c.name).second)
        return make_error(fmt::format("{}: class '{}' is defined twice", source_name, c.name));
      auto same = std::find_if(result.classes.begin(), result.classes.end(),
                               [&](const qos_class_config& b) { return b.name == c.name; });
      if (same != result.classes.end()) {
        *same = std::move(c);
      } else {
        result.classes.push_back(std::move(c));
      }
    }
  }
  auto class_exists = [&](const std::string& name) {
    return std::any_of(result.classes.begin(), result.classes.end(),
                       [&](const qos_class_config& c) { return c.name == name; });
  };
  auto class_names = [&] {
    std::string names;
    for (const auto& c : result.classes) names += (names.empty() ? "" : ", ") + c.name;
    return names;
  };
  for (const auto& section : {"selector", "monitor", "budget", "mptcp"}) {
    const toml::node* node = root.get(section);
    if (node != nullptr && node->as_table() == nullptr)
      return make_error(fmt::format("{}[{}] must be a table", ctx.where(*node), section));
  }
  if (const auto* table = root["selector"].as_table()) {
    if (auto e = read_selector(ctx, *table, result.selector)) return make_error(*e);
    if (!class_exists(result.selector.default_class)) {
      return make_error(fmt::format("{}selector.default_class '{}' is not a class (classes: {})",
                                    ctx.where(*table), result.selector.default_class,
                                    class_names()));
    }
  }
  if (const auto* table = root["monitor"].as_table()) {
    if (auto e = read_monitor(ctx, *table, result.monitor)) return make_error(*e);
  }
  if (const toml::node* node = root.get("metrics")) {
    const auto* table = node->as_table();
    if (table == nullptr) return make_error(ctx.where(*node) + "[metrics] must be a table");
    if (auto e = check_keys(ctx, *table, "[metrics]", {"listen"})) return make_error(*e);
    const toml::node* listen = table->get("listen");
    if (listen != nullptr && listen->value<std::string>() == std::string()) {
      result.metrics.enabled = false;  // listen = "": no metrics
    } else if (auto e = read_listen(ctx, *table, "metrics", "127.0.0.1:9464",
                                    result.metrics.listen_address, result.metrics.listen_port)) {
      return make_error(*e);
    }
  }
  if (const auto* table = root["budget"].as_table()) {
    if (auto e = check_keys(ctx, *table, "[budget]", {"cellular_monthly"})) return make_error(*e);
    if (auto e = read_unit<std::uint64_t>(
            ctx, *table, "cellular_monthly", "budget", parse_size_bytes,
            [&](std::uint64_t v, const toml::node&) -> std::optional<std::string> {
              result.budget.cellular_monthly_bytes = v;
              return std::nullopt;
            }))
      return make_error(*e);
  }
  if (const auto* table = root["mptcp"].as_table()) {
    if (auto e = check_keys(ctx, *table, "[mptcp]", {"enabled"})) return make_error(*e);
    if (auto e = read_bool(ctx, *table, "enabled", "mptcp", result.mptcp.enabled))
      return make_error(*e);
  }
  for (const auto& app : result.apps) {
    if (!app.qos_class.empty() && !class_exists(app.qos_class)) {
      return make_error(fmt::format("{}: app '{}': class '{}' is not a class (classes: {})",
                                    source_name, app.name, app.qos_class, class_names()));
    }
  }
  if (const toml::node* node = root.get("proxy")) {
    const auto* table = node->as_table();
    if (table == nullptr) return make_error(ctx.where(*node) + "[proxy] must be a table");
    if (auto e = read_proxy(ctx, *table, result.proxy)) return make_error(*e);
  }
  if (const toml::node* node = root.get("scheduler")) {
    const auto* table = node->as_table();
    if (table == nullptr) return make_error(ctx.where(*node) + "[scheduler] must be a table");
    if (auto e = read_scheduler(ctx, *table, result.scheduler)) return make_error(*e);
  }
  if (const toml::node* node = root.get("log")) {
    const auto* table = node->as_table();
    if (table == nullptr) return make_error(ctx.where(*node) + "[log] must be a table");
    if (auto e = check_keys(ctx, *table, "[log]", {"level"})) return make_error(*e);
    if (auto e = read_string(ctx, *table, "level", "log", result.log_level)) return make_error(*e);
    static const std::set<std::string> levels{"trace", "debug", "info", "warn", "error", "off"};
    if (!levels.contains(result.log_level)) {
      return make_error(
          fmt::format("{}log.level '{}' is unknown (trace, debug, info, warn, error, off)",
                      ctx.where(*table->get("level")), result.log_level));
    }
  }
  // No [[path]]: fleetyd and fleety get discover the uplinks (path/uplinks.hpp).
  const toml::node* paths = root.get("path");
  if (paths == nullptr) return result;
  const auto* path_array = paths->as_array();
  if (path_array == nullptr) {
    return make_error(ctx.where(*paths) + "path must be an array of tables: write [[path]]");
  }
  std::set<std::string> names;
  std::set<std::string> interfaces;
  for (const auto& entry : *path_array) {
    const auto* table = entry.as_table();
    if (table == nullptr) return make_error(ctx.where(entry) + "each [[path]] must be a table");
    path_config path;
    if (auto e = read_path(ctx, *table, path)) return make_error(*e);
    if (!names.insert(path.name).second) {
      return make_error(fmt::format("{}path name '{}' is used twice", ctx.where(entry), path.name));
    }
    if (!interfaces.insert(path.interface).second) {
      return make_error(
          fmt::format("{}interface '{}' is used by two paths", ctx.where(entry), path.interface));
    }
    result.paths.push_back(std::move(path));
  }
  // Preference order: cheapest first; the file's order breaks ties.
  std::stable_sort(result.paths.begin(), result.paths.end(),
                   [](const path_config& a, const path_config& b) { return a.cost < b.cost; });
  return result;
}

expected<config> load_config(const std::string& path) {
  std::ifstream file(path);
  if (!file) return make_error(fmt::format("{}: cannot open the config file", path));
  std::ostringstream text;
  text << file.rdbuf();
  if (file.bad()) return make_error(fmt::format("{}: cannot read the config file", path));
  return parse_config(text.str(), path);
}

}  // namespace fleety::core
