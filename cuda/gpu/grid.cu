// CUDA launchers of the grid family (entry points: cuda/csrc/grid.cpp): one thread per (ray, box) pair, per ray
// (traversal: one kernel for the count and the fill pass) or per cell id.
#include <c10/cuda/CUDAGuard.h>

#include "launch.cuh"
#include "nerfaccel/launch.h"

NA_NAMESPACE_BEGIN

namespace {

template <typename T>
__global__ void ray_aabb_kernel(const T* o, const T* d, const T* boxes, int64_t n, int64_t m, T near_plane,
                                T far_plane, T miss, T* tmin, T* tmax, bool* hit) {
  NA_GRID_LOOP(i, n * m) {
    const index_t r = i / m, j = i % m;
    ray_aabb_pair<T>(o + 3 * r, d + 3 * r, boxes + 6 * j, near_plane, far_plane, miss, tmin[i], tmax[i], hit[i]);
  }
}

// traverse_kernel (count and fill passes share one kernel): cuda/include/nerfaccel/traverse.h.

__device__ __forceinline__ void atomic_max(float* addr, float v) {
  int* a = reinterpret_cast<int*>(addr);
  int old = *a;
  while (true) {
    const float cur = __int_as_float(old);
    const float next = nan_max(cur, v);
    if (next == cur || (next != next && cur != cur)) return;
    const int seen = atomicCAS(a, old, __float_as_int(next));
    if (seen == old) return;
    old = seen;
  }
}

__device__ __forceinline__ void atomic_max(double* addr, double v) {
  unsigned long long* a = reinterpret_cast<unsigned long long*>(addr);
  unsigned long long old = *a;
  while (true) {
    const double cur = __longlong_as_double(static_cast<long long>(old));
    const double next = nan_max(cur, v);
    if (next == cur || (next != next && cur != cur)) return;
    const unsigned long long seen =
        atomicCAS(a, old, static_cast<unsigned long long>(__double_as_longlong(next)));
    if (seen == old) return;
    old = seen;
  }
}

template <typename T>
__global__ void ema_decay_kernel(const T* o, const int64_t* ids, int64_t k, int64_t c, T decay, T* out) {
  NA_GRID_LOOP(i, k) {
    const int64_t id = ids[i];
    if (id >= 0 && id < c && o[id] >= T(0)) out[id] = o[id] * decay;  // same value from every duplicate
  }
}

template <typename T>
__global__ void ema_max_kernel(const T* o, const int64_t* ids, const T* v, int64_t k, int64_t c, T* out) {
  NA_GRID_LOOP(i, k) {
    const int64_t id = ids[i];
    if (id >= 0 && id < c && o[id] >= T(0)) atomic_max(out + id, v[i]);
  }
}

}  // namespace

void ray_aabb_intersect_launch(const Tensor& rays_o, const Tensor& rays_d, const Tensor& aabbs, double near_plane,
                               double far_plane, double miss_value, Tensor& t_mins, Tensor& t_maxs, Tensor& hits) {
  const int64_t n = rays_o.size(0), m = aabbs.size(0);
  AT_DISPATCH_FLOATING_TYPES(rays_o.scalar_type(), "ray_aabb_intersect", [&] {
    NA_LAUNCH(ray_aabb_kernel<scalar_t>, n * m, rays_o.data_ptr<scalar_t>(), rays_d.data_ptr<scalar_t>(),
              aabbs.data_ptr<scalar_t>(), n, m, static_cast<scalar_t>(near_plane), static_cast<scalar_t>(far_plane),
              static_cast<scalar_t>(miss_value), t_mins.data_ptr<scalar_t>(), t_maxs.data_ptr<scalar_t>(),
              hits.data_ptr<bool>());
  });
}

// One kernel for both passes (traverse_kernel, traverse.h): count, cumsum, the one host sync (the output size),
// then fill with stores bounded by each ray's slot range.
Tensors3 traverse_grids_launch(const Tensor& o, const Tensor& d, const Tensor& near_planes, const Tensor& far_planes,
                               const Tensor& binaries, const Tensor& aabbs, double step_size, double cone_angle,
                               const at::TensorOptions& out_opts) {
  const int64_t n = o.size(0);
  auto counts = at::empty({n}, out_opts.dtype(at::kLong));
  Tensor ray_indices, t_starts, t_ends;
  AT_DISPATCH_FLOATING_TYPES(o.scalar_type(), "traverse_grids", [&] {
    using T = scalar_t;
    const TravGrid<T> grid{binaries.data_ptr<bool>(), aabbs.data_ptr<T>(), static_cast<int32_t>(binaries.size(0)),
                           {static_cast<int32_t>(binaries.size(1)), static_cast<int32_t>(binaries.size(2)),
                            static_cast<int32_t>(binaries.size(3))},
                           nullptr};  // no coarse blocks: traverse_kernel marches without run skipping (traverse.h)
    const T step = static_cast<T>(step_size), cone = static_cast<T>(cone_angle);
    NA_LAUNCH(traverse_kernel<T>, n, o.data_ptr<T>(), d.data_ptr<T>(), near_planes.data_ptr<T>(),
              far_planes.data_ptr<T>(), grid, step, cone, n, static_cast<const int64_t*>(nullptr),
              counts.data_ptr<int64_t>(), static_cast<int64_t*>(nullptr), static_cast<T*>(nullptr),
              static_cast<T*>(nullptr));
    const auto ends = counts.cumsum(0);
    const int64_t total = ends[-1].item<int64_t>();  // the one host sync: the output size
    ray_indices = at::empty({total}, out_opts.dtype(at::kLong));
    t_starts = at::empty({total}, out_opts);
    t_ends = at::empty({total}, out_opts);
    if (total > 0) {
      NA_LAUNCH(traverse_kernel<T>, n, o.data_ptr<T>(), d.data_ptr<T>(), near_planes.data_ptr<T>(),
                far_planes.data_ptr<T>(), grid, step, cone, n, ends.data_ptr<int64_t>(), counts.data_ptr<int64_t>(),
                ray_indices.data_ptr<int64_t>(), t_starts.data_ptr<T>(), t_ends.data_ptr<T>());
    }
  });
  return {ray_indices, t_starts, t_ends};
}

void grid_ema_update_launch(const Tensor& occs, const Tensor& cell_ids, const Tensor& values, double ema_decay,
                            Tensor& out) {
  const int64_t k = cell_ids.size(0), c = occs.size(0);
  // No host-side range check here (it would sync every grid update): the kernels skip out-of-range ids, and the
  // Python kernel call checks the range when the value checks are on (nerfaccel_plugin/_ops.py::_grid_ema_update).
  AT_DISPATCH_FLOATING_TYPES(occs.scalar_type(), "grid_ema_update", [&] {
    NA_LAUNCH(ema_decay_kernel<scalar_t>, k, occs.data_ptr<scalar_t>(), cell_ids.data_ptr<int64_t>(), k, c,
              static_cast<scalar_t>(ema_decay), out.data_ptr<scalar_t>());
    NA_LAUNCH(ema_max_kernel<scalar_t>, k, occs.data_ptr<scalar_t>(), cell_ids.data_ptr<int64_t>(),
              values.data_ptr<scalar_t>(), k, c, out.data_ptr<scalar_t>());
  });
}

NA_NAMESPACE_END
