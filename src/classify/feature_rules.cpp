#include <re2/re2.h>

#include <algorithm>
#include <array>
#include <cctype>

#include "classify/classify.hpp"

namespace fleety::classify {
namespace {

char lower(char c) {
  return static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                            [](char x, char y) { return lower(x) == lower(y); });
}

/// The path of a request target: origin-form up to '?' or '#'; for an absolute-form
/// target, what follows the authority.
std::string_view path_of(std::string_view target) {
  if (auto scheme = target.find("://"); scheme != std::string_view::npos && target[0] != '/') {
    const auto slash = target.find('/', scheme + 3);
    target = slash == std::string_view::npos ? std::string_view("/") : target.substr(slash);
  }
  return target.substr(0, target.find_first_of("?#"));
}

bool search(const re2::RE2& pattern, std::string_view text) {
  return re2::RE2::PartialMatch(text.substr(0, max_match_input), pattern);
}

compiled_pattern compile(const std::string& pattern) {
  re2::RE2::Options options;
  options.set_log_errors(false);
  auto compiled = std::make_shared<const re2::RE2>(pattern, options);
  // The config was checked (core::config): a pattern that fails here matches nothing.
  return compiled->ok() ? compiled : std::make_shared<const re2::RE2>("[^\\x00-\\x{10FFFF}]");
}

bool rule_matches(const feature_rule& rule, const request_view& request) {
  if (!rule.hosts.empty() &&
      std::none_of(rule.hosts.begin(), rule.hosts.end(),
                   [&](const std::string& pattern) { return host_matches(pattern, request.host); }))
    return false;
  const std::string_view path = path_of(request.target);
  if (rule.path_regex && !search(*rule.path_regex, path)) return false;
  if (!rule.extensions.empty()) {
    const std::string extension = path_extension(request.target);
    if (std::find(rule.extensions.begin(), rule.extensions.end(), extension) ==
        rule.extensions.end())
      return false;
  }
  for (const auto& header : rule.headers) {
    // (Not a structured binding: clang 14, the fuzz build's compiler, can't capture one.)
    const std::string& name = header.first;
    const auto field = std::find_if(request.fields.begin(), request.fields.end(),
                                    [&](const auto& f) { return iequals(f.first, name); });
    if (field == request.fields.end() || !search(*header.second, field->second)) return false;
  }
  return true;
}

}  // namespace

bool host_matches(std::string_view pattern, std::string_view host) {
  if (!host.empty() && host.back() == '.') host.remove_suffix(1);
  if (pattern.starts_with("*.")) {
    const std::string_view suffix = pattern.substr(1);  // ".example.com"
    return host.size() > suffix.size() && iequals(host.substr(host.size() - suffix.size()), suffix);
  }
  return iequals(pattern, host);
}

std::string path_extension(std::string_view target) {
  const std::string_view path = path_of(target);
  const std::string_view segment = path.substr(path.rfind('/') + 1);
  const auto dot = segment.rfind('.');
  if (dot == std::string_view::npos || dot + 1 == segment.size()) return {};
  std::string extension(segment.substr(dot + 1));
  std::transform(extension.begin(), extension.end(), extension.begin(), lower);
  return extension;
}

bool names_a_download(std::string_view target) {
  static constexpr std::array<std::string_view, 39> extensions = {
      // media segments and files
      "aac", "cmfa", "cmfv", "flac", "m4a", "m4s", "m4v", "mkv", "mov", "mp3", "mp4", "ogg", "opus",
      "ts", "webm",
      // packages and installers
      "apk", "appimage", "deb", "dmg", "exe", "ipa", "msi", "pkg", "rpm", "snap", "whl",
      // archives and images
      "7z", "bin", "bz2", "gz", "img", "iso", "rar", "tar", "tgz", "xz", "zip", "zst", "zstd"};
  const std::string extension = path_extension(target);
  return !extension.empty() &&
         std::find(extensions.begin(), extensions.end(), extension) != extensions.end();
}

feature_decision decide_feature(const feature_rules& rules, const request_view& request) {
  for (const auto& rule : rules.rules) {
    if (rule_matches(rule, request)) return {rule.multipath, rule.min_size, rule.name};
  }
  return {rules.multipath_by_default, std::nullopt, {}};
}

feature_rules compile_feature_rules(const std::vector<core::feature_config>& features,
                                    bool multipath_by_default) {
  feature_rules out;
  out.multipath_by_default = multipath_by_default;
  for (const auto& f : features) {
    feature_rule rule;
    rule.name = f.name;
    rule.hosts = f.hosts;
    if (!f.path_regex.empty()) {
      rule.path_regex = compile(f.path_regex);
      rule.path_regex_text = f.path_regex;
    }
    rule.extensions = f.extensions;
    for (const auto& [name, pattern] : f.headers) {
      rule.headers.emplace_back(name, compile(pattern));
      rule.headers_text.push_back(name + " ~ " + pattern);
    }
    rule.min_size = f.min_size;
    rule.multipath = f.multipath;
    out.rules.push_back(std::move(rule));
  }
  return out;
}

feature_rules compile_feature_rules(const core::config& config) {
  auto out = compile_feature_rules(config.features, config.multipath_by_default);
  out.http_dns = config.http_dns;
  return out;
}

}  // namespace fleety::classify
