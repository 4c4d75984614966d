#pragma once
// Which path's reply an app gets when its query was asked on every path (paper §4.1).
// The DNS duplicator's fan-out and the MPHTTP proxy's HTTP-DNS fan-out decide with this
// one rule, so that both answer an app the same way. Pure.

#include <cstddef>
#include <span>

namespace fleety::dns {

/// Where one path's copy of a query stands.
enum class reply_status {
  pending,    ///< asked, nothing back yet
  succeeded,  ///< a reply the app may be given
  failed,     ///< nothing usable: an error, a timeout, or an error reply (SERVFAIL, REFUSED)
};

/// What the asker does now.
struct reply_choice {
  enum class verdict {
    wait,  ///< undecided: the preferred path is still pending, or it failed and no other
           ///< path has succeeded while some are still pending
    use,   ///< give the app the reply of path `path`
    fail,  ///< every path failed: the app gets a failure
  };
  verdict decision = verdict::wait;
  std::size_t path = 0;  ///< with verdict::use: the index into the statuses given

  bool operator==(const reply_choice&) const = default;
};

/// The choice among the replies of the paths asked. `statuses`: one per path asked, in
/// preference order; index 0 is the preferred path. The preferred path's reply when it
/// succeeded; once it failed, the first other path (in preference order) that succeeded
/// so far, without waiting for the ones before it that are still pending; every path
/// failed: fail; else wait. With `deadline_passed` the asker waits no longer: paths still
/// pending count as failed (so the verdict is never wait). No path asked: fail.
reply_choice choose_reply(std::span<const reply_status> statuses, bool deadline_passed = false);

}  // namespace fleety::dns
