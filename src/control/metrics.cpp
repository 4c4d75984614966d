// Prometheus text metrics (issue 7): the status the control socket gives, as
// `fleety_...` series, served over HTTP on loopback.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <cmath>
#include <map>
#include <string>

#include "control/control.hpp"

namespace fleety::control {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);
constexpr std::size_t max_connections = 16;

/// A label value with \, " and newlines escaped (the text format's rules).
std::string label(std::string_view value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

/// A number of the status, or nullopt for null and non-numbers.
std::optional<double> number(const json::value* v) {
  if (v == nullptr) return std::nullopt;
  if (v->is_double()) return v->as_double();
  if (v->is_int64()) return static_cast<double>(v->as_int64());
  if (v->is_uint64()) return static_cast<double>(v->as_uint64());
  if (v->is_bool()) return v->as_bool() ? 1.0 : 0.0;
  return std::nullopt;
}

class writer {
 public:
  /// A series' HELP and TYPE, once.
  void family(std::string_view name, std::string_view type, std::string_view help) {
    text_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  }
  void sample(std::string_view name, std::string_view labels, std::optional<double> value) {
    if (!value || !std::isfinite(*value)) return;  // unknown: no sample, not a fake 0
    text_ += labels.empty() ? fmt::format("{} {}\n", name, *value)
                            : fmt::format("{}{{{}}} {}\n", name, labels, *value);
  }
  std::string take() { return std::move(text_); }

 private:
  std::string text_;
};

}  // namespace

std::string prometheus_text(const json::object& status) {
  writer w;
  const json::array empty;
  const auto& paths = status.contains("paths") ? status.at("paths").as_array() : empty;
  struct per_path {
    const char* name;
    const char* key;
    const char* type;
    const char* help;
    double scale;
  };
  const per_path series[] = {
      {"fleety_path_up", "up", "gauge", "1 if the path is up (interface present, carrier, address)",
       1},
      {"fleety_path_rtt_seconds", "rtt_ms", "gauge", "smoothed round-trip time", 1e-3},
      {"fleety_path_jitter_seconds", "jitter_ms", "gauge", "mean deviation of the RTT", 1e-3},
      {"fleety_path_loss_ratio", "loss", "gauge", "fraction of packets lost lately", 1},
      {"fleety_path_throughput_bits_per_second", "throughput_mbps", "gauge",
       "what the path received lately", 1e6},
      {"fleety_path_capacity_bits_per_second", "capacity_mbps", "gauge",
       "what the path can carry (the scheduler's estimate)", 1e6},
      {"fleety_path_signal_dbm", "signal_dbm", "gauge", "Wi-Fi signal level", 1},
      {"fleety_path_received_bytes_total", "bytes_received", "counter",
       "response bytes the path carried", 1},
      {"fleety_path_requests_total", "requests", "counter", "upstream requests sent on the path",
       1},
      {"fleety_path_probes_total", "probes", "counter", "idle probes sent on the path", 1},
  };
  for (const auto& s : series) {
    w.family(s.name, s.type, s.help);
    for (const auto& p : paths) {
      const auto& path = p.as_object();
      const std::string labels = fmt::format(
          "path=\"{}\",interface=\"{}\",kind=\"{}\"", label(path.at("name").as_string()),
          label(path.at("interface").as_string()), label(path.at("kind").as_string()));
      const auto v = number(path.if_contains(s.key));
      w.sample(s.name, labels, v ? std::optional<double>(*v * s.scale) : std::nullopt);
    }
  }
  if (const auto* flows = status.if_contains("flows"); flows != nullptr && flows->is_array()) {
    std::map<std::pair<std::string, std::string>, double> by_class_path;
    for (const auto& f : flows->as_array()) {
      const auto& flow = f.as_object();
      by_class_path[{std::string(flow.at("class").as_string()),
                     std::string(flow.at("path").as_string())}] += 1;
    }
    w.family("fleety_flows_active", "gauge", "relayed flows under way, by class and path");
    for (const auto& [key, count] : by_class_path)
      w.sample("fleety_flows_active",
               fmt::format("class=\"{}\",path=\"{}\"", label(key.first), label(key.second)), count);
  }
  struct scalar {
    const char* name;
    const char* key;
    const char* type;
    const char* help;
  };
  const scalar scalars[] = {
      {"fleety_sessions_active", "sessions_active", "gauge", "app connections being served"},
      {"fleety_sessions_total", "sessions_started", "counter", "app connections since start"},
      {"fleety_multipath_downloads_active", "multipath_downloads_active", "gauge",
       "downloads split over several paths now"},
      {"fleety_verifier_mismatches_total", "version_conflicts", "counter",
       "multipath downloads whose paths served two versions of the object"},
      {"fleety_flow_resets_total", "flow_resets", "counter",
       "relayed flows reset to move them off their path"},
      {"fleety_intercepting", "intercepting", "gauge", "1 if apps are being taken over"},
      {"fleety_cellular_month_bytes", "cellular_month_bytes", "gauge",
       "bytes on cellular paths this month (UTC)"},
      {"fleety_cellular_capped", "cellular_capped", "gauge",
       "1 if this month's cellular budget is spent"},
  };
  for (const auto& s : scalars) {
    if (!status.contains(s.key)) continue;
    w.family(s.name, s.type, s.help);
    w.sample(s.name, "", number(status.if_contains(s.key)));
  }
  if (const auto* dns = status.if_contains("dns"); dns != nullptr && dns->is_object()) {
    const auto& d = dns->as_object();
    w.family("fleety_dns_queries_total", "counter", "apps' DNS queries duplicated on the paths");
    w.sample("fleety_dns_queries_total", "", number(d.if_contains("queries")));
    w.family("fleety_dns_fallbacks_total", "counter",
             "queries answered by another path than the preferred one");
    w.sample("fleety_dns_fallbacks_total", "", number(d.if_contains("answered_by_fallback")));
    w.family("fleety_dns_failures_total", "counter", "queries no path answered");
    w.sample("fleety_dns_failures_total", "", number(d.if_contains("failed")));
  }
  if (const auto* apps = status.if_contains("app_bytes"); apps != nullptr && apps->is_array()) {
    w.family("fleety_app_received_bytes_total", "counter", "bytes an app received, per path");
    for (const auto& a : apps->as_array()) {
      const auto& row = a.as_object();
      w.sample("fleety_app_received_bytes_total",
               fmt::format("app=\"{}\",path=\"{}\"", label(row.at("app").as_string()),
                           label(row.at("path").as_string())),
               number(row.if_contains("bytes")));
    }
  }
  return w.take();
}

