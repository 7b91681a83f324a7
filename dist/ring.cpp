// RingAttention: this rank's queries against every shard of the sequence that its
// queries attend, one shard pair (a sub-rectangle of the problem, in global token
// positions) at a time, K/V shards arriving point to point while the previous pair
// computes; the pairs' outputs are merged by LSE.
#include <spattn/ring.hpp>

#include <fmt/format.h>

#include <cmath>
#include <sstream>

#include "codegen/kernel_spec.hpp"
#include "common/check.hpp"
#include "dist/ring_plan.hpp"
#include "engine/forward.hpp"
#include "engine/jit.hpp"
#include "engine/select.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"

namespace spattn {

std::string RingTimings::to_string() const {
  return fmt::format("total {:.3f} ms: compute {:.3f} ms, waiting for transfers {:.3f} ms; {} shard pairs' steps "
                     "computed, {} received ({:.1f} MiB in, {:.1f} MiB out)",
                     total_ms, compute_ms, wait_ms, steps_computed, steps_received, bytes_received / 1048576.0,
                     bytes_sent / 1048576.0);
}

namespace {

// A view of rows [row0, row0 + rows) of a [B, N, H, D] tensor.
TensorView rows_of(const TensorView& t, int64_t row0, int64_t rows) {
  TensorView v = t;
  v.data = static_cast<char*>(t.data) + row0 * t.strides[1] * static_cast<int64_t>(dtype_size(t.dtype));
  v.shape[1] = rows;
  return v;
}

// A view of columns [i0, i0 + n) of an LSE [B, H, N].
TensorView lse_cols(const TensorView& t, int64_t i0, int64_t n) {
  TensorView v = t;
  v.data = static_cast<float*>(t.data) + i0;
  v.shape[2] = n;
  return v;
}

bool contiguous(const TensorView& t) {
  const TensorView c = TensorView::contiguous(t.data, t.dtype, t.shape);
  return t.strides == c.strides;
}

class Stream {
 public:
  Stream() { SPATTN_CU_CHECK(cuStreamCreate(&s_, CU_STREAM_NON_BLOCKING)); }
  ~Stream() {
    if (s_) runtime::driver().cuStreamDestroy(s_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  CUstream get() const { return s_; }

 private:
  CUstream s_ = nullptr;
};

void wait(CUstream stream, const runtime::Event& e) { SPATTN_CU_CHECK(cuStreamWaitEvent(stream, e.get(), 0)); }

}  // namespace

struct RingAttention::Impl {
  Pattern pattern;
  std::shared_ptr<RingTransport> transport;
  RingOptions options;

  // One shard pair's rectangle: my query range a against the source's key range b.
  struct Job {
    int a = 0, b = 0;
    int64_t key_row = 0;  // first row of the source's range b in its K/V tensors
    int slot = -1;  // part slot of range a (-1: writes O and LSE of range a directly)
    std::unique_ptr<engine::ForwardPlan> plan;
  };
  struct Step {
    int offset = 0;              // ring offset: the source is (rank - offset) mod world
    int src = 0;
    bool recv = false;           // the source's K/V arrive here (offset > 0)
    std::vector<int> send_to;    // ranks that get my K/V at this step
    int buffer = -1;             // receive buffer (0 or 1) while recv
    std::vector<Job> jobs;
    std::unique_ptr<runtime::Event> arrived;  // comm stream: this step's transfers are done
  };

  // What the prepared state is for.
  bool prepared = false;
  engine::Problem local;  // this rank's tensors (nq = nk = shard tokens)
  int device = 0;
  int world = 1, rank = 0;
  dist::RingPlan plan;
  KernelConfig config;
  std::string config_source;
  std::vector<std::pair<int64_t, int64_t>> ranges;  // my shard's global token ranges
  std::vector<int64_t> range_offset;                // their first local row
  std::vector<int> jobs;                            // shard pairs per range (1: written directly)
  std::vector<int> slots;                           // part slots per range (0 unless jobs > 1)
  std::vector<int64_t> part_offset;                 // first slot of each range in the part buffers
  std::vector<Step> steps;
  const engine::JitKernel* merge = nullptr;
  const engine::JitKernel* fill = nullptr;
  runtime::DeviceBuffer part_o, part_lse, recv_kv[2];
  std::unique_ptr<Stream> comm;
  // Created with the first forward (events need a GPU; the constructor does not).
  struct Events {
    runtime::Event start, end, comm_done, buffer_free[2], merge_begin;
  };
  std::unique_ptr<Events> ev;
  // Timing events (options.timing): per computed step, before the wait, after it, after the compute.
  std::vector<std::array<std::unique_ptr<runtime::Event>, 3>> marks;
  RingTimings last;
  bool timed = false;

