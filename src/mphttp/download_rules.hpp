#pragma once
// The decisions of the download client (`fleety get`), as pure functions: the file a URL
// is saved to, where a download starts from what a previous run left, what the first
// response means, and the progress line. No I/O: unit-tested with literal values.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mphttp/http_rules.hpp"

namespace fleety::mphttp {

/// The file a URL is saved to by default (as wget does): the last segment of its path,
/// percent-decoded; "index.html" when there is none. Never a path: a segment with '/',
/// "." or ".." or a leading '.' gets no say.
std::string default_file_name(std::string_view origin_form);

/// What an unfinished download leaves beside its file (FILE.fleety) for the next run.
struct resume_record {
  std::string url;
  std::string validator;    ///< the object's strong validator (If-Range); may be empty
  std::uint64_t total = 0;  ///< the object's size
  bool operator==(const resume_record&) const = default;
};
std::string format_resume_record(const resume_record& record);
/// nullopt for anything that is not a record we wrote.
std::optional<resume_record> parse_resume_record(std::string_view text);

/// What to do with a file that is already there.
enum class existing_file { refuse, overwrite, resume };

/// Where a download starts.
struct start_point {
  std::uint64_t offset = 0;            ///< bytes of the file kept; the first request starts here
  std::string validator;               ///< If-Range for the first request; empty: none
  std::optional<std::uint64_t> total;  ///< the size the record says
  bool truncate = false;               ///< the file's bytes are not kept
  std::string note;                    ///< said to the user (why it resumes, or starts over)
  std::string error;                   ///< non-empty: don't start (the user must choose)
};

/// From the file's size (nullopt: no file) and its record, for `url`: a record of the same
/// URL resumes where the file ends (If-Range its validator); a file without one is
/// refused unless `policy` says overwrite, or resume (like curl -C -: no validator, so
/// nothing proves the bytes on disk are of the same version).
start_point decide_start(std::optional<std::uint64_t> file_size,
                         const std::optional<resume_record>& record, std::string_view url,
                         existing_file policy);

/// The first response's header as far as the client cares.
struct first_answer {
  unsigned status = 0;
  std::optional<content_range> range;  ///< Content-Range of a 206 (or "*/N" of a 416)
  std::optional<std::uint64_t> content_length;
  bool accepts_ranges = false;  ///< Accept-Ranges: bytes
  bool has_location = false;
  std::string reason_phrase;  ///< "Not Found", for the user
};

enum class answer_kind {
  ranged,    ///< a 206 from `begin`: its part ends at head_end, the object at total
  whole,     ///< a 200: the whole object from byte 0 (total if known)
  complete,  ///< nothing left to fetch: the file already holds the whole object
  restart,   ///< the object changed, or the server refused our range: ask again from 0
  redirect,  ///< follow Location
  fail,      ///< an error the user sees
};

struct answer_plan {
  answer_kind kind = answer_kind::fail;
  std::uint64_t begin = 0;
  std::uint64_t head_end = 0;
  std::optional<std::uint64_t> total;
  bool starts_over = false;  ///< whole: the file's bytes are replaced (the object changed)
  std::string reason;        ///< fail, restart, starts_over: why, for the user
};

/// What the response to our first request (Range from `offset`, If-Range when resuming)
/// means; `expected_total` is the size the resume record knows.
answer_plan plan_first_answer(const first_answer& answer, std::uint64_t offset,
                              std::optional<std::uint64_t> expected_total);

/// One path's share so far.
struct path_progress {
  std::string name;
  std::string interface;
  std::uint64_t bytes = 0;  ///< body bytes the path carried (with overlaps and repeats)
  double rate_bps = 0;      ///< bits/s over the last second
  bool failed = false;
};

struct download_progress {
  std::optional<std::uint64_t> total;  ///< the object's size, if known
  std::uint64_t done = 0;              ///< bytes in the file (resumed ones included)
  std::uint64_t resumed_from = 0;
  double elapsed_s = 0;
  double rate_bps = 0;  ///< all paths together over the last second (the sum of theirs)
  std::vector<path_progress> paths;
};

/// The progress line: percentage and bar (when `width` leaves room), bytes, rate, each
/// path's rate, time left. At most `width` columns.
std::string render_progress(const download_progress& progress, std::size_t width);

}  // namespace fleety::mphttp
