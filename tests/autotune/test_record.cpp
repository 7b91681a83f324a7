// Recording the problems a service meets (SPATTN_RECORD) and prewarming from the record:
// lines round-trip and are checked strictly; several processes recording into one file
// lose and duplicate nothing; a record prewarms exactly the recorded configurations,
// forward and backward, each distinct kernel once, after which the same kernels are
// cache hits. The manifest's "passes" adds backward kernels.
#include <gtest/gtest.h>

#include <spattn/cache.hpp>

#include <nlohmann/json.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <set>
#include <sstream>

#include "api/select.hpp"
#include "autotune/prewarm.hpp"
#include "autotune/record.hpp"
#include "engine/jit.hpp"
#include "tests/support/test_support.hpp"

namespace spattn::autotune {
namespace {

namespace fs = std::filesystem;

Selection heuristic(const Pattern& pattern, const engine::Problem& problem, const runtime::DeviceInfo& device) {
  const api::Choice c = api::heuristic(pattern, problem, device);
  return {c.config, c.source};
}

RecordedProblem problem_of(const char* pattern, int64_t seq, TunePass pass, const char* config,
                           const char* arch = "sm_80") {
  RecordedProblem r;
  r.pass = pass;
  r.arch = arch;
  r.pattern = Pattern::parse(pattern);
  r.problem.nq = r.problem.nk = seq;
  r.problem.heads = r.problem.kv_heads = 2;
  r.problem.head_dim = 64;
  r.config = KernelConfig::parse(config);
  return r;
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(Record, LinesRoundTripAndAreCheckedStrictly) {
  const RecordedProblem a = problem_of(R"({"type":"local_window","window":128})", 1024, TunePass::kForward, "64x64w4s2");
  RecordedProblem b = problem_of(R"({"type":"dense","causal":true})", 512, TunePass::kBackward, "64x64w4s2");
  b.deterministic = true;
  const std::string text = a.to_line() + "\n\n" + b.to_line() + "\n" + a.to_line() + "\n";
  EXPECT_TRUE(is_record(text));
  EXPECT_FALSE(is_record(R"({"archs":["sm_80"],"entries":[]})"));
  const std::vector<RecordedProblem> got = parse_record(text, "rec");
  ASSERT_EQ(got.size(), 2u) << "duplicates merge";
  EXPECT_EQ(got[0].to_line(), a.to_line());
  EXPECT_EQ(got[1].to_line(), b.to_line());
  EXPECT_EQ(got[1].pass, TunePass::kBackward);
  EXPECT_TRUE(got[1].deterministic);

  auto error_of = [](const std::string& t) {
    try {
      (void)parse_record(t, "rec");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  nlohmann::json j = nlohmann::json::parse(a.to_line());
  auto with = [&](const char* field, const nlohmann::json& v) {
    nlohmann::json c = j;
    c[field] = v;
    return a.to_line() + "\n" + c.dump() + "\n";
  };
  EXPECT_NE(error_of(with("seq", -3)).find("rec:2.seq"), std::string::npos) << error_of(with("seq", -3));
  EXPECT_NE(error_of(with("typo", 1)).find("rec:2.typo: unknown field"), std::string::npos);
  EXPECT_NE(error_of(with("pass", "sideways")).find("rec:2.pass"), std::string::npos);
  EXPECT_NE(error_of(with("arch", "sm_12")).find("sm_12"), std::string::npos);
  EXPECT_NE(error_of(with("config", "sm90:128x128s2")).find("rec:2"), std::string::npos) << "not an sm_80 config";
  EXPECT_NE(error_of(a.to_line() + "\n{not json\n").find("rec:2"), std::string::npos);
  EXPECT_NE(error_of("\n\n").find("no records"), std::string::npos);
}

// Documents (forward_varlen / forward_padded, their backward calls) record their own
// program: the line says so (and only then: records of whole problems keep their lines), a
// record of documents prewarms the documents program of its pass, and a manifest's
// documents entries add the backward documents program where the pattern has one.
TEST(Record, DocumentsRecordAndPrewarmTheirProgram) {
  test::TempDir dir("rec");
  test::ScopedEnv env("SPATTN_CACHE_DIR", dir.path().string());
  RecordedProblem a = problem_of(R"({"type":"dense","causal":true})", 2048, TunePass::kForward, "64x64w4s2");
  const RecordedProblem plain = a;
  a.documents = true;
  EXPECT_EQ(plain.to_line().find("documents"), std::string::npos);
  EXPECT_NE(a.to_line().find("\"documents\":true"), std::string::npos);
  const std::vector<RecordedProblem> got = parse_record(a.to_line() + "\n" + plain.to_line() + "\n", "rec");
  ASSERT_EQ(got.size(), 2u) << "documents and the whole problem are different problems";
  EXPECT_TRUE(got[0].documents);
  EXPECT_FALSE(got[1].documents);
  RecordedProblem back = problem_of(R"({"type":"dense","causal":true})", 2048, TunePass::kBackward, "64x128w8s1");
  back.documents = true;
  const std::vector<RecordedProblem> got_back = parse_record(back.to_line(), "rec");
  ASSERT_EQ(got_back.size(), 1u);
  EXPECT_TRUE(got_back[0].documents);
  EXPECT_EQ(got_back[0].pass, TunePass::kBackward);
  int backward_documents = 0;
  for (const PlannedKernel& k : plan_prewarm(Manifest::parse(back.to_line() + "\n"), {}, heuristic))
    backward_documents += k.rendered.program_name.rfind("spattn_bwd_", 0) == 0 &&
                          k.rendered.source.find("spattn_varlen_transpose") != std::string::npos;
  EXPECT_EQ(backward_documents, 1);
  const Manifest m = Manifest::parse(a.to_line() + "\n" + plain.to_line() + "\n");
  int documents = 0, whole = 0;
  for (const PlannedKernel& k : plan_prewarm(m, {}, heuristic)) {
    if (k.config.empty()) continue;
    const bool varlen = k.rendered.source.find("kVarlen = true") != std::string::npos;
    documents += varlen;
    whole += !varlen;
    if (varlen) EXPECT_NE(k.rendered.source.find("spattn_varlen_tables"), std::string::npos);
  }
  EXPECT_EQ(documents, 1);
  EXPECT_EQ(whole, 1);
  // A hand-written manifest's entries say "documents": true.
  const Manifest hand = Manifest::parse(
      R"({"archs":["sm_80"],"dtypes":["bf16"],"head_dims":[64],"passes":["forward","backward"],
          "entries":[{"pattern":{"type":"local_window","window":128},"seq":[1024],"heads":2,"batch":8,
                      "documents":true}]})");
  int varlen = 0, backward = 0;
  for (const PlannedKernel& k : plan_prewarm(hand, {}, heuristic)) {
    varlen += k.rendered.source.find("kVarlen = true") != std::string::npos;
    backward += k.rendered.program_name.rfind("spattn_bwd_", 0) == 0;
  }
  EXPECT_EQ(varlen, 2) << "the forward and backward documents programs";
  EXPECT_EQ(backward, 1);
  // A pattern whose document tables come from the host has no backward documents program.
  const Manifest host = Manifest::parse(
      R"({"archs":["sm_80"],"dtypes":["bf16"],"head_dims":[64],"passes":["forward","backward"],
          "entries":[{"pattern":{"type":"strided","stride":16,"mode":"relative"},"seq":[1024],"heads":2,
                      "documents":true}]})");
  int host_backward = 0, host_forward = 0;
  for (const PlannedKernel& k : plan_prewarm(host, {}, heuristic)) {
    host_backward += k.rendered.program_name.rfind("spattn_bwd_", 0) == 0;
    host_forward += k.rendered.source.find("kVarlen = true") != std::string::npos;
  }
  EXPECT_EQ(host_forward, 1);
  EXPECT_EQ(host_backward, 0);
  try {
    (void)Manifest::parse(
        R"({"archs":["sm_80"],"dtypes":["bf16"],"head_dims":[64],
            "entries":[{"pattern":{"type":"adaptive","block":64,"top_k":2},"seq":[1024],"documents":true}]})");
    ADD_FAILURE() << "adaptive documents accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("entries[0].documents"), std::string::npos) << e.what();
  }
}

TEST(Record, SeveralProcessesRecordIntoOneFileWithoutLossOrDuplicates) {
  test::TempDir dir("record");
  const std::string file = (dir.path() / "service.record").string();
  const char* patterns[] = {R"({"type":"local_window","window":128})", R"({"type":"dense","causal":true})",
                            R"({"type":"global_local","global":16,"window":64})"};
  constexpr int kProcesses = 6;
  std::vector<pid_t> children;
  for (int k = 0; k < kProcesses; ++k) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      // Each process meets every pattern at two lengths, several times, from two threads.
      for (int rep = 0; rep < 3; ++rep)
        for (const char* p : patterns)
          for (int64_t seq : {1024, 2048 + 64 * (k % 2)})
            record_problem(file, problem_of(p, seq, TunePass::kForward, "64x64w4s2"));
      _exit(0);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  const std::string text = read_all(file);
  size_t lines = 0;
  for (char c : text) lines += c == '\n';
  // Each process writes each of its distinct problems once: 3 patterns x 2 lengths.
  EXPECT_EQ(lines, static_cast<size_t>(kProcesses * 6));
  const std::vector<RecordedProblem> merged = parse_record(text, file);  // every line intact
  EXPECT_EQ(merged.size(), 9u) << "3 patterns x {1024, 2048, 2112}";
}

TEST(Record, AnUnwritableRecordFileNeverFailsTheCaller) {
  test::TempDir dir("record");
  const std::string file = (dir.path() / "no" / "such" / "dir" / "r.record").string();
  EXPECT_NO_THROW(record_problem(file, problem_of("dense", 256, TunePass::kForward, "64x64w4s2")));
  EXPECT_FALSE(fs::exists(file));
}

// The record form of a manifest: exactly the recorded configurations, forward and
// backward, once per distinct kernel; prewarming again finds them all; and the kernel the
// engine renders for a recorded problem is a cache hit.
TEST(Record, PrewarmFromARecordCompilesExactlyTheRecordedKernels) {
  test::TempDir dir("record-prewarm");
  test::ScopedEnv env("SPATTN_CACHE_DIR", (dir.path() / "cache").string());
  const RecordedProblem fwd = problem_of(R"({"type":"local_window","window":128})", 1024, TunePass::kForward,
                                         "64x64w4s1");
  // The same pattern at another length renders the same source: one kernel.
  const RecordedProblem fwd2 = problem_of(R"({"type":"local_window","window":128})", 2048, TunePass::kForward,
                                          "64x64w4s1");
  const RecordedProblem bwd = problem_of(R"({"type":"local_window","window":128})", 1024, TunePass::kBackward,
                                         "64x64w4s2");
  const std::string text = fwd.to_line() + "\n" + fwd2.to_line() + "\n" + bwd.to_line() + "\n";
  const Manifest m = Manifest::parse(text);
  EXPECT_EQ(m.archs, std::vector<std::string>{"sm_80"});
  ASSERT_EQ(m.recorded.size(), 3u);

  PrewarmOptions o;
  const std::vector<PlannedKernel> plan = plan_prewarm(m, o, heuristic);
  std::set<std::string> configs;
  size_t backward_programs = 0;
  for (const PlannedKernel& k : plan) {
    configs.insert(k.config);
    backward_programs += k.rendered.program_name.rfind("spattn_bwd_", 0) == 0;
    if (!k.config.empty()) EXPECT_EQ(k.source, "recorded");
  }
  EXPECT_EQ(plan.size(), 3u) << "support, one forward kernel for both lengths, one backward kernel";
  EXPECT_EQ(backward_programs, 1u);
  EXPECT_TRUE(configs.count(fwd.config.to_string()) && configs.count(bwd.config.to_string()));

  const PrewarmReport first = prewarm(m, o, heuristic);
  EXPECT_EQ(first.compiled, 3u);
  EXPECT_EQ(first.failed, 0u);
  const PrewarmReport again = prewarm(m, o, heuristic);
  EXPECT_EQ(again.cached, 3u);
  EXPECT_EQ(again.compiled, 0u);

  // What the engine renders for the recorded forward problem is already in the cache.
  const Layout layout = compile_layout(fwd.pattern, fwd.problem.shape(), fwd.config.layout_options());
  const CacheCounters before = KernelCache::global_counters();
  const CacheLookup found = engine::compile_cached(engine::render_kernel(layout, fwd.config, fwd.problem, "sm_80"), "sm_80");
  EXPECT_TRUE(found.hit);
  EXPECT_EQ(KernelCache::global_counters().compiles, before.compiles);
}

TEST(Record, ManifestPassesAddTheBackwardKernels) {
  const Manifest m = Manifest::parse(R"({"archs":["sm_80"],"dtypes":["bf16"],"head_dims":[64],
      "passes":["forward","backward"],
      "entries":[{"pattern":{"type":"local_window","window":128},"seq":1024,"heads":2}]})");
  EXPECT_EQ(m.passes.size(), 2u);
  const std::vector<PlannedKernel> plan = plan_prewarm(m, PrewarmOptions{}, heuristic);
  size_t fwd = 0, bwd = 0;
  for (const PlannedKernel& k : plan) {
    fwd += k.rendered.program_name.rfind("spattn_fwd_", 0) == 0;
    bwd += k.rendered.program_name.rfind("spattn_bwd_", 0) == 0;
  }
  EXPECT_EQ(fwd, 1u);
  EXPECT_EQ(bwd, 1u);
  try {
    (void)Manifest::parse(R"({"archs":["sm_80"],"dtypes":["bf16"],"head_dims":[64],"passes":["sideways"],
        "entries":[{"pattern":"dense","seq":1024}]})");
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("manifest.passes[0]"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace spattn::autotune
