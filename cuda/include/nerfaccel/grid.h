// Grid traversal of one ray (float64 positions, closed-form marching lattice).
//
// Written once for the host and the device (NA_HD). Semantics follow the pure-PyTorch reference in
// nerfaccel_plugin/_torch_impl.py, which is the source of truth. Running sums and products along a ray are kept in
// acc_t (double, common.h); per-sample values and outputs in the input type T.
#pragma once

#include "common.h"
#include "geometry.h"

NA_NAMESPACE_BEGIN

// ---------------------------------------------------------------------------------------------
// Grid traversal (float64 positions, closed-form marching lattice)
// ---------------------------------------------------------------------------------------------
struct Lattice {
  double near, step, cone, n_uniform, log1p_cone;

  NA_HD Lattice(double near_, double step_, double cone_) : near(near_), step(step_), cone(cone_) {
    if (cone > 0.0) {
      const double thresh = step / cone;
      n_uniform = na_max(ceil((thresh - near) / step), 0.0);
      log1p_cone = log1p(cone);
    } else {
      n_uniform = 0.0;
      log1p_cone = 0.0;
    }
  }

  // t_k: uniform steps up to the first point past step/cone, geometric growth after it.
  NA_HD double t(double k) const {
    if (cone <= 0.0) return near + k * step;
    const double t_uniform = near + na_min(k, n_uniform) * step;
    const double extra = na_max(k - n_uniform, 0.0);
    return t_uniform * pow(1.0 + cone, extra);
  }

  // Approximate (real-valued) inverse of t().
  NA_HD double k_of(double tv) const {
    if (cone <= 0.0) return (tv - near) / step;
    const double t_k = near + n_uniform * step;
    if (tv < t_k) return (tv - near) / step;
    return n_uniform + log(na_max(tv / t_k, 1e-30)) / log1p_cone;
  }

  NA_HD double mid(double k) const { return 0.5 * (t(k) + t(k + 1.0)); }

  // Smallest k >= 0 with mid(k) >= bound.
  NA_HD double first_mid_at_or_after(double bound) const {
    double k = floor(k_of(bound)) - 1.0;
    if (!(k > 0.0) || !isfinite(k)) k = 0.0;  // also catches NaN
    for (int it = 0; it < 64 && mid(k) < bound; ++it) k += 1.0;
    for (int it = 0; it < 64 && k > 0.0 && mid(k - 1.0) >= bound; ++it) k -= 1.0;
    return k;
  }
};

struct GridStack {
  const bool* binaries;  // [levels, rx, ry, rz]
  const double* aabbs;   // [levels, 6]
  int64_t levels, rx, ry, rz;

  // Occupancy of the cell holding x in the lowest-index level whose box contains x.
  NA_HD bool occupied(const double* x) const {
    const int64_t res[3] = {rx, ry, rz};
    for (int64_t l = 0; l < levels; ++l) {
      const double* box = aabbs + 6 * l;
      int64_t idx[3];
      bool inside = true;
      for (int a = 0; a < 3; ++a) {
        const double f = floor((x[a] - box[a]) / (box[a + 3] - box[a]) * static_cast<double>(res[a]));
        if (!(f >= 0.0 && f < static_cast<double>(res[a]))) {
          inside = false;
          break;
        }
        idx[a] = static_cast<int64_t>(f);
      }
      if (inside) return binaries[l * rx * ry * rz + (idx[0] * ry + idx[1]) * rz + idx[2]];
    }
    return false;
  }
};

// Marches one ray; calls emit(t0, t1) for each kept sample, in order. Returns the number kept.
template <typename Emit>
NA_HD int64_t traverse_ray(const double* o, const double* d, double near, double far, const GridStack& grid,
                           double step_size, double cone_angle, Emit& emit) {
  double lo = na_inf<double>(), hi = -na_inf<double>();
  for (int64_t l = 0; l < grid.levels; ++l) {
    double t_in, t_out;
    slab_interval(o, d, grid.aabbs + 6 * l, t_in, t_out);
    if (t_out > t_in && t_out > 0.0) {
      lo = na_min(lo, t_in);
      hi = na_max(hi, t_out);
    }
  }
  lo = nan_max(lo, near);
  hi = nan_min(hi, far);
  if (!(isfinite(lo) && hi > lo)) return 0;
  const Lattice lat(near, step_size, cone_angle);
  const double k_lo = lat.first_mid_at_or_after(lo);
  const double k_hi = lat.first_mid_at_or_after(hi);
  int64_t kept = 0;
  double t0 = lat.t(k_lo);
  for (double k = k_lo; k < k_hi; k += 1.0) {
    const double t1 = lat.t(k + 1.0);
    const double m = 0.5 * (t0 + t1);
    if (m >= lo && m < hi) {
      double x[3];
      for (int a = 0; a < 3; ++a) x[a] = o[a] + m * d[a];
      if (grid.occupied(x)) {
        emit(t0, t1);
        ++kept;
      }
    }
    t0 = t1;
  }
  return kept;
}

NA_NAMESPACE_END
