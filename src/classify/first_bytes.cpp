#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "classify/classify.hpp"

namespace fleety::classify {
namespace {

constexpr std::size_t max_method_length = 32;
constexpr std::size_t tls_record_header = 5;
constexpr std::size_t tls_max_record = 16 * 1024;

/// RFC 9110 §5.6.2 tchar.
bool is_tchar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool is_target_char(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u > 0x20 && u != 0x7f;
}

/// "METHOD SP target SP HTTP/1.d CRLF" (RFC 9112 §3). need_more while `bytes` can
/// still become one; other as soon as it can't.
flow_class classify_http(std::string_view bytes) {
  flow_class out;
  std::size_t i = 0;
  while (i < bytes.size() && is_tchar(bytes[i])) ++i;
  if (i > max_method_length) return flow_of(flow_kind::other);
  if (i == bytes.size()) return out;  // need more
  if (i == 0 || bytes[i] != ' ') return flow_of(flow_kind::other);
  const std::size_t method_end = i++;
  const std::size_t target_begin = i;
  while (i < bytes.size() && is_target_char(bytes[i])) ++i;
  if (i == bytes.size()) return out;
  if (i == target_begin || bytes[i] != ' ') return flow_of(flow_kind::other);
  const std::size_t target_end = i++;
  constexpr std::string_view version_prefix = "HTTP/1.";
  const std::string_view rest = bytes.substr(i);
  const std::size_t common = std::min(rest.size(), version_prefix.size());
  if (rest.substr(0, common) != version_prefix.substr(0, common)) return flow_of(flow_kind::other);
  if (rest.size() <= version_prefix.size()) return out;
  const char digit = rest[version_prefix.size()];
  if (digit < '0' || digit > '9') return flow_of(flow_kind::other);
  const std::string_view line_end = rest.substr(version_prefix.size() + 1);
  constexpr std::string_view crlf = "\r\n";
  const std::size_t have = std::min(line_end.size(), crlf.size());
  if (line_end.substr(0, have) != crlf.substr(0, have)) return flow_of(flow_kind::other);
  if (have < crlf.size()) return out;
  out.kind = flow_kind::http;
  out.method = std::string(bytes.substr(0, method_end));
  out.target = std::string(bytes.substr(target_begin, target_end - target_begin));
  return out;
}

/// Reads big-endian integers from a bounded span; any read past the end fails.
class reader {
 public:
  explicit reader(std::string_view data) : data_(data) {}
  bool skip(std::size_t n) {
    if (n > data_.size() - pos_) return false;
    pos_ += n;
    return true;
  }
  std::optional<std::uint32_t> number(std::size_t bytes) {
    if (bytes > data_.size() - pos_) return std::nullopt;
    std::uint32_t v = 0;
    for (std::size_t k = 0; k < bytes; ++k)
      v = (v << 8) | static_cast<unsigned char>(data_[pos_++]);
    return v;
  }
  std::optional<std::string_view> block(std::size_t n) {
    if (n > data_.size() - pos_) return std::nullopt;
    auto out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  std::size_t left() const { return data_.size() - pos_; }

 private:
  std::string_view data_;
  std::size_t pos_ = 0;
};

/// The host name in a server_name extension body (RFC 6066 §3), lower case; "" if
/// there is none or it is not a plausible DNS name.
std::string server_name_of(std::string_view extension) {
  reader r(extension);
  auto list_length = r.number(2);
  if (!list_length) return {};
  while (r.left() >= 3) {
    auto type = r.number(1);
    auto length = r.number(2);
    if (!type || !length) return {};
    auto name = r.block(*length);
    if (!name) return {};
    if (*type != 0) continue;  // host_name is the only type defined
    std::string host;
    for (char c : *name) {
      const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
                      c == '_' || (c >= 'A' && c <= 'Z');
      if (!ok) return {};
      host.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c);
    }
    return host.size() <= 253 ? host : std::string{};
  }
  return {};
}

/// A TLS record of type handshake (22) whose message is a ClientHello (RFC 8446 §4.1.2).
/// The SNI is read from the handshake bytes the first record carries.
flow_class classify_tls(std::string_view bytes) {
  flow_class out;
  // Record header: type 22, legacy version 3.x, length.
  if (static_cast<unsigned char>(bytes[0]) != 0x16) return flow_of(flow_kind::other);
  if (bytes.size() >= 2 && bytes[1] != 0x03) return flow_of(flow_kind::other);
  if (bytes.size() >= 3 && static_cast<unsigned char>(bytes[2]) > 0x04)
    return flow_of(flow_kind::other);
  if (bytes.size() < tls_record_header) return out;
  const std::size_t record_length =
      (static_cast<std::size_t>(static_cast<unsigned char>(bytes[3])) << 8) |
      static_cast<unsigned char>(bytes[4]);
  if (record_length == 0 || record_length > tls_max_record) return flow_of(flow_kind::other);
  if (bytes.size() >= 6 && bytes[5] != 0x01) return flow_of(flow_kind::other);  // not a ClientHello
  if (bytes.size() < tls_record_header + record_length) return out;             // need the record
  out.kind = flow_kind::tls_client_hello;

  reader r(bytes.substr(tls_record_header, record_length));
  r.skip(1);                                         // handshake type
  auto hello_length = r.number(3);                   // may run past this record
  if (!hello_length || !r.skip(2 + 32)) return out;  // legacy_version, random
  auto session_id = r.number(1);
  if (!session_id || !r.skip(*session_id)) return out;
  auto suites = r.number(2);
  if (!suites || !r.skip(*suites)) return out;
  auto compression = r.number(1);
  if (!compression || !r.skip(*compression)) return out;
  auto extensions_length = r.number(2);
  if (!extensions_length) return out;
  while (r.left() >= 4) {
    auto type = r.number(2);
    auto length = r.number(2);
    if (!type || !length) return out;
    auto body = r.block(*length);
    if (!body) return out;  // the extension goes on in the next record: no SNI seen
    if (*type == 0) {
      out.server_name = server_name_of(*body);
      return out;
    }
  }
  return out;
}

}  // namespace

flow_class classify_first_bytes(std::string_view bytes) {
  if (bytes.empty()) return {};
  if (static_cast<unsigned char>(bytes[0]) == 0x16) return classify_tls(bytes);
  auto http = classify_http(bytes.substr(0, std::min(bytes.size(), max_peek_bytes)));
  if (http.kind == flow_kind::need_more && bytes.size() >= max_peek_bytes)
    return flow_of(flow_kind::other);
  return http;
}

}  // namespace fleety::classify
