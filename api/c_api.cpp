// The C ABI over spattn::Attention (with its documents forwards), spattn::SelectiveScan,
// spattn::Performer and spattn::RingAttention: exceptions become status codes plus a
// thread-local message; nothing throws across the boundary.
#include <spattn/spattn.h>

#include <spattn/adaptive.hpp>
#include <spattn/attention.hpp>
#include <spattn/linear.hpp>
#include <spattn/ring.hpp>
#include <spattn/varlen.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

struct spattn_attention {
  spattn::Attention attn;
};

struct spattn_selective_scan {
  spattn::SelectiveScan scan;
};

struct spattn_performer {
  spattn::Performer performer;
};

struct spattn_ring {
  spattn::RingAttention ring;
};

namespace {

thread_local std::string g_last_error;

spattn_status status_of(spattn::ErrorCode code) { return static_cast<spattn_status>(static_cast<int>(code)); }

template <class F>
spattn_status guarded(F&& f) {
  try {
    f();
    g_last_error.clear();
    return SPATTN_OK;
  } catch (const spattn::Error& e) {
    g_last_error = e.what();
    return status_of(e.code());
  } catch (const nlohmann::json::exception& e) {
    g_last_error = std::string("invalid options JSON: ") + e.what();
    return SPATTN_ERROR_INVALID_ARGUMENT;
  } catch (const std::bad_alloc&) {
    g_last_error = "out of host memory";
    return SPATTN_ERROR_INTERNAL;
  } catch (const std::exception& e) {
    g_last_error = e.what();
    return SPATTN_ERROR_INTERNAL;
  }
}

// min_rank: attention takes ranks 3 and 4; the scan's parameters, the adaptive projections
// and the tensors of packed documents (LSE [Hq, total_q], offsets and lengths) go down to
// rank 1 (the library then checks the exact rank of each tensor, naming the layout).
// SPATTN_INT32 is accepted here for every tensor; the library refuses it where it does not
// belong (anything but the chosen blocks of adaptive patterns and document lengths).
spattn::TensorView view_of(const spattn_tensor* t, const char* name, int min_rank = 3) {
  if (!t) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, std::string(name) + " is NULL");
  if (t->rank < min_rank || t->rank > 4)
    throw spattn::Error(spattn::ErrorCode::kInvalidArgument,
                        std::string(name) + (min_rank == 3 ? ": rank must be 3 or 4" : ": rank must be 1 to 4") +
                            " (got " + std::to_string(t->rank) + ")");
  spattn::TensorView v;
  switch (t->dtype) {
    case SPATTN_FP16: v.dtype = spattn::DType::kFloat16; break;
    case SPATTN_BF16: v.dtype = spattn::DType::kBFloat16; break;
    case SPATTN_FP32: v.dtype = spattn::DType::kFloat32; break;
    case SPATTN_INT32: v.dtype = spattn::DType::kInt32; break;
    default:
      throw spattn::Error(spattn::ErrorCode::kInvalidArgument,
                          std::string(name) + ": unknown dtype code " + std::to_string(static_cast<int>(t->dtype)));
  }
  v.data = t->data;
  v.rank = t->rank;
  for (int d = 0; d < 4; ++d) {
    v.shape[d] = d < t->rank ? t->shape[d] : 1;
    v.strides[d] = d < t->rank ? t->strides[d] : 1;
  }
  return v;
}

// An optional tensor: NULL (or a NULL data pointer) is absent.
spattn::TensorView optional_view_of(const spattn_tensor* t, const char* name) {
  if (!t || !t->data) return spattn::TensorView{};
  return view_of(t, name, 1);
}

// Parses an options object, calling on(key, value) for each member.
template <class F>
void for_each_option(const char* options_json, F&& on) {
  if (!options_json || !*options_json) return;
  const auto j = nlohmann::json::parse(options_json);
  if (!j.is_object()) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "options must be a JSON object");
  for (const auto& [key, value] : j.items()) {
    try {
      on(key, value);
    } catch (const nlohmann::json::type_error&) {
      throw spattn::Error(spattn::ErrorCode::kInvalidArgument,
                          "options." + key + ": a value of the wrong type (" + value.dump() + ")");
    }
  }
}

[[noreturn]] void unknown_option(const std::string& key, const char* known) {
  throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "options." + key + ": unknown option; known: " + known);
}

