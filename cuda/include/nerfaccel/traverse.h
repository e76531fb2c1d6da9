// Occupancy-grid traversal, written once for the host and the device, in the rays' own precision T.
//
// The rule (nerfaccel_plugin/_torch_impl.py::_traverse_grids is the source of truth, docs/traversal.md states how
// far a float32 evaluation may differ from it): each ray marches the closed-form lattice t_k anchored at its near
// value; sample k = [t_k, t_{k+1}] is kept when its midpoint m_k lies in [lo, hi) (the union of the levels' boxes
// clipped to near/far) and x = o + m_k d falls in an occupied cell of the lowest-index level whose box holds x.
//
// Speed: every lattice point is evaluated in T (float for float32 rays: no FP64 instruction in that
// instantiation), and a run of empty cells is crossed in one jump: from a sample whose cell is empty, a DDA walks
// the cells of that level along the ray until the first occupied cell (or the level's box, a finer level's box, or
// the end of the ray), and the march continues at the first lattice point whose midpoint lies past that point
// minus a safety margin (a few ulps of the positions involved, see skip_margin). The lattice keeps its closed form,
// so a jump never shifts the samples after it; samples are still only emitted after their own cell lookup, so a
// jump can only change the output for a midpoint within the margin of a cell face.
//
// Count and fill cannot disagree: both go through the one function traverse_ray with a SlotEmit, whose `write`
// flag only decides whether the sample is stored (and stores are bounded by the ray's slot range); the march itself
// is the same instruction stream in both passes.
#pragma once

#include <cstring>
#include <type_traits>

#include "common.h"
#include "geometry.h"

NA_NAMESPACE_BEGIN

template <typename T>
struct TravEps;
template <>
struct TravEps<float> {
  static NA_HD float value() { return 5.9604645e-08f; }  // 2^-24
};
template <>
struct TravEps<double> {
  static NA_HD double value() { return 1.1102230246251565e-16; }  // 2^-53
};

// Lattice indices are int32 and capped at kMaxLatticeIndex (2^30 steps along one ray: far beyond any real march).
constexpr int32_t kMaxLatticeIndex = 1 << 30;

// t_k = near + k step while below step / cone (the first n_uniform steps), then t_K (1 + cone)^(k - K).
// float32: (1 + cone)^j is taken as exp(j log1p(cone)) (relative error ~ (2 j log1p(cone) + 2) ulp, no drift
// with j); float64 keeps pow, as the reference does.
template <typename T>
struct TravLattice {
  T near, step, cone, t_K, log1p_cone;
  int32_t n_uniform;

  NA_HD TravLattice(T near_, T step_, T cone_) : near(near_), step(step_), cone(cone_) {
    n_uniform = 0;
    t_K = near;
    log1p_cone = T(0);
    if (cone > T(0)) {
      const T thresh = step / cone;
      const T nu = na_max(na_ceil((thresh - near) / step), T(0));
      n_uniform = na_isfinite(nu) ? static_cast<int32_t>(na_min(nu, T(kMaxLatticeIndex))) : 0;
      t_K = near + static_cast<T>(n_uniform) * step;
      log1p_cone = na_log1p(cone);
    }
  }

  NA_HD T geom(int32_t extra) const;

  NA_HD T t(int32_t k) const {
    if (!(cone > T(0)) || k <= n_uniform) return near + static_cast<T>(k) * step;
    return t_K * geom(k - n_uniform);
  }

  // Real-valued approximate inverse of t().
  NA_HD T k_of(T tv) const {
    if (!(cone > T(0)) || tv < t_K) return (tv - near) / step;
    return static_cast<T>(n_uniform) + na_log(na_max(tv / t_K, T(1e-30))) / log1p_cone;
  }

  NA_HD T mid(int32_t k) const { return T(0.5) * (t(k) + t(k + 1)); }

  // Smallest k >= 0 with mid(k) >= bound (evaluated in T).
  NA_HD int32_t first_mid_at_or_after(T bound) const {
    // mid(k) ~ bound at k ~ k_of(bound) - 1/2: start at its floor (truncation, taken only when positive), then
    // correct by steps.
    const T kf = k_of(bound) - T(0.5);
    int32_t k = 0;
    if (kf > T(0) && na_isfinite(kf)) k = static_cast<int32_t>(na_min(kf, T(kMaxLatticeIndex)));
    for (int it = 0; it < 64 && mid(k) < bound; ++it) ++k;
    for (int it = 0; it < 64 && k > 0 && mid(k - 1) >= bound; ++it) --k;
    return k;
  }
};

