// The autotuner for the linear-time kernels (spattn::Autotuner::linear_candidates and
// tune_linear, spattn/autotune.hpp): the selective scan's ScanConfig and the causal
// Performer's PerformerConfig for one problem on this GPU.
//
// It is the attention tuner's run with other candidates, built from its pieces
// (autotune/tuner.hpp, harness.hpp, isolate.hpp, tuning_db.hpp): the device is probed and
// the candidates compiled through the kernel cache in child processes (this process stays
// free of CUDA), each candidate is checked and timed in a worker process (a fault costs
// only its own result), the winner is decided as for attention (min_gain over the
// heuristic's) and stored under the problem's "scan|..." / "performer|..." bucket.
//
// Per candidate, in the worker:
//   check: a smaller problem (scan: batch <= 2, <= 160 channels, <= check_tokens steps,
//          and a length that is no multiple of any chunk; Performer: batch 1, about 2
//          heads with the GQA ratio kept, <= 1000 tokens) on fresh random inputs rounded to
//          the dtype, output poisoned with NaN, through SelectiveScan / Performer with the
//          candidate forced, against reference_selective_scan / reference_performer (fp64)
//          at scan_tolerance / performer_tolerance (linear/kernels.hpp);
//   timing: the kernel alone (the scan; for Performer the causal prefix scan, the GEMMs
//          and feature maps around it being the same for every candidate) over rotating
//          input sets (plan_rotation), warm-up, then device events (time_with_events).
#include <spattn/autotune.hpp>
#include <spattn/linear.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <random>

#include "autotune/harness.hpp"
#include "autotune/isolate.hpp"
#include "autotune/search_space.hpp"
#include "autotune/tuner.hpp"
#include "autotune/tuning_db.hpp"
#include "codegen/kernel_spec.hpp"
#include "common/check.hpp"
#include "common/log.hpp"
#include "engine/reference.hpp"
#include "linear/kernels.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"

