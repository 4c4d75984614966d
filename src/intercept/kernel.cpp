// The kernel side of interception: libnftables and SO_ORIGINAL_DST.
#include <netinet/in.h>
#include <nftables/libnftables.h>
#include <sys/socket.h>

#include <memory>

#include "intercept/intercept.hpp"

namespace fleety::intercept {
namespace {
/// SO_ORIGINAL_DST (<linux/netfilter_ipv4.h>) and IP6T_SO_ORIGINAL_DST
/// (<linux/netfilter_ipv6/ip6_tables.h>): those headers clash with glibc's <netinet/in.h>.
constexpr int so_original_dst = 80;
constexpr int ip6t_so_original_dst = 80;
}  // namespace

nft_session::nft_session() : ctx_(nft_ctx_new(NFT_CTX_DEFAULT)) {
  if (ctx_ == nullptr) return;
  nft_ctx_buffer_output(ctx_);
  nft_ctx_buffer_error(ctx_);
}

nft_session::~nft_session() {
  if (ctx_ != nullptr) nft_ctx_free(ctx_);
}

core::expected<bool> nft_session::run(const std::string& script) {
  if (ctx_ == nullptr) return core::make_error("libnftables: cannot create a context");
  if (nft_run_cmd_from_buffer(ctx_, script.c_str()) != 0) {
    std::string error = nft_ctx_get_error_buffer(ctx_);
    while (!error.empty() && (error.back() == '\n' || error.back() == ' ')) error.pop_back();
    return core::make_error(error.empty() ? std::string("nft failed") : error);
  }
  return true;
}

core::expected<bool> run_nft(const std::string& script) {
  return nft_session().run(script);
}

std::optional<boost::asio::ip::tcp::endpoint> original_destination(
    boost::asio::ip::tcp::socket& socket) {
  const int fd = socket.native_handle();
  sockaddr_storage storage{};
  socklen_t length = sizeof storage;
  if (socket.local_endpoint().address().is_v4()) {
    if (::getsockopt(fd, SOL_IP, so_original_dst, &storage, &length) != 0) return std::nullopt;
    const auto& in = reinterpret_cast<const sockaddr_in&>(storage);
    return boost::asio::ip::tcp::endpoint(boost::asio::ip::address_v4(ntohl(in.sin_addr.s_addr)),
                                          ntohs(in.sin_port));
  }
  if (::getsockopt(fd, SOL_IPV6, ip6t_so_original_dst, &storage, &length) != 0) return std::nullopt;
  const auto& in6 = reinterpret_cast<const sockaddr_in6&>(storage);
  boost::asio::ip::address_v6::bytes_type bytes;
  std::copy(std::begin(in6.sin6_addr.s6_addr), std::end(in6.sin6_addr.s6_addr), bytes.begin());
  // A link-local destination means nothing without its interface: the kernel gives the
  // interface our socket is tied to, the app's link (the rules DNAT such connections to
  // the app's own address on it, so they arrive through that interface). Should it give
  // none, the address we were reached at has the same scope.
  auto scope = in6.sin6_scope_id;
  const boost::asio::ip::address_v6 original(bytes);
  if (scope == 0 && original.is_link_local()) {
    boost::system::error_code ec;
    const auto local = socket.local_endpoint(ec);
    if (!ec && local.address().is_v6()) scope = local.address().to_v6().scope_id();
  }
  return boost::asio::ip::tcp::endpoint(boost::asio::ip::address_v6(bytes, scope),
                                        ntohs(in6.sin6_port));
}

}  // namespace fleety::intercept
