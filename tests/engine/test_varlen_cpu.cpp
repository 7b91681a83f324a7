// Documents' host path without a GPU (engine/varlen.hpp, assemble_document_tables): the
// tables of a call over every document's tiles give each tile exactly its document
// shape's row, every (table, tile, head) with keys is one work item, longest rows first,
// documents without keys get empty rows, padded batches get their padding documents, and
// bad lengths are the GPU check's errors.
#include <gtest/gtest.h>

#include <spattn/error.hpp>
#include <spattn/layout.hpp>
#include <spattn/pattern.hpp>

#include <map>
#include <set>
#include <tuple>

#include "engine/varlen.hpp"

namespace spattn::engine {
namespace {

struct Shapes {
  Pattern pattern;
  int64_t heads;
  LayoutOptions options;
  std::map<std::pair<int64_t, int64_t>, Layout> kept;
  const Layout& operator()(int64_t nq, int64_t nk, int64_t) {
    auto it = kept.find({nq, nk});
    if (it == kept.end()) it = kept.emplace(std::pair{nq, nk}, compile_layout(pattern, Shape{nq, nk, heads}, options)).first;
    return it->second;
  }
};

void check_assembly(const char* json, const std::vector<int32_t>& lengths, int64_t heads) {
  SCOPED_TRACE(json);
  Shapes shapes{Pattern::parse(json), heads, {}, {}};
  shapes.options.tile_m = 128;
  shapes.options.tile_n = 64;
  HostLengths h;
  h.cu_q = {0};
  for (int32_t l : lengths) h.cu_q.push_back(h.cu_q.back() + l);
  h.cu_k = h.cu_q;
  DocumentLengths d;
  d.cu_q = d.cu_k = reinterpret_cast<const int32_t*>(8);  // packed (the host copies are what is read)
  d.docs = static_cast<int64_t>(lengths.size());
  d.nq = d.nk = h.cu_q.back() + 3;
  d.max_q = d.max_k = *std::max_element(lengths.begin(), lengths.end());
  const Layout tmpl = compile_layout(shapes.pattern, Shape{d.max_q, d.max_k, heads}, documents_layout_options(shapes.options));
  const HostDocumentTables t =
      assemble_document_tables(d, h, 128, 64, heads, tmpl.parts, [&](int64_t nq, int64_t nk, int64_t doc) -> const Layout& {
        return shapes(nq, nk, doc);
      });
  ASSERT_EQ(t.docs.size(), kSpattnDocInts * lengths.size());
  // Every document's tiles, in order, then the next document's.
  std::vector<std::pair<int32_t, int32_t>> expect_tiles;
  for (size_t e = 0; e < lengths.size(); ++e) {
    EXPECT_EQ(t.docs[kSpattnDocInts * e + 1], h.cu_q[e]);
    EXPECT_EQ(t.docs[kSpattnDocInts * e + 2], lengths[e]);
    int64_t count = (lengths[e] + 127) / 128;
    if (lengths[e] > 0)
      for (const BlockTable& b : shapes(lengths[e], lengths[e], 0).tables) count = std::max(count, b.num_q_tiles);
    for (int32_t x = 0; x < count; ++x) expect_tiles.emplace_back(static_cast<int32_t>(e), x);
  }
  ASSERT_EQ(t.tiles.size(), 2 * expect_tiles.size());
  for (size_t g = 0; g < expect_tiles.size(); ++g) {
    EXPECT_EQ(t.tiles[2 * g], expect_tiles[g].first);
    EXPECT_EQ(t.tiles[2 * g + 1], expect_tiles[g].second);
  }
  // Each work item is its document shape's row; each (document, shape table, tile, head)
  // with a row appears once; lengths descend.
  std::set<std::tuple<int32_t, int32_t, int32_t>> seen;  // (table, tile, head)
  int64_t previous = INT64_MAX;
  for (int64_t i = 0; i < t.work.num_items(); ++i) {
    const int32_t* w = t.work.items.data() + 6 * i;
    const BlockTable& table = t.layout.tables[w[0]];
    const int32_t g = w[1];
    EXPECT_TRUE(seen.insert({w[0], g, w[2]}).second) << "item " << i << " twice";
    EXPECT_EQ(w[3], 0);
    EXPECT_EQ(w[5], -1);
    EXPECT_LE(w[4], previous) << "longest rows first";
    previous = w[4];
    const auto [e, local] = expect_tiles[g];
    const Layout& shape = shapes(lengths[e], lengths[e], e);
    // Find the shape table this combined table was made from: same heads and columns.
    bool matched = false;
    for (const BlockTable& src : shape.tables) {
      if (src.heads != table.heads || src.cols != table.cols || src.q_slots != table.q_slots) continue;
      matched = true;
      EXPECT_EQ(table.row_ptr[g], src.row_ptr[local]);
      EXPECT_EQ(table.full_count[g], src.full_count[local]);
      EXPECT_EQ(w[4], src.row_ptr[local + 1] - src.row_ptr[local]);
    }
    EXPECT_TRUE(matched) << "item " << i << " is no table of its document's shape";
  }
  int64_t expected_items = 0;
  for (size_t g = 0; g < expect_tiles.size(); ++g) {
    const auto [e, local] = expect_tiles[g];
    for (const BlockTable& src : shapes(lengths[e], lengths[e], e).tables)
      if (local < src.num_q_tiles) expected_items += static_cast<int64_t>(src.heads.size());
  }
  EXPECT_EQ(t.work.num_items(), expected_items);
  std::set<int32_t> distinct(lengths.begin(), lengths.end());
  distinct.erase(0);
  EXPECT_EQ(t.shapes, distinct.size());
}

TEST(DocumentTables, HostTablesGiveEveryTileItsDocumentShapesRow) {
  const std::vector<int32_t> lengths{1, 0, 300, 77, 513, 300, 1024};
  check_assembly(R"({"type":"strided","stride":16,"mode":"relative"})", lengths, 4);
  check_assembly(R"({"type":"longnet","segments":[128,256],"rates":[1,2],"causal":true})", lengths, 4);
  check_assembly(R"({"type":"dense","causal":true})", lengths, 2);
  check_assembly(R"({"heads":[{"first":0,"count":2,"pattern":{"type":"local_window","window":64}},)"
                 R"({"first":2,"count":2,"pattern":{"type":"strided","stride":8,"mode":"relative"}}]})",
                 lengths, 4);
}

TEST(DocumentTables, DocumentsWithoutKeysAndPaddedBatches) {
  Shapes shapes{Pattern::parse(R"({"type":"dense","causal":true})"), 2, {}, {}};
  auto layout_of = [&](int64_t nq, int64_t nk, int64_t doc) -> const Layout& { return shapes(nq, nk, doc); };
  const Layout tmpl = compile_layout(shapes.pattern, Shape{300, 300, 2}, documents_layout_options({}));
  // Packed: a document with queries and no keys gets one empty row per tile and head.
  HostLengths h{{0, 200, 300}, {0, 0, 100}, {}, {}};
  DocumentLengths d;
  d.cu_q = d.cu_k = reinterpret_cast<const int32_t*>(8);
  d.docs = 2;
  d.nq = 300;
  d.nk = 100;
  d.max_q = 200;
  d.max_k = 100;
  HostDocumentTables t = assemble_document_tables(d, h, 128, 64, 2, tmpl.parts, layout_of);
  int empty = 0;
  for (int64_t i = 0; i < t.work.num_items(); ++i) {
    const int32_t* w = t.work.items.data() + 6 * i;
    if (t.tiles[2 * w[1]] == 0) {
      EXPECT_EQ(w[4], 0) << "document 0 has no keys";
      ++empty;
    }
  }
  EXPECT_EQ(empty, 2 * 2) << "two tiles x two heads";
  // Padded batches: batch b's used rows, then its padded query rows as a document of no keys
  // (kSpattnDocInts ints each: batch, first query row, rows, first key row, keys, first
  // query tile among the tables' tiles, no key tiles on the host path, unused).
  HostLengths p{{}, {}, {300, 5}, {300, 17}};
  DocumentLengths pd;
  pd.used_q = pd.used_k = reinterpret_cast<const int32_t*>(8);
  pd.docs = 2;
  pd.nq = pd.nk = pd.max_q = pd.max_k = 300;
  t = assemble_document_tables(pd, p, 128, 64, 2, tmpl.parts, layout_of);
  const std::vector<int32_t> expect{0, 0, 300, 0, 300, 0, 0, 0,  1, 0, 5, 0, 17, 3, 0, 0,
                                    0, 300, 0, 0, 0, 4, 0, 0,  1, 5, 295, 0, 0, 4, 0, 0};
  EXPECT_EQ(t.docs, expect);
}

TEST(DocumentTables, HostLengthChecksAreTheGpusErrors) {
  Shapes shapes{Pattern::parse(R"({"type":"strided","stride":8})"), 2, {}, {}};
  auto layout_of = [&](int64_t nq, int64_t nk, int64_t doc) -> const Layout& { return shapes(nq, nk, doc); };
  const Layout tmpl = compile_layout(shapes.pattern, Shape{256, 256, 2}, documents_layout_options({}));
  struct Bad {
    HostLengths h;
    int64_t nq, max_q;
    const char* needle;
  };
  const Bad bad[] = {
      {{{0, 100, 50}, {0, 100, 150}, {}, {}}, 256, 256, "cu_seqlens_q[2] = 50 is below cu_seqlens_q[1] = 100"},
      {{{0, 100, 300}, {0, 100, 200}, {}, {}}, 256, 256, "cu_seqlens_q[2] = 300 lies outside [0, 256]"},
      {{{0, 100, 150}, {0, 100, 150}, {}, {}}, 256, 64, "document 0 has 100 query rows, more than max_seqlen_q = 64"},
  };
  for (const Bad& b : bad) {
    DocumentLengths d;
    d.cu_q = d.cu_k = reinterpret_cast<const int32_t*>(8);
    d.docs = 2;
    d.nq = d.nk = b.nq;
    d.max_q = b.max_q;
    d.max_k = 256;
    try {
      (void)assemble_document_tables(d, b.h, 128, 64, 2, tmpl.parts, layout_of);
      ADD_FAILURE() << "accepted: " << b.needle;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(b.needle), std::string::npos) << e.what();
    }
  }
  HostLengths used{{}, {}, {}, {300, 2}};
  DocumentLengths pd;
  pd.used_k = reinterpret_cast<const int32_t*>(8);
  pd.docs = 2;
  pd.nq = pd.nk = pd.max_q = pd.max_k = 256;
  try {
    (void)assemble_document_tables(pd, used, 128, 64, 2, tmpl.parts, layout_of);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("seqused_k[0] = 300 lies outside [0, 256]"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace spattn::engine
