#include "mphttp/http_rules.hpp"

#include <gtest/gtest.h>

#include <functional>

namespace fleety::mphttp {
namespace {
namespace http = boost::beast::http;

TEST(ParseAbsoluteTarget, HostPortPathQuery) {
  auto t = parse_absolute_target("http://cdn.fleety.test:8080/videos/a.ts?x=1");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->host, "cdn.fleety.test");
  EXPECT_EQ(t->port, 8080);
  EXPECT_EQ(t->origin_form, "/videos/a.ts?x=1");
  EXPECT_EQ(t->authority, "cdn.fleety.test:8080");
}

TEST(ParseAbsoluteTarget, DefaultsAndLiterals) {
  auto t = parse_absolute_target("http://198.18.10.1");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->port, 80);
  EXPECT_EQ(t->origin_form, "/");
  auto v6 = parse_absolute_target("http://[::1]:81/x");
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->host, "::1");
}

TEST(ParseAbsoluteTarget, RefusesWhatItCannotServe) {
  EXPECT_FALSE(parse_absolute_target("/origin-form"));
  EXPECT_FALSE(parse_absolute_target("https://example.test/"));
  EXPECT_FALSE(parse_absolute_target("http://user:pw@example.test/"));
  EXPECT_FALSE(parse_absolute_target("http://example.test:0/"));
  EXPECT_FALSE(parse_absolute_target("http://example.test:70000/"));
}

TEST(StripHopByHop, RemovesConnectionAndTheFieldsItNames) {
  http::fields fields;
  fields.set(http::field::connection, "keep-alive, X-Private");
  fields.set("X-Private", "1");
  fields.set(http::field::keep_alive, "timeout=5");
  fields.set(http::field::proxy_connection, "keep-alive");
  fields.set(http::field::transfer_encoding, "chunked");
  fields.set(http::field::user_agent, "curl");
  strip_hop_by_hop(fields);
  EXPECT_EQ(fields.find("X-Private"), fields.end());
  EXPECT_EQ(fields.find(http::field::connection), fields.end());
  EXPECT_EQ(fields.find(http::field::keep_alive), fields.end());
  EXPECT_EQ(fields.find(http::field::transfer_encoding), fields.end());
  EXPECT_EQ(fields[http::field::user_agent], "curl");
}

TEST(ParseContentRange, ValidAndInvalid) {
  auto r = parse_content_range("bytes 100-199/1000");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->first, 100U);
  EXPECT_EQ(r->last, 199U);
  EXPECT_EQ(r->complete_length, 1000U);
  EXPECT_FALSE(parse_content_range("bytes 100-199/*"));
  EXPECT_FALSE(parse_content_range("bytes 200-100/1000"));
  EXPECT_FALSE(parse_content_range("bytes 0-1000/1000"));
  EXPECT_FALSE(parse_content_range("items 0-1/2"));
  EXPECT_FALSE(parse_content_range("bytes -1-5/10"));
}

TEST(ParseUnsatisfiedRange, LengthOnly) {
  EXPECT_EQ(parse_unsatisfied_range("bytes */1000"), 1000U);
  EXPECT_EQ(parse_unsatisfied_range("Bytes */0"), 0U);
  EXPECT_FALSE(parse_unsatisfied_range("bytes */"));
  EXPECT_FALSE(parse_unsatisfied_range("bytes */12x"));
  EXPECT_FALSE(parse_unsatisfied_range("bytes 0-1/2"));
}

TEST(AcceptsByteRanges, TokenAnyCase) {
  response_header h;
  EXPECT_FALSE(accepts_byte_ranges(h));
  h.set(http::field::accept_ranges, "none");
  EXPECT_FALSE(accepts_byte_ranges(h));
  h.set(http::field::accept_ranges, "Bytes");
  EXPECT_TRUE(accepts_byte_ranges(h));
  h.set(http::field::accept_ranges, "none, bytes");
  EXPECT_TRUE(accepts_byte_ranges(h));
  h.set(http::field::accept_ranges, "bytesx");
  EXPECT_FALSE(accepts_byte_ranges(h));
}

