#include <spattn/attention.hpp>

#include <cmath>
#include <map>
#include <mutex>
#include <sstream>
#include <tuple>

#include "api/select.hpp"
#include "autotune/record.hpp"
#include "common/check.hpp"
#include "common/log.hpp"
#include "engine/backward.hpp"
#include "engine/forward.hpp"
#include "engine/select.hpp"
#include "runtime/device.hpp"

namespace spattn {

const char* version() { return SPATTN_VERSION_STRING; }

std::string Explanation::to_string() const {
  std::ostringstream s;
  s << "pattern   " << pattern << "\n";
  s << "problem   " << problem << "\n";
  s << "device    " << device << " (" << arch << ")\n";
  s << "config    " << config.to_string() << " — " << config_source << "\n";
  s << "kernel    " << kernel << " key " << cache_key.substr(0, 16) << (cache_hit ? " (cache hit)" : " (compiled")
    << (cache_hit ? "" : fmt::format(" in {:.0f} ms)", compile_ms)) << "\n";
  s << fmt::format("layout    {} part(s), {} table(s), {} work items, built in {:.1f} ms\n", parts, tables, work_items,
                   layout_ms);
  s << fmt::format("tiles     {} active of {} ({} full, {} partial); density {:.4f}; {:.3g} useful FLOP per batch\n",
                   stats.active_tiles, stats.total_tiles, stats.full_tiles, stats.partial_tiles, stats.density,
                   stats.useful_flops);
  if (!selection.empty()) s << "selection " << selection << "\n";
  if (!documents.empty()) s << "documents " << documents << "\n";
  return s.str();
}

struct Attention::Impl {
  Pattern pattern;
  AttentionOptions options;
  // One plan per (problem shape, dtype, config) and device; batch does not change the plan.
  using PlanKey = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int, std::string>;
  std::map<PlanKey, std::unique_ptr<engine::ForwardPlan>> plans;
  std::map<PlanKey, std::unique_ptr<engine::BackwardPlan>> backward_plans;
  // Documents plans, by the longest document's shape (the tables are rebuilt per call),
  // and the configuration chosen for each documents problem met (device, longest
  // document, heads, head dim, dtype, documents per call): forward_varlen runs per layer
  // and step, and choosing builds layouts, so a problem seen before does not choose again.
  std::map<PlanKey, std::unique_ptr<engine::ForwardPlan>> document_plans;
  std::map<PlanKey, std::unique_ptr<engine::BackwardPlan>> document_backward_plans;
  using ChoiceKey = std::tuple<int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int, int64_t>;  // pass first
  std::map<ChoiceKey, api::Choice> document_choices;
  Explanation last;
  bool has_last = false;
  engine::ForwardPlan* last_plan = nullptr;  // fast path for repeated calls on one problem
  engine::BackwardPlan* last_backward = nullptr;  // the same for backward()
  int last_backward_device = -1;
  int last_device = -1;
  int64_t last_batch = 0;
  std::mutex mu;

  // The record file (AttentionOptions::record, $SPATTN_RECORD), for each new plan.
  void record(TunePass pass, const engine::Problem& p, const runtime::DeviceInfo& info, const KernelConfig& config,
              bool documents = false) {
    const std::string path = autotune::record_path(options.record);
    if (path.empty()) return;
    autotune::RecordedProblem r;
    r.pass = pass;
    r.arch = info.arch();
    r.pattern = pattern;
    r.problem = p;
    r.config = config;
    r.deterministic = pass == TunePass::kBackward && options.deterministic;
    r.documents = documents;
    autotune::record_problem(path, r);
  }

  // The configuration for a problem: forced, from the tuning database, or the heuristic's.
  api::Choice choose(const engine::Problem& p, const runtime::DeviceInfo& info) const {
    return options.config ? api::Choice{*options.config, "forced by AttentionOptions::config"}
                          : api::choose(pattern, p, info, options.use_tuning_db);
  }

