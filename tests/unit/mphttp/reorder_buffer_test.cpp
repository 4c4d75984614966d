#include "mphttp/reorder_buffer.hpp"

#include <gtest/gtest.h>

#include <string>

namespace fleety::mphttp {
namespace {

std::span<const char> bytes(const std::string& s) {
  return {s.data(), s.size()};
}

std::string drain(reorder_buffer& buffer) {
  std::string out;
  for (auto front = buffer.front(); !front.empty(); front = buffer.front()) {
    out.append(front.data(), front.size());
    buffer.consume(front.size());
  }
  return out;
}

TEST(ReorderBuffer, InOrderDataPassesStraightThrough) {
  reorder_buffer buffer;
  EXPECT_EQ(buffer.add(0, bytes("hello ")), 6U);
  EXPECT_EQ(drain(buffer), "hello ");
  buffer.add(6, bytes("world"));
  EXPECT_EQ(drain(buffer), "world");
  EXPECT_EQ(buffer.delivered(), 11U);
  EXPECT_EQ(buffer.buffered_bytes(), 0U);
}

TEST(ReorderBuffer, FrontPiecesGatherContiguousChunksUpToTheLimit) {
  reorder_buffer buffer;
  buffer.add(0, bytes("abc"), /*source=*/0);
  buffer.add(3, bytes("def"), /*source=*/1);  // another path's: a chunk of its own
  buffer.add(10, bytes("xyz"));               // after a gap: not part of the front
  buffer.consume(1);
  auto pieces = buffer.front_pieces(100);
  std::string joined;
  for (auto p : pieces) joined.append(p.data(), p.size());
  EXPECT_EQ(joined, "bcdef");
  pieces = buffer.front_pieces(3);
  ASSERT_EQ(pieces.size(), 2U);
  EXPECT_EQ(std::string(pieces[1].data(), pieces[1].size()), "d");
  buffer.consume(5);
  EXPECT_TRUE(buffer.front_pieces(100).empty());  // the gap
}

TEST(ReorderBuffer, APathsContiguousReadsFillOneBlockAfterAnother) {
  reorder_buffer buffer;
  std::string expected;
  for (int i = 0; i < 1000; ++i) {  // 100 KB in reads of 100 bytes, as a slow socket gives
    const std::string piece(100, static_cast<char>('a' + i % 26));
    buffer.add(expected.size(), bytes(piece), /*source=*/1);
    expected += piece;
  }
  // One block holds the first 64 KiB: the reads were not kept one by one.
  EXPECT_EQ(buffer.front().size(), reorder_buffer::block_bytes);
  std::string joined;
  for (auto p : buffer.front_pieces(1 << 20)) joined.append(p.data(), p.size());
  EXPECT_EQ(joined, expected);
  EXPECT_EQ(buffer.front_pieces(1 << 20).size(), 2U);
  // Another path's bytes right after are kept apart (evict() drops one path's bytes).
  buffer.add(expected.size(), bytes("zz"), /*source=*/0);
  EXPECT_EQ(buffer.evict(0, /*source=*/0).size(), 1U);
  EXPECT_EQ(buffer.buffered_bytes(), expected.size());
}

TEST(ReorderBuffer, LaterRangeWaitsForTheEarlierOne) {
  reorder_buffer buffer;
  buffer.add(5, bytes("56789"));
  EXPECT_TRUE(buffer.front().empty());
  EXPECT_EQ(buffer.buffered_bytes(), 5U);
  buffer.add(0, bytes("01234"));
  EXPECT_EQ(drain(buffer), "0123456789");
}

TEST(ReorderBuffer, OverlapsAndDuplicatesCountOnce) {
  reorder_buffer buffer;
  buffer.add(0, bytes("0123"));
  buffer.add(6, bytes("6789"));
  // Covers held bytes on both sides and the gap between.
  EXPECT_EQ(buffer.add(2, bytes("23456789")), 2U);
  EXPECT_EQ(buffer.add(0, bytes("0123456789")), 0U);
  EXPECT_EQ(drain(buffer), "0123456789");
}

TEST(ReorderBuffer, BytesAlreadyDeliveredAreIgnored) {
  reorder_buffer buffer;
  buffer.add(0, bytes("abcdef"));
  auto front = buffer.front();
  buffer.consume(3);  // the app took "abc"
  EXPECT_EQ(front.size(), 6U);
  EXPECT_EQ(buffer.add(0, bytes("abcdefgh")), 2U);
  EXPECT_EQ(drain(buffer), "defgh");
}

TEST(ReorderBuffer, EverySplitPointGivesTheSameBytes) {
  const std::string object = "the quick brown fox jumps over the lazy dog";
  for (std::size_t cut = 0; cut <= object.size(); ++cut) {
    reorder_buffer buffer;
    buffer.add(cut, bytes(object.substr(cut)));
    buffer.add(0, bytes(object.substr(0, cut)));
    EXPECT_EQ(drain(buffer), object) << "cut=" << cut;
  }
}

}  // namespace
}  // namespace fleety::mphttp

namespace fleety::mphttp {
namespace {

TEST(ReorderBuffer, EvictDropsOnlyOneSourcesBytesFromAnOffset) {
  reorder_buffer buffer;
  buffer.add(0, bytes("0123"), /*source=*/0);
  buffer.add(4, bytes("4567"), /*source=*/1);
  buffer.add(8, bytes("89"), /*source=*/1);
  buffer.add(10, bytes("ab"), /*source=*/0);
  const auto dropped = buffer.evict(/*from=*/4, /*source=*/1);
  ASSERT_EQ(dropped.size(), 1U);
  EXPECT_EQ(dropped[0], std::make_pair(std::uint64_t{4}, std::uint64_t{10}));
  EXPECT_EQ(buffer.buffered_bytes(), 6U);
  EXPECT_EQ(drain(buffer), "0123");
  // The hole is fetched again, from the other source.
  buffer.add(4, bytes("456789"), /*source=*/0);
  EXPECT_EQ(drain(buffer), "456789ab");
}

}  // namespace
}  // namespace fleety::mphttp
