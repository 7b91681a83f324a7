// Ring transports: the loopback hub (virtual ranks of one process, one thread each) and
// NCCL, loaded at run time so that libspattn never needs libnccl to load.
#include <spattn/ring.hpp>

#include <dlfcn.h>
#include <fmt/format.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include "common/check.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"

#ifdef SPATTN_HAVE_NCCL
#include <nccl.h>
#endif

namespace spattn {

// ---- loopback ----------------------------------------------------------------------

// A posted send waits in the hub, keyed by (source, destination, sequence number of that
// pair), until its receiver copies it; the receiver leaves an event that marks the copy's
// end in its stream, which the sender's stream then waits on (the send is complete when
// the data has arrived, as with NCCL).
struct LoopbackRing::Hub {
  struct Posted {
    const void* data = nullptr;
    size_t bytes = 0;
    CUevent ready = nullptr;  // the sender's stream at the post
    CUevent done = nullptr;   // the receiver's stream after the copy
    bool copied = false;
  };
  using Key = std::tuple<int, int, uint64_t>;

  int world;
  double timeout_s;
  std::mutex mu;
  std::condition_variable cv;
  std::map<Key, Posted> posted;
  std::vector<std::vector<uint64_t>> sent, received;  // [src][dst] sequence numbers

  Hub(int w, double t) : world(w), timeout_s(t) {
    sent.assign(w, std::vector<uint64_t>(w, 0));
    received.assign(w, std::vector<uint64_t>(w, 0));
  }

  // Waits on `lock` until `ready` holds; throws (naming what) after the timeout.
  template <class F>
  void wait_for(std::unique_lock<std::mutex>& lock, F ready, const std::string& what) {
    if (!cv.wait_for(lock, std::chrono::duration<double>(timeout_s), ready))
      SPATTN_FAIL(ErrorCode::kInternal, "loopback ring: {} for more than {:.0f} s (every rank must call forward() "
                  "with the same problem from its own thread)", what, timeout_s);
  }
};

namespace {

CUevent new_event() {
  CUevent e = nullptr;
  SPATTN_CU_CHECK(cuEventCreate(&e, CU_EVENT_DISABLE_TIMING));
  return e;
}

class LoopbackTransport final : public RingTransport {
 public:
  LoopbackTransport(std::shared_ptr<LoopbackRing::Hub> hub, int rank) : hub_(std::move(hub)), rank_(rank) {}
  int rank() const override { return rank_; }
  int world() const override { return hub_->world; }
  std::string name() const override { return "loopback"; }

  void exchange(const std::vector<Send>& sends, const std::vector<Recv>& recvs, CUstream stream) override {
    using Hub = LoopbackRing::Hub;
    Hub& h = *hub_;
    for (const Send& s : sends) check_peer(s.peer, "send to");
    for (const Recv& r : recvs) check_peer(r.peer, "receive from");
    std::vector<Hub::Key> mine;
    runtime::Event ready;  // receivers wait on it before this call returns
    if (!sends.empty()) {
      ready.record(stream);
      std::lock_guard<std::mutex> lock(h.mu);
      for (const Send& s : sends) {
        const Hub::Key key{rank_, s.peer, h.sent[rank_][s.peer]++};
        Hub::Posted p;
        p.data = s.data;
        p.bytes = s.bytes;
        p.ready = ready.get();
        h.posted.emplace(key, p);
        mine.push_back(key);
      }
      h.cv.notify_all();
    }
    for (const Recv& r : recvs) {
      std::unique_lock<std::mutex> lock(h.mu);
      const Hub::Key key{r.peer, rank_, h.received[r.peer][rank_]++};
      h.wait_for(lock, [&] { return h.posted.count(key) > 0; },
                 fmt::format("rank {} waited for a send from rank {}", rank_, r.peer));
      Hub::Posted& p = h.posted.at(key);
      SPATTN_REQUIRE(p.bytes == r.bytes, "loopback ring: rank {} sends {} bytes, rank {} expects {}", r.peer, p.bytes,
                     rank_, r.bytes);
      SPATTN_CU_CHECK(cuStreamWaitEvent(stream, p.ready, 0));
      SPATTN_CU_CHECK(cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(r.data), reinterpret_cast<CUdeviceptr>(p.data),
                                        r.bytes, stream));
      p.done = new_event();
      SPATTN_CU_CHECK(cuEventRecord(p.done, stream));
      p.copied = true;
      h.cv.notify_all();
    }
    // Sends complete when their receivers have copied them.
    for (const Hub::Key& key : mine) {
      std::unique_lock<std::mutex> lock(h.mu);
      h.wait_for(lock, [&] { return h.posted.at(key).copied; },
                 fmt::format("rank {} waited for rank {} to receive its send", rank_, std::get<1>(key)));
      Hub::Posted p = h.posted.at(key);
      h.posted.erase(key);
      lock.unlock();
      SPATTN_CU_CHECK(cuStreamWaitEvent(stream, p.done, 0));
      runtime::driver().cuEventDestroy(p.done);  // released once it has completed
    }
  }