  // `last` for a forward plan about to run `problem` (its description) with `choice`.
  void explain_plan(const engine::ForwardPlan& plan, const runtime::DeviceInfo& info, const api::Choice& choice,
                    std::string problem) {
    last = Explanation{};
    last.pattern = pattern.to_json();
    last.problem = std::move(problem);
    last.device = info.name;
    last.arch = info.arch();
    last.config = choice.config;
    last.config_source = choice.source;
    last.kernel = plan.rendered().program_name;
    last.cache_key = plan.kernel().cache_key;
    last.cache_hit = plan.kernel().cache_hit;
    last.compile_ms = plan.kernel().compile_ms;
    last.layout_ms = plan.layout_ms();
    last.stats = plan.stats();
    last.parts = plan.layout().parts.size();
    last.tables = plan.layout().tables.size();
    // Documents: the capacity of their per-call work list; else the layout's schedule.
    last.work_items = plan.documents() ? static_cast<size_t>(plan.work_list().num_items()) : plan.layout().schedule.size();
    if (plan.adaptive()) last.selection = plan.adaptive()->describe();
    has_last = true;
  }

  // The plan of forward_varlen / forward_padded for documents up to p.nq x p.nk; the
  // configuration is chosen as for p.batch such documents (the call's work).
  // The configuration of a documents problem of `pass` (chosen once per problem).
  api::Choice document_choice(TunePass pass, int device, const engine::Problem& p, const runtime::DeviceInfo& info) {
    const ChoiceKey choice_key{static_cast<int>(pass), device, p.nq, p.nk, p.heads, p.kv_heads, p.head_dim,
                               static_cast<int>(p.dtype), p.batch};
    auto found = document_choices.find(choice_key);
    if (found == document_choices.end()) {
      if (document_choices.size() >= 4096) document_choices.clear();  // many distinct lengths: a bound
      found = document_choices.emplace(choice_key, pass == TunePass::kForward ? choose(p, info) : choose_backward(p, info))
                  .first;
    }
    return found->second;
  }

  api::Choice choose_backward(const engine::Problem& p, const runtime::DeviceInfo& info) const {
    return options.backward_config
               ? api::Choice{*options.backward_config, "forced by AttentionOptions::backward_config"}
               : api::choose_backward(pattern, p, info, options.use_tuning_db);
  }

  // The backward plan of backward_varlen / backward_padded, as documents_plan_for.
  engine::BackwardPlan& documents_backward_plan_for(engine::Problem p) {
    const int device = options.device >= 0 ? options.device : runtime::current_device();
    runtime::make_current(device);
    const runtime::DeviceInfo info = runtime::device_info(device);
    const api::Choice choice = document_choice(TunePass::kBackward, device, p, info);
    const engine::Problem chosen_for = p;
    p.batch = 1;
    const PlanKey key{device, p.nq, p.nk, p.heads, p.kv_heads, p.head_dim, static_cast<int>(p.dtype),
                      choice.config.to_string() + (options.deterministic ? " deterministic" : "")};
    auto& slot = document_backward_plans[key];
    if (!slot) {
      pattern.validate(p.shape());
      slot = std::make_unique<engine::BackwardPlan>(pattern, p, choice.config, device, options.deterministic, true);
      record(TunePass::kBackward, chosen_for, info, choice.config, true);
      log::debug("attention backward: documents up to {} | {} | {}", p.to_string(), choice.config.to_string(),
                 choice.source);
    }
    last_backward = nullptr;  // the fast path of backward() is for its own plans
    return *slot;
  }

  engine::ForwardPlan& documents_plan_for(engine::Problem p) {
    const int device = options.device >= 0 ? options.device : runtime::current_device();
    runtime::make_current(device);
    const runtime::DeviceInfo info = runtime::device_info(device);
    const api::Choice choice = document_choice(TunePass::kForward, device, p, info);
    const engine::Problem chosen_for = p;
    p.batch = 1;
    const PlanKey key{device, p.nq, p.nk, p.heads, p.kv_heads, p.head_dim, static_cast<int>(p.dtype),
                      choice.config.to_string()};
    auto& slot = document_plans[key];
    if (!slot) {
      pattern.validate(p.shape());
      slot = std::make_unique<engine::ForwardPlan>(pattern, p, choice.config, device, nullptr, true);
      record(TunePass::kForward, chosen_for, info, choice.config, true);
    }
    engine::ForwardPlan& plan = *slot;
    explain_plan(plan, info, choice, p.to_string() + " (the longest document)");
    last_plan = nullptr;  // the fast path of forward() is for its own plans
    return plan;
  }

