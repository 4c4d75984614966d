#include "mphttp/download_rules.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <boost/json.hpp>
#include <boost/url/parse.hpp>
#include <cmath>

#include "core/units.hpp"

namespace fleety::mphttp {

std::string default_file_name(std::string_view origin_form) {
  const std::string fallback = "index.html";
  auto url = boost::urls::parse_origin_form(origin_form);
  if (!url || url->segments().empty()) return fallback;
  std::string name = url->segments().back();
  const bool unsafe = name.empty() || name.front() == '.' ||
                      name.find_first_of(std::string_view("/\0", 2)) != std::string::npos;
  return unsafe ? fallback : name;
}

namespace json = boost::json;

constexpr std::string_view record_key = "fleety_resume";

std::string format_resume_record(const resume_record& record) {
  json::object o;
  o[record_key] = 1;
  o["url"] = record.url;
  o["validator"] = record.validator;
  o["total"] = record.total;
  return json::serialize(o) + "\n";
}

std::optional<resume_record> parse_resume_record(std::string_view text) {
  boost::system::error_code ec;
  auto value = json::parse(text, ec);
  if (ec || !value.is_object()) return std::nullopt;
  const auto& o = value.as_object();
  const auto* version = o.if_contains(record_key);
  const auto* url = o.if_contains("url");
  const auto* validator = o.if_contains("validator");
  const auto* total = o.if_contains("total");
  if (version == nullptr || !version->is_int64() || version->as_int64() != 1 || url == nullptr ||
      !url->is_string() || validator == nullptr || !validator->is_string() || total == nullptr) {
    return std::nullopt;
  }
  resume_record record;
  record.url = url->as_string();
  record.validator = validator->as_string();
  if (total->is_uint64()) {
    record.total = total->as_uint64();
  } else if (total->is_int64() && total->as_int64() >= 0) {
    record.total = static_cast<std::uint64_t>(total->as_int64());
  } else {
    return std::nullopt;
  }
  return record;
}

start_point decide_start(std::optional<std::uint64_t> file_size,
                         const std::optional<resume_record>& record, std::string_view url,
                         existing_file policy) {
  start_point start;
  if (!file_size) return start;  // a record without its file: nothing to keep
  if (policy == existing_file::overwrite) {
    start.truncate = true;
    return start;
  }
  if (record && record->url == url) {
    if (*file_size > record->total) {
      start.truncate = true;
      start.note = fmt::format(
          "the file is longer ({} bytes) than the object it was ({}): "
          "starting over",
          *file_size, record->total);
      return start;
    }
    if (record->validator.empty()) {
      // Issue 18: nothing would tell us whether the object changed since: its new bytes
      // could be spliced onto the old ones. Only a strong validator (If-Range) proves it.
      start.truncate = true;
      start.note =
          "the server gave no strong validator (ETag or Last-Modified) for it: "
          "nothing proves the bytes on disk are of the same version: starting over";
      return start;
    }
    start.offset = *file_size;
    start.validator = record->validator;
    start.total = record->total;
    start.note = fmt::format("resuming at {} of {}", core::format_size(*file_size),
                             core::format_size(record->total));
    return start;
  }
  if (record) {
    start.error =
        fmt::format("it is the partial download of {}: --force overwrites it", record->url);
    return start;
  }
  if (policy == existing_file::resume) {
    start.offset = *file_size;
    start.note = fmt::format(
        "resuming at {} without a validator: nothing proves those bytes are of the same "
        "version",
        core::format_size(*file_size));
    return start;
  }
  start.error = "it exists: --continue resumes it, --force overwrites it";
  return start;
}

answer_plan plan_first_answer(const first_answer& answer, std::uint64_t offset,
                              std::optional<std::uint64_t> expected_total) {
  answer_plan plan;
  const unsigned status = answer.status;
  if ((status == 301 || status == 302 || status == 303 || status == 307 || status == 308) &&
      answer.has_location) {
    plan.kind = answer_kind::redirect;
    return plan;
  }
  if (status == 206) {
    if (!answer.range || answer.range->complete_length == 0 ||
        answer.range->last < answer.range->first ||
        answer.range->last >= answer.range->complete_length) {
      plan.reason = "the server's 206 has no usable Content-Range";
      return plan;
    }
    if (answer.range->first != offset) {
      plan.reason =
          fmt::format("the server answered from byte {}, not {}", answer.range->first, offset);
      return plan;
    }
    if (expected_total && *expected_total != answer.range->complete_length) {
      plan.kind = answer_kind::restart;
      plan.reason = fmt::format("the object is now {} bytes, not {}: it changed",
                                answer.range->complete_length, *expected_total);
      return plan;
    }
    plan.kind = answer_kind::ranged;
    plan.begin = offset;
    plan.head_end = answer.range->last + 1;
    plan.total = answer.range->complete_length;
    return plan;
  }
  if (status == 200) {
    plan.kind = answer_kind::whole;
    plan.total = answer.content_length;
    if (offset > 0) {
      plan.starts_over = true;
      plan.reason = "the server sent the whole object (it changed, or takes no ranges)";
    }
    return plan;
  }
  if (status == 416) {
    const auto length = answer.range ? std::optional(answer.range->complete_length) : std::nullopt;
    if (length && *length == offset) {
      plan.kind = answer_kind::complete;
      plan.total = length;
      return plan;
    }
    plan.kind = answer_kind::restart;
    plan.reason = offset > 0 ? "the object is shorter than the file: it changed"
                             : "the server refused our range";
    return plan;
  }
  plan.reason = fmt::format("the server answered {}{}{}", status,
                            answer.reason_phrase.empty() ? "" : " ", answer.reason_phrase);
  return plan;
}

std::string render_progress(const download_progress& progress, std::size_t width) {
  const std::string done = core::format_size(progress.done);
  std::string amount =
      progress.total ? fmt::format("{} / {}", done, core::format_size(*progress.total)) : done;
  std::string paths;
  for (const auto& p : progress.paths) {
    paths += fmt::format("  {} {}", p.name, p.failed ? "failed" : core::format_rate(p.rate_bps));
  }
  std::string eta;
  if (progress.total && progress.rate_bps > 0 && *progress.total > progress.done) {
    const double left_s =
        static_cast<double>(*progress.total - progress.done) * 8 / progress.rate_bps;
    eta = left_s < 1e6 ? fmt::format("  {:.0f} s left", std::ceil(left_s)) : "";
  }
  std::string text =
      fmt::format("{}  {}{}{}", amount, core::format_rate(progress.rate_bps), paths, eta);
  if (progress.total && *progress.total > 0) {
    const double fraction =
        std::min(1.0, static_cast<double>(progress.done) / static_cast<double>(*progress.total));
    const std::string percent = fmt::format("{:3.0f}% ", std::floor(fraction * 100));
    // The bar gets what the text leaves, within reason.
    const std::size_t used = percent.size() + text.size() + 3;
    if (width > used + 10) {
      const std::size_t bar = std::min<std::size_t>(width - used, 40);
      const auto full = static_cast<std::size_t>(fraction * static_cast<double>(bar));
      text = percent + "[" + std::string(full, '=') +
             (full < bar ? ">" + std::string(bar - full - 1, ' ') : "") + "] " + text;
    } else {
      text = percent + text;
    }
  }
  if (text.size() > width) text.resize(width);
  return text;
}

}  // namespace fleety::mphttp
