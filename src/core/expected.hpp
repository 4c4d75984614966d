#pragma once
// A value or a human-readable error: what pure parsers and validators return.
// C++20 has no std::expected; the error here is a message for a person (config
// and command-line input), not an error_code for a hot path.

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace fleety::core {

struct error_message {
  std::string text;
};

inline error_message make_error(std::string text) {
  return error_message{std::move(text)};
}

template <class T>
class [[nodiscard]] expected {
 public:
  expected(T value) : state_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  expected(error_message error)
      : state_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

  bool has_value() const { return std::holds_alternative<T>(state_); }
  explicit operator bool() const { return has_value(); }
  const T& value() const& { return std::get<T>(state_); }
  T& value() & { return std::get<T>(state_); }
  T&& value() && { return std::get<T>(std::move(state_)); }
  const T& operator*() const& { return value(); }
  const T* operator->() const { return &value(); }
  const std::string& error() const { return std::get<error_message>(state_).text; }

 private:
  std::variant<T, error_message> state_;
};

}  // namespace fleety::core