  // The plan for a problem: looked up without any other work once it exists (forward()
  // is called per layer and step, so its host cost matters), built on first use.
  engine::ForwardPlan& plan_for(const engine::Problem& p) {
    const int device = options.device >= 0 ? options.device : runtime::current_device();
    if (last_plan && last_device == device && last_batch == p.batch && last_plan->problem().nq == p.nq && last_plan->problem().nk == p.nk &&
        last_plan->problem().heads == p.heads && last_plan->problem().kv_heads == p.kv_heads &&
        last_plan->problem().head_dim == p.head_dim && last_plan->problem().dtype == p.dtype)
      return *last_plan;
    pattern.validate(p.shape());
    runtime::make_current(device);
    const runtime::DeviceInfo info = runtime::device_info(device);
    const api::Choice choice = choose(p, info);
    const PlanKey key{device, p.nq, p.nk, p.heads, p.kv_heads, p.head_dim, static_cast<int>(p.dtype),
                      choice.config.to_string()};
    auto& slot = plans[key];
    if (!slot) {
      engine::Problem shape = p;
      shape.batch = 1;
      slot = std::make_unique<engine::ForwardPlan>(pattern, shape, choice.config, device);
      record(TunePass::kForward, p, info, choice.config);
    }
    engine::ForwardPlan& plan = *slot;
    plan.reserve_batch(p.batch);
    explain_plan(plan, info, choice, p.to_string());
    last_plan = &plan;
    last_device = device;
    last_batch = p.batch;
    log::debug("attention: {} | {} | {}", last.problem, choice.config.to_string(), choice.source);
    return plan;
  }
};

void Attention::backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                         const TensorView& lse, const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                         const TensorView& dv, CUstream stream, const AdaptiveInputs* adaptive) {
  const engine::Problem p = engine::backward_problem_from_tensors(q, k, v, o, lse, d_o, dq, dk, dv);
  std::lock_guard<std::mutex> lock(impl_->mu);
  const int device = impl_->options.device >= 0 ? impl_->options.device : runtime::current_device();
  // Training calls backward once per layer and step: as in forward(), a repeated problem
  // goes straight to its plan (a tuning entry written meanwhile applies to problems met
  // afterwards).
  if (engine::BackwardPlan* last = impl_->last_backward; last && impl_->last_backward_device == device) {
    const engine::Problem& lp = last->problem();
    if (lp.nq == p.nq && lp.nk == p.nk && lp.heads == p.heads && lp.kv_heads == p.kv_heads &&
        lp.head_dim == p.head_dim && lp.dtype == p.dtype) {
      last->run(q, k, v, o, lse, d_o, dq, dk, dv, impl_->options.scale, stream, adaptive);
      if (last->adaptive()) impl_->last.selection = last->adaptive()->describe();
      return;
    }
  }
  impl_->pattern.validate(p.shape());
  runtime::make_current(device);
  const runtime::DeviceInfo info = runtime::device_info(device);
  const engine::KernelChoice choice = impl_->choose_backward(p, info);
  const Impl::PlanKey key{device, p.nq, p.nk, p.heads, p.kv_heads, p.head_dim, static_cast<int>(p.dtype),
                          choice.config.to_string()};
  auto& slot = impl_->backward_plans[key];
  if (!slot) {
    engine::Problem shape = p;
    shape.batch = 1;
    slot = std::make_unique<engine::BackwardPlan>(impl_->pattern, shape, choice.config, device,
                                                  impl_->options.deterministic);
    impl_->record(TunePass::kBackward, p, info, choice.config);
    log::debug("attention backward: {} | {} | {}", p.to_string(), choice.config.to_string(), choice.source);
  }
  impl_->last_backward = slot.get();
  impl_->last_backward_device = device;
  slot->run(q, k, v, o, lse, d_o, dq, dk, dv, impl_->options.scale, stream, adaptive);
  if (slot->adaptive()) impl_->last.selection = slot->adaptive()->describe();
}