namespace spattn {

namespace linear {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// A placeholder device address: the check_* functions read only shapes, strides, dtypes
// and alignment.
void* placeholder() { return reinterpret_cast<void*>(uintptr_t{1} << 40); }

// The scan's arguments over contiguous tensors at the given addresses (gate, skip and bias
// present, as in Mamba).
struct ScanTensors {
  void *x, *delta, *z, *b, *c, *y, *a_log, *d, *bias;
};
SelectiveScanArgs scan_args(const ScanShape& s, const ScanTensors& t) {
  SelectiveScanArgs a;
  a.x = TensorView::contiguous3(t.x, s.dtype, {s.batch, s.length, s.channels});
  a.delta = TensorView::contiguous3(t.delta, s.dtype, {s.batch, s.length, s.channels});
  a.z = TensorView::contiguous3(t.z, s.dtype, {s.batch, s.length, s.channels});
  a.y = TensorView::contiguous3(t.y, s.dtype, {s.batch, s.length, s.channels});
  a.b = TensorView::contiguous3(t.b, s.dtype, {s.batch, s.length, s.state});
  a.c = TensorView::contiguous3(t.c, s.dtype, {s.batch, s.length, s.state});
  a.a_log = TensorView::contiguous3(t.a_log, DType::kFloat32, {s.channels, s.state, 1});
  a.a_log.rank = 2;
  a.d = TensorView::contiguous3(t.d, DType::kFloat32, {s.channels, 1, 1});
  a.d.rank = 1;
  a.delta_bias = a.d;
  a.delta_bias.data = t.bias;
  return a;
}

ScanShape scan_shape_of(const LinearProblem& p) {
  SPATTN_REQUIRE(p.batch >= 1 && p.length >= 1 && p.channels >= 1 && p.state >= 1,
                 "scan: batch ({}), length ({}), channels ({}) and state ({}) must be >= 1", p.batch, p.length,
                 p.channels, p.state);
  ScanShape s{p.batch, p.length, p.channels, p.state, p.dtype};
  void* a = placeholder();
  return check_selective_scan(scan_args(s, {a, a, a, a, a, a, a, a, a}));
}

PerformerShape performer_shape_of(const LinearProblem& p) {
  const int64_t hkv = p.kv_heads > 0 ? p.kv_heads : p.heads;
  SPATTN_REQUIRE(p.batch >= 1 && p.length >= 1 && p.heads >= 1 && hkv >= 1 && p.head_dim >= 1,
                 "performer: batch ({}), length ({}), heads ({}), kv heads ({}) and head dim ({}) must be >= 1", p.batch,
                 p.length, p.heads, hkv, p.head_dim);
  auto view = [&](int64_t heads) {
    return TensorView::contiguous(placeholder(), p.dtype, {p.batch, p.length, heads, p.head_dim});
  };
  return check_performer(view(p.heads), view(hkv), view(hkv), view(p.heads), true, p.features);
}

// The problem of the correctness check (see the file comment).
LinearProblem check_problem_of(const LinearProblem& p, int64_t check_tokens) {
  LinearProblem c = p;
  if (p.op == LinearOp::kScan) {
    c.batch = std::min<int64_t>(p.batch, 2);
    c.channels = std::min<int64_t>(p.channels, 160);  // 64-channel CTAs get a partial tail
    c.length = std::min(p.length, check_tokens);
    // Chunks are powers of two (segments x steps): an odd length checks the tail path too.
    if (c.length == check_tokens && c.length > 64) c.length -= 27;
  } else {
    const int64_t hkv = p.kv_heads > 0 ? p.kv_heads : p.heads, group = p.heads / hkv;
    c.batch = 1;
    c.length = std::min<int64_t>(p.length, 1000);  // the causal fp64 reference is quadratic
    c.kv_heads = std::clamp<int64_t>((2 + group - 1) / group, 1, hkv);
    c.heads = c.kv_heads * group;
  }
  return c;
}

struct Candidate {
  std::string config;
  bool heuristic = false;
  std::string pruned;  // why, when statically pruned
  int smem_bytes = 0;
  int threads = 0;
};

// The heuristic's configuration first, then the table (or `only`), each statically pruned
// against the device's shared memory.
std::vector<Candidate> candidates_for(const LinearProblem& p, const runtime::DeviceInfo& device,
                                      const std::vector<std::string>& only, std::string* heuristic_source) {
  std::vector<Candidate> out;
  auto add = [&](const std::string& config, bool heuristic, int smem, int threads, const std::string& what) {
    if (std::any_of(out.begin(), out.end(), [&](const Candidate& c) { return c.config == config; })) return;
    if (!heuristic && !only.empty() && std::find(only.begin(), only.end(), config) == only.end()) return;
    Candidate c{config, heuristic, "", smem, threads};
    if (smem > device.smem_per_block_optin)
      c.pruned = fmt::format("needs {} B of shared memory {}; {} offers {} B per block", smem, what, device.name,
                             device.smem_per_block_optin);
    out.push_back(std::move(c));
  };
  if (p.op == LinearOp::kScan) {
    const ScanShape s = scan_shape_of(p);
    std::vector<ScanConfig> table = scan_configs();
    for (const std::string& text : only) {
      const ScanConfig c = ScanConfig::parse(text);  // kInvalidArgument naming the field
      if (std::find(table.begin(), table.end(), c) == table.end()) table.push_back(c);
    }
    const std::string what = fmt::format("at state {}", s.state);
    const ScanConfig h = scan_heuristic(s, device, heuristic_source);
    add(h.to_string(), true, h.smem_bytes(static_cast<int>(s.state)), h.threads(), what);
    for (const ScanConfig& c : table) add(c.to_string(), false, c.smem_bytes(static_cast<int>(s.state)), c.threads(), what);
  } else {
    performer_shape_of(p);
    std::vector<PerformerConfig> table = performer_configs();
    for (const std::string& text : only) {
      const PerformerConfig c = PerformerConfig::parse(text);
      if (std::find(table.begin(), table.end(), c) == table.end()) table.push_back(c);
    }
    const int m = static_cast<int>(p.features);
    const std::string what = fmt::format("for {} features", m);
    const PerformerConfig h = performer_heuristic(m, device, heuristic_source);
    add(h.to_string(), true, h.smem_bytes(m), 256, what);
    for (const PerformerConfig& c : table) add(c.to_string(), false, c.smem_bytes(m), 256, what);
  }
  return out;
}

codegen::RenderedKernel render_candidate(const LinearProblem& p, const std::string& config) {
  if (p.op == LinearOp::kScan) return render_scan(ScanConfig::parse(config), static_cast<int>(p.state), p.dtype);
  return render_performer_causal(PerformerConfig::parse(config), static_cast<int>(p.features), p.dtype);
}

LinearCandidateReport report_of(const Candidate& c) {
  LinearCandidateReport r;
  r.config = c.config;
  r.heuristic = c.heuristic;
  r.status = c.pruned.empty() ? "candidate" : "pruned";
  r.detail = c.pruned;
  r.smem_bytes = c.smem_bytes;
  return r;
}

// --- in the worker ---------------------------------------------------------------------

runtime::DeviceBuffer upload(const std::vector<float>& v, DType dtype) {
  runtime::DeviceBuffer buf(std::max<size_t>(v.size(), 1) * dtype_size(dtype));
  if (dtype == DType::kFloat32) {
    buf.upload(v.data(), v.size() * 4);
  } else {
    std::vector<uint16_t> bits(v.size());
    for (size_t k = 0; k < v.size(); ++k) bits[k] = to_half_bits(v[k], dtype);
    buf.upload(bits.data(), bits.size() * 2);
  }
  return buf;
}

// Uniform values in [lo, hi) rounded to what `dtype` stores.
std::vector<float> uniform(size_t n, float lo, float hi, DType dtype, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  if (dtype != DType::kFloat32)
    for (float& x : v) x = engine::half_bits_to_float(to_half_bits(x, dtype), dtype);
  return v;
}

// Timing inputs: random device values, no host copy. The kernels' speed does not depend
// on the values, so fp32 tensors are filled through the 16-bit fill (each float's upper
// half a bf16 value in [-scale, scale)).
runtime::DeviceBuffer random_device(int64_t n, DType dtype, uint64_t seed, float scale = 1.0f) {
  runtime::DeviceBuffer buf(static_cast<size_t>(std::max<int64_t>(n, 1)) * dtype_size(dtype));
  if (dtype == DType::kFloat32) engine::fill_random(buf.data(), 2 * n, DType::kBFloat16, seed, scale);
  else engine::fill_random(buf.data(), n, dtype, seed, scale);
  return buf;
}

struct BenchSetup {
  LinearProblem problem, check;
  int device = 0;
  int warmup = 5, reps = 20;
  uint64_t seed = 1;
};

class Bench {
 public:
  explicit Bench(BenchSetup s) : setup_(std::move(s)) {
    runtime::make_current(setup_.device);
    info_ = runtime::device_info(setup_.device);
    if (setup_.problem.op == LinearOp::kScan) prepare_scan();
    else prepare_performer();
    runtime::synchronize();
  }

