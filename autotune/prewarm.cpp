#include "autotune/prewarm.hpp"

#include <spattn/varlen.hpp>

#include "common/json.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include <spattn/adaptive.hpp>

#include <algorithm>
#include <chrono>
#include <map>
#include <mutex>
#include <regex>
#include <set>

#include "autotune/pool.hpp"
#include "autotune/search_space.hpp"
#include "autotune/tuning_db.hpp"
#include "common/check.hpp"
#include "common/log.hpp"
#include "engine/forward.hpp"
#include "engine/jit.hpp"
#include "runtime/driver.hpp"
#include "runtime/nvrtc.hpp"

namespace spattn::autotune {

using nlohmann::json;

// --- manifest --------------------------------------------------------------------------

namespace {

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  SPATTN_FAIL(ErrorCode::kInvalidArgument, "{}: {}", path, what);
}

const json& require(const json& obj, const char* name, const std::string& path) {
  if (!obj.contains(name)) bad(path + "." + name, "is required");
  return obj.at(name);
}

void only_fields(const json& obj, const std::string& path, std::initializer_list<const char*> allowed) {
  for (const auto& [key, value] : obj.items()) {
    (void)value;
    if (std::none_of(allowed.begin(), allowed.end(), [&](const char* a) { return key == a; })) {
      std::string list;
      for (const char* a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
      bad(path + "." + key, "unknown field (allowed: " + list + ")");
    }
  }
}

const json& nonempty_array(const json& v, const std::string& path) {
  if (!v.is_array() || v.empty()) bad(path, "must be a non-empty array (got " + v.dump() + ")");
  return v;
}

int64_t positive_int(const json& v, const std::string& path, int64_t max = int64_t{1} << 30) {
  if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() >= max)
    bad(path, fmt::format("must be a positive integer below {} (got {})", max, v.dump()));
  return v.get<int64_t>();
}

std::vector<int64_t> int_list(const json& v, const std::string& path) {
  std::vector<int64_t> out;
  if (v.is_number()) {
    out.push_back(positive_int(v, path));
    return out;
  }
  nonempty_array(v, path);
  for (size_t i = 0; i < v.size(); ++i) out.push_back(positive_int(v[i], fmt::format("{}[{}]", path, i)));
  return out;
}

}  // namespace