spattn_status copy_out(const std::string& text, char* buffer, size_t capacity, size_t* needed) {
  if (needed) *needed = text.size() + 1;
  if (buffer && capacity > 0) {
    const size_t n = std::min(capacity - 1, text.size());
    std::memcpy(buffer, text.data(), n);
    buffer[n] = '\0';
  }
  return SPATTN_OK;
}

}  // namespace

extern "C" {

const char* spattn_version(void) { return spattn::version(); }

const char* spattn_last_error(void) { return g_last_error.c_str(); }

spattn_status spattn_attention_create(const char* pattern_json, const char* options_json, spattn_attention_t* out) {
  return guarded([&] {
    if (!out) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "out is NULL");
    *out = nullptr;
    if (!pattern_json) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "pattern_json is NULL");
    spattn::AttentionOptions opts;
    for_each_option(options_json, [&](const std::string& key, const nlohmann::json& value) {
      if (key == "scale") opts.scale = value.get<float>();
      else if (key == "device") opts.device = value.get<int>();
      else if (key == "config") opts.config = spattn::KernelConfig::parse(value.get<std::string>());
      else if (key == "backward_config") opts.backward_config = spattn::KernelConfig::parse(value.get<std::string>());
      else if (key == "use_tuning_db") opts.use_tuning_db = value.get<bool>();
      else if (key == "deterministic") opts.deterministic = value.get<bool>();
      else if (key == "record") opts.record = value.get<std::string>();
      else if (key == "check_lengths") opts.check_lengths = value.get<bool>();
      else unknown_option(key, "scale, device, config, backward_config, use_tuning_db, deterministic, record, "
                               "check_lengths");
    });
    *out = new spattn_attention{spattn::Attention(spattn::Pattern::parse(pattern_json), opts)};
  });
}

void spattn_attention_destroy(spattn_attention_t attn) { delete attn; }

spattn_status spattn_attention_forward(spattn_attention_t attn, const spattn_tensor* q, const spattn_tensor* k,
                                       const spattn_tensor* v, const spattn_tensor* o, const spattn_tensor* lse,
                                       void* stream) {
  return guarded([&] {
    if (!attn) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "attention handle is NULL");
    const spattn::TensorView l = lse ? view_of(lse, "lse") : spattn::TensorView{};
    attn->attn.forward(view_of(q, "q"), view_of(k, "k"), view_of(v, "v"), view_of(o, "o"), lse ? &l : nullptr,
                       static_cast<CUstream>(stream));
  });
}

namespace {

// An adaptive call's optional tensors: absent ones (NULL or a NULL data pointer) stay null
// pointers in AdaptiveInputs.
struct AdaptiveViews {
  spattn::TensorView scores, wq, wk, blocks, gates, gates_grad;
  spattn::AdaptiveInputs inputs;
  AdaptiveViews(const spattn_tensor* s, const spattn_tensor* q, const spattn_tensor* k, const spattn_tensor* b,
                const spattn_tensor* g, const spattn_tensor* dg)
      : scores(optional_view_of(s, "scores")),
        wq(optional_view_of(q, "wq")),
        wk(optional_view_of(k, "wk")),
        blocks(optional_view_of(b, "blocks")),
        gates(optional_view_of(g, "gates")),
        gates_grad(optional_view_of(dg, "gates_grad")) {
    inputs.scores = scores.data ? &scores : nullptr;
    inputs.wq = wq.data ? &wq : nullptr;
    inputs.wk = wk.data ? &wk : nullptr;
    inputs.blocks = blocks.data ? &blocks : nullptr;
    inputs.gates = gates.data ? &gates : nullptr;
    inputs.gates_grad = gates_grad.data ? &gates_grad : nullptr;
  }
  AdaptiveViews(const AdaptiveViews&) = delete;
};

}  // namespace

spattn_status spattn_attention_forward_adaptive(spattn_attention_t attn, const spattn_tensor* q,
                                                const spattn_tensor* k, const spattn_tensor* v,
                                                const spattn_tensor* o, const spattn_tensor* lse,
                                                const spattn_tensor* scores, const spattn_tensor* wq,
                                                const spattn_tensor* wk, const spattn_tensor* blocks,
                                                const spattn_tensor* gates, void* stream) {
  return guarded([&] {
    if (!attn) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "attention handle is NULL");
    const spattn::TensorView l = lse ? view_of(lse, "lse") : spattn::TensorView{};
    const AdaptiveViews in(scores, wq, wk, blocks, gates, nullptr);
    attn->attn.forward(view_of(q, "q"), view_of(k, "k"), view_of(v, "v"), view_of(o, "o"), lse ? &l : nullptr,
                       static_cast<CUstream>(stream), &in.inputs);
  });
}

