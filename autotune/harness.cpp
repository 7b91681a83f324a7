#include "autotune/harness.hpp"

#include <spattn/reference.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "common/check.hpp"
#include "common/log.hpp"
#include "engine/backward.hpp"
#include "engine/reference.hpp"
#include "engine/select.hpp"
#include "runtime/driver.hpp"

namespace spattn::autotune {

using nlohmann::json;

Tolerance tolerance_for(DType dtype) {
  // The engine tests' tolerances: outputs are O(1) (|V| <= 1); bf16 keeps 8 mantissa
  // bits, fp16 11, and P and O are rounded to them.
  if (dtype == DType::kBFloat16) return {1e-2, 3e-2, 2e-3};
  return {2e-3, 5e-3, 2e-3};
}

double backward_tolerance_for(DType dtype) { return dtype == DType::kBFloat16 ? 3e-2 : 6e-3; }

GradientError gradient_error(const std::vector<float>& got, const std::vector<double>& want) {
  SPATTN_REQUIRE(got.size() == want.size(), "gradient of {} elements against a reference of {}", got.size(),
                 want.size());
  GradientError e;
  double num = 0, den = 0;
  for (size_t x = 0; x < want.size(); ++x) {
    if (!std::isfinite(got[x])) ++e.nonfinite;
    const double d = got[x] - want[x];
    num += d * d;
    den += want[x] * want[x];
    e.max_abs = std::max(e.max_abs, std::abs(d));
  }
  e.rel_l2 = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return e;
}

engine::Problem check_problem_for(const Pattern& pattern, const engine::Problem& problem, int64_t tokens,
                                  int64_t heads) {
  const int64_t ratio = std::max<int64_t>(1, problem.heads / problem.kv_heads);
  auto make = [&](bool shrink_seq, bool shrink_heads) {
    engine::Problem c = problem;
    c.batch = 1;
    if (shrink_seq && problem.nq > tokens) {
      c.nq = tokens;
      c.nk = std::max<int64_t>(1, problem.nk * tokens / problem.nq);
    }
    if (shrink_heads) {
      c.kv_heads = std::clamp<int64_t>((heads + ratio - 1) / ratio, 1, problem.kv_heads);
      c.heads = c.kv_heads * ratio;
    }
    return c;
  };
  for (const auto& [seq, hd] : {std::pair{true, true}, {true, false}, {false, true}}) {
    const engine::Problem c = make(seq, hd);
    try {
      pattern.validate(c.shape());
      return c;
    } catch (const Error&) {
    }
  }
  return make(false, false);
}

namespace {

double percentile(const std::vector<float>& sorted, double q) {
  if (sorted.empty()) return 0;
  const double pos = q * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(sorted.size() - 1, lo + 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - static_cast<double>(lo));
}

}  // namespace

Rotation plan_rotation(size_t set_bytes, const runtime::DeviceInfo& info) {
  // Enough sets that a set's inputs were last touched >= 2 x L2 of other traffic ago,
  // within 40% of free memory (plans need the rest for tables and part buffers).
  set_bytes = std::max<size_t>(set_bytes, 1);
  const size_t l2 = static_cast<size_t>(std::max(info.l2_bytes, 1 << 20));
  size_t free_bytes = 0, total_bytes = 0;
  SPATTN_CU_CHECK(cuMemGetInfo(&free_bytes, &total_bytes));
  const size_t want = std::clamp<size_t>((2 * l2 + set_bytes - 1) / set_bytes + 1, 3, 64);
  const size_t fit = static_cast<size_t>(0.4 * static_cast<double>(free_bytes)) / set_bytes;
  if (fit < 1)
    SPATTN_FAIL(ErrorCode::kUnsupported, "the problem's inputs ({} MiB) do not fit in 40% of the free GPU memory ({} MiB)",
                set_bytes >> 20, free_bytes >> 20);
  Rotation r;
  r.sets = std::min(want, fit);
  r.flush_bytes = (r.sets - 1) * set_bytes < 2 * l2 ? 2 * l2 : 0;
  return r;
}

std::string describe_timing(const std::string& what, int warmup, int reps, size_t sets, size_t set_bytes,
                            size_t flush_bytes) {
  return fmt::format("CUDA events, {}{} warm-up + {} timed runs over {} rotating input set(s) of {:.1f} MiB{}; "
                     "median, p20, p80",
                     what.empty() ? "" : what + ", ", warmup, reps, sets, set_bytes / 1048576.0,
                     flush_bytes ? fmt::format(", {} MiB L2 flush before each run", flush_bytes >> 20) : "");
}

void time_with_events(int warmup, int reps, const std::function<void(size_t)>& run, runtime::DeviceBuffer& flush,
                      json& out) {
  for (int w = 0; w < warmup; ++w) run(static_cast<size_t>(w));
  runtime::synchronize();
  runtime::Event start, stop;
  std::vector<float> times;
  times.reserve(static_cast<size_t>(reps));
  for (int r = 0; r < reps; ++r) {
    if (flush.size()) flush.fill_bytes(static_cast<uint8_t>(r));
    start.record();
    run(static_cast<size_t>(warmup + r));
    stop.record();
    stop.synchronize();
    times.push_back(stop.elapsed_ms_since(start));
  }
  std::sort(times.begin(), times.end());
  out["status"] = "ok";
  out["median_ms"] = percentile(times, 0.5);
  out["p20_ms"] = percentile(times, 0.2);
  out["p80_ms"] = percentile(times, 0.8);
  out["runs"] = reps;
}

namespace {

struct Tensors {
  runtime::DeviceBuffer q, k, v, o;
  TensorView tq, tk, tv, to;