Manifest Manifest::parse(std::string_view text) {
  if (is_record(text)) {
    Manifest m;
    m.passes.clear();
    m.recorded = parse_record(text, "record");
    auto add = [](auto& list, const auto& v) {
      if (std::find(list.begin(), list.end(), v) == list.end()) list.push_back(v);
    };
    for (const RecordedProblem& r : m.recorded) {
      add(m.archs, r.arch);
      add(m.dtypes, r.problem.dtype);
      add(m.head_dims, static_cast<int>(r.problem.head_dim));
      add(m.passes, r.pass);
    }
    return m;
  }
  const std::string root = "manifest";
  // Strict: duplicate keys, overflowing numbers and deep nesting are refused by path.
  const json j = detail::parse_json_strict(text, root);
  if (!j.is_object()) bad(root, "must be a JSON object with archs, dtypes, head_dims and entries");
  only_fields(j, root, {"archs", "dtypes", "head_dims", "entries", "passes"});

  Manifest m;
  const json& archs = nonempty_array(require(j, "archs", root), root + ".archs");
  for (size_t i = 0; i < archs.size(); ++i) {
    const std::string path = fmt::format("{}.archs[{}]", root, i);
    if (!archs[i].is_string()) bad(path, "must be a string such as \"sm_90a\" (got " + archs[i].dump() + ")");
    const std::string arch = archs[i].get<std::string>();
    try {
      runtime::check_arch(arch);
      arch_family(arch);
    } catch (const Error& e) {
      SPATTN_FAIL(e.code(), "{}: {}", path, e.what());
    }
    if (std::find(m.archs.begin(), m.archs.end(), arch) == m.archs.end()) m.archs.push_back(arch);
  }
  const json& dtypes = nonempty_array(require(j, "dtypes", root), root + ".dtypes");
  for (size_t i = 0; i < dtypes.size(); ++i) {
    const std::string path = fmt::format("{}.dtypes[{}]", root, i);
    DType d = DType::kFloat32;
    try {
      if (dtypes[i].is_string()) d = dtype_from_string(dtypes[i].get<std::string>());
    } catch (const Error&) {
    }
    if (d != DType::kBFloat16 && d != DType::kFloat16) bad(path, "must be \"bf16\" or \"fp16\" (got " + dtypes[i].dump() + ")");
    if (std::find(m.dtypes.begin(), m.dtypes.end(), d) == m.dtypes.end()) m.dtypes.push_back(d);
  }
  const json& dims = nonempty_array(require(j, "head_dims", root), root + ".head_dims");
  for (size_t i = 0; i < dims.size(); ++i) {
    const std::string path = fmt::format("{}.head_dims[{}]", root, i);
    const int64_t d = positive_int(dims[i], path, 1 << 16);
    if (!head_dim_supported(static_cast<int>(d)))
      bad(path, fmt::format("head dim {} is not supported by any kernel family; supported head dims: {}", d,
                            supported_head_dims()));
    if (std::find(m.head_dims.begin(), m.head_dims.end(), d) == m.head_dims.end()) m.head_dims.push_back(static_cast<int>(d));
  }

  if (j.contains("passes")) {
    m.passes.clear();
    const json& passes = nonempty_array(j["passes"], root + ".passes");
    for (size_t i = 0; i < passes.size(); ++i) {
      const std::string path = fmt::format("{}.passes[{}]", root, i);
      const std::string v = passes[i].is_string() ? passes[i].get<std::string>() : "";
      if (v != "forward" && v != "backward")
        bad(path, "must be \"forward\" or \"backward\" (got " + passes[i].dump() + ")");
      const TunePass pass = v == "backward" ? TunePass::kBackward : TunePass::kForward;
      if (std::find(m.passes.begin(), m.passes.end(), pass) == m.passes.end()) m.passes.push_back(pass);
    }
  }
  const json& entries = nonempty_array(require(j, "entries", root), root + ".entries");
  for (size_t e = 0; e < entries.size(); ++e) {
    const std::string path = fmt::format("{}.entries[{}]", root, e);
    const json& ej = entries[e];
    if (!ej.is_object()) bad(path, "must be an object with pattern, seq, heads, kv_heads");
    only_fields(ej, path, {"pattern", "seq", "kv_seq", "heads", "kv_heads", "batch", "documents"});
    ManifestEntry entry;
    const json& pj = require(ej, "pattern", path);
    if (pj.is_string()) entry.pattern = Pattern::parse(pj.get<std::string>(), path + ".pattern");
    else if (pj.is_object()) entry.pattern = Pattern::parse(pj.dump(), path + ".pattern");
    else bad(path + ".pattern", "must be a pattern object or a preset name (got " + pj.dump() + ")");
    entry.seq = int_list(require(ej, "seq", path), path + ".seq");
    if (ej.contains("kv_seq")) {
      entry.kv_seq = int_list(ej["kv_seq"], path + ".kv_seq");
      if (entry.kv_seq.size() != entry.seq.size())
        bad(path + ".kv_seq", fmt::format("must have one value per seq value ({} values, got {})", entry.seq.size(),
                                          entry.kv_seq.size()));
    } else {
      entry.kv_seq = entry.seq;
    }
    if (ej.contains("heads")) entry.heads = positive_int(ej["heads"], path + ".heads", 1 << 16);
    entry.kv_heads = ej.contains("kv_heads") ? positive_int(ej["kv_heads"], path + ".kv_heads", 1 << 16) : entry.heads;
    if (entry.heads % entry.kv_heads != 0)
      bad(path + ".kv_heads", fmt::format("must divide heads ({}) (got {})", entry.heads, entry.kv_heads));
    if (ej.contains("batch")) entry.batch = positive_int(ej["batch"], path + ".batch", 65536);
    if (ej.contains("documents")) {
      if (!ej["documents"].is_boolean()) bad(path + ".documents", "must be true or false (got " + ej["documents"].dump() + ")");
      entry.documents = ej["documents"].get<bool>();
      if (std::string why; entry.documents && !documents_supported(entry.pattern, entry.heads, &why))
        bad(path + ".documents", why);
    }
    for (size_t s = 0; s < entry.seq.size(); ++s) {
      try {
        entry.pattern.validate(Shape{entry.seq[s], entry.kv_seq[s], entry.heads});
      } catch (const Error& err) {
        SPATTN_FAIL(ErrorCode::kInvalidArgument, "{}.seq[{}]: {}", path, s, err.what());
      }
    }
    m.entries.push_back(std::move(entry));
  }
  return m;
}

