// What building one layout may cost: host memory and host work (internal to patterns/).
// The limits are in patterns/limits.hpp; compile_layout() charges every allocation of
// the tables, token orders and schedule, and every row operation, to one budget and
// stops with a message that says what to change as soon as either runs out.
#pragma once

#include <cstdint>
#include <string>

#include <spattn/layout.hpp>

#pragma GCC visibility push(hidden)
namespace spattn::detail {

class LayoutBudget {
 public:
  // Limits from the options (0: SPATTN_LAYOUT_MAX_BYTES / SPATTN_LAYOUT_MAX_WORK, else
  // the defaults of limits.hpp). Throws kInvalidArgument for a malformed variable.
  LayoutBudget(const LayoutOptions& options, const Shape& shape);

  // `units` more row operations (a key interval produced, a key visited).
  void spend(uint64_t units) {
    work_ += units;
    if (work_ > max_work_) fail_work();
  }
  // `bytes` more held by the layout or its scratch (`what` names them in the message).
  void hold(uint64_t bytes, const char* what) {
    bytes_ += bytes;
    if (bytes_ > max_bytes_ || bytes_ < bytes) fail_bytes(what);
  }
  void release(uint64_t bytes) { bytes_ -= bytes < bytes_ ? bytes : bytes_; }
  // Throws now if `units` more row operations or `bytes` more memory would not fit.
  void check_projection(uint64_t units, uint64_t bytes, const char* what) const {
    if (units > max_work_ - (work_ < max_work_ ? work_ : max_work_)) fail_work();
    check_scratch(bytes, what);
  }
  // Whether `bytes` of scratch would fit next to what is held; throws if not.
  void check_scratch(uint64_t bytes, const char* what) const {
    if (bytes > max_bytes_ - (bytes_ < max_bytes_ ? bytes_ : max_bytes_)) fail_bytes(what);
  }

  // What is being built, for messages ("the longnet part").
  void set_context(std::string context) { context_ = std::move(context); }
  const std::string& context() const { return context_; }

  uint64_t work() const { return work_; }
  uint64_t bytes() const { return bytes_; }
  uint64_t max_work() const { return max_work_; }
  uint64_t max_bytes() const { return max_bytes_; }

 private:
  [[noreturn]] void fail_work() const;
  [[noreturn]] void fail_bytes(const char* what) const;
  std::string problem() const;

  Shape shape_;
  int64_t tile_m_, tile_n_;
  uint64_t max_work_, max_bytes_;
  uint64_t work_ = 0, bytes_ = 0;
  std::string context_;
};

}  // namespace spattn::detail
#pragma GCC visibility pop