  json measure(const std::string& config) {
    runtime::make_current(setup_.device);
    return setup_.problem.op == LinearOp::kScan ? measure_scan(ScanConfig::parse(config))
                                                : measure_performer(PerformerConfig::parse(config));
  }

  std::string timing_method() const {
    return autotune::describe_timing(setup_.problem.op == LinearOp::kScan ? "the scan kernel alone"
                                                                : "the causal prefix-scan kernel alone",
                           setup_.warmup, setup_.reps, sets_, set_bytes_, flush_.size());
  }

 private:
  static json wrong(const LinearCheck& c, const LinearProblem& check) {
    return json{{"status", "wrong"}, {"check_worst", c.worst},
                {"detail", fmt::format("{} vs the fp64 reference on {}", c.to_string(), check.to_string())}};
  }

  void plan_sets(size_t set_bytes) {
    const autotune::Rotation r = autotune::plan_rotation(set_bytes, info_);
    sets_ = r.sets;
    set_bytes_ = set_bytes;
    if (r.flush_bytes) flush_ = runtime::DeviceBuffer(r.flush_bytes);
  }

  // --- scan ---
  void prepare_scan() {
    const ScanShape c = scan_shape_of(setup_.check);
    check_scan_ = c;
    std::mt19937_64 rng(setup_.seed);
    const size_t seq = static_cast<size_t>(c.batch * c.length * c.channels), bc = static_cast<size_t>(c.batch * c.length * c.state);
    const std::vector<float> x = uniform(seq, -1, 1, c.dtype, rng), dr = uniform(seq, -4, 1, c.dtype, rng),
                             z = uniform(seq, -3, 3, c.dtype, rng), bm = uniform(bc, -1, 1, c.dtype, rng),
                             cm = uniform(bc, -1, 1, c.dtype, rng),
                             d = uniform(static_cast<size_t>(c.channels), -1, 1, DType::kFloat32, rng),
                             bias = uniform(static_cast<size_t>(c.channels), -0.5f, 0.5f, DType::kFloat32, rng);
    std::vector<float> alog(static_cast<size_t>(c.channels * c.state));
    for (int64_t ch = 0; ch < c.channels; ++ch)
      for (int64_t n = 0; n < c.state; ++n) alog[ch * c.state + n] = std::log(static_cast<float>(n + 1));  // A = -(1..N)
    reference_selective_scan(c, x.data(), dr.data(), alog.data(), bm.data(), cm.data(), d.data(), bias.data(), z.data(),
                             true, scan_ref_);
    for (const auto* v : {&x, &dr, &z, &bm, &cm}) check_in_.push_back(upload(*v, c.dtype));
    for (const std::vector<float>* v : std::initializer_list<const std::vector<float>*>{&alog, &d, &bias})
      check_in_.push_back(upload(*v, DType::kFloat32));
    check_out_ = runtime::DeviceBuffer(seq * dtype_size(c.dtype));

    // Timing sets of the real problem: x, delta, z, B, C read, y written; the fp32
    // parameters are shared.
    const ScanShape s = scan_shape_of(setup_.problem);
    scan_ = s;
    const int64_t n_seq = s.batch * s.length * s.channels, n_bc = s.batch * s.length * s.state;
    params_.push_back(upload(std::vector<float>(static_cast<size_t>(s.channels * s.state), 0.f), DType::kFloat32));
    params_.push_back(upload(std::vector<float>(static_cast<size_t>(s.channels), 1.f), DType::kFloat32));
    params_.push_back(upload(std::vector<float>(static_cast<size_t>(s.channels), 0.f), DType::kFloat32));
    plan_sets(static_cast<size_t>(5 * n_seq + 2 * n_bc) * dtype_size(s.dtype));
    for (size_t k = 0; k < sets_; ++k) {
      const uint64_t seed = setup_.seed + 1000 + 10 * k;
      std::vector<runtime::DeviceBuffer> set;
      for (int t = 0; t < 3; ++t) set.push_back(random_device(n_seq, s.dtype, seed + t, t == 2 ? 3.f : 1.f));  // x, delta, z
      for (int t = 0; t < 2; ++t) set.push_back(random_device(n_bc, s.dtype, seed + 3 + t));                   // B, C
      set.emplace_back(static_cast<size_t>(n_seq) * dtype_size(s.dtype));                                      // y
      sets_scan_.push_back(std::move(set));
    }
  }

