#include "core/config.hpp"

#include <gtest/gtest.h>

namespace fleety::core {
namespace {

TEST(Config, MinimalFileFromTheReadmeWorksAsItIs) {
  auto config = load_config(FLEETY_SOURCE_DIR "/docs/examples/minimal.toml");
  ASSERT_TRUE(config) << config.error();
  EXPECT_EQ(config->proxy.listen_address, "127.0.0.1");
  EXPECT_EQ(config->proxy.listen_port, 3128);
  ASSERT_EQ(config->paths.size(), 2U);
  EXPECT_EQ(config->paths[0].name, "wifi");
  EXPECT_EQ(config->paths[0].cost, 0);
  EXPECT_EQ(config->paths[1].kind, path_kind::cellular);
  EXPECT_EQ(config->paths[1].cost, 10);
  EXPECT_EQ(config->scheduler.mode, scheduler_mode::cost);
  EXPECT_EQ(config->scheduler.tolerance, std::chrono::seconds(1));
  // Split when it pays (issue 17): no fixed threshold unless the config sets one.
  EXPECT_FALSE(config->scheduler.min_split_bytes.has_value());
}

TEST(Config, MinSplitSizeIsAutoOrASize) {
  const std::string paths = "[[path]]\nname = \"wifi\"\ninterface = \"wlan0\"\nkind = \"wifi\"\n";
  auto automatic = parse_config(paths + "[scheduler]\nmin_split_size = \"auto\"\n", "a.toml");
  ASSERT_TRUE(automatic) << automatic.error();
  EXPECT_FALSE(automatic->scheduler.min_split_bytes.has_value());
  auto fixed = parse_config(paths + "[scheduler]\nmin_split_size = \"512KiB\"\n", "f.toml");
  ASSERT_TRUE(fixed) << fixed.error();
  EXPECT_EQ(fixed->scheduler.min_split_bytes.value_or(0), 512U * 1024);
  auto zero = parse_config(paths + "[scheduler]\nmin_split_size = \"0\"\n", "z.toml");
  ASSERT_TRUE(zero) << zero.error();
  EXPECT_EQ(zero->scheduler.min_split_bytes.value_or(1), 0U);
  auto bad = parse_config(paths + "[scheduler]\nmin_split_size = \"big\"\n", "b.toml");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().find("b.toml:6"), std::string::npos) << bad.error();
  EXPECT_NE(bad.error().find("min_split_size"), std::string::npos) << bad.error();
}

TEST(Config, CellularListedFirstStillComesAfterWifi) {
  auto config = parse_config(R"(
[[path]]
name = "cell"
interface = "rmnet0"
kind = "cellular"
[[path]]
name = "wifi"
interface = "wlan0"
kind = "wifi"
)",
                             "f.toml");
  ASSERT_TRUE(config) << config.error();
  EXPECT_EQ(config->paths[0].name, "wifi");
  EXPECT_EQ(config->paths[1].name, "cell");
}

TEST(Config, EverySettingIsRead) {
  auto config = parse_config(R"(
[proxy]
listen = "[::1]:8080"
connect_timeout = "2s"
io_timeout = "10s"
max_connections = 64
connections_per_host = 4
idle_connections = 0
idle_connection_timeout = "5s"
[scheduler]
mode = "aggregate"
tolerance = "500ms"
range_time = "200ms"
mismatch_cooldown = "1min"
memory_per_session = "64MiB"
memory_budget = "1GiB"
min_split_size = "1MB"
overlap = 128
default_rate = "5mbit"
default_rtt = "80ms"
[log]
level = "debug"
[[path]]
name = "wifi"
interface = "wlan0"
kind = "wifi"
cost = 3
dns = ["198.18.0.53", "198.18.0.54:5353"]
rate = "20mbit"
rtt = "50ms"
)",
                             "f.toml");
  ASSERT_TRUE(config) << config.error();
  EXPECT_EQ(config->proxy.listen_address, "::1");
  EXPECT_EQ(config->proxy.listen_port, 8080);
  EXPECT_EQ(config->proxy.connect_timeout, std::chrono::seconds(2));
  EXPECT_EQ(config->proxy.max_connections, 64U);
  EXPECT_EQ(config->proxy.connections_per_host, 4U);
  EXPECT_EQ(config->proxy.idle_connections, 0U);
  EXPECT_EQ(config->proxy.idle_connection_timeout, std::chrono::seconds(5));
  EXPECT_EQ(config->scheduler.mode, scheduler_mode::aggregate);
  EXPECT_EQ(config->scheduler.tolerance, std::chrono::milliseconds(500));
  EXPECT_EQ(config->scheduler.range_time, std::chrono::milliseconds(200));
  EXPECT_EQ(config->scheduler.mismatch_cooldown, std::chrono::minutes(1));
  EXPECT_EQ(config->scheduler.memory_per_session_bytes, 64U << 20);
  EXPECT_EQ(config->scheduler.memory_budget_bytes, 1ULL << 30);
  EXPECT_EQ(config->scheduler.min_split_bytes.value_or(0), 1'000'000U);
  EXPECT_EQ(config->scheduler.overlap_bytes, 128U);
  EXPECT_EQ(config->scheduler.default_rate_bps, 5'000'000U);
  EXPECT_EQ(config->log_level, "debug");
  EXPECT_EQ(config->paths[0].cost, 3);
  EXPECT_EQ(config->paths[0].dns_servers.size(), 2U);
  EXPECT_EQ(config->paths[0].prior_rate_bps, 20'000'000U);
  EXPECT_EQ(config->paths[0].prior_rtt, std::chrono::milliseconds(50));
}