  size_t kv_bytes() const {
    return static_cast<size_t>(local.batch * local.nk * local.kv_heads * local.head_dim) * dtype_size(local.dtype);
  }

  void prepare(const engine::Problem& p, int dev) {
    local = p;
    device = dev;
    world = transport->world();
    rank = transport->rank();
    SPATTN_REQUIRE(world >= 1 && rank >= 0 && rank < world, "ring: the transport's rank {} is not in [0, world {})",
                   rank, world);
    dist::RingProblem rp;
    rp.seq = p.nq * world;
    rp.heads = p.heads;
    rp.kv_heads = p.kv_heads;
    rp.head_dim = p.head_dim;
    rp.dtype = p.dtype;
    rp.world = world;
    rp.sharding = options.sharding;
    plan = dist::plan_ring(pattern, rp);
    const Shape whole{rp.seq, rp.seq, p.heads};

    runtime::make_current(device);
    const runtime::DeviceInfo info = runtime::device_info(device);
    engine::Problem global = p;
    global.nq = global.nk = rp.seq;
    if (options.config) {
      config = *options.config;
      config_source = "forced";
    } else {
      const engine::KernelChoice choice = engine::heuristic(pattern, global, info);
      config = choice.config;
      config_source = choice.source;
    }

    ranges = plan.shards[rank].ranges;
    range_offset.clear();
    int64_t row = 0;
    for (const auto& [b, e] : ranges) {
      range_offset.push_back(row);
      row += e - b;
    }
    // The schedule: my own shard first, then every step of the plan I take part in.
    steps.clear();
    auto add_step = [&](int offset, const std::vector<dist::RingPlan::Transfer>& transfers) {
      Step s;
      s.offset = offset;
      s.src = ((rank - offset) % world + world) % world;
      for (const auto& t : transfers) {
        if (t.src == rank) s.send_to.push_back(t.dst);
        if (t.dst == rank) s.recv = true;
      }
      const bool compute = offset == 0 ? plan.needs[rank][rank] : s.recv;
      if (!compute && s.send_to.empty()) return;
      if (compute) {
        const auto& src_ranges = plan.shards[s.src].ranges;
        for (int a = 0; a < static_cast<int>(ranges.size()); ++a) {
          for (int b = 0; b < static_cast<int>(src_ranges.size()); ++b) {
            engine::Problem sub = p;
            sub.nq = ranges[a].second - ranges[a].first;
            sub.nk = src_ranges[b].second - src_ranges[b].first;
            const engine::SubProblem rect{whole, TokenRect{ranges[a].first, ranges[a].second, src_ranges[b].first,
                                                           src_ranges[b].second}};
            auto fp = std::make_unique<engine::ForwardPlan>(pattern, sub, config, device, &rect);
            if (fp->work_list().num_items() == 0) continue;  // no allowed pair in this rectangle
            Job j;
            j.a = a;
            j.b = b;
            for (int x = 0; x < b; ++x) j.key_row += src_ranges[x].second - src_ranges[x].first;
            j.plan = std::move(fp);
            s.jobs.push_back(std::move(j));
          }
        }
      }
      steps.push_back(std::move(s));
    };
    add_step(0, {});
    for (const auto& st : plan.steps) add_step(st.offset, st.transfers);

    // Part slots: a range that gets one shard pair writes O and LSE directly.
    jobs.assign(ranges.size(), 0);
    for (Step& s : steps)
      for (Job& j : s.jobs) jobs[j.a]++;
    slots.assign(ranges.size(), 0);
    part_offset.assign(ranges.size(), 0);
    int64_t part_rows = 0;
    std::vector<int> next(ranges.size(), 0);
    for (size_t a = 0; a < ranges.size(); ++a) {
      slots[a] = jobs[a] > 1 ? jobs[a] : 0;
      part_offset[a] = part_rows;
      part_rows += int64_t{slots[a]} * (ranges[a].second - ranges[a].first);
    }
    for (Step& s : steps)
      for (Job& j : s.jobs) j.slot = slots[j.a] > 0 ? next[j.a]++ : -1;
    // part_o16 [slot rows x B x H x D] per range, laid out [slot][B][rows][H][D] as the merge reads it.
    const size_t row_elems = static_cast<size_t>(p.batch * p.heads * p.head_dim);
    part_o = part_rows > 0 ? runtime::DeviceBuffer(static_cast<size_t>(part_rows) * row_elems * 2)
                           : runtime::DeviceBuffer();
    part_lse = part_rows > 0 ? runtime::DeviceBuffer(static_cast<size_t>(part_rows * p.batch * p.heads) * 4)
                             : runtime::DeviceBuffer();
    int received = 0;
    for (Step& s : steps)
      if (s.recv) s.buffer = received++ % 2;
    for (int b = 0; b < std::min(received, 2); ++b) recv_kv[b] = runtime::DeviceBuffer(2 * kv_bytes());

    const codegen::RenderedKernel support = codegen::render_support_kernels();
    merge = &engine::load_kernel(support, device,
                                 p.dtype == DType::kBFloat16 ? "spattn_merge_bf16" : "spattn_merge_fp16");
    fill = &engine::load_kernel(support, device, "spattn_fill_empty");
    for (Step& s : steps)
      if (s.recv || !s.send_to.empty()) s.arrived = std::make_unique<runtime::Event>();
    if (!comm) comm = std::make_unique<Stream>();
    if (!ev) ev = std::make_unique<Events>();
    prepared = true;
  }

