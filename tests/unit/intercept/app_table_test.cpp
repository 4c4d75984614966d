#include "intercept/app_table.hpp"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

namespace fleety::intercept {
namespace {

core::app_config app(std::string name, std::string cgroup, std::optional<std::uint32_t> uid,
                     std::optional<std::uint32_t> gid, bool enabled = true,
                     std::string qos_class = "") {
  return {std::move(name), std::move(cgroup), uid, gid, enabled, std::move(qos_class)};
}

/// The cgroup directories that exist, for the predicate.
cgroup_exists existing(std::set<std::string> dirs) {
  return [dirs = std::move(dirs)](const std::string& cgroup) { return dirs.contains(cgroup); };
}

core::intercept_config ports() {
  core::intercept_config ic;
  ic.tcp_port = 3129;
  ic.dns_port = 3053;
  ic.mark = 0xf1ee7;
  return ic;
}

/// app name → (cgroup, uid, gid) as the spec selects it.
struct selected {
  std::string name;
  std::string cgroup;
  std::optional<std::uint32_t> uid;
  std::optional<std::uint32_t> gid;
  bool operator==(const selected&) const = default;
};
std::vector<selected> selected_of(const ruleset_spec& spec) {
  std::vector<selected> out;
  for (const auto& m : spec.apps) out.push_back({m.name, m.cgroup, m.uid, m.gid});
  return out;
}

TEST(AppTable, RulesetForEnabledAndDisabledAppsByCgroupUidAndGid) {
  const app_table table({app("browser", "user.slice/browser.scope", 1000, std::nullopt),
                         app("player", "", std::nullopt, 2000),
                         app("missing", "user.slice/missing.scope", std::nullopt, std::nullopt),
                         app("mail", "user.slice/mail.scope", 1001, std::nullopt, false),
                         app("ghost", "", std::nullopt, std::nullopt, false)},
                        "default");
  const auto spec = table.ruleset(
      ports(), "unified",
      existing({"fleety", "user.slice/browser.scope", "user.slice/mail.scope", "fleety/mail"}));
  EXPECT_EQ(spec.tcp_port, 3129);
  EXPECT_EQ(spec.dns_port, 3053);
  EXPECT_EQ(spec.own_mark, 0xf1ee7U);
  EXPECT_TRUE(spec.redirect_dns);
  EXPECT_EQ(spec.cgroup2_prefix, "unified");
  EXPECT_EQ(selected_of(spec),
            (std::vector<selected>{
                // `fleety run` always, first.
                {"fleety run", "fleety", std::nullopt, std::nullopt},
                {"browser", "user.slice/browser.scope", 1000, std::nullopt},
                {"player", "", std::nullopt, 2000},
                // "missing": its configured cgroup does not exist (nft would refuse it), and
                // it has no uid or gid: not selected at all.
            }));
  // Disabled apps: their `fleety run --app` cgroup passes, where it exists (mail's does,
  // ghost's doesn't); mail's own cgroup and uid are simply not selected.
  EXPECT_EQ(spec.excluded_cgroups, (std::vector<std::string>{"fleety/mail"}));
}

TEST(AppTable, EnableDisableReportsWhatWasBeforeAndUnknownNames) {
  app_table table({app("browser", "", 1000, std::nullopt)}, "default");
  auto before = table.set_enabled("browser", false);
  ASSERT_TRUE(before);
  EXPECT_TRUE(*before);
  EXPECT_FALSE(table.find("browser")->enabled);
  before = table.set_enabled("browser", false);
  ASSERT_TRUE(before);
  EXPECT_FALSE(*before);
  // Disabled: no longer selected by uid.
  const auto spec = table.ruleset(ports(), "", existing({}));
  EXPECT_EQ(spec.apps.size(), 1U);
  const auto unknown = table.set_enabled("nobody", true);
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error(), "no app named 'nobody' (apps: browser)");
  app_table none({}, "default");
  EXPECT_EQ(none.set_enabled("x", true).error(), "no app named 'x' (apps: none yet)");
}

TEST(AppTable, FleetyRunNamesStayInsideFleetysCgroupAndAreBounded) {
  app_table table({app("mail", "", 1001, std::nullopt, false)}, "web");
  for (const char* bad : {"..", ".hidden", "-x", "a/b", "a\"b", "", "x y", "fleety\n"}) {
    const auto refused = table.starting(bad);
    ASSERT_FALSE(refused) << bad;
    EXPECT_THAT(refused.error(), ::testing::HasSubstr("use letters, digits"));
  }
  EXPECT_FALSE(table.starting(std::string(65, 'a')));
  EXPECT_EQ(table.apps().size(), 1U);
  for (std::size_t i = 0; i < max_run_apps; ++i)
    ASSERT_TRUE(table.starting(fmt::format("app{}", i)));
  const auto over = table.starting("one-more");
  ASSERT_FALSE(over);
  EXPECT_THAT(over.error(), ::testing::HasSubstr("fleety run has added 256 apps already"));
  EXPECT_TRUE(table.starting("app7"));  // one it knows still starts
  EXPECT_FALSE(*table.starting("mail"));
}

TEST(AppTable, FleetyRunAddsAnEnabledAppOnceAndKeepsADisabledOneDisabled) {
  app_table table({app("mail", "", 1001, std::nullopt, false)}, "web");
  EXPECT_TRUE(*table.starting("curl"));  // unknown: a new app, enabled
  ASSERT_EQ(table.apps().size(), 2U);
  EXPECT_EQ(table.apps()[1].name, "curl");
  EXPECT_TRUE(*table.starting("curl"));  // again: the same app
  EXPECT_EQ(table.apps().size(), 2U);
  EXPECT_FALSE(*table.starting("mail"));  // configured and disabled: stays so
  // Its cgroup is fleety/curl, inside "fleety": no rule of its own is needed.
  EXPECT_EQ(app_table::cgroup_of(table.apps()[1]), "fleety/curl");
  EXPECT_EQ(table.class_of(table.apps()[1]), "web");  // the default class
  const auto spec = table.ruleset(ports(), "", existing({"fleety", "fleety/curl", "fleety/mail"}));
  EXPECT_EQ(selected_of(spec),
            (std::vector<selected>{{"fleety run", "fleety", std::nullopt, std::nullopt}}));
  EXPECT_EQ(spec.excluded_cgroups, (std::vector<std::string>{"fleety/mail"}));
}

TEST(AppTable, CgroupAndClassAsTheAppsListShowsThem) {
  const app_table table(
      {app("browser", "user.slice/b.scope", std::nullopt, std::nullopt, true, "streaming"),
       app("curl", "", std::nullopt, std::nullopt)},
      "default");
  EXPECT_EQ(app_table::cgroup_of(table.apps()[0]), "user.slice/b.scope");
  EXPECT_EQ(table.class_of(table.apps()[0]), "streaming");
  EXPECT_EQ(app_table::cgroup_of(table.apps()[1]), "fleety/curl");
  EXPECT_EQ(table.class_of(table.apps()[1]), "default");
  EXPECT_EQ(table.find("nobody"), nullptr);
}

}  // namespace
}  // namespace fleety::intercept
