#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "classify/classify.hpp"
#include "core/config.hpp"

namespace fleety::classify {
namespace {

TEST(HostMatches, ExactAndWildcard) {
  EXPECT_TRUE(host_matches("cdn.example.com", "CDN.Example.com"));
  EXPECT_TRUE(host_matches("cdn.example.com", "cdn.example.com."));
  EXPECT_FALSE(host_matches("cdn.example.com", "xcdn.example.com"));
  EXPECT_TRUE(host_matches("*.example.com", "a.b.example.com"));
  EXPECT_FALSE(host_matches("*.example.com", "example.com"));
  EXPECT_FALSE(host_matches("*.example.com", "badexample.com"));
}

TEST(PathExtension, LastSegmentOnly) {
  EXPECT_EQ(path_extension("/v/seg-001.TS?token=a.b"), "ts");
  EXPECT_EQ(path_extension("/archive.tar.gz"), "gz");
  EXPECT_EQ(path_extension("/dir.d/file"), "");
  EXPECT_EQ(path_extension("/file."), "");
  EXPECT_EQ(path_extension("http://h.test/a/b.m4s#x"), "m4s");
}

feature_rules rules_from(std::string_view toml) {
  auto config = core::parse_config(std::string(toml) + R"(
[[path]]
name = "wifi"
interface = "wlan0"
kind = "wifi"
)",
                                   "rules.toml");
  EXPECT_TRUE(config) << config.error();
  return compile_feature_rules(config->features, config->multipath_by_default);
}

TEST(DecideFeature, FirstMatchingRuleDecides) {
  auto rules = rules_from(R"(
[classify]
multipath_by_default = false
[[feature]]
name = "no ads"
hosts = ["ads.example.com"]
multipath = false
[[feature]]
name = "video segments"
hosts = ["*.example.com"]
extensions = ["ts", ".M4S"]
min_size = "512KiB"
[[feature]]
name = "player"
path_regex = "^/play/"
headers = { "user-agent" = "^Player/[0-9]+" }
)");
  ASSERT_EQ(rules.rules.size(), 3U);
  auto d = decide_feature(rules, {"v.example.com", "/s/1.m4s?k=1", {}});
  EXPECT_TRUE(d.multipath);
  EXPECT_EQ(d.rule, "video segments");
  EXPECT_EQ(d.min_size, 512U * 1024);
  d = decide_feature(rules, {"ads.example.com", "/x.ts", {}});
  EXPECT_FALSE(d.multipath);
  EXPECT_EQ(d.rule, "no ads");
  d = decide_feature(rules, {"v.example.com", "/s/1.mp3", {}});
  EXPECT_FALSE(d.multipath);
  EXPECT_EQ(d.rule, "");
  d = decide_feature(rules, {"other.test", "/play/movie", {{"User-Agent", "Player/7 (Linux)"}}});
  EXPECT_TRUE(d.multipath);
  EXPECT_EQ(d.rule, "player");
  d = decide_feature(rules, {"other.test", "/play/movie", {{"User-Agent", "curl/7"}}});
  EXPECT_FALSE(d.multipath);
  d = decide_feature(rules, {"other.test", "/play/movie", {}});
  EXPECT_FALSE(d.multipath);
}

TEST(DecideFeature, NoRulesMeansTheDefault) {
  EXPECT_TRUE(decide_feature(rules_from(""), {"h", "/x", {}}).multipath);
  EXPECT_FALSE(
      decide_feature(rules_from("[classify]\nmultipath_by_default = false\n"), {"h", "/x", {}})
          .multipath);
}

TEST(FeatureConfig, BadRulesNameTheLine) {
  auto config = core::parse_config(R"(
[[path]]
name = "wifi"
interface = "wlan0"
kind = "wifi"
[[feature]]
name = "broken"
path_regex = "([a-z"
)",
                                   "rules.toml");
  ASSERT_FALSE(config);
  EXPECT_EQ(
      config.error().rfind(
          "rules.toml:8: feature 'broken': path_regex: '([a-z' is not a valid regular expression",
          0),
      0U)
      << config.error();
  config = core::parse_config(R"(
[[path]]
name = "wifi"
interface = "wlan0"
kind = "wifi"
[[feature]]
name = "x"
extension = ["ts"]
)",
                              "rules.toml");
  ASSERT_FALSE(config);
  EXPECT_NE(config.error().find("rules.toml:8: unknown key 'extension' in [[feature]]"),
            std::string::npos)
      << config.error();
}

TEST(DecideFeature, PatternsTakeLinearTimeOnWhatTheRemoteSideSends) {
  // A pattern that backtracks exponentially in ECMAScript engines (std::regex took
  // seconds, then overflowed its stack, on a few thousand characters).
  auto rules = rules_from(R"(
[classify]
multipath_by_default = false
[[feature]]
name = "nested"
path_regex = "^/(a+)+$"
headers = { "User-Agent" = "^(x+x+)+y" }
)");
  const std::string path = "/" + std::string(100'000, 'a') + "!";
  const std::string agent(100'000, 'x');
  const auto started = std::chrono::steady_clock::now();
  EXPECT_FALSE(decide_feature(rules, {"h.test", path, {{"User-Agent", agent}}}).multipath);
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(1));
}

TEST(DecideFeature, OnlyTheFirst8KiBOfAnInputAreMatched) {
  auto rules = rules_from(R"(
[classify]
multipath_by_default = false
[[feature]]
name = "far"
path_regex = "needle"
)");
  const std::string beyond = "/" + std::string(max_match_input, 'a') + "needle";
  EXPECT_FALSE(decide_feature(rules, {"h.test", beyond, {}}).multipath);
  const std::string within = "/" + std::string(max_match_input - 10, 'a') + "needle";
  EXPECT_TRUE(decide_feature(rules, {"h.test", within, {}}).multipath);
}

TEST(FeatureConfig, BackreferencesAndLookaroundAreRefusedWithRe2sReason) {
  auto config = core::parse_config(R"(
[[path]]
name = "wifi"
interface = "wlan0"
kind = "wifi"
[[feature]]
name = "backref"
path_regex = "(a)\\1"
)",
                                   "rules.toml");
  ASSERT_FALSE(config);
  EXPECT_NE(config.error().find("is not a valid regular expression"), std::string::npos)
      << config.error();
  EXPECT_NE(config.error().find("RE2 syntax"), std::string::npos) << config.error();
}

}  // namespace
}  // namespace fleety::classify

namespace fleety::classify {
namespace {

TEST(NamesADownload, SegmentsPackagesAndArchivesByTheLastSegmentsExtension) {
  for (const char* target :
       {"/video/seg_00042.m4s", "/live/chunk-7.ts?token=abc", "http://cdn.example/a/b/movie.MP4",
        "/pool/main/f/fleety/fleety_0.1.0_amd64.deb", "/ubuntu-24.04.iso#x", "/src.tar.gz",
        "/app.apk", "/x/y.zst"})
    EXPECT_TRUE(names_a_download(target)) << target;
  for (const char* target :
       {"/10MB", "/index.html", "/api/v1/items.json", "/master.m3u8", "/manifest.mpd", "/", "",
        "/dir.iso/", "/a.ts.html", "/events?format=m4s", "http://host.mp4/page"})
    EXPECT_FALSE(names_a_download(target)) << target;
}

}  // namespace
}  // namespace fleety::classify