TEST(StrongValidator, PrefersStrongEtagThenLastModified) {
  response_header h;
  h.set(http::field::etag, "\"abc\"");
  h.set(http::field::last_modified, "Sat, 28 Nov 2026 00:00:00 GMT");
  EXPECT_EQ(strong_validator(h), "\"abc\"");
  h.set(http::field::etag, "W/\"abc\"");
  EXPECT_EQ(strong_validator(h), "Sat, 28 Nov 2026 00:00:00 GMT");
}

struct split_fixture {
  request_header request;
  response_header response;
  split_fixture() {
    request.method(http::verb::get);
    response.result(http::status::ok);
    response.set(http::field::content_length, "10000000");
    response.set(http::field::accept_ranges, "bytes");
  }
};

TEST(DecideSplit, LargeGetSplits) {
  split_fixture f;
  const auto d = decide_split(f.request, f.response, 2'000'000, 2);
  EXPECT_EQ(d.verdict, split_verdict::split);
  EXPECT_EQ(d.begin, 0U);
  EXPECT_EQ(d.end, 10'000'000U);
  EXPECT_EQ(d.total, 10'000'000U);
}

TEST(DecideSplit, AppsSingleRangeSplitsTheRange) {
  split_fixture f;
  f.request.set(http::field::range, "bytes=1000000-5999999");
  f.request.set(http::field::if_range, "\"abc\"");
  f.response.result(http::status::partial_content);
  f.response.set(http::field::content_range, "bytes 1000000-5999999/10000000");
  f.response.set(http::field::content_length, "5000000");
  f.response.erase(http::field::accept_ranges);  // implied by the 206
  const auto d = decide_split(f.request, f.response, 2'000'000, 2);
  EXPECT_EQ(d.verdict, split_verdict::split);
  EXPECT_EQ(d.begin, 1'000'000U);
  EXPECT_EQ(d.end, 6'000'000U);
  EXPECT_EQ(d.total, 10'000'000U);
  // The same range under the threshold stays on one path.
  EXPECT_EQ(decide_split(f.request, f.response, 6'000'000, 2).verdict, split_verdict::too_small);
}

TEST(DecideSplit, ReasonsNotToSplit) {
  {
    split_fixture f;
    EXPECT_EQ(decide_split(f.request, f.response, 20'000'000, 2).verdict, split_verdict::too_small);
    EXPECT_EQ(decide_split(f.request, f.response, 2'000'000, 1).verdict,
              split_verdict::single_path_only);
  }
  {
    split_fixture f;
    f.request.method(http::verb::post);
    EXPECT_EQ(decide_split(f.request, f.response, 0, 2).verdict, split_verdict::not_get);
  }
  {
    split_fixture f;
    f.request.set(http::field::if_none_match, "\"abc\"");
    EXPECT_EQ(decide_split(f.request, f.response, 0, 2).verdict, split_verdict::app_conditional);
  }
  {
    split_fixture f;
    f.request.set(http::field::range, "bytes=0-99,200-299");
    f.response.result(http::status::partial_content);
    f.response.set(http::field::content_type, "multipart/byteranges; boundary=x");
    EXPECT_EQ(decide_split(f.request, f.response, 0, 2).verdict, split_verdict::multipart);
  }
  {
    split_fixture f;
    f.response.result(http::status::not_found);
    EXPECT_EQ(decide_split(f.request, f.response, 0, 2).verdict, split_verdict::not_ok);
  }
  {
    split_fixture f;
    f.response.erase(http::field::content_length);
    f.response.set(http::field::transfer_encoding, "chunked");
    EXPECT_EQ(decide_split(f.request, f.response, 0, 2).verdict, split_verdict::unknown_length);
  }
  {
    split_fixture f;
    f.response.set(http::field::accept_ranges, "none");
    EXPECT_EQ(decide_split(f.request, f.response, 0, 2).verdict, split_verdict::no_ranges);
    f.response.erase(http::field::accept_ranges);  // a server that ignores Range says nothing
    EXPECT_EQ(decide_split(f.request, f.response, 0, 2).verdict, split_verdict::no_ranges);
    f.response.set(http::field::accept_ranges, "other, Bytes");
    EXPECT_EQ(decide_split(f.request, f.response, 0, 2).verdict, split_verdict::split);
  }
}