spattn_status spattn_attention_backward_adaptive(spattn_attention_t attn, const spattn_tensor* q,
                                                 const spattn_tensor* k, const spattn_tensor* v,
                                                 const spattn_tensor* o, const spattn_tensor* lse,
                                                 const spattn_tensor* d_o, const spattn_tensor* dq,
                                                 const spattn_tensor* dk, const spattn_tensor* dv,
                                                 const spattn_tensor* scores, const spattn_tensor* wq,
                                                 const spattn_tensor* wk, const spattn_tensor* blocks,
                                                 const spattn_tensor* gates, const spattn_tensor* gates_grad,
                                                 void* stream) {
  return guarded([&] {
    if (!attn) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "attention handle is NULL");
    const AdaptiveViews in(scores, wq, wk, blocks, gates, gates_grad);
    attn->attn.backward(view_of(q, "q"), view_of(k, "k"), view_of(v, "v"), view_of(o, "o"), view_of(lse, "lse"),
                        view_of(d_o, "d_o"), view_of(dq, "dq"), view_of(dk, "dk"), view_of(dv, "dv"),
                        static_cast<CUstream>(stream), &in.inputs);
  });
}

namespace {

// The lengths of packed documents, as the varlen calls take them.
spattn::Documents documents_of(const spattn_tensor* cu_seqlens_q, const spattn_tensor* cu_seqlens_k,
                               int64_t max_seqlen_q, int64_t max_seqlen_k) {
  spattn::Documents docs;
  docs.cu_seqlens_q = view_of(cu_seqlens_q, "cu_seqlens_q", 1);
  docs.cu_seqlens_k = view_of(cu_seqlens_k, "cu_seqlens_k", 1);
  docs.max_seqlen_q = max_seqlen_q;
  docs.max_seqlen_k = max_seqlen_k;
  return docs;
}

// The used lengths of padded batches: absent ones (NULL or a NULL data pointer) stay null
// pointers, so that side uses every row (and a call with neither is refused).
spattn::KeyPadding padding_of(const spattn_tensor* seqused_q, const spattn_tensor* seqused_k) {
  spattn::KeyPadding padding;
  padding.seqused_q = optional_view_of(seqused_q, "seqused_q");
  padding.seqused_k = optional_view_of(seqused_k, "seqused_k");
  return padding;
}

}  // namespace

spattn_status spattn_attention_forward_varlen(spattn_attention_t attn, const spattn_tensor* q, const spattn_tensor* k,
                                              const spattn_tensor* v, const spattn_tensor* o, const spattn_tensor* lse,
                                              const spattn_tensor* cu_seqlens_q, const spattn_tensor* cu_seqlens_k,
                                              int64_t max_seqlen_q, int64_t max_seqlen_k, void* stream) {
  return guarded([&] {
    if (!attn) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "attention handle is NULL");
    // Any rank from 1 passes here: forward_varlen names the layout it wants ([total_q, Hq, D],
    // [Hq, total_q], int32 [documents + 1]) better than a rank range would.
    const spattn::TensorView l = lse ? view_of(lse, "lse", 1) : spattn::TensorView{};
    const spattn::Documents docs = documents_of(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k);
    attn->attn.forward_varlen(view_of(q, "q", 1), view_of(k, "k", 1), view_of(v, "v", 1), view_of(o, "o", 1),
                              lse ? &l : nullptr, docs, static_cast<CUstream>(stream));
  });
}

spattn_status spattn_attention_forward_padded(spattn_attention_t attn, const spattn_tensor* q, const spattn_tensor* k,
                                              const spattn_tensor* v, const spattn_tensor* o, const spattn_tensor* lse,
                                              const spattn_tensor* seqused_q, const spattn_tensor* seqused_k,
                                              void* stream) {
  return guarded([&] {
    if (!attn) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "attention handle is NULL");
    const spattn::TensorView l = lse ? view_of(lse, "lse") : spattn::TensorView{};
    const spattn::KeyPadding padding = padding_of(seqused_q, seqused_k);
    attn->attn.forward_padded(view_of(q, "q"), view_of(k, "k"), view_of(v, "v"), view_of(o, "o"), lse ? &l : nullptr,
                              padding, static_cast<CUstream>(stream));
  });
}