struct bad_case {
  const char* name;  // test name suffix
  const char* text;
  const char* expected;  // a substring of the one-line error
};

class ConfigError : public testing::TestWithParam<bad_case> {};

TEST_P(ConfigError, NamesFileLineAndProblem) {
  auto config = parse_config(GetParam().text, "fleety.toml");
  ASSERT_FALSE(config);
  EXPECT_NE(config.error().find(GetParam().expected), std::string::npos) << config.error();
  EXPECT_EQ(config.error().find('\n'), std::string::npos) << "one line: " << config.error();
  EXPECT_EQ(config.error().rfind("fleety.toml", 0), 0U) << config.error();
}

constexpr const char* one_path =
    "[[path]]\nname = \"wifi\"\ninterface = \"wlan0\"\nkind = \"wifi\"\n";

INSTANTIATE_TEST_SUITE_P(
    BadConfigs, ConfigError,
    testing::Values(
        bad_case{"PathWithoutInterface", "[[path]]\nname = \"wifi\"\nkind = \"wifi\"\n",
                 "needs 'interface'"},
        bad_case{"UnknownKind", "[[path]]\nname = \"w\"\ninterface = \"wlan0\"\nkind = \"wlan\"\n",
                 "fleety.toml:4: path 'w': unknown kind 'wlan'"},
        bad_case{"ListenWithoutPort", "[proxy]\nlisten = \"127.0.0.1\"\n",
                 "fleety.toml:2: proxy.listen '127.0.0.1' must be ADDRESS:PORT"},
        bad_case{"PortOutOfRange", "[proxy]\nlisten = \"127.0.0.1:99999\"\n",
                 "is not a port number"},
        bad_case{"MisspelledKey", "[proxy]\nlisen = \"127.0.0.1:1\"\n",
                 "fleety.toml:2: unknown key 'lisen' in [proxy]"},
        bad_case{"UnknownMode", "[scheduler]\nmode = \"fast\"\n",
                 "scheduler.mode 'fast' is unknown"},
        bad_case{"DurationWithoutUnit", "[scheduler]\ntolerance = \"1\"\n", "not a duration"},
        bad_case{"MemoryTooSmall", "[scheduler]\nmemory_per_session = \"1KiB\"\n",
                 "memory_per_session must be from"},
        bad_case{"BudgetTooSmall", "[scheduler]\nmemory_budget = \"1MiB\"\n",
                 "memory_budget must be from 4.0 MiB"},
        bad_case{"DuplicateName",
                 "[[path]]\nname = \"a\"\ninterface = \"wlan0\"\nkind = \"wifi\"\n"
                 "[[path]]\nname = \"a\"\ninterface = \"rmnet0\"\nkind = \"cellular\"\n",
                 "path name 'a' is used twice"},
        bad_case{"DuplicateInterface",
                 "[[path]]\nname = \"a\"\ninterface = \"wlan0\"\nkind = \"wifi\"\n"
                 "[[path]]\nname = \"b\"\ninterface = \"wlan0\"\nkind = \"cellular\"\n",
                 "interface 'wlan0' is used by two paths"},
        bad_case{"BadInterfaceName",
                 "[[path]]\nname = \"a\"\ninterface = \"a/b\"\nkind = \"wifi\"\n",
                 "not a valid interface name"},
        bad_case{"BadRate",
                 "[[path]]\nname = \"a\"\ninterface = \"w\"\nkind = \"wifi\"\nrate = \"fast\"\n",
                 "fleety.toml:5: path.rate"},
        bad_case{"SyntaxError", "[proxy\n", "fleety.toml:1:"},
        bad_case{"ConnectPortZero", "[proxy]\nconnect_ports = [443, 0]\n",
                 "fleety.toml:2: proxy.connect_ports: each must be a port from 1 to 65535"},
        bad_case{"ConnectPortsNotAList", "[proxy]\nconnect_ports = 443\n",
                 "proxy.connect_ports must be a list of ports"},
        bad_case{"AccessGroupWithSpace", "[access]\ngroup = \"wheel users\"\n",
                 "fleety.toml:2: access.group 'wheel users' is not a group name"},
        bad_case{"AccessUnknownKey", "[access]\nusers = [\"bob\"]\n",
                 "unknown key 'users' in [access]"},
        bad_case{"UnknownLogLevel", "[log]\nlevel = \"loud\"\n", "log.level 'loud' is unknown"}),
    [](const testing::TestParamInfo<bad_case>& param_info) {
      return std::string(param_info.param.name);
    });

