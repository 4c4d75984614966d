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

uplink found(std::string name, path_kind kind) {
  return {std::move(name), kind, "the name", false};
}

core::path_config discovered(std::string name, std::string interface, path_kind kind) {
  core::path_config p;
  p.name = std::move(name);
  p.interface = std::move(interface);
  p.kind = kind;
  p.cost = kind == path_kind::cellular ? 10 : 0;
  return p;
}

TEST(SlotLayout, WhatWasFoundAndAFreeSlotForEachKindMissingInPreferenceOrder) {
  const auto slots = slot_layout({discovered("wifi", "wlan0", path_kind::wifi)});
  ASSERT_EQ(slots.size(), 3U);
  EXPECT_EQ(slots[0].kind, path_kind::wired);
  EXPECT_EQ(slots[0].interface, "");
  EXPECT_EQ(slots[1].interface, "wlan0");
  EXPECT_EQ(slots[2].kind, path_kind::cellular);
  EXPECT_EQ(slots[2].interface, "");
  EXPECT_EQ(slots[2].cost, 10);  // a free slot keeps its kind's cost: preference holds
  // Nothing found yet (a laptop before its Wi-Fi connects): one free slot of each kind.
  EXPECT_EQ(slot_layout({}).size(), 3U);
  // Two wired ones found: both, next to each other, then the free ones.
  const auto two = slot_layout({discovered("wired", "eth0", path_kind::wired),
                                discovered("wired-2", "eth1", path_kind::wired)});
  ASSERT_EQ(two.size(), 4U);
  EXPECT_EQ(two[1].interface, "eth1");
  EXPECT_EQ(two[2].kind, path_kind::wifi);
}

TEST(PlanSlots, ANewUplinkTakesAFreeSlotOfItsKindAndOneGoneFreesIts) {
  std::vector<uplink_slot> slots = {{path_kind::wired, "", "", ""},
                                    {path_kind::wifi, "wlan0", "wifi", "wlan0"},
                                    {path_kind::cellular, "", "", ""}};
  // Nothing changed: nothing to do.
  EXPECT_TRUE(plan_slots(slots, {found("wlan0", path_kind::wifi)}).changes.empty());
  // A phone plugged in (USB tethering): the cellular slot, cost 10, named cellular.
  auto plan =
      plan_slots(slots, {found("wlan0", path_kind::wifi), found("usb0", path_kind::cellular)});
  ASSERT_EQ(plan.changes.size(), 1U);
  EXPECT_EQ(plan.changes[0].slot, 2U);
  ASSERT_TRUE(plan.changes[0].take);
  EXPECT_EQ(plan.changes[0].take->interface, "usb0");
  EXPECT_EQ(plan.changes[0].take->name, "cellular");
  EXPECT_EQ(plan.changes[0].take->cost, 10);
  EXPECT_EQ(plan.changes[0].take->discovered, "the name");
  // Wi-Fi gone (no default route): its slot is freed.
  plan = plan_slots(slots, {});
  ASSERT_EQ(plan.changes.size(), 1U);
  EXPECT_EQ(plan.changes[0].slot, 1U);
  EXPECT_FALSE(plan.changes[0].take);
  // A second Wi-Fi while the one slot is taken: no slot, said.
  plan = plan_slots(slots, {found("wlan0", path_kind::wifi), found("wlan1", path_kind::wifi)});
  EXPECT_TRUE(plan.changes.empty());
  ASSERT_EQ(plan.without_slot.size(), 1U);
  EXPECT_EQ(plan.without_slot[0].interface, "wlan1");
  // Wi-Fi swapped for another in one look: the old frees the slot first, the new takes it.
  plan = plan_slots(slots, {found("wlan1", path_kind::wifi)});
  ASSERT_EQ(plan.changes.size(), 2U);
  EXPECT_FALSE(plan.changes[0].take);
  ASSERT_TRUE(plan.changes[1].take);
  EXPECT_EQ(plan.changes[1].slot, 1U);
  EXPECT_EQ(plan.changes[1].take->name, "wifi");
}

TEST(PlanSlots, AnUplinkBackTakesItsOwnSlotAndNamesStayUnique) {
  std::vector<uplink_slot> slots = {{path_kind::cellular, "", "", "usb0"},
                                    {path_kind::cellular, "wwan0", "cellular", "wwan0"},
                                    {path_kind::cellular, "", "", ""}};
  auto plan =
      plan_slots(slots, {found("wwan0", path_kind::cellular), found("usb1", path_kind::cellular),
                         found("usb0", path_kind::cellular)});
  ASSERT_EQ(plan.changes.size(), 2U);
  // usb1 comes first in the list but leaves usb0's own slot to it.
  EXPECT_EQ(plan.changes[0].slot, 0U);
  EXPECT_EQ(plan.changes[0].take->interface, "usb0");
  EXPECT_EQ(plan.changes[0].take->name, "cellular-2");
  EXPECT_EQ(plan.changes[1].slot, 2U);
  EXPECT_EQ(plan.changes[1].take->interface, "usb1");
  EXPECT_EQ(plan.changes[1].take->name, "cellular-3");
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
