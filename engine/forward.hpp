// The forward engine: one ForwardPlan holds everything needed to run a pattern at one
// problem shape with one kernel configuration on one device — the compiled layout, its
// tables on the device, the loaded kernels — and launches them.
//
// Execution: a single-part layout runs the forward kernel of the config's family
// (sm80: one CTA per work item; sm90: persistent CTAs walking the work list) writing O
// and LSE directly
// (after an O = 0 / LSE = -inf fill when some rows have no table). A multi-part layout
// (LongNet branches, unions of differently ordered members) runs every part in one
// launch into fp32 part buffers, then a merge kernel combines them with LSE weights.
// With ":copy" (sm90) a gather kernel first writes the rows of permuted tables in slot
// order into workspace copies that the kernel loads by TMA.
#pragma once

#include <spattn/layout.hpp>
#include <spattn/tensor.hpp>

#include <memory>
#include <string>
#include <vector>

#include <spattn/adaptive.hpp>

#include "codegen/kernel_spec.hpp"
#include "engine/adaptive.hpp"
#include "engine/device_layout.hpp"
#include "engine/jit.hpp"
#include "engine/varlen.hpp"
#include "runtime/device.hpp"
#include "templates/params.cuh"

namespace spattn::engine {

struct Problem {
  int64_t batch = 1;
  int64_t nq = 0;
  int64_t nk = 0;
  int64_t heads = 1;     // query heads
  int64_t kv_heads = 1;  // divides heads (GQA/MQA)
  int64_t head_dim = 128;
  DType dtype = DType::kBFloat16;

  Shape shape() const { return Shape{nq, nk, heads}; }
  std::string to_string() const;
  // 4 * D * allowed pairs (summed over heads and batch): the "useful" FLOPs.
  double useful_flops(const LayoutStats& stats) const;
};

// Checks that the tensors describe one problem (DESIGN.md §2 shapes, a dtype and head
// dim some kernel family supports, a contiguous head dim, 16-byte aligned rows, LSE
// [B, Hq, Nq] fp32) and returns it.
// Throws kInvalidArgument / kUnsupported naming the tensor and what is expected.
Problem problem_from_tensors(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                             const TensorView* lse);

// Checks one [B, N, H, D] tensor of a problem (`layout` names the dims in messages):
// shape, dtype, a contiguous head dim, 16-byte aligned rows. Throws kInvalidArgument.
void check_tensor_4d(const TensorView& t, const char* name, int64_t b, int64_t n, int64_t h, int64_t d,
                     const char* layout, DType dtype);

// A TMA tensor map of a 16-bit [B, N, H, D] view for the sm90 kernels: boxes of 64
// head-dim elements x `rows` rows. False when TMA cannot describe the view (its rows are
// then gathered with cp.async).
bool encode_tile_map(SpattnTensorMap& map, const TensorView& t, int rows);

// The layout a forward plan runs on: compile_layout(), or for adaptive patterns the host
// part of their tables (adaptive_layout(), columns written on the GPU per call); and its
// statistics (layout_stats() / adaptive_stats()). Every place that prepares a forward
// kernel (plans, `spattn compile`, prewarm) asks these.
Layout forward_layout(const Pattern& pattern, const Shape& shape, const LayoutOptions& options);
LayoutStats forward_layout_stats(const Pattern& pattern, const Layout& layout, int64_t head_dim);
// The programs a forward or backward pass of `pattern` loads besides its own kernel: the
// support kernels, and for adaptive patterns the selection (and backward table) kernels.
std::vector<codegen::RenderedKernel> companion_kernels(const Pattern& pattern);

// The spec the plan's kernel is generated from, and its rendered source. The layout
// is compile_layout(pattern, problem.shape(), config.layout_options()).
// `documents`: the program of a documents plan (KernelSpec::varlen).
codegen::KernelSpec kernel_spec_for(const Layout& layout, const KernelConfig& config, const Problem& problem,
                                    const std::string& arch, bool documents = false);
codegen::RenderedKernel render_kernel(const Layout& layout, const KernelConfig& config, const Problem& problem,
                                      const std::string& arch, bool documents = false);

// Fills the q/k/v pointers and strides of a kernel parameter struct (the forward and
// the reference kernel take their inputs the same way).
template <class Params>
void set_inputs(Params& params, const TensorView& q, const TensorView& k, const TensorView& v) {
  params.q = q.data;
  params.k = k.data;
  params.v = v.data;
  params.q_stride_b = q.strides[0];
  params.q_stride_n = q.strides[1];
  params.q_stride_h = q.strides[2];
  params.k_stride_b = k.strides[0];
  params.k_stride_n = k.strides[1];
  params.k_stride_h = k.strides[2];
  params.v_stride_b = v.strides[0];
  params.v_stride_n = v.strides[1];
  params.v_stride_h = v.strides[2];
}

// A plan may cover a sub-rectangle of a larger problem (ring attention's shard pairs):
// its tensors then hold query rows [rect.q_begin, rect.q_end) and keys [rect.k_begin,
// rect.k_end) of `whole` (Problem::nq, nk are the rectangle's sizes), and the pattern's
// predicate sees global token indices.
struct SubProblem {
  Shape whole;
  TokenRect rect;  // ends resolved
};

// Turns a rectangle's layout (global token indices in its slots) into the plan's local
// ones: slot tokens minus the rectangle's first row or key; slots that become 0 .. n-1
// (then padding) become the identity order, which the kernels read without indirection.
void localise_slots(Layout& layout);

// Every kernel of the forward pass that writes the final output (forward, fill, merges)
// takes it the same way; `lse` may be null.
template <class Params>
void set_output(Params& params, const TensorView& o, const TensorView* lse) {
  params.o = o.data;
  params.o_stride_b = o.strides[0];
  params.o_stride_n = o.strides[1];
  params.o_stride_h = o.strides[2];
  params.lse = lse ? static_cast<float*>(lse->data) : nullptr;
  params.lse_stride_b = lse ? lse->strides[0] : 0;
  params.lse_stride_h = lse ? lse->strides[1] : 0;
}

class ForwardPlan {
 public:
  // Compiles the layout and the kernels (through the cache) and uploads the tables.
  // `sub`: the problem is that rectangle of a larger one (stats() are then left empty:
  // layout_stats describes whole problems). `documents`: a documents plan (run_documents
  // only): `problem` gives heads, head dim, dtype and the longest document (nq, nk), for
  // which the layout and stats() are those of one document.
  ForwardPlan(const Pattern& pattern, const Problem& problem, const KernelConfig& config, int device,
              const SubProblem* sub = nullptr, bool documents = false);
  ~ForwardPlan();

