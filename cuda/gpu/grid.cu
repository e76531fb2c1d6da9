// CUDA launchers of the grid family (entry points: cuda/csrc/grid.cpp): one thread per (ray, box) pair, per ray
// (traversal: a count pass, then a fill pass) or per cell id.
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

struct CountEmit {
  NA_HD void operator()(double, double) {}
};

// Writes the ray's samples into its slots [pos, end). The count pass and this pass run the same double-precision
// math (no FMA contraction, see build.py), so they emit the same samples; the bound keeps a ray from ever
// writing into its neighbour's slots regardless.
template <typename T>
struct WriteEmit {
  int64_t* rays;
  T* t0;
  T* t1;
  index_t pos;
  index_t end;
  int64_t ray;
  NA_HD void operator()(double a, double b) {
    if (pos >= end) return;
    rays[pos] = ray;
    t0[pos] = static_cast<T>(a);
    t1[pos] = static_cast<T>(b);
    ++pos;
  }
};

__global__ void traverse_count_kernel(const double* o, const double* d, const double* nearp, const double* farp,
                                      GridStack grid, double step, double cone, int64_t n, int64_t* counts) {
  NA_GRID_LOOP(r, n) {
    CountEmit emit;
    counts[r] = traverse_ray(o + 3 * r, d + 3 * r, nearp[r], farp[r], grid, step, cone, emit);
  }
}

template <typename T>
__global__ void traverse_fill_kernel(const double* o, const double* d, const double* nearp, const double* farp,
                                     GridStack grid, double step, double cone, int64_t n, const int64_t* ends,
                                     const int64_t* counts, int64_t* rays, T* t0, T* t1) {
  NA_GRID_LOOP(r, n) {
    if (counts[r] == 0) continue;
    WriteEmit<T> emit{rays, t0, t1, ends[r] - counts[r], ends[r], r};
    traverse_ray(o + 3 * r, d + 3 * r, nearp[r], farp[r], grid, step, cone, emit);
  }
}

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

Tensors3 traverse_grids_launch(const double* o, const double* d, const double* nearp, const double* farp,
                               const GridStack& grid, int64_t n, double step_size, double cone_angle,
                               const at::TensorOptions& out_opts) {
  auto counts = at::empty({n}, out_opts.dtype(at::kLong));
  NA_LAUNCH(traverse_count_kernel, n, o, d, nearp, farp, grid, step_size, cone_angle, n, counts.data_ptr<int64_t>());
  const auto ends = counts.cumsum(0);
  const int64_t total = ends[-1].item<int64_t>();
  auto ray_indices = at::empty({total}, out_opts.dtype(at::kLong));
  auto t_starts = at::empty({total}, out_opts);
  auto t_ends = at::empty({total}, out_opts);
  if (total > 0) {
    AT_DISPATCH_FLOATING_TYPES(t_starts.scalar_type(), "traverse_grids", [&] {
      NA_LAUNCH(traverse_fill_kernel<scalar_t>, n, o, d, nearp, farp, grid, step_size, cone_angle, n,
                ends.data_ptr<int64_t>(), counts.data_ptr<int64_t>(), ray_indices.data_ptr<int64_t>(),
                t_starts.data_ptr<scalar_t>(), t_ends.data_ptr<scalar_t>());
    });
  }
  return {ray_indices, t_starts, t_ends};
}

void grid_ema_update_launch(const Tensor& occs, const Tensor& cell_ids, const Tensor& values, double ema_decay,
                            Tensor& out) {
  const int64_t k = cell_ids.size(0), c = occs.size(0);
  // Index range check on the host, as the CPU launcher does (one device sync): a kernel cannot raise, and an
  // out-of-range index would otherwise be skipped on the GPU but an error on the CPU.
  const auto mm = at::stack({cell_ids.min(), cell_ids.max()}).cpu();
  TORCH_CHECK_VALUE(mm[0].item<int64_t>() >= 0 && mm[1].item<int64_t>() < c, "nerfaccel: cell_ids",
                    first_outside(cell_ids, c), " is outside [0, ", c, ")");
  AT_DISPATCH_FLOATING_TYPES(occs.scalar_type(), "grid_ema_update", [&] {
    NA_LAUNCH(ema_decay_kernel<scalar_t>, k, occs.data_ptr<scalar_t>(), cell_ids.data_ptr<int64_t>(), k, c,
              static_cast<scalar_t>(ema_decay), out.data_ptr<scalar_t>());
    NA_LAUNCH(ema_max_kernel<scalar_t>, k, occs.data_ptr<scalar_t>(), cell_ids.data_ptr<int64_t>(),
              values.data_ptr<scalar_t>(), k, c, out.data_ptr<scalar_t>());
  });
}

NA_NAMESPACE_END