TEST(Config, NoPathMeansTheUplinksAreDiscovered) {
  auto config = parse_config("[proxy]\nlisten = \"127.0.0.1:3128\"\n", "d.toml");
  ASSERT_TRUE(config) << config.error();
  EXPECT_TRUE(config->paths.empty());
  auto empty = parse_config("", "e.toml");
  ASSERT_TRUE(empty) << empty.error();
}

TEST(Config, AccessAndConnectPortsHaveSafeDefaults) {
  auto defaults = parse_config(one_path, "d.toml");
  ASSERT_TRUE(defaults) << defaults.error();
  EXPECT_EQ(defaults->proxy.connect_ports, std::vector<std::uint16_t>{443});
  EXPECT_EQ(defaults->access.group, "fleety");
  EXPECT_FALSE(defaults->access.everyone);
  auto set = parse_config(std::string(one_path) +
                              "[proxy]\nconnect_ports = [443, 8443]\n"
                              "[access]\ngroup = \"netusers\"\neveryone = true\n",
                          "s.toml");
  ASSERT_TRUE(set) << set.error();
  EXPECT_EQ(set->proxy.connect_ports, (std::vector<std::uint16_t>{443, 8443}));
  EXPECT_EQ(set->access.group, "netusers");
  EXPECT_TRUE(set->access.everyone);
}

TEST(Config, MissingFileIsNamed) {
  auto config = load_config("/nonexistent/fleety.toml");
  ASSERT_FALSE(config);
  EXPECT_EQ(config.error(), "/nonexistent/fleety.toml: cannot open the config file");
}

TEST(Config, InterceptAndApps) {
  auto config = parse_config(R"(
[intercept]
enabled = true
port = 4000
dns_port = 4053
mark = 0x1234
peek_timeout = "300ms"
[[app]]
name = "browser"
cgroup = "/user.slice/browser.scope"
[[app]]
name = "player"
uid = 10123
enabled = false
[[path]]
name = "wifi"
interface = "wlan0"
kind = "wifi"
)",
                             "f.toml");
  ASSERT_TRUE(config) << config.error();
  EXPECT_TRUE(config->intercept.enabled);
  EXPECT_EQ(config->intercept.tcp_port, 4000);
  EXPECT_EQ(config->intercept.dns_port, 4053);
  EXPECT_EQ(config->intercept.mark, 0x1234U);
  EXPECT_EQ(config->intercept.peek_timeout, std::chrono::milliseconds(300));
  ASSERT_EQ(config->apps.size(), 2U);
  EXPECT_EQ(config->apps[0].cgroup, "user.slice/browser.scope");
  EXPECT_FALSE(config->apps[0].uid);
  EXPECT_EQ(config->apps[1].uid, 10123U);
  EXPECT_FALSE(config->apps[1].enabled);
}