  json measure_scan(const ScanConfig& config) {
    json out;
    {
      const ScanShape& c = check_scan_;
      SelectiveScanOptions o;
      o.device = setup_.device;
      o.config = config;
      o.use_tuning_db = false;
      SelectiveScan scan(o);
      check_out_.fill_bytes(0xff);  // NaN: every element must be written
      auto& in = check_in_;
      scan.forward(scan_args(c, {in[0].data(), in[1].data(), in[2].data(), in[3].data(), in[4].data(),
                                 check_out_.data(), in[5].data(), in[6].data(), in[7].data()}));
      runtime::synchronize();
      const LinearCheck chk =
          check_output(engine::download_values(check_out_, scan_ref_.size(), c.dtype), scan_ref_, scan_tolerance(c.dtype));
      if (!chk.ok()) return wrong(chk, setup_.check);
      out["check_worst"] = chk.worst;
    }
    const ScanKernel kern = ScanKernel::load(config, scan_, info_);
    std::vector<SelectiveScanArgs> args;
    for (auto& set : sets_scan_)
      args.push_back(scan_args(scan_, {set[0].data(), set[1].data(), set[2].data(), set[3].data(), set[4].data(),
                                       set[5].data(), params_[0].data(), params_[1].data(), params_[2].data()}));
    runtime::DeviceBuffer workspace(kern.workspace_bytes(scan_));
    autotune::time_with_events(setup_.warmup, setup_.reps,
                               [&](size_t r) { kern.launch(args[r % args.size()], scan_, workspace, nullptr); }, flush_,
                               out);
    out["registers"] = kern.jit->registers;
    out["local_bytes"] = kern.jit->local_bytes;
    return out;
  }

