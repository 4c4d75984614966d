#include "path/link_resolvers.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <system_error>
#include <utility>

namespace fleety::path {
namespace {

constexpr std::string_view blanks = " \t\r\n\f\v";

std::string_view trim(std::string_view text) {
  const auto first = text.find_first_not_of(blanks);
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(blanks);
  return text.substr(first, last - first + 1);
}

std::string_view unquoted(std::string_view value) {
  if (value.size() >= 2 && value.front() == '"' && value.back() == '"')
    return value.substr(1, value.size() - 2);
  return value;
}

/// Adds `written` to `servers` in our form, unless unusable, already there, or the list full.
void add_server(std::vector<std::string>& servers, std::string_view written) {
  if (servers.size() >= max_link_servers) return;
  auto server = normalized_server(written);
  if (!server) return;
  if (std::find(servers.begin(), servers.end(), *server) == servers.end())
    servers.push_back(std::move(*server));
}

/// Adds every server of a list separated by blanks or commas (dhclient writes "a,b").
void add_servers(std::vector<std::string>& servers, std::string_view list) {
  constexpr std::string_view separators = " \t\r\n\f\v,";
  while (!list.empty()) {
    const auto start = list.find_first_not_of(separators);
    if (start == std::string_view::npos) return;
    list.remove_prefix(start);
    const auto end = std::min(list.find_first_of(separators), list.size());
    add_server(servers, list.substr(0, end));
    list.remove_prefix(end);
  }
}

/// The value of the last `KEY=VALUE` line for `key` of an environment-style file (systemd's
/// state files); comment lines start with '#'.
std::string_view value_of(std::string_view text, std::string_view key) {
  std::string_view value;
  while (!text.empty()) {
    const auto end = std::min(text.find('\n'), text.size());
    const auto line = trim(text.substr(0, end));
    text.remove_prefix(std::min(end + 1, text.size()));
    if (line.size() > key.size() && line.starts_with(key) && line[key.size()] == '=')
      value = unquoted(trim(line.substr(key.size() + 1)));
  }
  return value;
}

void add_ipv4(std::vector<std::string>& servers, std::span<const unsigned char, 4> address) {
  add_server(servers, fmt::format("{}.{}.{}.{}", address[0], address[1], address[2], address[3]));
}

std::optional<unsigned> port_of(std::string_view text) {
  unsigned port = 0;
  const auto* end = text.data() + text.size();
  const auto [stop, ec] = std::from_chars(text.data(), end, port);
  if (text.empty() || ec != std::errc{} || stop != end || port == 0 || port > 65535)
    return std::nullopt;
  return port;
}

std::string with_port(std::string address, unsigned port, bool ipv6) {
  if (port == 53) return address;
  return ipv6 ? fmt::format("[{}]:{}", address, port) : fmt::format("{}:{}", address, port);
}

std::optional<std::string> usable_ipv4(const std::array<unsigned char, 4>& a, unsigned port) {
  // 0/8 "this network", 127/8 loopback (a local stub), 224/4 multicast, 240/4 reserved and
  // the limited broadcast (RFC 6890): none is a link's server.
  if (a[0] == 0 || a[0] == 127 || a[0] >= 224) return std::nullopt;
  return with_port(fmt::format("{}.{}.{}.{}", a[0], a[1], a[2], a[3]), port, false);
}

}  // namespace

std::optional<std::string> normalized_server(std::string_view written) {
  auto text = trim(written);
  // `#name` is the server's name for DNS over TLS: our resolver has no use for it.
  text = text.substr(0, text.find('#'));
  if (text.empty()) return std::nullopt;
  std::string_view host;
  std::string_view port;
  bool has_port = false;
  const bool bracketed = text.front() == '[';
  if (bracketed) {
    // [V6ADDR]:PORT%IFINDEX (systemd's order), or the scope inside: [V6ADDR%IFINDEX]:PORT.
    const auto close = text.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    host = text.substr(1, close - 1);
    auto rest = text.substr(close + 1);
    rest = rest.substr(0, rest.find('%'));
    if (!rest.empty()) {
      if (rest.front() != ':') return std::nullopt;
      port = rest.substr(1);
      has_port = true;
    }
  } else {
    // ADDR%IFINDEX, ADDR:PORT%IFINDEX: the index names the link, which the caller knows.
    text = text.substr(0, text.find('%'));
    const auto colon = text.find(':');
    // One colon: IPv4 with a port. More: a bare IPv6 address, which has no port.
    if (colon != std::string_view::npos && text.find(':', colon + 1) == std::string_view::npos) {
      host = text.substr(0, colon);
      port = text.substr(colon + 1);
      has_port = true;
    } else {
      host = text;
    }
  }
  host = host.substr(0, host.find('%'));
  unsigned port_number = 53;
  if (has_port) {
    const auto parsed = port_of(port);
    if (!parsed) return std::nullopt;
    port_number = *parsed;
  }
  const std::string host_text(host);  // inet_pton wants a NUL-terminated string
  std::array<unsigned char, 4> v4{};
  if (!bracketed && ::inet_pton(AF_INET, host_text.c_str(), v4.data()) == 1)
    return usable_ipv4(v4, port_number);
  std::array<unsigned char, 16> v6{};
  if (::inet_pton(AF_INET6, host_text.c_str(), v6.data()) != 1) return std::nullopt;
  const auto zeros = [&](std::size_t n) {
    return std::all_of(v6.begin(), v6.begin() + static_cast<std::ptrdiff_t>(n),
                       [](unsigned char b) { return b == 0; });
  };
  // ::ffff:a.b.c.d (RFC 4291 §2.5.5.2) is an IPv4 server.
  if (zeros(10) && v6[10] == 0xff && v6[11] == 0xff)
    return usable_ipv4({v6[12], v6[13], v6[14], v6[15]}, port_number);
  // :: and ::1 (loopback: a local stub); fe80::/10 link-local, which needs a scope our
  // resolver cannot take; ff00::/8 multicast (RFC 4291 §2.4).
  if (zeros(15) && v6[15] <= 1) return std::nullopt;
  if (v6[0] == 0xfe && (v6[1] & 0xc0) == 0x80) return std::nullopt;
  if (v6[0] == 0xff) return std::nullopt;
  std::array<char, INET6_ADDRSTRLEN> canonical{};
  if (::inet_ntop(AF_INET6, v6.data(), canonical.data(), canonical.size()) == nullptr)
    return std::nullopt;
  return with_port(std::string(canonical.data()), port_number, true);
}

std::vector<std::string> servers_of_resolved_link(std::string_view state_file_text) {
  std::vector<std::string> servers;
  add_servers(servers, value_of(state_file_text, "SERVERS"));
  return servers;
}

std::vector<std::string> servers_of_networkd_link(std::string_view state_file_text) {
  std::vector<std::string> servers;
  add_servers(servers, value_of(state_file_text, "DNS"));
  return servers;
}

std::vector<std::string> servers_of_networkmanager_device(std::string_view keyfile_text) {
  std::string_view section;
  std::string_view dhcp4;
  std::string_view dhcp6;
  auto text = keyfile_text;
  while (!text.empty()) {
    const auto end = std::min(text.find('\n'), text.size());
    const auto line = trim(text.substr(0, end));
    text.remove_prefix(std::min(end + 1, text.size()));
    if (line.empty() || line.front() == '#' || line.front() == ';') continue;
    if (line.front() == '[') {
      section = line.back() == ']' ? line.substr(1, line.size() - 2) : std::string_view();
      continue;
    }
    const auto equals = line.find('=');
    if (equals == std::string_view::npos) continue;
    const auto key = trim(line.substr(0, equals));
    const auto value = trim(line.substr(equals + 1));
    if (section == "dhcp4" && key == "domain_name_servers") dhcp4 = value;
    if (section == "dhcp6" && key == "dhcp6_name_servers") dhcp6 = value;
  }
  std::vector<std::string> servers;
  add_servers(servers, dhcp4);
  add_servers(servers, dhcp6);
  return servers;
}

std::vector<std::string> servers_of_dhclient_leases(std::string_view text,
                                                    std::string_view interface,
                                                    bool per_interface_file) {
  // dhclient.leases(5): statements end in ';', blocks are `NAME { ... }`, strings are
  // quoted (with backslash escapes), '#' starts a comment. A block still open at the end
  // (a file cut short) does not count.
  struct lease_block {
    bool ipv6 = false;
    bool named = false;  // it has an `interface "NAME";` line
    std::string interface;
    std::string servers;
  };
  std::optional<lease_block> block;  // the lease block being read
  std::optional<std::string> last_v4;
  std::optional<std::string> last_v6;
  std::string statement;
  int depth = 0;
  bool quoted = false;
  bool escaped = false;
  bool comment = false;
  const auto on_statement = [&](std::string_view words) {
    words = trim(words);
    const auto space = std::min(words.find_first_of(blanks), words.size());
    const auto verb = words.substr(0, space);
    const auto rest = trim(words.substr(space));
    if (verb == "interface") {
      block->named = true;
      block->interface = std::string(unquoted(rest));
    } else if (verb == "option") {
      const auto name_end = std::min(rest.find_first_of(blanks), rest.size());
      const auto name = rest.substr(0, name_end);
      if (name == "domain-name-servers" || name == "dhcp6.name-servers")
        block->servers = std::string(rest.substr(name_end));
    }
  };
  for (const char c : text) {
    if (comment) {
      comment = c != '\n';
      continue;
    }
    if (quoted) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
        continue;
      } else if (c == '"') {
        quoted = false;
      }
      statement += c;
      continue;
    }
    switch (c) {
      case '#':
        comment = true;
        break;
      case '"':
        quoted = true;
        statement += c;
        break;
      case '{':
        if (depth == 0) {
          const auto header = trim(statement);
          block.reset();
          if (header == "lease" || header == "lease6") {
            block.emplace();
            block->ipv6 = header == "lease6";
          }
        }
        ++depth;
        statement.clear();
        break;
      case '}':
        if (depth > 0 && --depth == 0 && block) {
          const bool ours = block->named ? block->interface == interface : per_interface_file;
          if (ours) (block->ipv6 ? last_v6 : last_v4) = std::move(block->servers);
          block.reset();
        }
        statement.clear();
        break;
      case ';':
        // Only the lease's own statements: not those of its nested blocks (lease6's ia-na).
        if (depth == 1 && block) on_statement(statement);
        statement.clear();
        break;
      default:
        statement += c;
    }
  }
  std::vector<std::string> servers;
  if (last_v4) add_servers(servers, *last_v4);
  if (last_v6) add_servers(servers, *last_v6);
  return servers;
}

