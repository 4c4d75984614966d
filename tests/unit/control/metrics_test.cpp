#include <gtest/gtest.h>

#include "control/control.hpp"

namespace fleety::control {
namespace {

using std::chrono::microseconds;

/// Two paths (one measured, one down and unmeasured, with a quote in its name), two flows
/// of one class on one path, and counters.
status_model two_path_model() {
  status_model s;
  path_status wifi;
  wifi.name = "wifi";
  wifi.interface = "wlan0";
  wifi.kind = "wifi";
  wifi.up = true;
  wifi.rtt = microseconds(50'500);
  wifi.jitter = microseconds(2'000);
  wifi.throughput_bps = 20e6;
  wifi.loss = 0.01;
  wifi.capacity_bps = 19.1e6;
  wifi.probes = 7;
  wifi.bytes_received = 1000;
  wifi.requests = 3;
  path_status cell;
  cell.name = "c\"ell";
  cell.interface = "rmnet0";
  cell.kind = "cellular";
  cell.capacity_bps = 10e6;
  s.paths = {wifi, cell};
  s.flows = {{1, "game", "gaming", "wifi", "TCP to 198.51.100.7:443", 1.5},
             {2, "game", "gaming", "wifi", "TCP to 198.51.100.7:443", 0.5}};
  s.sessions_active = 2;
  s.sessions_started = 9;
  s.version_conflicts = 1;
  s.flow_resets = 4;
  s.intercepting = true;
  s.cellular_month_bytes = 123;
  s.dns = {/*queries=*/5, /*answered_by_fallback=*/1, /*failed=*/0};
  s.app_bytes = {{"game", "wifi", 77}};
  s.warm = {/*idle=*/3, /*reused=*/11, /*parked=*/12, /*over_limit=*/2};
  return s;
}

bool has_line(const std::string& text, const std::string& line) {
  return text.find("\n" + line + "\n") != std::string::npos || text.rfind(line + "\n", 0) == 0;
}

TEST(PrometheusText, PathsFlowsAndCountersWithUnknownValuesLeftOut) {
  const std::string text = prometheus_text(two_path_model());
  const auto has = [&](const std::string& line) { return has_line(text, line); };
  EXPECT_TRUE(has(R"(fleety_path_up{path="wifi",interface="wlan0",kind="wifi"} 1)")) << text;
  EXPECT_TRUE(has(R"(fleety_path_up{path="c\"ell",interface="rmnet0",kind="cellular"} 0)"));
  EXPECT_TRUE(has(R"(fleety_path_rtt_seconds{path="wifi",interface="wlan0",kind="wifi"} 0.0505)"));
  EXPECT_TRUE(
      has(R"(fleety_path_jitter_seconds{path="wifi",interface="wlan0",kind="wifi"} 0.002)"));
  EXPECT_TRUE(has(R"(fleety_path_loss_ratio{path="wifi",interface="wlan0",kind="wifi"} 0.01)"));
  EXPECT_TRUE(has(
      R"(fleety_path_throughput_bits_per_second{path="wifi",interface="wlan0",kind="wifi"} 20000000)"));
  EXPECT_TRUE(has(
      R"(fleety_path_capacity_bits_per_second{path="c\"ell",interface="rmnet0",kind="cellular"} 10000000)"));
  EXPECT_TRUE(has(R"(fleety_path_probes_total{path="wifi",interface="wlan0",kind="wifi"} 7)"));
  EXPECT_TRUE(
      has(R"(fleety_path_received_bytes_total{path="wifi",interface="wlan0",kind="wifi"} 1000)"));
  EXPECT_TRUE(has(R"(fleety_path_requests_total{path="wifi",interface="wlan0",kind="wifi"} 3)"));
  // Not measured: no sample at all (a 0 would read as "no delay").
  EXPECT_EQ(text.find(R"(fleety_path_rtt_seconds{path="c\"ell")"), std::string::npos);
  EXPECT_EQ(text.find("fleety_path_signal_dbm{"), std::string::npos);
  EXPECT_TRUE(has("# TYPE fleety_path_received_bytes_total counter"));
  EXPECT_TRUE(has("# TYPE fleety_path_up gauge"));
  EXPECT_TRUE(has(R"(fleety_flows_active{class="gaming",path="wifi"} 2)"));
  EXPECT_TRUE(has("fleety_sessions_active 2"));
  EXPECT_TRUE(has("fleety_sessions_total 9"));
  EXPECT_TRUE(has("fleety_multipath_downloads_active 0"));
  EXPECT_TRUE(has("fleety_verifier_mismatches_total 1"));
  EXPECT_TRUE(has("fleety_flow_resets_total 4"));
  EXPECT_TRUE(has("fleety_intercepting 1"));
  EXPECT_TRUE(has("fleety_cellular_month_bytes 123"));
  EXPECT_TRUE(has("fleety_cellular_capped 0"));
  EXPECT_TRUE(has("fleety_warm_connections 3"));
  EXPECT_TRUE(has("fleety_warm_connection_reuses_total 11"));
  EXPECT_TRUE(has("fleety_connection_limit_hits_total 2"));
  EXPECT_TRUE(has("fleety_dns_queries_total 5"));
  EXPECT_TRUE(has("fleety_dns_fallbacks_total 1"));
  EXPECT_TRUE(has("fleety_dns_failures_total 0"));
  EXPECT_TRUE(has(R"(fleety_app_received_bytes_total{app="game",path="wifi"} 77)"));
}

TEST(PrometheusText, RefusalsByReasonAndPathsKeptOffAHost) {
  auto model = two_path_model();
  model.refusals_total = {{"forbidden", 3}, {"rate limited", 1}};
  model.refused_paths = {{"a.test", "cell", "forbidden", 403, 20},
                         {"b.test", "cell", "rate limited", 429, 100}};
  const std::string text = prometheus_text(model);
  auto has = [&](std::string_view line) { return text.find(line) != std::string::npos; };
  EXPECT_TRUE(has(R"(fleety_path_refusals_total{reason="forbidden"} 3)"));
  EXPECT_TRUE(has(R"(fleety_path_refusals_total{reason="rate limited"} 1)"));
  EXPECT_TRUE(has(R"(fleety_refused_paths{path="cell"} 2)"));
  // Not version conflicts.
  EXPECT_TRUE(has("fleety_verifier_mismatches_total 1"));  // the model's own, not these
}

TEST(PrometheusText, EveryFamilyOnceInTheOrderOfBefore) {
  const std::string text = prometheus_text(two_path_model());
  const char* families[] = {"fleety_path_up",
                            "fleety_path_rtt_seconds",
                            "fleety_path_jitter_seconds",
                            "fleety_path_loss_ratio",
                            "fleety_path_throughput_bits_per_second",
                            "fleety_path_capacity_bits_per_second",
                            "fleety_path_signal_dbm",
                            "fleety_path_received_bytes_total",
                            "fleety_path_requests_total",
                            "fleety_path_probes_total",
                            "fleety_flows_active",
                            "fleety_sessions_active",
                            "fleety_sessions_total",
                            "fleety_multipath_downloads_active",
                            "fleety_verifier_mismatches_total",
                            "fleety_flow_resets_total",
                            "fleety_intercepting",
                            "fleety_cellular_month_bytes",
                            "fleety_cellular_capped",
                            "fleety_path_refusals_total",
                            "fleety_refused_paths",
                            "fleety_warm_connections",
                            "fleety_warm_connection_reuses_total",
                            "fleety_connection_limit_hits_total",
                            "fleety_dns_queries_total",
                            "fleety_dns_fallbacks_total",
                            "fleety_dns_failures_total",
                            "fleety_app_received_bytes_total"};
  std::size_t at = 0;
  for (const char* family : families) {
    const std::string help = std::string("# HELP ") + family + " ";
    const auto found = text.find(help, at);
    ASSERT_NE(found, std::string::npos) << family;
    EXPECT_EQ(text.find(help, found + 1), std::string::npos) << family << " twice";
    at = found;
  }
}

TEST(PrometheusText, AModelWithoutPathsGivesTheirFamiliesOnly) {
  const std::string text = prometheus_text(status_model{});
  EXPECT_NE(text.find("# TYPE fleety_path_up gauge"), std::string::npos);
  EXPECT_EQ(text.find("fleety_path_up{"), std::string::npos);
  EXPECT_EQ(text.find("fleety_flows_active{"), std::string::npos);
  EXPECT_TRUE(has_line(text, "fleety_sessions_active 0"));
}

}  // namespace
}  // namespace fleety::control
