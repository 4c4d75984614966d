#include "net/listen.hpp"

#include <gtest/gtest.h>

namespace fleety::net {
namespace {

using boost::asio::ip::make_address;

TEST(IsLocalAddress, LoopbackIsOursAnAddressNoInterfaceHasIsNot) {
  EXPECT_TRUE(is_local_address(make_address("127.0.0.1")));
  EXPECT_TRUE(is_local_address(make_address("127.0.0.53")));  // all of 127/8 is loopback
  EXPECT_TRUE(is_local_address(make_address("::1")));
  // The benchmarking range's last address: on no interface of a test machine.
  EXPECT_FALSE(is_local_address(make_address("198.19.255.254")));
  EXPECT_FALSE(is_local_address(make_address("2001:db8::dead:beef")));
  EXPECT_FALSE(is_local_address(make_address("0.0.0.0")));
  EXPECT_FALSE(is_local_address(make_address("::")));
  EXPECT_FALSE(is_local_address(make_address("224.0.0.1")));
}

}  // namespace
}  // namespace fleety::net
