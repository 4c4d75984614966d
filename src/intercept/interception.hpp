#pragma once
// Interception as the daemon runs it (the thin I/O around app_table and build_ruleset):
// fleetyd's nftables table (one left by an older fleetyd is replaced in the same
// transaction), the cgroup `fleety run` puts apps in, and the listening sockets for the
// redirected connections and the apps' DNS. The table goes away with the object, and
// with the process however it ends: it is owned by the object's netlink socket.

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/udp.hpp>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "core/expected.hpp"
#include "intercept/app_table.hpp"
#include "intercept/intercept.hpp"

namespace fleety::dns {
class duplicator;
}
namespace fleety::net {
class task_group;
}

namespace fleety::intercept {

/// A process that asks to become an app (`fleety run`): its pid and its user.
struct joining_process {
  std::int32_t pid = 0;
  std::uint32_t uid = 0;
};

/// Owns the table and, until serve(), the listening sockets. Not thread-safe.
class interception {
 public:
  /// Sets the own socket mark, finds the cgroup2 mount, makes the cgroup "fleety", opens
  /// the listeners (127.0.0.1, and [::] unless this host has no IPv6 on loopback: that
  /// loses IPv6 only, with a warning) and loads the rules. The error says what failed
  /// ("not permitted" when CAP_NET_ADMIN is missing). `config` outlives the object.
  static core::expected<std::unique_ptr<interception>> start(boost::asio::io_context& io,
                                                             const core::config& config);

  /// Removes a table left by a fleetyd that crashed while interception was on on a kernel
  /// without table ownership (or by a version before it): it would send the apps to a
  /// port nobody listens on. A running fleetyd's own table can't be removed from here.
  /// Does nothing without root.
  static void remove_stale();

  /// Spawns the listeners into `tasks`: the redirected connections
  /// (run_intercept_listener) and the apps' DNS over UDP and TCP (dns::run_dns_udp,
  /// run_dns_tcp). Once. Everything referenced must outlive the tasks.
  void serve(net::task_group& tasks, dns::duplicator& duplicator, mphttp::proxy_context& context,
             flow_placement& placement);

  const app_table& apps() const { return apps_; }
  /// Enables or disables an app and loads the rules again (undone if nft refuses).
  core::expected<bool> set_enabled(const std::string& name, bool enabled);
  /// `fleety run --app NAME` starts NAME: the cgroup fleety/NAME is made (fleetyd writes
  /// only below its own fleety/), the rules learn it, and when the app is enabled the
  /// `joining` process (the caller of fleety run, by the control socket's credentials) is
  /// moved into it — only a process of that same user, unless root asks. Whether the app
  /// is enabled.
  core::expected<bool> starting(const std::string& name,
                                const std::optional<joining_process>& joining);

  /// Removes the table.
  ~interception();
  interception(const interception&) = delete;
  interception& operator=(const interception&) = delete;

 private:
  explicit interception(const core::config& config);
  /// The rules for the apps as they are now, loaded in one transaction.
  core::expected<bool> apply();

  const core::intercept_config& ic_;
  std::filesystem::path mount_;  ///< the cgroup2 mount ("/sys/fs/cgroup")
  std::string prefix_;           ///< the mount relative to /sys/fs/cgroup ("" or "unified")
  app_table apps_;
  /// Until serve(): per address family, the redirected connections' and DNS sockets.
  std::vector<boost::asio::ip::tcp::acceptor> acceptors_;
  std::vector<boost::asio::ip::tcp::acceptor> dns_acceptors_;
  std::vector<boost::asio::ip::udp::socket> dns_sockets_;
  nft_session nft_;  ///< owns the table: declared before it is loaded, closed last
  bool table_loaded_ = false;
  bool owned_ = true;  ///< false on a kernel that refuses `flags owner`
};

}  // namespace fleety::intercept