spattn_status spattn_attention_backward(spattn_attention_t attn, const spattn_tensor* q, const spattn_tensor* k,
                                        const spattn_tensor* v, const spattn_tensor* o, const spattn_tensor* lse,
                                        const spattn_tensor* d_o, const spattn_tensor* dq, const spattn_tensor* dk,
                                        const spattn_tensor* dv, void* stream) {
  return guarded([&] {
    if (!attn) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "attention handle is NULL");
    attn->attn.backward(view_of(q, "q"), view_of(k, "k"), view_of(v, "v"), view_of(o, "o"), view_of(lse, "lse"),
                        view_of(d_o, "d_o"), view_of(dq, "dq"), view_of(dk, "dk"), view_of(dv, "dv"),
                        static_cast<CUstream>(stream));
  });
}

spattn_status spattn_attention_backward_varlen(spattn_attention_t attn, const spattn_tensor* q,
                                               const spattn_tensor* k, const spattn_tensor* v, const spattn_tensor* o,
                                               const spattn_tensor* lse, const spattn_tensor* d_o,
                                               const spattn_tensor* dq, const spattn_tensor* dk,
                                               const spattn_tensor* dv, const spattn_tensor* cu_seqlens_q,
                                               const spattn_tensor* cu_seqlens_k, int64_t max_seqlen_q,
                                               int64_t max_seqlen_k, void* stream) {
  return guarded([&] {
    if (!attn) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "attention handle is NULL");
    const spattn::Documents docs = documents_of(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k);
    // Ranks as in spattn_attention_forward_varlen: backward_varlen names the layouts.
    attn->attn.backward_varlen(view_of(q, "q", 1), view_of(k, "k", 1), view_of(v, "v", 1), view_of(o, "o", 1),
                               view_of(lse, "lse", 1), view_of(d_o, "d_o", 1), view_of(dq, "dq", 1),
                               view_of(dk, "dk", 1), view_of(dv, "dv", 1), docs, static_cast<CUstream>(stream));
  });
}

spattn_status spattn_attention_backward_padded(spattn_attention_t attn, const spattn_tensor* q,
                                               const spattn_tensor* k, const spattn_tensor* v, const spattn_tensor* o,
                                               const spattn_tensor* lse, const spattn_tensor* d_o,
                                               const spattn_tensor* dq, const spattn_tensor* dk,
                                               const spattn_tensor* dv, const spattn_tensor* seqused_q,
                                               const spattn_tensor* seqused_k, void* stream) {
  return guarded([&] {
    if (!attn) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "attention handle is NULL");
    const spattn::KeyPadding padding = padding_of(seqused_q, seqused_k);
    attn->attn.backward_padded(view_of(q, "q"), view_of(k, "k"), view_of(v, "v"), view_of(o, "o"), view_of(lse, "lse"),
                               view_of(d_o, "d_o"), view_of(dq, "dq"), view_of(dk, "dk"), view_of(dv, "dv"), padding,
                               static_cast<CUstream>(stream));
  });
}

spattn_status spattn_attention_explain(spattn_attention_t attn, char* buffer, size_t capacity, size_t* needed) {
  return guarded([&] {
    if (!attn) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "attention handle is NULL");
    copy_out(attn->attn.explain(), buffer, capacity, needed);
  });
}

spattn_status spattn_pattern_stats(const char* pattern_json, int64_t nq, int64_t nk, int64_t heads, int64_t tile_m,
                                   int64_t tile_n, int64_t head_dim, char* buffer, size_t capacity, size_t* needed) {
  return guarded([&] {
    if (!pattern_json) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "pattern_json is NULL");
    const spattn::Pattern p = spattn::Pattern::parse(pattern_json);
    const spattn::Shape shape{nq, nk, heads};
    p.validate(shape);
    spattn::LayoutOptions lo;
    lo.tile_m = tile_m;
    lo.tile_n = tile_n;
    const spattn::Layout layout = spattn::compile_layout(p, shape, lo);
    const spattn::LayoutStats s = spattn::layout_stats(p, layout, head_dim);
    const nlohmann::json j = {{"density", s.density},           {"allowed_pairs", s.allowed_pairs},
                              {"allowed_pairs_total", s.allowed_pairs_total},
                              {"total_tiles", s.total_tiles},   {"active_tiles", s.active_tiles},
                              {"full_tiles", s.full_tiles},     {"partial_tiles", s.partial_tiles},
                              {"useful_flops", s.useful_flops}, {"parts", s.parts}};
    copy_out(j.dump(), buffer, capacity, needed);
  });
}

