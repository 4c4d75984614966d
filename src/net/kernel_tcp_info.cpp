#include "net/kernel_tcp_info.hpp"

#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>

namespace fleety::net {

bool read_kernel_tcp_info(int fd, kernel_tcp_sample& out) {
  tcp_info info{};
  socklen_t length = sizeof(info);
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length) != 0) return false;
  out.rtt_us = info.tcpi_rtt;
  out.total_retrans = info.tcpi_total_retrans;
  out.rttvar_us = info.tcpi_rttvar;
  // Older kernels fill a shorter struct: take only what they wrote.
  if (length >= offsetof(tcp_info, tcpi_min_rtt) + sizeof(info.tcpi_min_rtt)) {
    out.min_rtt_us = info.tcpi_min_rtt;
  }
  if (length >= offsetof(tcp_info, tcpi_delivery_rate) + sizeof(info.tcpi_delivery_rate)) {
    out.delivery_rate_Bps = info.tcpi_delivery_rate;
  }
  if (length >= offsetof(tcp_info, tcpi_bytes_received) + sizeof(info.tcpi_bytes_received)) {
    out.bytes_received = info.tcpi_bytes_received;
  }
  if (length >= offsetof(tcp_info, tcpi_segs_out) + sizeof(info.tcpi_segs_out)) {
    out.segs_out = info.tcpi_segs_out;
  }
  return true;
}

}  // namespace fleety::net
