// Attention modules: multihead sparse attention with cuBLASLt projections, and
// cross-memory attention. Library libspattn_modules (CMake target spattn::modules), a
// client of the public API of libspattn (spattn::Attention) plus cuBLASLt.
//
//   spattn::MultiheadAttention mha(1024, 16, 16, spattn::Pattern::parse(
//       R"({"type": "longnet", "segments": [2048, 4096], "rates": [1, 2]})"));
//   mha.forward(x, x, x, out, stream);    // x, out: [B, N, 1024] bf16 device tensors
//
//   spattn::CrossMemoryAttention fuse(768, 12, 12);
//   fuse.forward(x, memory, out, stream);  // out = x + fusion_ratio * attention(x, memory)
//
// Tensors are batch-first [B, N, E] (rank-3 TensorViews: TensorView::contiguous3, or any
// view whose last dimension is contiguous and whose tokens are evenly spaced). One dtype
// (bf16 or fp16) for inputs, outputs and weights; projections accumulate in fp32.
//
// Forward only: there is no backward pass of the modules (for training, use the PyTorch
// layers spattn.nn.MultiheadSparseAttention / spattn.nn.CrossMemoryAttention, whose
// projections are torch ops and whose attention is spattn's differentiable op).
//
// A module owns a workspace (projected Q/K/V, the attention output) that grows to the
// largest problem met. Calls on one module must be ordered (one stream, or synchronised
// between streams); use one module per concurrent stream.
#pragma once

#include <spattn/attention.hpp>
#include <spattn/pattern.hpp>
#include <spattn/tensor.hpp>
#include <spattn/varlen.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace spattn {

// Rotary position embedding on Q and K after the projection, per head, rotating the whole
// head dim. Angles as PyTorch/Hugging Face compute them (fp32): position p, pair index
// i < D/2, angle p * base^(-2i/D). Self-attention: token n has position n. Cross-attention
// (Nq != Nk): key j has position j and query i position i + (Nk - Nq), the alignment of
// causal cross-attention (queries are the last Nq of the Nk positions).
struct RotaryOptions {
  bool enabled = false;
  double base = 10000.0;
  // false: pairs (i, i + D/2), GPT-NeoX / Llama "rotate_half"; true: pairs (2i, 2i + 1), GPT-J.
  bool interleaved = false;
};

// Device pointers to a module's weights, all of the module's dtype, contiguous row-major,
// 16-byte aligned. Layouts and names are torch.nn.MultiheadAttention's, so its state_dict
// copies across (E = embed_dim, Ekv = kv_heads * head_dim; Ekv = E without GQA):
struct MultiheadWeights {
  void* in_proj_weight = nullptr;   // [E + 2 Ekv, E]: rows of Wq (E), Wk (Ekv), Wv (Ekv)
  void* in_proj_bias = nullptr;     // [E + 2 Ekv]          (options.bias)
  void* out_proj_weight = nullptr;  // [E, E]
  void* out_proj_bias = nullptr;    // [E]                  (options.bias)
  void* ln_weight = nullptr;        // [E] sub-LayerNorm scale (options.sub_layernorm)
  void* ln_bias = nullptr;          // [E] sub-LayerNorm shift (options.sub_layernorm)
};

// The same weights as fp32 host values (what a module initialises its own weights to,
// before rounding to its dtype). Vectors of absent parts are empty.
struct HostWeights {
  std::vector<float> in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, ln_weight, ln_bias;
};

struct MultiheadAttentionOptions {
  DType dtype = DType::kBFloat16;  // inputs, outputs and weights: bf16 or fp16
  bool bias = true;                // biases of the input and output projections
  RotaryOptions rotary;
  // LayerNorm over the E features of the attention output before the output projection
  // (MAGNETO's sub-LN, the seeds' "Improved" variant); learnable scale and shift.
  bool sub_layernorm = false;
  double layernorm_eps = 1e-5;
  // Caller-owned device weights (never written, must outlive the module); empty: the
  // module allocates its own and initialises them as torch.nn.MultiheadAttention does
  // (in_proj xavier_uniform over the fused [E + 2 Ekv, E] matrix, out_proj weight
  // uniform(-1/sqrt(E), 1/sqrt(E)), biases 0, sub-LN scale 1 and shift 0), from `seed`.
  std::optional<MultiheadWeights> weights;
  uint64_t seed = 0;
  // The inner spattn::Attention's options: softmax scale (<= 0: 1/sqrt(head_dim)), CUDA
  // device (-1: the current device when the module first needs one), forced kernel
  // configuration, tuning database, record file.
  AttentionOptions attention;
};

// Optional parts of a forward() call.
struct ForwardExtras {
  // Padded batches (spattn/varlen.hpp): batch b attends its first seqused_k[b] keys, the
  // lengths form of torch's key_padding_mask (valid keys first, then padding). Its query
  // rows past seqused_q[b] get a zero attention output (out = the output projection's
  // bias, plus the residual). In self-attention (query, key and value one tensor) without
  // seqused_q, seqused_k serves the queries too: the padded positions are padded queries,
  // and the pattern sees each batch as a sequence of seqused_k[b] tokens (causal aligned
  // at its start, as torch's is with a mask); pass seqused_q to choose otherwise. In
  // cross-attention only the keys are padded unless seqused_q is given. The tensors are
  // device int32 [B], read in the call's stream.
  const KeyPadding* padding = nullptr;
  // out = attention_scale * MHA(query, key, value) + residual_scale * residual, fused into
  // the output projection's epilogue. residual: [B, Nq, E] like out; it may be out itself
  // (same view) for an in-place update.
  const TensorView* residual = nullptr;
  float attention_scale = 1.0f;
  float residual_scale = 1.0f;
};