  void exchange(Step& s, const TensorView& k, const TensorView& v) {
    std::vector<RingTransport::Send> sends;
    std::vector<RingTransport::Recv> recvs;
    const size_t bytes = kv_bytes();
    for (int dst : s.send_to) {
      sends.push_back({k.data, bytes, dst});
      sends.push_back({v.data, bytes, dst});
    }
    if (s.recv) {
      char* buf = static_cast<char*>(recv_kv[s.buffer].data());
      recvs.push_back({buf, bytes, s.src});
      recvs.push_back({buf + bytes, bytes, s.src});
      wait(comm->get(), ev->buffer_free[s.buffer]);  // the step that used this buffer before is done with it
    }
    transport->exchange(sends, recvs, comm->get());
    s.arrived->record(comm->get());
  }

  void forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
               const TensorView* lse, CUstream stream) {
    const engine::Problem p = engine::problem_from_tensors(q, k, v, o, lse);
    SPATTN_REQUIRE(p.nq == p.nk, "ring: every rank holds the same tokens' queries and keys (got {} query rows, {} "
                   "key rows)", p.nq, p.nk);
    SPATTN_REQUIRE(contiguous(k) && contiguous(v), "ring: K and V must be contiguous [B, n, Hkv, D] (they are sent "
                   "as they are); got K {}, V {}", k.describe(), v.describe());
    SPATTN_REQUIRE(stream != nullptr || transport->world() == 1 || transport->name() != "loopback",
                   "ring: virtual ranks of a loopback ring need a stream each (the default stream is shared by "
                   "every thread, so one rank's wait for a transfer would stall the rank that sends it)");
    const int dev = options.device >= 0 ? options.device : runtime::current_device();
    const bool same = prepared && dev == device && p.batch == local.batch && p.nq == local.nq &&
                      p.heads == local.heads && p.kv_heads == local.kv_heads && p.head_dim == local.head_dim &&
                      p.dtype == local.dtype;
    if (!same) prepare(p, dev);
    runtime::make_current(device);
    const float scale = options.scale > 0 ? options.scale : 1.0f / std::sqrt(static_cast<float>(p.head_dim));

    ev->start.record(stream);
    wait(comm->get(), ev->start);  // the inputs are ready; receive buffers are free from earlier calls
    for (auto& e : ev->buffer_free) e.record(comm->get());
    timed = options.timing;
    marks.clear();
    last = RingTimings{};

    // Transfers run one step ahead of the compute.
    std::vector<size_t> comm_steps;
    for (size_t i = 0; i < steps.size(); ++i)
      if (steps[i].recv || !steps[i].send_to.empty()) comm_steps.push_back(i);
    size_t next_comm = 0;
    auto post_until = [&](size_t i) {  // every transfer of steps <= i, and the next one
      while (next_comm < comm_steps.size() && comm_steps[next_comm] <= i + 1) {
        Step& s = steps[comm_steps[next_comm++]];
        exchange(s, k, v);
        last.bytes_sent += 2 * kv_bytes() * s.send_to.size();
        if (s.recv) last.bytes_received += 2 * kv_bytes(), last.steps_received++;
      }
    };
    for (size_t i = 0; i < steps.size(); ++i) {
      post_until(i);
      Step& s = steps[i];
      if (s.jobs.empty()) continue;
      std::array<std::unique_ptr<runtime::Event>, 3> m;
      if (timed) {
        for (auto& e : m) e = std::make_unique<runtime::Event>();
        m[0]->record(stream);
      }
      const TensorView* ks = &k;
      const TensorView* vs = &v;
      TensorView kr, vr;
      if (s.recv) {
        wait(stream, *s.arrived);
        kr = TensorView::contiguous(recv_kv[s.buffer].data(), k.dtype, k.shape);
        vr = TensorView::contiguous(static_cast<char*>(recv_kv[s.buffer].data()) + kv_bytes(), v.dtype, v.shape);
        ks = &kr;
        vs = &vr;
      }
      if (timed) m[1]->record(stream);
      const auto& src_ranges = plan.shards[s.src].ranges;
      for (Job& j : s.jobs) {
        const int64_t rows = ranges[j.a].second - ranges[j.a].first;
        const int64_t keys = src_ranges[j.b].second - src_ranges[j.b].first;
        const TensorView qv = rows_of(q, range_offset[j.a], rows);
        const TensorView kv = rows_of(*ks, j.key_row, keys), vv = rows_of(*vs, j.key_row, keys);
        if (j.slot < 0) {
          const TensorView ov = rows_of(o, range_offset[j.a], rows);
          TensorView lv;
          if (lse) lv = lse_cols(*lse, range_offset[j.a], rows);
          j.plan->run(qv, kv, vv, ov, lse ? &lv : nullptr, scale, stream);
        } else {
          const int64_t slot_rows = part_offset[j.a] + int64_t{j.slot} * rows;
          char* ob = static_cast<char*>(part_o.data()) +
                     slot_rows * p.batch * p.heads * p.head_dim * static_cast<int64_t>(dtype_size(p.dtype));
          const TensorView ov = TensorView::contiguous(ob, p.dtype, {p.batch, rows, p.heads, p.head_dim});
          const TensorView lv = TensorView::contiguous3(static_cast<float*>(part_lse.data()) + slot_rows * p.batch * p.heads,
                                                        DType::kFloat32, {p.batch, p.heads, rows});
          j.plan->run(qv, kv, vv, ov, &lv, scale, stream);
        }
      }
      if (s.recv) ev->buffer_free[s.buffer].record(stream);
      if (timed) {
        m[2]->record(stream);
        marks.push_back(std::move(m));
      }
      last.steps_computed++;
    }
    post_until(steps.size());
    ev->comm_done.record(comm->get());

    if (timed) ev->merge_begin.record(stream);
    for (size_t a = 0; a < ranges.size(); ++a) {
      const int64_t rows = ranges[a].second - ranges[a].first;
      const TensorView ov = rows_of(o, range_offset[a], rows);
      TensorView lv;
      if (lse) lv = lse_cols(*lse, range_offset[a], rows);
      if (jobs[a] == 1) continue;  // written directly
      const int64_t warps = p.batch * p.heads * rows;
      const unsigned blocks = static_cast<unsigned>((warps + 7) / 8);
      if (jobs[a] == 0) {  // no key anywhere: O = 0, LSE = -inf
        SpattnFillParams f{};
        engine::set_output(f, ov, lse ? &lv : nullptr);
        f.batch = static_cast<int32_t>(p.batch), f.nq = static_cast<int32_t>(rows);
        f.heads = static_cast<int32_t>(p.heads), f.head_dim = static_cast<int32_t>(p.head_dim);
        void* args[] = {&f};
        fill->kernel.launch({blocks}, {256}, 0, stream, args);
        continue;
      }
      SpattnMergeParams m{};
      m.part_o16 = reinterpret_cast<const unsigned short*>(static_cast<char*>(part_o.data()) +
                                                           part_offset[a] * p.batch * p.heads * p.head_dim *
                                                               static_cast<int64_t>(dtype_size(p.dtype)));
      m.part_lse = static_cast<const float*>(part_lse.data()) + part_offset[a] * p.batch * p.heads;
      engine::set_output(m, ov, lse ? &lv : nullptr);
      m.parts = slots[a];
      m.batch = static_cast<int32_t>(p.batch), m.nq = static_cast<int32_t>(rows);
      m.heads = static_cast<int32_t>(p.heads), m.head_dim = static_cast<int32_t>(p.head_dim);
      void* args[] = {&m};
      merge->kernel.launch({blocks}, {256}, 0, stream, args);
    }
    // The caller may overwrite K and V after this in stream order: the sends must be done.
    wait(stream, ev->comm_done);
    ev->end.record(stream);
  }

