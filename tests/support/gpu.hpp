// GPU test helpers: skip cleanly without a GPU, device tensors with random contents.
#pragma once

#include <gtest/gtest.h>

#include "runtime/driver.hpp"

// Skips the current test, with the reason, on a host without a usable NVIDIA GPU.
#define SPATTN_REQUIRE_GPU()                                                      \
  do {                                                                            \
    if (!::spattn::runtime::has_gpu())                                            \
      GTEST_SKIP() << "needs an NVIDIA GPU: " << ::spattn::runtime::no_gpu_reason(); \
  } while (0)
