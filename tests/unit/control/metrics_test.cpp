#include <gtest/gtest.h>

#include <boost/json/parse.hpp>

#include "control/control.hpp"

namespace fleety::control {
namespace {

TEST(PrometheusText, PathsFlowsAndCountersWithUnknownValuesLeftOut) {
  const auto status = boost::json::parse(R"({
    "paths": [
      {"name": "wifi", "interface": "wlan0", "kind": "wifi", "up": true, "rtt_ms": 50.5,
       "jitter_ms": 2.0, "throughput_mbps": 20.0, "loss": 0.01, "capacity_mbps": 19.1,
       "signal_dbm": null, "probes": 7, "bytes_received": 1000, "requests": 3},
      {"name": "c\"ell", "interface": "rmnet0", "kind": "cellular", "up": false,
       "rtt_ms": null, "jitter_ms": null, "throughput_mbps": null, "loss": null,
       "capacity_mbps": 10.0, "signal_dbm": null, "probes": 0, "bytes_received": 0,
       "requests": 0}],
    "flows": [{"id": 1, "app": "game", "class": "gaming", "path": "wifi"},
              {"id": 2, "app": "game", "class": "gaming", "path": "wifi"}],
    "sessions_active": 2, "sessions_started": 9, "multipath_downloads_active": 0,
    "version_conflicts": 1, "flow_resets": 4, "intercepting": true,
    "cellular_month_bytes": 123, "cellular_capped": false,
    "dns": {"queries": 5, "answered_by_fallback": 1, "failed": 0},
    "app_bytes": [{"app": "game", "path": "wifi", "bytes": 77}]})")
                          .as_object();
  const std::string text = prometheus_text(status);
  const auto has = [&](const std::string& line) {
    return text.find("\n" + line + "\n") != std::string::npos || text.rfind(line + "\n", 0) == 0;
  };
  EXPECT_TRUE(has(R"(fleety_path_up{path="wifi",interface="wlan0",kind="wifi"} 1)")) << text;
  EXPECT_TRUE(has(R"(fleety_path_up{path="c\"ell",interface="rmnet0",kind="cellular"} 0)"));
  EXPECT_TRUE(has(R"(fleety_path_rtt_seconds{path="wifi",interface="wlan0",kind="wifi"} 0.0505)"));
  EXPECT_TRUE(has(
      R"(fleety_path_throughput_bits_per_second{path="wifi",interface="wlan0",kind="wifi"} 20000000)"));
  // Not measured: no sample at all (a 0 would read as "no delay").
  EXPECT_EQ(text.find(R"(fleety_path_rtt_seconds{path="c\"ell")"), std::string::npos);
  EXPECT_EQ(text.find("fleety_path_signal_dbm{"), std::string::npos);
  EXPECT_TRUE(has("# TYPE fleety_path_received_bytes_total counter"));
  EXPECT_TRUE(has(R"(fleety_flows_active{class="gaming",path="wifi"} 2)"));
  EXPECT_TRUE(has("fleety_verifier_mismatches_total 1"));
  EXPECT_TRUE(has("fleety_flow_resets_total 4"));
  EXPECT_TRUE(has("fleety_dns_fallbacks_total 1"));
  EXPECT_TRUE(has("fleety_intercepting 1"));
  EXPECT_TRUE(has(R"(fleety_app_received_bytes_total{app="game",path="wifi"} 77)"));
}

TEST(PrometheusText, AnEmptyStatusGivesOnlyFamilies) {
  const std::string text = prometheus_text(boost::json::object{});
  EXPECT_NE(text.find("# TYPE fleety_path_up gauge"), std::string::npos);
  EXPECT_EQ(text.find("fleety_path_up{"), std::string::npos);
}

}  // namespace
}  // namespace fleety::control