template <>
NA_HD float TravLattice<float>::geom(int32_t extra) const {
  return expf(static_cast<float>(extra) * log1p_cone);
}
template <>
NA_HD double TravLattice<double>::geom(int32_t extra) const {
  return pow(1.0 + cone, static_cast<double>(extra));
}

// Side of the coarse blocks of the occupancy grids, in cells: the DDA crosses a block with no occupied cell in one
// step instead of up to 3 * kCoarse steps.
constexpr int32_t kCoarse = 8;
static_assert((kCoarse & (kCoarse - 1)) == 0, "kCoarse is a power of two");

// The stack of occupancy grids, level l covering aabbs[l] with rx * ry * rz cells, and optionally its coarse
// blocks: coarse[l, bi, bj, bk] is true when any cell of level l with (i, j, k) / kCoarse == (bi, bj, bk) is
// occupied (built per call by coarse_block_any; nullptr: no block skipping, the result is the same).
template <typename T>
struct TravGrid {
  const bool* binaries;  // [levels, rx, ry, rz]
  const T* aabbs;        // [levels, 6]
  int32_t levels, res[3];
  const bool* coarse;  // [levels, cres[0], cres[1], cres[2]] or nullptr

  NA_HD bool cell(int32_t l, int32_t i, int32_t j, int32_t k) const {
    return binaries[static_cast<int64_t>(l) * res[0] * res[1] * res[2] + (static_cast<int64_t>(i) * res[1] + j) * res[2] +
                    k];
  }
  NA_HD int32_t coarse_res(int a) const { return (res[a] + kCoarse - 1) / kCoarse; }
  // Whether the block holding cell (i, j, k) >= 0 of level l has an occupied cell (true without blocks).
  NA_HD bool block(int32_t l, int32_t i, int32_t j, int32_t k) const {
    if (coarse == nullptr) return true;
    const int32_t bi = i / kCoarse, bj = j / kCoarse, bk = k / kCoarse;
    return coarse[((static_cast<int64_t>(l) * coarse_res(0) + bi) * coarse_res(1) + bj) * coarse_res(2) + bk];
  }

  // Lowest-index level whose box holds x (returns -1 for none) and x's cell in it, as the reference computes it:
  // floor(f) with f = (x - lo) / (hi - lo) * res per axis, inside when every index is in [0, res). floor(f) lies in
  // [0, res) exactly when f does (res is an integer), and then floor is truncation: no floor() needed.
  NA_HD int32_t locate(const T* x, int32_t* idx) const {
    for (int32_t l = 0; l < levels; ++l) {
      const T* box = aabbs + 6 * l;
      bool inside = true;
      for (int a = 0; a < 3; ++a) {
        const T f = (x[a] - box[a]) / (box[a + 3] - box[a]) * static_cast<T>(res[a]);
        if (!(f >= T(0) && f < static_cast<T>(res[a]))) {
          inside = false;
          break;
        }
        idx[a] = static_cast<int32_t>(f);
      }
      if (inside) return l;
    }
    return -1;
  }
};

// Whether any of the n flags at p is set (the host reads 8 at a time).
NA_HD bool any_set(const bool* p, int32_t n) {
#if !defined(__CUDA_ARCH__)
  if (n == 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v != 0;
  }
#endif
  for (int32_t k = 0; k < n; ++k) {
    if (p[k]) return true;
  }
  return false;
}

// Whether block (bi, bj, bk) of level l has an occupied cell: one entry of TravGrid::coarse.
NA_HD bool coarse_block_any(const bool* binaries, const int32_t* res, int32_t l, int32_t bi, int32_t bj, int32_t bk) {
  const int32_t i1 = na_min(res[0], (bi + 1) * kCoarse), j1 = na_min(res[1], (bj + 1) * kCoarse);
  const int32_t k0 = bk * kCoarse, n = na_min(res[2], k0 + kCoarse) - k0;
  for (int32_t i = bi * kCoarse; i < i1; ++i) {
    for (int32_t j = bj * kCoarse; j < j1; ++j) {
      const int64_t row = ((static_cast<int64_t>(l) * res[0] + i) * res[1] + j) * res[2];
      if (any_set(binaries + row + k0, n)) return true;
    }
  }
  return false;
}