Attention::Attention(Pattern pattern, AttentionOptions options) : impl_(std::make_unique<Impl>()) {
  SPATTN_REQUIRE(std::isfinite(options.scale),
                 "AttentionOptions::scale must be a finite number (<= 0 for 1/sqrt(head_dim)); got {}", options.scale);
  impl_->pattern = std::move(pattern);
  impl_->options = std::move(options);
}

Attention::~Attention() = default;
Attention::Attention(Attention&&) noexcept = default;
Attention& Attention::operator=(Attention&&) noexcept = default;

void Attention::forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                        const TensorView* lse, CUstream stream, const AdaptiveInputs* adaptive) {
  const engine::Problem p = engine::problem_from_tensors(q, k, v, o, lse);
  std::lock_guard<std::mutex> lock(impl_->mu);
  engine::ForwardPlan& plan = impl_->plan_for(p);
  plan.run(q, k, v, o, lse, impl_->options.scale, stream, adaptive);
  if (plan.adaptive()) impl_->last.selection = plan.adaptive()->describe();
}

namespace {

// A device int32 vector of n entries.
void check_lengths_tensor(const TensorView& t, const char* name, int64_t n, const char* what) {
  SPATTN_REQUIRE(t.data != nullptr, "{} is a null pointer; it must be a device int32 [{}] ({})", name, n, what);
  SPATTN_REQUIRE(t.dtype == DType::kInt32 && t.rank == 1 && t.shape[0] == n && (t.strides[0] == 1 || n == 1),
                 "{} must be a contiguous device int32 [{}] ({}); got {}", name, n, what, t.describe());
  SPATTN_REQUIRE(reinterpret_cast<uintptr_t>(t.data) % 4 == 0, "{} must be 4-byte aligned", name);
}

// A [N, H, D] view as [1, N, H, D] (and an LSE [H, N] as [1, H, N]).
TensorView as_one_batch(const TensorView& t, const char* name, const char* layout) {
  SPATTN_REQUIRE(t.rank == 3, "{} must have 3 dimensions {} for packed documents; got {}", name, layout,
                 t.describe());
  TensorView v = t;
  v.rank = 4;
  v.shape = {1, t.shape[0], t.shape[1], t.shape[2]};
  v.strides = {t.shape[0] * t.strides[0], t.strides[0], t.strides[1], t.strides[2]};
  return v;
}

TensorView lse_as_one_batch(const TensorView& t) {
  SPATTN_REQUIRE(t.rank == 2, "LSE must have 2 dimensions [Hq, total_q] for packed documents; got {}", t.describe());
  TensorView v = t;
  v.rank = 3;
  v.shape = {1, t.shape[0], t.shape[1], 0};
  v.strides = {t.shape[0] * t.strides[0], t.strides[0], t.strides[1], 0};
  return v;
}

// A documents call: the lengths over tensors of p.nq query and p.nk key rows, and the
// longest document as the problem its plan is for, with as much work as the documents.
struct DocumentsCall {
  engine::DocumentLengths lengths;
  engine::Problem longest;
};

// Packed documents over p (the tensors as one batch); checks the offset tensors.
DocumentsCall packed_call(const Documents& documents, const engine::Problem& p) {
  const int64_t docs = documents.cu_seqlens_q.rank == 1 ? documents.cu_seqlens_q.shape[0] - 1 : 0;
  SPATTN_REQUIRE(docs >= 1, "cu_seqlens_q must be a device int32 [documents + 1] with at least one document; got {}",
                 documents.cu_seqlens_q.describe());
  check_lengths_tensor(documents.cu_seqlens_q, "cu_seqlens_q", docs + 1, "documents + 1 query offsets");
  check_lengths_tensor(documents.cu_seqlens_k, "cu_seqlens_k", docs + 1,
                       "documents + 1 key offsets, as many as cu_seqlens_q");
  SPATTN_REQUIRE(documents.max_seqlen_q >= 0 && documents.max_seqlen_k >= 0,
                 "max_seqlen_q and max_seqlen_k must be >= 0; got {} and {}", documents.max_seqlen_q,
                 documents.max_seqlen_k);
  DocumentsCall c;
  engine::DocumentLengths& lengths = c.lengths;
  lengths.cu_q = static_cast<const int32_t*>(documents.cu_seqlens_q.data);
  lengths.cu_k = static_cast<const int32_t*>(documents.cu_seqlens_k.data);
  lengths.docs = docs;
  lengths.nq = p.nq;
  lengths.nk = p.nk;
  // Bounds on a document's length; no document is longer than its tensor.
  lengths.max_q = std::min(documents.max_seqlen_q, p.nq);
  lengths.max_k = std::min(documents.max_seqlen_k, p.nk);
  c.longest = p;
  c.longest.nq = std::max<int64_t>(1, lengths.max_q);
  c.longest.nk = std::max<int64_t>(1, lengths.max_k);
  c.longest.batch = std::max<int64_t>(1, (p.nq + c.longest.nq - 1) / c.longest.nq);  // as much work as documents
  return c;
}

// Padded batches of p; `call` names the API call in messages.
DocumentsCall padded_call(const KeyPadding& padding, const engine::Problem& p, const char* call) {
  SPATTN_REQUIRE(padding.seqused_k.data != nullptr || padding.seqused_q.data != nullptr,
                 "{} needs seqused_k (device int32 [B]) and/or seqused_q; without padding call {}", call,
                 std::string(call).rfind("forward", 0) == 0 ? "forward()" : "backward()");
  check_key_padding(padding, p.batch);
  DocumentsCall c;
  c.lengths.used_q = static_cast<const int32_t*>(padding.seqused_q.data);
  c.lengths.used_k = static_cast<const int32_t*>(padding.seqused_k.data);
  c.lengths.docs = p.batch;
  c.lengths.nq = p.nq;
  c.lengths.nk = p.nk;
  c.lengths.max_q = p.nq;
  c.lengths.max_k = p.nk;
  c.longest = p;
  return c;
}

// The packed views of a documents backward call ([N, H, D] as [1, N, H, D], LSE [H, N]
// as [1, H, N]).
struct PackedViews {
  TensorView q, k, v, o, lse, d_o, dq, dk, dv;
};
PackedViews packed_views(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                         const TensorView& lse, const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                         const TensorView& dv) {
  return PackedViews{as_one_batch(q, "Q", "[total_q, Hq, D]"),     as_one_batch(k, "K", "[total_k, Hkv, D]"),
                     as_one_batch(v, "V", "[total_k, Hkv, D]"),    as_one_batch(o, "O", "[total_q, Hq, D]"),
                     lse_as_one_batch(lse),                        as_one_batch(d_o, "dO", "[total_q, Hq, D]"),
                     as_one_batch(dq, "dQ", "[total_q, Hq, D]"),   as_one_batch(dk, "dK", "[total_k, Hkv, D]"),
                     as_one_batch(dv, "dV", "[total_k, Hkv, D]")};
}

}  // namespace

