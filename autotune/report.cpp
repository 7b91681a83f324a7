// Text and JSON forms of the autotuner's and prewarm's reports (spattn/autotune.hpp).
#include <spattn/autotune.hpp>

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <numeric>

namespace spattn {

using nlohmann::json;

namespace {

json candidate_json(const CandidateReport& c) {
  json j = {{"config", c.config.to_string()},
            {"heuristic", c.heuristic},
            {"best", c.best},
            {"status", c.status},
            {"smem_bytes", c.smem_bytes}};
  if (!c.detail.empty()) j["detail"] = c.detail;
  if (c.registers >= 0) j["registers"] = c.registers;
  if (c.local_bytes >= 0) j["local_bytes"] = c.local_bytes;
  if (c.registers >= 0) {
    j["cache_hit"] = c.cache_hit;
    j["compile_ms"] = c.compile_ms;
  }
  if (c.rel_l2_err >= 0) {
    j["rel_l2_err"] = c.rel_l2_err;
    j["max_abs_err"] = c.max_abs_err;
  }
  if (c.status == "ok") {
    j["median_ms"] = c.median_ms;
    j["p20_ms"] = c.p20_ms;
    j["p80_ms"] = c.p80_ms;
    j["runs"] = c.runs;
    j["tflops"] = c.tflops;
    if (c.speedup > 0) j["speedup"] = c.speedup;
  }
  return j;
}

// Rows of a report's table: timed candidates fastest first, then the rest in search-space order.
template <class Candidate>
std::vector<size_t> table_order(const std::vector<Candidate>& candidates) {
  std::vector<size_t> order(candidates.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const bool oa = candidates[a].status == "ok", ob = candidates[b].status == "ok";
    if (oa != ob) return oa;
    return oa && candidates[a].median_ms < candidates[b].median_ms;
  });
  return order;
}

std::string clip(const std::string& s, size_t n) {
  std::string one = s.substr(0, s.find('\n'));
  return one.size() <= n ? one : one.substr(0, n - 3) + "...";
}

}  // namespace

const char* to_string(TunePass pass) { return pass == TunePass::kBackward ? "backward" : "forward"; }

std::string AutotuneReport::to_json() const {
  json cands = json::array();
  for (const CandidateReport& c : candidates) cands.push_back(candidate_json(c));
  json j = {{"pass", to_string(pass)},
            {"device", device},
            {"arch", arch},
            {"pattern", json::parse(pattern, nullptr, false)},
            {"problem", problem},
            {"check_problem", check_problem},
            {"bucket", bucket},
            {"density", density},
            {"useful_flops", useful_flops},
            {"timing", timing},
            {"isolated", isolated},
            {"candidates", cands},
            {"saved", saved},
            {"seconds", seconds}};
  if (saved) j["db_file"] = db_file;
  if (best >= 0) j["best"] = candidates[best].config.to_string();
  if (heuristic >= 0) j["heuristic"] = candidates[heuristic].config.to_string();
  if (speedup > 0) j["speedup"] = speedup;
  if (!note.empty()) j["note"] = note;
  return j.dump(2);
}

