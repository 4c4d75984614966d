// fleety-delayline: an NFQUEUE consumer that adds a fixed one-way delay and
// random loss to each direction of a lab path.
//
// The kernel here has no netem qdisc, so the lab routers send every forwarded
// packet to two netfilter queues (one per direction, iptables-legacy NFQUEUE
// without --queue-bypass). This program receives only the packet metadata
// (NFQNL_COPY_META), stamps each packet with CLOCK_MONOTONIC when it arrives,
// drops it with the configured probability (seeded PRNG), and otherwise holds
// it in a FIFO until arrival + delay, then accepts it. Releases are batched
// with nfq_set_verdict_batch (one verdict accepts every held packet up to an
// id), and the loop sleeps in ppoll until the head packet is due, with a 1 ns
// timer slack and SCHED_FIFO when permitted.
//
// Delay and loss can be changed at run time: on SIGHUP the --control file is
// re-read (tokens like "up_delay_us=25000 down_delay_us=25000 up_loss=0.5
// down_loss=0"). A packet never overtakes an earlier one of its direction: when
// the delay shrinks, new packets wait behind the old ones (FIFO).
//
// SIGTERM/SIGINT: release what is held, unbind, print counters, exit 0.
// SIGUSR1: print counters to stderr.

#include <arpa/inet.h>
#include <getopt.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <linux/netlink.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <limits>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <string_view>

namespace {

volatile sig_atomic_t g_terminate = 0;
volatile sig_atomic_t g_reload = 0;
volatile sig_atomic_t g_report = 0;

void on_signal(int sig) {
  switch (sig) {
    case SIGHUP:
      g_reload = 1;
      break;
    case SIGUSR1:
      g_report = 1;
      break;
    default:
      g_terminate = 1;
      break;
  }
}

constexpr const char* kProg = "fleety-delayline";

int64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000LL + ts.tv_nsec;
}

struct Held {
  uint32_t id;
  int64_t due_ns;
};

struct Direction {
  const char* name = "";
  uint16_t queue_num = 0;
  nfq_q_handle* qh = nullptr;
  int64_t delay_ns = 0;
  double loss = 0.0;  // probability in [0, 1]
  std::mt19937_64 rng;
  std::uniform_real_distribution<double> uniform{0.0, 1.0};
  std::deque<Held> held;
  int64_t last_due_ns = std::numeric_limits<int64_t>::min();
  size_t max_held = 100000;
  bool overflow_reported = false;
  // counters
  uint64_t received = 0;
  uint64_t accepted = 0;
  uint64_t lost = 0;
  uint64_t overflow = 0;
  uint64_t verdict_errors = 0;
  size_t peak_held = 0;
};

struct Options {
  std::optional<uint16_t> up_queue;
  std::optional<uint16_t> down_queue;
  int64_t up_delay_us = 0;
  int64_t down_delay_us = 0;
  double up_loss_pct = 0.0;
  double down_loss_pct = 0.0;
  uint64_t seed = 1;
  std::string control_file;
  size_t max_held = 100000;
  int rt_priority = 10;
  bool realtime = true;
};

void usage(FILE* out) {
  std::fprintf(out,
               "usage: %s [--up-queue N] [--down-queue N] [--up-delay-us US] "
               "[--down-delay-us US]\n"
               "       [--up-loss PCT] [--down-loss PCT] [--seed N] [--control FILE]\n"
               "       [--max-held N] [--rt-priority N | --no-rt]\n"
               "Holds each packet of NFQUEUE queue N for the direction's delay (FIFO) and\n"
               "drops it with the direction's loss probability (percent). On SIGHUP re-reads\n"
               "FILE: 'up_delay_us=25000 down_delay_us=25000 up_loss=0.5 down_loss=0'.\n"
               "SIGUSR1 prints counters; SIGTERM exits cleanly. At least one queue is needed.\n",
               kProg);
}

bool parse_int(const char* s, int64_t min, int64_t max, int64_t& out) {
  if (s == nullptr || *s == '\0') return false;
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < min || v > max) return false;
  out = v;
  return true;
}

