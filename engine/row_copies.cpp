#include "engine/row_copies.hpp"

#include <algorithm>
#include <limits>

#include "common/check.hpp"
#include "engine/forward.hpp"

namespace spattn::engine {

namespace {

int32_t copy_rows_i32(int64_t v) {
  if (v > std::numeric_limits<int32_t>::max())
    SPATTN_FAIL(ErrorCode::kUnsupported,
                "the copies of permuted rows ({} rows) exceed 32-bit row indices; use the inline gathers (a config "
                "without ':copy') or fewer heads per call",
                v);
  return static_cast<int32_t>(v);
}

template <class T>
void upload(runtime::DeviceBuffer& buf, const std::vector<T>& v) {
  if (v.empty()) return;
  buf = runtime::DeviceBuffer(v.size() * sizeof(T));
  buf.upload(v.data(), v.size() * sizeof(T));
}

// Rows of destination per block of the gather kernel (kGatherRows in templates/merge.cuh).
constexpr int64_t kGatherRows = 64;

}  // namespace

TokenCopyPlan plan_token_copies(const Layout& layout, const std::vector<SlotOffsets>& tables, int64_t kv_group) {
  SPATTN_REQUIRE(kv_group >= 1 && layout.shape.heads % kv_group == 0,
                 "kv_group must divide the {} query heads (got {})", layout.shape.heads, kv_group);
  SPATTN_REQUIRE(tables.size() == layout.tables.size(), "{} slot offsets for a layout of {} tables", tables.size(),
                 layout.tables.size());
  const int64_t hq = layout.shape.heads, hkv = hq / kv_group;
  TokenCopyPlan plan;
  plan.q_row.assign(tables.size() * static_cast<size_t>(hq), -1);
  plan.kv_row.assign(tables.size() * static_cast<size_t>(hkv), -1);
  auto add = [](std::vector<int32_t>& segments, int64_t& rows, int64_t& longest, int32_t slots, int64_t n,
                int64_t head) {
    const int32_t first = copy_rows_i32(rows);
    segments.insert(segments.end(), {first, slots, copy_rows_i32(n), static_cast<int32_t>(head)});
    rows += n;
    copy_rows_i32(rows);
    longest = std::max(longest, n);
    return first;
  };
  for (size_t ti = 0; ti < tables.size(); ++ti) {
    const BlockTable& t = layout.tables[ti];
    if (tables[ti].q_slots >= 0)
      for (int32_t h : t.heads)
        plan.q_row[ti * hq + h] = add(plan.q_segments, plan.q_rows, plan.max_q_segment, tables[ti].q_slots,
                                      t.num_q_tiles * layout.tile_m, h);
    if (tables[ti].k_slots >= 0)
      for (int32_t h : t.heads) {
        int32_t& row = plan.kv_row[ti * hkv + h / kv_group];
        if (row < 0)
          row = add(plan.kv_segments, plan.kv_rows, plan.max_kv_segment, tables[ti].k_slots,
                    t.num_k_tiles * layout.tile_n, h / kv_group);
      }
  }
  return plan;
}

RowCopies::RowCopies(TokenCopyPlan plan, const JitKernel& gather, DType dtype, int64_t head_dim)
    : plan_(std::move(plan)), gather_(&gather), dtype_(dtype), head_dim_(head_dim) {
  if (plan_.q_rows > 0) {
    upload(q_row_, plan_.q_row);
    upload(q_segments_, plan_.q_segments);
  }
  if (plan_.kv_rows > 0) {
    upload(kv_row_, plan_.kv_row);
    upload(kv_segments_, plan_.kv_segments);
  }
}

size_t RowCopies::workspace_bytes(int64_t batch) const {
  return static_cast<size_t>(batch) * static_cast<size_t>(2 * plan_.q_rows + 2 * plan_.kv_rows) *
         static_cast<size_t>(head_dim_) * 2;
}

void RowCopies::gather(const int32_t* arena, const TensorView& q, const TensorView* d_o, const TensorView& k,
                       const TensorView& v, int64_t batch, int64_t nq, int64_t nk, CUstream stream) {
  if (empty()) return;
  SPATTN_REQUIRE(batch <= 65535, "batch {} exceeds the launch grid limit 65535 of the row copies", batch);
  const size_t row_bytes = static_cast<size_t>(head_dim_) * 2;
  auto ensure = [&](runtime::DeviceBuffer& buf, int64_t rows) {
    const size_t bytes = static_cast<size_t>(batch) * static_cast<size_t>(rows) * row_bytes;
    if (rows > 0 && buf.size() < bytes) buf = runtime::DeviceBuffer(bytes);
  };
  auto launch = [&](const runtime::DeviceBuffer& segments, int64_t num_segments, int64_t longest, int64_t rows,
                    int tensors, const TensorView* const* src, runtime::DeviceBuffer* const* dst, int64_t limit) {
    if (num_segments == 0) return;
    SpattnGatherParams g{};
    for (int t = 0; t < tensors; ++t) {
      ensure(*dst[t], rows);
      g.src[t] = src[t]->data;
      g.dst[t] = dst[t]->data();
      g.src_stride_b[t] = src[t]->strides[0];
      g.src_stride_n[t] = src[t]->strides[1];
      g.src_stride_h[t] = src[t]->strides[2];
    }
    g.segments = reinterpret_cast<const int32_t*>(segments.get());
    g.arena = arena;
    g.rows_per_batch = rows;
    g.tensors = tensors;
    g.num_segments = static_cast<int32_t>(num_segments);
    g.limit = static_cast<int32_t>(limit);
    g.head_dim = static_cast<int32_t>(head_dim_);
    void* args[] = {&g};
    gather_->kernel.launch({static_cast<unsigned>((longest + kGatherRows - 1) / kGatherRows),
                            static_cast<unsigned>(std::min<int64_t>(num_segments, 65535)), static_cast<unsigned>(batch)},
                           {256}, 0, stream, args);
  };
  const TensorView* q_src[2] = {&q, d_o};
  runtime::DeviceBuffer* q_dst[2] = {&q_, &d_o_};
  launch(q_segments_, static_cast<int64_t>(plan_.q_segments.size() / 4), plan_.max_q_segment, plan_.q_rows,
         d_o ? 2 : 1, q_src, q_dst, nq);
  const TensorView* kv_src[2] = {&k, &v};
  runtime::DeviceBuffer* kv_dst[2] = {&k_, &v_};
  launch(kv_segments_, static_cast<int64_t>(plan_.kv_segments.size() / 4), plan_.max_kv_segment, plan_.kv_rows, 2,
         kv_src, kv_dst, nk);
}

RowCopies::Maps RowCopies::encode(SpattnTensorMap& q, SpattnTensorMap* d_o, SpattnTensorMap& k, SpattnTensorMap& v,
                                  int tile_m, int tile_n, int64_t batch) const {
  auto map = [&](SpattnTensorMap& m, const runtime::DeviceBuffer& buf, int64_t rows, int box) {
    SPATTN_REQUIRE(buf.size() >= static_cast<size_t>(batch * rows * head_dim_ * 2),
                   "the copies of permuted rows are not written for batch {}", batch);
    if (!encode_tile_map(m, TensorView::contiguous(buf.data(), dtype_, {batch, rows, 1, head_dim_}), box))
      SPATTN_FAIL(ErrorCode::kInternal, "no tensor map for a copy of {} permuted rows", rows);
  };
  Maps out;
  if (plan_.q_rows > 0) {
    map(q, q_, plan_.q_rows, tile_m);
    if (d_o) map(*d_o, d_o_, plan_.q_rows, tile_m);
    out.q_row = reinterpret_cast<const int32_t*>(q_row_.get());
  }
  if (plan_.kv_rows > 0) {
    map(k, k_, plan_.kv_rows, tile_n);
    map(v, v_, plan_.kv_rows, tile_n);
    out.kv_row = reinterpret_cast<const int32_t*>(kv_row_.get());
  }
  return out;
}

}  // namespace spattn::engine