std::vector<std::string> servers_of_dhcp_message(std::span<const unsigned char> message) {
  // RFC 2131 §2: a 236-byte fixed header, then the options field, which starts with the
  // magic cookie 99.130.83.99 (RFC 2131 §3, RFC 2132 §2).
  constexpr std::size_t header_bytes = 236;
  constexpr std::array<unsigned char, 4> cookie = {99, 130, 83, 99};
  constexpr unsigned pad = 0;
  constexpr unsigned end_option = 255;
  constexpr unsigned domain_name_servers = 6;
  if (message.size() < header_bytes + cookie.size()) return {};
  if (!std::equal(cookie.begin(), cookie.end(), message.begin() + header_bytes)) return {};
  std::vector<unsigned char> addresses;  // option 6's data; split instances joined (RFC 3396)
  std::size_t at = header_bytes + cookie.size();
  while (at < message.size()) {
    const unsigned code = message[at];
    if (code == pad) {
      ++at;
      continue;
    }
    if (code == end_option) break;
    // Every other option is code, length, value: a length or value past the end is a
    // message cut short, or a lie: no servers at all rather than some.
    if (message.size() - at < 2) return {};
    const std::size_t length = message[at + 1];
    if (message.size() - at - 2 < length) return {};
    if (code == domain_name_servers) {
      const auto value = message.subspan(at + 2, length);
      addresses.insert(addresses.end(), value.begin(), value.end());
    }
    at += 2 + length;
  }
  // RFC 2132 §3.8: the length is a multiple of 4; another one is not a list of addresses.
  if (addresses.size() % 4 != 0) return {};
  std::vector<std::string> servers;
  for (std::size_t i = 0; i < addresses.size(); i += 4)
    add_ipv4(servers, std::span<const unsigned char, 4>(addresses.data() + i, 4));
  return servers;
}

