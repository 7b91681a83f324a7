// The backward engine: one BackwardPlan holds what the gradients of a pattern need at
// one problem shape with one backward configuration on one device — the layout at the
// config's tiles, its transposed tables on the device, the loaded kernels, fp32
// accumulators — and launches: D = rowsum(dO ∘ O), the backward kernel (dQ, dK, dV
// into fp32 accumulators), and the conversions into dq, dk, dv.
#pragma once

#include <spattn/config.hpp>
#include <spattn/layout.hpp>
#include <spattn/tensor.hpp>

#include <memory>

#include "codegen/kernel_spec.hpp"
#include "engine/adaptive.hpp"
#include "engine/device_layout.hpp"
#include "engine/forward.hpp"
#include "engine/jit.hpp"
#include "engine/varlen.hpp"

namespace spattn::engine {

// Checks the backward pass's tensors against the forward problem (O, dO like Q; dq
// like Q; dk, dv like K; LSE [B, Hq, Nq] fp32 as the forward wrote it) and returns it.
Problem backward_problem_from_tensors(const TensorView& q, const TensorView& k, const TensorView& v,
                                      const TensorView& o, const TensorView& lse, const TensorView& d_o,
                                      const TensorView& dq, const TensorView& dk, const TensorView& dv);

// Throws kUnsupported unless the backward pass runs over documents of `pattern`, whose
// natural-order layout is `layout`: its document tables must be built on the GPU
// (document_tables_on_gpu).
void check_documents_backward(const Pattern& pattern, const Layout& layout);

class BackwardPlan {
 public:
  // deterministic: bitwise reproducible (see SpattnBwdParams); throws kUnsupported for a
  // layout that holds a token twice in one table's order.
  // `documents`: a documents plan (run_documents only; spattn/varlen.hpp): `problem` gives
  // heads, head dim, dtype and the longest document (nq, nk). Throws kUnsupported for
  // patterns whose document tables are not built on the GPU (document_tables_on_gpu).
  BackwardPlan(const Pattern& pattern, const Problem& problem, const KernelConfig& config, int device,
               bool deterministic = false, bool documents = false);
  ~BackwardPlan();

  // Asynchronous on `stream`. scale <= 0 means 1/sqrt(D); it must be the forward's.
  // Adaptive patterns: `adaptive` are the forward's inputs (the selection runs again on
  // them and on q, k, choosing the same blocks); null means computed scores.
  void run(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o, const TensorView& lse,
           const TensorView& d_o, const TensorView& dq, const TensorView& dk, const TensorView& dv, float scale,
           CUstream stream, const AdaptiveInputs* adaptive = nullptr);
  // Documents plans: builds this call's tables from `lengths` on the stream, then runs the
  // same kernels. The views are [B, N, H, D] (packed documents as one batch of all rows),
  // `lse` [B, Hq, N] as the documents forward wrote it; with `check` the host waits for
  // the lengths check. Rows outside every document get zero gradients.
  void run_documents(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                     const TensorView& lse, const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                     const TensorView& dv, const DocumentLengths& lengths, bool check, float scale, CUstream stream);
  const DocumentBackwardTables* documents() const { return documents_.get(); }
  const AdaptiveBackwardTables* adaptive() const { return adaptive_.get(); }

  const Problem& problem() const { return problem_; }  // batch 1: the plan serves any batch
  const Layout& layout() const { return layout_; }
  const KernelConfig& config() const { return config_; }
  const codegen::RenderedKernel& rendered() const { return rendered_; }
  const JitKernel& kernel() const { return *bwd_; }
  int64_t work_items() const { return device_tables().num_items(); }
  bool deterministic() const { return deterministic_; }

 private:
  const DeviceBackwardLayout& device_tables() const {
    return documents_ ? documents_->tables() : adaptive_ ? adaptive_->tables() : tables_;
  }
  // Everything after the tables exist: row sums, the key-tile (and dQ) kernels, conversions.
  // `gates`: adaptive block gates and their partials (SpattnGates; none by default).
  void execute(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
               const TensorView& lse, const TensorView& d_o, const TensorView& dq, const TensorView& dk,
               const TensorView& dv, const Problem& p, float scale, CUstream stream, const SpattnGates& gates = {});

  Problem problem_;
  KernelConfig config_;
  int device_;
  Layout layout_;
  codegen::RenderedKernel rendered_;
  bool deterministic_ = false;
  const JitKernel* bwd_ = nullptr;
  const JitKernel* dq_ = nullptr;
  const JitKernel* prep_ = nullptr;
  const JitKernel* convert_ = nullptr;
  DeviceBackwardLayout tables_;
  RowCopies copies_;  // ":copy" (sm90): the permuted rows of Q, dO, K, V in slot order
  std::unique_ptr<DocumentBackwardTables> documents_;  // documents: tables built per call
  std::unique_ptr<AdaptiveBackwardTables> adaptive_;   // adaptive patterns: tables built per call
  runtime::DeviceBuffer dsum_, dq_acc_, dk_acc_, dv_acc_;
};

}  // namespace spattn::engine
