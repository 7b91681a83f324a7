// Everything of spattn's C++ API in one include.
#pragma once

#include <spattn/adaptive.hpp>
#include <spattn/varlen.hpp>
#include <spattn/attention.hpp>
#include <spattn/autotune.hpp>
#include <spattn/cache.hpp>
#include <spattn/config.hpp>
#include <spattn/error.hpp>
#include <spattn/layout.hpp>
#include <spattn/linear.hpp>
#include <spattn/pattern.hpp>
#include <spattn/reference.hpp>
#include <spattn/tensor.hpp>
