// CPU launchers of the hash family (entry points: cuda/csrc/hash.cpp): OpenMP over points (forward, x gradient)
// and over levels (table gradient: levels own disjoint parts of the table, so no atomics and deterministic sums).
#include <ATen/ATen.h>

#include "nerfaccel/hash.h"
#include "nerfaccel/launch.h"
#include "parallel.h"

NA_NAMESPACE_BEGIN

void hash_encode_fwd_launch(const Tensor& x, const Tensor& table, const Tensor& scales, int64_t table_size,
                            Tensor& out) {
  const int64_t n = x.size(0), levels = scales.size(0), F = table.size(1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hash_encode_fwd", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* tb = table.data_ptr<scalar_t>();
    const scalar_t* sc = scales.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    parallel_rays(n, [&](int64_t i) {
      for (int64_t l = 0; l < levels; ++l) {
        hash_encode_fwd_level(px + 3 * i, sc[l], tb, table_size, l, F, po + (i * levels + l) * F);
      }
    });
  });
}

void hash_encode_bwd_launch(const Tensor& grad_out, const Tensor& x, const Tensor& table, const Tensor& scales,
                            int64_t table_size, Tensor& g_table, Tensor& g_x) {
  const int64_t n = x.size(0), levels = scales.size(0), F = table.size(1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hash_encode_bwd", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* tb = table.data_ptr<scalar_t>();
    const scalar_t* sc = scales.data_ptr<scalar_t>();
    const scalar_t* go = grad_out.data_ptr<scalar_t>();
    scalar_t* gt = g_table.data_ptr<scalar_t>();
    parallel_blocks(levels, n * levels > kParallelGrain, [&](int64_t l) {
      int64_t rows[8];
      scalar_t w[8];
      for (int64_t i = 0; i < n; ++i) {
        hash_level_corners<scalar_t>(px + 3 * i, sc[l], table_size, l, rows, w, nullptr);
        const scalar_t* g = go + (i * levels + l) * F;
        for (int k = 0; k < 8; ++k) {
          for (int64_t c = 0; c < F; ++c) gt[rows[k] * F + c] += w[k] * g[c];
        }
      }
    });
    if (g_x.numel() > 0) {
      scalar_t* gx = g_x.data_ptr<scalar_t>();
      parallel_rays(n, [&](int64_t i) {
        for (int64_t l = 0; l < levels; ++l) {
          hash_encode_bwd_x_level(px + 3 * i, sc[l], tb, table_size, l, F, go + (i * levels + l) * F, gx + 3 * i);
        }
      });
    }
  });
}

NA_NAMESPACE_END
