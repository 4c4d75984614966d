#include "mphttp/response_facts.hpp"

namespace fleety::mphttp {

refusal refusal_of(unsigned status) {
  if (status < 300) return refusal::none;
  if (status < 400) return refusal::redirected;
  switch (status) {
    case 401:
      return refusal::unauthorized;
    case 403:
      return refusal::forbidden;
    case 404:
    case 410:
      return refusal::not_found;
    case 416:
      return refusal::unsatisfiable;
    case 429:
      return refusal::rate_limited;
    default:
      return status >= 500 ? refusal::unavailable : refusal::other;
  }
}

std::string_view to_string(refusal reason) {
  switch (reason) {
    case refusal::none:
      return "none";
    case refusal::redirected:
      return "redirected";
    case refusal::unauthorized:
      return "unauthorized";
    case refusal::forbidden:
      return "forbidden";
    case refusal::not_found:
      return "not found";
    case refusal::unsatisfiable:
      return "range not satisfiable";
    case refusal::rate_limited:
      return "rate limited";
    case refusal::unavailable:
      return "unavailable";
    case refusal::ignores_ranges:
      return "ignores ranges";
    case refusal::other:
      return "refused";
  }
  return "?";
}

}  // namespace fleety::mphttp
