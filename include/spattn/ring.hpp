// spattn::RingAttention — sequence-parallel sparse attention over `world` ranks.
//
//   auto transport = spattn::nccl_transport(id, rank, world);       // or a LoopbackRing's
//   spattn::RingAttention ring(pattern, transport, {.sharding = spattn::RingSharding::kZigzag});
//   ring.forward(q, k, v, o, &lse, stream);                          // this rank's shards
//
// Every rank holds the queries, keys and values of its shard of the sequence
// (contiguous: rank r holds tokens [r·n, (r+1)·n) with n = N / world; zigzag: the
// sequence in 2·world chunks of c tokens, rank r holds chunk r then chunk 2·world−1−r,
// in that order in its tensors), and computes the output and LSE of its queries against
// the whole sequence under the pattern, with global token positions. K/V shards move
// point to point: a rank receives a shard only if some query of its shard attends some
// key of that shard (for some head), and a shard pair with no allowed pair is neither
// sent nor computed. The transfers of one step overlap the compute of the previous one;
// each shard pair writes a partial output and LSE, merged by LSE at the end.
//
// The transport is an interface: NCCL (one process per GPU) for real runs, and a
// loopback hub that runs world virtual ranks in one process on one GPU (one host thread
// per rank), which tests and benchmarks the whole schedule without a second GPU.
#pragma once

#include <spattn/config.hpp>
#include <spattn/error.hpp>
#include <spattn/pattern.hpp>
#include <spattn/tensor.hpp>

#include <array>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

typedef struct CUstream_st* CUstream;

namespace spattn {

enum class RingSharding { kContiguous, kZigzag };
const char* to_string(RingSharding sharding);
RingSharding ring_sharding_from_string(const std::string& name);  // "contiguous", "zigzag"; throws

// Moves device buffers between ranks. exchange() posts one step's sends and receives
// together on `stream` (none waits for another to be posted first, as in one NCCL group);
// they are complete, in stream order, when the stream reaches the point after it.
class RingTransport {
 public:
  struct Send {
    const void* data;
    size_t bytes;
    int peer;
  };
  struct Recv {
    void* data;
    size_t bytes;
    int peer;
  };
  virtual ~RingTransport() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  virtual std::string name() const = 0;  // "nccl", "loopback"
  virtual void exchange(const std::vector<Send>& sends, const std::vector<Recv>& recvs, CUstream stream) = 0;
};

// `world` virtual ranks in one process on one GPU. Each rank's transport is used from
// its own host thread (exchange blocks until the peers of the step have posted theirs;
// a peer missing for `timeout_s` seconds is an error naming both ranks, never a hang).
class LoopbackRing {
 public:
  explicit LoopbackRing(int world, double timeout_s = 120);
  ~LoopbackRing();
  std::shared_ptr<RingTransport> transport(int rank);
  int world() const;

  struct Hub;

 private:
  std::shared_ptr<Hub> hub_;
};

// NCCL: the standard bootstrap (rank 0 makes the id, every rank gets it, e.g. through
// torch.distributed, and creates its transport), or a communicator the caller owns
// (an ncclComm_t, passed as a pointer; it must outlive the transport). NCCL is loaded
// at run time (libnccl.so.2); without it these throw ErrorCode::kUnsupported.
struct NcclUniqueId {
  std::array<char, 128> bytes{};
};
NcclUniqueId nccl_unique_id();
std::shared_ptr<RingTransport> nccl_transport(const NcclUniqueId& id, int rank, int world, int device = -1);
std::shared_ptr<RingTransport> nccl_transport_from_comm(void* nccl_comm);

struct RingOptions {
  RingSharding sharding = RingSharding::kContiguous;
  float scale = 0;   // softmax scale; <= 0 means 1/sqrt(head_dim)
  int device = -1;   // CUDA device; -1: the device of the current context (else 0)
  std::optional<KernelConfig> config;  // force the kernel configuration of every shard pair
  // Record CUDA events around every step (RingTimings); costs a little host time.
  bool timing = false;
};

// What the last forward() did on this rank.
struct RingTimings {
  double total_ms = 0;    // forward() start to end on the stream
  double compute_ms = 0;  // shard-pair kernels and the final merge, summed
  double wait_ms = 0;     // time the compute stream stood waiting for a transfer
  int steps_computed = 0, steps_received = 0;
  size_t bytes_received = 0, bytes_sent = 0;
  std::string to_string() const;
};

class RingAttention {
 public:
  RingAttention(Pattern pattern, std::shared_ptr<RingTransport> transport, RingOptions options = {});
  ~RingAttention();
  RingAttention(RingAttention&&) noexcept;
  RingAttention& operator=(RingAttention&&) noexcept;

  // q, o: [B, n, Hq, D], k, v: [B, n, Hkv, D] — this rank's shard (n = N / world tokens,
  // k and v contiguous: they are sent as they are); lse [B, Hq, n] fp32 or null. Every
  // rank calls it with the same shapes. Asynchronous on `stream` (the transport may
  // block the host until the peers of a step have posted theirs). Virtual ranks of a
  // loopback ring each need their own stream (not the default one).
  void forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& o,
               const TensorView* lse = nullptr, CUstream stream = nullptr);

  // The plan of the last forward() on this rank: its shard, the shards it receives,
  // the shard pairs it computes, the kernel config.
  std::string explain() const;
  // Needs options.timing; synchronises the last forward's events.
  RingTimings timings() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace spattn