 private:
  void check_peer(int peer, const char* what) const {
    SPATTN_REQUIRE(peer >= 0 && peer < hub_->world && peer != rank_, "loopback ring: rank {} cannot {} rank {} "
                   "(ranks 0..{}, not itself)", rank_, what, peer, hub_->world - 1);
  }

  std::shared_ptr<LoopbackRing::Hub> hub_;
  int rank_;
};

}  // namespace

LoopbackRing::LoopbackRing(int world, double timeout_s) {
  SPATTN_REQUIRE(world >= 1 && world <= 1024, "loopback ring: world must be in [1, 1024] (got {})", world);
  SPATTN_REQUIRE(timeout_s > 0, "loopback ring: the timeout must be positive (got {})", timeout_s);
  hub_ = std::make_shared<Hub>(world, timeout_s);
}
LoopbackRing::~LoopbackRing() = default;
int LoopbackRing::world() const { return hub_->world; }

std::shared_ptr<RingTransport> LoopbackRing::transport(int rank) {
  SPATTN_REQUIRE(rank >= 0 && rank < hub_->world, "loopback ring: rank {} is not in [0, {})", rank, hub_->world);
  return std::make_shared<LoopbackTransport>(hub_, rank);
}

// ---- NCCL ----------------------------------------------------------------------------

#ifdef SPATTN_HAVE_NCCL
namespace {

// The entry points spattn uses, resolved once from libnccl.so.2.
struct Nccl {
  ncclResult_t (*GetUniqueId)(ncclUniqueId*) = nullptr;
  ncclResult_t (*CommInitRank)(ncclComm_t*, int, ncclUniqueId, int) = nullptr;
  ncclResult_t (*CommDestroy)(ncclComm_t) = nullptr;
  ncclResult_t (*CommCount)(const ncclComm_t, int*) = nullptr;
  ncclResult_t (*CommUserRank)(const ncclComm_t, int*) = nullptr;
  ncclResult_t (*Send)(const void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t) = nullptr;
  ncclResult_t (*Recv)(void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t) = nullptr;
  ncclResult_t (*GroupStart)() = nullptr;
  ncclResult_t (*GroupEnd)() = nullptr;
  const char* (*GetErrorString)(ncclResult_t) = nullptr;
  std::string error;  // why it could not be loaded

  static const Nccl& get() {
    static const Nccl n = load();
    if (!n.error.empty()) SPATTN_FAIL(ErrorCode::kUnsupported, "NCCL transport: {}", n.error);
    return n;
  }

 private:
  static Nccl load() {
    Nccl n;
    void* lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!lib) lib = dlopen("libnccl.so", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* e = dlerror();
      n.error = fmt::format("cannot load libnccl.so.2 ({}); install NCCL or put it on LD_LIBRARY_PATH", e ? e : "?");
      return n;
    }
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (!fn && n.error.empty()) n.error = fmt::format("libnccl.so.2 has no {}", name);
    };
    sym(n.GetUniqueId, "ncclGetUniqueId");
    sym(n.CommInitRank, "ncclCommInitRank");
    sym(n.CommDestroy, "ncclCommDestroy");
    sym(n.CommCount, "ncclCommCount");
    sym(n.CommUserRank, "ncclCommUserRank");
    sym(n.Send, "ncclSend");
    sym(n.Recv, "ncclRecv");
    sym(n.GroupStart, "ncclGroupStart");
    sym(n.GroupEnd, "ncclGroupEnd");
    sym(n.GetErrorString, "ncclGetErrorString");
    return n;
  }
};

