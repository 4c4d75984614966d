#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "intercept/intercept.hpp"
#include "net/socket_owner.hpp"

namespace fleety::intercept {
namespace {

std::vector<core::app_config> configured_apps() {
  core::app_config by_uid;
  by_uid.name = "android-app";
  by_uid.uid = 10123;
  by_uid.qos_class = "streaming";
  core::app_config game;
  game.name = "game";  // a `fleety run --app game` program's class
  game.qos_class = "gaming";
  return {by_uid, game};
}

TEST(AppDirectory, ByUidWithItsClassElseTheDefault) {
  app_directory apps(configured_apps(), "", "messaging");
  const auto known = apps.identify(std::nullopt, 10123);
  EXPECT_EQ(known.app, "android-app");
  EXPECT_EQ(known.qos, "streaming");
  const auto unknown = apps.identify(std::nullopt, 4242);
  EXPECT_EQ(unknown.app, "");
  EXPECT_EQ(unknown.qos, "messaging");
  // A cgroup nobody configured, and no cgroup2 mount to look in: by uid.
  EXPECT_EQ(apps.identify(12345, 10123).app, "android-app");
}

TEST(AppDirectory, AFleetyRunCgroupNamesItsApp) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (creates a cgroup)";
  auto mount = cgroup2_mount();
  if (!mount) GTEST_SKIP() << mount.error();
  const std::filesystem::path run_dir = std::filesystem::path(*mount) / std::string(run_cgroup);
  std::error_code ec;
  const bool made_run_dir = std::filesystem::create_directory(run_dir, ec);
  ASSERT_FALSE(ec) << ec.message();
  const auto app_dir = run_dir / ("game-unit-" + std::to_string(::getpid()));
  ASSERT_TRUE(std::filesystem::create_directory(app_dir, ec)) << ec.message();
  struct cleanup {
    std::filesystem::path app, run;
    bool remove_run;
    ~cleanup() {
      std::error_code ignored;
      std::filesystem::remove(app, ignored);
      if (remove_run) std::filesystem::remove(run, ignored);
    }
  } removed{app_dir, run_dir, made_run_dir};

  const auto id = net::cgroup_id_of(app_dir.string());
  ASSERT_TRUE(id);
  auto apps_config = configured_apps();
  apps_config[1].name = app_dir.filename().string();
  app_directory apps(apps_config, *mount, "default");
  const auto who = apps.identify(*id, 0);
  EXPECT_EQ(who.app, app_dir.filename().string());
  EXPECT_EQ(who.qos, "gaming");
}

}  // namespace
}  // namespace fleety::intercept