// --- planning ----------------------------------------------------------------------------

namespace {

// One problem of the manifest on one arch, and the configurations it needs.
struct Need {
  engine::Problem problem;
  const Pattern* pattern = nullptr;
  TunePass pass = TunePass::kForward;
  bool deterministic = false;
  bool documents = false;
  std::optional<Selection> fixed;  // a recorded problem: the configuration it ran with
  std::string arch;
  std::string label;
  std::vector<Selection> selections;
  std::vector<codegen::RenderedKernel> rendered;  // one per selection
  std::string error;
};

std::string need_label(size_t e, const ManifestEntry& entry, size_t s, DType dtype, int head_dim,
                       const std::string& arch) {
  const std::string seq = entry.kv_seq[s] == entry.seq[s] ? fmt::format("seq {}", entry.seq[s])
                                                          : fmt::format("seq {}/{}", entry.seq[s], entry.kv_seq[s]);
  return fmt::format("entries[{}] {} {} hd{} {}", e, seq, to_string(dtype), head_dim, arch);
}

// Tuning-database configurations written on GPUs of `arch` for the problem's bucket.
std::vector<Selection> database_selections(const std::vector<TuningDb>& dbs, const Pattern& pattern,
                                           const engine::Problem& problem, const std::string& arch, TunePass pass) {
  std::vector<Selection> out;
  std::optional<double> density;
  const TargetLimits limits = arch_limits(arch);
  for (const TuningDb& db : dbs) {
    if (!db.fingerprint || db.fingerprint->arch() != arch) continue;
    if (!density) density = pattern_density(pattern, problem);
    std::string key;
    const TunedEntry* e = db.find_nearest(bucket_of(pattern, problem, *density, pass), &key);
    if (!e) continue;
    try {
      check_config(pass, e->config, static_cast<int>(problem.head_dim), problem.dtype, arch, limits.smem_per_block);
    } catch (const Error&) {
      continue;
    }
    out.push_back({e->config, fmt::format("tuning database ({}, bucket {})", db.file.string(), key)});
  }
  return out;
}

std::vector<std::string> entry_points(const codegen::RenderedKernel& r) {
  // The extern "C" kernels of a program (support kernels: merge, fill, reference...).
  std::vector<std::string> out;
  const std::regex entry(R"(extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\()");
  auto scan = [&](const std::string& text) {
    for (auto it = std::sregex_iterator(text.begin(), text.end(), entry); it != std::sregex_iterator(); ++it)
      if (std::find(out.begin(), out.end(), (*it)[1].str()) == out.end()) out.push_back((*it)[1].str());
  };
  scan(r.source);
  for (const auto& [name, text] : r.headers) scan(text);
  return out;
}

}  // namespace