bool parse_pct(const char* s, double& out) {
  if (s == nullptr || *s == '\0') return false;
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  if (errno != 0 || end == s) return false;
  if (*end == '%') ++end;
  if (*end != '\0' || !(v >= 0.0) || v > 100.0) return false;
  out = v;
  return true;
}

void set_params(Direction& d, int64_t delay_us, double loss_pct) {
  d.delay_ns = delay_us * 1000;
  d.loss = loss_pct / 100.0;
}

void print_params(const char* why, const Direction* dirs, size_t n) {
  std::fprintf(stderr, "%s: %s:", kProg, why);
  for (size_t i = 0; i < n; ++i) {
    const Direction& d = dirs[i];
    if (d.qh == nullptr) continue;
    std::fprintf(stderr, " %s(queue %u) delay=%lldus loss=%.4g%%", d.name,
                 static_cast<unsigned>(d.queue_num), static_cast<long long>(d.delay_ns / 1000),
                 d.loss * 100.0);
  }
  std::fprintf(stderr, "\n");
}

void print_counters(const Direction* dirs, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const Direction& d = dirs[i];
    if (d.qh == nullptr) continue;
    std::fprintf(stderr,
                 "%s: %s: received=%llu accepted=%llu lost=%llu overflow=%llu held=%zu "
                 "peak_held=%zu verdict_errors=%llu\n",
                 kProg, d.name, static_cast<unsigned long long>(d.received),
                 static_cast<unsigned long long>(d.accepted),
                 static_cast<unsigned long long>(d.lost),
                 static_cast<unsigned long long>(d.overflow), d.held.size(), d.peak_held,
                 static_cast<unsigned long long>(d.verdict_errors));
  }
}