// ---- I/O ---------------------------------------------------------------------------

namespace {

namespace fs = std::filesystem;

/// A state file's text, or why it was passed over (`why` empty: it does not exist).
struct state_file {
  bool read = false;
  std::string text;
  std::string why;
};

std::string errno_text(int error) {
  return std::error_code(error, std::generic_category()).message();
}

/// Closes the descriptor it holds (owned) when it goes.
class fd_closer {
 public:
  explicit fd_closer(int fd) : fd_(fd) {}
  fd_closer(const fd_closer&) = delete;
  fd_closer& operator=(const fd_closer&) = delete;
  ~fd_closer() { ::close(fd_); }

 private:
  int fd_;  ///< owned
};

state_file read_state_file(const fs::path& path) {
  state_file file;
  // O_NONBLOCK: a FIFO planted at the path must not hang the open (it is refused below).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) {
    if (errno != ENOENT && errno != ENOTDIR) file.why = errno_text(errno);
    return file;
  }
  const fd_closer closer{fd};
  struct ::stat status {};
  if (::fstat(fd, &status) != 0) {
    file.why = errno_text(errno);
    return file;
  }
  if (!S_ISREG(status.st_mode)) {
    file.why = "not a regular file";
    return file;
  }
  const auto too_big = [&] {
    return fmt::format("more than {} bytes (ignored)", max_state_file_bytes);
  };
  if (static_cast<std::uintmax_t>(status.st_size) > max_state_file_bytes) {
    file.why = too_big();
    return file;
  }
  // Read up to one byte past the cap, in the file's size first (these files are a few
  // hundred bytes): a file that grew since fstat is still caught.
  std::string text(
      std::min<std::size_t>(static_cast<std::size_t>(status.st_size), max_state_file_bytes) + 1,
      '\0');
  std::size_t size = 0;
  for (;;) {
    if (size == text.size()) {
      if (text.size() > max_state_file_bytes) break;
      text.resize(std::min(text.size() * 2, max_state_file_bytes + 1));
    }
    const auto n = ::read(fd, text.data() + size, text.size() - size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      file.why = errno_text(errno);
      return file;
    }
    if (n == 0) break;
    size += static_cast<std::size_t>(n);
  }
  if (size > max_state_file_bytes) {
    file.why = too_big();
    return file;
  }
  text.resize(size);
  file.read = true;
  file.text = std::move(text);
  return file;
}