std::string AutotuneReport::to_table() const {
  std::string s;
  s += fmt::format("GPU      {}\n", device);
  s += fmt::format("pass     {}\n", to_string(pass));
  s += fmt::format("problem  {}, density {:.4f}, {:.3g} useful FLOP\n", problem, density, useful_flops);
  s += fmt::format("pattern  {}\n", pattern);
  s += fmt::format("check    {} against the {} reference, fresh random inputs\n", check_problem,
                   pass == TunePass::kBackward ? "fp64 gradient" : "fp32");
  if (!timing.empty()) s += fmt::format("timing   {}\n", timing);
  s += fmt::format("bucket   {}\n\n", bucket);

  const std::vector<size_t> order = table_order(candidates);
  s += fmt::format("  {:<30} {:<13} {:>10} {:>17} {:>8} {:>9} {:>5} {:>6}  {}\n", "candidate", "status", "median ms",
                   "p20..p80 ms", "TFLOP/s", "vs heur.", "regs", "local", "notes");
  for (size_t k : order) {
    const CandidateReport& c = candidates[k];
    const std::string name = c.config.to_string() + (c.heuristic ? " (h)" : "");
    const std::string regs = c.registers >= 0 ? std::to_string(c.registers) : "-";
    const std::string local = c.local_bytes >= 0 ? std::to_string(c.local_bytes) : "-";
    if (c.status == "ok") {
      s += fmt::format("{} {:<30} {:<13} {:>10.4f} {:>8.4f}..{:<8.4f} {:>8.1f} {:>9} {:>5} {:>6}\n", c.best ? "*" : " ",
                       name, c.status, c.median_ms, c.p20_ms, c.p80_ms, c.tflops,
                       c.speedup > 0 ? fmt::format("{:.3f}x", c.speedup) : "-", regs, local);
    } else {
      s += fmt::format("  {:<30} {:<13} {:>10} {:>17} {:>8} {:>9} {:>5} {:>6}  {}\n", name, c.status, "-", "-", "-", "-",
                       regs, local, clip(c.detail, 100));
    }
  }
  s += "\n";
  const size_t ok = static_cast<size_t>(
      std::count_if(candidates.begin(), candidates.end(), [](const CandidateReport& c) { return c.status == "ok"; }));
  s += fmt::format("{} candidates, {} timed, in {:.1f} s{}\n", candidates.size(), ok, seconds,
                   isolated || ok == 0 ? "" : " (in-process: CUDA was already loaded)");
  const size_t compiled = static_cast<size_t>(std::count_if(
      candidates.begin(), candidates.end(), [](const CandidateReport& c) { return c.status == "compiled"; }));
  if (ok == 0 && compiled > 0) {
    s += fmt::format("compile only: {} candidates are in the kernel cache for {}\n", compiled, arch);
    return s;
  }
  if (best < 0) {
    s += "no candidate passed the correctness check; nothing was saved\n";
    return s;
  }
  const CandidateReport& b = candidates[best];
  s += fmt::format("winner   {}: {:.4f} ms, {:.1f} useful TFLOP/s", b.config.to_string(), b.median_ms, b.tflops);
  if (heuristic >= 0 && b.speedup > 0)
    s += fmt::format(", {:.3f}x the heuristic's {}", b.speedup, candidates[heuristic].config.to_string());
  s += "\n";
  if (!note.empty()) s += fmt::format("note     {}\n", note);
  s += saved ? fmt::format("saved    {}\n", db_file) : "not saved (--no-save)\n";
  return s;
}

const char* to_string(LinearOp op) { return op == LinearOp::kScan ? "scan" : "performer"; }

std::string LinearProblem::to_string() const {
  if (op == LinearOp::kScan)
    return fmt::format("scan B={} L={} channels={} state={} {}", batch, length, channels, state, spattn::to_string(dtype));
  return fmt::format("performer causal B={} N={} H={}/{} D={} m={} {}", batch, length, heads, kv_heads > 0 ? kv_heads : heads,
                     head_dim, features, spattn::to_string(dtype));
}

std::string LinearTuneReport::to_json() const {
  json cands = json::array();
  for (const LinearCandidateReport& c : candidates) {
    json j = {{"config", c.config}, {"heuristic", c.heuristic}, {"best", c.best}, {"status", c.status},
              {"smem_bytes", c.smem_bytes}};
    if (!c.detail.empty()) j["detail"] = c.detail;
    if (c.registers >= 0) {
      j["registers"] = c.registers;
      j["local_bytes"] = c.local_bytes;
      j["cache_hit"] = c.cache_hit;
      j["compile_ms"] = c.compile_ms;
    }
    if (c.check_worst >= 0) j["check_worst"] = c.check_worst;
    if (c.status == "ok") {
      j["median_ms"] = c.median_ms;
      j["p20_ms"] = c.p20_ms;
      j["p80_ms"] = c.p80_ms;
      j["runs"] = c.runs;
      if (c.speedup > 0) j["speedup"] = c.speedup;
    }
    cands.push_back(j);
  }
  json j = {{"op", to_string(op)},         {"device", device},     {"arch", arch},       {"problem", problem},
            {"check_problem", check_problem}, {"bucket", bucket},  {"timing", timing},   {"isolated", isolated},
            {"heuristic_source", heuristic_source}, {"candidates", cands}, {"saved", saved}, {"seconds", seconds}};
  if (saved) j["db_file"] = db_file;
  if (best >= 0) j["best"] = candidates[best].config;
  if (heuristic >= 0) j["heuristic"] = candidates[heuristic].config;
  if (speedup > 0) j["speedup"] = speedup;
  if (!note.empty()) j["note"] = note;
  return j.dump(2);
}

