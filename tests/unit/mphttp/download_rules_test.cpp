#include "mphttp/download_rules.hpp"

#include <gtest/gtest.h>

namespace fleety::mphttp {
namespace {

TEST(DownloadUrl, HttpAndHttps) {
  auto plain = parse_download_url("http://cdn.fleety.test/100MB?x=1#frag");
  ASSERT_TRUE(plain);
  EXPECT_FALSE(plain->tls);
  EXPECT_EQ(plain->port, 80);
  EXPECT_EQ(plain->origin_form, "/100MB?x=1");
  auto secure = parse_download_url("https://cdn.fleety.test/a");
  ASSERT_TRUE(secure);
  EXPECT_TRUE(secure->tls);
  EXPECT_EQ(secure->port, 443);
  EXPECT_EQ(secure->authority, "cdn.fleety.test");
  auto port = parse_download_url("HTTPS://[::1]:8443/");
  ASSERT_TRUE(port);
  EXPECT_EQ(port->host, "::1");
  EXPECT_EQ(port->port, 8443);
  EXPECT_FALSE(parse_download_url("ftp://cdn.fleety.test/a"));
  EXPECT_FALSE(parse_download_url("https://user@cdn.fleety.test/a"));
  EXPECT_FALSE(parse_download_url("cdn.fleety.test/a"));
  EXPECT_FALSE(parse_download_url("https://cdn.fleety.test:99999/a"));
  // The proxy still takes http:// only, and no fragment.
  EXPECT_FALSE(parse_absolute_target("https://cdn.fleety.test/a"));
  EXPECT_FALSE(parse_absolute_target("http://cdn.fleety.test/a#b"));
}

TEST(DownloadUrl, RedirectLocations) {
  EXPECT_EQ(resolve_location("http://a.test/dir/file", "other"), "http://a.test/dir/other");
  EXPECT_EQ(resolve_location("http://a.test/dir/file", "/top?q=1"), "http://a.test/top?q=1");
  EXPECT_EQ(resolve_location("http://a.test/x", "https://b.test/y#z"), "https://b.test/y");
  EXPECT_EQ(resolve_location("https://a.test/x", "//c.test/w"), "https://c.test/w");
  EXPECT_FALSE(resolve_location("http://a.test/x", "http://bad host/"));
}

TEST(DefaultFileName, LastSegmentOrIndex) {
  EXPECT_EQ(default_file_name("/videos/big%20file.mp4?x=1"), "big file.mp4");
  EXPECT_EQ(default_file_name("/"), "index.html");
  EXPECT_EQ(default_file_name("/dir/"), "index.html");
  EXPECT_EQ(default_file_name("/a/.."), "index.html");
  EXPECT_EQ(default_file_name("/a/%2e%2e"), "index.html");
  EXPECT_EQ(default_file_name("/a/.hidden"), "index.html");
  EXPECT_EQ(default_file_name("/a/b%2Fc"), "index.html");  // no path sneaks in
}

TEST(ResumeRecord, RoundTripsAndRefusesOthers) {
  const resume_record record{"https://cdn.fleety.test/100MB", "\"6b0f-5f5e100\"", 100000000};
  EXPECT_EQ(parse_resume_record(format_resume_record(record)), record);
  EXPECT_FALSE(parse_resume_record(""));
  EXPECT_FALSE(parse_resume_record("{\"url\":\"x\",\"validator\":\"\",\"total\":1}"));
  EXPECT_FALSE(
      parse_resume_record("{\"fleety_resume\":2,\"url\":\"x\",\"validator\":\"\",\"total\":1}"));
  EXPECT_FALSE(
      parse_resume_record("{\"fleety_resume\":1,\"url\":\"x\",\"validator\":\"\",\"total\":-1}"));
}

constexpr std::string_view url = "http://cdn.fleety.test/100MB";

TEST(DecideStart, NoFileStartsAtZero) {
  auto s = decide_start(std::nullopt, resume_record{std::string(url), "v", 10}, url,
                        existing_file::refuse);
  EXPECT_EQ(s.offset, 0u);
  EXPECT_TRUE(s.error.empty());
  EXPECT_FALSE(s.truncate);
}

TEST(DecideStart, RecordOfTheSameUrlResumes) {
  auto s = decide_start(4000, resume_record{std::string(url), "\"v\"", 10000}, url,
                        existing_file::refuse);
  EXPECT_EQ(s.offset, 4000u);
  EXPECT_EQ(s.validator, "\"v\"");
  EXPECT_EQ(s.total, 10000u);
  EXPECT_TRUE(s.error.empty());
  // A file longer than the object it was is not a prefix of it.
  auto longer = decide_start(20000, resume_record{std::string(url), "\"v\"", 10000}, url,
                             existing_file::refuse);
  EXPECT_EQ(longer.offset, 0u);
  EXPECT_TRUE(longer.truncate);
}

TEST(DecideStart, WithoutAValidatorTheFileStartsOver) {
  // The node gave no strong validator: If-Range can't confirm the version, so the bytes
  // on disk could be spliced with a changed object's.
  auto s =
      decide_start(4000, resume_record{std::string(url), "", 10000}, url, existing_file::refuse);
  EXPECT_EQ(s.offset, 0u);
  EXPECT_TRUE(s.truncate);
  EXPECT_TRUE(s.error.empty());
  EXPECT_NE(s.note.find("no strong validator"), std::string::npos) << s.note;
}

TEST(DecideStart, ForeignFilesNeedAChoice) {
  auto refused = decide_start(5, std::nullopt, url, existing_file::refuse);
  EXPECT_NE(refused.error.find("--continue"), std::string::npos);
  auto other = decide_start(5, resume_record{"http://x.test/y", "", 9}, url, existing_file::resume);
  EXPECT_NE(other.error.find("http://x.test/y"), std::string::npos);
  auto resumed = decide_start(5, std::nullopt, url, existing_file::resume);
  EXPECT_EQ(resumed.offset, 5u);
  EXPECT_TRUE(resumed.validator.empty());
  EXPECT_NE(resumed.note.find("without a validator"), std::string::npos);
  auto overwritten =
      decide_start(5, resume_record{std::string(url), "v", 9}, url, existing_file::overwrite);
  EXPECT_EQ(overwritten.offset, 0u);
  EXPECT_TRUE(overwritten.truncate);
}

first_answer answer(unsigned status) {
  first_answer a;
  a.status = status;
  return a;
}

TEST(PlanFirstAnswer, RangedHeadOfTheObject) {
  auto a = answer(206);
  a.range = content_range{0, 2'097'151, 100'000'000};
  auto plan = plan_first_answer(a, 0, std::nullopt);
  EXPECT_EQ(plan.kind, answer_kind::ranged);
  EXPECT_EQ(plan.head_end, 2'097'152u);
  EXPECT_EQ(plan.total, 100'000'000u);
}

TEST(PlanFirstAnswer, ResumedRangeMustStartWhereTheFileEnds) {
  auto a = answer(206);
  a.range = content_range{4000, 9999, 10000};
  EXPECT_EQ(plan_first_answer(a, 4000, 10000).kind, answer_kind::ranged);
  EXPECT_EQ(plan_first_answer(a, 3000, 10000).kind, answer_kind::fail);
  // Another size than the record's: another object.
  EXPECT_EQ(plan_first_answer(a, 4000, 12000).kind, answer_kind::restart);
  a.range = content_range{4000, 20000, 10000};  // past the end: nonsense
  EXPECT_EQ(plan_first_answer(a, 4000, std::nullopt).kind, answer_kind::fail);
}

TEST(PlanFirstAnswer, WholeObjectReplacesAPartialFile) {
  auto a = answer(200);
  a.content_length = 10000;
  auto fresh = plan_first_answer(a, 0, std::nullopt);
  EXPECT_EQ(fresh.kind, answer_kind::whole);
  EXPECT_FALSE(fresh.starts_over);
  auto changed = plan_first_answer(a, 4000, 10000);  // If-Range failed
  EXPECT_EQ(changed.kind, answer_kind::whole);
  EXPECT_TRUE(changed.starts_over);
  EXPECT_EQ(changed.total, 10000u);
}

TEST(PlanFirstAnswer, NothingLeftOrRefused) {
  auto a = answer(416);
  a.range = content_range{0, 0, 10000};  // "bytes */10000"
  EXPECT_EQ(plan_first_answer(a, 10000, 10000).kind, answer_kind::complete);
  EXPECT_EQ(plan_first_answer(a, 12000, std::nullopt).kind, answer_kind::restart);
  EXPECT_EQ(plan_first_answer(answer(416), 0, std::nullopt).kind, answer_kind::restart);
}

TEST(PlanFirstAnswer, RedirectsAndErrors) {
  auto moved = answer(302);
  moved.has_location = true;
  EXPECT_EQ(plan_first_answer(moved, 0, std::nullopt).kind, answer_kind::redirect);
  EXPECT_EQ(plan_first_answer(answer(302), 0, std::nullopt).kind, answer_kind::fail);
  auto missing = answer(404);
  missing.reason_phrase = "Not Found";
  auto plan = plan_first_answer(missing, 0, std::nullopt);
  EXPECT_EQ(plan.kind, answer_kind::fail);
  EXPECT_EQ(plan.reason, "the server answered 404 Not Found");
}

TEST(RenderProgress, BarBytesRatesAndTimeLeft) {
  download_progress p;
  p.total = 100'000'000;
  p.done = 50'000'000;
  p.rate_bps = 40e6;
  p.paths = {{"wifi", "wlan0", 25'000'000, 20e6, false}, {"cell", "rmnet0", 25'000'000, 0, true}};
  const std::string line = render_progress(p, 120);
  EXPECT_EQ(line.substr(0, 5), " 50% ");
  EXPECT_NE(line.find("[===================>"), std::string::npos);
  EXPECT_NE(line.find("wifi 20.0 Mbit/s"), std::string::npos);
  EXPECT_NE(line.find("cell failed"), std::string::npos);
  EXPECT_NE(line.find("10 s left"), std::string::npos);
  EXPECT_LE(line.size(), 120u);
  // Narrow: no bar, still within the width.
  const std::string narrow = render_progress(p, 40);
  EXPECT_EQ(narrow.find('['), std::string::npos);
  EXPECT_LE(narrow.size(), 40u);
  // Unknown size: no percentage.
  p.total.reset();
  EXPECT_EQ(render_progress(p, 120).find('%'), std::string::npos);
}

}  // namespace
}  // namespace fleety::mphttp