  // --- performer ---
  void prepare_performer() {
    const LinearProblem& cp = setup_.check;
    const PerformerShape c = performer_shape_of(cp);
    check_perf_ = c;
    std::mt19937_64 rng(setup_.seed);
    const size_t qn = static_cast<size_t>(c.batch * c.nq * c.heads * c.head_dim),
                 kn = static_cast<size_t>(c.batch * c.nk * c.kv_heads * c.head_dim);
    const std::vector<float> q = uniform(qn, -1, 1, c.dtype, rng), k = uniform(kn, -1, 1, c.dtype, rng),
                             v = uniform(kn, -1, 1, c.dtype, rng);
    const PerformerFeatures feats = PerformerFeatures::draw(c.head_dim, cp.features, 0);
    reference_performer(c, q.data(), k.data(), v.data(), feats.rounded(c.dtype).data(), cp.features, true, perf_ref_);
    for (const auto* x : {&q, &k, &v}) check_in_.push_back(upload(*x, c.dtype));
    check_out_ = runtime::DeviceBuffer(qn * dtype_size(c.dtype));

    // Timing sets: the causal kernel's operands, φ(Q) [B, H, N, m], φ(K) [B, Hkv, N, m],
    // [V | 1] [B, Hkv, N, Dv + 1] (fp32), and O.
    const PerformerShape s = performer_shape_of(setup_.problem);
    perf_ = s;
    const int64_t m = setup_.problem.features;
    const int64_t n_q = s.batch * s.heads * s.nq * m, n_k = s.batch * s.kv_heads * s.nk * m,
                  n_v = s.batch * s.kv_heads * s.nk * (s.v_dim + 1), n_o = s.batch * s.nq * s.heads * s.v_dim;
    plan_sets(static_cast<size_t>(4 * (n_q + n_k + n_v)) + static_cast<size_t>(n_o) * dtype_size(s.dtype));
    for (size_t k = 0; k < sets_; ++k) {
      const uint64_t seed = setup_.seed + 1000 + 10 * k;
      std::vector<runtime::DeviceBuffer> set;
      set.push_back(random_device(n_q, DType::kFloat32, seed));
      set.push_back(random_device(n_k, DType::kFloat32, seed + 1));
      set.push_back(random_device(n_v, DType::kFloat32, seed + 2));
      set.emplace_back(static_cast<size_t>(n_o) * dtype_size(s.dtype));
      sets_perf_.push_back(std::move(set));
    }
  }