// Multihead attention under a sparse pattern, batch-first, with GQA (kv_heads divides
// num_heads; head dim = embed_dim / num_heads, one the attention kernels support):
//   Q = query Wq^T + bq, K = key Wk^T + bk, V = value Wv^T + bv  (one fused GEMM when
//   query, key and value are the same tensor; Q and a fused KV GEMM when key and value
//   are; three otherwise), optional rotary embedding on Q and K, spattn::Attention under
//   the pattern, optional sub-LayerNorm, out = A Wo^T + bo.
// Nq != Nk (or distinct query and key tensors) is cross-attention.
class MultiheadAttention {
 public:
  // Validates everything (kInvalidArgument: embed_dim % num_heads, num_heads % kv_heads,
  // weights; kUnsupported: head dim or dtype the attention kernels do not serve) before
  // touching the GPU. With weights of its own the module allocates and initialises them
  // here (a GPU is needed: kNoGpu without one); with caller weights it needs no GPU
  // until forward().
  MultiheadAttention(int64_t embed_dim, int64_t num_heads, int64_t kv_heads, Pattern pattern,
                     MultiheadAttentionOptions options = {});
  ~MultiheadAttention();
  MultiheadAttention(MultiheadAttention&&) noexcept;
  MultiheadAttention& operator=(MultiheadAttention&&) noexcept;

  // query [B, Nq, E], key and value [B, Nk, E], out [B, Nq, E] (may be query itself).
  // Asynchronous on `stream`. Shapes, dtypes, strides and the pattern against (Nq, Nk,
  // heads) are checked before any GPU work (kInvalidArgument naming the tensor).
  void forward(const TensorView& query, const TensorView& key, const TensorView& value, const TensorView& out,
               CUstream stream = nullptr);
  void forward(const TensorView& query, const TensorView& key, const TensorView& value, const TensorView& out,
               const ForwardExtras& extras, CUstream stream = nullptr);

  // The weights a module with `options` initialises itself to (fp32, before rounding to
  // options.dtype); reproducible from options.seed on any host. Validates like the constructor.
  static HostWeights initial_weights(int64_t embed_dim, int64_t num_heads, int64_t kv_heads,
                                     const MultiheadAttentionOptions& options);

  // Device pointers of the weights in use (the module's own, which may be overwritten,
  // e.g. from a checkpoint, or the caller's).
  MultiheadWeights weights() const;
  int64_t embed_dim() const;
  int64_t num_heads() const;
  int64_t kv_heads() const;
  int64_t head_dim() const;
  int64_t in_proj_rows() const;  // E + 2 Ekv
  const MultiheadAttentionOptions& options() const;
  size_t workspace_bytes() const;  // device memory of the workspace now held

  // The inner attention (explain(), prepare()) and a summary of the last forward().
  Attention& attention();
  std::string explain() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// How CrossMemoryAttention merges the attended memory a = MHA(x, memory, memory) into x.
enum class MemoryFusion {
  kResidual,     // out = x + r * a            (r = 1: the seeds' residual=True)
  kInterpolate,  // out = (1 - r) * x + r * a  (the seeds' fuse_with_memory: r = 0 local only,
                 //                             r = 1 memory only, the seeds' residual=False)
};

struct CrossMemoryOptions {
  float fusion_ratio = 1.0f;  // r above; finite
  MemoryFusion fusion = MemoryFusion::kResidual;
  MultiheadAttentionOptions attention;  // of the inner cross-attention (dtype, biases, rotary, weights...)
};

// Current features x [B, N, E] attend a memory bank [B, M, E] (typically M != N) through
// an inner MultiheadAttention in cross mode (query x; key and value the memory, one fused
// KV projection), optionally under a pattern over (N queries, M memory keys); the result
// is merged into x by the fusion rule, inside the output projection's epilogue.
class CrossMemoryAttention {
 public:
  CrossMemoryAttention(int64_t embed_dim, int64_t num_heads, int64_t kv_heads, Pattern memory_pattern = Pattern(),
                       CrossMemoryOptions options = {});
  ~CrossMemoryAttention();
  CrossMemoryAttention(CrossMemoryAttention&&) noexcept;
  CrossMemoryAttention& operator=(CrossMemoryAttention&&) noexcept;

  // x and out [B, N, E] (out may be x: an in-place update), memory [B, M, E].
  void forward(const TensorView& x, const TensorView& memory, const TensorView& out, CUstream stream = nullptr);
  // The same over a padded memory bank: batch b reads its first memory_used[b] memory
  // tokens (device int32 [B]); a batch with none gets out = the fusion of x with the
  // output bias alone.
  void forward(const TensorView& x, const TensorView& memory, const TensorView& memory_used, const TensorView& out,
               CUstream stream = nullptr);

  float fusion_ratio() const;
  void set_fusion_ratio(float ratio);  // kInvalidArgument unless finite
  MemoryFusion fusion() const;
  MultiheadAttention& attention();

 private:
  void fuse(const TensorView& x, const TensorView& memory, const KeyPadding* padding, const TensorView& out,
            CUstream stream);
  MultiheadAttention attention_;
  float ratio_;
  MemoryFusion fusion_;
};

}  // namespace spattn
