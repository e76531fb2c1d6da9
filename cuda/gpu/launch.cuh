// Launch helpers of the CUDA launchers (cuda/gpu/*.cu): grid-stride loops with 64-bit indices (counts beyond 2^31
// are safe) on the current stream; every launch is followed by C10_CUDA_KERNEL_LAUNCH_CHECK().
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ATen.h>

#include <algorithm>
#include <string>

#include "nerfaccel/common.h"

#if !defined(NERFACCEL_WITH_CUDA)
#error "the CUDA build must define NERFACCEL_WITH_CUDA (every translation unit: it selects the build's namespace)"
#endif

NA_NAMESPACE_BEGIN

constexpr int kThreads = 256;

inline int64_t n_blocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min<int64_t>(blocks, 65535 * 32));
}

#define NA_GRID_LOOP(i, n) \
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<index_t>(blockDim.x) * gridDim.x)

#define NA_LAUNCH(kernel, n, ...)                                                                      \
  do {                                                                                                 \
    if ((n) > 0) {                                                                                     \
      kernel<<<n_blocks(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(__VA_ARGS__);              \
      C10_CUDA_KERNEL_LAUNCH_CHECK();                                                                  \
    }                                                                                                  \
  } while (0)

// "[i] = v" for the first index outside [0, hi) (a host sync), for error messages: a kernel cannot raise.
inline std::string first_outside(const at::Tensor& ids, int64_t hi) {
  const auto bad = at::nonzero((ids < 0).logical_or(ids >= hi));
  const int64_t i = bad.size(0) > 0 ? bad[0][0].item<int64_t>() : -1;
  return "[" + std::to_string(i) + "] = " + std::to_string(i >= 0 ? ids[i].item<int64_t>() : 0);
}

NA_NAMESPACE_END