  Tensors(const engine::Problem& p, uint64_t seed) {
    const int64_t qe = p.batch * p.nq * p.heads * p.head_dim;
    const int64_t ke = p.batch * p.nk * p.kv_heads * p.head_dim;
    q = runtime::DeviceBuffer(qe * 2);
    k = runtime::DeviceBuffer(ke * 2);
    v = runtime::DeviceBuffer(ke * 2);
    o = runtime::DeviceBuffer(qe * 2);
    engine::fill_random(q.data(), qe, p.dtype, seed * 4 + 1);
    engine::fill_random(k.data(), ke, p.dtype, seed * 4 + 2);
    engine::fill_random(v.data(), ke, p.dtype, seed * 4 + 3);
    tq = TensorView::contiguous(q.data(), p.dtype, {p.batch, p.nq, p.heads, p.head_dim});
    tk = TensorView::contiguous(k.data(), p.dtype, {p.batch, p.nk, p.kv_heads, p.head_dim});
    tv = TensorView::contiguous(v.data(), p.dtype, {p.batch, p.nk, p.kv_heads, p.head_dim});
    to = TensorView::contiguous(o.data(), p.dtype, {p.batch, p.nq, p.heads, p.head_dim});
  }

  static size_t bytes(const engine::Problem& p) {
    return static_cast<size_t>(2 * p.batch * p.head_dim * 2 * (p.nq * p.heads + p.nk * p.kv_heads));
  }
};

// What the backward pass needs beside Q, K, V, O: LSE and dO (inputs; O and LSE written
// by one forward pass), dQ, dK, dV (outputs).
struct BackwardTensors {
  runtime::DeviceBuffer lse, d_o, dq, dk, dv;
  TensorView tlse, tdo, tdq, tdk, tdv;