request_header plain_get() {
  request_header get;
  get.method(http::verb::get);
  get.set(http::field::accept_encoding, "gzip");
  return get;
}

TEST(HeadRangeBasis, PlainGetWantsTheWholeObject) {
  const auto wanted = head_range_basis(plain_get());
  ASSERT_TRUE(wanted.has_value());
  EXPECT_EQ(wanted->first, 0U);
  EXPECT_FALSE(wanted->last.has_value());
  EXPECT_FALSE(wanted->app_range);
  EXPECT_EQ(head_range_field(*wanted, 2'000'000), "bytes=0-1999999");
}

TEST(HeadRangeBasis, TheAppsSingleRangeIsCutToTheHead) {
  auto get = plain_get();
  get.set(http::field::range, "bytes=1000000-");
  get.set(http::field::if_range, "\"abc\"");  // stays: it means the same on our range
  auto wanted = head_range_basis(get);
  ASSERT_TRUE(wanted.has_value());
  EXPECT_TRUE(wanted->app_range);
  EXPECT_EQ(head_range_field(*wanted, 2'000'000), "bytes=1000000-2999999");
  get.set(http::field::range, "bytes=1000000-1499999");
  wanted = head_range_basis(get);
  ASSERT_TRUE(wanted.has_value());
  EXPECT_EQ(head_range_field(*wanted, 2'000'000), "bytes=1000000-1499999");
}

TEST(HeadRangeBasis, RequestsItCannotStandInFor) {
  auto head = plain_get();
  head.method(http::verb::head);
  EXPECT_FALSE(head_range_basis(head).has_value());
  for (auto field :
       {http::field::if_match, http::field::if_none_match, http::field::if_modified_since,
        http::field::if_unmodified_since, http::field::if_range}) {
    auto get = plain_get();
    get.set(field, "x");
    EXPECT_FALSE(head_range_basis(get).has_value()) << http::to_string(field);
  }
  for (const char* range : {"bytes=-500", "bytes=0-99,200-299", "bytes=5-4", "items=0-9",
                            "bytes=x-9", "bytes=", "bytes=7"}) {
    auto get = plain_get();
    get.set(http::field::range, range);
    EXPECT_FALSE(head_range_basis(get).has_value()) << range;
  }
}

/// nginx's 206 to "Range: bytes=0-1999999" of a 10 MB object.
response_header head_range_response() {
  response_header r;
  r.result(http::status::partial_content);
  r.set(http::field::server, "nginx");
  r.set(http::field::content_type, "application/octet-stream");
  r.set(http::field::content_length, "2000000");
  r.set(http::field::last_modified, "Sat, 28 Nov 2026 08:00:00 GMT");
  r.set(http::field::etag, "\"6929c8c0-989680\"");
  r.set(http::field::content_range, "bytes 0-1999999/10000000");
  return r;
}

TEST(AppViewOfHeadRange, TheOriginsTwoHundredForTheWholeObject) {
  auto partial = head_range_response();
  partial.set("Content-Digest", "sha-256=:abc=:");
  const auto whole = app_view_of_head_range(partial, wanted_range{});
  ASSERT_TRUE(whole.has_value());
  EXPECT_EQ(whole->result(), http::status::ok);
  EXPECT_EQ(whole->reason(), "OK");
  EXPECT_EQ((*whole)[http::field::content_length], "10000000");
  EXPECT_EQ(whole->find(http::field::content_range), whole->end());
  EXPECT_EQ(whole->find("Content-Digest"), whole->end());
  EXPECT_EQ((*whole)[http::field::accept_ranges], "bytes");
  // End-to-end fields stay as they are, validators first of all.
  EXPECT_EQ((*whole)[http::field::etag], "\"6929c8c0-989680\"");
  EXPECT_EQ((*whole)[http::field::last_modified], "Sat, 28 Nov 2026 08:00:00 GMT");
  EXPECT_EQ((*whole)[http::field::content_type], "application/octet-stream");
  EXPECT_EQ((*whole)[http::field::server], "nginx");
  // And it splits like the origin's own 200.
  const auto d = decide_split(plain_get(), *whole, 2'000'000, 2);
  EXPECT_EQ(d.verdict, split_verdict::split);
  EXPECT_EQ(d.total, 10'000'000U);
}

