// Engine checks that need no GPU: tensor validation and the no-GPU error path.
#include <gtest/gtest.h>

#include <spattn/attention.hpp>

#include "engine/forward.hpp"
#include "runtime/driver.hpp"

namespace spattn {
namespace {

// A fake, suitably aligned address: validation never dereferences it.
void* fake_ptr() { return reinterpret_cast<void*>(uintptr_t{1} << 20); }

std::string error_of(const std::function<void()>& f, ErrorCode expected) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), expected) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return {};
}

TEST(ProblemFromTensors, AcceptsGqaCrossAttentionAndStridedViews) {
  auto q = TensorView::contiguous(fake_ptr(), DType::kBFloat16, {2, 100, 8, 64});
  auto k = TensorView::contiguous(fake_ptr(), DType::kBFloat16, {2, 300, 2, 64});
  // O as a slice of a wider buffer: row stride larger than H*D.
  auto o = q;
  o.strides = {100 * 1024, 1024, 64, 1};
  const auto lse = TensorView::contiguous3(fake_ptr(), DType::kFloat32, {2, 8, 100});
  const engine::Problem p = engine::problem_from_tensors(q, k, k, o, &lse);
  EXPECT_EQ(p.batch, 2);
  EXPECT_EQ(p.nq, 100);
  EXPECT_EQ(p.nk, 300);
  EXPECT_EQ(p.heads, 8);
  EXPECT_EQ(p.kv_heads, 2);
  EXPECT_EQ(p.head_dim, 64);
}

TEST(ProblemFromTensors, RefusesBadShapesDtypesAndStridesByName) {
  const auto q = TensorView::contiguous(fake_ptr(), DType::kBFloat16, {1, 64, 4, 128});
  const auto k = TensorView::contiguous(fake_ptr(), DType::kBFloat16, {1, 64, 4, 128});
  auto msg = error_of([&] { engine::problem_from_tensors(q, TensorView::contiguous(fake_ptr(), DType::kBFloat16, {1, 64, 3, 128}), k, q, nullptr); },
                      ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("multiple of key/value heads"), std::string::npos) << msg;
  msg = error_of([&] { engine::problem_from_tensors(q, k, TensorView::contiguous(fake_ptr(), DType::kBFloat16, {1, 63, 4, 128}), q, nullptr); },
                 ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("V must have shape [1, 64, 4, 128]"), std::string::npos) << msg;
  msg = error_of([&] { engine::problem_from_tensors(q, TensorView::contiguous(fake_ptr(), DType::kFloat16, {1, 64, 4, 128}), k, q, nullptr); },
                 ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("K has dtype fp16 but Q has bf16"), std::string::npos) << msg;
  auto bad = q;
  bad.strides[3] = 2;
  msg = error_of([&] { engine::problem_from_tensors(bad, k, k, q, nullptr); }, ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("contiguous in the head dimension"), std::string::npos) << msg;
  const auto q80 = TensorView::contiguous(fake_ptr(), DType::kBFloat16, {1, 64, 4, 80});
  msg = error_of([&] { engine::problem_from_tensors(q80, q80, q80, q80, nullptr); }, ErrorCode::kUnsupported);
  EXPECT_NE(msg.find("supported head dims: 32, 64, 96, 128, 256"), std::string::npos) << msg;
  const auto q32 = TensorView::contiguous(fake_ptr(), DType::kFloat32, {1, 64, 4, 128});
  msg = error_of([&] { engine::problem_from_tensors(q32, q32, q32, q32, nullptr); }, ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("supported: fp16, bf16"), std::string::npos) << msg;
  const auto lse = TensorView::contiguous3(fake_ptr(), DType::kFloat32, {1, 64, 4});
  msg = error_of([&] { engine::problem_from_tensors(q, k, k, q, &lse); }, ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("LSE must have shape [1, 4, 64]"), std::string::npos) << msg;
}

TEST(Attention, WithoutAGpuForwardSaysSoClearly) {
  if (runtime::has_gpu()) GTEST_SKIP() << "this host has a GPU; the no-GPU path is tested on GPU-less hosts (CI)";
  Attention attn(Pattern::parse(R"({"type":"local_window","window":128})"));
  const auto q = TensorView::contiguous(fake_ptr(), DType::kBFloat16, {1, 64, 4, 128});
  const std::string msg = error_of([&] { attn.forward(q, q, q, q); }, ErrorCode::kNoGpu);
  EXPECT_NE(msg.find("no NVIDIA driver found"), std::string::npos) << msg;
}

}  // namespace
}  // namespace spattn
