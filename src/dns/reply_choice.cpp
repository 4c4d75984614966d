#include "dns/reply_choice.hpp"

namespace fleety::dns {

reply_choice choose_reply(std::span<const reply_status> statuses, bool deadline_passed) {
  using verdict = reply_choice::verdict;
  // At the deadline a path that has not answered is as good as one that failed.
  const auto failed = [&](reply_status s) {
    return s == reply_status::failed || (deadline_passed && s == reply_status::pending);
  };
  if (statuses.empty()) return {verdict::fail, 0};
  if (statuses[0] == reply_status::succeeded) return {verdict::use, 0};
  // The preferred path may still answer: its reply is the one the app would have got
  // without fleety, so the others wait for it.
  if (!failed(statuses[0])) return {verdict::wait, 0};
  bool all_failed = true;
  for (std::size_t k = 1; k < statuses.size(); ++k) {
    if (statuses[k] == reply_status::succeeded) return {verdict::use, k};
    all_failed = all_failed && failed(statuses[k]);
  }
  return {all_failed ? verdict::fail : verdict::wait, 0};
}

}  // namespace fleety::dns