TEST(AppViewOfHeadRange, ObjectSmallerThanTheHeadComesWhole) {
  auto partial = head_range_response();
  partial.set(http::field::content_range, "bytes 0-999/1000");
  partial.set(http::field::content_length, "1000");
  const auto whole = app_view_of_head_range(partial, wanted_range{});
  ASSERT_TRUE(whole.has_value());
  EXPECT_EQ((*whole)[http::field::content_length], "1000");
}

TEST(AppViewOfHeadRange, TheOriginsTwoHundredSixForTheAppsRange) {
  // The app asked for bytes=1000000- of 10 MB; we asked for bytes=1000000-2999999.
  auto partial = head_range_response();
  partial.set(http::field::content_range, "bytes 1000000-2999999/10000000");
  const wanted_range open_ended{1'000'000, std::nullopt, true};
  auto view = app_view_of_head_range(partial, open_ended);
  ASSERT_TRUE(view.has_value());
  EXPECT_EQ(view->result(), http::status::partial_content);
  EXPECT_EQ((*view)[http::field::content_range], "bytes 1000000-9999999/10000000");
  EXPECT_EQ((*view)[http::field::content_length], "9000000");
  EXPECT_EQ(view->find(http::field::accept_ranges), view->end());  // as the origin's 206
  const auto d = decide_split(plain_get(), *view, 2'000'000, 2);
  EXPECT_EQ(d.verdict, split_verdict::split);
  EXPECT_EQ(d.begin, 1'000'000U);
  EXPECT_EQ(d.end, 10'000'000U);
  // A last byte past the object is cut to it, as the origin does (RFC 9110 §14.1.2).
  const wanted_range past_the_end{1'000'000, 20'000'000, true};
  view = app_view_of_head_range(partial, past_the_end);
  ASSERT_TRUE(view.has_value());
  EXPECT_EQ((*view)[http::field::content_range], "bytes 1000000-9999999/10000000");
}

