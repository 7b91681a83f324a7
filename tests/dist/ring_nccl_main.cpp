// One rank of ring attention over NCCL, one process per GPU (scripts/ring-2gpu.sh starts
// them): rank 0 writes the NCCL unique id to --id-file, the others wait for it. Every
// rank draws the whole sequence's Q, K, V from the same seeds on its own GPU, keeps its
// shard, runs RingAttention, and checks its rows of O and LSE against the fp32 reference
// of the whole problem at the forward tests' tolerance (--check), or times the ring
// forward against the single-GPU forward of the same sequence (--reps).
//
//   spattn_ring_nccl --rank R --world W --id-file F --pattern P --seq N [--zigzag]
//                    [--heads H] [--kv-heads H] [--check | --reps K]
#include <spattn/attention.hpp>
#include <spattn/ring.hpp>

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "autotune/harness.hpp"
#include "dist/ring_plan.hpp"
#include "engine/forward.hpp"
#include "engine/reference.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"

using namespace spattn;

namespace {

std::string arg(int argc, char** argv, const std::string& name, const std::string& fallback = "") {
  for (int i = 1; i + 1 < argc; ++i)
    if (argv[i] == name) return argv[i + 1];
  return fallback;
}
bool flag(int argc, char** argv, const std::string& name) {
  for (int i = 1; i < argc; ++i)
    if (argv[i] == name) return true;
  return false;
}

NcclUniqueId shared_id(int rank, const std::string& file) {
  NcclUniqueId id;
  if (rank == 0) {
    id = nccl_unique_id();
    const std::string tmp = file + ".tmp";
    std::ofstream(tmp, std::ios::binary).write(id.bytes.data(), id.bytes.size());
    std::filesystem::rename(tmp, file);
    return id;
  }
  for (int waited = 0; !std::filesystem::exists(file); ++waited) {
    if (waited > 1200) throw Error(ErrorCode::kInternal, "rank " + std::to_string(rank) + ": no id in " + file);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::ifstream(file, std::ios::binary).read(id.bytes.data(), id.bytes.size());
  return id;
}

}  // namespace

int main(int argc, char** argv) try {
  const int rank = std::stoi(arg(argc, argv, "--rank", "0"));
  const int world = std::stoi(arg(argc, argv, "--world", "2"));
  const std::string id_file = arg(argc, argv, "--id-file", "/tmp/spattn-ring.id");
  const Pattern pattern = Pattern::parse(arg(argc, argv, "--pattern", R"({"type":"dense","causal":true})"));
  const int64_t N = std::stoll(arg(argc, argv, "--seq", "4096"));
  const int64_t H = std::stoll(arg(argc, argv, "--heads", "16"));
  const int64_t Hkv = std::stoll(arg(argc, argv, "--kv-heads", std::to_string(H)));
  const int64_t B = 1, D = 128, n = N / world;
  const int reps = std::stoi(arg(argc, argv, "--reps", "0"));
  const bool zigzag = flag(argc, argv, "--zigzag");
  const DType dt = DType::kBFloat16;
  const int device = rank % std::max(1, runtime::device_count());
  runtime::make_current(device);

  const auto shards = dist::shard_sequence(N, world, zigzag ? RingSharding::kZigzag : RingSharding::kContiguous);
  runtime::DeviceBuffer q(B * N * H * D * 2), k(B * N * Hkv * D * 2), v(B * N * Hkv * D * 2);
  engine::fill_random(q.data(), B * N * H * D, dt, 1);
  engine::fill_random(k.data(), B * N * Hkv * D, dt, 2);
  engine::fill_random(v.data(), B * N * Hkv * D, dt, 3);
  // This rank's shard rows, in its order, copied on the device (B = 1).
  auto shard_of = [&](const runtime::DeviceBuffer& all, int64_t heads) {
    runtime::DeviceBuffer out(n * heads * D * 2);
    int64_t row = 0;
    for (const auto& [t0, t1] : shards[rank].ranges) {
      SPATTN_CU_CHECK(cuMemcpyDtoD(out.get() + row * heads * D * 2, all.get() + t0 * heads * D * 2,
                                   (t1 - t0) * heads * D * 2));
      row += t1 - t0;
    }
    return out;
  };
  runtime::DeviceBuffer lq = shard_of(q, H), lk = shard_of(k, Hkv), lv = shard_of(v, Hkv);
  runtime::DeviceBuffer lo(n * H * D * 2), ll(H * n * 4);
  lo.fill_bytes(0xff);
  ll.fill_bytes(0xff);
  const auto tq = TensorView::contiguous(lq.data(), dt, {B, n, H, D});
  const auto tk = TensorView::contiguous(lk.data(), dt, {B, n, Hkv, D});
  const auto tv = TensorView::contiguous(lv.data(), dt, {B, n, Hkv, D});
  const auto to = TensorView::contiguous(lo.data(), dt, {B, n, H, D});
  const auto tl = TensorView::contiguous3(ll.data(), DType::kFloat32, {B, H, n});

  RingOptions opts;
  opts.sharding = zigzag ? RingSharding::kZigzag : RingSharding::kContiguous;
  opts.device = device;
  opts.timing = reps > 0;
  RingAttention ring(pattern, nccl_transport(shared_id(rank, id_file), rank, world, device), opts);
  CUstream stream = nullptr;
  SPATTN_CU_CHECK(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
  ring.forward(tq, tk, tv, to, &tl, stream);
  SPATTN_CU_CHECK(cuStreamSynchronize(stream));
  if (rank == 0) std::printf("%s", ring.explain().c_str());

  if (reps == 0) {
    const engine::Problem whole{B, N, N, H, Hkv, D, dt};
    const auto ref = engine::reference_forward(pattern, whole, TensorView::contiguous(q.data(), dt, {B, N, H, D}),
                                               TensorView::contiguous(k.data(), dt, {B, N, Hkv, D}),
                                               TensorView::contiguous(v.data(), dt, {B, N, Hkv, D}), 0);
    // The reference rows of this shard, in its order.
    engine::ReferenceResult mine;
    for (const auto& [t0, t1] : shards[rank].ranges)
      mine.o.insert(mine.o.end(), ref.o.begin() + t0 * H * D, ref.o.begin() + t1 * H * D);
    mine.lse.resize(H * n);
    for (int64_t h = 0; h < H; ++h) {
      int64_t row = 0;
      for (const auto& [t0, t1] : shards[rank].ranges)
        for (int64_t t = t0; t < t1; ++t) mine.lse[h * n + row++] = ref.lse[h * N + t];
    }
    std::vector<uint16_t> out(n * H * D);
    std::vector<float> lse(H * n);
    lo.download(out.data(), out.size() * 2);
    ll.download(lse.data(), lse.size() * 4);
    const engine::Comparison cmp = engine::compare(out, dt, lse, mine);
    const autotune::Tolerance tol = autotune::tolerance_for(dt);
    const bool ok = cmp.nonfinite == 0 && cmp.lse_mismatch == 0 && cmp.rel_l2_err <= tol.rel_l2 &&
                    cmp.max_abs_err <= tol.max_abs && cmp.max_lse_err <= tol.lse;
    std::printf("rank %d: %s %s\n", rank, ok ? "PASS" : "FAIL", cmp.to_string().c_str());
    return ok ? 0 : 1;
  }
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    ring.forward(tq, tk, tv, to, &tl, stream);
    SPATTN_CU_CHECK(cuStreamSynchronize(stream));
    ms.push_back(ring.timings().total_ms);
  }
  std::sort(ms.begin(), ms.end());
  std::printf("rank %d: ring forward %.3f ms median of %d; last: %s\n", rank, ms[ms.size() / 2], reps,
              ring.timings().to_string().c_str());
  if (rank == 0) {
    Attention attn(pattern);
    runtime::DeviceBuffer o(B * N * H * D * 2);
    std::vector<double> single;
    for (int r = 0; r < reps + 2; ++r) {
      runtime::Event a, b;
      a.record();
      attn.forward(TensorView::contiguous(q.data(), dt, {B, N, H, D}),
                   TensorView::contiguous(k.data(), dt, {B, N, Hkv, D}),
                   TensorView::contiguous(v.data(), dt, {B, N, Hkv, D}), TensorView::contiguous(o.data(), dt, {B, N, H, D}));
      b.record();
      b.synchronize();
      if (r >= 2) single.push_back(b.elapsed_ms_since(a));
    }
    std::sort(single.begin(), single.end());
    std::printf("single-GPU forward of the whole sequence: %.3f ms median of %d\n", single[single.size() / 2], reps);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "spattn_ring_nccl: %s\n", e.what());
  return 2;
}
