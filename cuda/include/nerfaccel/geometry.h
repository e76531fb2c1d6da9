// Ray / box geometry of one (ray, box) pair (ray_aabb_intersect; used by the grid traversal).
//
// Written once for the host and the device (NA_HD). Semantics follow the pure-PyTorch reference in
// nerfaccel_plugin/_torch_impl.py, which is the source of truth. Running sums and products along a ray are kept in
// acc_t (double, common.h); per-sample values and outputs in the input type T.
#pragma once

#include "common.h"

NA_NAMESPACE_BEGIN

// ---------------------------------------------------------------------------------------------
// Ray / box geometry
// ---------------------------------------------------------------------------------------------

// Unclipped slab interval of a ray through a box [lo(3), hi(3)]; a miss shows as t_in > t_out.
// Axis-parallel directions: (-inf, inf) on that axis when the origin is inside the closed extent,
// empty otherwise.
template <typename T>
NA_HD void slab_interval(const T* o, const T* d, const T* box, T& t_in, T& t_out) {
  T lo_all = -na_inf<T>();
  T hi_all = na_inf<T>();
  for (int a = 0; a < 3; ++a) {
    T near_ax, far_ax;
    if (d[a] == T(0)) {
      const bool inside = (o[a] >= box[a]) && (o[a] <= box[a + 3]);
      near_ax = inside ? -na_inf<T>() : na_inf<T>();
      far_ax = inside ? na_inf<T>() : -na_inf<T>();
    } else {
      const T t1 = (box[a] - o[a]) / d[a];
      const T t2 = (box[a + 3] - o[a]) / d[a];
      near_ax = nan_min(t1, t2);
      far_ax = nan_max(t1, t2);
    }
    lo_all = nan_max(lo_all, near_ax);
    hi_all = nan_min(hi_all, far_ax);
  }
  t_in = lo_all;
  t_out = hi_all;
}

// One (ray, box) pair of _ray_aabb_intersect.
template <typename T>
NA_HD void ray_aabb_pair(const T* o, const T* d, const T* box, T near_plane, T far_plane, T miss_value, T& t_min,
                         T& t_max, bool& hit) {
  T t_in, t_out;
  slab_interval(o, d, box, t_in, t_out);
  const T lo = (t_in != t_in) ? t_in : na_max(t_in, near_plane);
  const T hi = (t_out != t_out) ? t_out : na_min(t_out, far_plane);
  hit = (hi > lo) && (t_out > T(0));
  t_min = hit ? lo : miss_value;
  t_max = hit ? hi : miss_value;
}

NA_NAMESPACE_END