  BackwardTensors(const engine::Problem& p, uint64_t seed) {
    const int64_t qe = p.batch * p.nq * p.heads * p.head_dim;
    const int64_t ke = p.batch * p.nk * p.kv_heads * p.head_dim;
    lse = runtime::DeviceBuffer(static_cast<size_t>(p.batch * p.heads * p.nq) * 4);
    d_o = runtime::DeviceBuffer(qe * 2);
    dq = runtime::DeviceBuffer(qe * 2);
    dk = runtime::DeviceBuffer(ke * 2);
    dv = runtime::DeviceBuffer(ke * 2);
    engine::fill_random(d_o.data(), qe, p.dtype, seed * 4 + 4);
    tlse = TensorView::contiguous3(lse.data(), DType::kFloat32, {p.batch, p.heads, p.nq});
    tdo = TensorView::contiguous(d_o.data(), p.dtype, {p.batch, p.nq, p.heads, p.head_dim});
    tdq = TensorView::contiguous(dq.data(), p.dtype, {p.batch, p.nq, p.heads, p.head_dim});
    tdk = TensorView::contiguous(dk.data(), p.dtype, {p.batch, p.nk, p.kv_heads, p.head_dim});
    tdv = TensorView::contiguous(dv.data(), p.dtype, {p.batch, p.nk, p.kv_heads, p.head_dim});
  }

  static size_t bytes(const engine::Problem& p) {
    return Tensors::bytes(p) + static_cast<size_t>(p.batch * p.heads * p.nq) * 4;
  }
};

// "" when the kernel can run with its block size; else why not.
template <class Plan>
std::string resources(const Plan& plan) {
  const int max_threads = plan.kernel().kernel.attribute(CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK);
  if (max_threads < plan.rendered().threads)
    return fmt::format("the driver allows {} threads per block for this kernel ({} registers), it needs {}",
                       max_threads, plan.kernel().registers, plan.rendered().threads);
  return "";
}

}  // namespace

struct Bench::Impl {
  BenchSetup setup;
  runtime::DeviceInfo info;
  // Check problem: inputs, poisoned outputs, reference.
  std::unique_ptr<Tensors> check;
  runtime::DeviceBuffer check_lse;
  TensorView check_tlse;
  engine::ReferenceResult reference;
  // Backward pass: the check problem's LSE, dO and gradients, the reference gradients,
  // and per timing set the same buffers.
  std::unique_ptr<BackwardTensors> check_bwd;
  std::vector<double> ref_dq, ref_dk, ref_dv;
  std::vector<std::unique_ptr<BackwardTensors>> bwd_sets;
  // Timing: rotating sets and the L2 flush buffer (empty when rotation suffices).
  std::vector<std::unique_ptr<Tensors>> sets;
  runtime::DeviceBuffer flush;

  bool backward() const { return setup.pass == TunePass::kBackward; }

  // The forward pass with the heuristic's kernel, which writes the O and LSE the backward
  // pass reads.
  engine::ForwardPlan forward_plan(const engine::Problem& p) const {
    return engine::ForwardPlan(setup.pattern, p, engine::heuristic(setup.pattern, p, info).config, setup.device);
  }

  // Bytes of one rotating input set of the timed problem.
  size_t set_bytes() const {
    const engine::Problem& p = setup.problem;
    return Tensors::bytes(p) + (backward() ? BackwardTensors::bytes(p) : 0);
  }