// c ? a : b without a branch on the host (a select of the bits; GCC turns a float ?: into a branch).
template <typename T>
NA_HD T bit_select(int32_t c, T a, T b) {
#if defined(__CUDA_ARCH__)
  return c ? a : b;
#else
  using U = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
  U ua, ub;
  memcpy(&ua, &a, sizeof(T));
  memcpy(&ub, &b, sizeof(T));
  const U mask = U(0) - static_cast<U>(c != 0);
  const U r = (ua & mask) | (ub & ~mask);
  T out;
  memcpy(&out, &r, sizeof(T));
  return out;
#endif
}

// How far before a computed crossing t_c of the plane x_a = p the march may resume without skipping a midpoint
// that the cell lookup would place beyond the plane: the lookup and the plane carry rounding errors of a few ulps
// of the coordinates involved, which are 1 / |d_a| times larger in t.
template <typename T>
NA_HD T skip_margin(T t_c, T o_a, T d_a, T p, T box_extent) {
  const T eps = TravEps<T>::value();
  const T pos = na_abs(o_a) + na_abs(p) + na_abs(box_extent) + na_abs(t_c * d_a);
  return T(16) * eps * (na_abs(t_c) + pos / na_abs(d_a));
}

// From the cell `idx` of level `lvl` holding the midpoint m, whose occupancy is `occupied`: the t (minus its safety
// margin) at which the run of cells with that same occupancy ends along the ray. The walk stops at the first cell
// of the other kind, at the exit of the level's box, at the entry into a lower-index level's box (whose cells take
// precedence there), or at t_stop (the ray's end). A run of empty cells crosses a coarse block without an occupied
// cell in one step.
template <bool kRuns, typename T>
NA_HD T run_end(const T* o, const T* d, T m, const TravGrid<T>& grid, int32_t lvl, const int32_t* idx, T t_stop,
                bool occupied) {
  T t_end = t_stop;
  T margin = T(0);
  // Lower-index levels ahead: their box entry ends the run.
  for (int32_t j = 0; j < lvl; ++j) {
    const T* box = grid.aabbs + 6 * j;
    T t_in = -na_inf<T>(), t_out = na_inf<T>();
    int a_in = -1;
    for (int a = 0; a < 3; ++a) {
      if (d[a] == T(0)) {
        if (!(o[a] >= box[a] && o[a] <= box[a + 3])) t_out = -na_inf<T>();
        continue;
      }
      const T t1 = (box[a] - o[a]) / d[a];
      const T t2 = (box[a + 3] - o[a]) / d[a];
      const T ta = na_min(t1, t2), tb = na_max(t1, t2);
      if (ta > t_in) {
        t_in = ta;
        a_in = a;
      }
      t_out = na_min(t_out, tb);
    }
    if (!(t_out > t_in) || !(t_out > m)) continue;  // missed, or behind the midpoint
    if (!(t_in > m) || a_in < 0) return m;          // rounding says we are inside it: no run
    if (t_in < t_end) {
      t_end = t_in;
      const T p = d[a_in] > T(0) ? box[a_in] : box[a_in + 3];
      margin = skip_margin(t_in, o[a_in], d[a_in], p, box[a_in + 3] - box[a_in]);
    }
  }
  // DDA over the cells of level lvl. Scalars per axis (no arrays indexed by a runtime axis: on the GPU those would
  // live in local memory). Every crossing is the closed form (plane(i) - o_a) / d_a of a cell index, in cells or
  // in blocks alike, so nothing drifts and the block steps cross exactly the planes the cell steps would.
  const T* box = grid.aabbs + 6 * lvl;
  const int32_t rx = grid.res[0], ry = grid.res[1], rz = grid.res[2];
  const T csx = (box[3] - box[0]) / static_cast<T>(rx);
  const T csy = (box[4] - box[1]) / static_cast<T>(ry);
  const T csz = (box[5] - box[2]) / static_cast<T>(rz);
  const int32_t sx = d[0] > T(0) ? 1 : -1, sy = d[1] > T(0) ? 1 : -1, sz = d[2] > T(0) ? 1 : -1;
  // 1 / d_a once (a multiply per step instead of a divide; its extra ulp is inside the margin).
  const T inv0 = T(1) / d[0], inv1 = T(1) / d[1], inv2 = T(1) / d[2];
  // The plane through which the ray leaves cell i along an axis, and where it crosses it (never, for d_a == 0).
  auto plane_x = [&](int32_t i) { return box[0] + static_cast<T>(i + (sx > 0 ? 1 : 0)) * csx; };
  auto plane_y = [&](int32_t i) { return box[1] + static_cast<T>(i + (sy > 0 ? 1 : 0)) * csy; };
  auto plane_z = [&](int32_t i) { return box[2] + static_cast<T>(i + (sz > 0 ? 1 : 0)) * csz; };
  auto cross_x = [&](int32_t i) { return d[0] == T(0) ? na_inf<T>() : (plane_x(i) - o[0]) * inv0; };
  auto cross_y = [&](int32_t i) { return d[1] == T(0) ? na_inf<T>() : (plane_y(i) - o[1]) * inv1; };
  auto cross_z = [&](int32_t i) { return d[2] == T(0) ? na_inf<T>() : (plane_z(i) - o[2]) * inv2; };
  // The last cell of i's block along an axis of resolution r, in the ray's direction s (i >= 0).
  auto block_last = [&](int32_t i, int32_t r, int32_t s) {
    const int32_t first = i & -kCoarse;
    return s > 0 ? na_min(first + kCoarse - 1, r - 1) : first;
  };
  auto cell = [&](int32_t i, int32_t j, int32_t k) { return grid.cell(lvl, i, j, k); };
  // Whether the ray is in a run of empty cells whose block has no occupied cell.
  auto skip_block = [&](int32_t i, int32_t j, int32_t k) { return kRuns && !occupied && !grid.block(lvl, i, j, k); };
  int32_t ix = idx[0], iy = idx[1], iz = idx[2];
  // skipping: the current cell's block has no occupied cell (only in a run of empty cells); then the tn* are the
  // crossings out of the block's last cells along the ray (block_last), else out of the cell.
  bool skipping = skip_block(ix, iy, iz);
  T tnx = cross_x(skipping ? block_last(ix, rx, sx) : ix);
  T tny = cross_y(skipping ? block_last(iy, ry, sy) : iy);
  T tnz = cross_z(skipping ? block_last(iz, rz, sz) : iz);
  // kRuns, cell steps: the crossings out of the next cells too (tnn*), so a step only selects values computed a
  // step ahead; with the axis picked by comparisons instead of branches, nothing in a step waits on a branch
  // (on a CPU the axis order is close to random: a branch per step mispredicts about every other step).
  T tnnx = kRuns ? cross_x(ix + sx) : T(0), tnny = kRuns ? cross_y(iy + sy) : T(0);
  T tnnz = kRuns ? cross_z(iz + sz) : T(0);
  const int32_t max_steps = rx + ry + rz + 3;
  for (int32_t s = 0; s < max_steps; ++s) {
    if (kRuns && !skipping) {
      const T t_xy = na_min(tnx, tny);
      const T t_c = na_min(t_xy, tnz);
      if (!(t_c < t_end)) break;
      const int32_t y_first = tny < tnx, z_first = tnz < t_xy;
      const int32_t on_y = y_first & (1 - z_first), on_x = (1 - y_first) & (1 - z_first);
      const int32_t jx = ix + on_x * sx, jy = iy + on_y * sy, jz = iz + z_first * sz;
      if (static_cast<uint32_t>(jx) >= static_cast<uint32_t>(rx) || static_cast<uint32_t>(jy) >= static_cast<uint32_t>(ry) ||
          static_cast<uint32_t>(jz) >= static_cast<uint32_t>(rz) || cell(jx, jy, jz) != occupied || s + 1 == max_steps) {
        const int a = z_first ? 2 : (y_first ? 1 : 0);
        const T p = a == 0 ? plane_x(ix) : (a == 1 ? plane_y(iy) : plane_z(iz));
        t_end = t_c;
        margin = skip_margin(t_c, o[a], d[a], p, box[a + 3] - box[a]);
        break;
      }
      ix = jx;
      iy = jy;
      iz = jz;
      skipping = skip_block(ix, iy, iz);
      if (skipping) {
        tnx = cross_x(block_last(ix, rx, sx));
        tny = cross_y(block_last(iy, ry, sy));
        tnz = cross_z(block_last(iz, rz, sz));
      } else {
        tnx = bit_select(on_x, tnnx, tnx);
        tny = bit_select(on_y, tnny, tny);
        tnz = bit_select(z_first, tnnz, tnz);
        tnnx = cross_x(ix + sx);
        tnny = cross_y(iy + sy);
        tnnz = cross_z(iz + sz);
      }
      continue;
    }
    // The axis whose plane comes first (ties: x, then y).
    int a = 0;
    T t_c = tnx;
    if (tny < t_c) {
      a = 1;
      t_c = tny;
    }
    if (tnz < t_c) {
      a = 2;
      t_c = tnz;
    }
    if (!(t_c < t_end)) break;  // the run reaches t_end (also catches NaN)
    // Leaving cell (or block) e_a through the plane of axis a at t_c: the next cell along a is e_a + s_a.
    const int32_t i_a = a == 0 ? ix : (a == 1 ? iy : iz);
    const int32_t res_a = a == 0 ? rx : (a == 1 ? ry : rz);
    const int32_t s_a = a == 0 ? sx : (a == 1 ? sy : sz);
    const int32_t e_a = skipping ? block_last(i_a, res_a, s_a) : i_a;
    const int32_t i_next = e_a + s_a;
    if (skipping) {
      // Across a block: along the other axes, the cell holding the crossing point is found by crossing the cell
      // planes that come first (a tie with an axis ordered before a counts as first, as in cell steps). They lie
      // inside the block: its own exit planes on those axes come at t_c or later.
      for (int32_t q = 1; q < kCoarse && a != 0 && cross_x(ix) <= t_c; ++q) ix += sx;
      for (int32_t q = 1; q < kCoarse && a != 1 && (a == 2 ? cross_y(iy) <= t_c : cross_y(iy) < t_c); ++q) iy += sy;
      for (int32_t q = 1; q < kCoarse && a != 2 && cross_z(iz) < t_c; ++q) iz += sz;
    }
    if (a == 0) ix = i_next;
    if (a == 1) iy = i_next;
    if (a == 2) iz = i_next;
    if (i_next < 0 || i_next >= res_a || cell(ix, iy, iz) != occupied || s + 1 == max_steps) {
      const T p = a == 0 ? plane_x(e_a) : (a == 1 ? plane_y(e_a) : plane_z(e_a));
      t_end = t_c;
      margin = skip_margin(t_c, o[a], d[a], p, box[a + 3] - box[a]);
      break;
    }
    skipping = skip_block(ix, iy, iz);
    tnx = cross_x(skipping ? block_last(ix, rx, sx) : ix);
    tny = cross_y(skipping ? block_last(iy, ry, sy) : iy);
    tnz = cross_z(skipping ? block_last(iz, rz, sz) : iz);
    if (kRuns && !skipping) {
      tnnx = cross_x(ix + sx);
      tnny = cross_y(iy + sy);
      tnnz = cross_z(iz + sz);
    }
  }
  return t_end - margin;
}