TEST(Config, BadAppsAreRefusedWithTheLine) {
  const std::string path = "[[path]]\nname = \"wifi\"\ninterface = \"wlan0\"\nkind = \"wifi\"\n";
  auto config = parse_config("[[app]]\nname = \"../etc\"\n" + path, "f.toml");
  ASSERT_FALSE(config);
  EXPECT_EQ(config.error().rfind("f.toml:2: app name '../etc'", 0), 0U) << config.error();
  config = parse_config("[[app]]\nname = \"a\"\n[[app]]\nname = \"a\"\n" + path, "f.toml");
  ASSERT_FALSE(config);
  EXPECT_EQ(config.error(), "f.toml: app name 'a' is used twice");
  config = parse_config("[[app]]\nname = \"a\"\nuid = -1\n" + path, "f.toml");
  ASSERT_FALSE(config);
  EXPECT_EQ(config.error(), "f.toml:3: app.uid must be a whole number from 0 to 4294967294");
  config = parse_config("[intercept]\nport = 70000\n" + path, "f.toml");
  ASSERT_FALSE(config);
  EXPECT_EQ(config.error(), "f.toml:2: intercept.port must be a whole number from 1 to 65535");
  config = parse_config("[proxy]\nconnections_per_host = 0\n" + path, "f.toml");
  ASSERT_FALSE(config);
  EXPECT_EQ(config.error(),
            "f.toml:2: proxy.connections_per_host must be a whole number from 1 to 64");
  config = parse_config("[proxy]\nidle_connections = 2000\n" + path, "f.toml");
  ASSERT_FALSE(config);
  EXPECT_EQ(config.error(),
            "f.toml:2: proxy.idle_connections must be a whole number from 0 to 1024");
}

TEST(Config, ControlSocket) {
  const std::string path = "[[path]]\nname = \"wifi\"\ninterface = \"wlan0\"\nkind = \"wifi\"\n";
  auto config = parse_config(path, "f.toml");
  ASSERT_TRUE(config) << config.error();
  EXPECT_EQ(config->control_socket, "/run/fleety/control.sock");
  config = parse_config("[control]\nsocket = \"/tmp/x.sock\"\n" + path, "f.toml");
  ASSERT_TRUE(config) << config.error();
  EXPECT_EQ(config->control_socket, "/tmp/x.sock");
  config = parse_config("[control]\nsocket = \"relative.sock\"\n" + path, "f.toml");
  ASSERT_FALSE(config);
  EXPECT_EQ(
      config.error().rfind("f.toml:2: control.socket 'relative.sock' must be an absolute path", 0),
      0U)
      << config.error();
}

TEST(Config, HttpDnsEndpoints) {
  const std::string path = "[[path]]\nname = \"wifi\"\ninterface = \"wlan0\"\nkind = \"wifi\"\n";
  auto config = parse_config(R"(
[[http_dns]]
name = "video"
hosts = ["203.0.113.1", "*.httpdns.example"]
path = "/d"
name_parameters = ["dn"]
default_ttl = "5m"
max_reply_size = "16KiB"

[[http_dns]]
name = "defaults"
hosts = "resolve.example"
)" + path,
                             "f.toml");
  ASSERT_TRUE(config) << config.error();
  ASSERT_EQ(config->http_dns.size(), 2U);
  const auto& video = config->http_dns[0];
  EXPECT_EQ(video.hosts, (std::vector<std::string>{"203.0.113.1", "*.httpdns.example"}));
  EXPECT_EQ(video.path, "/d");
  EXPECT_EQ(video.name_parameters, std::vector<std::string>{"dn"});
  EXPECT_EQ(video.default_ttl, std::chrono::minutes(5));
  EXPECT_EQ(video.max_reply_bytes, 16U * 1024);
  const auto& defaults = config->http_dns[1];
  EXPECT_EQ(defaults.path, "/");
  EXPECT_EQ(defaults.name_parameters.size(), 4U);
  EXPECT_EQ(defaults.default_ttl, std::chrono::seconds(60));
  EXPECT_EQ(defaults.max_reply_bytes, 64U * 1024);

  const std::pair<const char*, const char*> bad[] = {
      {"[[http_dns]]\nhosts = [\"a.example\"]\n", "f.toml:1: [[http_dns]] needs 'name'"},
      {"[[http_dns]]\nname = \"x\"\n", "f.toml:1: http_dns 'x' needs 'hosts'"},
      {"[[http_dns]]\nname = \"x\"\nhosts = [\"a\"]\npath = \"d?x=1\"\n",
       "f.toml:4: http_dns 'x': path 'd?x=1' must start with '/' and have no query"},
      {"[[http_dns]]\nname = \"x\"\nhosts = [\"a\"]\ndefault_ttl = \"0s\"\n",
       "f.toml:4: http_dns.default_ttl must be from 1s to 24h"},
      {"[[http_dns]]\nname = \"x\"\nhosts = [\"a\"]\nmax_reply_size = \"1GiB\"\n",
       "f.toml:4: http_dns.max_reply_size must be from 512B to 16MiB"},
      {"[[http_dns]]\nname = \"x\"\nhosts = [\"a\"]\nformat = \"json\"\n",
       "f.toml:4: unknown key 'format' in [[http_dns]]"},
  };
  for (const auto& [text, expected] : bad) {
    auto refused = parse_config(text + path, "f.toml");
    ASSERT_FALSE(refused) << text;
    EXPECT_EQ(refused.error().rfind(expected, 0), 0U) << refused.error();
  }
}

