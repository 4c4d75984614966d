#include "path/uplinks.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace fleety::path {
namespace {

using core::path_kind;

interface_facts facts(std::string name, bool wireless = false, std::string devtype = {},
                      std::string driver = {}) {
  return {std::move(name), true, wireless, std::move(devtype), std::move(driver)};
}

TEST(ClassifyUplink, SysfsFirstThenTheDriverThenTheName) {
  EXPECT_EQ(classify_uplink(facts("wlp2s0", true)).kind, path_kind::wifi);
  EXPECT_EQ(classify_uplink(facts("wlp2s0", true)).why, "sysfs: a wireless device");
  EXPECT_EQ(classify_uplink(facts("wwan0", false, "wwan")).kind, path_kind::cellular);
  // A phone's USB tethering: an Ethernet-looking name, a tethering driver.
  const auto phone = classify_uplink(facts("enx0a1b2c3d4e5f", false, {}, "rndis_host"));
  EXPECT_EQ(phone.kind, path_kind::cellular);
  EXPECT_EQ(phone.why, "driver rndis_host (a phone's USB tethering or a modem)");
  for (const char* driver : {"cdc_ether", "cdc_ncm", "ipheth", "qmi_wwan", "cdc_mbim"})
    EXPECT_EQ(classify_uplink(facts("usb0", false, {}, driver)).kind, path_kind::cellular);
  // Ethernet on a real NIC.
  const auto wired = classify_uplink(facts("enp3s0", false, {}, "r8169"));
  EXPECT_EQ(wired.kind, path_kind::wired);
  EXPECT_EQ(wired.why, "driver r8169");
  // No sysfs facts (a veth, another network namespace's /sys): the name decides.
  EXPECT_EQ(classify_uplink({"wlan0", false, false, {}, {}}).kind, path_kind::wifi);
  EXPECT_EQ(classify_uplink({"rmnet0", false, false, {}, {}}).kind, path_kind::cellular);
  EXPECT_EQ(classify_uplink({"eth0", false, false, {}, {}}).kind, path_kind::wired);
}

TEST(ClassifyUplink, TunnelsAndBridgesAreNoPaths) {
  for (const char* name : {"tun0", "wg0", "tap1", "docker0", "br-1a2b", "virbr0", "lo"})
    EXPECT_TRUE(classify_uplink(facts(name)).excluded) << name;
  EXPECT_TRUE(classify_uplink(facts("mullvad", false, "wireguard")).excluded);
}

TEST(UplinksFrom, EachInterfaceOnceInPreferenceOrder) {
  const std::vector<default_route> routes = {{"wwan0", 254, 700},  {"wlp2s0", 254, 600},
                                             {"wlp2s0", 100, 0},   {"wg0", 51820, 0},
                                             {"enp3s0", 254, 100}, {"enx0a1b", 254, 100}};
  const std::vector<interface_facts> known = {facts("wlp2s0", true), facts("wwan0", false, "wwan"),
                                              facts("enp3s0", false, {}, "e1000e"),
                                              facts("enx0a1b", false, {}, "cdc_ncm")};
  const auto found = uplinks_from(routes, known);
  ASSERT_EQ(found.size(), 4U);  // not the tunnel
  EXPECT_EQ(found[0].interface, "enp3s0");
  EXPECT_EQ(found[1].interface, "wlp2s0");
  // Two cellular ones: the lower metric first.
  EXPECT_EQ(found[2].interface, "enx0a1b");
  EXPECT_EQ(found[3].interface, "wwan0");
  const auto paths = paths_of(found);
  ASSERT_EQ(paths.size(), 4U);
  EXPECT_EQ(paths[0].name, "wired");
  EXPECT_EQ(paths[1].name, "wifi");
  EXPECT_EQ(paths[1].cost, 0);
  EXPECT_EQ(paths[2].name, "cellular");
  EXPECT_EQ(paths[3].name, "cellular-2");
  EXPECT_EQ(paths[3].cost, 10);
  EXPECT_TRUE(paths[3].mptcp_backup);
  EXPECT_TRUE(paths[3].dns_servers.empty());
}

TEST(ReadInterfaceFacts, FromAFakeSysfs) {
  namespace fs = std::filesystem;
  std::string dir = fs::temp_directory_path() / "fleety-sysfs-XXXXXX";
  ASSERT_NE(::mkdtemp(dir.data()), nullptr);
  fs::create_directories(fs::path(dir) / "wlp2s0" / "phy80211");
  std::ofstream(fs::path(dir) / "wlp2s0" / "uevent") << "DEVTYPE=wlan\nINTERFACE=wlp2s0\n";
  fs::create_directories(fs::path(dir) / "drivers" / "rndis_host");
  fs::create_directories(fs::path(dir) / "usb0" / "device");
  fs::create_directory_symlink(fs::path(dir) / "drivers" / "rndis_host",
                               fs::path(dir) / "usb0" / "device" / "driver");
  const auto wifi = read_interface_facts("wlp2s0", dir);
  EXPECT_TRUE(wifi.present);
  EXPECT_TRUE(wifi.wireless);
  EXPECT_EQ(wifi.devtype, "wlan");
  const auto phone = read_interface_facts("usb0", dir);
  EXPECT_EQ(phone.driver, "rndis_host");
  EXPECT_EQ(classify_uplink(phone).kind, path_kind::cellular);
  EXPECT_FALSE(read_interface_facts("eth9", dir).present);
  fs::remove_all(dir);
}

TEST(ReadDefaultRoutes, AnswersInThisNamespace) {
  // Whatever this machine has: the dump ends and names interfaces that exist.
  const auto routes = read_default_routes();
  ASSERT_TRUE(routes) << routes.error();
  for (const auto& r : *routes) EXPECT_FALSE(r.interface.empty());
}

}  // namespace
}  // namespace fleety::path