spattn_status spattn_adaptive_geometry(const char* pattern_json, int64_t nq, int64_t nk, int64_t* nq_blocks,
                                       int64_t* nk_blocks, int64_t* max_k) {
  return guarded([&] {
    if (!pattern_json) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "pattern_json is NULL");
    const spattn::AdaptiveGeometry g = spattn::adaptive_geometry(spattn::Pattern::parse(pattern_json), nq, nk);
    if (nq_blocks) *nq_blocks = g.nq_blocks;
    if (nk_blocks) *nk_blocks = g.nk_blocks;
    if (max_k) *max_k = g.max_k;
  });
}

// ---- selective scan ---------------------------------------------------------------------

spattn_status spattn_selective_scan_create(const char* options_json, spattn_selective_scan_t* out) {
  return guarded([&] {
    if (!out) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "out is NULL");
    *out = nullptr;
    spattn::SelectiveScanOptions opts;
    for_each_option(options_json, [&](const std::string& key, const nlohmann::json& value) {
      if (key == "device") opts.device = value.get<int>();
      else if (key == "config") opts.config = spattn::ScanConfig::parse(value.get<std::string>());
      else if (key == "splits") opts.splits = value.get<int>();
      else if (key == "use_tuning_db") opts.use_tuning_db = value.get<bool>();
      else unknown_option(key, "device, config, splits, use_tuning_db");
    });
    *out = new spattn_selective_scan{spattn::SelectiveScan(opts)};
  });
}

void spattn_selective_scan_destroy(spattn_selective_scan_t scan) { delete scan; }

spattn_status spattn_selective_scan_forward(spattn_selective_scan_t scan, const spattn_tensor* x,
                                            const spattn_tensor* delta, const spattn_tensor* a_log,
                                            const spattn_tensor* b, const spattn_tensor* c, const spattn_tensor* d,
                                            const spattn_tensor* delta_bias, const spattn_tensor* z,
                                            const spattn_tensor* y, const spattn_tensor* final_state,
                                            int32_t delta_softplus, void* stream) {
  return guarded([&] {
    if (!scan) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "selective scan handle is NULL");
    spattn::SelectiveScanArgs a;
    a.x = view_of(x, "x", 1);
    a.delta = view_of(delta, "delta", 1);
    a.a_log = view_of(a_log, "a_log", 1);
    a.b = view_of(b, "b", 1);
    a.c = view_of(c, "c", 1);
    a.d = optional_view_of(d, "d");
    a.delta_bias = optional_view_of(delta_bias, "delta_bias");
    a.z = optional_view_of(z, "z");
    a.y = view_of(y, "y", 1);
    a.final_state = optional_view_of(final_state, "final_state");
    a.delta_softplus = delta_softplus != 0;
    scan->scan.forward(a, static_cast<CUstream>(stream));
  });
}

spattn_status spattn_selective_scan_explain(spattn_selective_scan_t scan, char* buffer, size_t capacity,
                                            size_t* needed) {
  return guarded([&] {
    if (!scan) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "selective scan handle is NULL");
    copy_out(scan->scan.explain(), buffer, capacity, needed);
  });
}

// ---- Performer --------------------------------------------------------------------------

spattn_status spattn_performer_create(int64_t head_dim, const char* options_json, spattn_performer_t* out) {
  return guarded([&] {
    if (!out) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "out is NULL");
    *out = nullptr;
    spattn::PerformerOptions opts;
    for_each_option(options_json, [&](const std::string& key, const nlohmann::json& value) {
      if (key == "features") opts.features = value.get<int64_t>();
      else if (key == "seed") opts.seed = value.get<uint64_t>();
      else if (key == "causal") opts.causal = value.get<bool>();
      else if (key == "device") opts.device = value.get<int>();
      else if (key == "config") opts.config = spattn::PerformerConfig::parse(value.get<std::string>());
      else if (key == "tf32") opts.tf32 = value.get<bool>();
      else unknown_option(key, "features, seed, causal, device, config, tf32");
    });
    *out = new spattn_performer{spattn::Performer(head_dim, opts)};
  });
}

