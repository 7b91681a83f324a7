#include <spattn/attention.hpp>

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
  return s.str();
}

struct Attention::Impl {
  Pattern pattern;
  AttentionOptions options;
  // One plan per (problem shape, dtype, config) and device; batch does not change the plan.
  using PlanKey = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int, std::string>;
  std::map<PlanKey, std::unique_ptr<engine::ForwardPlan>> plans;
  std::map<PlanKey, std::unique_ptr<engine::BackwardPlan>> backward_plans;
  Explanation last;
  bool has_last = false;
  engine::ForwardPlan* last_plan = nullptr;  // fast path for repeated calls on one problem
  engine::BackwardPlan* last_backward = nullptr;  // the same for backward()
  int last_backward_device = -1;
  int last_device = -1;
  int64_t last_batch = 0;
  std::mutex mu;

  // The record file (AttentionOptions::record, $SPATTN_RECORD), for each new plan.
  void record(TunePass pass, const engine::Problem& p, const runtime::DeviceInfo& info, const KernelConfig& config) {
    const std::string path = autotune::record_path(options.record);
    if (path.empty()) return;
    autotune::RecordedProblem r;
    r.pass = pass;
    r.arch = info.arch();
    r.pattern = pattern;
    r.problem = p;
    r.config = config;
    r.deterministic = pass == TunePass::kBackward && options.deterministic;
    autotune::record_problem(path, r);
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
    const api::Choice choice = options.config
                                   ? api::Choice{*options.config, "forced by AttentionOptions::config"}
                                   : api::choose(pattern, p, info, options.use_tuning_db);
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
    last = Explanation{};
    last.pattern = pattern.to_json();
    last.problem = p.to_string();
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
    last.work_items = plan.layout().schedule.size();
    if (plan.adaptive()) last.selection = plan.adaptive()->describe();
    has_last = true;
    last_plan = &plan;
    last_device = device;
    last_batch = p.batch;
    log::debug("attention: {} | {} | {}", last.problem, choice.config.to_string(), choice.source);
    return plan;
  }
};

void Attention::backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                         const TensorView& lse, const TensorView& d_o, const TensorView& dq, const TensorView& dk,
                         const TensorView& dv, CUstream stream) {
  const engine::Problem p = engine::backward_problem_from_tensors(q, k, v, o, lse, d_o, dq, dk, dv);
  if (is_adaptive(impl_->pattern))
    SPATTN_FAIL(ErrorCode::kUnsupported,
                "backward of adaptive patterns is not supported yet: their transposed tables would have to be built "
                "on the GPU from each forward's chosen blocks (forward works; train with a static pattern)");
  std::lock_guard<std::mutex> lock(impl_->mu);
  const int device = impl_->options.device >= 0 ? impl_->options.device : runtime::current_device();
  // Training calls backward once per layer and step: as in forward(), a repeated problem
  // goes straight to its plan (a tuning entry written meanwhile applies to problems met
  // afterwards).
  if (engine::BackwardPlan* last = impl_->last_backward; last && impl_->last_backward_device == device) {
    const engine::Problem& lp = last->problem();
    if (lp.nq == p.nq && lp.nk == p.nk && lp.heads == p.heads && lp.kv_heads == p.kv_heads &&
        lp.head_dim == p.head_dim && lp.dtype == p.dtype) {
      last->run(q, k, v, o, lse, d_o, dq, dk, dv, impl_->options.scale, stream);
      return;
    }
  }
  impl_->pattern.validate(p.shape());
  runtime::make_current(device);
  const runtime::DeviceInfo info = runtime::device_info(device);
  const engine::KernelChoice choice =
      impl_->options.backward_config
          ? engine::KernelChoice{*impl_->options.backward_config, "forced by AttentionOptions::backward_config"}
          : api::choose_backward(impl_->pattern, p, info, impl_->options.use_tuning_db);
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
  slot->run(q, k, v, o, lse, d_o, dq, dk, dv, impl_->options.scale, stream);
}

Attention::Attention(Pattern pattern, AttentionOptions options) : impl_(std::make_unique<Impl>()) {
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
