// CPU launchers of the grid family (entry points: cuda/csrc/grid.cpp).
#include <torch/extension.h>

#include <algorithm>
#include <vector>

#include "nerfaccel/launch.h"
#include "parallel.h"

NA_NAMESPACE_BEGIN

void ray_aabb_intersect_launch(const Tensor& rays_o, const Tensor& rays_d, const Tensor& aabbs, double near_plane,
                               double far_plane, double miss_value, Tensor& t_mins, Tensor& t_maxs, Tensor& hits) {
  const int64_t m = aabbs.size(0);
  AT_DISPATCH_FLOATING_TYPES(rays_o.scalar_type(), "ray_aabb_intersect", [&] {
    const scalar_t* o = rays_o.data_ptr<scalar_t>();
    const scalar_t* d = rays_d.data_ptr<scalar_t>();
    const scalar_t* b = aabbs.data_ptr<scalar_t>();
    scalar_t* tmin = t_mins.data_ptr<scalar_t>();
    scalar_t* tmax = t_maxs.data_ptr<scalar_t>();
    bool* hit = hits.data_ptr<bool>();
    parallel_elems(t_mins.numel(), [&](int64_t i) {
      const int64_t r = i / m, j = i % m;
      ray_aabb_pair<scalar_t>(o + 3 * r, d + 3 * r, b + 6 * j, static_cast<scalar_t>(near_plane),
                              static_cast<scalar_t>(far_plane), static_cast<scalar_t>(miss_value), tmin[i], tmax[i],
                              hit[i]);
    });
  });
}

namespace {
struct PushEmit {
  std::vector<int64_t>* rays;
  std::vector<double>* t;  // t0, t1 interleaved
  int64_t ray;
  void operator()(double t0, double t1) {
    rays->push_back(ray);
    t->push_back(t0);
    t->push_back(t1);
  }
};
}  // namespace

Tensors3 traverse_grids_launch(const double* o, const double* d, const double* nearp, const double* farp,
                               const GridStack& grid, int64_t n, double step_size, double cone_angle,
                               const at::TensorOptions& out_opts) {
  // Contiguous blocks of rays, each filling its own buffers; concatenating the blocks in order keeps
  // the output sorted by ray.
  const int64_t n_blocks = std::min<int64_t>(n, static_cast<int64_t>(n_threads()) * 16);
  const int64_t per_block = (n + n_blocks - 1) / n_blocks;
  std::vector<std::vector<int64_t>> block_rays(n_blocks);
  std::vector<std::vector<double>> block_t(n_blocks);
  parallel_blocks(n_blocks, n > 256, [&](int64_t blk) {
    PushEmit emit{&block_rays[blk], &block_t[blk], 0};
    const int64_t r1 = std::min(n, (blk + 1) * per_block);
    for (int64_t r = blk * per_block; r < r1; ++r) {
      emit.ray = r;
      traverse_ray(o + 3 * r, d + 3 * r, nearp[r], farp[r], grid, step_size, cone_angle, emit);
    }
  });
  std::vector<int64_t> offsets(n_blocks + 1, 0);
  for (int64_t blk = 0; blk < n_blocks; ++blk) offsets[blk + 1] = offsets[blk] + block_rays[blk].size();
  const int64_t total = offsets[n_blocks];
  auto ray_indices = at::empty({total}, out_opts.dtype(at::kLong));
  auto t_starts = at::empty({total}, out_opts);
  auto t_ends = at::empty({total}, out_opts);
  AT_DISPATCH_FLOATING_TYPES(t_starts.scalar_type(), "traverse_grids", [&] {
    int64_t* ri = ray_indices.data_ptr<int64_t>();
    scalar_t* ts = t_starts.data_ptr<scalar_t>();
    scalar_t* te = t_ends.data_ptr<scalar_t>();
    parallel_blocks(n_blocks, total > kParallelGrain, [&](int64_t blk) {
      const int64_t base = offsets[blk];
      const auto& rs = block_rays[blk];
      const auto& tv = block_t[blk];
      for (size_t i = 0; i < rs.size(); ++i) {
        ri[base + i] = rs[i];
        ts[base + i] = static_cast<scalar_t>(tv[2 * i]);
        te[base + i] = static_cast<scalar_t>(tv[2 * i + 1]);
      }
    });
  });
  return {ray_indices, t_starts, t_ends};
}

void grid_ema_update_launch(const Tensor& occs, const Tensor& cell_ids, const Tensor& values, double ema_decay,
                            Tensor& out) {
  const int64_t k = cell_ids.size(0), c = occs.size(0);
  const int64_t* ids = cell_ids.data_ptr<int64_t>();
  int64_t bad = -1;
  AT_DISPATCH_FLOATING_TYPES(occs.scalar_type(), "grid_ema_update", [&] {
    const scalar_t* o = occs.data_ptr<scalar_t>();
    const scalar_t* v = values.data_ptr<scalar_t>();
    scalar_t* n = out.data_ptr<scalar_t>();
    const scalar_t decay = static_cast<scalar_t>(ema_decay);
    for (int64_t i = 0; i < k; ++i) {  // decay every visible sampled cell once
      const int64_t id = ids[i];
      if (id < 0 || id >= c) {
        bad = i;
        return;
      }
      if (o[id] >= scalar_t(0)) n[id] = o[id] * decay;
    }
    for (int64_t i = 0; i < k; ++i) {  // then a deterministic scatter-max
      const int64_t id = ids[i];
      if (o[id] >= scalar_t(0)) n[id] = nan_max(n[id], v[i]);
    }
  });
  TORCH_CHECK_VALUE(bad < 0, "nerfaccel: cell_ids[", bad, "] = ", bad >= 0 ? ids[bad] : 0, " is outside [0, ", c, ")");
}

NA_NAMESPACE_END