  json measure_performer(const PerformerConfig& config) {
    json out;
    const int64_t m = setup_.problem.features;
    {
      const PerformerShape& c = check_perf_;
      PerformerOptions o;
      o.features = m;
      o.seed = 0;
      o.causal = true;
      o.device = setup_.device;
      o.config = config;
      o.use_tuning_db = false;
      Performer perf(c.head_dim, o);
      check_out_.fill_bytes(0xff);
      auto view = [&](const runtime::DeviceBuffer& b, int64_t heads) {
        return TensorView::contiguous(b.data(), c.dtype, {c.batch, c.nq, heads, c.head_dim});
      };
      perf.forward(view(check_in_[0], c.heads), view(check_in_[1], c.kv_heads), view(check_in_[2], c.kv_heads),
                   view(check_out_, c.heads));
      runtime::synchronize();
      const LinearCheck chk =
          check_output(engine::download_values(check_out_, perf_ref_.size(), c.dtype), perf_ref_, performer_tolerance(c.dtype));
      if (!chk.ok()) return wrong(chk, setup_.check);
      out["check_worst"] = chk.worst;
    }
    const PerformerShape& s = perf_;
    const PerformerCausalKernel kern = PerformerCausalKernel::load(config, static_cast<int>(m), s.dtype, info_);
    std::vector<SpattnCausalParams> params;
    for (auto& set : sets_perf_) {
      SpattnCausalParams p{};
      p.q_features = static_cast<const float*>(set[0].data());
      p.k_features = static_cast<const float*>(set[1].data());
      p.values = static_cast<const float*>(set[2].data());
      p.o = set[3].data();
      p.o_stride_h = s.v_dim, p.o_stride_n = s.heads * s.v_dim, p.o_stride_b = s.nq * s.heads * s.v_dim;
      p.batch = static_cast<int32_t>(s.batch), p.n = static_cast<int32_t>(s.nq), p.heads = static_cast<int32_t>(s.heads);
      p.kv_group = static_cast<int32_t>(s.heads / s.kv_heads), p.dv = static_cast<int32_t>(s.v_dim);
      params.push_back(p);
    }
    autotune::time_with_events(setup_.warmup, setup_.reps,
                               [&](size_t r) { kern.launch(params[r % params.size()], nullptr); }, flush_, out);
    out["registers"] = kern.jit->registers;
    out["local_bytes"] = kern.jit->local_bytes;
    return out;
  }

  BenchSetup setup_;
  runtime::DeviceInfo info_;
  // The check: inputs, poisoned output, reference.
  std::vector<runtime::DeviceBuffer> check_in_;
  runtime::DeviceBuffer check_out_;
  ScanShape check_scan_, scan_;
  PerformerShape check_perf_, perf_;
  std::vector<double> scan_ref_, perf_ref_;
  // Timing: rotating sets, shared parameters, the L2 flush buffer (empty when rotation suffices).
  std::vector<std::vector<runtime::DeviceBuffer>> sets_scan_, sets_perf_;
  std::vector<runtime::DeviceBuffer> params_;
  size_t sets_ = 0, set_bytes_ = 0;
  runtime::DeviceBuffer flush_;
};

void check_problem(const LinearProblem& p) {
  if (p.op == LinearOp::kScan) scan_shape_of(p);
  else performer_shape_of(p);
}

std::string bucket_of(const LinearProblem& p) {
  if (p.op == LinearOp::kScan) return scan_bucket(scan_shape_of(p));
  return performer_bucket(performer_shape_of(p), p.features);
}

}  // namespace
}  // namespace linear