/// Linux's rule for a device name (dev_valid_name): it is then safe in a file name too.
bool valid_interface_name(std::string_view name) {
  using namespace std::string_view_literals;
  constexpr std::size_t max_name = 15;  // IFNAMSIZ - 1
  return !name.empty() && name.size() <= max_name && name != "." && name != ".." &&
         name.find_first_of("/: \t\r\n\f\v\0"sv) == std::string_view::npos;
}

/// DIR/dhclient-*-INTERFACE.lease (NetworkManager's dhclient: the * is a connection UUID),
/// newest first.
std::vector<fs::path> dhclient_lease_files(const fs::path& dir, const std::string& interface) {
  constexpr std::string_view prefix = "dhclient-";
  const std::string suffix = "-" + interface + ".lease";
  std::vector<std::pair<fs::file_time_type, fs::path>> found;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), last; !ec && it != last; it.increment(ec)) {
    const auto name = it->path().filename().string();
    if (name.size() <= prefix.size() + suffix.size() || !name.starts_with(prefix) ||
        !name.ends_with(suffix))
      continue;
    std::error_code time_ec;
    const auto written = it->last_write_time(time_ec);
    found.emplace_back(time_ec ? fs::file_time_type::min() : written, it->path());
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  std::vector<fs::path> paths;
  for (auto& [written, path] : found) paths.push_back(std::move(path));
  return paths;
}

}  // namespace