void spattn_performer_destroy(spattn_performer_t performer) { delete performer; }

spattn_status spattn_performer_redraw(spattn_performer_t performer, uint64_t seed) {
  return guarded([&] {
    if (!performer) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "performer handle is NULL");
    performer->performer.redraw(seed);
  });
}

spattn_status spattn_performer_features(spattn_performer_t performer, float* omega, size_t capacity,
                                        size_t* needed) {
  return guarded([&] {
    if (!performer) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "performer handle is NULL");
    const std::vector<float>& w = performer->performer.features().omega;
    if (needed) *needed = w.size();
    if (omega) std::memcpy(omega, w.data(), std::min(capacity, w.size()) * sizeof(float));
  });
}

spattn_status spattn_performer_forward(spattn_performer_t performer, const spattn_tensor* q, const spattn_tensor* k,
                                       const spattn_tensor* v, const spattn_tensor* o, void* stream) {
  return guarded([&] {
    if (!performer) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "performer handle is NULL");
    performer->performer.forward(view_of(q, "q"), view_of(k, "k"), view_of(v, "v"), view_of(o, "o"),
                                 static_cast<CUstream>(stream));
  });
}

spattn_status spattn_performer_explain(spattn_performer_t performer, char* buffer, size_t capacity, size_t* needed) {
  return guarded([&] {
    if (!performer) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "performer handle is NULL");
    copy_out(performer->performer.explain(), buffer, capacity, needed);
  });
}

// ---- ring attention ----------------------------------------------------------------------

spattn_status spattn_nccl_unique_id(char id[128]) {
  return guarded([&] {
    if (!id) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "id is NULL");
    const spattn::NcclUniqueId u = spattn::nccl_unique_id();
    std::memcpy(id, u.bytes.data(), u.bytes.size());
  });
}

spattn_status spattn_ring_create(const char* pattern_json, const char* options_json, const char id[128], int rank,
                                 int world, spattn_ring_t* out) {
  return guarded([&] {
    if (!out) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "out is NULL");
    *out = nullptr;
    if (!pattern_json) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "pattern_json is NULL");
    if (!id) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "id is NULL");
    spattn::RingOptions opts;
    for_each_option(options_json, [&](const std::string& key, const nlohmann::json& value) {
      if (key == "sharding") opts.sharding = spattn::ring_sharding_from_string(value.get<std::string>());
      else if (key == "scale") opts.scale = value.get<float>();
      else if (key == "device") opts.device = value.get<int>();
      else if (key == "config") opts.config = spattn::KernelConfig::parse(value.get<std::string>());
      else if (key == "timing") opts.timing = value.get<bool>();
      else unknown_option(key, "sharding, scale, device, config, timing");
    });
    const spattn::Pattern pattern = spattn::Pattern::parse(pattern_json);
    spattn::NcclUniqueId u;
    std::memcpy(u.bytes.data(), id, u.bytes.size());
    *out = new spattn_ring{spattn::RingAttention(pattern, spattn::nccl_transport(u, rank, world, opts.device), opts)};
  });
}

void spattn_ring_destroy(spattn_ring_t ring) { delete ring; }

spattn_status spattn_ring_forward(spattn_ring_t ring, const spattn_tensor* q, const spattn_tensor* k,
                                  const spattn_tensor* v, const spattn_tensor* o, const spattn_tensor* lse,
                                  void* stream) {
  return guarded([&] {
    if (!ring) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "ring handle is NULL");
    const spattn::TensorView l = lse ? view_of(lse, "lse") : spattn::TensorView{};
    ring->ring.forward(view_of(q, "q"), view_of(k, "k"), view_of(v, "v"), view_of(o, "o"), lse ? &l : nullptr,
                       static_cast<CUstream>(stream));
  });
}

spattn_status spattn_ring_explain(spattn_ring_t ring, char* buffer, size_t capacity, size_t* needed) {
  return guarded([&] {
    if (!ring) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "ring handle is NULL");
    copy_out(ring->ring.explain(), buffer, capacity, needed);
  });
}

spattn_status spattn_ring_timings(spattn_ring_t ring, char* buffer, size_t capacity, size_t* needed) {
  return guarded([&] {
    if (!ring) throw spattn::Error(spattn::ErrorCode::kInvalidArgument, "ring handle is NULL");
    copy_out(ring->ring.timings().to_string(), buffer, capacity, needed);
  });
}

}  // extern "C"