TEST(Config, QosClassesSelectorMonitorBudget) {
  const std::string path =
      "[[path]]\nname = \"cell\"\ninterface = \"rmnet0\"\nkind = \"cellular\"\n"
      "probe = \"[2001:db8::1]:443\"\n";
  auto config = parse_config(R"(
[[class]]
name = "gaming"
max_rtt = "80ms"
max_loss = 0.01

[[class]]
name = "voip"
max_jitter = "20ms"
min_throughput = "100kbit"

[[app]]
name = "game"
class = "gaming"

[selector]
default_class = "messaging"
reset_after = "2s"
hysteresis = "5s"

[monitor]
interval = "100ms"
probe_interval = "2s"
cellular_probe_budget = "512B"
history = ""
history_retention = "1h"

[budget]
cellular_monthly = "10GiB"
)" + path,
                             "f.toml");
  ASSERT_TRUE(config) << config.error();
  auto find = [&](const std::string& name) {
    return std::find_if(config->classes.begin(), config->classes.end(),
                        [&](const qos_class_config& c) { return c.name == name; });
  };
  // The file's gaming replaces the built-in one whole; voip is added; the others stay.
  ASSERT_NE(find("gaming"), config->classes.end());
  EXPECT_EQ(find("gaming")->max_rtt, std::chrono::milliseconds(80));
  EXPECT_EQ(find("gaming")->max_jitter, std::nullopt);
  EXPECT_EQ(find("gaming")->max_loss, 0.01);
  EXPECT_EQ(find("voip")->min_throughput_bps, 100'000U);
  EXPECT_EQ(find("streaming")->min_throughput_bps, 5'000'000U);
  EXPECT_EQ(config->classes.size(), builtin_qos_classes().size() + 1);
  EXPECT_EQ(config->apps[0].qos_class, "gaming");
  EXPECT_EQ(config->selector.default_class, "messaging");
  EXPECT_EQ(config->selector.reset_after, std::chrono::seconds(2));
  EXPECT_EQ(config->selector.hysteresis, std::chrono::seconds(5));
  EXPECT_EQ(config->monitor.interval, std::chrono::milliseconds(100));
  EXPECT_EQ(config->monitor.probe_interval, std::chrono::seconds(2));
  EXPECT_EQ(config->monitor.cellular_probe_budget_Bps, 512U);
  EXPECT_EQ(config->monitor.history_file, "");
  EXPECT_EQ(config->monitor.history_retention, std::chrono::hours(1));
  EXPECT_EQ(config->budget.cellular_monthly_bytes, 10ULL << 30);
  EXPECT_EQ(config->paths[0].probe, "[2001:db8::1]:443");

  const std::pair<std::string, const char*> bad[] = {
      {"[[app]]\nname = \"a\"\nclass = \"fast\"\n",
       "f.toml: app 'a': class 'fast' is not a class (classes: gaming, streaming"},
      {"[selector]\ndefault_class = \"x\"\n",
       "f.toml:1: selector.default_class 'x' is not a class"},
      {"[selector]\nreset_after = \"1ms\"\n",
       "f.toml:2: selector.reset_after must be from 200ms to 1h"},
      {"[[class]]\nname = \"g\"\nmax_loss = 2\n",
       "f.toml:3: class 'g': max_loss must be a fraction"},
      {"[[class]]\nname = \"g\"\n[[class]]\nname = \"g\"\n", "f.toml: class 'g' is defined twice"},
      {"[monitor]\ninterval = \"1ms\"\n", "f.toml:2: monitor.interval must be from 50 ms to 60 s"},
      {"[budget]\ncellular = \"1GiB\"\n", "f.toml:2: unknown key 'cellular' in [budget]"},
      {"[[path]]\nname = \"w\"\ninterface = \"wlan0\"\nkind = \"wifi\"\nprobe = "
       "\"2001:db8::1:443\"\n",
       "f.toml:5: path 'w': probe '2001:db8::1:443' must be ADDRESS:PORT"},
  };
  for (const auto& [text, expected] : bad) {
    auto refused = parse_config(text + path, "f.toml");
    ASSERT_FALSE(refused) << text;
    EXPECT_EQ(refused.error().rfind(expected, 0), 0U) << refused.error();
  }
}