void check_key_padding(const KeyPadding& padding, int64_t batch) {
  SPATTN_REQUIRE(padding.seqused_k.data != nullptr || padding.seqused_q.data != nullptr,
                 "padding needs seqused_k (device int32 [{}]) and/or seqused_q; both are null", batch);
  if (padding.seqused_k.data) check_lengths_tensor(padding.seqused_k, "seqused_k", batch, "keys used per batch");
  if (padding.seqused_q.data) check_lengths_tensor(padding.seqused_q, "seqused_q", batch, "queries used per batch");
}

void Attention::forward_varlen(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                               const TensorView* lse, const Documents& documents, CUstream stream) {
  const TensorView q4 = as_one_batch(q, "Q", "[total_q, Hq, D]");
  const TensorView k4 = as_one_batch(k, "K", "[total_k, Hkv, D]");
  const TensorView v4 = as_one_batch(v, "V", "[total_k, Hkv, D]");
  const TensorView o4 = as_one_batch(o, "O", "[total_q, Hq, D]");
  TensorView l3;
  if (lse) l3 = lse_as_one_batch(*lse);
  const engine::Problem p = engine::problem_from_tensors(q4, k4, v4, o4, lse ? &l3 : nullptr);
  const DocumentsCall c = packed_call(documents, p);
  std::lock_guard<std::mutex> lock(impl_->mu);
  engine::ForwardPlan& plan = impl_->documents_plan_for(c.longest);
  plan.run_documents(q4, k4, v4, o4, lse ? &l3 : nullptr, c.lengths, impl_->options.check_lengths,
                     impl_->options.scale, stream);
  impl_->last.problem = fmt::format("{} documents in {}; plan for {}", c.lengths.docs, p.to_string(), impl_->last.problem);
  impl_->last.documents = plan.documents()->describe();
}

