// OpenMP helpers of the CPU launchers (cuda/cpu/*.cpp).
#pragma once

#include <ATen/Parallel.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <cstdint>

#include "nerfaccel/common.h"

NA_NAMESPACE_BEGIN

// Below this many work items a parallel region costs more than it saves.
constexpr int64_t kParallelGrain = 2048;

inline int n_threads() { return std::max(1, at::get_num_threads()); }

// Calls fn(i) for i in [0, n): dynamic scheduling because rays differ in length.
template <typename F>
void parallel_rays(int64_t n, F fn) {
#pragma omp parallel for schedule(dynamic, 256) num_threads(n_threads()) if (n > kParallelGrain)
  for (int64_t i = 0; i < n; ++i) fn(i);
}

template <typename F>
void parallel_elems(int64_t n, F fn) {
#pragma omp parallel for schedule(static) num_threads(n_threads()) if (n > 8 * kParallelGrain)
  for (int64_t i = 0; i < n; ++i) fn(i);
}

// One call per block of work, blocks handed out one at a time.
template <typename F>
void parallel_blocks(int64_t n_blocks, bool parallel, F fn) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads()) if (parallel)
  for (int64_t b = 0; b < n_blocks; ++b) fn(b);
}

NA_NAMESPACE_END
