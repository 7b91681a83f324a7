#include "engine/forward.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "common/check.hpp"
#include "common/log.hpp"
#include "runtime/driver.hpp"
#include "templates/params.cuh"

namespace spattn::engine {

std::string Problem::to_string() const {
  return fmt::format("B={} Nq={} Nk={} Hq={} Hkv={} D={} {}", batch, nq, nk, heads, kv_heads, head_dim,
                     spattn::to_string(dtype));
}

double Problem::useful_flops(const LayoutStats& stats) const {
  return 4.0 * static_cast<double>(head_dim) * static_cast<double>(stats.allowed_pairs_total) *
         static_cast<double>(batch);
}

void check_tensor_4d(const TensorView& t, const char* name, int64_t b, int64_t n, int64_t h, int64_t d,
                     const char* layout, DType dtype) {
  SPATTN_REQUIRE(t.data != nullptr, "{} is a null pointer", name);
  SPATTN_REQUIRE(t.rank == 4, "{} must have 4 dimensions {}; got {}", name, layout, t.describe());
  SPATTN_REQUIRE(t.shape[0] == b && t.shape[1] == n && t.shape[2] == h && t.shape[3] == d,
                 "{} must have shape [{}, {}, {}, {}] {}; got {}", name, b, n, h, d, layout, t.describe());
  SPATTN_REQUIRE(t.dtype == dtype, "{} has dtype {} but Q has {}; all of Q, K, V, O must share one dtype", name,
                 to_string(t.dtype), to_string(dtype));
  SPATTN_REQUIRE(t.strides[3] == 1, "{} must be contiguous in the head dimension (stride 1); got {}", name,
                 t.describe());
  for (int k = 0; k < 3; ++k)
    SPATTN_REQUIRE(t.strides[k] % 8 == 0 && t.strides[k] >= 0,
                   "{}: strides must be non-negative multiples of 8 elements (16-byte rows for async copies); got {}",
                   name, t.describe());
  SPATTN_REQUIRE(reinterpret_cast<uintptr_t>(t.data) % 16 == 0, "{} must be 16-byte aligned", name);
}

Problem problem_from_tensors(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                             const TensorView* lse) {
  SPATTN_REQUIRE(q.rank == 4, "Q must be [B, Nq, Hq, D]; got {}", q.describe());
  SPATTN_REQUIRE(k.rank == 4, "K must be [B, Nk, Hkv, D]; got {}", k.describe());
  Problem p;
  p.batch = q.shape[0];
  p.nq = q.shape[1];
  p.heads = q.shape[2];
  p.head_dim = q.shape[3];
  p.nk = k.shape[1];
  p.kv_heads = k.shape[2];
  p.dtype = q.dtype;
  SPATTN_REQUIRE(p.batch >= 1 && p.nq >= 1 && p.nk >= 1 && p.heads >= 1 && p.kv_heads >= 1,
                 "every dimension must be >= 1 (got Q {}, K {})", q.describe(), k.describe());
  check_problem_supported(p.head_dim, p.dtype);
  SPATTN_REQUIRE(p.heads % p.kv_heads == 0,
                 "query heads ({}) must be a multiple of key/value heads ({}) for GQA/MQA", p.heads, p.kv_heads);
  SPATTN_REQUIRE(p.nq < (int64_t{1} << 30) && p.nk < (int64_t{1} << 30), "sequence lengths must be below 2^30 (got Nq={}, Nk={})", p.nq, p.nk);
  check_tensor_4d(q, "Q", p.batch, p.nq, p.heads, p.head_dim, "[B, Nq, Hq, D]", p.dtype);
  check_tensor_4d(k, "K", p.batch, p.nk, p.kv_heads, p.head_dim, "[B, Nk, Hkv, D]", p.dtype);
  check_tensor_4d(v, "V", p.batch, p.nk, p.kv_heads, p.head_dim, "[B, Nk, Hkv, D]", p.dtype);
  check_tensor_4d(o, "O", p.batch, p.nq, p.heads, p.head_dim, "[B, Nq, Hq, D]", p.dtype);
  if (lse) {
    SPATTN_REQUIRE(lse->data != nullptr, "LSE is a null pointer (pass no LSE view instead)");
    SPATTN_REQUIRE(lse->dtype == DType::kFloat32, "LSE must be fp32; got {}", to_string(lse->dtype));
    SPATTN_REQUIRE(lse->rank == 3 && lse->shape[0] == p.batch && lse->shape[1] == p.heads && lse->shape[2] == p.nq,
                   "LSE must have shape [{}, {}, {}] ([B, Hq, Nq]); got {}", p.batch, p.heads, p.nq, lse->describe());
    SPATTN_REQUIRE(lse->strides[2] == 1, "LSE must be contiguous along Nq; got {}", lse->describe());
  }
  return p;
}

bool encode_tile_map(SpattnTensorMap& map, const TensorView& t, int rows) {
  // [B, N, H, D] as dims innermost first, boxes of 64 head-dim elements x `rows` rows.
  const uint64_t dims[4] = {static_cast<uint64_t>(t.shape[3]), static_cast<uint64_t>(t.shape[1]),
                            static_cast<uint64_t>(t.shape[2]), static_cast<uint64_t>(t.shape[0])};
  const uint64_t strides[3] = {static_cast<uint64_t>(t.strides[1]) * 2, static_cast<uint64_t>(t.strides[2]) * 2,
                               static_cast<uint64_t>(t.strides[0]) * 2};
  const uint32_t box[4] = {64, static_cast<uint32_t>(rows), 1, 1};
  return runtime::encode_tensor_map(&map, t.data, 4, dims, strides, box);
}

Layout forward_layout(const Pattern& pattern, const Shape& shape, const LayoutOptions& options) {
  return is_adaptive(pattern) ? adaptive_layout(pattern, shape, options) : compile_layout(pattern, shape, options);
}

LayoutStats forward_layout_stats(const Pattern& pattern, const Layout& layout, int64_t head_dim) {
  return is_adaptive(pattern) ? adaptive_stats(layout, head_dim) : layout_stats(pattern, layout, head_dim);
}

std::vector<codegen::RenderedKernel> companion_kernels(const Pattern& pattern) {
  std::vector<codegen::RenderedKernel> out{codegen::render_support_kernels()};
  if (is_adaptive(pattern)) out.push_back(codegen::render_adaptive_kernels());
  return out;
}

codegen::KernelSpec kernel_spec_for(const Layout& layout, const KernelConfig& config, const Problem& problem,
                                    const std::string& arch, bool documents) {
  codegen::KernelSpec spec;
  spec.parts = layout.parts;
  spec.config = config;
  spec.head_dim = static_cast<int>(problem.head_dim);
  spec.dtype = problem.dtype;
  spec.arch = arch;
  spec.permuted_keys = false;
  for (const BlockTable& t : layout.tables) spec.permuted_keys |= !t.k_slots.empty();
  spec.token_offsets = !(layout.rect == TokenRect{0, layout.shape.nq, 0, layout.shape.nk});
  spec.varlen = documents;
  spec.gates = layout.adaptive_block > 0;
  // Documents of patterns without per-row key ranges take each document shape's layout,
  // token orders included (DocumentTables' host path).
  if (documents && !document_tables_on_gpu(layout.parts)) spec.permuted_keys = true;
  return spec;
}

codegen::RenderedKernel render_kernel(const Layout& layout, const KernelConfig& config, const Problem& problem,
                                      const std::string& arch, bool documents) {
  return codegen::render_forward(kernel_spec_for(layout, config, problem, arch, documents));
}

void localise_slots(Layout& layout) {
  const TokenRect& r = layout.rect;
  const int64_t nq = r.q_end - r.q_begin, nk = r.k_end - r.k_begin;
  // Explicit slots that are 0, 1, ..., n - 1 and then padding are the identity order.
  auto localise = [](std::vector<int32_t>& slots, int64_t begin, int64_t n, const char* axis) {
    if (slots.empty()) {
      SPATTN_REQUIRE(begin == 0, "layout: an identity {} order of a rectangle starting at {}", axis, begin);
      return;
    }
    bool identity = true;
    for (size_t s = 0; s < slots.size(); ++s) {
      if (slots[s] >= 0) slots[s] = static_cast<int32_t>(slots[s] - begin);
      identity &= static_cast<int64_t>(s) < n ? slots[s] == static_cast<int32_t>(s) : slots[s] == -1;
    }
    if (identity) slots.clear();
  };
  for (BlockTable& t : layout.tables) {
    localise(t.q_slots, r.q_begin, nq, "query");
    localise(t.k_slots, r.k_begin, nk, "key");
  }
}

ForwardPlan::ForwardPlan(const Pattern& pattern, const Problem& problem, const KernelConfig& config,
                         int device, const SubProblem* sub, bool documents)
    : pattern_(pattern), problem_(problem), config_(config), device_(device) {
  whole_ = sub ? sub->whole : problem.shape();
  rect_ = sub ? sub->rect : TokenRect{0, problem.nq, 0, problem.nk};
  SPATTN_REQUIRE(rect_.q_end - rect_.q_begin == problem.nq && rect_.k_end - rect_.k_begin == problem.nk &&
                     whole_.heads == problem.heads,
                 "sub-problem rows [{}, {}) x keys [{}, {}) of {} heads do not match the plan's {}", rect_.q_begin,
                 rect_.q_end, rect_.k_begin, rect_.k_end, whole_.heads, problem.to_string());
  runtime::make_current(device);
  const runtime::DeviceInfo info = runtime::device_info(device);
  config.check(static_cast<int>(problem.head_dim), problem.dtype, info.arch(), info.smem_per_block_optin);
  sm_count_ = info.sm_count;

  const auto t0 = std::chrono::steady_clock::now();
  LayoutOptions layout_options = config.layout_options();
  layout_options.rect = rect_;
  SPATTN_REQUIRE(!(sub && is_adaptive(pattern)), "adaptive patterns choose blocks of whole problems; they do not "
                                                 "run on sub-rectangles (ring attention's shard pairs)");
  SPATTN_REQUIRE(!(sub && documents), "documents run whole problems, not sub-rectangles (internal)");
  if (documents) layout_options = documents_plan_options(pattern, problem.heads, layout_options);
  layout_ = forward_layout(pattern, whole_, layout_options);
  if (sub) {
    localise_slots(layout_);
  } else {
    stats_ = forward_layout_stats(pattern, layout_, problem.head_dim);
  }
  layout_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  rendered_ = render_kernel(layout_, config, problem, info.arch(), documents);
  fwd_ = &load_kernel(rendered_, device);
  if (rendered_.smem_bytes > 48 * 1024) fwd_->kernel.set_max_dynamic_shared(rendered_.smem_bytes);
  const codegen::RenderedKernel support = codegen::render_support_kernels();
  if (layout_.needs_merge())
    merge_ = &load_kernel(support, device, problem.dtype == DType::kBFloat16 ? "spattn_merge_bf16" : "spattn_merge_fp16");
  // Documents whose tables come from the host may leave rows without a table call by call.
  if ((!layout_.covers_all_rows || documents) && !layout_.needs_merge())
    fill_ = &load_kernel(support, device, "spattn_fill_empty");

  // Rows are split against the number of work items the GPU runs at once; longest-first
  // orders heads in groups whose K and V fit in half the L2.
  const KernelFamilyInfo& family = kernel_family_info(config.family);
  const bool copies = config.family == KernelFamily::kSm90 && config.gather == TokenGather::kCopy;
  if (!documents)  // documents build their tables per call
    tables_ = DeviceLayout(layout_,
                           build_work_list(layout_, int64_t{family.ctas_per_sm} * info.sm_count,
                                           config.schedule == ScheduleOrder::kLongestFirst,
                                           longest_first_heads_per_group(info.l2_bytes, problem.nk, problem.head_dim,
                                                                         problem.heads / problem.kv_heads)));
  if (copies && !documents) {
    TokenCopyPlan plan = plan_token_copies(layout_, tables_.slot_offsets(), problem.heads / problem.kv_heads);
    if (!plan.empty())
      copies_ = RowCopies(std::move(plan), load_kernel(support, device, "spattn_gather_rows"), problem.dtype,
                          problem.head_dim);
  }
  if (is_adaptive(pattern))
    adaptive_ = std::make_unique<AdaptiveSelector>(pattern, problem, config.tile_m, config.tile_n, device);
  if (documents)
    documents_ = std::make_unique<DocumentTables>(pattern, layout_, rendered_, device, problem.heads,
                                                  problem.heads / problem.kv_heads, problem.head_dim, info.l2_bytes);
  if (work_list().split_slots > 0)
    split_merge_ = &load_kernel(support, device,
                                problem.dtype == DType::kBFloat16 ? "spattn_merge_splits_bf16" : "spattn_merge_splits_fp16");
  log::debug("plan {} | {} | {} parts, {} tables, {} work items ({} split rows), layout {:.1f} ms | kernel {} ({})",
             problem.to_string(), config.to_string(), layout_.parts.size(), layout_.tables.size(),
             work_list().num_items(), work_list().num_groups(), layout_ms_, rendered_.program_name,
             fwd_->cache_hit ? "cache hit" : "compiled");
}

void ForwardPlan::launch_forward(SpattnFwdParams& fp, const TensorView& q, const TensorView& k, const TensorView& v,
                                 CUstream stream) const {
  const unsigned threads = static_cast<unsigned>(rendered_.threads);
  const unsigned smem = static_cast<unsigned>(rendered_.smem_bytes);
  switch (config_.family) {
    case KernelFamily::kSm80: {
      // Documents carry their batch index: one CTA per work item of the whole call.
      const unsigned batch = fp.vl_tiles ? 1u : static_cast<unsigned>(fp.batch);
      SPATTN_REQUIRE(batch <= 65535, "batch {} exceeds the launch grid limit 65535", fp.batch);
      void* args[] = {&fp};
      fwd_->kernel.launch({static_cast<unsigned>(fp.num_work), batch}, {threads}, smem, stream, args);
      return;
    }
    case KernelFamily::kSm90: {
      SpattnFwd90Params p{};
      p.base = fp;
      const int64_t total = int64_t{fp.num_work} * (fp.vl_tiles ? 1 : fp.batch);
      SPATTN_REQUIRE(total <= std::numeric_limits<int32_t>::max(),
                     "{} work items x batch {} exceed the 32-bit work index of the sm90 kernel", fp.num_work,
                     fp.batch);
      p.total_items = static_cast<int32_t>(total);
      p.tma_q = encode_tile_map(p.tm_q, q, config_.tile_m) ? 1 : 0;
      p.tma_kv = encode_tile_map(p.tm_k, k, config_.tile_n) && encode_tile_map(p.tm_v, v, config_.tile_n) ? 1 : 0;
      if (!copies_.empty()) {
        const RowCopies::Maps m =
            copies_.encode(p.tm_qc, nullptr, p.tm_kc, p.tm_vc, config_.tile_m, config_.tile_n, fp.batch);
        p.q_copy_row = m.q_row;
        p.kv_copy_row = m.kv_row;
      }
      const int64_t ctas = int64_t{kernel_family_info(config_.family).ctas_per_sm} * sm_count_;
      const unsigned grid = static_cast<unsigned>(std::min<int64_t>(total, ctas));
      void* args[] = {&p};
      fwd_->kernel.launch({grid}, {threads}, smem, stream, args);
      return;
    }
  }
  SPATTN_FAIL(ErrorCode::kInternal, "no launch for kernel family {}", static_cast<int>(config_.family));
}

ForwardPlan::~ForwardPlan() = default;

void ForwardPlan::reserve_batch(int64_t batch) {
  if (!adaptive_ || tables_.batch_copies() >= batch) return;
  runtime::make_current(device_);
  tables_ = DeviceLayout(layout_, tables_.work_list(), batch);
}

void ForwardPlan::run(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                      const TensorView* lse, float scale, CUstream stream, const AdaptiveInputs* adaptive) {
  const Problem p = problem_from_tensors(q, k, v, o, lse);
  SPATTN_REQUIRE(p.nq == problem_.nq && p.nk == problem_.nk && p.heads == problem_.heads &&
                     p.kv_heads == problem_.kv_heads && p.head_dim == problem_.head_dim && p.dtype == problem_.dtype,
                 "tensors ({}) do not match the plan ({})", p.to_string(), problem_.to_string());
  SPATTN_REQUIRE(adaptive_ || !has_adaptive_inputs(adaptive),
                 "adaptive inputs (scores, projections, chosen blocks, gates) were given for a '{}' pattern; they "
                 "belong to adaptive patterns only",
                 pattern_.kind());
  SPATTN_REQUIRE(adaptive == nullptr || !adaptive->gates_grad,
                 "adaptive gates_grad is an output of the backward pass; the forward pass takes the gates only");
  SPATTN_REQUIRE(!documents_, "a documents plan runs through run_documents (internal)");
  runtime::make_current(device_);
  SpattnGates gates{};
  if (adaptive_) {
    reserve_batch(p.batch);
    const AdaptiveInputs inputs = adaptive ? *adaptive : AdaptiveInputs{};
    adaptive_->run(q, k, inputs, p.batch,
                   {const_cast<int32_t*>(tables_.arena()), tables_.tables(), tables_.arena_stride(),
                    tables_.batch_copies()},
                   stream);
    gates = adaptive_->gates(inputs);
  }
  execute(q, k, v, o, lse, p, scale, stream, gates);
}

void ForwardPlan::run_documents(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                                const TensorView* lse, const DocumentLengths& lengths, bool check, float scale,
                                CUstream stream) {
  SPATTN_REQUIRE(documents_, "run_documents on a plan without documents (internal)");
  const Problem p = problem_from_tensors(q, k, v, o, lse);
  SPATTN_REQUIRE(p.heads == problem_.heads && p.kv_heads == problem_.kv_heads && p.head_dim == problem_.head_dim &&
                     p.dtype == problem_.dtype,
                 "tensors ({}) do not match the plan ({})", p.to_string(), problem_.to_string());
  runtime::make_current(device_);
  documents_->build(lengths, check, stream);
  execute(q, k, v, o, lse, p, scale, stream);
}

void ForwardPlan::execute(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                          const TensorView* lse, const Problem& p, float scale, CUstream stream, SpattnGates gates) {
  const DeviceLayout& tables = device_layout();
  if (scale <= 0) scale = 1.0f / std::sqrt(static_cast<float>(p.head_dim));
  const int parts = static_cast<int>(layout_.parts.size());
  const bool merge = layout_.needs_merge();

  if (merge) {
    const size_t o_elems = static_cast<size_t>(parts) * p.batch * p.nq * p.heads * p.head_dim;
    const size_t l_elems = static_cast<size_t>(parts) * p.batch * p.heads * p.nq;
    if (part_o_.size() < o_elems * 4) part_o_ = runtime::DeviceBuffer(o_elems * 4);
    if (part_lse_.size() < l_elems * 4) part_lse_ = runtime::DeviceBuffer(l_elems * 4);
    // Rows a part does not reach keep LSE = -inf (weight 0 in the merge).
    SPATTN_CU_CHECK(cuMemsetD32Async(part_lse_.get(), 0xff800000u, l_elems, stream));
  }


  if (fill_ && (!documents_ || documents_->needs_fill())) {
    SpattnFillParams f{};
    set_output(f, o, lse);
    f.batch = static_cast<int32_t>(p.batch);
    f.nq = static_cast<int32_t>(p.nq);
    f.heads = static_cast<int32_t>(p.heads);
    f.head_dim = static_cast<int32_t>(p.head_dim);
    const int64_t rows = p.batch * p.heads * p.nq;
    void* args[] = {&f};
    fill_->kernel.launch({static_cast<unsigned>((rows + 7) / 8)}, {256}, 0, stream, args);
  }

  const WorkList& wl = work_list();
  const int64_t num_work = wl.num_items();
  if (wl.split_slots > 0) {
    const size_t rows = static_cast<size_t>(p.batch) * wl.split_slots * config_.tile_m;
    if (split_o_.size() < rows * p.head_dim * 4) split_o_ = runtime::DeviceBuffer(rows * p.head_dim * 4);
    if (split_lse_.size() < rows * 4) split_lse_ = runtime::DeviceBuffer(rows * 4);
  }
  if (num_work > 0) {
    SpattnFwdParams fp{};
    set_inputs(fp, q, k, v);
    set_output(fp, o, lse);
    fp.nq = static_cast<int32_t>(p.nq);
    fp.nk = static_cast<int32_t>(p.nk);
    fp.heads = static_cast<int32_t>(p.heads);
    fp.kv_group = static_cast<int32_t>(p.heads / p.kv_heads);
    fp.scale_log2 = scale * 1.4426950408889634f;
    fp.arena = tables.arena();
    fp.tables = tables.tables();
    fp.work = documents_ ? documents_->work() : tables.work();
    fp.num_work = static_cast<int32_t>(num_work);
    fp.split_o = reinterpret_cast<float*>(split_o_.get());
    fp.split_lse = reinterpret_cast<float*>(split_lse_.get());
    fp.num_split_slots = wl.split_slots;
    fp.part_o = merge ? reinterpret_cast<float*>(part_o_.get()) : nullptr;
    fp.part_lse = merge ? reinterpret_cast<float*>(part_lse_.get()) : nullptr;
    fp.write_parts = merge ? 1 : 0;
    fp.batch = static_cast<int32_t>(p.batch);
    fp.q_offset = static_cast<int32_t>(rect_.q_begin);
    fp.k_offset = static_cast<int32_t>(rect_.k_begin);
    fp.mask_nq = static_cast<int32_t>(whole_.nq);
    fp.mask_nk = static_cast<int32_t>(whole_.nk);
    fp.arena_stride_b = tables.arena_stride();
    if (gates.gates) {
      gates.inv_scale_log2 = 1.0f / (scale * 1.4426950408889634f);
      fp.gates = gates;
    }
    if (documents_) {
      fp.vl_tiles = documents_->tiles();
      fp.vl_docs = documents_->docs();
    }
    copies_.gather(tables.arena(), q, nullptr, k, v, p.batch, p.nq, p.nk, stream);
    launch_forward(fp, q, k, v, stream);
  }

  if (wl.split_slots > 0) {
    SpattnSplitMergeParams sm{};
    sm.split_o = reinterpret_cast<const float*>(split_o_.get());
    sm.split_lse = reinterpret_cast<const float*>(split_lse_.get());
    sm.groups = tables.groups();
    sm.arena = tables.arena();
    sm.tables = tables.tables();
    set_output(sm, o, lse);
    sm.part_o = merge ? reinterpret_cast<float*>(part_o_.get()) : nullptr;
    sm.part_lse = merge ? reinterpret_cast<float*>(part_lse_.get()) : nullptr;
    sm.write_parts = merge ? 1 : 0;
    sm.num_groups = static_cast<int32_t>(wl.num_groups());
    sm.num_split_slots = wl.split_slots;
    sm.batch = static_cast<int32_t>(p.batch);
    sm.tile_m = config_.tile_m;
    sm.head_dim = static_cast<int32_t>(p.head_dim);
    sm.nq = static_cast<int32_t>(p.nq);
    sm.heads = static_cast<int32_t>(p.heads);
    void* args[] = {&sm};
    split_merge_->kernel.launch({static_cast<unsigned>(sm.num_groups), static_cast<unsigned>(p.batch)}, {256}, 0,
                                stream, args);
  }

  if (merge) {
    SpattnMergeParams m{};
    m.part_o = reinterpret_cast<const float*>(part_o_.get());
    m.part_lse = reinterpret_cast<const float*>(part_lse_.get());
    set_output(m, o, lse);
    m.parts = parts;
    m.batch = static_cast<int32_t>(p.batch);
    m.nq = static_cast<int32_t>(p.nq);
    m.heads = static_cast<int32_t>(p.heads);
    m.head_dim = static_cast<int32_t>(p.head_dim);
    const int64_t rows = p.batch * p.heads * p.nq;
    void* args[] = {&m};
    merge_->kernel.launch({static_cast<unsigned>((rows + 7) / 8)}, {256}, 0, stream, args);
  }
}

}  // namespace spattn::engine