TEST(AppViewOfHeadRange, RefusesWhatIsNotTheHeadRange) {
  auto expect_refused = [](const std::function<void(response_header&)>& change) {
    auto partial = head_range_response();
    change(partial);
    EXPECT_FALSE(app_view_of_head_range(partial, wanted_range{}).has_value())
        << partial[http::field::content_range] << " " << partial[http::field::content_length];
  };
  expect_refused([](auto& r) { r.result(http::status::ok); });
  expect_refused([](auto& r) { r.set(http::field::content_range, "bytes 0-1999999/*"); });
  expect_refused([](auto& r) { r.set(http::field::content_range, "bytes 5-2000004/10000000"); });
  expect_refused([](auto& r) { r.erase(http::field::content_range); });  // multipart
  expect_refused([](auto& r) { r.set(http::field::content_length, "1999999"); });
  expect_refused([](auto& r) { r.erase(http::field::content_length); });
  expect_refused([](auto& r) { r.set(http::field::transfer_encoding, "chunked"); });
  // Past the app's own last byte: not an answer to what we asked.
  auto partial = head_range_response();
  EXPECT_FALSE(app_view_of_head_range(partial, wanted_range{0, 999'999, true}).has_value());
}

TEST(WantsUpgrade, UpgradeNamedInConnection) {
  request_header r;
  r.method(http::verb::get);
  r.target("/ws");
  EXPECT_FALSE(wants_upgrade(r));
  r.set(http::field::upgrade, "websocket");
  EXPECT_FALSE(wants_upgrade(r));  // not named in Connection: a hop-by-hop leftover
  r.set(http::field::connection, "keep-alive, Upgrade");
  EXPECT_TRUE(wants_upgrade(r));
  r.set(http::field::connection, "upgrade");
  EXPECT_TRUE(wants_upgrade(r));
  r.erase(http::field::upgrade);
  EXPECT_FALSE(wants_upgrade(r));
}

TEST(IsForAnAppProxy, ConnectAndAbsoluteForm) {
  request_header r;
  r.method(http::verb::get);
  r.target("/index.html");
  EXPECT_FALSE(is_for_an_app_proxy(r));
  r.target("http://example.com/index.html");
  EXPECT_TRUE(is_for_an_app_proxy(r));
  r.method(http::verb::options);
  r.target("*");
  EXPECT_FALSE(is_for_an_app_proxy(r));
  r.method(http::verb::connect);
  r.target("example.com:443");
  EXPECT_TRUE(is_for_an_app_proxy(r));
}

TEST(RepresentationDigests, EachNodesWholeObjectDigestsNotThePartsOwn) {
  response_header r;
  r.result(http::status::partial_content);
  r.set("Repr-Digest", "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:, SHA-512=:YWJj:");
  r.insert("x-goog-hash", "crc32c=n03x6A==, md5=Ojk9c3dhfxgoKVVHYwFbHQ==");
  r.set("x-amz-checksum-crc32c", "AAAAAA==");
  r.set("x-amz-checksum-type", "FULL_OBJECT");    // not a digest
  r.set("Content-Digest", "sha-256=:cGFydA==:");  // of the part: not compared
  r.set("Content-MD5", "cGFydA==");               // likewise
  const auto d = representation_digests(r);
  const std::vector<representation_digest> expected{
      {"sha-256", "RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg="},
      {"sha-512", "YWJj"},
      {"goog-crc32c", "n03x6A=="},
      {"goog-md5", "Ojk9c3dhfxgoKVVHYwFbHQ=="},
      {"amz-crc32c", "AAAAAA=="}};
  EXPECT_EQ(d, expected);
}

TEST(RepresentationDigests, MalformedItemsAreSkipped) {
  response_header r;
  r.set("Repr-Digest", "sha-256=notwrapped, =:abc:, sha-512=::, md5=:ok:");
  const auto d = representation_digests(r);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0], (representation_digest{"md5", "ok"}));
}

TEST(RetryAfter, SecondsOrAnHttpDate) {
  const auto now = std::chrono::system_clock::from_time_t(784111777);  // 1994-11-06 08:49:37
  EXPECT_EQ(parse_retry_after("120", now), std::chrono::seconds(120));
  EXPECT_EQ(parse_retry_after(" 0 ", now), std::chrono::seconds(0));
  EXPECT_EQ(parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", now), std::chrono::seconds(120));
  EXPECT_EQ(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), std::chrono::seconds(0));
  EXPECT_FALSE(parse_retry_after("soon", now).has_value());
  EXPECT_FALSE(parse_retry_after("-5", now).has_value());
  EXPECT_FALSE(parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT trailing", now).has_value());
}

TEST(RefusalOf, StatusToReason) {
  EXPECT_EQ(refusal_of(206), refusal::none);
  EXPECT_EQ(refusal_of(302), refusal::redirected);
  EXPECT_EQ(refusal_of(401), refusal::unauthorized);
  EXPECT_EQ(refusal_of(403), refusal::forbidden);
  EXPECT_EQ(refusal_of(404), refusal::not_found);
  EXPECT_EQ(refusal_of(410), refusal::not_found);
  EXPECT_EQ(refusal_of(416), refusal::unsatisfiable);
  EXPECT_EQ(refusal_of(429), refusal::rate_limited);
  EXPECT_EQ(refusal_of(503), refusal::unavailable);
  EXPECT_EQ(refusal_of(418), refusal::other);
}

}  // namespace
}  // namespace fleety::mphttp
