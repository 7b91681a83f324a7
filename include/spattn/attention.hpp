// spattn::Attention — sparse attention forward through generated kernels.
//
//   spattn::Attention attn(spattn::Pattern::parse(R"({"type":"local_window","window":1024})"));
//   attn.forward(q, k, v, o, &lse, stream);   // device tensors, see spattn/tensor.hpp
//   std::cout << attn.explain();
//
// Layouts are compiled once per problem shape and kept; kernels are generated and
// compiled lazily through the on-disk kernel cache (a warm cache loads in milliseconds).
// The kernel configuration comes from the options if forced, else from the tuning
// database of this GPU (written by `spattn autotune`), else from documented heuristics;
// explain() says which.
#pragma once

#include <spattn/adaptive.hpp>
#include <spattn/config.hpp>
#include <spattn/error.hpp>
#include <spattn/layout.hpp>
#include <spattn/pattern.hpp>
#include <spattn/tensor.hpp>
#include <spattn/varlen.hpp>

#include <memory>
#include <optional>
#include <string>

typedef struct CUstream_st* CUstream;

namespace spattn {

struct AttentionOptions {
  float scale = 0;                    // softmax scale; <= 0 means 1/sqrt(head_dim)
  int device = -1;                    // CUDA device; -1: the device of the current context (else 0)
  std::optional<KernelConfig> config;   // force a kernel configuration
  std::optional<KernelConfig> backward_config;  // force the backward kernel's (see check_backward_config)
  // backward(): bitwise reproducible gradients (no atomics; dQ by a second kernel over
  // the forward rows, about 1.4x the matrix work of the default)
  bool deterministic = false;
  bool use_tuning_db = true;          // consult the tuning database of this GPU
  // Append every problem met for the first time (pattern, shape, dtype, arch, the config
  // chosen; forward and backward) to this record file, for `spattn prewarm FILE` /
  // `spattn bundle --from-record FILE` elsewhere; "" means $SPATTN_RECORD (if set).
  std::string record;
  // forward_varlen / forward_padded: wait for the GPU's check of the lengths and throw on
  // bad ones (spattn/varlen.hpp). false: nothing waits (CUDA-graph capturable); bad
  // lengths then leave the outputs unwritten.
  bool check_lengths = true;
};

// What the last forward() ran, for logs and bug reports.
struct Explanation {
  std::string pattern;        // canonical JSON
  std::string problem;        // "B=1 Nq=16384 Nk=16384 Hq=16 Hkv=16 D=128 bf16"
  std::string device;         // GPU name
  std::string arch;
  KernelConfig config;
  std::string config_source;  // "forced", "tuning database (...)", "heuristic (...)"
  std::string kernel;         // generated program name
  std::string cache_key;
  bool cache_hit = false;
  double compile_ms = 0;
  double layout_ms = 0;
  LayoutStats stats;
  size_t parts = 0;
  size_t tables = 0;
  size_t work_items = 0;
  std::string selection;      // adaptive patterns: what the last forward chose from and how ("" otherwise)
  std::string documents;      // forward_varlen / forward_padded: how the tables were built ("" otherwise)
  std::string to_string() const;
};

class Attention {
 public:
  explicit Attention(Pattern pattern, AttentionOptions options = {});
  ~Attention();
  Attention(Attention&&) noexcept;
  Attention& operator=(Attention&&) noexcept;

  // O = attention(Q, K, V) under the pattern; LSE optional ([B, Hq, Nq] fp32).
  // Asynchronous on `stream`. Throws spattn::Error on invalid input (naming the tensor
  // and the expected shape), unsupported dtype/head dim/arch, or a missing GPU.
  // Adaptive patterns (spattn/adaptive.hpp) choose their blocks on the GPU in the same
  // stream first; `adaptive` gives them supplied scores or projections and takes the
  // chosen blocks (null: scores from block means, nothing returned). Other patterns
  // refuse adaptive inputs. A call on a new problem shape or a larger batch allocates
  // buffers; later calls of that shape can be captured in a CUDA graph.
  void forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
               const TensorView* lse = nullptr, CUstream stream = nullptr, const AdaptiveInputs* adaptive = nullptr);

  // Packed variable-length documents (spattn/varlen.hpp): q [total_q, Hq, D], k and v
  // [total_k, Hkv, D], o like q, lse [Hq, total_q] fp32 or null. Each document attends
  // only inside itself, the pattern applied to it as to a problem of its own lengths.
  // Asynchronous on `stream` except for the lengths check (AttentionOptions::check_lengths)
  // and, for patterns whose tables come from the host, the copy of the lengths
  // (spattn/varlen.hpp). Throws kUnsupported for adaptive patterns (documents_supported()).
  void forward_varlen(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                      const TensorView* lse, const Documents& documents, CUstream stream = nullptr);

  // The batched layout of forward() with per-batch used lengths (spattn/varlen.hpp): keys
  // past seqused_k[b] never attend; query rows past seqused_q[b] get O = 0, LSE = -inf.
  void forward_padded(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                      const TensorView* lse, const KeyPadding& padding, CUstream stream = nullptr);

  // Gradients of forward(q, k, v) -> (o, lse) for the output gradient d_o: writes dq
  // (like q), dk and dv (like k; GQA: summed over the query heads of a group). lse is
  // required and must be the forward's; o and d_o are like q. Asynchronous on `stream`.
  // Rows with no allowed key get zero gradients. Accumulates in fp32 with atomics, so
  // results may differ in the last bits from run to run.
  // Adaptive patterns: `adaptive` takes the forward's scores or projections (its `blocks`
  // output may be given again or left null): the selection runs again on them and on q, k
  // and chooses the forward's blocks; gradients flow through the attention over those
  // blocks, not through the selection. Adaptive blocks must be multiples of 64 here.
  void backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                const TensorView& lse, const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                const TensorView& dv, CUstream stream = nullptr, const AdaptiveInputs* adaptive = nullptr);

  // Gradients of forward_varlen / forward_padded with the same documents (or padding):
  // tensors as those calls take them (lse required: [Hq, total_q] for packed documents,
  // [B, Hq, Nq] for padded batches), dq like q, dk and dv like k. Rows outside every
  // document (padding) get zero gradients. The tables are built on the GPU from the
  // lengths, for patterns whose rows are key ranges (dense, causal, windows, global +
  // local, hierarchical, head groups and their unions / intersections); other patterns
  // throw kUnsupported. The lengths check and graph capture as for the forward calls
  // (AttentionOptions::check_lengths); deterministic mode as for backward().
  void backward_varlen(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                       const TensorView& lse, const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                       const TensorView& dv, const Documents& documents, CUstream stream = nullptr);
  void backward_padded(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                       const TensorView& lse, const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                       const TensorView& dv, const KeyPadding& padding, CUstream stream = nullptr);

  // Prepares (layout + kernel) for a problem without running it: returns what forward would use.
  Explanation prepare(int64_t batch, int64_t nq, int64_t nk, int64_t heads, int64_t kv_heads, int64_t head_dim,
                      DType dtype);

  // The last forward()/prepare(), as text.
  std::string explain() const;
  const Explanation& explanation() const;

  const Pattern& pattern() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Library version, "0.1.0".
const char* version();

}  // namespace spattn
