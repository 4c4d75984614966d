#pragma once
// The path selector (paper §4.4) for flows that are not split: TLS, other TCP, and
// HTTP the feature rules keep on one path. Which path a new flow takes, and the relay
// that carries it. The choice is a pure function; the relay is thin I/O (splice(2)).

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/config.hpp"
#include "path/quality.hpp"

namespace fleety::select {

using clock_type = std::chrono::steady_clock;

/// What the selector knows of a path.
struct path_view {
  bool up = false;
  bool cellular = false;
  path::quality quality;
  /// What the path can carry (its estimator's rate), for min_throughput: what it
  /// carries now is 0 while it is idle.
  std::optional<double> capacity_bps;
};

/// Whether a path meets a class now. A limit whose measurement is unknown (a path not
/// measured yet) is not held against it; a path that is down meets nothing.
bool meets(const core::qos_class_config& qos, const path_view& path);

/// How far a path misses a class: 0 when it meets it, else the sum of each limit's
/// relative excess (RTT 200 ms against 100 ms: 1.0). For the least bad path when none fits.
double shortfall(const core::qos_class_config& qos, const path_view& path);

/// The path selector (paper §4.4): which path a new relayed flow takes for its QoS class,
/// and when a flow should leave its path. A pure state machine of time: the monitor feeds
/// it every path's view on each tick.
class selector {
 public:
  selector(std::vector<core::qos_class_config> classes, core::selector_config config);

  /// Every path's view, in preference order (cheapest first), the same paths each time.
  void update(const std::vector<path_view>& paths, clock_type::time_point now);

  /// The path for a new flow of class `qos` (an unknown class is the default class): the
  /// cheapest up path that meets it, once it has met it for `hysteresis` if it missed it
  /// before; else the cheapest up path that meets it now; else the up path that misses it
  /// least. With `cellular_capped`, cellular paths only when no other path is up. nullopt
  /// when no path is up.
  std::optional<std::size_t> choose(std::string_view qos, bool cellular_capped,
                                    clock_type::time_point now) const;

  /// Whether a flow of class `qos` on path `path` should be reset so that its app
  /// reconnects elsewhere: its path is down while another is up, or its path has missed
  /// the class for `reset_after` while the path `choose` gives meets it.
  bool should_reset(std::string_view qos, std::size_t path, bool cellular_capped,
                    clock_type::time_point now) const;

  const std::vector<path_view>& paths() const { return paths_; }
  /// The class `qos` stands for (the default class for an unknown name).
  const core::qos_class_config& qos_class(std::string_view qos) const;

 private:
  struct track {
    std::optional<clock_type::time_point> met_since;     ///< meeting it without a break since
    std::optional<clock_type::time_point> missed_since;  ///< missing it without a break since
    bool on_probation = false;  ///< missed it, and hasn't met it for `hysteresis` since
  };
  std::size_t class_index(std::string_view qos) const;
  bool eligible(const track& t, clock_type::time_point now) const;
  bool allowed(std::size_t path, bool cellular_capped) const;

  std::vector<core::qos_class_config> classes_;
  core::selector_config config_;
  std::size_t default_class_ = 0;
  std::vector<path_view> paths_;
  std::vector<std::vector<track>> tracks_;  ///< [class][path]
};

/// The relayed flows under way, so that the selector's verdicts can reach them: each
/// says its app, class and path, and how to reset it. Entries are owned by the relaying
/// coroutine (a `registration` removes its entry when the relay ends).
class flow_table {
 public:
  struct flow {
    std::uint64_t id = 0;
    std::string app;  ///< empty: not a known app
    std::string qos;  ///< its class's name
    std::size_t path = 0;
    std::string what;  ///< for logs: "TCP to 198.51.100.7:443"
    clock_type::time_point started{};
    std::function<void()> reset;  ///< resets both sides: the app reconnects
  };

  /// Removes its flow when destroyed; harmless after the table is gone (a relay's frame
  /// may outlive the daemon's objects when the io_context is torn down).
  class registration {
   public:
    registration() = default;
    registration(std::weak_ptr<std::map<std::uint64_t, flow>> flows, std::uint64_t id)
        : flows_(std::move(flows)), id_(id) {}
    registration(registration&& other) noexcept : flows_(std::move(other.flows_)), id_(other.id_) {}
    registration& operator=(registration&& other) noexcept {
      if (this != &other) {
        release();
        flows_ = std::move(other.flows_);
        id_ = other.id_;
      }
      return *this;
    }
    registration(const registration&) = delete;
    registration& operator=(const registration&) = delete;
    ~registration() { release(); }

   private:
    void release() {
      if (auto flows = flows_.lock()) flows->erase(id_);
      flows_.reset();
    }
    std::weak_ptr<std::map<std::uint64_t, flow>> flows_;
    std::uint64_t id_ = 0;
  };

  /// Adds `f` until the returned registration is destroyed.
  [[nodiscard]] registration add(flow f) {
    const auto id = f.id;
    (*flows_)[id] = std::move(f);
    return registration(flows_, id);
  }
  const std::map<std::uint64_t, flow>& flows() const { return *flows_; }
  /// Resets flow `id` once (its reset function is used up). False when there is no such
  /// flow or its reset is under way already. (Its relay ends, and removes it, later.)
  bool reset(std::uint64_t id) {
    auto it = flows_->find(id);
    if (it == flows_->end() || !it->second.reset) return false;
    const auto reset_both = std::exchange(it->second.reset, nullptr);
    reset_both();
    return true;
  }
  /// Resets every flow for which `verdict(flow)` is true; returns how many. (A flow's
  /// reset ends its relay, which removes it later, not during this call.)
  template <class Verdict>
  std::size_t reset_if(Verdict verdict) {
    std::vector<std::function<void()>> resets;
    for (auto& [id, f] : *flows_)
      if (verdict(f) && f.reset) resets.push_back(std::exchange(f.reset, nullptr));
    for (auto& r : resets) r();
    return resets.size();
  }

 private:
  std::shared_ptr<std::map<std::uint64_t, flow>> flows_ =
      std::make_shared<std::map<std::uint64_t, flow>>();
};

/// Bytes a relay carried each way.
struct relay_totals {
  std::uint64_t app_to_server = 0;
  std::uint64_t server_to_app = 0;
  bool idle_timeout = false;  ///< ended because nothing moved for `idle_timeout`
  bool reset = false;         ///< a side failed: the other was reset to say so
};

/// Relays bytes both ways with splice(2) (no copy through user space) until both
/// sides have closed their sending half, either side fails (the other is then reset),
/// or nothing moves for `idle_timeout`. Bytes the app sent already but fleetyd only
/// peeked at are still in its socket and go first.
boost::asio::awaitable<relay_totals> async_relay(boost::asio::ip::tcp::socket& app,
                                                 boost::asio::ip::tcp::socket& server,
                                                 std::chrono::steady_clock::duration idle_timeout);

}  // namespace fleety::select