  explicit Impl(BenchSetup s) : setup(std::move(s)) {
    runtime::make_current(setup.device);
    info = runtime::device_info(setup.device);

    const engine::Problem& c = setup.check;
    check = std::make_unique<Tensors>(c, setup.seed);
    check_lse = runtime::DeviceBuffer(static_cast<size_t>(c.batch * c.heads * c.nq) * 4);
    check_tlse = TensorView::contiguous3(check_lse.data(), DType::kFloat32, {c.batch, c.heads, c.nq});
    runtime::synchronize();
    if (!backward()) {
      reference = engine::reference_forward(setup.pattern, c, check->tq, check->tk, check->tv, 0);
    } else {
      check_bwd = std::make_unique<BackwardTensors>(c, setup.seed);
      forward_plan(c).run(check->tq, check->tk, check->tv, check->to, &check_bwd->tlse, 0, nullptr);
      runtime::synchronize();
      const size_t qe = static_cast<size_t>(c.batch * c.nq * c.heads * c.head_dim);
      const size_t ke = static_cast<size_t>(c.batch * c.nk * c.kv_heads * c.head_dim);
      using engine::download_values;
      reference_attention_backward(setup.pattern, c.shape(), c.batch, c.kv_heads, c.head_dim,
                                   download_values(check->q, qe, c.dtype).data(),
                                   download_values(check->k, ke, c.dtype).data(),
                                   download_values(check->v, ke, c.dtype).data(),
                                   download_values(check_bwd->d_o, qe, c.dtype).data(),
                                   1.0 / std::sqrt(static_cast<double>(c.head_dim)), ref_dq, ref_dk, ref_dv);
    }

    const engine::Problem& p = setup.problem;
    const Rotation rotation = plan_rotation(set_bytes(), info);
    const size_t n = rotation.sets;
    for (size_t s = 0; s < n; ++s) sets.push_back(std::make_unique<Tensors>(p, setup.seed + 1000 + s));
    if (backward()) {
      engine::ForwardPlan plan = forward_plan(p);  // one plan writes every set's O and LSE
      for (size_t s = 0; s < n; ++s) {
        bwd_sets.push_back(std::make_unique<BackwardTensors>(p, setup.seed + 1000 + s));
        const Tensors& t = *sets[s];
        plan.run(t.tq, t.tk, t.tv, t.to, &bwd_sets.back()->tlse, 0, nullptr);
      }
    }
    if (rotation.flush_bytes) flush = runtime::DeviceBuffer(rotation.flush_bytes);
    runtime::synchronize();
  }

  std::string timing_method() const {
    return describe_timing(backward() ? "the backward pass alone" : "", setup.warmup, setup.reps, sets.size(),
                           set_bytes(), flush.size());
  }

  // Times run(r) (r counts warm-up and timed runs) into out.
  template <class Run>
  void time_runs(const Run& run, json& out) {
    time_with_events(setup.warmup, setup.reps, run, flush, out);
  }

  json measure_backward(const KernelConfig& config) {
    const double tol = backward_tolerance_for(setup.problem.dtype);
    json out;
    {
      const engine::Problem& c = setup.check;
      engine::BackwardPlan plan(setup.pattern, c, config, setup.device);
      if (std::string why = resources(plan); !why.empty()) return json{{"status", "resources"}, {"detail", why}};
      BackwardTensors& b = *check_bwd;
      for (runtime::DeviceBuffer* g : {&b.dq, &b.dk, &b.dv}) g->fill_bytes(0xff);  // NaN: all must be written
      plan.run(check->tq, check->tk, check->tv, check->to, b.tlse, b.tdo, b.tdq, b.tdk, b.tdv, 0, nullptr);
      runtime::synchronize();
      const size_t qe = static_cast<size_t>(c.batch * c.nq * c.heads * c.head_dim);
      const size_t ke = static_cast<size_t>(c.batch * c.nk * c.kv_heads * c.head_dim);
      double worst = 0, max_abs = 0;
      int64_t nonfinite = 0;
      std::string errors;
      for (const auto& [name, buf, ref, n] :
           {std::tuple{"dQ", &b.dq, &ref_dq, qe}, {"dK", &b.dk, &ref_dk, ke}, {"dV", &b.dv, &ref_dv, ke}}) {
        const GradientError e = gradient_error(engine::download_values(*buf, n, c.dtype), *ref);
        nonfinite += e.nonfinite;
        max_abs = std::max(max_abs, e.max_abs);
        worst = std::max(worst, e.rel_l2);
        errors += fmt::format("{}{} rel L2 {:.2e}", errors.empty() ? "" : ", ", name, e.rel_l2);
      }
      out["rel_l2_err"] = worst;
      out["max_abs_err"] = max_abs;
      if (nonfinite > 0 || !(worst <= tol)) {
        out["status"] = "wrong";
        out["detail"] = fmt::format("{}{} vs the fp64 reference gradients on {} (limit: rel L2 {} each)", errors,
                                    nonfinite ? fmt::format(", {} non-finite", nonfinite) : "", c.to_string(), tol);
        return out;
      }
    }
    engine::BackwardPlan plan(setup.pattern, setup.problem, config, setup.device);
    if (std::string why = resources(plan); !why.empty()) return json{{"status", "resources"}, {"detail", why}};
    const size_t n = sets.size();
    time_runs([&](size_t r) {
      const Tensors& t = *sets[r % n];
      const BackwardTensors& b = *bwd_sets[r % n];
      plan.run(t.tq, t.tk, t.tv, t.to, b.tlse, b.tdo, b.tdq, b.tdk, b.tdv, 0, nullptr);
    }, out);
    out["registers"] = plan.kernel().registers;
    out["local_bytes"] = plan.kernel().local_bytes;
    return out;
  }

