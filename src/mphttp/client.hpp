#pragma once
// The download client (`fleety get`): one URL into a file over every path, without the
// daemon, with the proxy's multipath fetch (multipath_fetch.hpp). It is the TLS endpoint
// itself, so https:// splits too: a verified TLS connection on every path (paper §7).
// Resumes what an interrupted run left (FILE.fleety beside FILE).

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "mphttp/download_rules.hpp"

namespace fleety::mphttp {

struct download_options {
  std::string url;
  std::string output;  ///< the file; "-": standard output (no resume)
  /// Paths in preference order and the scheduler's and timeouts' settings; config.paths
  /// whose interface doesn't exist are left out.
  core::config config;
  std::string ca_file;  ///< trust anchors (PEM) besides the system's, for https
  existing_file existing = existing_file::refuse;
  std::optional<std::string> expected_sha256;  ///< lowercase hex
  int max_redirects = 5;
  std::chrono::seconds max_time{0};  ///< 0: no limit on the whole download
  /// Called about every 250 ms while bytes come in, and once at the end.
  std::function<void(const download_progress&)> on_progress{};
  /// Called with a sentence for the user (resuming, a path failed, a redirect, ...).
  std::function<void(const std::string&)> on_note{};
};

struct download_result {
  bool ok = false;
  int exit_code = 1;  ///< 0 ok, 1 failed, 3 sha256 mismatch, 130 interrupted
  std::string error;  ///< one sentence, when not ok
  std::string file;
  std::string url;                 ///< after redirects
  std::uint64_t size = 0;          ///< the object's (the file's) size
  std::uint64_t resumed_from = 0;  ///< bytes kept from an earlier run
  std::uint64_t fetched = 0;       ///< bytes this run wrote
  double seconds = 0;
  bool multipath = false;
  std::string sha256;                ///< of the whole file, when complete
  std::vector<path_progress> paths;  ///< what each path carried (rate: the run's average)
};

/// Downloads options.url into options.output. Runs its own event loop; SIGINT/SIGTERM
/// stop it cleanly (the partial file and its record stay for the next run).
download_result download(const download_options& options);

}  // namespace fleety::mphttp