link_resolvers find_link_resolvers(const std::string& interface, unsigned ifindex,
                                   const std::string& root) {
  link_resolvers found;
  const fs::path base(root.empty() ? std::string("/") : root);
  // Reads `path` and takes its servers if it names any; notes why it could not be read.
  const auto from = [&](const fs::path& path, std::string_view source,
                        const std::function<std::vector<std::string>(std::string_view)>& parse) {
    const auto file = read_state_file(path);
    if (!file.read) {
      if (!file.why.empty())
        found.ignored.push_back(fmt::format("{}: {}", path.string(), file.why));
      return false;
    }
    auto servers = parse(file.text);
    if (servers.empty()) return false;
    found.servers = std::move(servers);
    found.source = std::string(source);
    found.file = path.string();
    return true;
  };

  if (ifindex != 0) {
    const auto index = std::to_string(ifindex);
    if (from(base / "run/systemd/resolve/netif" / index, "systemd-resolved",
             servers_of_resolved_link))
      return found;
    if (from(base / "run/systemd/netif/links" / index, "systemd-networkd",
             servers_of_networkd_link))
      return found;
    if (from(base / "run/systemd/netif/leases" / index, "systemd-networkd lease",
             servers_of_networkd_link))
      return found;
    if (from(base / "run/NetworkManager/devices" / index, "NetworkManager",
             servers_of_networkmanager_device))
      return found;
  }
  if (!valid_interface_name(interface)) return found;

  const auto dhclient = [&](const fs::path& path, bool per_interface_file) {
    return from(path, "dhclient lease", [&](std::string_view text) {
      return servers_of_dhclient_leases(text, interface, per_interface_file);
    });
  };
  std::vector<std::pair<fs::path, bool>> dhclient_files = {
      {base / "var/lib/dhcp" / ("dhclient." + interface + ".leases"), true}};
  for (auto& path : dhclient_lease_files(base / "var/lib/dhcp", interface))
    dhclient_files.emplace_back(std::move(path), true);
  dhclient_files.emplace_back(base / "var/lib/dhcp/dhclient.leases", false);
  for (auto& path : dhclient_lease_files(base / "var/lib/dhclient", interface))
    dhclient_files.emplace_back(std::move(path), true);
  dhclient_files.emplace_back(base / "var/lib/dhclient/dhclient.leases", false);
  for (const auto& [path, per_interface_file] : dhclient_files) {
    if (dhclient(path, per_interface_file)) return found;
  }

  const auto dhcp_message = [](std::string_view text) {
    return servers_of_dhcp_message(
        std::span(reinterpret_cast<const unsigned char*>(text.data()), text.size()));
  };
  for (const auto& path : {base / "var/lib/dhcpcd" / (interface + ".lease"),
                           base / "var/lib/dhcpcd5" / ("dhcpcd-" + interface + ".lease"),
                           base / "var/db/dhcpcd" / (interface + ".lease"),
                           base / "var/db" / ("dhcpcd-" + interface + ".lease")}) {
    if (from(path, "dhcpcd lease", dhcp_message)) return found;
  }
  return found;
}

}  // namespace fleety::path