// Writes (or only counts) the samples of one ray into slots [pos, end). `write` false: count only.
template <typename T>
struct SlotEmit {
  int64_t* rays;
  T* t0;
  T* t1;
  int64_t pos;
  int64_t end;
  int64_t ray;
  bool write;
  NA_HD void operator()(int32_t, T a, T b) {
    if (write && pos < end) {
      rays[pos] = ray;
      t0[pos] = a;
      t1[pos] = b;
    }
    ++pos;
  }
  // Samples k0 <= k < k1 of lattice lat.
  NA_HD void range(const TravLattice<T>& lat, int32_t k0, int32_t k1) {
    for (int32_t k = k0; k < k1; ++k) (*this)(k, lat.t(k), lat.t(k + 1));
  }
};

// Statistics of one march (benchmarks): lattice points evaluated.
struct NoStats {
  NA_HD void visit(int64_t = 1) {}
};
struct VisitStats {
  int64_t visits = 0;
  NA_HD void visit(int64_t n = 1) { visits += n; }
};

// Marches one ray; calls emit(k, t0, t1) for each kept sample (lattice index k, t0 = t_k, t1 = t_{k+1}), or
// emit.range(lat, k0, k1) for the samples k0 <= k < k1 inside a run of occupied cells, in order; stats.visit(n)
// counts the lattice points evaluated (the samples of a run count as evaluated).
template <bool kRuns, typename T, typename Emit, typename Stats>
NA_HD void traverse_ray(const T* o, const T* d, T near, T far, const TravGrid<T>& grid, T step_size, T cone_angle,
                           Emit& emit, Stats& stats) {
  T lo = na_inf<T>(), hi = -na_inf<T>();
  for (int32_t l = 0; l < grid.levels; ++l) {
    const T* box = grid.aabbs + 6 * l;
    T t_in, t_out;
    slab_interval(o, d, box, t_in, t_out);
    if (t_out > t_in && t_out > T(0)) {
      lo = na_min(lo, t_in);
      hi = na_max(hi, t_out);
    }
  }
  lo = nan_max(lo, near);
  hi = nan_min(hi, far);
  if (!(na_isfinite(lo) && hi > lo)) return;
  const TravLattice<T> lat(near, step_size, cone_angle);
  int32_t k = lat.first_mid_at_or_after(lo);
  const int32_t k_hi = lat.first_mid_at_or_after(hi);
  while (k < k_hi) {
    stats.visit();
    const T t0 = lat.t(k);
    const T t1 = lat.t(k + 1);
    const T m = T(0.5) * (t0 + t1);
    if (!(m >= lo && m < hi)) {
      ++k;
      continue;
    }
    T x[3];
    for (int a = 0; a < 3; ++a) x[a] = o[a] + m * d[a];
    int32_t idx[3];
    const int32_t lvl = grid.locate(x, idx);
    if (lvl < 0) {  // a gap between disjoint boxes
      ++k;
      continue;
    }
    const bool occupied = grid.cell(lvl, idx[0], idx[1], idx[2]);
    if (occupied) emit(k, t0, t1);
    if (occupied && !kRuns) {
      ++k;
      continue;
    }
    const T t_run = run_end<kRuns>(o, d, m, grid, lvl, idx, hi, occupied);
    if (occupied) {
      // Every later sample whose midpoint lies before the end of this run of occupied cells (minus the margin),
      // without a cell lookup each.
      const int32_t k_first = k + 1;
      k = t_run > m ? lat.first_mid_at_or_after(t_run) : k_first;
      k = na_max(k_first, na_min(k, k_hi));
      stats.visit(k - k_first);
      emit.range(lat, k_first, k);
      continue;
    }
    const int32_t k_next = t_run > m ? lat.first_mid_at_or_after(t_run) : k + 1;
    k = k_next > k ? k_next : k + 1;
  }
}

