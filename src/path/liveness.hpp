#pragma once
// The one answer to "is this path up" (issue 15, item 5): the path monitor's. The
// selector, the status, the metrics, the relays, the DNS duplicator and the proxy all
// ask it, so that no two of them disagree about a path. Header only (no link needed).

#include <cstddef>
#include <functional>

namespace fleety::path {

/// Whether path `path` (its index in the configured order, the order of [[path]]) can
/// carry traffic now. fleetyd backs it with path::monitor::up (monitor::as_liveness()):
/// the interface exists, is up, has carrier and an address that is not IPv6 link-local.
/// Cheap (no system call); call it from the io_context's thread only.
using liveness = std::function<bool(std::size_t path)>;

/// `up(path)`, where an empty `up` (nobody measures the paths, e.g. in a unit test) counts
/// every path as up: then each is tried.
inline bool is_up(const liveness& up, std::size_t path) {
  return !up || up(path);
}

}  // namespace fleety::path