std::vector<PlannedKernel> plan_prewarm(const Manifest& manifest, const PrewarmOptions& options,
                                        const HeuristicFn& heuristic) {
  std::vector<std::string> archs = manifest.archs;
  if (!options.archs.empty()) {
    for (const std::string& a : options.archs)
      if (std::find(archs.begin(), archs.end(), a) == archs.end())
        SPATTN_FAIL(ErrorCode::kInvalidArgument, "arch {} is not in the manifest's archs ({})", a,
                    fmt::format("{}", fmt::join(archs, ", ")));
    archs = options.archs;
  }

  // This host's GPU, if any: its arch gets exactly what Attention would select.
  std::optional<runtime::DeviceInfo> local;
  if (runtime::has_gpu()) local = runtime::device_info(options.device);
  std::vector<TuningDb> dbs;
  try {
    dbs = TuningDb::load_all(TuningDb::default_dir());
  } catch (const Error& e) {
    log::debug("prewarm: no tuning databases: {}", e.what());
  }

  std::vector<Need> needs;
  for (size_t e = 0; e < manifest.entries.size(); ++e) {
    const ManifestEntry& entry = manifest.entries[e];
    for (size_t s = 0; s < entry.seq.size(); ++s)
      for (DType dtype : manifest.dtypes)
        for (int head_dim : manifest.head_dims)
          for (const std::string& arch : archs)
            for (TunePass pass : manifest.passes) {
              Need n;
              n.pattern = &entry.pattern;
              n.pass = pass;
              n.documents = entry.documents;
              n.arch = arch;
              n.problem.batch = entry.batch;
              n.problem.nq = entry.seq[s];
              n.problem.nk = entry.kv_seq[s];
              n.problem.heads = entry.heads;
              n.problem.kv_heads = entry.kv_heads;
              n.problem.head_dim = head_dim;
              n.problem.dtype = dtype;
              n.label = need_label(e, entry, s, dtype, head_dim, arch) +
                        (pass == TunePass::kBackward ? " backward" : "") + (entry.documents ? " documents" : "");
              needs.push_back(std::move(n));
            }
  }
  for (size_t k = 0; k < manifest.recorded.size(); ++k) {
    const RecordedProblem& r = manifest.recorded[k];
    if (std::find(archs.begin(), archs.end(), r.arch) == archs.end()) continue;
    Need n;
    n.pattern = &r.pattern;
    n.pass = r.pass;
    n.deterministic = r.deterministic;
    n.documents = r.documents;
    n.arch = r.arch;
    n.problem = r.problem;
    n.fixed = Selection{r.config, "recorded"};
    n.label = fmt::format("record[{}] {} {} hd{} {}{}{}", k, r.problem.to_string(), to_string(r.problem.dtype),
                          r.problem.head_dim, r.arch, r.pass == TunePass::kBackward ? " backward" : "",
                          r.documents ? " documents" : "");
    needs.push_back(std::move(n));
  }

  // Select and render in parallel (layouts of long sequences take a while).
  const int threads = options.threads > 0 ? options.threads : nvrtc_threads();
  parallel_for(needs.size(), threads, [&](size_t k) {
    Need& n = needs[k];
    const bool backward = n.pass == TunePass::kBackward;
    auto fallback = [&](const runtime::DeviceInfo& device) {
      return baseline_of(n.pass, heuristic, *n.pattern, n.problem, device);
    };
    try {
      if (n.fixed) {
        n.selections.push_back(*n.fixed);
      } else if (local && local->arch() == n.arch) {
        const DbLookup db = lookup(*n.pattern, n.problem, *local, n.pass);
        if (db.config) n.selections.push_back({*db.config, db.source});
        else n.selections.push_back(fallback(*local));
      } else {
        n.selections.push_back(fallback(typical_device(n.arch)));
        for (Selection& sel : database_selections(dbs, *n.pattern, n.problem, n.arch, n.pass))
          if (std::none_of(n.selections.begin(), n.selections.end(),
                           [&](const Selection& x) { return x.config == sel.config; }))
            n.selections.push_back(std::move(sel));
      }
      bool runs = true;
      for (const Selection& sel : n.selections) {
        const LayoutOptions options = n.documents ? engine::documents_layout_options(sel.config.layout_options())
                                                  : sel.config.layout_options();
        const Layout layout = engine::forward_layout(*n.pattern, n.problem.shape(), options);
        // The backward pass over documents runs for patterns whose document tables are
        // built on the GPU (engine::BackwardPlan); others have no kernel to prewarm.
        if (backward && n.documents && !engine::document_tables_on_gpu(layout.parts)) {
          runs = false;
          break;
        }
        codegen::KernelSpec spec = engine::kernel_spec_for(layout, sel.config, n.problem, n.arch, n.documents);
        spec.deterministic = n.deterministic;
        n.rendered.push_back(backward ? codegen::render_backward(spec) : codegen::render_forward(spec));
      }
      if (!runs) n.selections.clear(), n.rendered.clear();
    } catch (const Error& e) {
      n.error = e.what();
    }
  });

  std::vector<PlannedKernel> out;
  std::map<std::string, size_t> by_key;
  auto add = [&](const std::string& arch, const std::string& config, const std::string& source,
                 codegen::RenderedKernel rendered, const std::string& use) {
    const std::string key = engine::manifest_for(rendered, arch).key();
    auto [it, fresh] = by_key.emplace(key, out.size());
    if (fresh) out.push_back(PlannedKernel{arch, config, source, std::move(rendered), key, {}});
    if (!use.empty()) out[it->second].uses.push_back(use);
  };
  for (const std::string& arch : archs) add(arch, "", "support kernels", codegen::render_support_kernels(), "");
  // Adaptive patterns' selection kernels (and the backward pass's table builders), once
  // per arch that runs one.
  for (const Need& n : needs)
    if (n.error.empty() && !n.selections.empty() && is_adaptive(*n.pattern))
      add(n.arch, "", "adaptive selection kernels", codegen::render_adaptive_kernels(), n.label);
  for (Need& n : needs) {
    if (!n.error.empty())
      SPATTN_FAIL(ErrorCode::kInvalidArgument, "manifest {}: {}", n.label, n.error);
    for (size_t k = 0; k < n.selections.size(); ++k)
      add(n.arch, n.selections[k].config.to_string(), n.selections[k].source, std::move(n.rendered[k]), n.label);
  }
  return out;
}

