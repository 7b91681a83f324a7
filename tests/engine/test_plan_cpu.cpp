// Engine checks that need no GPU: tensor validation and the no-GPU error path.
#include <gtest/gtest.h>

#include <spattn/attention.hpp>

#include <limits>
#include <map>
#include <set>
#include <tuple>

#include "engine/device_layout.hpp"
#include "engine/forward.hpp"
#include "runtime/driver.hpp"

namespace spattn {
namespace {

// A fake, suitably aligned address: validation never dereferences it.
void* fake_ptr() { return reinterpret_cast<void*>(uintptr_t{1} << 20); }

std::string error_of(const std::function<void()>& f, ErrorCode expected) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), expected) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return {};
}

TEST(ProblemFromTensors, AcceptsGqaCrossAttentionAndStridedViews) {
  auto q = TensorView::contiguous(fake_ptr(), DType::kBFloat16, {2, 100, 8, 64});
  auto k = TensorView::contiguous(fake_ptr(), DType::kBFloat16, {2, 300, 2, 64});
  // O as a slice of a wider buffer: row stride larger than H*D.
  auto o = q;
  o.strides = {100 * 1024, 1024, 64, 1};
  const auto lse = TensorView::contiguous3(fake_ptr(), DType::kFloat32, {2, 8, 100});
  const engine::Problem p = engine::problem_from_tensors(q, k, k, o, &lse);
  EXPECT_EQ(p.batch, 2);
  EXPECT_EQ(p.nq, 100);
  EXPECT_EQ(p.nk, 300);
  EXPECT_EQ(p.heads, 8);
  EXPECT_EQ(p.kv_heads, 2);
  EXPECT_EQ(p.head_dim, 64);
}

TEST(ProblemFromTensors, RefusesBadShapesDtypesAndStridesByName) {
  const auto q = TensorView::contiguous(fake_ptr(), DType::kBFloat16, {1, 64, 4, 128});
  const auto k = TensorView::contiguous(fake_ptr(), DType::kBFloat16, {1, 64, 4, 128});
  auto msg = error_of([&] { engine::problem_from_tensors(q, TensorView::contiguous(fake_ptr(), DType::kBFloat16, {1, 64, 3, 128}), k, q, nullptr); },
                      ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("multiple of key/value heads"), std::string::npos) << msg;
  msg = error_of([&] { engine::problem_from_tensors(q, k, TensorView::contiguous(fake_ptr(), DType::kBFloat16, {1, 63, 4, 128}), q, nullptr); },
                 ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("V must have shape [1, 64, 4, 128]"), std::string::npos) << msg;
  msg = error_of([&] { engine::problem_from_tensors(q, TensorView::contiguous(fake_ptr(), DType::kFloat16, {1, 64, 4, 128}), k, q, nullptr); },
                 ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("K has dtype fp16 but Q has bf16"), std::string::npos) << msg;
  auto bad = q;
  bad.strides[3] = 2;
  msg = error_of([&] { engine::problem_from_tensors(bad, k, k, q, nullptr); }, ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("contiguous in the head dimension"), std::string::npos) << msg;
  const auto q80 = TensorView::contiguous(fake_ptr(), DType::kBFloat16, {1, 64, 4, 80});
  msg = error_of([&] { engine::problem_from_tensors(q80, q80, q80, q80, nullptr); }, ErrorCode::kUnsupported);
  EXPECT_NE(msg.find("supported head dims: 32, 64, 96, 128, 256"), std::string::npos) << msg;
  const auto q32 = TensorView::contiguous(fake_ptr(), DType::kFloat32, {1, 64, 4, 128});
  msg = error_of([&] { engine::problem_from_tensors(q32, q32, q32, q32, nullptr); }, ErrorCode::kUnsupported);
  EXPECT_NE(msg.find("dtype fp32 is not supported; supported dtypes: fp16, bf16"), std::string::npos) << msg;
  const auto lse = TensorView::contiguous3(fake_ptr(), DType::kFloat32, {1, 64, 4});
  msg = error_of([&] { engine::problem_from_tensors(q, k, k, q, &lse); }, ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("LSE must have shape [1, 4, 64]"), std::string::npos) << msg;
}

