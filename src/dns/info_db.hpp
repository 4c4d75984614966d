#pragma once
// The DNS information database (paper §4.1): what each path's resolver answered for a
// name, so that each path fetches from its own ISP's server, and so that a flow known
// only by the address the app connected to can be named and mapped to the other paths'
// servers. Pure data, bounded; no I/O.

#include <boost/asio/ip/address.hpp>
#include <chrono>
#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dns/answer_vetting.hpp"

namespace fleety::dns {

class info_db {
 public:
  using clock_type = std::chrono::steady_clock;
  using address = boost::asio::ip::address;

  /// At most `max_names` names are kept; beyond that the entry that expires first goes.
  /// Every answer is vetted by `rules` (vet_answer) before it is kept.
  explicit info_db(std::size_t max_names = 4096, answer_rules rules = {})
      : max_names_(max_names), rules_(rules) {}

  /// Path `path` answered `addresses` for `name`, valid for `ttl` from `now` (at most
  /// the rules' max_ttl; internal addresses for a public name are left out). An empty
  /// answer forgets what the path had for the name.
  void record(std::string_view name, std::string_view path, std::vector<address> addresses,
              std::chrono::seconds ttl, clock_type::time_point now);

  /// What `path` answered for `name`, if it hasn't expired.
  std::optional<std::vector<address>> addresses(std::string_view name, std::string_view path,
                                                clock_type::time_point now) const;

  /// The name some path's answer gave `address` for (the most recently recorded).
  std::optional<std::string> name_of(const address& addr, clock_type::time_point now) const;

  /// Where `path` should go for a server the app reached at `addr`: the address `path`'s
  /// answer gave (same family) for the name `addr` was given for (paper §4.1: the app
  /// connects to A, the other path's server for that name is B). nullopt when the name
  /// or that path's answer is unknown, or when `path`'s answer contains `addr` itself.
  std::optional<address> counterpart(const address& addr, std::string_view path,
                                     clock_type::time_point now) const;

  /// Unexpired names.
  std::size_t size(clock_type::time_point now) const;

  /// "Video.Example.COM." → "video.example.com"
  static std::string normalize(std::string_view name);

 private:
  struct answer {
    std::vector<address> addresses;
    clock_type::time_point expires;
    clock_type::time_point recorded;
  };
  struct entry {
    std::map<std::string, answer, std::less<>> by_path;
    clock_type::time_point expires() const;
  };
  void evict(clock_type::time_point now);

  std::size_t max_names_;
  answer_rules rules_;
  std::map<std::string, entry, std::less<>> names_;
};

}  // namespace fleety::dns
