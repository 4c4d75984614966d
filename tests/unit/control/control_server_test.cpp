#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "control/control.hpp"

namespace fleety::control {
namespace {

namespace asio = boost::asio;
using local = asio::local::stream_protocol;
using namespace std::chrono_literals;

/// A daemon whose `apps` reply is megabytes long: more than a socket buffers, so its write
/// waits for the client to read.
class many_apps_daemon : public daemon_api {
 public:
  status_model status() override { return {}; }
  std::vector<app_status> apps() override {
    std::vector<app_status> out;
    for (int i = 0; i < 40'000; ++i)
      out.push_back({"app-" + std::to_string(i), true, "fleety/app", std::nullopt, 1000, "bulk"});
    return out;
  }
  core::expected<bool> set_app_enabled(const std::string&, bool) override { return true; }
  core::expected<bool> app_starting(const std::string&,
                                    const std::optional<peer_credentials>&) override {
    return true;
  }
  core::expected<std::size_t> reload_rules() override { return 0; }
};

class ControlServer : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (std::filesystem::temp_directory_path() / "fleety-control-XXXXXX");
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  /// The bytes a client gets for {"cmd":"apps"} when it starts reading `stall` after
  /// sending it, from a server whose replies may wait `write_timeout` for it.
  std::size_t reply_bytes(std::chrono::milliseconds stall,
                          std::chrono::milliseconds write_timeout) {
    const std::string path = dir_ + "/control.sock";
    std::filesystem::remove(path);
    asio::io_context io;
    local::acceptor acceptor(io, local::endpoint(path));
    asio::cancellation_signal stop;
    bool ended = false;
    asio::co_spawn(
        io, run_control_server(std::move(acceptor), daemon_, {5'000ms, write_timeout}),
        asio::bind_cancellation_slot(stop.slot(), [&](std::exception_ptr) { ended = true; }));
    std::size_t received = 0;
    std::atomic<bool> client_done = false;
    std::thread client([&] {
      asio::io_context client_io;
      local::socket socket(client_io);
      socket.connect(local::endpoint(path));
      asio::write(socket, asio::buffer(std::string(R"({"cmd":"apps"})") + "\n"));
      std::this_thread::sleep_for(stall);
      char chunk[65536];
      boost::system::error_code ec;
      for (;;) {
        const std::size_t n = socket.read_some(asio::buffer(chunk), ec);
        received += n;
        if (ec || (n > 0 && chunk[n - 1] == '\n')) break;
      }
      client_done = true;
    });
    // (Bounded: the client's reads end at the reply's end or when the server closes.)
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!client_done && std::chrono::steady_clock::now() < deadline) io.run_for(20ms);
    EXPECT_TRUE(client_done) << "the client still waits for its reply";
    // Ending the server closes its connections: a client still reading sees their end.
    stop.emit(asio::cancellation_type::terminal);
    io.run_for(2s);
    client.join();
    EXPECT_TRUE(ended) << "the server did not end when cancelled";
    return received;
  }

  many_apps_daemon daemon_;
  std::string dir_;
};

TEST_F(ControlServer, AClientThatReadsGetsTheWholeReply) {
  const std::size_t whole = handle_request(R"({"cmd":"apps"})", daemon_, {}).size() + 1;
  ASSERT_GT(whole, 2'000'000U);  // more than the socket buffers
  EXPECT_EQ(reply_bytes(0ms, 2'000ms), whole);
}

TEST_F(ControlServer, AClientThatDoesNotReadItsReplyIsDisconnectedAfterTheWriteTimeout) {
  const std::size_t whole = handle_request(R"({"cmd":"apps"})", daemon_, {}).size() + 1;
  // The client reads only after the write timeout: the server closed the connection with
  // the reply cut short instead of waiting for it.
  EXPECT_LT(reply_bytes(1'000ms, 200ms), whole);
}

}  // namespace
}  // namespace fleety::control
