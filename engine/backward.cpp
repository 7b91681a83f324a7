#include "engine/backward.hpp"

#include <cmath>

#include "common/check.hpp"
#include "common/log.hpp"
#include "runtime/driver.hpp"
#include "templates/params.cuh"

namespace spattn::engine {

Problem backward_problem_from_tensors(const TensorView& q, const TensorView& k, const TensorView& v,
                                      const TensorView& o, const TensorView& lse, const TensorView& d_o,
                                      const TensorView& dq, const TensorView& dk, const TensorView& dv) {
  const Problem p = problem_from_tensors(q, k, v, o, &lse);
  check_tensor_4d(d_o, "dO", p.batch, p.nq, p.heads, p.head_dim, "[B, Nq, Hq, D]", p.dtype);
  check_tensor_4d(dq, "dQ", p.batch, p.nq, p.heads, p.head_dim, "[B, Nq, Hq, D]", p.dtype);
  check_tensor_4d(dk, "dK", p.batch, p.nk, p.kv_heads, p.head_dim, "[B, Nk, Hkv, D]", p.dtype);
  check_tensor_4d(dv, "dV", p.batch, p.nk, p.kv_heads, p.head_dim, "[B, Nk, Hkv, D]", p.dtype);
  return p;
}

void check_documents_backward(const Pattern& pattern, const Layout& layout) {
  if (!document_tables_on_gpu(layout.parts))
    SPATTN_FAIL(ErrorCode::kUnsupported,
                "backward over documents of a '{}' pattern is not supported yet: its document tables are built on the "
                "host (it has no per-row key ranges), and the backward pass builds them on the GPU only. Patterns "
                "whose rows are key ranges (dense, causal, windows, global + local, hierarchical, head groups and "
                "their unions / intersections) train on documents; run other patterns per document through "
                "Attention::backward",
                pattern.kind());
}

BackwardPlan::BackwardPlan(const Pattern& pattern, const Problem& problem, const KernelConfig& config, int device,
                           bool deterministic, bool documents)
    : problem_(problem), config_(config), device_(device), deterministic_(deterministic) {
  runtime::make_current(device);
  const runtime::DeviceInfo info = runtime::device_info(device);
  check_backward_config(config, static_cast<int>(problem.head_dim), problem.dtype, info.arch(),
                        info.smem_per_block_optin);
  LayoutOptions layout_options = config.layout_options();
  if (documents) layout_options = documents_plan_options(pattern, problem.heads, layout_options);
  SPATTN_REQUIRE(!(documents && is_adaptive(pattern)),
                 "adaptive patterns do not run over documents (documents_supported)");
  layout_ = forward_layout(pattern, problem.shape(), layout_options);
  if (documents) check_documents_backward(pattern, layout_);
  codegen::KernelSpec spec = kernel_spec_for(layout_, config, problem, info.arch(), documents);
  spec.deterministic = deterministic;
  rendered_ = codegen::render_backward(spec);
  bwd_ = &load_kernel(rendered_, device);
  if (rendered_.smem_bytes > 48 * 1024) bwd_->kernel.set_max_dynamic_shared(rendered_.smem_bytes);
  if (deterministic) {
    dq_ = &load_kernel(rendered_, device, "spattn_bwd_dq");
    if (rendered_.dq_smem_bytes > 48 * 1024) dq_->kernel.set_max_dynamic_shared(rendered_.dq_smem_bytes);
  }
  const codegen::RenderedKernel support = codegen::render_support_kernels();
  const bool bf16 = problem.dtype == DType::kBFloat16;
  prep_ = &load_kernel(support, device, bf16 ? "spattn_backward_prep_bf16" : "spattn_backward_prep_fp16");
  convert_ = &load_kernel(support, device, bf16 ? "spattn_backward_convert_bf16" : "spattn_backward_convert_fp16");
  if (documents) {
    documents_ = std::make_unique<DocumentBackwardTables>(layout_, rendered_, device, problem.heads,
                                                          problem.heads / problem.kv_heads, deterministic);
    log::debug("backward plan {} | {}{} | documents (tables built per call) | kernel {} ({})", problem.to_string(),
               config.to_string(), deterministic ? " deterministic" : "", rendered_.program_name,
               bwd_->cache_hit ? "cache hit" : "compiled");
    return;
  }
  if (is_adaptive(pattern)) {
    adaptive_ = std::make_unique<AdaptiveBackwardTables>(pattern, layout_, problem, device, deterministic);
    log::debug("backward plan {} | {}{} | adaptive (tables built per call) | kernel {} ({})", problem.to_string(),
               config.to_string(), deterministic ? " deterministic" : "", rendered_.program_name,
               bwd_->cache_hit ? "cache hit" : "compiled");
    return;
  }
  BackwardPacking packing;
  packing.deterministic = deterministic;
  packing.kv_group = problem.heads / problem.kv_heads;
  tables_ = DeviceBackwardLayout(layout_, packing);
  if (config.family == KernelFamily::kSm90 && config.gather == TokenGather::kCopy) {
    TokenCopyPlan plan = plan_token_copies(layout_, tables_.slot_offsets(), packing.kv_group);
    if (!plan.empty())
      copies_ = RowCopies(std::move(plan), load_kernel(support, device, "spattn_gather_rows"), problem.dtype,
                          problem.head_dim);
  }
  log::debug("backward plan {} | {}{} | {} tables, {} work items ({} dQ) | kernel {} ({})", problem.to_string(),
             config.to_string(), deterministic ? " deterministic" : "", layout_.tables.size(), tables_.num_items(),
             tables_.num_dq_items(), rendered_.program_name, bwd_->cache_hit ? "cache hit" : "compiled");
}

BackwardPlan::~BackwardPlan() = default;

void BackwardPlan::run(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                       const TensorView& lse, const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                       const TensorView& dv, float scale, CUstream stream, const AdaptiveInputs* adaptive) {
  SPATTN_REQUIRE(!documents_, "a documents backward plan runs through run_documents (internal)");
  SPATTN_REQUIRE(adaptive_ || !has_adaptive_inputs(adaptive),
                 "adaptive inputs (scores, projections, chosen blocks, gates) were given for the backward pass of a "
                 "static pattern; they belong to adaptive patterns only");
  const Problem p = backward_problem_from_tensors(q, k, v, o, lse, d_o, dq, dk, dv);
  SPATTN_REQUIRE(p.nq == problem_.nq && p.nk == problem_.nk && p.heads == problem_.heads &&
                     p.kv_heads == problem_.kv_heads && p.head_dim == problem_.head_dim && p.dtype == problem_.dtype,
                 "tensors ({}) do not match the backward plan ({})", p.to_string(), problem_.to_string());
  SPATTN_REQUIRE(p.batch <= 65535, "batch {} exceeds the launch grid limit 65535", p.batch);
  runtime::make_current(device_);
  if (!adaptive_) {
    execute(q, k, v, o, lse, d_o, dq, dk, dv, p, scale, stream);
    return;
  }
  const AdaptiveInputs inputs = adaptive ? *adaptive : AdaptiveInputs{};
  const SpattnGates gates = adaptive_->build(q, k, inputs, p.batch, stream);
  execute(q, k, v, o, lse, d_o, dq, dk, dv, p, scale, stream, gates);
  adaptive_->write_gate_grads(inputs, gates, p.batch, stream);
}

void BackwardPlan::run_documents(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                                 const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                                 const TensorView& dk, const TensorView& dv, const DocumentLengths& lengths,
                                 bool check, float scale, CUstream stream) {
  SPATTN_REQUIRE(documents_, "run_documents on a backward plan without documents (internal)");
  const Problem p = backward_problem_from_tensors(q, k, v, o, lse, d_o, dq, dk, dv);
  SPATTN_REQUIRE(p.heads == problem_.heads && p.kv_heads == problem_.kv_heads && p.head_dim == problem_.head_dim &&
                     p.dtype == problem_.dtype,
                 "tensors ({}) do not match the documents backward plan ({})", p.to_string(), problem_.to_string());
  SPATTN_REQUIRE(lengths.max_q <= problem_.nq && lengths.max_k <= problem_.nk,
                 "documents up to {} x {} on a backward plan for {} x {} (internal)", lengths.max_q, lengths.max_k,
                 problem_.nq, problem_.nk);
  runtime::make_current(device_);
  documents_->build(lengths, check, stream);
  execute(q, k, v, o, lse, d_o, dq, dk, dv, p, scale, stream);
}

void BackwardPlan::execute(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                           const TensorView& lse, const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                           const TensorView& dv, const Problem& p, float scale, CUstream stream,
                           const SpattnGates& gates) {
  const DeviceBackwardLayout& tables = device_tables();
  if (scale <= 0) scale = 1.0f / std::sqrt(static_cast<float>(p.head_dim));
  const size_t rows = static_cast<size_t>(p.batch * p.heads * p.nq);
  const size_t q_elems = static_cast<size_t>(p.batch * p.nq * p.heads * p.head_dim);
  const size_t k_elems = static_cast<size_t>(p.batch * p.nk * p.kv_heads * p.head_dim);
  auto ensure = [](runtime::DeviceBuffer& b, size_t bytes) {
    if (b.size() < bytes) b = runtime::DeviceBuffer(bytes);
  };
  // One work item per key row: the kernel stores dK and dV (pairs of 16-bit values)
  // into the outputs, with no fp32 accumulators to clear and convert.
  auto pairs_aligned = [](const TensorView& t) {
    return reinterpret_cast<uintptr_t>(t.data) % 4 == 0 && t.strides[0] % 2 == 0 && t.strides[1] % 2 == 0 &&
           t.strides[2] % 2 == 0;
  };
  // Tables built per call (documents, adaptive patterns): rows outside every document and
  // key tiles no query tile attends have no writer; the outputs are cleared first (which
  // needs them contiguous).
  const bool per_call = documents_ || adaptive_;
  auto dense = [&](const TensorView& t) {
    return t.strides[3] == 1 && t.strides[2] == p.head_dim && t.strides[1] == p.kv_heads * p.head_dim &&
           t.strides[0] == p.nk * p.kv_heads * p.head_dim;
  };
  const bool direct_kv = tables.num_items() > 0 && tables.sole_key_writer() && pairs_aligned(dk) &&
                         pairs_aligned(dv) && (!per_call || (dense(dk) && dense(dv)));
  ensure(dsum_, rows * 4);
  ensure(dq_acc_, q_elems * 4);
  SPATTN_CU_CHECK(cuMemsetD32Async(dq_acc_.get(), 0, q_elems, stream));
  if (direct_kv && per_call) {
    SPATTN_CU_CHECK(cuMemsetD8Async(reinterpret_cast<CUdeviceptr>(dk.data), 0, k_elems * 2, stream));
    SPATTN_CU_CHECK(cuMemsetD8Async(reinterpret_cast<CUdeviceptr>(dv.data), 0, k_elems * 2, stream));
  }
  if (!direct_kv) {
    ensure(dk_acc_, k_elems * 4);
    ensure(dv_acc_, k_elems * 4);
    SPATTN_CU_CHECK(cuMemsetD32Async(dk_acc_.get(), 0, k_elems, stream));
    SPATTN_CU_CHECK(cuMemsetD32Async(dv_acc_.get(), 0, k_elems, stream));
  }

  {
    SpattnBwdPrepParams pp{};
    pp.o = o.data;
    pp.d_o = d_o.data;
    pp.dsum = reinterpret_cast<float*>(dsum_.get());
    pp.o_stride_b = o.strides[0];
    pp.o_stride_n = o.strides[1];
    pp.o_stride_h = o.strides[2];
    pp.do_stride_b = d_o.strides[0];
    pp.do_stride_n = d_o.strides[1];
    pp.do_stride_h = d_o.strides[2];
    pp.batch = static_cast<int32_t>(p.batch);
    pp.nq = static_cast<int32_t>(p.nq);
    pp.heads = static_cast<int32_t>(p.heads);
    pp.head_dim = static_cast<int32_t>(p.head_dim);
    void* args[] = {&pp};
    prep_->kernel.launch({static_cast<unsigned>((rows + 7) / 8)}, {256}, 0, stream, args);
  }
  if (tables.num_items() > 0) {
    SpattnBwdParams bp{};
    set_inputs(bp, q, k, v);
    bp.d_o = d_o.data;
    bp.do_stride_b = d_o.strides[0];
    bp.do_stride_n = d_o.strides[1];
    bp.do_stride_h = d_o.strides[2];
    bp.lse = static_cast<const float*>(lse.data);
    bp.lse_stride_b = lse.strides[0];
    bp.lse_stride_h = lse.strides[1];
    bp.dsum = reinterpret_cast<const float*>(dsum_.get());
    bp.dq_acc = reinterpret_cast<float*>(dq_acc_.get());
    bp.dk_acc = reinterpret_cast<float*>(dk_acc_.get());
    bp.dv_acc = reinterpret_cast<float*>(dv_acc_.get());
    if (direct_kv) {
      bp.dk_out = dk.data;
      bp.dv_out = dv.data;
      bp.dk_stride_b = dk.strides[0];
      bp.dk_stride_n = dk.strides[1];
      bp.dk_stride_h = dk.strides[2];
      bp.dv_stride_b = dv.strides[0];
      bp.dv_stride_n = dv.strides[1];
      bp.dv_stride_h = dv.strides[2];
    }
    bp.nq = static_cast<int32_t>(p.nq);
    bp.nk = static_cast<int32_t>(p.nk);
    bp.heads = static_cast<int32_t>(p.heads);
    bp.kv_group = static_cast<int32_t>(p.heads / p.kv_heads);
    bp.batch = static_cast<int32_t>(p.batch);
    bp.scale = scale;
    bp.scale_log2 = scale * 1.4426950408889634f;
    bp.arena = tables.arena();
    bp.tables = tables.tables();
    bp.arena_stride_b = adaptive_ ? adaptive_->arena_stride() : 0;
    bp.gates = gates;
    if (documents_) {
      bp.vl_tiles = documents_->tiles();
      bp.vl_ktiles = documents_->key_tiles();
      bp.vl_docs = documents_->docs();
    }
    // The key-tile kernel's parameters by family: the common ones (sm80), or those with
    // tensor maps of Q, dO (query tiles) and K, V (key tiles) (sm90).
    SpattnBwd90Params bp90{};
    void* key_arg = nullptr;
    switch (config_.family) {
      case KernelFamily::kSm80: key_arg = &bp; break;
      case KernelFamily::kSm90:
        bp90.tma_q = encode_tile_map(bp90.tm_q, q, config_.tile_m) && encode_tile_map(bp90.tm_do, d_o, config_.tile_m);
        bp90.tma_kv = encode_tile_map(bp90.tm_k, k, config_.tile_n) && encode_tile_map(bp90.tm_v, v, config_.tile_n);
        if (!copies_.empty()) {
          copies_.gather(tables.arena(), q, &d_o, k, v, p.batch, p.nq, p.nk, stream);
          const RowCopies::Maps m = copies_.encode(bp90.tm_qc, &bp90.tm_doc, bp90.tm_kc, bp90.tm_vc, config_.tile_m,
                                                   config_.tile_n, p.batch);
          bp90.q_copy_row = m.q_row;
          bp90.kv_copy_row = m.kv_row;
        }
        key_arg = &bp90;
        break;
    }
    if (!key_arg)
      SPATTN_FAIL(ErrorCode::kInternal, "no backward launch for kernel family {}", static_cast<int>(config_.family));
    // Items [first, last) of the key-tile kernel's work list, or of the dQ pass's, as one
    // launch of that kernel.
    auto launch = [&](bool key_tiles, int64_t first, int64_t last) {
      if (last <= first) return;
      bp.work = (key_tiles ? tables.work() : tables.dq_work()) + 4 * first;
      bp.num_work = static_cast<int32_t>(last - first);
      bp90.base = bp;
      void* args[] = {key_tiles ? key_arg : &bp};
      const int threads = key_tiles ? rendered_.threads : rendered_.dq_threads;
      const int smem = key_tiles ? rendered_.smem_bytes : rendered_.dq_smem_bytes;
      // Documents carry their batch index: one CTA per work item of the whole call.
      const unsigned batches = documents_ ? 1u : static_cast<unsigned>(p.batch);
      (key_tiles ? bwd_ : dq_)->kernel.launch({static_cast<unsigned>(last - first), batches},
                                              {static_cast<unsigned>(threads)}, static_cast<unsigned>(smem), stream,
                                              args);
    };
    if (!deterministic_) {
      launch(true, 0, tables.num_items());
    } else {
      // One launch per table and kernel, in table order: within a launch every
      // accumulator row has one writer, and launches add in a fixed order.
      const auto& wb = tables.work_begin();
      const auto& qb = tables.dq_begin();
      for (size_t t = 0; t + 1 < wb.size(); ++t) {
        launch(true, wb[t], wb[t + 1]);
        launch(false, qb[t], qb[t + 1]);
      }
    }
  }
  auto convert = [&](const runtime::DeviceBuffer& acc, const TensorView& out, int64_t n, int64_t heads) {
    SpattnBwdConvertParams cp{};
    cp.acc = reinterpret_cast<const float*>(acc.get());
    cp.out = out.data;
    cp.out_stride_b = out.strides[0];
    cp.out_stride_n = out.strides[1];
    cp.out_stride_h = out.strides[2];
    cp.batch = static_cast<int32_t>(p.batch);
    cp.n = static_cast<int32_t>(n);
    cp.heads = static_cast<int32_t>(heads);
    cp.head_dim = static_cast<int32_t>(p.head_dim);
    const int64_t warps = p.batch * n * heads;
    void* args[] = {&cp};
    convert_->kernel.launch({static_cast<unsigned>((warps + 7) / 8)}, {256}, 0, stream, args);
  };
  convert(dq_acc_, dq, p.nq, p.heads);
  if (!direct_kv) {
    convert(dk_acc_, dk, p.nk, p.kv_heads);
    convert(dv_acc_, dv, p.nk, p.kv_heads);
  }
}

}  // namespace spattn::engine
