// The sm90 (Hopper) kernel family on a host without a GPU: every pattern kind renders
// and compiles under NVRTC for sm_90a from its real layout, without spills or ignored
// register reallocation, and the compiled dense kernel's SASS shows the Hopper
// instructions (HGMMA, UTMALDG) where the sm80 kernel's shows mma.sync (HMMA).
#include <gtest/gtest.h>

#include <spattn/config.hpp>
#include <spattn/error.hpp>
#include <spattn/layout.hpp>
#include <spattn/pattern.hpp>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>

#include "engine/forward.hpp"
#include "engine/select.hpp"
#include "runtime/nvrtc.hpp"
#include "tests/codegen/nvrtc_compile.hpp"
#include "tests/support/test_support.hpp"

namespace spattn {
namespace {

runtime::CompiledProgram compile(const codegen::RenderedKernel& r, const std::string& arch) {
  return test::compile_rendered(r, arch);
}

engine::Problem problem_of(int64_t n, int64_t heads, int64_t head_dim, DType dtype = DType::kBFloat16) {
  engine::Problem p;
  p.nq = p.nk = n;
  p.heads = p.kv_heads = heads;
  p.head_dim = head_dim;
  p.dtype = dtype;
  return p;
}

codegen::RenderedKernel render(const char* json, const engine::Problem& p, const KernelConfig& c) {
  const Pattern pattern = Pattern::parse(json);
  const Layout layout = compile_layout(pattern, p.shape(), c.layout_options());
  return engine::render_kernel(layout, c, p, "sm_90a");
}

void expect_clean(const runtime::CompiledProgram& out) {
  // No spills; a small stack frame is the generated predicate's own (its lookup arrays).
  EXPECT_NE(out.log.find(" 0 bytes spill stores"), std::string::npos) << "spills:\n" << out.log;
  EXPECT_LE(out.local_bytes, 64) << out.log;
  EXPECT_EQ(out.log.find("C7508"), std::string::npos) << "setmaxnreg was ignored:\n" << out.log;
  EXPECT_EQ(out.log.find("serialized"), std::string::npos) << "ptxas serialised the wgmma instructions:\n" << out.log;
  EXPECT_FALSE(out.cubin.empty());
}

TEST(RenderSm90, EveryPatternKindCompilesForSm90aWithoutSpills) {
  const char* patterns[] = {
      R"({"type":"dense"})",
      R"({"type":"dense","causal":true})",
      R"({"type":"local_window","left":200,"right":37})",
      R"({"type":"global_local","global":64,"window":128})",
      R"({"type":"strided","stride":16,"mode":"relative"})",
      R"({"type":"strided","stride":24,"mode":"columns"})",
      R"({"type":"dilated_sparse","block":64,"rates":[1,2,4],"reach":1})",
      R"({"preset":"standard"})",
      R"({"type":"custom","block":128,"pairs":[[0,0],[1,0],[3,2]]})",
      R"({"type":"butterfly","block":64})",
      R"({"type":"longnet","segments":[256,512,1024],"rates":[1,2,4],"causal":true})",
      R"({"type":"neighborhood","grid":[40,48],"window":[7,9],"dilation":[1,2]})",
      R"({"union":[{"type":"strided","stride":32,"mode":"relative"},{"type":"local_window","window":64}]})",
      R"({"branches":[{"type":"local_window","window":128},{"type":"dense","causal":true}]})",
      R"({"heads":[{"first":0,"count":2,"pattern":{"type":"local_window","window":64}},{"first":2,"count":2,"pattern":{"type":"strided","stride":8,"mode":"relative"}}]})",
  };
  KernelConfig c = KernelConfig::parse("sm90:128x128s2");
  for (const char* json : patterns) {
    SCOPED_TRACE(json);
    const engine::Problem p = problem_of(1920, 4, 128);
    const auto r = render(json, p, c);
    EXPECT_NE(r.source.find("family sm90"), std::string::npos);
    EXPECT_NE(r.source.find("spattn/forward_sm90.cuh"), std::string::npos);
    expect_clean(compile(r, "sm_90a"));
  }
}

TEST(RenderSm90, HeadDimsDtypesAndTileShapesCompile) {
  struct V {
    int head_dim;
    DType dtype;
    const char* config;
  };
  const V variants[] = {
      {64, DType::kFloat16, "sm90:128x128s2"}, {64, DType::kBFloat16, "sm90:192x64s3"},
      {256, DType::kBFloat16, "sm90:128x64s2"}, {256, DType::kFloat16, "sm90:64x64s2"},
      {128, DType::kFloat16, "sm90:128x80s2"},  {128, DType::kBFloat16, "sm90:64x128s1"},
  };
  for (const V& v : variants) {
    SCOPED_TRACE(v.config);
    const auto r = render(R"({"type":"local_window","window":300,"causal":true})", problem_of(1111, 2, v.head_dim, v.dtype),
                          KernelConfig::parse(v.config));
    expect_clean(compile(r, "sm_90a"));
  }
}

TEST(RenderSm90, SassShowsWgmmaAndTma) {
  const std::string tool = test::find_cuobjdump();
  if (tool.empty()) GTEST_SKIP() << "no cuobjdump: not in the CUDA toolkit, not fetched by scripts/setup.sh, not on PATH";
  test::TempDir dir("sass");
  const engine::Problem p = problem_of(4096, 4, 128);
  const auto hopper = compile(render(R"({"type":"dense"})", p, KernelConfig::parse("sm90:128x128s2")), "sm_90a");
  const std::string sass = test::sass_of(tool, hopper.cubin, dir.path());
  ASSERT_NE(sass.find("code for sm_90a"), std::string::npos) << sass.substr(0, 2000);
  EXPECT_NE(sass.find("HGMMA.64x128x16.F32.BF16"), std::string::npos) << "no wgmma in the sm90 kernel";
  EXPECT_NE(sass.find("UTMALDG"), std::string::npos) << "no TMA load in the sm90 kernel";
  EXPECT_NE(sass.find("USETMAXREG"), std::string::npos) << "no register reallocation between warpgroups";
  EXPECT_EQ(sass.find(" HMMA"), std::string::npos) << "the sm90 kernel still uses mma.sync";
  const auto ampere = compile(render(R"({"type":"dense"})", p, KernelConfig::parse("128x64w4s1")), "sm_90a");
  const std::string sass80 = test::sass_of(tool, ampere.cubin, dir.path());
  EXPECT_NE(sass80.find("HMMA.16816.F32.BF16"), std::string::npos);
  EXPECT_EQ(sass80.find("HGMMA"), std::string::npos);
}

// ":turns": the consumer warpgroups take turns issuing their products through named
// barriers (bar.sync on its own turn, bar.arrive on the next one's); without it the
// kernel has no bar.arrive, and the option is refused where it cannot apply.
TEST(RenderSm90, TurnsAreNamedBarriersBetweenConsumers) {
  const KernelConfig turns = KernelConfig::parse("sm90:128x128s2:longest:turns");
  EXPECT_TRUE(turns.turns);
  EXPECT_EQ(turns.to_string(), "sm90:128x128s2:longest:turns");
  EXPECT_EQ(KernelConfig::parse(turns.to_string()), turns);
  EXPECT_FALSE(KernelConfig::parse("sm90:128x128s2:turns:noturns").turns);
  EXPECT_NO_THROW(turns.check(128, DType::kBFloat16, "sm_90a", 227 * 1024));
  EXPECT_NO_THROW(KernelConfig::parse("sm90:192x128s2:turns").validate(64));
  auto expect_error = [](const std::function<void()>& f, const char* needle) {
    try {
      f();
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error([] { KernelConfig::parse("sm90:64x128s2:turns").validate(128); }, "tile_m 64 has one");
  expect_error([] { KernelConfig::parse("128x64w4s1:turns").validate(128); }, "':turns' (consumer warpgroups taking turns) is an sm90 option");
  expect_error([] { check_backward_config(KernelConfig::parse("sm90:128x128s2:turns"), 128, DType::kBFloat16, "sm_90a", 0); },
               "the backward kernels do not take it");

  const engine::Problem p = problem_of(4096, 4, 128);
  const codegen::RenderedKernel with = render(R"({"type":"dense","causal":true})", p, turns);
  const codegen::RenderedKernel without =
      render(R"({"type":"dense","causal":true})", p, KernelConfig::parse("sm90:128x128s2:longest"));
  EXPECT_NE(with.source.find("kTurns = true"), std::string::npos);
  EXPECT_NE(without.source.find("kTurns = false"), std::string::npos);
  EXPECT_NE(with.program_name, without.program_name) << "the option must change the cached program";
  const auto a = compile(with, "sm_90a"), b = compile(without, "sm_90a");
  expect_clean(a);
  const std::string tool = test::find_cuobjdump();
  if (tool.empty()) GTEST_SKIP() << "no cuobjdump: not in the CUDA toolkit, not fetched by scripts/setup.sh, not on PATH";
  test::TempDir dir("sass-turns");
  const std::string sa = test::sass_of(tool, a.cubin, dir.path()), sb = test::sass_of(tool, b.cubin, dir.path());
  EXPECT_NE(sa.find("BAR.ARV"), std::string::npos) << "no named-barrier arrival in the kernel with turns";
  EXPECT_EQ(sb.find("BAR.ARV"), std::string::npos) << "a named-barrier arrival in the kernel without turns";
}

TEST(KernelFamilies, TableAnswersWhatEachFamilySupports) {
  EXPECT_STREQ(to_string(KernelFamily::kSm90), "sm90");
  EXPECT_EQ(kernel_family_from_string("sm80"), KernelFamily::kSm80);
  EXPECT_THROW(kernel_family_from_string("sm70"), Error);
  std::string why;
  EXPECT_TRUE(family_supports(KernelFamily::kSm90, 128, DType::kBFloat16, "sm_90a"));
  EXPECT_FALSE(family_supports(KernelFamily::kSm90, 128, DType::kBFloat16, "sm_80", &why));
  EXPECT_NE(why.find("compiles for sm_90a"), std::string::npos) << why;
  EXPECT_FALSE(family_supports(KernelFamily::kSm90, 96, DType::kBFloat16, "sm_90a", &why));
  EXPECT_NE(why.find("head dims 64, 128, 256"), std::string::npos) << why;
  EXPECT_TRUE(family_supports(KernelFamily::kSm80, 96, DType::kFloat16, "sm_80"));
  EXPECT_TRUE(head_dim_supported(32));
  EXPECT_FALSE(head_dim_supported(80));
  try {
    check_problem_supported(80, DType::kBFloat16);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("supported head dims: 32, 64, 96, 128, 256"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("sm90 on sm_90a: head dims 64, 128, 256"), std::string::npos) << e.what();
  }
}

TEST(KernelFamilies, Sm90ConfigsRoundTripAndValidateByField) {
  const KernelConfig c = KernelConfig::parse("sm90:128x128s2:longest");
  EXPECT_EQ(c.family, KernelFamily::kSm90);
  EXPECT_EQ(c.warps, 12);
  EXPECT_EQ(c.threads(), 384);
  EXPECT_EQ(c.to_string(), "sm90:128x128s2:longest");
  EXPECT_EQ(KernelConfig::parse(c.to_string()), c);
  EXPECT_EQ(KernelConfig::parse("sm80:128x64w4s1"), KernelConfig::parse("128x64w4s1"));
  EXPECT_NO_THROW(c.check(128, DType::kBFloat16, "sm_90a", 227 * 1024));
  auto expect_error = [](const std::function<void()>& f, const char* needle) {
    try {
      f();
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error([&] { c.check(128, DType::kBFloat16, "sm_80", 0); }, "compiles for sm_90a");
  expect_error([&] { c.check(96, DType::kBFloat16, "sm_90a", 0); }, "head dims 64, 128, 256");
  expect_error([&] { KernelConfig::parse("sm90:96x128s2").validate(128); }, "tile_m must be 64, 128 or 192");
  expect_error([&] { KernelConfig::parse("sm90:128x120s2").validate(128); }, "multiple of 16");
  expect_error([&] { KernelConfig::parse("sm90:128x128s5").validate(128); }, "stages must be 1 to 4");
  expect_error([&] { KernelConfig::parse("sm90:128x128s4").validate(128); }, "shared memory");
  expect_error([&] { KernelConfig::parse("sm90:128x256s1").validate(128); }, "registers");
  expect_error([&] { KernelConfig::parse("sm90:128x128w4s2").validate(128); }, "warps is derived");
  expect_error([&] { KernelConfig::parse("sm90:128x128s2:hilbert:longest"); }, "more than one schedule");
  expect_error([&] { KernelConfig::parse("99999999999999999999x64w4s1"); }, "is not of the form");
  expect_error([&] { KernelConfig::parse("sm91:128x128s2"); }, "is not of the form");
}

TEST(KernelFamilies, HeuristicPicksSm90OnHopperWhereItCanAndSaysWhy) {
  runtime::DeviceInfo h200;
  h200.name = "H200";
  h200.cc_major = 9;
  h200.sm_count = 132;
  h200.smem_per_block_optin = 227 * 1024;
  const Pattern dense = Pattern::parse(R"({"type":"dense"})");
  const auto hopper = engine::heuristic(dense, problem_of(16384, 16, 128), h200);
  EXPECT_EQ(hopper.config.to_string(), "sm90:128x128s2:longest");
  EXPECT_NE(hopper.source.find("wgmma"), std::string::npos) << hopper.source;
  const auto d96 = engine::heuristic(dense, problem_of(16384, 16, 96), h200);
  EXPECT_EQ(d96.config.family, KernelFamily::kSm80);
  EXPECT_NE(d96.source.find("not sm90"), std::string::npos) << d96.source;
  runtime::DeviceInfo a100 = h200;
  a100.cc_major = 8;
  EXPECT_EQ(engine::heuristic(dense, problem_of(16384, 16, 128), a100).config.family, KernelFamily::kSm80);
  EXPECT_THROW(engine::heuristic_for(KernelFamily::kSm90, dense, problem_of(16384, 16, 128), a100), Error);
  // Permuted layouts run on sm90 with their rows copied first, except grids (mostly
  // partial tiles), which stay on sm80 (measured faster there); sm90 runs them on request.
  const Pattern longnet = Pattern::parse(R"({"type":"longnet","segments":[2048,4096],"rates":[1,2]})");
  const auto ln = engine::heuristic(longnet, problem_of(16384, 16, 128), h200);
  EXPECT_EQ(ln.config.to_string(), "sm90:128x128s2:longest:copy");
  EXPECT_NE(ln.source.find("copied"), std::string::npos) << ln.source;
  const Pattern grid = Pattern::parse(R"({"type":"neighborhood","grid":[128,128],"window":[13,13]})");
  const auto nb = engine::heuristic(grid, problem_of(16384, 16, 128), h200);
  EXPECT_EQ(nb.config.family, KernelFamily::kSm80);
  EXPECT_NE(nb.source.find("most of its tiles are partial"), std::string::npos) << nb.source;
  const auto nb90 = engine::heuristic_for(KernelFamily::kSm90, grid, problem_of(16384, 16, 128), h200);
  EXPECT_EQ(nb90.config.to_string(), "sm90:128x128s2:longest:copy");
  EXPECT_EQ(engine::heuristic(dense, problem_of(16384, 16, 128), h200).config.gather, TokenGather::kInline)
      << "nothing to copy in natural order";
  // Few work items: one consumer warpgroup per CTA (64-row tiles).
  EXPECT_EQ(engine::heuristic(dense, problem_of(2048, 2, 128), h200).config.tile_m, 64);
}

}  // namespace
}  // namespace spattn
