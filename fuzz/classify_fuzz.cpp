// libFuzzer target for the flow classifier: any bytes an app may send first.
// Besides memory safety (ASan/UBSan) it checks that the verdict is stable: once a
// prefix of the flow is classified, more bytes never change the verdict.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "classify/classify.hpp"

using fleety::classify::classify_first_bytes;
using fleety::classify::flow_kind;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const auto whole = classify_first_bytes(bytes);
  if (whole.kind == flow_kind::http && (whole.method.empty() || whole.target.empty())) std::abort();
  if (size == 0) return 0;
  const std::size_t cut = data[0] % size;
  const auto prefix = classify_first_bytes(bytes.substr(0, cut));
  if (prefix.kind != flow_kind::need_more) {
    if (prefix.kind != whole.kind) std::abort();
    if (prefix.server_name != whole.server_name || prefix.target != whole.target) std::abort();
  }
  return 0;
}
