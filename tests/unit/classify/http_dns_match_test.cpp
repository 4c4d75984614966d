#include <gtest/gtest.h>

#include "classify/classify.hpp"
#include "core/config.hpp"

namespace fleety::classify {
namespace {

std::vector<core::http_dns_config> endpoints_from(std::string_view toml) {
  auto config = core::parse_config(std::string(toml) + R"(
[[path]]
name = "wifi"
interface = "wlan0"
kind = "wifi"
)",
                                   "http_dns.toml");
  EXPECT_TRUE(config) << config.error();
  return config ? compile_feature_rules(*config).http_dns : std::vector<core::http_dns_config>{};
}

const auto endpoints = endpoints_from(R"(
[[http_dns]]
name = "by-address"
hosts = ["198.18.10.1", "198.18.20.1"]
path = "/d"

[[http_dns]]
name = "by-name"
hosts = ["*.httpdns.example"]
path = "/resolve/"
name_parameters = ["dn"]
)");

TEST(MatchHttpDns, ByDestinationAddressAndPath) {
  ASSERT_EQ(endpoints.size(), 2U);
  const auto q =
      match_http_dns(endpoints, {"cdn.example", "/d?host=video.example&x=1", {}}, "198.18.10.1");
  ASSERT_TRUE(q);
  EXPECT_EQ(q->endpoint->name, "by-address");
  EXPECT_EQ(q->asked_name, "video.example");
  // Below the path too; the Host may be the address itself.
  EXPECT_TRUE(match_http_dns(endpoints, {"198.18.20.1", "/d/v6?dn=a.example", {}}, ""));
  // Not below: another path, a longer segment, another server.
  EXPECT_FALSE(match_http_dns(endpoints, {"cdn.example", "/dx?host=a.example", {}}, "198.18.10.1"));
  EXPECT_FALSE(match_http_dns(endpoints, {"cdn.example", "/100MB", {}}, "198.18.10.1"));
  EXPECT_FALSE(match_http_dns(endpoints, {"cdn.example", "/d?host=a", {}}, "198.18.30.1"));
}

TEST(MatchHttpDns, ByHostPatternWithItsOwnNameParameter) {
  const auto q = match_http_dns(
      endpoints, {"api.httpdns.example", "/resolve/v1?host=no.example&dn=Video%2Eexample", {}}, "");
  ASSERT_TRUE(q);
  EXPECT_EQ(q->endpoint->name, "by-name");
  EXPECT_EQ(q->asked_name, "Video.example");  // decoded; normalized where it is recorded
  const auto unnamed = match_http_dns(endpoints, {"api.httpdns.example", "/resolve/x", {}}, "");
  ASSERT_TRUE(unnamed);
  EXPECT_EQ(unnamed->asked_name, "");
  // An encoded slash is not a path separator.
  EXPECT_FALSE(match_http_dns(endpoints, {"api.httpdns.example", "/resolve%2Fx", {}}, ""));
}

TEST(MatchHttpDns, NoEndpointsOrABadTargetMatchNothing) {
  EXPECT_FALSE(match_http_dns({}, {"198.18.10.1", "/d?host=a", {}}, "198.18.10.1"));
  EXPECT_FALSE(match_http_dns(endpoints, {"198.18.10.1", "http://x/d", {}}, "198.18.10.1"));
}

}  // namespace
}  // namespace fleety::classify
