#pragma once
// Name resolution through one path: the query leaves through the path's interface
// to that path's resolvers, so each path learns its own ISP's answer for a host
// (paper §4.1, "DNS information database"). Built on c-ares, driven by Asio.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/system/error_code.hpp>
#include <boost/system/result.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dns/answer_vetting.hpp"

namespace fleety::dns {

/// Why a resolution failed.
enum class errc {
  /// The name has no address (NXDOMAIN or no A/AAAA record).
  not_found = 1,
  /// No resolver answered before the deadline.
  timed_out,
  /// The resolvers answered with an error (SERVFAIL, REFUSED, malformed reply).
  server_failure,
  /// The host name is not a valid DNS name.
  bad_name,
  /// c-ares could not be set up (bad server address, no memory).
  setup_failed,
  /// The resolver was destroyed or the operation cancelled.
  cancelled,
};

const boost::system::error_category& error_category();
boost::system::error_code make_error_code(errc e);

/// Addresses of a host as seen through one path.
struct resolution {
  std::vector<boost::asio::ip::address> addresses;  ///< IPv4 first, then IPv6; never empty
  std::chrono::seconds ttl{0};                      ///< smallest TTL among the records
};

/// Resolves names through one network path. One instance per path, owned by the
/// daemon; not thread-safe (use from the io_context thread that owns `executor`).
class path_resolver {
 public:
  struct options {
    std::string interface;  ///< device the queries leave through ("wlan0"); empty: any
    std::vector<std::string>
        servers;  ///< "198.18.0.53", "127.0.0.1:5353", "[::1]:53"; empty: /etc/resolv.conf
    std::chrono::milliseconds timeout{2000};  ///< whole-query deadline, all retries included
    int tries = 2;                            ///< attempts per server
    std::size_t max_cache_entries = 1024;     ///< answers kept until their TTL runs out
    /// What is accepted from the resolvers (vet_answer): TTL cap, no internal addresses
    /// for a public name. A name left with no address is not found.
    answer_rules rules;
  };

  /// Throws std::runtime_error with a clear message when c-ares cannot be set up
  /// (e.g. a server address that does not parse): this happens at daemon start.
  path_resolver(boost::asio::any_io_executor executor, options opts);
  ~path_resolver();
  path_resolver(const path_resolver&) = delete;
  path_resolver& operator=(const path_resolver&) = delete;

  /// A literal IPv4/IPv6 address is returned as is, without a query. Otherwise A and
  /// AAAA are asked; cached answers are served until their TTL expires.
  boost::asio::awaitable<boost::system::result<resolution>> async_resolve(std::string host);

  /// Sends a DNS message as it is (e.g. an app's query) through this path and returns
  /// the reply message, its ID set back to the query's. Within options::timeout.
  boost::asio::awaitable<boost::system::result<std::vector<std::uint8_t>>> async_query(
      std::vector<std::uint8_t> message);

  /// Keeps an answer learnt elsewhere (the DNS duplicator) for async_resolve, until its
  /// TTL runs out.
  void remember(std::string_view host, const resolution& answer);

  /// From now on the queries leave through `interface` to `servers` (empty: the
  /// system's): an uplink that took the path's slot (hot-plug). The queries in flight end
  /// cancelled and the cache is dropped. Throws like the constructor, keeping the old
  /// setup.
  void rebind(std::string interface, std::vector<std::string> servers);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace fleety::dns

template <>
struct boost::system::is_error_code_enum<fleety::dns::errc> : std::true_type {};
