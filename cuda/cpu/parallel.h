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

// Samples of batched rows below which one thread does a whole call: a parallel region (wake-up, join) costs
// several microseconds, more on a loaded machine, and a thread gets ~0.5 ns of work per sample.
constexpr int64_t kRowGrainSamples = 32768;

// Calls fn(b) for b in [0, n_blocks) of equal blocks of `block_items` items each: one contiguous range of blocks per
// thread (a static split, as at::parallel_for does; no per-block scheduling), one thread below kRowGrainSamples.
template <typename F>
void parallel_equal_blocks(int64_t n_blocks, int64_t block_items, F fn) {
  const int64_t grain = std::max<int64_t>(1, kRowGrainSamples / std::max<int64_t>(1, block_items));
  at::parallel_for(0, n_blocks, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) fn(b);
  });
}

// Calls fn(first_row, n_rows) for blocks of rows_per_block rows (n_rows is less only for the last block) of a batched
// layout with `stride` samples per row, in parallel (parallel_equal_blocks).
template <typename F>
void parallel_row_blocks(int64_t rows, int64_t stride, int64_t rows_per_block, F fn) {
  const int64_t n_blocks = (rows + rows_per_block - 1) / rows_per_block;
  parallel_equal_blocks(n_blocks, rows_per_block * stride, [&](int64_t b) {
    fn(b * rows_per_block, std::min(rows_per_block, rows - b * rows_per_block));
  });
}

// One call per block of work, blocks handed out one at a time.
template <typename F>
void parallel_blocks(int64_t n_blocks, bool parallel, F fn) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads()) if (parallel)
  for (int64_t b = 0; b < n_blocks; ++b) fn(b);
}

NA_NAMESPACE_END
