// Rendering and NVRTC compilation of the forward kernel (no GPU needed).
#include <gtest/gtest.h>

#include <regex>

#include <spattn/config.hpp>
#include <spattn/error.hpp>
#include <spattn/pattern.hpp>

#include "codegen/kernel_spec.hpp"
#include "runtime/nvrtc.hpp"
#include "tests/codegen/nvrtc_compile.hpp"
#include "templates/embedded.hpp"

namespace spattn {
namespace {

codegen::KernelSpec spec_for(const char* json, int head_dim, DType dtype, const std::string& arch,
                             KernelConfig config = {}) {
  codegen::KernelSpec s;
  const Pattern p = Pattern::parse(json);
  for (int b = 0; b < p.branch_count(); ++b) s.parts.push_back(LayoutPart{p, b, {}});
  s.head_dim = head_dim;
  s.dtype = dtype;
  s.arch = arch;
  s.config = config;
  return s;
}

runtime::CompiledProgram compile(const codegen::RenderedKernel& r, const std::string& arch) {
  return test::compile_rendered(r, arch);
}

TEST(Render, SourceNamesItsSpecAndIsDeterministic) {
  const auto spec = spec_for(R"({"type":"local_window","window":1024})", 128, DType::kBFloat16, "sm_90a");
  const auto a = codegen::render_forward(spec);
  const auto b = codegen::render_forward(spec);
  EXPECT_EQ(a.source, b.source);
  EXPECT_EQ(a.program_name, b.program_name);
  EXPECT_NE(a.source.find("local_window"), std::string::npos);
  EXPECT_NE(a.source.find("family sm80, tile 128x64, 4 warps, 1 stage(s), head dim 128, bf16, sm_90a"), std::string::npos);
  EXPECT_NE(a.source.find("kHeadDim = 128"), std::string::npos);
  ASSERT_EQ(a.template_hashes.size(), 4u);  // params, ptx, the family's template, warp
  EXPECT_EQ(a.template_hashes[2].second, templates::get("spattn/forward.cuh").sha256);
  // A different tile config is a different program.
  KernelConfig other;
  other.tile_n = 32;
  EXPECT_NE(codegen::render_forward(spec_for(R"({"type":"local_window","window":1024})", 128, DType::kBFloat16,
                                              "sm_90a", other))
                .source,
            a.source);
}

// The two targets CI must prove: the portable sm_80 family and Hopper's sm_90a, for both
// dtypes and the head dims of the heuristic. The heuristic's configs sit at the 255-
// register budget: a few words of spill and the frame of the out-of-line general mask
// (up to ~110 bytes of local memory, measured) are tolerated; the hundreds of bytes of a
// config that does not fit are not.
TEST(Render, ForwardCompilesWithinRegisterBudgetForSm80AndSm90a) {
  struct Case {
    const char* json;
    int head_dim;
    DType dtype;
    const char* arch;
    KernelConfig config;
  };
  KernelConfig d256;
  d256.tile_m = 64;
  d256.stages = 1;
  KernelConfig d64;
  d64.stages = 2;
  const Case cases[] = {
      {R"({"type":"longnet","segments":[2048,4096],"rates":[1,2]})", 128, DType::kBFloat16, "sm_90a", {}},
      {R"({"type":"local_window","window":256,"causal":true})", 64, DType::kFloat16, "sm_80", d64},
      {R"({"type":"dense"})", 256, DType::kBFloat16, "sm_80", d256},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(std::string(c.json) + " " + c.arch);
    const auto r = codegen::render_forward(spec_for(c.json, c.head_dim, c.dtype, c.arch, c.config));
    const auto out = compile(r, c.arch);
    EXPECT_GT(out.cubin.size(), 1000u);
    EXPECT_GT(out.registers, 0);
    EXPECT_LE(out.registers, 255);
    EXPECT_LE(out.local_bytes, 160) << "register spills:\n" << out.log;
  }
}

TEST(Render, SupportKernelsCompile) {
  const auto r = codegen::render_support_kernels();
  const auto out = compile(r, "sm_80");
  EXPECT_GT(out.cubin.size(), 1000u);
}

// The adaptive selection kernels (pool, select) for both archs the families target,
// without spills.
TEST(Render, AdaptiveKernelsCompile) {
  const auto r = codegen::render_adaptive_kernels();
  for (const char* arch : {"sm_80", "sm_90a"}) {
    const auto out = compile(r, arch);
    EXPECT_GT(out.cubin.size(), 1000u) << arch;
    EXPECT_LE(out.local_bytes, 0) << arch << " spills:\n" << out.log;
    // Every entry point, the backward pass's table builders included, is in the program.
    for (const char* entry : {"spattn_adaptive_pool_bf16", "spattn_adaptive_pool_fp16", "spattn_adaptive_select",
                              "spattn_adaptive_columns", "spattn_adaptive_transpose", "spattn_adaptive_gate_grads"})
      EXPECT_NE(out.log.find(std::string("entry function '") + entry + "'"), std::string::npos)
          << arch << " " << entry << "\n" << out.log;
  }
}

// Adaptive layouts' kernels read block gates (KernelSpec::gates): forward and backward of
// both families (and the deterministic dQ pass) compile with them, and spill no more than
// the same kernels without gates.
TEST(Render, GatedKernelsCompileWithinTheirBudget) {
  struct Case {
    const char* arch;
    const char* config;
    bool backward, deterministic;
  };
  const Case cases[] = {
      {"sm_90a", "sm90:128x128s2", false, false}, {"sm_80", "sm80:128x64w4s2", false, false},
      {"sm_90a", "sm90:64x128s2", true, false},   {"sm_90a", "sm90:64x128s2", true, true},
      {"sm_80", "sm80:64x64w4s2", true, false},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(std::string(c.arch) + " " + c.config + (c.backward ? " backward" : " forward") +
                 (c.deterministic ? " deterministic" : ""));
    codegen::KernelSpec spec =
        spec_for(R"({"type":"dense","causal":true})", 128, DType::kBFloat16, c.arch, KernelConfig::parse(c.config));
    spec.permuted_keys = false;
    spec.deterministic = c.deterministic;
    auto render = [&](bool gates) {
      spec.gates = gates;
      return c.backward ? codegen::render_backward(spec) : codegen::render_forward(spec);
    };
    const auto gated = render(true), plain = render(false);
    EXPECT_NE(gated.source.find("kGates = true"), std::string::npos);
    EXPECT_NE(plain.source.find("kGates = false"), std::string::npos);
    const auto with = compile(gated, c.arch), without = compile(plain, c.arch);
    EXPECT_GT(with.cubin.size(), 1000u);
    EXPECT_LE(with.registers, 255);
    EXPECT_LE(with.local_bytes, without.local_bytes) << "gates add spills:\n" << with.log;
  }
}

// Documents programs (KernelSpec::varlen): the forward kernel and the two table
// builders compile for both families' targets without spills, and the forward kernel
// keeps the register budget of its config.
TEST(Render, DocumentKernelsCompileForSm80AndSm90a) {
  struct Case {
    const char* json;
    const char* arch;
    const char* config;
  };
  const Case cases[] = {
      {R"({"type":"dense","causal":true})", "sm_80", "sm80:128x64w4s1"},
      {R"({"type":"local_window","window":256,"causal":true})", "sm_90a", "sm90:128x128s2"},
      {R"({"type":"global_local","global":64,"window":128})", "sm_90a", "sm90:128x128s2"},
      {R"({"type":"dense"})", "sm_80", "sm80:64x64w4s2"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(std::string(c.json) + " " + c.arch);
    auto spec = spec_for(c.json, 128, DType::kBFloat16, c.arch, KernelConfig::parse(c.config));
    spec.permuted_keys = false;
    spec.varlen = true;
    const auto r = codegen::render_forward(spec);
    EXPECT_NE(r.source.find("kVarlen = true"), std::string::npos);
    EXPECT_NE(r.source.find("spattn_varlen_docs"), std::string::npos);
    EXPECT_NE(r.source.find("spattn_varlen_tables"), std::string::npos);
    const auto out = compile(r, c.arch);
    EXPECT_GT(out.cubin.size(), 1000u);
    // ptxas reports each entry point: the builders without spills, the forward kernel
    // within the tolerance of ForwardCompilesWithinRegisterBudgetForSm80AndSm90a.
    for (const char* entry : {"spattn_varlen_docs", "spattn_varlen_tables", "spattn_varlen_order", "spattn_fwd"}) {
      const size_t at = out.log.find(std::string("entry function '") + entry + "'");
      ASSERT_NE(at, std::string::npos) << entry << "\n" << out.log;
      std::smatch m;
      const std::string rest = out.log.substr(at, 400);
      ASSERT_TRUE(std::regex_search(rest, m, std::regex(R"((\d+) bytes spill stores)"))) << rest;
      EXPECT_LE(std::stoi(m[1]), std::string(entry) == "spattn_fwd" ? 160 : 0) << entry << "\n" << rest;
      ASSERT_TRUE(std::regex_search(rest, m, std::regex(R"(Used (\d+) registers)"))) << rest;
      EXPECT_LE(std::stoi(m[1]), std::string(entry) == "spattn_fwd" ? 255 : 64) << entry;
    }
  }
  // Patterns without per-row key ranges: the forward kernel only, with permuted keys
  // (their tables come from the host, with each document shape's token orders).
  auto strided = spec_for(R"({"type":"strided","stride":16,"mode":"relative"})", 128, DType::kBFloat16, "sm_80");
  strided.varlen = true;
  for (const char* arch : {"sm_80", "sm_90a"}) {
    if (std::string(arch) == "sm_90a") {
      strided.arch = arch;
      strided.config = KernelConfig::parse("sm90:128x128s2");
    }
    const auto host = codegen::render_forward(strided);
    EXPECT_NE(host.source.find("kVarlen = true"), std::string::npos);
    EXPECT_NE(host.source.find("kPermutedKeys = true"), std::string::npos);
    EXPECT_EQ(host.source.find("spattn_varlen_tables"), std::string::npos);
    EXPECT_GT(compile(host, arch).cubin.size(), 1000u);
  }
  // Ring attention's sub-rectangles are not documents.
  strided.token_offsets = true;
  EXPECT_THROW(codegen::render_forward(strided), Error);
}

TEST(Render, NvrtcErrorsCarryTheLogAndNumberedSourceLines) {
  runtime::Program prog;
  prog.name = "broken.cu";
  prog.source = "// line 1\n__global__ void k() {\n  int x = undeclared_name;\n}\n";
  prog.arch = "sm_80";
  try {
    runtime::compile(prog);
    FAIL() << "expected a compile error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCompile);
    const std::string msg = e.what();
    EXPECT_NE(msg.find("undeclared_name"), std::string::npos) << msg;
    EXPECT_NE(msg.find("around line 3"), std::string::npos) << msg;
    EXPECT_NE(msg.find(">    3 |   int x = undeclared_name;"), std::string::npos) << msg;
  }
}

TEST(Render, UnknownArchIsRefusedWithTheSupportedList) {
  runtime::Program prog;
  prog.name = "k.cu";
  prog.source = "__global__ void k() {}\n";
  prog.arch = "sm_12";
  try {
    runtime::compile(prog);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("sm_90a"), std::string::npos) << e.what();
  }
}

TEST(KernelConfig, ValidationNamesTheFieldAndTheAllowedValues) {
  auto expect_error = [](KernelConfig c, int d, const char* needle) {
    try {
      c.validate(d);
      ADD_FAILURE() << "accepted " << c.to_string() << " at head dim " << d;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  KernelConfig c;
  c.validate(128);
  KernelConfig bad = c;
  bad.tile_n = 48;
  expect_error(bad, 128, "config.tile_n must be 32, 64 or 128");
  bad = c;
  bad.warps = 3;
  expect_error(bad, 128, "config.warps");
  bad = c;
  bad.tile_m = 96;
  expect_error(bad, 128, "config.tile_m must be a multiple of 16 * warps = 64");
  expect_error(c, 80, "head dim 80 is not supported by the sm80 family; it supports head dims 32, 64, 96, 128, 256");
  expect_error(c, 256, "output accumulators");
}

TEST(KernelConfig, TextRoundTrip) {
  KernelConfig c;
  EXPECT_EQ(c.to_string(), "128x64w4s1");
  EXPECT_EQ(KernelConfig::parse("128x64w4s1"), c);
  KernelConfig d;
  d.tile_m = 64;
  d.tile_n = 128;
  d.warps = 2;
  d.stages = 1;
  d.permute = false;
  d.schedule = ScheduleOrder::kHilbert;
  EXPECT_EQ(d.to_string(), "64x128w2s1:noperm:hilbert");
  EXPECT_EQ(KernelConfig::parse(d.to_string()), d);
  EXPECT_THROW(KernelConfig::parse("128x64"), Error);
  EXPECT_THROW(KernelConfig::parse("128x64w4s2:fast"), Error);
}

// ":copy" (permuted rows copied in slot order before the kernel, then loaded by TMA) is
// an option of the sm90 kernels, forward and backward: its text round-trips, and sm80
// configs refuse it in both passes with one message.
TEST(KernelConfig, CopiedGatherIsAnSm90Option) {
  const KernelConfig c = KernelConfig::parse("sm90:128x128s2:longest:copy");
  EXPECT_EQ(c.gather, TokenGather::kCopy);
  EXPECT_EQ(c.to_string(), "sm90:128x128s2:longest:copy");
  EXPECT_EQ(KernelConfig::parse(c.to_string()), c);
  EXPECT_EQ(KernelConfig::parse("sm90:128x128s2:inline").gather, TokenGather::kInline);
  EXPECT_EQ(KernelConfig::parse("sm90:128x128s2:inline").to_string(), "sm90:128x128s2");
  c.validate(128);
  check_backward_config(KernelConfig::parse("sm90:64x128s2:copy"), 128, DType::kBFloat16, "sm_90a", 0);
  const std::string want = "':copy' (permuted rows copied before the kernel) is an sm90 option";
  try {
    KernelConfig::parse("128x64w4s1:copy").validate(128);
    ADD_FAILURE() << "the sm80 forward accepted :copy";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
  }
  try {
    check_backward_config(KernelConfig::parse("64x128w8s2:copy"), 128, DType::kBFloat16, "sm_80", 0);
    ADD_FAILURE() << "the sm80 backward accepted :copy";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace spattn