TEST(Attention, WithoutAGpuForwardSaysSoClearly) {
  if (runtime::has_gpu()) GTEST_SKIP() << "this host has a GPU; the no-GPU path is tested on GPU-less hosts (CI)";
  Attention attn(Pattern::parse(R"({"type":"local_window","window":128})"));
  const auto q = TensorView::contiguous(fake_ptr(), DType::kBFloat16, {1, 64, 4, 128});
  const std::string msg = error_of([&] { attn.forward(q, q, q, q); }, ErrorCode::kNoGpu);
  EXPECT_NE(msg.find("no NVIDIA driver found"), std::string::npos) << msg;
}

}  // namespace
}  // namespace spattn

namespace spattn {
namespace {

// Every key tile of every (table, query tile, head) row is in exactly one work item;
// only rows longer than a fair share are split; pieces are listed longest first.
void check_work_list(const Layout& layout, const engine::WorkList& wl, int64_t concurrent, bool longest_first) {
  std::map<std::tuple<int, int, int>, std::vector<std::pair<int, int>>> pieces;
  int64_t total = 0;
  for (const WorkItem& w : layout.schedule) {
    const auto& t = layout.tables[w.table];
    total += t.row_ptr[w.q_tile + 1] - t.row_ptr[w.q_tile];
  }
  int prev_len = std::numeric_limits<int>::max();
  std::set<int> slots;
  for (size_t k = 0; k + 6 <= wl.items.size(); k += 6) {
    const int* it = wl.items.data() + k;
    pieces[{it[0], it[1], it[2]}].push_back({it[3], it[4]});
    if (longest_first) {
      EXPECT_LE(it[4] - it[3], prev_len) << "not longest first";
    }
    prev_len = it[4] - it[3];
    if (it[5] >= 0) {
      EXPECT_TRUE(slots.insert(it[5]).second) << "split slot used twice";
    }
  }
  EXPECT_EQ(static_cast<int>(slots.size()), wl.split_slots);
  ASSERT_EQ(pieces.size(), layout.schedule.size());
  for (const WorkItem& w : layout.schedule) {
    const auto& t = layout.tables[w.table];
    const int len = static_cast<int>(t.row_ptr[w.q_tile + 1] - t.row_ptr[w.q_tile]);
    auto ranges = pieces[{w.table, w.q_tile, w.head}];
    std::sort(ranges.begin(), ranges.end());
    int covered = 0;
    for (auto [b, e] : ranges) {
      EXPECT_EQ(b, covered);
      covered = e;
    }
    EXPECT_EQ(covered, len);
    if (ranges.size() > 1) {
      EXPECT_GT(len, total / concurrent);
    }
  }
}

TEST(WorkList, SplitsOnlyRowsLongerThanAFairShare) {
  LayoutOptions lo;
  lo.tile_m = 128;
  lo.tile_n = 64;
  const Shape shape{16384, 16384, 16};
  // Global rows attend every key: 16 rows of 256 tiles among ~2000 rows of ~12.
  const Pattern gl = Pattern::parse(R"({"type":"global_local","global":128,"window":512})");
  const Layout a = compile_layout(gl, shape, lo);
  const auto wa = engine::build_work_list(a, 264, true);
  EXPECT_GT(wa.split_slots, 0);
  EXPECT_LT(wa.max_piece, 256);
  check_work_list(a, wa, 264, true);
  // A window is uniform: nothing to split.
  const Layout b = compile_layout(Pattern::parse(R"({"type":"local_window","window":1024})"), shape, lo);
  const auto wb = engine::build_work_list(b, 264, true);
  EXPECT_EQ(wb.split_slots, 0);
  check_work_list(b, wb, 264, true);
  // Causal at a small size on a big GPU: the long rows get split.
  const Layout c = compile_layout(Pattern::parse(R"({"type":"dense","causal":true})"), Shape{4096, 4096, 2}, lo);
  const auto wc = engine::build_work_list(c, 264, false);
  EXPECT_GT(wc.split_slots, 0);
  check_work_list(c, wc, 264, false);
}

TEST(WorkList, LongestFirstWithinHeadGroups) {
  LayoutOptions lo;
  const Layout c = compile_layout(Pattern::parse(R"({"type":"dense","causal":true})"), Shape{4096, 4096, 8}, lo);
  const auto wl = engine::build_work_list(c, 1, true, 3);  // one CTA: nothing is split
  ASSERT_EQ(wl.split_slots, 0);
  int prev_group = -1, prev_len = 0;
  for (size_t k = 0; k < wl.items.size(); k += 6) {
    const int group = wl.items[k + 2] / 3, len = wl.items[k + 4] - wl.items[k + 3];
    ASSERT_GE(group, prev_group) << "head groups out of order";
    if (group == prev_group) EXPECT_LE(len, prev_len) << "not longest first within a group";
    prev_group = group;
    prev_len = len;
  }
  EXPECT_EQ(prev_group, 2);
}

// The backward tables on the device decode to the transposed tables, and the work list
// holds every (table, key tile with query tiles, head of the table) once.
TEST(BackwardTables, PackAndWorkListCoverEveryAttendedKeyTile) {
  LayoutOptions lo;
  lo.tile_m = 64;
  lo.tile_n = 128;
  const Pattern p = Pattern::parse(R"({"type":"longnet","segments":[512,1024],"rates":[1,2],"causal":true})");
  const Layout layout = compile_layout(p, Shape{3000, 3000, 4}, lo);
  const engine::PackedBackwardTables packed = engine::pack_backward_tables(layout);
  ASSERT_EQ(packed.tables.size(), layout.tables.size());
  EXPECT_TRUE(packed.dq_work.empty()) << "the dQ pass is for deterministic mode only";
  std::set<std::tuple<int, int, int>> items;
  for (size_t x = 0; x < packed.work.size(); x += 4) {
    ASSERT_EQ(packed.work[x + 3], 1) << "one query head per item";
    const SpattnBwdTable& d = packed.tables[packed.work[x]];
    const int h = packed.arena[d.heads + packed.work[x + 2]];
    EXPECT_TRUE(items.insert({packed.work[x], packed.work[x + 1], h}).second) << "duplicate item";
  }
  size_t expected = 0;
  for (size_t t = 0; t < layout.tables.size(); ++t) {
    const TransposedTable tr = transpose_table(layout.tables[t]);
    const SpattnBwdTable& d = packed.tables[t];
    EXPECT_EQ(d.part, layout.tables[t].part);
    EXPECT_EQ(d.q_slots >= 0, !layout.tables[t].q_slots.empty());
    EXPECT_EQ(d.row_ptr, -1);
    for (int64_t k = 0; k < tr.num_k_tiles; ++k) {
      ASSERT_EQ(packed.arena[d.col_ptr + k], tr.col_ptr[k]);
      ASSERT_EQ(packed.arena[d.full_count + k], tr.full_count[k]);
      const bool attended = tr.col_ptr[k + 1] > tr.col_ptr[k];
      for (int32_t h : layout.tables[t].heads) {
        EXPECT_EQ(items.count({static_cast<int>(t), static_cast<int>(k), h}), attended ? 1u : 0u);
        expected += attended ? 1 : 0;
      }
    }
    for (size_t r = 0; r < tr.rows.size(); ++r) ASSERT_EQ(packed.arena[d.rows + r], tr.rows[r]);
    // Items are grouped by table.
    for (int64_t x = packed.work_begin[t]; x < packed.work_begin[t + 1]; ++x)
      EXPECT_EQ(packed.work[4 * x], static_cast<int>(t));
  }
  EXPECT_EQ(items.size(), expected);
}

// Deterministic packing: one key-tile item per (key tile, KV head) covering the table's
// query heads of that KV head in ascending order, a dQ item per (query tile with keys,
// head) over the forward rows (packed too), and item ranges per table.
TEST(BackwardTables, DeterministicPackingGroupsHeadsPerKvHeadAndAddsTheDqPass) {
  LayoutOptions lo;
  lo.tile_m = 64;
  lo.tile_n = 128;
  const Pattern p = Pattern::parse(
      R"({"heads":[{"first":0,"count":3,"pattern":{"type":"local_window","window":100}},)"
      R"({"first":3,"count":5,"pattern":{"type":"dense","causal":true}}]})");
  const Layout layout = compile_layout(p, Shape{1000, 1000, 8}, lo);
  engine::BackwardPacking packing;
  packing.deterministic = true;
  packing.kv_group = 2;  // KV head of h: h / 2
  const engine::PackedBackwardTables packed = engine::pack_backward_tables(layout, packing);
  ASSERT_EQ(packed.work_begin.size(), layout.tables.size() + 1);
  ASSERT_EQ(packed.dq_begin.size(), layout.tables.size() + 1);
  for (size_t t = 0; t < layout.tables.size(); ++t) {
    const BlockTable& bt = layout.tables[t];
    const SpattnBwdTable& d = packed.tables[t];
    std::vector<int32_t> heads(bt.heads.begin(), bt.heads.end());
    std::sort(heads.begin(), heads.end());
    std::map<int, std::vector<int>> by_kv;  // KV head -> its query heads in this table
    for (int32_t h : heads) by_kv[h / 2].push_back(h);
    const TransposedTable tr = transpose_table(bt);
    int64_t attended = 0;
    for (int64_t k = 0; k < tr.num_k_tiles; ++k) attended += tr.col_ptr[k + 1] > tr.col_ptr[k];
    ASSERT_EQ(packed.work_begin[t + 1] - packed.work_begin[t], attended * static_cast<int64_t>(by_kv.size()));
    std::set<std::pair<int, int>> seen;  // (key tile, KV head)
    for (int64_t x = packed.work_begin[t]; x < packed.work_begin[t + 1]; ++x) {
      const int32_t* w = &packed.work[4 * x];
      ASSERT_EQ(w[0], static_cast<int>(t));
      std::vector<int> got;
      for (int i = 0; i < w[3]; ++i) got.push_back(packed.arena[d.heads + w[2] + i]);
      ASSERT_FALSE(got.empty());
      EXPECT_EQ(got, by_kv[got[0] / 2]);
      EXPECT_TRUE(seen.insert({w[1], got[0] / 2}).second);
    }
    // The forward rows, and one dQ item per (query tile with keys, head).
    ASSERT_GE(d.row_ptr, 0);
    for (int64_t q = 0; q <= bt.num_q_tiles; ++q) ASSERT_EQ(packed.arena[d.row_ptr + q], bt.row_ptr[q]);
    for (size_t c = 0; c < bt.cols.size(); ++c) ASSERT_EQ(packed.arena[d.cols + c], bt.cols[c]);
    int64_t rows = 0;
    for (int64_t q = 0; q < bt.num_q_tiles; ++q) rows += bt.row_ptr[q + 1] > bt.row_ptr[q];
    EXPECT_EQ(packed.dq_begin[t + 1] - packed.dq_begin[t], rows * static_cast<int64_t>(heads.size()));
    for (int64_t x = packed.dq_begin[t]; x < packed.dq_begin[t + 1]; ++x) EXPECT_EQ(packed.dq_work[4 * x + 3], 1);
  }
}

TEST(BackwardTables, DeterministicPackingRefusesATokenTwiceInOneTable) {
  Layout layout;
  BlockTable t;
  t.num_q_tiles = 1;
  t.num_k_tiles = 1;
  t.row_ptr = {0, 1};
  t.full_count = {1};
  t.cols = {0};
  t.heads = {0};
  t.k_slots = {3, 5, 3};
  layout.tables.push_back(t);
  engine::BackwardPacking packing;
  packing.deterministic = true;
  try {
    (void)engine::pack_backward_tables(layout, packing);
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("key token 3 twice"), std::string::npos) << e.what();
  }
  packing.deterministic = false;
  EXPECT_NO_THROW((void)engine::pack_backward_tables(layout, packing));
}

// dK and dV go straight to the outputs only where every (KV head, key token) has
// exactly one work item: one query head per KV head, the tables' heads a partition of
// the query heads, and each table's attended key tiles holding every key once.
TEST(BackwardTables, SoleKeyWriterOnlyWhereEveryKeyRowHasOneItem) {
  LayoutOptions lo;
  lo.tile_m = 64;
  lo.tile_n = 128;
  auto sole = [&](const char* json, Shape shape, int64_t kv_group) {
    engine::BackwardPacking packing;
    packing.kv_group = kv_group;
    return engine::pack_backward_tables(compile_layout(Pattern::parse(json), shape, lo), packing).sole_key_writer;
  };
  EXPECT_TRUE(sole(R"({"type":"dense"})", Shape{1000, 1000, 4}, 1));
  EXPECT_TRUE(sole(R"({"type":"dense","causal":true})", Shape{300, 1000, 4}, 1));
  EXPECT_TRUE(sole(R"({"type":"local_window","window":100})", Shape{3000, 3000, 2}, 1));
  EXPECT_TRUE(sole(R"({"heads":[{"first":0,"count":3,"pattern":{"type":"local_window","window":100}},)"
                   R"({"first":3,"count":5,"pattern":{"type":"dense","causal":true}}]})",
                   Shape{1000, 1000, 8}, 1));
  EXPECT_FALSE(sole(R"({"type":"dense"})", Shape{1000, 1000, 4}, 2)) << "two query heads add into a KV head";
  EXPECT_FALSE(sole(R"({"type":"longnet","segments":[512,1024],"rates":[1,2]})", Shape{3000, 3000, 4}, 1))
      << "the branches' tables share heads";

  Layout layout;
  layout.shape = Shape{64, 256, 1};
  layout.tile_m = 64;
  layout.tile_n = 128;
  BlockTable t;
  t.num_q_tiles = 1;
  t.num_k_tiles = 2;
  t.row_ptr = {0, 2};
  t.full_count = {2};
  t.cols = {0, 1};
  t.heads = {0};
  layout.tables = {t};
  EXPECT_TRUE(engine::pack_backward_tables(layout).sole_key_writer);
  layout.tables[0].row_ptr = {0, 1};
  layout.tables[0].full_count = {1};
  layout.tables[0].cols = {0};
  EXPECT_FALSE(engine::pack_backward_tables(layout).sole_key_writer) << "keys 128-255 have no item";
  layout.tables[0] = t;
  layout.tables[0].k_slots.assign(256, -1);
  for (int s = 0; s < 256; ++s) layout.tables[0].k_slots[s] = s == 200 ? 7 : s;  // 7 twice, 200 never
  EXPECT_FALSE(engine::pack_backward_tables(layout).sole_key_writer);
  layout.tables[0].k_slots[200] = 200;
  EXPECT_TRUE(engine::pack_backward_tables(layout).sole_key_writer);
  layout.tables[0] = t;
  layout.tables[0].heads = {};
  EXPECT_FALSE(engine::pack_backward_tables(layout).sole_key_writer) << "head 0 is in no table";
}

// The copies of permuted rows (":copy"): one run per (table, query head) with query slots
// and per (table, KV head) with key slots, disjoint and back to back, none for tables in
// natural order. Emulating the gather (copy row = slots' token) and the kernel's lookup
// (copy row of (table, head) + slot) on the host must give every slot's own token.
std::vector<engine::SlotOffsets> slot_offsets(const engine::PackedTables& packed) {
  std::vector<engine::SlotOffsets> offsets;
  for (const SpattnTable& t : packed.tables) offsets.push_back({t.q_slots, t.k_slots});
  return offsets;
}

TEST(TokenCopies, RunsCoverEveryPermutedTableOnceAndIndexTheirSlots) {
  LayoutOptions lo;
  lo.tile_m = 64;
  lo.tile_n = 128;
  const int64_t heads = 4, kv_group = 2, hkv = heads / kv_group;
  const Layout layout = compile_layout(Pattern::parse(R"({"type":"longnet","segments":[256,512],"rates":[1,2]})"),
                                       Shape{1000, 1000, heads}, lo);
  const engine::PackedTables packed = engine::pack_tables(layout);
  const engine::TokenCopyPlan plan = engine::plan_token_copies(layout, slot_offsets(packed), kv_group);
  ASSERT_FALSE(plan.empty());
  ASSERT_EQ(plan.q_row.size(), layout.tables.size() * heads);
  ASSERT_EQ(plan.kv_row.size(), layout.tables.size() * hkv);

  // Host emulation of the gather: the token each copy row holds (-1: padding, zeros).
  auto emulate = [&](const std::vector<int32_t>& segments, int64_t rows, int64_t limit) {
    std::vector<int32_t> token(static_cast<size_t>(rows), -2);  // -2: never written
    int64_t next = 0;
    for (size_t s = 0; s < segments.size(); s += 4) {
      EXPECT_EQ(segments[s], next) << "runs are back to back";
      for (int32_t r = 0; r < segments[s + 2]; ++r) {
        const int32_t t = packed.arena[static_cast<size_t>(segments[s + 1] + r)];
        token[static_cast<size_t>(segments[s] + r)] = t >= 0 && t < limit ? t : -1;
      }
      next += segments[s + 2];
    }
    EXPECT_EQ(next, rows);
    return token;
  };
  const std::vector<int32_t> q_token = emulate(plan.q_segments, plan.q_rows, 1000);
  const std::vector<int32_t> kv_token = emulate(plan.kv_segments, plan.kv_rows, 1000);
  EXPECT_EQ(std::count(q_token.begin(), q_token.end(), -2), 0);
  EXPECT_EQ(std::count(kv_token.begin(), kv_token.end(), -2), 0);

  int permuted = 0;
  for (size_t ti = 0; ti < layout.tables.size(); ++ti) {
    const BlockTable& t = layout.tables[ti];
    std::set<int32_t> in_table(t.heads.begin(), t.heads.end());
    for (int64_t h = 0; h < heads; ++h) {
      const int32_t row = plan.q_row[ti * heads + h];
      if (t.q_slots.empty() || !in_table.count(static_cast<int32_t>(h))) {
        EXPECT_EQ(row, -1) << "table " << ti << " head " << h;
        continue;
      }
      ++permuted;
      for (size_t slot = 0; slot < t.q_slots.size(); ++slot) {
        const int32_t want = t.q_slots[slot] >= 0 && t.q_slots[slot] < 1000 ? t.q_slots[slot] : -1;
        ASSERT_EQ(q_token[static_cast<size_t>(row) + slot], want) << "table " << ti << " head " << h << " slot " << slot;
      }
    }
    for (int64_t kvh = 0; kvh < hkv; ++kvh) {
      bool used = false;
      for (int32_t h : t.heads) used |= h / kv_group == kvh;
      const int32_t row = plan.kv_row[ti * hkv + kvh];
      if (t.k_slots.empty() || !used) {
        EXPECT_EQ(row, -1) << "table " << ti << " KV head " << kvh;
        continue;
      }
      for (size_t slot = 0; slot < t.k_slots.size(); ++slot) {
        const int32_t want = t.k_slots[slot] >= 0 && t.k_slots[slot] < 1000 ? t.k_slots[slot] : -1;
        ASSERT_EQ(kv_token[static_cast<size_t>(row) + slot], want) << "table " << ti << " KV head " << kvh;
      }
    }
  }
  EXPECT_GT(permuted, 0) << "the rate-2 branch permutes its tokens";
  EXPECT_LT(plan.q_rows, 2 * 1000 * heads) << "the rate-1 branch is in natural order and copies nothing";

  const Layout dense = compile_layout(Pattern::parse(R"({"type":"dense"})"), Shape{1000, 1000, heads}, lo);
  EXPECT_TRUE(engine::plan_token_copies(dense, slot_offsets(engine::pack_tables(dense)), kv_group).empty());
  EXPECT_THROW(engine::plan_token_copies(dense, slot_offsets(engine::pack_tables(dense)), 3), Error);
}

}  // namespace
}  // namespace spattn
