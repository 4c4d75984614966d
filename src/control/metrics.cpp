// Prometheus text metrics (issue 7): the status model the control socket's JSON is
// written from, as `fleety_...` series, served over HTTP on loopback.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <cmath>
#include <map>
#include <string>

#include "control/control.hpp"
#include "net/accept.hpp"
#include "net/task_group.hpp"

namespace fleety::control {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
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

/// A duration in seconds as the status has it (ms, then rescaled: the same number).
std::optional<double> seconds_of(const std::optional<std::chrono::microseconds>& v) {
  if (!v) return std::nullopt;
  return static_cast<double>(v->count()) / 1000 * 1e-3;
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

std::string prometheus_text(const status_model& status) {
  writer w;
  // Each per-path series: its family, and how to read its value of a path (nullopt:
  // unknown, no sample). The arithmetic is the JSON's, then rescaled, so that both
  // say the same number.
  using reading = std::optional<double> (*)(const path_status&);
  struct per_path {
    const char* name;
    const char* type;
    const char* help;
    reading value;
  };
  const per_path series[] = {
      {"fleety_path_up", "gauge", "1 if the path is up (interface present, carrier, address)",
       [](const path_status& p) -> std::optional<double> { return p.up ? 1.0 : 0.0; }},
      {"fleety_path_rtt_seconds", "gauge", "smoothed round-trip time",
       [](const path_status& p) { return seconds_of(p.rtt); }},
      {"fleety_path_jitter_seconds", "gauge", "mean deviation of the RTT",
       [](const path_status& p) { return seconds_of(p.jitter); }},
      {"fleety_path_loss_ratio", "gauge", "fraction of packets lost lately",
       [](const path_status& p) { return p.loss; }},
      {"fleety_path_throughput_bits_per_second", "gauge", "what the path received lately",
       [](const path_status& p) -> std::optional<double> {
         if (!p.throughput_bps) return std::nullopt;
         return *p.throughput_bps / 1e6 * 1e6;
       }},
      {"fleety_path_capacity_bits_per_second", "gauge",
       "what the path can carry (the scheduler's estimate)",
       [](const path_status& p) -> std::optional<double> { return p.capacity_bps / 1e6 * 1e6; }},
      {"fleety_path_signal_dbm", "gauge", "Wi-Fi signal level",
       [](const path_status& p) { return p.signal_dbm; }},
      {"fleety_path_received_bytes_total", "counter", "response bytes the path carried",
       [](const path_status& p) -> std::optional<double> {
         return static_cast<double>(p.bytes_received);
       }},
      {"fleety_path_requests_total", "counter", "upstream requests sent on the path",
       [](const path_status& p) -> std::optional<double> {
         return static_cast<double>(p.requests);
       }},
      {"fleety_path_probes_total", "counter", "idle probes sent on the path",
       [](const path_status& p) -> std::optional<double> { return static_cast<double>(p.probes); }},
  };
  for (const auto& s : series) {
    w.family(s.name, s.type, s.help);
    for (const auto& p : status.paths) {
      w.sample(s.name,
               fmt::format("path=\"{}\",interface=\"{}\",kind=\"{}\"", label(p.name),
                           label(p.interface), label(p.kind)),
               s.value(p));
    }
  }
  std::map<std::pair<std::string, std::string>, double> by_class_path;
  for (const auto& f : status.flows) by_class_path[{f.qos_class, f.path}] += 1;
  w.family("fleety_flows_active", "gauge", "relayed flows under way, by class and path");
  for (const auto& [key, count] : by_class_path)
    w.sample("fleety_flows_active",
             fmt::format("class=\"{}\",path=\"{}\"", label(key.first), label(key.second)), count);
  struct scalar {
    const char* name;
    const char* type;
    const char* help;
    double value;
  };
  const auto count = [](std::uint64_t v) { return static_cast<double>(v); };
  const auto flag = [](bool v) { return v ? 1.0 : 0.0; };
  const scalar scalars[] = {
      {"fleety_sessions_active", "gauge", "app connections being served",
       count(status.sessions_active)},
      {"fleety_sessions_total", "counter", "app connections since start",
       count(status.sessions_started)},
      {"fleety_multipath_downloads_active", "gauge", "downloads split over several paths now",
       count(status.multipath_downloads_active)},
      {"fleety_verifier_mismatches_total", "counter",
       "multipath downloads whose paths served two versions of the object",
       count(status.version_conflicts)},
      {"fleety_flow_resets_total", "counter", "relayed flows reset to move them off their path",
       count(status.flow_resets)},
      {"fleety_intercepting", "gauge", "1 if apps are being taken over", flag(status.intercepting)},
      {"fleety_cellular_month_bytes", "gauge", "bytes on cellular paths this month (UTC)",
       count(status.cellular_month_bytes)},
      {"fleety_cellular_capped", "gauge", "1 if this month's cellular budget is spent",
       flag(status.cellular_capped)},
  };
  for (const auto& s : scalars) {
    w.family(s.name, s.type, s.help);
    w.sample(s.name, "", s.value);
  }
  w.family("fleety_path_refusals_total", "counter",
           "range requests a node refused (not version conflicts), by reason");
  for (const auto& [reason, n] : status.refusals_total)
    w.sample("fleety_path_refusals_total", fmt::format("reason=\"{}\"", label(reason)), count(n));
  w.family("fleety_refused_paths", "gauge",
           "paths kept off a host now because its node refused them");
  {
    std::map<std::string, std::uint64_t> by_path;
    for (const auto& r : status.refused_paths) ++by_path[r.path];
    for (const auto& [path, n] : by_path)
      w.sample("fleety_refused_paths", fmt::format("path=\"{}\"", label(path)), count(n));
  }
  w.family("fleety_warm_connections", "gauge",
           "idle keep-alive connections kept for the next request to the same node");
  w.sample("fleety_warm_connections", "", count(status.warm.idle));
  w.family("fleety_warm_connection_reuses_total", "counter",
           "requests that went on a warm connection instead of a new one");
  w.sample("fleety_warm_connection_reuses_total", "", count(status.warm.reused));
  w.family("fleety_connection_limit_hits_total", "counter",
           "connections not opened because a host's limit on a path was reached");
  w.sample("fleety_connection_limit_hits_total", "", count(status.warm.over_limit));
  w.family("fleety_dns_queries_total", "counter", "apps' DNS queries duplicated on the paths");
  w.sample("fleety_dns_queries_total", "", count(status.dns.queries));
  w.family("fleety_dns_fallbacks_total", "counter",
           "queries answered by another path than the preferred one");
  w.sample("fleety_dns_fallbacks_total", "", count(status.dns.answered_by_fallback));
  w.family("fleety_dns_failures_total", "counter", "queries no path answered");
  w.sample("fleety_dns_failures_total", "", count(status.dns.failed));
  w.family("fleety_app_received_bytes_total", "counter", "bytes an app received, per path");
  for (const auto& a : status.app_bytes) {
    w.sample("fleety_app_received_bytes_total",
             fmt::format("app=\"{}\",path=\"{}\"", label(a.app), label(a.path)), count(a.bytes));
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
  // The owner of its connections (see run_control_server).
  co_await asio::this_coro::throw_if_cancelled(false);
  net::task_group connections(co_await asio::this_coro::executor);
  net::accept_errors errors("metrics");
  while (auto socket = co_await net::async_accept_next(acceptor, errors)) {
    if (connections.size() >= max_connections) continue;  // closes it: a scraper retries
    connections.spawn(serve_metrics(std::move(*socket), daemon), "metrics connection");
  }
  connections.cancel();
  co_await connections.async_join();
}

}  // namespace fleety::control
