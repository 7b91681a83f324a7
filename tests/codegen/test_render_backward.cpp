// The backward kernels render and compile under NVRTC for sm_80 and sm_90a (no GPU),
// for every pattern kind through its real layout, with at most a few bytes of spill; the
// sm90 family's SASS shows wgmma, TMA and stmatrix; backward configs are validated by
// field.
#include <gtest/gtest.h>

#include <spattn/config.hpp>
#include <spattn/error.hpp>
#include <spattn/layout.hpp>
#include <spattn/pattern.hpp>

#include <functional>
#include <regex>

#include "engine/forward.hpp"
#include "runtime/nvrtc.hpp"
#include "tests/codegen/nvrtc_compile.hpp"
#include "tests/support/test_support.hpp"

namespace spattn {
namespace {

runtime::CompiledProgram compile_for(const codegen::RenderedKernel& r, const std::string& arch) {
  return test::compile_rendered(r, arch);
}

codegen::RenderedKernel render(const char* json, int64_t n, int head_dim, DType dtype, const KernelConfig& c,
                               const std::string& arch, bool deterministic = false, bool documents = false) {
  const Pattern pattern = Pattern::parse(json);
  engine::Problem p;
  p.nq = p.nk = n;
  p.heads = p.kv_heads = 4;
  p.head_dim = head_dim;
  p.dtype = dtype;
  LayoutOptions options = c.layout_options();
  if (documents) options = engine::documents_layout_options(options);
  const Layout layout = compile_layout(pattern, p.shape(), options);
  codegen::KernelSpec spec = engine::kernel_spec_for(layout, c, p, arch, documents);
  spec.deterministic = deterministic;
  return codegen::render_backward(spec);
}

TEST(RenderBackward, EveryPatternKindCompilesForSm80AndSm90a) {
  const char* patterns[] = {
      R"({"type":"dense","causal":true})",
      R"({"type":"local_window","left":200,"right":37})",
      R"({"type":"strided","stride":16,"mode":"relative"})",
      R"({"type":"neighborhood","grid":[40,48],"window":[7,9],"dilation":[1,2]})",
      R"({"type":"longnet","segments":[256,512],"rates":[1,2]})",
      R"({"union":[{"type":"strided","stride":32,"mode":"relative"},{"type":"local_window","window":64}]})",
  };
  for (const char* json : patterns) {
    for (const char* arch : {"sm_80", "sm_90a"}) {
      // One query-tile buffer on sm_80, two (the heuristic's choice) on sm_90a.
      const KernelConfig c = KernelConfig::parse(std::string(arch) == "sm_80" ? "64x128w8s1" : "64x128w8s2");
      SCOPED_TRACE(std::string(json) + " " + arch + " " + c.to_string());
      const auto r = render(json, 1920, 128, DType::kBFloat16, c, arch);
      EXPECT_NE(r.source.find("spattn backward kernel"), std::string::npos);
      const auto out = compile_for(r, arch);
      // At the 255-register limit ptxas may spill a few words (as for the sm80 forward).
      EXPECT_LE(out.local_bytes, 128) << out.log;
      EXPECT_FALSE(out.cubin.empty());
    }
  }
}

// The sm90 family's backward for every pattern kind (natural order: TMA; permuted
// layouts: gathers), its configs and modes, without spills (each thread keeps 255
// registers: no producer warpgroup), and its SASS: wgmma, TMA loads, the transposed
// dS stores, vector reductions for dQ, and no mma.sync.
TEST(RenderBackward, Sm90FamilyCompilesWithoutSpillsAndShowsWgmmaInSass) {
  const char* patterns[] = {
      R"({"type":"dense","causal":true})",
      R"({"type":"local_window","left":200,"right":37})",
      R"({"type":"neighborhood","grid":[40,48],"window":[7,9],"dilation":[1,2]})",
      R"({"type":"longnet","segments":[256,512],"rates":[1,2]})",
  };
  struct V {
    int d;
    DType dtype;
    const char* config;
    bool deterministic;
  };
  for (const char* json : patterns) {
    for (const V& v : {V{128, DType::kBFloat16, "sm90:64x128s2", false}, V{128, DType::kFloat16, "sm90:64x128s3", true},
                       V{64, DType::kBFloat16, "sm90:64x64s1", false}}) {
      SCOPED_TRACE(std::string(json) + " " + v.config);
      const auto r = render(json, 1920, v.d, v.dtype, KernelConfig::parse(v.config), "sm_90a", v.deterministic);
      EXPECT_NE(r.source.find("spattn/backward_sm90.cuh"), std::string::npos);
      EXPECT_EQ(r.threads, v.d == 128 && std::string(v.config) != "sm90:64x64s1" ? 256 : 128);
      const auto out = compile_for(r, "sm_90a");
      EXPECT_EQ(out.local_bytes, 0) << out.log;
      EXPECT_EQ(out.log.find("C751"), std::string::npos) << "wgmma serialized: " << out.log;
    }
  }
  const std::string tool = test::find_cuobjdump();
  if (tool.empty()) GTEST_SKIP() << "no cuobjdump: not in the CUDA toolkit, not fetched by scripts/setup.sh, not on PATH";
  test::TempDir dir("bwd_sass");
  const auto dense = compile_for(render(R"({"type":"dense"})", 4096, 128, DType::kBFloat16,
                                        KernelConfig::parse("sm90:64x128s2"), "sm_90a"),
                                 "sm_90a");
  const std::string sass = test::sass_of(tool, dense.cubin, dir.path());
  ASSERT_NE(sass.find("code for sm_90a"), std::string::npos) << sass.substr(0, 2000);
  EXPECT_NE(sass.find("HGMMA.64x64x16.F32.BF16"), std::string::npos) << "no wgmma for S, dP, dQ";
  EXPECT_NE(sass.find("HGMMA.64x128x16.F32.BF16"), std::string::npos) << "no wgmma for dV, dK";
  EXPECT_NE(sass.find("UTMALDG"), std::string::npos) << "no TMA load";
  EXPECT_NE(sass.find("STSM"), std::string::npos) << "no stmatrix for dS";
  EXPECT_NE(sass.find("REDG.E.ADD.F32x2"), std::string::npos) << "no vector reductions for dQ";
  EXPECT_EQ(sass.find(" HMMA"), std::string::npos) << "the sm90 backward still uses mma.sync";
}

// Documents: the backward program holds the key-tile kernel with the document
// indirection and the three table builders (documents, forward rows at the backward
// tiles, their transposition), for both families and both modes; the builders do not
// spill, and the kernels stay within the budgets of the whole-problem kernels above.
TEST(RenderBackward, DocumentProgramsHoldTheirTableBuilders) {
  struct V {
    const char* json;
    const char* arch;
    const char* config;
    bool deterministic;
  };
  for (const V& v : {V{R"({"type":"dense","causal":true})", "sm_80", "64x128w8s1", false},
                     V{R"({"type":"local_window","window":256,"causal":true})", "sm_90a", "sm90:64x128s2", false},
                     V{R"({"type":"global_local","global":64,"window":128})", "sm_90a", "sm90:64x128s2", true},
                     V{R"({"type":"dense"})", "sm_80", "64x64w4s2", true}}) {
    SCOPED_TRACE(std::string(v.json) + " " + v.config);
    const auto r = render(v.json, 2048, 128, DType::kBFloat16, KernelConfig::parse(v.config), v.arch, v.deterministic,
                          true);
    EXPECT_NE(r.source.find("kVarlen = true"), std::string::npos);
    const auto out = compile_for(r, v.arch);
    std::vector<std::string> entries = {"spattn_varlen_docs", "spattn_varlen_tables", "spattn_varlen_transpose",
                                        "spattn_bwd"};
    if (v.deterministic) entries.push_back("spattn_bwd_dq");
    for (const std::string& entry : entries) {
      const size_t at = out.log.find("entry function '" + entry + "'");
      ASSERT_NE(at, std::string::npos) << entry << "\n" << out.log;
      std::smatch m;
      const std::string rest = out.log.substr(at, 400);
      ASSERT_TRUE(std::regex_search(rest, m, std::regex(R"((\d+) bytes spill stores)"))) << rest;
      const bool sm90_kernel = std::string(v.arch) == "sm_90a" && entry == "spattn_bwd";
      EXPECT_LE(std::stoi(m[1]), entry.rfind("spattn_varlen", 0) == 0 || sm90_kernel ? 0 : 128) << entry << "\n" << rest;
    }
  }
  // Whole problems compile without the indirection.
  const auto plain = render(R"({"type":"dense","causal":true})", 2048, 128, DType::kBFloat16,
                            KernelConfig::parse("64x128w8s1"), "sm_80");
  EXPECT_NE(plain.source.find("kVarlen = false"), std::string::npos);
  EXPECT_EQ(plain.source.find("spattn_varlen"), std::string::npos);
  // Patterns without per-row key ranges have no documents backward program.
  EXPECT_THROW(render(R"({"type":"strided","stride":16,"mode":"relative"})", 2048, 128, DType::kBFloat16,
                      KernelConfig::parse("64x128w8s1"), "sm_80", false, true),
               Error);
}

TEST(RenderBackward, HeadDimsDtypesAndTilesCompile) {
  struct V {
    int d;
    DType dtype;
    const char* config;
  };
  for (const V& v : {V{64, DType::kFloat16, "64x128w8s1"}, V{32, DType::kBFloat16, "64x64w4s1"},
                     V{96, DType::kBFloat16, "64x64w4s1"}, V{128, DType::kFloat16, "32x64w4s1"}}) {
    SCOPED_TRACE(v.config);
    const auto out = compile_for(render(R"({"type":"local_window","window":300})", 1111, v.d, v.dtype,
                                        KernelConfig::parse(v.config), "sm_80"),
                                 "sm_80");
    EXPECT_LE(out.local_bytes, 32) << out.log;
  }
}

// Deterministic mode: the same program holds the key-tile kernel without atomics and the
// dQ kernel over the forward rows; both compile, and the default program has no dQ kernel.
TEST(RenderBackward, DeterministicModeAddsTheDqKernel) {
  const char* json = R"({"type":"longnet","segments":[256,512],"rates":[1,2],"causal":true})";
  for (const char* arch : {"sm_80", "sm_90a"}) {
    SCOPED_TRACE(arch);
    const KernelConfig c = KernelConfig::parse("64x128w8s2");
    const auto det = render(json, 1500, 128, DType::kBFloat16, c, arch, true);
    EXPECT_NE(det.source.find("spattn_bwd_dq"), std::string::npos);
    EXPECT_NE(det.source.find("kDeterministic = true"), std::string::npos);
    EXPECT_EQ(det.dq_threads, 128);
    EXPECT_EQ(det.dq_smem_bytes, backward_dq_smem_bytes(c, 128));
    const auto out = compile_for(det, arch);
    EXPECT_LE(out.local_bytes, 128) << out.log;
    EXPECT_FALSE(out.cubin.empty());
    const auto plain = render(json, 1500, 128, DType::kBFloat16, c, arch, false);
    EXPECT_EQ(plain.source.find("spattn_bwd_dq"), std::string::npos);
    EXPECT_EQ(plain.dq_threads, 0);
    EXPECT_NE(plain.program_name, det.program_name) << "the mode is part of the source, hence of the cache key";
  }
}

TEST(RenderBackward, ConfigsAreValidatedByField) {
  auto expect_error = [](const std::function<void()>& f, const char* needle) {
    try {
      f();
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  EXPECT_NO_THROW(check_backward_config(KernelConfig::parse("64x128w8s1"), 128, DType::kBFloat16, "sm_80", 163 * 1024));
  expect_error([] { check_backward_config(KernelConfig::parse("64x64w8s1"), 128, DType::kBFloat16, "sm_80", 0); },
               "tile_n must be 16 * warps = 128");
  expect_error([] { check_backward_config(KernelConfig::parse("128x128w8s1"), 128, DType::kBFloat16, "sm_80", 0); },
               "accumulator registers");
  expect_error([] { check_backward_config(KernelConfig::parse("64x128w8s1"), 256, DType::kBFloat16, "sm_80", 0); },
               "head dims 32, 64, 96, 128");
  EXPECT_NO_THROW(check_backward_config(KernelConfig::parse("64x128w8s2"), 128, DType::kBFloat16, "sm_80", 163 * 1024));
  expect_error([] { check_backward_config(KernelConfig::parse("64x128w8s3"), 128, DType::kBFloat16, "sm_80", 0); },
               "must be 1 or 2");
  // The sm90 family's backward: 64 queries per step, 64 or 128 keys, 1-3 stages, head
  // dims 64 and 128 (dQ columns per warpgroup in whole 64-column chunks), sm_90a only.
  EXPECT_NO_THROW(check_backward_config(KernelConfig::parse("sm90:64x128s2"), 128, DType::kBFloat16, "sm_90a", 227 * 1024));
  EXPECT_NO_THROW(check_backward_config(KernelConfig::parse("sm90:64x64s3"), 64, DType::kFloat16, "sm_90a", 227 * 1024));
  expect_error([] { check_backward_config(KernelConfig::parse("sm90:128x128s2"), 128, DType::kBFloat16, "sm_90a", 0); },
               "tile_m (queries per step) must be 64");
  expect_error([] { check_backward_config(KernelConfig::parse("sm90:64x192s2"), 128, DType::kBFloat16, "sm_90a", 0); },
               "must be 64 or 128");
  expect_error([] { check_backward_config(KernelConfig::parse("sm90:64x128s4"), 128, DType::kBFloat16, "sm_90a", 0); },
               "must be 1 to 3");
  expect_error([] { check_backward_config(KernelConfig::parse("sm90:64x128s2"), 64, DType::kBFloat16, "sm_90a", 0); },
               "multiple of 64; use tile_n 64");
  expect_error([] { check_backward_config(KernelConfig::parse("sm90:64x64s2"), 96, DType::kBFloat16, "sm_90a", 0); },
               "the sm90 family supports head dims");
  expect_error([] { check_backward_config(KernelConfig::parse("sm90:64x128s2"), 128, DType::kBFloat16, "sm_80", 0); },
               "compiles for sm_90a");
  expect_error([] { check_backward_config(KernelConfig::parse("sm90:64x128s3"), 128, DType::kBFloat16, "sm_90a", 163 * 1024); },
               "shared memory");
  expect_error([] { check_backward_config(KernelConfig::parse("64x128w8s1"), 128, DType::kBFloat16, "sm_86", 99 * 1024); },
               "shared memory");
}

}  // namespace
}  // namespace spattn