PrewarmReport prewarm(const Manifest& manifest, const PrewarmOptions& options, const HeuristicFn& heuristic) {
  const auto t0 = std::chrono::steady_clock::now();
  if (options.load_all && !runtime::has_gpu())
    SPATTN_FAIL(ErrorCode::kNoGpu, "--load-all loads the kernels on this host's GPU, and there is none: {}",
                runtime::no_gpu_reason());
  std::vector<PlannedKernel> plan = plan_prewarm(manifest, options, heuristic);

  PrewarmReport report;
  report.threads = options.threads > 0 ? options.threads : nvrtc_threads();
  report.kernels.resize(plan.size());
  std::mutex mu;
  size_t done = 0;
  if (options.progress) options.progress(0, plan.size());
  parallel_for(plan.size(), report.threads, [&](size_t k) {
    const PlannedKernel& p = plan[k];
    PrewarmKernel& r = report.kernels[k];
    r.arch = p.arch;
    r.program = p.rendered.program_name;
    r.config = p.config;
    r.source = p.source;
    r.key = p.key;
    r.uses = p.uses;
    const auto t = std::chrono::steady_clock::now();
    try {
      const CacheLookup found = engine::compile_cached(p.rendered, p.arch);
      r.status = found.hit ? "cached" : "compiled";
    } catch (const Error& e) {
      r.status = "failed";
      r.error = e.what();
    }
    r.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
    std::lock_guard<std::mutex> lock(mu);
    ++done;
    if (options.progress) options.progress(done, plan.size());
  });

  if (options.load_all) {
    // Loading every module now means no module is loaded lazily later, e.g. while NCCL
    // kernels run (a lazy load then can deadlock against them).
    const std::string arch = runtime::device_info(options.device).arch();
    for (size_t k = 0; k < plan.size(); ++k) {
      PrewarmKernel& r = report.kernels[k];
      if (plan[k].arch != arch || r.status == "failed") continue;
      // Every entry point of the program (support kernels; the deterministic backward's dQ kernel).
      for (const std::string& name : entry_points(plan[k].rendered)) {
        const engine::JitKernel& jit = engine::load_kernel(plan[k].rendered, options.device, name);
        (void)jit.kernel.attribute(CU_FUNC_ATTRIBUTE_NUM_REGS);  // makes the driver resolve the function now
      }
      r.loaded = true;
    }
  }

  for (const PrewarmKernel& r : report.kernels) {
    if (r.status == "compiled") ++report.compiled;
    else if (r.status == "cached") ++report.cached;
    else ++report.failed;
    if (r.loaded) ++report.loaded;
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  log::debug("prewarm: {} kernels ({} compiled, {} cached, {} failed, {} loaded) on {} threads in {:.1f} s",
             plan.size(), report.compiled, report.cached, report.failed, report.loaded, report.threads, report.seconds);
  return report;
}

}  // namespace spattn::autotune