  // Launches on `stream` (asynchronous). `lse` may be null. scale <= 0 means 1/sqrt(D).
  // `adaptive`: the per-call inputs of an adaptive pattern (null: scores computed, no
  // blocks returned); refused for other patterns. An adaptive plan first selects its
  // blocks and writes this call's tables on the stream, then runs the same kernels.
  void run(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
           const TensorView* lse, float scale, CUstream stream, const AdaptiveInputs* adaptive = nullptr);
  // Documents plans: builds this call's tables from `lengths` on the stream, then runs the
  // same kernels. The views are [B, N, H, D] (packed documents as one batch of all
  // rows), `lse` [B, Hq, N]; with `check` the host waits for the lengths check.
  void run_documents(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                     const TensorView* lse, const DocumentLengths& lengths, bool check, float scale, CUstream stream);
  const DocumentTables* documents() const { return documents_.get(); }
  // Adaptive plans: allocates the tables for `batch` batches now (run() does it on
  // first use otherwise), so that a later run can be captured in a CUDA graph.
  void reserve_batch(int64_t batch);
  // The selection of an adaptive plan (null for static patterns).
  const AdaptiveSelector* adaptive() const { return adaptive_.get(); }

  const Layout& layout() const { return layout_; }
  const LayoutStats& stats() const { return stats_; }
  const Problem& problem() const { return problem_; }
  const KernelConfig& config() const { return config_; }
  const codegen::RenderedKernel& rendered() const { return rendered_; }
  const JitKernel& kernel() const { return *fwd_; }
  double layout_ms() const { return layout_ms_; }
  const WorkList& work_list() const { return device_layout().work_list(); }
  const DeviceLayout& device_layout() const { return documents_ ? documents_->tables() : tables_; }
  int device() const { return device_; }

 private:
  // The forward kernel of the config's family over the tables (one switch; an unknown
  // family is an internal error, never a silent default).
  void launch_forward(SpattnFwdParams& params, const TensorView& q, const TensorView& k, const TensorView& v,
                      CUstream stream) const;
  // Everything after the tables exist: part buffers, fill, forward, split and part merges.
  // `gates`: adaptive block gates (SpattnGates; none by default), the scale completed here.
  void execute(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
               const TensorView* lse, const Problem& p, float scale, CUstream stream, SpattnGates gates = {});

  Pattern pattern_;
  Problem problem_;
  KernelConfig config_;
  int device_;
  Shape whole_;     // the problem the predicate sees
  TokenRect rect_;  // the plan's part of it
  Layout layout_;
  LayoutStats stats_;
  double layout_ms_ = 0;
  codegen::RenderedKernel rendered_;
  const JitKernel* fwd_ = nullptr;
  const JitKernel* merge_ = nullptr;
  const JitKernel* fill_ = nullptr;
  const JitKernel* split_merge_ = nullptr;
  int sm_count_ = 0;
  DeviceLayout tables_;
  runtime::DeviceBuffer part_o_, part_lse_, split_o_, split_lse_;
  RowCopies copies_;  // ":copy": the permuted rows in slot order (empty without)
  std::unique_ptr<AdaptiveSelector> adaptive_;  // adaptive patterns: tables built per call
  std::unique_ptr<DocumentTables> documents_;   // documents: tables built per call from lengths
};

}  // namespace spattn::engine