  json measure(const KernelConfig& config) {
    runtime::make_current(setup.device);
    if (backward()) return measure_backward(config);
    const Tolerance tol = tolerance_for(setup.problem.dtype);
    json out;
    // Correctness on the check problem.
    {
      engine::ForwardPlan plan(setup.pattern, setup.check, config, setup.device);
      if (std::string why = resources(plan); !why.empty()) return json{{"status", "resources"}, {"detail", why}};
      check->o.fill_bytes(0xff);  // NaN: every element must be written
      check_lse.fill_bytes(0xff);
      plan.run(check->tq, check->tk, check->tv, check->to, &check_tlse, 0, nullptr);
      runtime::synchronize();
      const engine::Problem& c = setup.check;
      std::vector<uint16_t> o(static_cast<size_t>(c.batch * c.nq * c.heads * c.head_dim));
      std::vector<float> lse(static_cast<size_t>(c.batch * c.heads * c.nq));
      check->o.download(o.data(), o.size() * 2);
      check_lse.download(lse.data(), lse.size() * 4);
      const engine::Comparison cmp = engine::compare(o, c.dtype, lse, reference);
      out["rel_l2_err"] = cmp.rel_l2_err;
      out["max_abs_err"] = cmp.max_abs_err;
      const bool ok = cmp.nonfinite == 0 && cmp.lse_mismatch == 0 && cmp.rel_l2_err <= tol.rel_l2 &&
                      cmp.max_abs_err <= tol.max_abs && cmp.max_lse_err <= tol.lse;
      if (!ok) {
        out["status"] = "wrong";
        out["detail"] = fmt::format("{} vs the fp32 reference on {} (limits: rel L2 {}, max |err| {}, LSE {})",
                                    cmp.to_string(), c.to_string(), tol.rel_l2, tol.max_abs, tol.lse);
        return out;
      }
    }
    // Timing on the real problem.
    engine::ForwardPlan plan(setup.pattern, setup.problem, config, setup.device);
    if (std::string why = resources(plan); !why.empty()) return json{{"status", "resources"}, {"detail", why}};
    const size_t n = sets.size();
    time_runs([&](size_t r) {
      const Tensors& t = *sets[r % n];
      plan.run(t.tq, t.tk, t.tv, t.to, nullptr, 0, nullptr);
    }, out);
    out["registers"] = plan.kernel().registers;
    out["local_bytes"] = plan.kernel().local_bytes;
    return out;
  }
};

Bench::Bench(BenchSetup setup) : impl_(std::make_unique<Impl>(std::move(setup))) {}
Bench::~Bench() = default;

json Bench::measure(const KernelConfig& config) { return impl_->measure(config); }

std::string Bench::timing_method() const { return impl_->timing_method(); }

}  // namespace spattn::autotune