std::vector<LinearCandidateReport> Autotuner::linear_candidates(const LinearProblem& problem) const {
  const std::string arch = options_.arch.empty() ? "sm_90a" : options_.arch;
  std::string why;
  std::vector<LinearCandidateReport> out;
  for (const linear::Candidate& c :
       linear::candidates_for(problem, autotune::typical_device(arch), options_.linear_configs, &why))
    out.push_back(linear::report_of(c));
  return out;
}

LinearTuneReport Autotuner::tune_linear(const LinearProblem& problem) const {
  using namespace linear;
  const AutotuneOptions& options = options_;
  const auto t0 = Clock::now();
  autotune::check_timing_options(options);
  check_problem(problem);
  const bool isolated = options.isolate && autotune::children_can_use_cuda();
  if (options.isolate && !isolated)
    log::warn("autotune: CUDA is already loaded in this process, so candidates run in-process (a kernel fault ends "
              "the run); run the autotuner in a process that has not used CUDA to isolate them");
  const runtime::DeviceInfo device = autotune::probe_device(options.device, isolated);
  const autotune::Fingerprint fingerprint = autotune::Fingerprint::of(device);
  const std::string arch = device.arch();
  auto progress = [&](const char* phase, size_t done, size_t total) {
    if (options.progress) options.progress(phase, done, total);
  };

  LinearTuneReport report;
  report.op = problem.op;
  report.device = fingerprint.describe();
  report.arch = arch;
  report.problem = problem.to_string();
  const LinearProblem check = check_problem_of(problem, options.check_tokens);
  report.check_problem = check.to_string();
  report.bucket = bucket_of(problem);
  report.isolated = isolated;
  const std::vector<Candidate> cands =
      candidates_for(problem, device, options.linear_configs, &report.heuristic_source);
  for (size_t k = 0; k < cands.size(); ++k) {
    report.candidates.push_back(report_of(cands[k]));
    if (cands[k].heuristic) report.heuristic = static_cast<int>(k);
  }

  // --- compile: every viable candidate, and the support kernels of the check and fills ---
  std::vector<autotune::CompileJob> jobs;
  std::vector<int> job_of(cands.size(), -1);
  for (size_t k = 0; k < cands.size(); ++k) {
    if (!cands[k].pruned.empty()) continue;
    job_of[k] = static_cast<int>(jobs.size());
    jobs.push_back(autotune::CompileJob{render_candidate(problem, cands[k].config), cands[k].heuristic});
  }
  jobs.push_back(autotune::CompileJob{codegen::render_support_kernels(), true});
  if (problem.op == LinearOp::kPerformer) jobs.push_back(autotune::CompileJob{render_performer_support(problem.dtype), true});
  autotune::compile_jobs(jobs, arch, options.threads, isolated, 600, {},
                         [&](size_t done, size_t total) { progress("compiling", done, total); });

  // --- post-compile pruning ---------------------------------------------------------------
  std::vector<size_t> runnable;
  for (size_t k = 0; k < cands.size(); ++k) {
    LinearCandidateReport& r = report.candidates[k];
    if (r.status != "candidate") continue;
    const autotune::CompileJob& job = jobs[static_cast<size_t>(job_of[k])];
    if (!job.done) {
      r.status = "compile error";
      r.detail = job.error.substr(0, job.error.find('\n'));
      continue;
    }
    if (autotune::take_compiled(r, job.found, cands[k].threads, device, options.max_local_bytes)) runnable.push_back(k);
  }
  std::stable_sort(runnable.begin(), runnable.end(),
                   [&](size_t a, size_t b) { return cands[a].heuristic > cands[b].heuristic; });

  // --- check and time, in worker processes -------------------------------------------------
  BenchSetup setup;
  setup.problem = problem;
  setup.check = check;
  setup.device = options.device;
  setup.warmup = options.warmup;
  setup.reps = options.reps;
  setup.seed = std::random_device{}() | (uint64_t{std::random_device{}()} << 32);  // fresh inputs every run
  const bool budgeted = options.budget_seconds > 0;
  const auto deadline =
      t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.budget_seconds));
  auto bench = std::make_shared<std::unique_ptr<Bench>>();  // created lazily in each worker
  const autotune::ItemFn item = [&, bench](size_t n) -> json {
    const Candidate& c = cands[runnable[n]];
    if (budgeted && !c.heuristic && Clock::now() > deadline)
      return json{{"status", "skipped"}, {"detail", "the budget ran out before it was timed"}};
    return autotune::measure_guarded([&]() -> json {
      if (!*bench) *bench = std::make_unique<Bench>(setup);
      json r = (*bench)->measure(c.config);
      r["timing"] = (*bench)->timing_method();
      return r;
    });
  };
  autotune::IsolateOptions io;
  io.isolate = isolated;
  io.item_timeout_s = options.candidate_timeout_s;
  size_t timed = 0;
  progress("timing", 0, runnable.size());
  const std::vector<autotune::ItemOutcome> outcomes =
      autotune::run_items(runnable.size(), item, io, [&](size_t, const autotune::ItemOutcome&) {
        progress("timing", ++timed, runnable.size());
      });
  for (size_t n = 0; n < runnable.size(); ++n) {
    LinearCandidateReport& r = report.candidates[runnable[n]];
    const autotune::Measured m = autotune::read_outcome(outcomes[n]);
    r.status = m.status;
    r.detail = m.detail;
    if (m.value.is_null()) continue;
    r.check_worst = m.value.value("check_worst", -1.0);
    if (r.status != "ok") continue;
    r.median_ms = m.value.value("median_ms", 0.0);
    r.p20_ms = m.value.value("p20_ms", 0.0);
    r.p80_ms = m.value.value("p80_ms", 0.0);
    r.runs = m.value.value("runs", 0);
    if (report.timing.empty()) report.timing = m.value.value("timing", std::string());
  }

  // --- the winner --------------------------------------------------------------------------
  std::vector<double> medians;
  for (const LinearCandidateReport& r : report.candidates) medians.push_back(r.status == "ok" ? r.median_ms : 0.0);
  const autotune::Winner winner = autotune::pick_winner(medians, report.heuristic, options.min_gain,
                                                        [&](size_t k) { return report.candidates[k].config; });
  report.best = winner.best;
  report.note = winner.note;
  const double h_ms = report.heuristic >= 0 ? medians[report.heuristic] : 0;
  for (LinearCandidateReport& r : report.candidates)
    if (r.status == "ok" && h_ms > 0) r.speedup = h_ms / r.median_ms;
  if (report.best >= 0) {
    LinearCandidateReport& best = report.candidates[report.best];
    best.best = true;
    report.speedup = best.speedup;
    if (options.save) {
      autotune::LinearEntry e;
      e.config = best.config;
      e.median_ms = best.median_ms;
      e.p20_ms = best.p20_ms;
      e.p80_ms = best.p80_ms;
      e.heuristic_config = report.heuristic >= 0 ? report.candidates[report.heuristic].config : "";
      e.heuristic_ms = h_ms;
      e.candidates = static_cast<int>(std::count_if(report.candidates.begin(), report.candidates.end(),
                                                    [](const auto& r) { return r.status == "ok"; }));
      e.problem = report.problem;
      e.tuned_at = autotune::utc_now();
      e.bucket = {{"op", to_string(problem.op)}, {"key", report.bucket}};
      report.db_file =
          autotune::TuningDb::store_linear(autotune::TuningDb::default_dir(), fingerprint, report.bucket, e).string();
      report.saved = true;
    }
  }
  report.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  log::debug("autotune {} | best {} ({:.3f} ms, {:.2f}x the heuristic) in {:.1f} s", report.problem,
             report.best >= 0 ? report.candidates[report.best].config : "none",
             report.best >= 0 ? report.candidates[report.best].median_ms : 0.0, report.speedup, report.seconds);
  return report;
}

}  // namespace spattn
