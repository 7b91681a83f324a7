#include "engine/adaptive.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "codegen/kernel_spec.hpp"
#include "common/check.hpp"
#include "engine/forward.hpp"
#include "runtime/blas.hpp"
#include "templates/params.cuh"

namespace spattn::engine {

namespace {

void grow(runtime::DeviceBuffer& buf, size_t bytes) {
  if (buf.size() < bytes) buf = runtime::DeviceBuffer(bytes);
}

int32_t i32(int64_t v, const char* what) {
  SPATTN_REQUIRE(v >= 0 && v <= 0x7fffffff, "adaptive: {} ({}) exceeds the 32-bit range of the selection kernels",
                 what, v);
  return static_cast<int32_t>(v);
}

unsigned warp_blocks(int64_t warps) {
  const int64_t blocks = (warps + 3) / 4;  // 4 warps per CTA
  SPATTN_REQUIRE(blocks <= 0x7fffffff, "adaptive: {} rows exceed the launch grid", warps);
  return static_cast<unsigned>(blocks);
}

// A contiguous fp32 tensor of the given shape (rank = shape size).
void check_f32(const TensorView& t, const char* name, std::initializer_list<int64_t> shape, const char* layout) {
  SPATTN_REQUIRE(t.data != nullptr, "{} is a null pointer", name);
  SPATTN_REQUIRE(t.dtype == DType::kFloat32, "{} must be fp32 {}; got {}", name, layout, t.describe());
  SPATTN_REQUIRE(t.rank == static_cast<int>(shape.size()), "{} must have {} dimensions {}; got {}", name,
                 shape.size(), layout, t.describe());
  int d = 0;
  for (int64_t s : shape) {
    SPATTN_REQUIRE(t.shape[d] == s, "{} must have shape {} = [{}]; got {}", name, layout,
                   fmt::join(shape, ", "), t.describe());
    ++d;
  }
  SPATTN_REQUIRE(reinterpret_cast<uintptr_t>(t.data) % 4 == 0, "{} must be 4-byte aligned", name);
}

bool contiguous(const TensorView& t) {
  int64_t expect = 1;
  for (int d = t.rank - 1; d >= 0; --d) {
    if (t.shape[d] != 1 && t.strides[d] != expect) return false;
    expect *= t.shape[d];
  }
  return true;
}

}  // namespace

AdaptiveSelector::AdaptiveSelector(const Pattern& pattern, const Problem& problem, int64_t tile_m, int64_t tile_n,
                                   int device)
    : geometry_(adaptive_geometry(pattern, problem.nq, problem.nk)),
      heads_(problem.heads),
      kv_heads_(problem.kv_heads),
      head_dim_(problem.head_dim),
      tile_m_(tile_m),
      tile_n_(tile_n) {
  const codegen::RenderedKernel rendered = codegen::render_adaptive_kernels();
  select_ = &load_kernel(rendered, device, "spattn_adaptive_select");
  pool_ = &load_kernel(rendered, device,
                       problem.dtype == DType::kBFloat16 ? "spattn_adaptive_pool_bf16" : "spattn_adaptive_pool_fp16");
  std::vector<int32_t> rows;
  rows.reserve(3 * geometry_.k.size());
  rows.insert(rows.end(), geometry_.k.begin(), geometry_.k.end());
  rows.insert(rows.end(), geometry_.diagonal.begin(), geometry_.diagonal.end());
  rows.insert(rows.end(), geometry_.allowed.begin(), geometry_.allowed.end());
  rows_ = runtime::DeviceBuffer(rows.size() * 4);
  rows_.upload(rows.data(), rows.size() * 4);
}

std::string AdaptiveSelector::describe() const {
  const AdaptiveGeometry& g = geometry_;
  return fmt::format("adaptive: up to {} of {} key blocks of {} tokens per query block ({} query blocks{}), scores {}",
                     g.max_k, g.nk_blocks, g.block, g.nq_blocks, g.causal ? ", causal" : "", last_source_);
}

void AdaptiveSelector::check_inputs(const AdaptiveInputs& in, int64_t batch) const {
  const AdaptiveGeometry& g = geometry_;
  SPATTN_REQUIRE(!(in.scores && (in.wq || in.wk)),
                 "adaptive: supplied scores and projections (wq, wk) exclude each other; pass one or the other");
  SPATTN_REQUIRE((in.wq == nullptr) == (in.wk == nullptr), "adaptive: wq and wk go together; pass both or neither");
  if (in.scores) {
    const TensorView& s = *in.scores;
    check_f32(s, "adaptive scores", {batch, heads_, g.nq_blocks, g.nk_blocks}, "[B, Hq, nq_blocks, nk_blocks]");
    SPATTN_REQUIRE(s.strides[3] == 1 && s.strides[0] >= 0 && s.strides[1] >= 0 && s.strides[2] >= 0,
                   "adaptive scores must be contiguous in the last dimension with non-negative strides; got {}",
                   s.describe());
  }
  if (in.wq) {
    for (const auto& [w, name, heads] :
         {std::tuple{in.wq, "wq", heads_}, std::tuple{in.wk, "wk", kv_heads_}}) {
      const int64_t p = w->rank == 2 ? w->shape[1] : w->rank == 3 ? w->shape[2] : 0;
      if (w->rank == 2)
        check_f32(*w, name, {head_dim_, p}, "[D, P]");
      else
        check_f32(*w, name, {heads, head_dim_, p}, w == in.wq ? "[Hq, D, P]" : "[Hkv, D, P]");
      SPATTN_REQUIRE(p >= 1 && contiguous(*w), "{} must be contiguous with P >= 1 ([D, P] or [heads, D, P]); got {}",
                     name, w->describe());
    }
    const int64_t pq = in.wq->shape[in.wq->rank - 1], pk = in.wk->shape[in.wk->rank - 1];
    SPATTN_REQUIRE(pq == pk, "adaptive: wq projects to {} and wk to {} dimensions; they must agree", pq, pk);
  }
  SPATTN_REQUIRE(!in.gates_grad || in.gates, "adaptive gates_grad needs the gates it is the gradient of (gates)");
  for (const auto& [t, name] : {std::pair{in.gates, "adaptive gates"}, std::pair{in.gates_grad, "adaptive gates_grad"}}) {
    if (!t) continue;
    check_f32(*t, name, {batch, heads_, g.nq_blocks, g.nk_blocks}, "[B, Hq, nq_blocks, nk_blocks]");
    SPATTN_REQUIRE(contiguous(*t), "{} must be contiguous ([B, Hq, nq_blocks, nk_blocks] row-major); got {}", name,
                   t->describe());
  }
  if (in.blocks) {
    const TensorView& t = *in.blocks;
    SPATTN_REQUIRE(t.data != nullptr, "adaptive blocks output is a null pointer");
    SPATTN_REQUIRE(t.dtype == DType::kInt32 && t.rank == 4 && t.shape[0] == batch && t.shape[1] == heads_ &&
                       t.shape[2] == g.nq_blocks && t.shape[3] == g.max_k && contiguous(t),
                   "adaptive blocks output must be int32 [B, Hq, nq_blocks, max_k] = [{}, {}, {}, {}], contiguous; got {}",
                   batch, heads_, g.nq_blocks, g.max_k, t.describe());
  }
}

void AdaptiveSelector::pool(const TensorView& x, int64_t blocks, runtime::DeviceBuffer& out, int64_t batch,
                            CUstream stream) {
  const int64_t heads = x.shape[2];
  grow(out, static_cast<size_t>(batch * heads * blocks * head_dim_) * 4);
  SpattnAdaptivePoolParams p{};
  p.src = x.data;
  p.stride_b = x.strides[0];
  p.stride_n = x.strides[1];
  p.stride_h = x.strides[2];
  p.out = static_cast<float*>(out.data());
  p.batch = i32(batch, "batch");
  p.n = i32(x.shape[1], "sequence length");
  p.heads = i32(heads, "heads");
  p.block = i32(geometry_.block, "block");
  p.blocks = i32(blocks, "blocks");
  p.head_dim = i32(head_dim_, "head dim");
  void* args[] = {&p};
  pool_->kernel.launch({warp_blocks(batch * heads * blocks)}, {128}, 0, stream, args);
}

void AdaptiveSelector::project(const runtime::DeviceBuffer& pooled, const TensorView& w, int64_t heads,
                               int64_t blocks, runtime::DeviceBuffer& out, int64_t batch, CUstream stream) {
  const int64_t d = head_dim_, p = w.shape[w.rank - 1];
  grow(out, static_cast<size_t>(batch * heads * blocks * p) * 4);
  using runtime::blas::Operand;
  using runtime::blas::Output;
  if (w.rank == 2) {
    // Every head's blocks are rows of one [B * heads * blocks, D] matrix.
    runtime::blas::gemm(batch * heads * blocks, p, d, 1, 1.f, Operand{pooled.data(), DType::kFloat32, d, 0, false},
                        Operand{w.data, DType::kFloat32, p, 0, false}, 0.f, Output{out.data(), DType::kFloat32, p, 0},
                        stream, runtime::blas::Compute::kFastTf32);
    return;
  }
  for (int64_t b = 0; b < batch; ++b) {
    const float* a = static_cast<const float*>(pooled.data()) + b * heads * blocks * d;
    float* c = static_cast<float*>(out.data()) + b * heads * blocks * p;
    runtime::blas::gemm(blocks, p, d, heads, 1.f, Operand{a, DType::kFloat32, d, blocks * d, false},
                        Operand{w.data, DType::kFloat32, p, d * p, false}, 0.f,
                        Output{c, DType::kFloat32, p, blocks * p}, stream, runtime::blas::Compute::kFastTf32);
  }
}

const int32_t* AdaptiveSelector::run(const TensorView& q, const TensorView& k, const AdaptiveInputs& in,
                                     int64_t batch, const AdaptiveTarget& target, CUstream stream) {
  check_inputs(in, batch);
  SPATTN_REQUIRE(target.copies >= batch, "adaptive: tables for {} batches, the call has {}", target.copies, batch);
  const AdaptiveGeometry& g = geometry_;
  const float* scores = nullptr;
  int64_t s_b = 0, s_h = 0, s_row = 0;
  if (in.scores) {
    scores = static_cast<const float*>(in.scores->data);
    s_b = in.scores->strides[0];
    s_h = in.scores->strides[1];
    s_row = in.scores->strides[2];
    last_source_ = "supplied by the caller";
  } else {
    if (!runtime::blas::available())
      SPATTN_FAIL(ErrorCode::kUnsupported,
                  "adaptive patterns compute their block scores with cuBLAS, which is not available: {} (or supply "
                  "the scores, AdaptiveInputs::scores)",
                  runtime::blas::unavailable_reason());
    pool(q, g.nq_blocks, pooled_q_, batch, stream);
    pool(k, g.nk_blocks, pooled_k_, batch, stream);
    const runtime::DeviceBuffer* pq = &pooled_q_;
    const runtime::DeviceBuffer* pk = &pooled_k_;
    int64_t dim = head_dim_;
    if (in.wq) {
      project(pooled_q_, *in.wq, heads_, g.nq_blocks, proj_q_, batch, stream);
      project(pooled_k_, *in.wk, kv_heads_, g.nk_blocks, proj_k_, batch, stream);
      pq = &proj_q_;
      pk = &proj_k_;
      dim = in.wq->shape[in.wq->rank - 1];
    }
    // S[b, h] = Pq[b, h] Pk[b, h / group]ᵀ: one strided batch over (b, KV head) per query
    // head of a group (query heads of one KV head are consecutive).
    grow(scores_, static_cast<size_t>(batch * heads_ * g.nq_blocks * g.nk_blocks) * 4);
    const int64_t group = heads_ / kv_heads_;
    using runtime::blas::Operand;
    using runtime::blas::Output;
    for (int64_t gi = 0; gi < group; ++gi) {
      const float* a = static_cast<const float*>(pq->data()) + gi * g.nq_blocks * dim;
      float* c = static_cast<float*>(scores_.data()) + gi * g.nq_blocks * g.nk_blocks;
      runtime::blas::gemm(g.nq_blocks, g.nk_blocks, dim, batch * kv_heads_, 1.f,
                          Operand{a, DType::kFloat32, dim, group * g.nq_blocks * dim, false},
                          Operand{pk->data(), DType::kFloat32, dim, g.nk_blocks * dim, true}, 0.f,
                          Output{c, DType::kFloat32, g.nk_blocks, group * g.nq_blocks * g.nk_blocks}, stream,
                          runtime::blas::Compute::kFastTf32);
    }
    scores = static_cast<const float*>(scores_.data());
    s_row = g.nk_blocks;
    s_h = g.nq_blocks * g.nk_blocks;
    s_b = heads_ * s_h;
    last_source_ = in.wq ? "computed: projected block means, TF32 GEMM" : "computed: block means, TF32 GEMM";
  }

  int32_t* chosen = nullptr;
  if (in.blocks) {
    chosen = static_cast<int32_t*>(in.blocks->data);
  } else {
    grow(chosen_, static_cast<size_t>(std::max<int64_t>(1, batch * heads_ * g.nq_blocks * g.max_k)) * 4);
    chosen = static_cast<int32_t*>(chosen_.data());
  }
  SpattnAdaptiveSelectParams p{};
  p.scores = scores;
  p.s_stride_b = s_b;
  p.s_stride_h = s_h;
  p.s_stride_row = s_row;
  const int32_t* rows = static_cast<const int32_t*>(rows_.data());
  p.k = rows;
  p.diagonal = rows + g.nq_blocks;
  p.allowed = rows + 2 * g.nq_blocks;
  p.chosen = chosen;
  p.c_stride_row = g.max_k;
  p.c_stride_h = g.nq_blocks * g.max_k;
  p.c_stride_b = heads_ * p.c_stride_h;
  p.arena = target.arena;
  p.tables = target.tables;
  p.arena_stride_b = target.stride;
  p.batch = i32(batch, "batch");
  p.heads = i32(heads_, "heads");
  p.nq_blocks = i32(g.nq_blocks, "query blocks");
  p.nk_blocks = i32(g.nk_blocks, "key blocks");
  p.max_k = i32(g.max_k, "max_k");
  p.q_tiles_per_block = i32(g.block / tile_m_, "query tiles per block");
  p.k_tiles_per_block = i32(g.block / tile_n_, "key tiles per block");
  p.tile_m = i32(tile_m_, "tile_m");
  p.tile_n = i32(tile_n_, "tile_n");
  p.num_q_tiles = i32((g.nq + tile_m_ - 1) / tile_m_, "query tiles");
  p.nq = i32(g.nq, "Nq");
  p.nk = i32(g.nk, "Nk");
  p.causal = g.causal ? 1 : 0;
  // Rows of scores (and the picks) staged in shared memory: up to 4 warps per CTA within
  // 48 KB; rows too long for one warp's 48 KB (about 12k key blocks) stay in global memory.
  const int64_t row_bytes = (g.nk_blocks + g.max_k) * 4;
  const int64_t warps = std::clamp<int64_t>(48 * 1024 / row_bytes, 1, 4);
  p.stage_row = row_bytes <= 48 * 1024 ? 1 : 0;
  const int64_t rows_total = batch * heads_ * g.nq_blocks;
  const int64_t ctas = p.stage_row ? (rows_total + warps - 1) / warps : (rows_total + 3) / 4;
  SPATTN_REQUIRE(ctas <= 0x7fffffff, "adaptive: {} rows exceed the launch grid", rows_total);
  const unsigned threads = p.stage_row ? static_cast<unsigned>(32 * warps) : 128u;
  const unsigned smem = p.stage_row ? static_cast<unsigned>(warps * row_bytes) : 0u;
  void* args[] = {&p};
  select_->kernel.launch({static_cast<unsigned>(ctas)}, {threads}, smem, stream, args);
  return chosen;
}

bool has_adaptive_inputs(const AdaptiveInputs* in) {
  return in && (in->scores || in->wq || in->wk || in->blocks || in->gates || in->gates_grad);
}

SpattnGates AdaptiveSelector::gates(const AdaptiveInputs& in) const {
  SpattnGates out{};
  if (!in.gates) return out;
  const AdaptiveGeometry& g = geometry_;
  out.gates = static_cast<const float*>(in.gates->data);
  out.rows = i32(g.nq_blocks, "query blocks");
  out.cols = i32(g.nk_blocks, "key blocks");
  out.q_tiles = i32(g.block / tile_m_, "query tiles per block");
  out.k_tiles = i32(g.block / tile_n_, "key tiles per block");
  return out;
}

}  // namespace spattn::engine
