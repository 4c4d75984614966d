#include "control/status_model.hpp"

#include <gtest/gtest.h>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <cmath>

namespace fleety::control {
namespace {

namespace json = boost::json;
using std::chrono::microseconds;

TEST(StatusJson, PathsWithTheirUnitsAndUnknownsAsNull) {
  status_model s;
  path_status wifi{"wifi",
                   "wlan0",
                   "wifi",
                   true,
                   microseconds(58'209),
                   microseconds(1'500),
                   20e6,
                   0.01,
                   -61.0,
                   19.1e6,
                   7,
                   1000,
                   3,
                   "the name wlan0",
                   {"192.168.1.1"},
                   "systemd-resolved (/run/systemd/resolve/netif/3)",
                   false,
                   "to 198.18.10.1:80 every 1000 ms while idle (a node it fetched from)"};
  path_status cell;
  cell.name = "cell";
  cell.interface = "rmnet0";
  cell.kind = "cellular";
  s.paths = {wifi, cell};
  const auto j = status_json(s);
  const auto& paths = j.at("paths").as_array();
  ASSERT_EQ(paths.size(), 2U);
  const auto& w = paths[0].as_object();
  // The keys in the order `fleety status --json` has always printed them.
  const char* keys[] = {"name",      "interface",       "kind",     "up",         "rtt_ms",
                        "jitter_ms", "throughput_mbps", "loss",     "signal_dbm", "capacity_mbps",
                        "probes",    "bytes_received",  "requests", "found",      "dns",
                        "probe"};
  ASSERT_EQ(w.size(), std::size(keys));
  std::size_t k = 0;
  for (const auto& entry : w) EXPECT_EQ(entry.key(), keys[k++]);
  EXPECT_EQ(w.at("name"), "wifi");
  EXPECT_EQ(w.at("kind"), "wifi");
  EXPECT_EQ(w.at("up"), true);
  EXPECT_DOUBLE_EQ(w.at("rtt_ms").as_double(), 58.209);
  EXPECT_DOUBLE_EQ(w.at("jitter_ms").as_double(), 1.5);
  EXPECT_DOUBLE_EQ(w.at("throughput_mbps").as_double(), 20.0);
  EXPECT_DOUBLE_EQ(w.at("loss").as_double(), 0.01);
  EXPECT_DOUBLE_EQ(w.at("signal_dbm").as_double(), -61.0);
  EXPECT_DOUBLE_EQ(w.at("capacity_mbps").as_double(), 19.1);
  // Counters are unsigned integers, as before.
  EXPECT_TRUE(w.at("probes").is_uint64());
  EXPECT_EQ(w.at("probes").as_uint64(), 7U);
  EXPECT_EQ(w.at("bytes_received").as_uint64(), 1000U);
  EXPECT_EQ(w.at("requests").as_uint64(), 3U);
  EXPECT_EQ(w.at("found"), "the name wlan0");  // discovered; a configured path has null
  EXPECT_TRUE(paths[1].as_object().at("found").is_null());
  // Its link's resolvers and where they came from; where its idle probes go.
  const auto& dns = w.at("dns").as_object();
  EXPECT_EQ(dns.at("servers").as_array(), json::array({"192.168.1.1"}));
  EXPECT_EQ(dns.at("found"), "systemd-resolved (/run/systemd/resolve/netif/3)");
  EXPECT_EQ(dns.at("fallback"), false);
  EXPECT_EQ(w.at("probe"), "to 198.18.10.1:80 every 1000 ms while idle (a node it fetched from)");
  EXPECT_TRUE(paths[1].as_object().at("probe").is_null());
  EXPECT_TRUE(paths[1].as_object().at("dns").as_object().at("found").is_null());
  const auto& c = paths[1].as_object();
  EXPECT_EQ(c.at("up"), false);
  for (const char* unknown : {"rtt_ms", "jitter_ms", "throughput_mbps", "loss", "signal_dbm"})
    EXPECT_TRUE(c.at(unknown).is_null()) << unknown;
  EXPECT_TRUE(c.at("capacity_mbps").is_double());
}

TEST(StatusJson, FlowsDownloadsCountersAndDns) {
  status_model s;
  s.flows = {{/*id=*/12, "game", "gaming", "wifi", "TLS to a.test (198.18.10.1:443)", 2.5}};
  s.downloads = {{/*session=*/4,
                  "player",
                  "http://cdn.test/10MB",
                  10'000'000,
                  4'000'000,
                  1.25,
                  {{"wifi", 6'000'000, 8e6, false}, {"cell", 4'000'000, 0, true}}}};
  s.cellular_month_bytes = 123;
  s.flow_resets = 2;
  s.app_bytes = {{"game", "wifi", 77}, {"-", "cell", 5}};
  s.cellular_capped = true;
  s.sessions_active = 1;
  s.sessions_started = 9;
  s.multipath_downloads_active = 1;
  s.version_conflicts = 3;
  s.refused_paths.push_back({"cdn.test", "cell", "forbidden", 403, 25.0});
  s.refusals_total.emplace_back("forbidden", 2);
  s.intercepting = true;
  s.dns = {5, 1, 0};
  s.warm = {2, 7, 9, 1};
  const auto j = status_json(s);
  const char* keys[] = {"paths",
                        "flows",
                        "downloads",
                        "cellular_month_bytes",
                        "flow_resets",
                        "app_bytes",
                        "cellular_capped",
                        "sessions_active",
                        "sessions_started",
                        "multipath_downloads_active",
                        "version_conflicts",
                        "refused_paths",
                        "refusals",
                        "intercepting",
                        "dns",
                        "warm_connections"};
  ASSERT_EQ(j.size(), std::size(keys));
  std::size_t k = 0;
  for (const auto& entry : j) EXPECT_EQ(entry.key(), keys[k++]);
  // A refusal is not a version conflict: the path, the host, the reason, the time left.
  const auto& refused = j.at("refused_paths").as_array().at(0).as_object();
  EXPECT_EQ(refused.at("host"), "cdn.test");
  EXPECT_EQ(refused.at("path"), "cell");
  EXPECT_EQ(refused.at("reason"), "forbidden");
  EXPECT_EQ(refused.at("status").as_uint64(), 403U);
  EXPECT_DOUBLE_EQ(refused.at("seconds_left").as_double(), 25.0);
  EXPECT_EQ(j.at("refusals").as_object().at("forbidden").as_uint64(), 2U);
  const auto& flow = j.at("flows").as_array().at(0).as_object();
  EXPECT_EQ(flow.at("id").as_uint64(), 12U);
  EXPECT_EQ(flow.at("class"), "gaming");
  EXPECT_EQ(flow.at("path"), "wifi");
  EXPECT_EQ(flow.at("what"), "TLS to a.test (198.18.10.1:443)");
  EXPECT_DOUBLE_EQ(flow.at("seconds").as_double(), 2.5);
  const auto& d = j.at("downloads").as_array().at(0).as_object();
  EXPECT_EQ(d.at("session").as_uint64(), 4U);
  EXPECT_EQ(d.at("app"), "player");
  EXPECT_EQ(d.at("size").as_uint64(), 10'000'000U);
  EXPECT_EQ(d.at("delivered").as_uint64(), 4'000'000U);
  EXPECT_DOUBLE_EQ(d.at("seconds").as_double(), 1.25);
  const auto& shares = d.at("paths").as_array();
  ASSERT_EQ(shares.size(), 2U);
  EXPECT_EQ(shares[0].as_object().at("path"), "wifi");
  EXPECT_EQ(shares[0].as_object().at("bytes").as_uint64(), 6'000'000U);
  EXPECT_DOUBLE_EQ(shares[0].as_object().at("rate_bps").as_double(), 8e6);
  EXPECT_EQ(shares[1].as_object().at("failed"), true);
  EXPECT_EQ(j.at("cellular_month_bytes").as_uint64(), 123U);
  EXPECT_EQ(j.at("flow_resets").as_uint64(), 2U);
  EXPECT_EQ(j.at("app_bytes").as_array().at(1).as_object().at("app"), "-");
  EXPECT_EQ(j.at("cellular_capped"), true);
  EXPECT_EQ(j.at("sessions_started").as_uint64(), 9U);
  EXPECT_EQ(j.at("version_conflicts").as_uint64(), 3U);
  EXPECT_EQ(j.at("intercepting"), true);
  EXPECT_EQ(json::serialize(j.at("dns")), R"({"queries":5,"answered_by_fallback":1,"failed":0})");
  EXPECT_EQ(json::serialize(j.at("warm_connections")),
            R"({"idle":2,"reused":7,"parked":9,"over_limit":1})");
}

TEST(AppsJson, CgroupClassAndUnsetIdsAsNull) {
  const auto j =
      apps_json({{"browser", true, "user.slice/browser.scope", 1000, std::nullopt, "web"},
                 {"curl", false, "fleety/curl", std::nullopt, 50, "default"}});
  ASSERT_EQ(j.size(), 2U);
  EXPECT_EQ(json::serialize(j[0]),
            R"({"name":"browser","enabled":true,"cgroup":"user.slice/browser.scope","uid":1000,)"
            R"("gid":null,"class":"web"})");
  EXPECT_EQ(json::serialize(j[1]),
            R"({"name":"curl","enabled":false,"cgroup":"fleety/curl","uid":null,"gid":50,)"
            R"("class":"default"})");
}

TEST(StatsJson, UsageAndTelemetryInMbpsAndMs) {
  stats_model s;
  s.month = "2025-03";
  s.cellular_bytes = 4096;
  s.paths = {{"cell", 4096}};
  s.apps = {{"game", "cell", 1024}};
  s.transitions = 3;
  s.median_gain_bps = 2e6;
  s.median_speedup = 1.5;
  s.switches = 2;
  s.median_rtt_change = microseconds(-20'000);
  const auto j = stats_json(s);
  EXPECT_EQ(j.at("month"), "2025-03");
  EXPECT_EQ(j.at("cellular_bytes").as_uint64(), 4096U);
  EXPECT_EQ(j.at("cellular_capped"), false);
  EXPECT_EQ(json::serialize(j.at("paths")), R"([{"path":"cell","bytes":4096}])");
  EXPECT_EQ(json::serialize(j.at("apps")), R"([{"path":"cell","bytes":1024,"app":"game"}])");
  const auto& t = j.at("telemetry").as_object();
  EXPECT_EQ(t.at("days").as_int64(), 30);
  EXPECT_EQ(t.at("transitions").as_uint64(), 3U);
  EXPECT_DOUBLE_EQ(t.at("median_gain_mbps").as_double(), 2.0);
  EXPECT_TRUE(t.at("mean_gain_mbps").is_null());
  EXPECT_DOUBLE_EQ(t.at("median_speedup").as_double(), 1.5);
  EXPECT_TRUE(t.at("mean_speedup").is_null());
  EXPECT_EQ(t.at("switches").as_uint64(), 2U);
  EXPECT_DOUBLE_EQ(t.at("median_rtt_change_ms").as_double(), -20.0);
}

TEST(JsonText, NumbersAsPeopleAndScriptsWriteThem) {
  json::object o{{"rtt_ms", 58.209},
                 {"loss", 0.0},
                 {"big", 1e21},
                 {"third", 1.0 / 3},
                 {"bytes", std::uint64_t{18'446'744'073'709'551'615ULL}},
                 {"delta", -20},
                 {"up", true},
                 {"none", nullptr},
                 {"nan", std::nan("")},
                 {"name", "wi\"fi"},
                 {"list", json::array{1.5, 2.0}}};
  EXPECT_EQ(json_text(o),
            R"({"rtt_ms":58.209,"loss":0,"big":1e+21,"third":0.3333333333333333,)"
            R"("bytes":18446744073709551615,"delta":-20,"up":true,"none":null,"nan":null,)"
            R"("name":"wi\"fi","list":[1.5,2]})");
  // It reads back the same values.
  const auto back = json::parse(json_text(o)).as_object();
  EXPECT_EQ(back.at("rtt_ms").as_double(), 58.209);
  EXPECT_EQ(back.at("third").as_double(), 1.0 / 3);
}

}  // namespace
}  // namespace fleety::control
