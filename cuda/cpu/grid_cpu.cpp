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
// Appends a block's samples to its own buffers (the CPU march is single-pass: no count pass to disagree with).
template <typename T>
struct PushEmit {
  std::vector<int64_t>* rays;
  std::vector<T>* t;  // t0, t1 interleaved
  int64_t ray;
  void operator()(T t0, T t1) {
    rays->push_back(ray);
    t->push_back(t0);
    t->push_back(t1);
  }
};

template <typename T>
TravGrid<T> trav_grid(const Tensor& binaries, const Tensor& aabbs) {
  return TravGrid<T>{binaries.data_ptr<bool>(), aabbs.data_ptr<T>(), static_cast<int32_t>(binaries.size(0)),
                     {static_cast<int32_t>(binaries.size(1)), static_cast<int32_t>(binaries.size(2)),
                      static_cast<int32_t>(binaries.size(3))}};
}
}  // namespace

// One march per ray (traverse.h), in the rays' precision, single pass: contiguous blocks of rays each append to
// their own buffers, concatenated in block order (output sorted by ray, then t).
Tensors3 traverse_grids_launch(const Tensor& o_t, const Tensor& d_t, const Tensor& near_planes,
                               const Tensor& far_planes, const Tensor& binaries, const Tensor& aabbs,
                               double step_size, double cone_angle, const at::TensorOptions& out_opts) {
  const int64_t n = o_t.size(0);
  Tensor ray_indices, t_starts, t_ends;
  AT_DISPATCH_FLOATING_TYPES(o_t.scalar_type(), "traverse_grids", [&] {
    using T = scalar_t;
    const TravGrid<T> grid = trav_grid<T>(binaries, aabbs);
    const T* o = o_t.data_ptr<T>();
    const T* d = d_t.data_ptr<T>();
    const T* nearp = near_planes.data_ptr<T>();
    const T* farp = far_planes.data_ptr<T>();
    const T step = static_cast<T>(step_size), cone = static_cast<T>(cone_angle);
    const int64_t n_blocks = std::min<int64_t>(n, static_cast<int64_t>(n_threads()) * 16);
    const int64_t per_block = (n + n_blocks - 1) / n_blocks;
    std::vector<std::vector<int64_t>> block_rays(n_blocks);
    std::vector<std::vector<T>> block_t(n_blocks);
    parallel_blocks(n_blocks, n > 256, [&](int64_t blk) {
      PushEmit<T> emit{&block_rays[blk], &block_t[blk], 0};
      NoStats stats;
      const int64_t r1 = std::min(n, (blk + 1) * per_block);
      for (int64_t r = blk * per_block; r < r1; ++r) {
        emit.ray = r;
        traverse_ray(o + 3 * r, d + 3 * r, nearp[r], farp[r], grid, step, cone, emit, stats);
      }
    });
    std::vector<int64_t> offsets(n_blocks + 1, 0);
    for (int64_t blk = 0; blk < n_blocks; ++blk) offsets[blk + 1] = offsets[blk] + block_rays[blk].size();
    const int64_t total = offsets[n_blocks];
    ray_indices = at::empty({total}, out_opts.dtype(at::kLong));
    t_starts = at::empty({total}, out_opts);
    t_ends = at::empty({total}, out_opts);
    int64_t* ri = ray_indices.data_ptr<int64_t>();
    T* ts = t_starts.data_ptr<T>();
    T* te = t_ends.data_ptr<T>();
    parallel_blocks(n_blocks, total > kParallelGrain, [&](int64_t blk) {
      const int64_t base = offsets[blk];
      const auto& rs = block_rays[blk];
      const auto& tv = block_t[blk];
      for (size_t i = 0; i < rs.size(); ++i) {
        ri[base + i] = rs[i];
        ts[base + i] = tv[2 * i];
        te[base + i] = tv[2 * i + 1];
      }
    });
  });
  return {ray_indices, t_starts, t_ends};
}

void traverse_grids_visits_launch(const Tensor& o_t, const Tensor& d_t, const Tensor& near_planes,
                                  const Tensor& far_planes, const Tensor& binaries, const Tensor& aabbs,
                                  double step_size, double cone_angle, Tensor& visits) {
  const int64_t n = o_t.size(0);
  int64_t* v = visits.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(o_t.scalar_type(), "traverse_grids_visits", [&] {
    using T = scalar_t;
    const TravGrid<T> grid = trav_grid<T>(binaries, aabbs);
    const T* o = o_t.data_ptr<T>();
    const T* d = d_t.data_ptr<T>();
    const T* nearp = near_planes.data_ptr<T>();
    const T* farp = far_planes.data_ptr<T>();
    parallel_rays(n, [&](int64_t r) {
      SlotEmit<T> emit{nullptr, nullptr, nullptr, 0, 0, r, false};  // count only
      VisitStats stats;
      traverse_ray(o + 3 * r, d + 3 * r, nearp[r], farp[r], grid, static_cast<T>(step_size),
                   static_cast<T>(cone_angle), emit, stats);
      v[r] = stats.visits;
    });
  });
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