  RingTimings timings() {
    SPATTN_REQUIRE(timed, "ring: timings() needs RingOptions::timing and a forward() with it");
    ev->end.synchronize();
    RingTimings t = last;
    t.total_ms = ev->end.elapsed_ms_since(ev->start);
    for (const auto& m : marks) {
      t.wait_ms += m[1]->elapsed_ms_since(*m[0]);
      t.compute_ms += m[2]->elapsed_ms_since(*m[1]);
    }
    t.compute_ms += ev->end.elapsed_ms_since(ev->merge_begin);
    return t;
  }

  std::string explain() const {
    if (!prepared) return "no ring forward has run yet\n";
    std::ostringstream s;
    s << fmt::format("ring      rank {} of {} ({} transport), {} sharding, {} tokens in all\n", rank, world,
                     transport->name(), to_string(options.sharding), plan.problem.seq);
    std::string mine;
    for (const auto& [b, e] : ranges) mine += fmt::format("{}[{}, {})", mine.empty() ? "" : " ", b, e);
    s << fmt::format("shard     {} ({} tokens)\n", mine, local.nq);
    s << fmt::format("config    {} — {}\n", config.to_string(), config_source);
    for (const Step& st : steps) {
      std::string sends;
      for (int d : st.send_to) sends += fmt::format("{}{}", sends.empty() ? "" : ",", d);
      s << fmt::format("step {:>3}  K/V of rank {}{}{}: {} shard pairs\n", st.offset, st.src,
                       st.recv ? " (received)" : (st.offset == 0 ? " (own)" : ""),
                       sends.empty() ? "" : fmt::format(", sends to {}", sends), st.jobs.size());
      for (const Job& j : st.jobs) {
        const auto& kr = plan.shards[st.src].ranges[j.b];
        s << fmt::format("          rows [{}, {}) x keys [{}, {}): {} work items{}\n", ranges[j.a].first,
                         ranges[j.a].second, kr.first, kr.second, j.plan->work_list().num_items(),
                         j.slot >= 0 ? fmt::format(", part {}", j.slot) : "");
      }
    }
    s << fmt::format("moves     {:.1f} MiB received of a dense ring's {:.1f} MiB per rank\n",
                     plan.bytes_received(rank) / 1048576.0,
                     world > 1 ? plan.dense_ring_bytes() / double(world) / 1048576.0 : 0.0);
    return s.str();
  }
};

RingAttention::RingAttention(Pattern pattern, std::shared_ptr<RingTransport> transport, RingOptions options)
    : impl_(std::make_unique<Impl>()) {
  SPATTN_REQUIRE(transport != nullptr, "ring: the transport is null");
  impl_->pattern = std::move(pattern);
  impl_->transport = std::move(transport);
  impl_->options = std::move(options);
}
RingAttention::~RingAttention() = default;
RingAttention::RingAttention(RingAttention&&) noexcept = default;
RingAttention& RingAttention::operator=(RingAttention&&) noexcept = default;

void RingAttention::forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
                            const TensorView* lse, CUstream stream) {
  impl_->forward(q, k, v, o, lse, stream);
}
std::string RingAttention::explain() const { return impl_->explain(); }
RingTimings RingAttention::timings() const { return impl_->timings(); }

}  // namespace spattn
