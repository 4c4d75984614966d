#include <gtest/gtest.h>

#include <boost/json/parse.hpp>
#include <map>

#include "control/control.hpp"

namespace fleety::control {
namespace {

namespace json = boost::json;

/// A daemon with two apps, one of them disabled.
class fake_daemon : public daemon_api {
 public:
  std::map<std::string, bool> apps_enabled{{"browser", true}, {"player", false}};
  std::size_t reloads = 0;

  status_model status() override {
    status_model s;
    s.sessions_active = 3;
    return s;
  }
  std::vector<app_status> apps() override {
    std::vector<app_status> out;
    for (const auto& [name, enabled] : apps_enabled)
      out.push_back({name, enabled, "fleety/" + name, std::nullopt, 1000, "default"});
    return out;
  }
  core::expected<bool> set_app_enabled(const std::string& name, bool enabled) override {
    auto it = apps_enabled.find(name);
    if (it == apps_enabled.end()) return core::make_error("no app named '" + name + "'");
    it->second = enabled;
    return true;
  }
  core::expected<bool> app_starting(const std::string& name,
                                    const std::optional<peer_credentials>& caller) override {
    joined = caller;
    return apps_enabled.emplace(name, true).first->second;
  }
  std::optional<peer_credentials> joined;
  core::expected<std::size_t> reload_rules() override { return ++reloads; }
};

constexpr peer_credentials root{0, 0, 100};
constexpr peer_credentials member{1000, 1000, 4242};

json::object reply(std::string_view request, daemon_api& daemon,
                   const peer_credentials& peer = root) {
  return json::parse(handle_request(request, daemon, peer)).as_object();
}

TEST(HandleRequest, StatusAndApps) {
  fake_daemon daemon;
  auto status = reply(R"({"cmd":"status"})", daemon);
  EXPECT_EQ(status.at("ok"), true);
  EXPECT_EQ(status.at("sessions_active"), 3);
  EXPECT_TRUE(status.at("paths").as_array().empty());
  auto apps = reply(R"({"cmd":"apps"})", daemon);
  ASSERT_EQ(apps.at("apps").as_array().size(), 2U);
  const auto& browser = apps.at("apps").as_array()[0].as_object();
  EXPECT_EQ(browser.at("name"), "browser");
  EXPECT_EQ(browser.at("enabled"), true);
  EXPECT_EQ(browser.at("cgroup"), "fleety/browser");
  EXPECT_TRUE(browser.at("uid").is_null());
  EXPECT_EQ(browser.at("gid"), 1000);
  EXPECT_EQ(browser.at("class"), "default");
}

TEST(HandleRequest, StatsOrWhyThereAreNone) {
  fake_daemon daemon;  // keeps no statistics: the default answer
  auto none = reply(R"({"cmd":"stats"})", daemon);
  EXPECT_EQ(none.at("ok"), false);
  EXPECT_EQ(none.at("error"), "this fleetyd keeps no statistics");
  struct counting : fake_daemon {
    core::expected<stats_model> stats() override {
      stats_model s;
      s.cellular_bytes = 7;
      return s;
    }
  } with_stats;
  auto stats = reply(R"({"cmd":"stats"})", with_stats);
  EXPECT_EQ(stats.at("ok"), true);
  EXPECT_EQ(stats.at("cellular_bytes"), 7);
}

TEST(HandleRequest, EnableDisableAndStarting) {
  fake_daemon daemon;
  auto r = reply(R"({"cmd":"app.enable","name":"player"})", daemon);
  EXPECT_EQ(r.at("ok"), true);
  EXPECT_TRUE(daemon.apps_enabled["player"]);
  r = reply(R"({"cmd":"app.disable","name":"browser"})", daemon);
  EXPECT_EQ(r.at("enabled"), false);
  EXPECT_FALSE(daemon.apps_enabled["browser"]);
  r = reply(R"({"cmd":"app.starting","name":"browser"})", daemon);
  EXPECT_EQ(r.at("enabled"), false);
  r = reply(R"({"cmd":"app.starting","name":"new"})", daemon);
  EXPECT_EQ(r.at("enabled"), true);
  r = reply(R"({"cmd":"app.disable","name":"nobody"})", daemon);
  EXPECT_EQ(r.at("ok"), false);
  EXPECT_EQ(r.at("error"), "no app named 'nobody'");
  r = reply(R"({"cmd":"app.enable"})", daemon);
  EXPECT_EQ(r.at("error"), "app.enable needs \"name\"");
}

TEST(HandleRequest, AGroupMemberMayLookAndRunButNotChangeWhatOthersGet) {
  fake_daemon daemon;
  EXPECT_EQ(reply(R"({"cmd":"status"})", daemon, member).at("ok"), true);
  EXPECT_EQ(reply(R"({"cmd":"apps"})", daemon, member).at("ok"), true);
  for (const auto* request :
       {R"({"cmd":"app.enable","name":"player"})", R"({"cmd":"app.disable","name":"browser"})",
        R"({"cmd":"rules.reload"})"}) {
    const auto r = reply(request, daemon, member);
    EXPECT_EQ(r.at("ok"), false) << request;
    EXPECT_NE(std::string(r.at("error").as_string()).find("only root may ask"), std::string::npos)
        << request;
  }
  EXPECT_FALSE(daemon.apps_enabled["player"]);
  EXPECT_TRUE(daemon.apps_enabled["browser"]);
  EXPECT_EQ(daemon.reloads, 0U);
  // fleety run: the member's own process (the kernel's credentials) joins the app.
  auto r = reply(R"({"cmd":"app.starting","name":"mine","join":true})", daemon, member);
  EXPECT_EQ(r.at("enabled"), true);
  ASSERT_TRUE(daemon.joined.has_value());
  EXPECT_EQ(daemon.joined->pid, 4242);
  EXPECT_EQ(daemon.joined->uid, 1000U);
  // Without "join", nobody is moved.
  reply(R"({"cmd":"app.starting","name":"mine"})", daemon, member);
  EXPECT_FALSE(daemon.joined.has_value());
}

TEST(HandleRequest, ReloadAndBadRequests) {
  fake_daemon daemon;
  EXPECT_EQ(reply(R"({"cmd":"rules.reload"})", daemon).at("feature_rules"), 1);
  EXPECT_EQ(reply("not json", daemon).at("error"), "a request is one JSON object per line");
  EXPECT_EQ(reply("[1,2]", daemon).at("ok"), false);
  EXPECT_EQ(reply(R"({"command":"status"})", daemon).at("error"), "the request has no \"cmd\"");
  const auto unknown = reply(R"({"cmd":"shutdown"})", daemon);
  EXPECT_EQ(unknown.at("ok"), false);
  EXPECT_NE(std::string(unknown.at("error").as_string()).find("unknown cmd \"shutdown\""),
            std::string::npos);
}

TEST(Call, NoDaemonIsAClearError) {
  auto r = call("/nonexistent/fleety.sock", {{"cmd", "status"}}, std::chrono::milliseconds(500));
  ASSERT_FALSE(r);
  EXPECT_EQ(
      r.error().rfind("fleetyd is not running (nothing answers on /nonexistent/fleety.sock)", 0),
      0U)
      << r.error();
}

}  // namespace
}  // namespace fleety::control
