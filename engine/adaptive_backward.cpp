// The backward pass's tables of adaptive patterns (AdaptiveBackwardTables,
// engine/adaptive.hpp).
#include <algorithm>
#include <limits>

#include "codegen/kernel_spec.hpp"
#include "common/check.hpp"
#include "engine/adaptive.hpp"
#include "engine/forward.hpp"
#include "patterns/arith.hpp"
#include "runtime/driver.hpp"
#include "templates/params.cuh"

namespace spattn::engine {

using detail::ceil_div;

AdaptiveBackwardTables::AdaptiveBackwardTables(const Pattern& pattern, const Layout& layout, const Problem& problem,
                                               int device, bool deterministic)
    : selector_(pattern, problem, layout.tile_m, layout.tile_n, device),
      heads_(problem.heads),
      tile_m_(static_cast<int>(layout.tile_m)),
      tile_n_(static_cast<int>(layout.tile_n)),
      num_q_tiles_(ceil_div(problem.nq, layout.tile_m)),
      num_k_tiles_(ceil_div(problem.nk, layout.tile_n)) {
  const AdaptiveGeometry& g = selector_.geometry();
  SPATTN_REQUIRE(static_cast<int64_t>(layout.tables.size()) == heads_,
                 "adaptive backward: a layout of {} tables for {} heads (internal)", layout.tables.size(), heads_);
  const int64_t qpb = g.block / tile_m_, kpb = g.block / tile_n_;
  // Every key tile of block J has room for each query tile of the blocks that chose J.
  int64_t room = 0;
  for (int32_t k : g.k) room += int64_t{k} * qpb * kpb;
  std::vector<int32_t>& arena = packed_.arena;
  auto put = [&](int64_t n, auto value_at) {
    SPATTN_REQUIRE(static_cast<int64_t>(arena.size()) + n <= std::numeric_limits<int32_t>::max(),
                   "adaptive backward: the tables of {} heads ({} query tiles x up to {} key tiles each) exceed the "
                   "32-bit table arena; use larger blocks, a smaller top_k or fewer heads per call",
                   heads_, num_q_tiles_, g.max_k * kpb);
    const int32_t at = static_cast<int32_t>(arena.size());
    for (int64_t x = 0; x < n; ++x) arena.push_back(static_cast<int32_t>(value_at(x)));
    return at;
  };
  auto zeros = [&](int64_t n) { return put(std::max<int64_t>(n, 1), [](int64_t) { return 0; }); };
  const int64_t kv_group = problem.heads / problem.kv_heads;
  packed_.sole_key_writer = kv_group == 1;  // one table per head; key tiles without work are cleared
  for (int64_t h = 0; h < heads_; ++h) {
    const BlockTable& t = layout.tables[static_cast<size_t>(h)];
    SPATTN_REQUIRE(t.heads.size() == 1 && t.heads[0] == h, "adaptive backward: table {} is not head {}'s (internal)",
                   h, h);
    SpattnBwdTable d{};
    d.part = t.part;
    d.num_q_tiles = static_cast<int32_t>(t.num_q_tiles);
    d.num_k_tiles = static_cast<int32_t>(t.num_k_tiles);
    d.q_slots = d.k_slots = -1;
    d.heads = put(1, [&](int64_t) { return h; });
    d.col_ptr = zeros(t.num_k_tiles + 1);
    d.full_count = zeros(t.num_k_tiles);
    d.col_len = zeros(t.num_k_tiles);
    d.rows = zeros(room);
    d.row_ptr = put(static_cast<int64_t>(t.row_ptr.size()), [&](int64_t x) { return t.row_ptr[static_cast<size_t>(x)]; });
    d.row_full = zeros(t.num_q_tiles);
    d.cols = zeros(t.row_ptr.back());
    d.row_len = -1;  // rows have the host's lengths (k_I blocks each)
    packed_.tables.push_back(d);
    SpattnTable f{};
    f.part = t.part;
    f.num_q_tiles = d.num_q_tiles;
    f.num_k_tiles = d.num_k_tiles;
    f.q_slots = f.k_slots = -1;
    f.row_ptr = d.row_ptr;
    f.full_count = d.row_full;
    f.cols = d.cols;
    forward_.push_back(f);
    packed_.work_begin.push_back(packed_.num_items());
    packed_.dq_begin.push_back(packed_.num_dq_items());
    for (int64_t k = 0; k < num_k_tiles_; ++k)
      packed_.work.insert(packed_.work.end(), {static_cast<int32_t>(h), static_cast<int32_t>(k), 0, 1});
    if (deterministic)
      for (int64_t q = 0; q < t.num_q_tiles; ++q)
        if (t.row_ptr[static_cast<size_t>(q) + 1] > t.row_ptr[static_cast<size_t>(q)])
          packed_.dq_work.insert(packed_.dq_work.end(), {static_cast<int32_t>(h), static_cast<int32_t>(q), 0, 1});
  }
  packed_.work_begin.push_back(packed_.num_items());
  packed_.dq_begin.push_back(packed_.num_dq_items());
  SPATTN_REQUIRE(packed_.num_items() <= std::numeric_limits<int32_t>::max(),
                 "adaptive backward: {} work items exceed the launch grid", packed_.num_items());
  forward_tables_ = runtime::DeviceBuffer(forward_.size() * sizeof(SpattnTable));
  forward_tables_.upload(forward_.data(), forward_.size() * sizeof(SpattnTable));
  const codegen::RenderedKernel program = codegen::render_adaptive_kernels();
  columns_ = &load_kernel(program, device, "spattn_adaptive_columns");
  transpose_ = &load_kernel(program, device, "spattn_adaptive_transpose");
  gate_grads_ = &load_kernel(program, device, "spattn_adaptive_gate_grads");
}

AdaptiveBackwardTables::~AdaptiveBackwardTables() = default;

void AdaptiveBackwardTables::reserve(int64_t batch) {
  if (batch <= copies_) return;
  const int64_t one = static_cast<int64_t>(packed_.arena.size());
  SPATTN_REQUIRE(one * batch <= std::numeric_limits<int32_t>::max(),
                 "adaptive backward: {} batch copies of {} table entries exceed the 32-bit table arena; run fewer "
                 "batches per call",
                 batch, one);
  PackedBackwardTables copies = packed_;
  copies.arena.reserve(static_cast<size_t>(one * batch));
  for (int64_t b = 1; b < batch; ++b) copies.arena.insert(copies.arena.end(), packed_.arena.begin(), packed_.arena.end());
  tables_ = DeviceBackwardLayout(copies);
  copies_ = batch;
  stride_ = batch > 1 ? static_cast<int32_t>(one) : 0;
}

SpattnGates AdaptiveBackwardTables::build(const TensorView& q, const TensorView& k, const AdaptiveInputs& inputs,
                                          int64_t batch, CUstream stream) {
  const AdaptiveGeometry& g = selector_.geometry();
  SPATTN_REQUIRE(batch * heads_ <= 65535, "adaptive backward: batch {} x {} heads exceed the launch grid limit 65535",
                 batch, heads_);
  reserve(batch);
  int32_t* arena = const_cast<int32_t*>(tables_.arena());
  const int32_t* chosen = selector_.run(
      q, k, inputs, batch,
      {arena, reinterpret_cast<const SpattnTable*>(forward_tables_.get()), stride_, copies_}, stream);
  const size_t count_bytes = static_cast<size_t>(batch * heads_ * g.nk_blocks) * 4;
  if (counts_.size() < count_bytes) counts_ = runtime::DeviceBuffer(count_bytes);
  SpattnAdaptiveColumnsParams p{};
  p.chosen = chosen;
  p.counts = static_cast<int32_t*>(counts_.data());
  p.arena = arena;
  p.tables = tables_.tables();
  p.arena_stride_b = stride_;
  p.heads = static_cast<int32_t>(heads_);
  p.nq_blocks = static_cast<int32_t>(g.nq_blocks);
  p.nk_blocks = static_cast<int32_t>(g.nk_blocks);
  p.max_k = static_cast<int32_t>(g.max_k);
  p.q_tiles_per_block = static_cast<int32_t>(g.block / tile_m_);
  p.k_tiles_per_block = static_cast<int32_t>(g.block / tile_n_);
  p.tile_m = tile_m_;
  p.tile_n = tile_n_;
  p.num_q_tiles = static_cast<int32_t>(num_q_tiles_);
  p.num_k_tiles = static_cast<int32_t>(num_k_tiles_);
  p.nq = static_cast<int32_t>(g.nq);
  p.nk = static_cast<int32_t>(g.nk);
  p.causal = g.causal ? 1 : 0;
  void* args[] = {&p};
  const unsigned bh = static_cast<unsigned>(batch * heads_);
  columns_->kernel.launch({bh}, {kSpattnAdaptiveColumnsThreads}, 0, stream, args);
  transpose_->kernel.launch({static_cast<unsigned>(num_k_tiles_), bh}, {kSpattnAdaptiveColumnsThreads}, 0, stream,
                            args);

  SpattnGates gates = selector_.gates(inputs);
  if (inputs.gates_grad) {
    // One sum per tile pair of every chosen block; pairs no kernel visits (past Nq or Nk,
    // above the causal diagonal) stay 0.
    const size_t bytes = static_cast<size_t>(batch * heads_ * g.nq_blocks * g.max_k) * gates.q_tiles * gates.k_tiles * 4;
    if (partials_.size() < bytes) partials_ = runtime::DeviceBuffer(bytes);
    SPATTN_CU_CHECK(cuMemsetD32Async(partials_.get(), 0, bytes / 4, stream));
    gates.chosen = chosen;
    gates.partials = static_cast<float*>(partials_.data());
    gates.max_k = static_cast<int32_t>(g.max_k);
  }
  return gates;
}

void AdaptiveBackwardTables::write_gate_grads(const AdaptiveInputs& inputs, const SpattnGates& gates, int64_t batch,
                                              CUstream stream) {
  if (!inputs.gates_grad) return;
  const AdaptiveGeometry& g = selector_.geometry();
  const TensorView& out = *inputs.gates_grad;
  SPATTN_CU_CHECK(cuMemsetD32Async(reinterpret_cast<CUdeviceptr>(out.data), 0,
                                   static_cast<size_t>(batch * heads_ * g.nq_blocks * g.nk_blocks), stream));
  SpattnAdaptiveGateGradParams p{};
  p.gates = gates;
  p.grad = static_cast<float*>(out.data);
  p.entries = batch * heads_ * g.nq_blocks * g.max_k;
  void* args[] = {&p};
  const int64_t ctas = (p.entries + 255) / 256;
  SPATTN_REQUIRE(ctas <= 0x7fffffff, "adaptive: {} chosen blocks exceed the launch grid", p.entries);
  gate_grads_->kernel.launch({static_cast<unsigned>(ctas)}, {256}, 0, stream, args);
}

}  // namespace spattn::engine
