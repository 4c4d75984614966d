// Which requests are HTTP-DNS queries (paper §4.1): the config names the endpoints.
#include <boost/url/parse.hpp>

#include "classify/classify.hpp"

namespace fleety::classify {
namespace {

bool path_is_at_or_below(std::string_view path, std::string_view endpoint) {
  if (endpoint == "/") return true;
  if (!endpoint.empty() && endpoint.back() == '/') endpoint.remove_suffix(1);
  if (path.substr(0, endpoint.size()) != endpoint) return false;
  return path.size() == endpoint.size() || path[endpoint.size()] == '/';
}

}  // namespace

std::optional<http_dns_request> match_http_dns(const std::vector<core::http_dns_config>& endpoints,
                                               const request_view& request,
                                               std::string_view destination) {
  if (endpoints.empty()) return std::nullopt;
  const auto url = boost::urls::parse_origin_form(request.target);
  if (!url) return std::nullopt;
  // The path as the server reads it: "/d%2fx" is not below "/d".
  const std::string_view path = url->encoded_path();
  for (const auto& endpoint : endpoints) {
    const bool host_matches_endpoint =
        std::any_of(endpoint.hosts.begin(), endpoint.hosts.end(), [&](const std::string& pattern) {
          return host_matches(pattern, request.host) ||
                 (!destination.empty() && host_matches(pattern, destination));
        });
    if (!host_matches_endpoint || !path_is_at_or_below(path, endpoint.path)) continue;
    http_dns_request out;
    out.endpoint = &endpoint;
    for (const auto& wanted : endpoint.name_parameters) {
      auto it = url->params().find(wanted);
      if (it != url->params().end() && (*it).has_value) {
        out.asked_name = (*it).value;
        break;
      }
    }
    return out;
  }
  return std::nullopt;
}

}  // namespace fleety::classify