std::string LinearTuneReport::to_table() const {
  std::string s;
  s += fmt::format("GPU      {}\n", device);
  s += fmt::format("problem  {}\n", problem);
  s += fmt::format("check    {} against the fp64 reference, fresh random inputs\n", check_problem);
  if (!timing.empty()) s += fmt::format("timing   {}\n", timing);
  s += fmt::format("bucket   {}\n", bucket);
  s += fmt::format("baseline {}\n\n", heuristic_source);
  const std::vector<size_t> order = table_order(candidates);
  s += fmt::format("  {:<16} {:<13} {:>10} {:>17} {:>9} {:>9} {:>5} {:>6}  {}\n", "candidate", "status", "median ms",
                   "p20..p80 ms", "err/tol", "vs heur.", "regs", "local", "notes");
  for (size_t k : order) {
    const LinearCandidateReport& c = candidates[k];
    const std::string name = c.config + (c.heuristic ? " (h)" : "");
    const std::string regs = c.registers >= 0 ? std::to_string(c.registers) : "-";
    const std::string local = c.local_bytes >= 0 ? std::to_string(c.local_bytes) : "-";
    const std::string err = c.check_worst >= 0 ? fmt::format("{:.2f}", c.check_worst) : "-";
    if (c.status == "ok") {
      s += fmt::format("{} {:<16} {:<13} {:>10.4f} {:>8.4f}..{:<8.4f} {:>9} {:>9} {:>5} {:>6}\n", c.best ? "*" : " ", name,
                       c.status, c.median_ms, c.p20_ms, c.p80_ms, err,
                       c.speedup > 0 ? fmt::format("{:.3f}x", c.speedup) : "-", regs, local);
    } else {
      s += fmt::format("  {:<16} {:<13} {:>10} {:>17} {:>9} {:>9} {:>5} {:>6}  {}\n", name, c.status, "-", "-", err, "-",
                       regs, local, clip(c.detail, 100));
    }
  }
  const size_t ok = static_cast<size_t>(
      std::count_if(candidates.begin(), candidates.end(), [](const LinearCandidateReport& c) { return c.status == "ok"; }));
  s += fmt::format("\n{} candidates, {} timed, in {:.1f} s{}\n", candidates.size(), ok, seconds,
                   isolated || ok == 0 ? "" : " (in-process: CUDA was already loaded)");
  if (best < 0) return s + "no candidate passed the correctness check; nothing was saved\n";
  const LinearCandidateReport& b = candidates[best];
  s += fmt::format("winner   {}: {:.4f} ms", b.config, b.median_ms);
  if (heuristic >= 0 && b.speedup > 0)
    s += fmt::format(", {:.3f}x the heuristic's {} ({:.4f} ms)", b.speedup, candidates[heuristic].config,
                     candidates[heuristic].median_ms);
  s += "\n";
  if (!note.empty()) s += fmt::format("note     {}\n", note);
  s += saved ? fmt::format("saved    {}\n", db_file) : "not saved (--no-save)\n";
  return s;
}

std::string PrewarmReport::to_json() const {
  json ks = json::array();
  for (const PrewarmKernel& k : kernels) {
    json j = {{"arch", k.arch},     {"program", k.program}, {"config", k.config}, {"source", k.source},
              {"key", k.key},       {"status", k.status},   {"ms", k.ms},         {"uses", k.uses},
              {"loaded", k.loaded}};
    if (!k.error.empty()) j["error"] = k.error;
    ks.push_back(j);
  }
  return json{{"kernels", ks},      {"compiled", compiled}, {"cached", cached}, {"failed", failed},
              {"loaded", loaded},   {"threads", threads},   {"seconds", seconds}}
      .dump(2);
}

}  // namespace spattn