void nccl_check(ncclResult_t r, const char* what) {
  if (r != ncclSuccess)
    SPATTN_FAIL(ErrorCode::kCuda, "NCCL {} failed: {} ({})", what, Nccl::get().GetErrorString(r), static_cast<int>(r));
}

class NcclTransport final : public RingTransport {
 public:
  NcclTransport(ncclComm_t comm, bool owned) : comm_(comm), owned_(owned) {
    const Nccl& n = Nccl::get();
    nccl_check(n.CommCount(comm_, &world_), "ncclCommCount");
    nccl_check(n.CommUserRank(comm_, &rank_), "ncclCommUserRank");
  }
  ~NcclTransport() override {
    if (owned_) Nccl::get().CommDestroy(comm_);
  }
  int rank() const override { return rank_; }
  int world() const override { return world_; }
  std::string name() const override { return "nccl"; }
  void exchange(const std::vector<Send>& sends, const std::vector<Recv>& recvs, CUstream stream) override {
    if (sends.empty() && recvs.empty()) return;
    const Nccl& n = Nccl::get();
    auto s = reinterpret_cast<cudaStream_t>(stream);
    nccl_check(n.GroupStart(), "ncclGroupStart");
    for (const Send& x : sends) nccl_check(n.Send(x.data, x.bytes, ncclUint8, x.peer, comm_, s), "ncclSend");
    for (const Recv& x : recvs) nccl_check(n.Recv(x.data, x.bytes, ncclUint8, x.peer, comm_, s), "ncclRecv");
    nccl_check(n.GroupEnd(), "ncclGroupEnd");
  }

 private:
  ncclComm_t comm_;
  bool owned_;
  int world_ = 0, rank_ = 0;
};

}  // namespace

NcclUniqueId nccl_unique_id() {
  static_assert(sizeof(ncclUniqueId) == sizeof(NcclUniqueId::bytes));
  ncclUniqueId id;
  nccl_check(Nccl::get().GetUniqueId(&id), "ncclGetUniqueId");
  NcclUniqueId out;
  std::memcpy(out.bytes.data(), &id, sizeof id);
  return out;
}

std::shared_ptr<RingTransport> nccl_transport(const NcclUniqueId& id, int rank, int world, int device) {
  SPATTN_REQUIRE(world >= 1 && rank >= 0 && rank < world, "NCCL transport: rank {} must be in [0, world {})", rank,
                 world);
  const Nccl& n = Nccl::get();
  runtime::make_current(device >= 0 ? device : runtime::current_device());
  ncclUniqueId raw;
  std::memcpy(&raw, id.bytes.data(), sizeof raw);
  ncclComm_t comm = nullptr;
  nccl_check(n.CommInitRank(&comm, world, raw, rank), "ncclCommInitRank");
  return std::make_shared<NcclTransport>(comm, true);
}

std::shared_ptr<RingTransport> nccl_transport_from_comm(void* comm) {
  SPATTN_REQUIRE(comm != nullptr, "NCCL transport: the communicator is null");
  return std::make_shared<NcclTransport>(static_cast<ncclComm_t>(comm), false);
}

#else  // built without nccl.h

NcclUniqueId nccl_unique_id() {
  SPATTN_FAIL(ErrorCode::kUnsupported, "NCCL transport: this libspattn was built without NCCL (nccl.h not found)");
}
std::shared_ptr<RingTransport> nccl_transport(const NcclUniqueId&, int, int, int) { return (nccl_unique_id(), nullptr); }
std::shared_ptr<RingTransport> nccl_transport_from_comm(void*) { return (nccl_unique_id(), nullptr); }

#endif

}  // namespace spattn