void Attention::forward_padded(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                               const TensorView* lse, const KeyPadding& padding, CUstream stream) {
  const engine::Problem p = engine::problem_from_tensors(q, k, v, o, lse);
  const DocumentsCall c = padded_call(padding, p, "forward_padded");
  std::lock_guard<std::mutex> lock(impl_->mu);
  engine::ForwardPlan& plan = impl_->documents_plan_for(c.longest);
  plan.run_documents(q, k, v, o, lse, c.lengths, impl_->options.check_lengths, impl_->options.scale, stream);
  impl_->last.problem = p.to_string() + " with padding";
  impl_->last.documents = plan.documents()->describe();
}

void Attention::backward_varlen(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                                const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                                const TensorView& dk, const TensorView& dv, const Documents& documents,
                                CUstream stream) {
  const PackedViews x = packed_views(q, k, v, o, lse, d_o, dq, dk, dv);
  const engine::Problem p =
      engine::backward_problem_from_tensors(x.q, x.k, x.v, x.o, x.lse, x.d_o, x.dq, x.dk, x.dv);
  const DocumentsCall c = packed_call(documents, p);
  std::lock_guard<std::mutex> lock(impl_->mu);
  engine::BackwardPlan& plan = impl_->documents_backward_plan_for(c.longest);
  plan.run_documents(x.q, x.k, x.v, x.o, x.lse, x.d_o, x.dq, x.dk, x.dv, c.lengths, impl_->options.check_lengths,
                     impl_->options.scale, stream);
}

void Attention::backward_padded(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                                const TensorView& lse, const TensorView& d_o, const TensorView& dq,
                                const TensorView& dk, const TensorView& dv, const KeyPadding& padding,
                                CUstream stream) {
  const engine::Problem p = engine::backward_problem_from_tensors(q, k, v, o, lse, d_o, dq, dk, dv);
  const DocumentsCall c = padded_call(padding, p, "backward_padded");
  std::lock_guard<std::mutex> lock(impl_->mu);
  engine::BackwardPlan& plan = impl_->documents_backward_plan_for(c.longest);
  plan.run_documents(q, k, v, o, lse, d_o, dq, dk, dv, c.lengths, impl_->options.check_lengths, impl_->options.scale,
                     stream);
}

Explanation Attention::prepare(int64_t batch, int64_t nq, int64_t nk, int64_t heads, int64_t kv_heads,
                               int64_t head_dim, DType dtype) {
  engine::Problem p;
  p.batch = batch;
  p.nq = nq;
  p.nk = nk;
  p.heads = heads;
  p.kv_heads = kv_heads;
  p.head_dim = head_dim;
  p.dtype = dtype;
  SPATTN_REQUIRE(batch >= 1 && nq >= 1 && nk >= 1 && heads >= 1 && kv_heads >= 1 && heads % kv_heads == 0,
                 "invalid problem {}", p.to_string());
  check_problem_supported(head_dim, dtype);
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->plan_for(p);
  return impl_->last;
}

std::string Attention::explain() const {
  if (!impl_->has_last) return "spattn::Attention: nothing has run yet (call forward() or prepare())\n";
  return impl_->last.to_string();
}

const Explanation& Attention::explanation() const {
  SPATTN_REQUIRE(impl_->has_last, "nothing has run yet: call forward() or prepare() first");
  return impl_->last;
}

const Pattern& Attention::pattern() const { return impl_->pattern; }

}  // namespace spattn
