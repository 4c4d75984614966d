#pragma once
// TCP_INFO read with the kernel's own struct layout (linux/tcp.h): glibc's copy lacks
// min_rtt and delivery_rate, and the two headers cannot be included together, so this
// lives in a translation unit of its own that includes no Asio.

#include <cstdint>

namespace fleety::net {

struct kernel_tcp_sample {
  std::uint32_t rtt_us = 0;
  std::uint32_t min_rtt_us = 0;         ///< 0 when the kernel does not report it
  std::uint64_t delivery_rate_Bps = 0;  ///< bytes per second; 0 when not reported
  std::uint32_t total_retrans = 0;
  std::uint32_t rttvar_us = 0;
  std::uint64_t bytes_received = 0;  ///< 0 when not reported
  std::uint32_t segs_out = 0;        ///< segments sent, retransmissions included
};

/// false if `fd` is not a TCP socket.
bool read_kernel_tcp_info(int fd, kernel_tcp_sample& out);

}  // namespace fleety::net