#if defined(__CUDACC__)
// One thread per ray. Count pass (ends == nullptr): counts[r] = samples of ray r. Fill pass: writes them into
// [ends[r] - counts[r], ends[r]). ONE kernel, so both passes run the same instructions of traverse_ray; the fill's
// stores are bounded by the ray's slot range. Compiled on its own by .ci/check_traverse_regs.sh (registers).
// __launch_bounds__(256, 4): at most 64 registers per thread (4 blocks of 256 threads per SM).
template <typename T>
__global__ void __launch_bounds__(256, 4) traverse_kernel(const T* o, const T* d, const T* nearp, const T* farp,
                                                       TravGrid<T> grid, T step, T cone, int64_t n,
                                                       const int64_t* ends, int64_t* counts, int64_t* rays, T* t0,
                                                       T* t1) {
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < n;
       r += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const bool write = ends != nullptr;
    if (write && counts[r] == 0) continue;
    SlotEmit<T> emit{rays, t0, t1, write ? ends[r] - counts[r] : 0, write ? ends[r] : 0, r, write};
    NoStats stats;
    traverse_ray<false>(o + 3 * r, d + 3 * r, nearp[r], farp[r], grid, step, cone, emit, stats);
    if (!write) counts[r] = emit.pos;  // the count pass starts at slot 0
  }
}

#endif

NA_NAMESPACE_END
