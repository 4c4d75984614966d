#pragma once
// `fleety get`: the download client's command line (get_command.cpp).

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace fleety::app {

struct get_args {
  std::string url;
  std::string output;
  std::vector<std::string> paths;
  std::vector<std::string> dns;
  std::string config;
  std::string mode;
  std::string ca_file;
  std::string sha256;
  bool resume_any = false;
  bool force = false;
  unsigned max_time_s = 0;
  bool quiet = false;
  bool verbose = false;
  bool json = false;
};

void add_get_options(CLI::App& get, get_args& args);
/// Runs the download; returns the exit code (0 ok, 1 failed, 2 bad input, 3 sha256 differs,
/// 130 interrupted).
int run_get(const get_args& args, bool as_json);

}  // namespace fleety::app