namespace {

asio::awaitable<void> serve_metrics(asio::ip::tcp::socket socket, daemon_api& daemon) {
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer(8 * 1024);
  for (;;) {
    http::request_parser<http::empty_body> parser;
    parser.header_limit(8 * 1024);
    stream.expires_after(std::chrono::seconds(10));
    auto [read_ec, n] = co_await http::async_read(stream, buffer, parser, nothrow);
    if (read_ec) break;
    const auto& request = parser.get();
    http::response<http::string_body> response;
    response.version(request.version());
    response.keep_alive(request.keep_alive());
    response.set(http::field::server, "fleetyd");
    if (request.method() != http::verb::get && request.method() != http::verb::head) {
      response.result(http::status::method_not_allowed);
      response.set(http::field::allow, "GET, HEAD");
    } else if (request.target() != "/metrics" && !request.target().starts_with("/metrics?")) {
      response.result(http::status::not_found);
      response.set(http::field::content_type, "text/plain; charset=utf-8");
      response.body() = "fleetyd: the metrics are at /metrics\n";
    } else {
      response.result(http::status::ok);
      response.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
      response.body() = prometheus_text(daemon.status());
    }
    response.prepare_payload();
    if (request.method() == http::verb::head) response.body().clear();
    stream.expires_after(std::chrono::seconds(10));
    auto [write_ec, written] = co_await http::async_write(stream, response, nothrow);
    if (write_ec || !response.keep_alive()) break;
  }
  boost::system::error_code ignored;
  stream.socket().shutdown(asio::ip::tcp::socket::shutdown_send, ignored);
}

}  // namespace

asio::awaitable<void> run_metrics_server(asio::ip::tcp::acceptor acceptor, daemon_api& daemon) {
  auto executor = co_await asio::this_coro::executor;
  auto active = std::make_shared<std::size_t>(0);
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(nothrow);
    if (ec == asio::error::operation_aborted) co_return;
    if (ec) continue;
    if (*active >= max_connections) continue;  // closes it: a scraper retries
    ++*active;
    asio::co_spawn(executor, serve_metrics(std::move(socket), daemon),
                   [active](std::exception_ptr) { --*active; });
  }
}

}  // namespace fleety::control
