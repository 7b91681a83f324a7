// Layout compiler speed and table memory (PERFORMANCE.md target 4: block tables for 1M
// tokens in <= 50 ms on one CPU core). Single-threaded by construction; run with
//   patterns_bench --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <spattn/layout.hpp>
#include <spattn/pattern.hpp>

#include "engine/device_layout.hpp"

namespace {

constexpr int64_t kTokens = int64_t{1} << 20;
constexpr int64_t kHeads = 16;

void compile(benchmark::State& state, const char* spec, int64_t tile_n) {
  const spattn::Pattern pattern = spattn::Pattern::parse(spec);
  const spattn::Shape shape{kTokens, kTokens, kHeads};
  spattn::LayoutOptions options;
  options.tile_m = 128;
  options.tile_n = tile_n;
  spattn::Layout layout;
  for (auto _ : state) {
    layout = spattn::compile_layout(pattern, shape, options);
    benchmark::DoNotOptimize(layout.tables.data());
  }
  int64_t bytes = 0, listed = 0, full = 0, pairs = 0;
  for (const spattn::BlockTable& t : layout.tables) {
    bytes += static_cast<int64_t>((t.cols.size() + t.full_count.size() + t.q_slots.size() + t.k_slots.size()) *
                                      sizeof(int32_t) +
                                  t.row_ptr.size() * sizeof(int64_t));
    listed += static_cast<int64_t>(t.cols.size());
    for (int32_t f : t.full_count) full += f;
    pairs += t.allowed_pairs * static_cast<int64_t>(t.heads.size());
  }
  state.counters["table_MiB"] = double(bytes) / 1048576.0;
  state.counters["tables"] = double(layout.tables.size());
  state.counters["listed_tiles"] = double(listed);
  state.counters["full_frac"] = listed ? double(full) / double(listed) : 0.0;
  state.counters["density"] = double(pairs) / (double(kTokens) * double(kTokens) * double(kHeads));
}

void BM_Window1024(benchmark::State& s) { compile(s, R"({"type":"local_window","window":1024})", 128); }
void BM_Window1024Causal(benchmark::State& s) {
  compile(s, R"({"type":"local_window","left":1024,"right":0,"causal":true})", 128);
}
void BM_GlobalLocal(benchmark::State& s) { compile(s, R"({"type":"global_local","global":128,"window":512})", 128); }
void BM_LongNet(benchmark::State& s) {
  compile(s, R"({"type":"longnet","segments":[2048,4096,8192],"rates":[1,2,4]})", 128);
}
void BM_LongNetCausal(benchmark::State& s) {
  compile(s, R"({"type":"longnet","segments":[2048,4096,8192],"rates":[1,2,4],"causal":true})", 128);
}
void BM_HierarchicalStandard(benchmark::State& s) { compile(s, "standard", 128); }
void BM_StridedPlusWindow(benchmark::State& s) {
  compile(s, R"({"union":[{"type":"strided","stride":1024},{"type":"local_window","window":128}]})", 128);
}

// The backward pass's tables (per key tile) from the forward ones.
void transpose(benchmark::State& state, const char* spec) {
  const spattn::Pattern pattern = spattn::Pattern::parse(spec);
  spattn::LayoutOptions options;
  options.tile_m = 128;
  options.tile_n = 128;
  const spattn::Layout layout = spattn::compile_layout(pattern, spattn::Shape{kTokens, kTokens, kHeads}, options);
  for (auto _ : state)
    for (const spattn::BlockTable& t : layout.tables) benchmark::DoNotOptimize(spattn::transpose_table(t).rows.data());
}
void BM_TransposeWindow1024(benchmark::State& s) { transpose(s, R"({"type":"local_window","window":1024})"); }
void BM_TransposeLongNet(benchmark::State& s) {
  transpose(s, R"({"type":"longnet","segments":[2048,4096,8192],"rates":[1,2,4]})");
}
void BM_TransposeStandard(benchmark::State& s) { transpose(s, "standard"); }

// Packing the tables into the int32 arena the kernels read (forward; backward, which
// transposes first), as a plan does before uploading.
void BM_PackStandard(benchmark::State& state) {
  const spattn::Layout layout = spattn::compile_layout(spattn::Pattern::parse("standard"),
                                                       spattn::Shape{kTokens, kTokens, kHeads}, spattn::LayoutOptions{});
  for (auto _ : state) benchmark::DoNotOptimize(spattn::engine::pack_tables(layout).arena.data());
}
void BM_PackBackwardStandard(benchmark::State& state) {
  spattn::LayoutOptions options;
  options.tile_m = 64;
  options.tile_n = 128;
  const spattn::Layout layout =
      spattn::compile_layout(spattn::Pattern::parse("standard"), spattn::Shape{kTokens, kTokens, kHeads}, options);
  for (auto _ : state) benchmark::DoNotOptimize(spattn::engine::pack_backward_tables(layout).arena.data());
}

}  // namespace

BENCHMARK(BM_Window1024)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Window1024Causal)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GlobalLocal)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LongNet)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LongNetCausal)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_HierarchicalStandard)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_StridedPlusWindow)->Unit(benchmark::kMillisecond);

BENCHMARK(BM_TransposeWindow1024)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_TransposeLongNet)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_TransposeStandard)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PackStandard)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PackBackwardStandard)->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