// Reads "key=value" tokens separated by whitespace; '#' starts a comment.
// Keys absent from the file keep their current value. Returns false (and
// changes nothing) on a malformed file.
bool reload_control(const std::string& path, Direction& up, Direction& down) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "%s: cannot read control file %s: %s\n", kProg, path.c_str(),
                 std::strerror(errno));
    return false;
  }
  int64_t up_delay_us = up.delay_ns / 1000;
  int64_t down_delay_us = down.delay_ns / 1000;
  double up_loss = up.loss * 100.0;
  double down_loss = down.loss * 100.0;
  std::string line;
  while (std::getline(in, line)) {
    if (const auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream tokens(line);
    std::string tok;
    while (tokens >> tok) {
      const auto eq = tok.find('=');
      if (eq == std::string::npos) {
        std::fprintf(stderr, "%s: control file %s: bad token '%s'\n", kProg, path.c_str(),
                     tok.c_str());
        return false;
      }
      const std::string key = tok.substr(0, eq);
      const std::string value = tok.substr(eq + 1);
      bool ok = false;
      if (key == "up_delay_us") {
        ok = parse_int(value.c_str(), 0, 3'600'000'000LL, up_delay_us);
      } else if (key == "down_delay_us") {
        ok = parse_int(value.c_str(), 0, 3'600'000'000LL, down_delay_us);
      } else if (key == "up_loss") {
        ok = parse_pct(value.c_str(), up_loss);
      } else if (key == "down_loss") {
        ok = parse_pct(value.c_str(), down_loss);
      } else {
        std::fprintf(stderr, "%s: control file %s: unknown key '%s' (ignored)\n", kProg,
                     path.c_str(), key.c_str());
        ok = true;
      }
      if (!ok) {
        std::fprintf(stderr, "%s: control file %s: bad value in '%s'\n", kProg, path.c_str(),
                     tok.c_str());
        return false;
      }
    }
  }
  set_params(up, up_delay_us, up_loss);
  set_params(down, down_delay_us, down_loss);
  return true;
}

int on_packet(nfq_q_handle* qh, nfgenmsg* /*msg*/, nfq_data* nfa, void* data) {
  auto* d = static_cast<Direction*>(data);
  const nfqnl_msg_packet_hdr* ph = nfq_get_msg_packet_hdr(nfa);
  if (ph == nullptr) return 0;
  const uint32_t id = ntohl(ph->packet_id);
  const int64_t arrival = now_ns();
  ++d->received;
  if (d->loss > 0.0 && d->uniform(d->rng) < d->loss) {
    ++d->lost;
    if (nfq_set_verdict(qh, id, NF_DROP, 0, nullptr) < 0) ++d->verdict_errors;
    return 0;
  }
  if (d->held.size() >= d->max_held) {
    ++d->overflow;
    if (!d->overflow_reported) {
      d->overflow_reported = true;
      std::fprintf(stderr,
                   "%s: %s: more than %zu packets held, dropping the excess (reported once)\n",
                   kProg, d->name, d->max_held);
    }
    if (nfq_set_verdict(qh, id, NF_DROP, 0, nullptr) < 0) ++d->verdict_errors;
    return 0;
  }
  // FIFO: never schedule a packet before the one ahead of it.
  int64_t due = arrival + d->delay_ns;
  if (due < d->last_due_ns) due = d->last_due_ns;
  d->last_due_ns = due;
  d->held.push_back(Held{id, due});
  if (d->held.size() > d->peak_held) d->peak_held = d->held.size();
  return 0;
}

// Accepts every held packet that is due; one batch verdict covers them all
// because they are a prefix of the queue in id order.
void release_due(Direction& d, int64_t now) {
  if (d.held.empty() || d.held.front().due_ns > now) return;
  uint32_t last_id = 0;
  uint64_t n = 0;
  while (!d.held.empty() && d.held.front().due_ns <= now) {
    last_id = d.held.front().id;
    d.held.pop_front();
    ++n;
  }
  if (nfq_set_verdict_batch(d.qh, last_id, NF_ACCEPT) < 0) {
    ++d.verdict_errors;
  } else {
    d.accepted += n;
  }
}

void release_all(Direction& d) {
  if (d.qh == nullptr || d.held.empty()) return;
  const uint32_t last_id = d.held.back().id;
  const uint64_t n = d.held.size();
  d.held.clear();
  if (nfq_set_verdict_batch(d.qh, last_id, NF_ACCEPT) < 0) {
    ++d.verdict_errors;
  } else {
    d.accepted += n;
  }
}

bool parse_args(int argc, char** argv, Options& o) {
  enum : int {
    kUpQueue = 1000,
    kDownQueue,
    kUpDelay,
    kDownDelay,
    kUpLoss,
    kDownLoss,
    kSeed,
    kControl,
    kMaxHeld,
    kRtPrio,
    kNoRt,
    kHelp
  };
  static const option longopts[] = {
      {"up-queue", required_argument, nullptr, kUpQueue},
      {"down-queue", required_argument, nullptr, kDownQueue},
      {"up-delay-us", required_argument, nullptr, kUpDelay},
      {"down-delay-us", required_argument, nullptr, kDownDelay},
      {"up-loss", required_argument, nullptr, kUpLoss},
      {"down-loss", required_argument, nullptr, kDownLoss},
      {"seed", required_argument, nullptr, kSeed},
      {"control", required_argument, nullptr, kControl},
      {"max-held", required_argument, nullptr, kMaxHeld},
      {"rt-priority", required_argument, nullptr, kRtPrio},
      {"no-rt", no_argument, nullptr, kNoRt},
      {"help", no_argument, nullptr, kHelp},
      {nullptr, 0, nullptr, 0},
  };
  int c = 0;
  while ((c = getopt_long(argc, argv, "h", longopts, nullptr)) != -1) {
    int64_t v = 0;
    bool ok = true;
    switch (c) {
      case kUpQueue:
        ok = parse_int(optarg, 0, 65535, v);
        o.up_queue = static_cast<uint16_t>(v);
        break;
      case kDownQueue:
        ok = parse_int(optarg, 0, 65535, v);
        o.down_queue = static_cast<uint16_t>(v);
        break;
      case kUpDelay:
        ok = parse_int(optarg, 0, 3'600'000'000LL, o.up_delay_us);
        break;
      case kDownDelay:
        ok = parse_int(optarg, 0, 3'600'000'000LL, o.down_delay_us);
        break;
      case kUpLoss:
        ok = parse_pct(optarg, o.up_loss_pct);
        break;
      case kDownLoss:
        ok = parse_pct(optarg, o.down_loss_pct);
        break;
      case kSeed:
        ok = parse_int(optarg, 0, std::numeric_limits<int64_t>::max(), v);
        o.seed = static_cast<uint64_t>(v);
        break;
      case kControl:
        o.control_file = optarg;
        break;
      case kMaxHeld:
        ok = parse_int(optarg, 1, 10'000'000, v);
        o.max_held = static_cast<size_t>(v);
        break;
      case kRtPrio:
        ok = parse_int(optarg, 1, 99, v);
        o.rt_priority = static_cast<int>(v);
        break;
      case kNoRt:
        o.realtime = false;
        break;
      case 'h':
      case kHelp:
        usage(stdout);
        std::exit(0);
      default:
        usage(stderr);
        return false;
    }
    if (!ok) {
      std::fprintf(stderr, "%s: bad value '%s' for %s\n", kProg, optarg != nullptr ? optarg : "",
                   argv[optind - 1]);
      return false;
    }
  }
  if (optind != argc) {
    std::fprintf(stderr, "%s: unexpected argument '%s'\n", kProg, argv[optind]);
    return false;
  }
  if (!o.up_queue && !o.down_queue) {
    std::fprintf(stderr, "%s: give --up-queue and/or --down-queue\n", kProg);
    return false;
  }
  if (o.up_queue && o.down_queue && *o.up_queue == *o.down_queue) {
    std::fprintf(stderr, "%s: --up-queue and --down-queue must differ\n", kProg);
    return false;
  }
  return true;
}

bool bind_queue(nfq_handle* h, Direction& d, size_t kernel_maxlen) {
  d.qh = nfq_create_queue(h, d.queue_num, &on_packet, &d);
  if (d.qh == nullptr) {
    std::fprintf(stderr, "%s: cannot bind NFQUEUE %u (%s): another consumer bound, or not root?\n",
                 kProg, static_cast<unsigned>(d.queue_num), std::strerror(errno));
    return false;
  }
  if (nfq_set_mode(d.qh, NFQNL_COPY_META, 0) < 0) {
    std::fprintf(stderr, "%s: cannot set COPY_META on queue %u: %s\n", kProg,
                 static_cast<unsigned>(d.queue_num), std::strerror(errno));
    return false;
  }
  if (nfq_set_queue_maxlen(d.qh, static_cast<uint32_t>(kernel_maxlen)) < 0) {
    std::fprintf(stderr, "%s: warning: cannot set queue %u maxlen: %s\n", kProg,
                 static_cast<unsigned>(d.queue_num), std::strerror(errno));
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  if (!parse_args(argc, argv, opt)) return 2;

  // Signals are blocked except while sleeping in ppoll: no lost wakeups.
  sigset_t blocked;
  sigemptyset(&blocked);
  for (int s : {SIGHUP, SIGTERM, SIGINT, SIGUSR1}) sigaddset(&blocked, s);
  sigset_t waitmask;
  sigprocmask(SIG_BLOCK, &blocked, &waitmask);
  for (int s : {SIGHUP, SIGTERM, SIGINT, SIGUSR1}) sigdelset(&waitmask, s);
  struct sigaction sa {};
  sa.sa_handler = &on_signal;
  sigemptyset(&sa.sa_mask);
  for (int s : {SIGHUP, SIGTERM, SIGINT, SIGUSR1}) sigaction(s, &sa, nullptr);

  if (prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL) != 0) {
    std::fprintf(stderr, "%s: warning: PR_SET_TIMERSLACK failed: %s\n", kProg,
                 std::strerror(errno));
  }
  if (opt.realtime) {
    sched_param sp{};
    sp.sched_priority = opt.rt_priority;
    if (sched_setscheduler(0, SCHED_FIFO, &sp) != 0) {
      std::fprintf(stderr, "%s: note: SCHED_FIFO not permitted (%s), using normal scheduling\n",
                   kProg, std::strerror(errno));
    }
  }

  std::array<Direction, 2> dirs;
  Direction& up = dirs[0];
  Direction& down = dirs[1];
  up.name = "up";
  down.name = "down";
  set_params(up, opt.up_delay_us, opt.up_loss_pct);
  set_params(down, opt.down_delay_us, opt.down_loss_pct);
  up.rng.seed(opt.seed * 2 + 1);
  down.rng.seed(opt.seed * 2 + 2);
  for (Direction& d : dirs) d.max_held = opt.max_held;

  nfq_handle* h = nfq_open();
  if (h == nullptr) {
    std::fprintf(stderr, "%s: nfq_open failed: %s (root? nfnetlink_queue available?)\n", kProg,
                 std::strerror(errno));
    return 1;
  }
  const int fd = nfq_fd(h);
  // A large receive buffer absorbs bursts; SO_RCVBUFFORCE ignores rmem_max (root).
  const int rcvbuf = 32 * 1024 * 1024;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) != 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  }
  const size_t kernel_maxlen = opt.max_held + 65536;
  bool ok = true;
  if (opt.up_queue) {
    up.queue_num = *opt.up_queue;
    ok = ok && bind_queue(h, up, kernel_maxlen);
  }
  if (ok && opt.down_queue) {
    down.queue_num = *opt.down_queue;
    ok = ok && bind_queue(h, down, kernel_maxlen);
  }
  if (!ok) {
    for (Direction& d : dirs)
      if (d.qh != nullptr) nfq_destroy_queue(d.qh);
    nfq_close(h);
    return 1;
  }
  print_params("ready", dirs.data(), dirs.size());

  alignas(8) static char buf[256 * 1024];
  uint64_t enobufs = 0;
  int exit_code = 0;
  while (g_terminate == 0) {
    if (g_reload != 0) {
      g_reload = 0;
      if (opt.control_file.empty()) {
        std::fprintf(stderr, "%s: SIGHUP without --control: nothing to re-read\n", kProg);
      } else if (reload_control(opt.control_file, up, down)) {
        print_params("reloaded", dirs.data(), dirs.size());
      }
    }
    if (g_report != 0) {
      g_report = 0;
      print_counters(dirs.data(), dirs.size());
    }

    int64_t now = now_ns();
    int64_t next_due = std::numeric_limits<int64_t>::max();
    for (Direction& d : dirs) {
      if (d.qh == nullptr) continue;
      release_due(d, now);
      if (!d.held.empty() && d.held.front().due_ns < next_due) next_due = d.held.front().due_ns;
    }

    timespec timeout{};
    timespec* tp = nullptr;
    if (next_due != std::numeric_limits<int64_t>::max()) {
      const int64_t wait = next_due > now ? next_due - now : 0;
      timeout.tv_sec = static_cast<time_t>(wait / 1'000'000'000LL);
      timeout.tv_nsec = static_cast<long>(wait % 1'000'000'000LL);
      tp = &timeout;
    }
    pollfd pfd{fd, POLLIN, 0};
    const int pr = ppoll(&pfd, 1, tp, &waitmask);
    if (pr < 0) {
      if (errno == EINTR) continue;
      std::fprintf(stderr, "%s: ppoll: %s\n", kProg, std::strerror(errno));
      exit_code = 1;
      break;
    }
    if (pr == 0 || (pfd.revents & POLLIN) == 0) continue;

    // Drain what is there, but come back to releases regularly under load.
    for (int i = 0; i < 512; ++i) {
      const ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (errno == ENOBUFS) {
          // The kernel dropped queue messages (socket buffer full): those
          // packets are lost; carry on.
          if (enobufs++ == 0) {
            std::fprintf(stderr, "%s: warning: netlink receive buffer overrun (ENOBUFS)\n", kProg);
          }
          continue;
        }
        std::fprintf(stderr, "%s: recv: %s\n", kProg, std::strerror(errno));
        exit_code = 1;
        g_terminate = 1;
        break;
      }
      nfq_handle_packet(h, buf, static_cast<int>(n));
    }
  }

  for (Direction& d : dirs) release_all(d);
  print_counters(dirs.data(), dirs.size());
  if (enobufs != 0) {
    std::fprintf(stderr, "%s: ENOBUFS events: %llu\n", kProg,
                 static_cast<unsigned long long>(enobufs));
  }
  for (Direction& d : dirs)
    if (d.qh != nullptr) nfq_destroy_queue(d.qh);
  nfq_close(h);
  std::fprintf(stderr, "%s: exiting\n", kProg);
  return exit_code;
}