// Issue 6, item 8: [mptcp] is off unless asked for; cellular paths are MPTCP backups unless
// a path says otherwise.
TEST(Config, MptcpOffByDefaultCellularIsBackup) {
  const std::string paths = R"(
[[path]]
name = "wifi"
interface = "wlan0"
kind = "wifi"

[[path]]
name = "cell"
interface = "rmnet0"
kind = "cellular"
)";
  auto plain = parse_config(paths, "f.toml");
  ASSERT_TRUE(plain) << plain.error();
  EXPECT_FALSE(plain->mptcp.enabled);
  EXPECT_FALSE(plain->paths[0].mptcp_backup);
  EXPECT_TRUE(plain->paths[1].mptcp_backup);

  auto on = parse_config("[mptcp]\nenabled = true\n" + paths, "f.toml");
  ASSERT_TRUE(on) << on.error();
  EXPECT_TRUE(on->mptcp.enabled);

  auto both_active = parse_config(
      R"([[path]]
name = "cell"
interface = "rmnet0"
kind = "cellular"
mptcp_backup = false

[[path]]
name = "wired"
interface = "eth0"
kind = "wired"
mptcp_backup = true
)",
      "f.toml");
  ASSERT_TRUE(both_active) << both_active.error();
  EXPECT_EQ(both_active->paths[0].name, "wired");  // cost order
  EXPECT_TRUE(both_active->paths[0].mptcp_backup);
  EXPECT_FALSE(both_active->paths[1].mptcp_backup);

  const std::pair<std::string, const char*> bad[] = {
      {"[mptcp]\nenabled = \"yes\"\n", "f.toml:2: mptcp.enabled must be true or false"},
      {"[mptcp]\nenable = true\n", "f.toml:2: unknown key 'enable' in [mptcp] (known: enabled)"},
      {"mptcp = true\n", "f.toml:1: [mptcp] must be a table"},
      {"[[path]]\nname = \"w\"\ninterface = \"wlan0\"\nkind = \"wifi\"\nmptcp_backup = 1\n",
       "f.toml:5: path 'w': mptcp_backup must be true or false"},
  };
  for (const auto& [text, expected] : bad) {
    auto refused = parse_config(text + paths, "f.toml");
    ASSERT_FALSE(refused) << text;
    EXPECT_EQ(refused.error().rfind(expected, 0), 0U) << refused.error();
  }
}

}  // namespace
}  // namespace fleety::core

namespace fleety::core {
namespace {

TEST(DnsConfig, MaxTtlAndInternalAnswers) {
  const std::string paths = R"(
[[path]]
name = "wifi"
interface = "wlan0"
kind = "wifi"
)";
  auto config = parse_config(paths, "f.toml");
  ASSERT_TRUE(config) << config.error();
  EXPECT_EQ(config->dns.max_ttl, std::chrono::seconds(3600));
  EXPECT_FALSE(config->dns.allow_internal_answers);
  config =
      parse_config("[dns]\nmax_ttl = \"5m\"\nallow_internal_answers = true\n" + paths, "f.toml");
  ASSERT_TRUE(config) << config.error();
  EXPECT_EQ(config->dns.max_ttl, std::chrono::seconds(300));
  EXPECT_TRUE(config->dns.allow_internal_answers);
  config = parse_config("[dns]\nmax_ttl = \"25h\"\n" + paths, "f.toml");
  ASSERT_FALSE(config);
  EXPECT_NE(config.error().find("dns.max_ttl must be from 1s to 24h"), std::string::npos)
      << config.error();
  config = parse_config("[dns]\nttl = 5\n" + paths, "f.toml");
  ASSERT_FALSE(config);
}

}  // namespace
}  // namespace fleety::core
