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
// so a jump never shifts the samples after it; a jump can only change the output for a midpoint within the margin
// of a cell face. The CPU march (walk_runs) goes further: one walk crosses runs of occupied cells too, emitting
// their samples without a lookup each, under the same margin rule (docs/traversal.md).
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
  T inv_step;  // 1 / step: only seeds first_mid_at_or_after, whose steps then correct it
  int32_t n_uniform;

  NA_HD TravLattice(T near_, T step_, T cone_) : near(near_), step(step_), cone(cone_), inv_step(T(1) / step_) {
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
    if (!(cone > T(0)) || tv < t_K) return (tv - near) * inv_step;
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
    if (mid(k) < bound) {
      for (int it = 0; it < 64 && mid(k + 1) < bound; ++it) ++k;
      return k + 1;
    }
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

// How far before a computed crossing t_c of a plane of axis a the march may resume without skipping a midpoint that
// the cell lookup would place beyond the plane: the lookup and the plane carry rounding errors of a few ulps of the
// coordinates involved (|o_a|, the box's corners lo_a, hi_a and extent, |t_c d_a|), which are 1 / |d_a| times
// larger in t. margin = 32 eps |t_c| + margin_base, margin_base = 16 eps (|o_a| + (hi_a - lo_a) + max(|lo_a|,
// |hi_a|)) / |d_a| (constant along a ray for one axis and box, |plane| <= max(|lo_a|, |hi_a|)).
template <typename T>
NA_HD T margin_base(T o_a, T d_a, T lo_a, T hi_a) {
  return T(16) * TravEps<T>::value() * (na_abs(o_a) + (hi_a - lo_a) + na_max(na_abs(lo_a), na_abs(hi_a))) /
         na_abs(d_a);
}
template <typename T>
NA_HD T skip_margin(T t_c, T base) {
  return T(32) * TravEps<T>::value() * na_abs(t_c) + base;
}

// Lower-index levels ahead of the midpoint m end a walk over the cells of level lvl at their box entry: lowers
// t_end (and sets its margin) to the first such entry. Returns false when rounding places m inside one of them
// already (then there is no walk on level lvl from m).
template <typename T>
NA_HD bool lower_level_entry(const T* o, const T* d, T m, const TravGrid<T>& grid, int32_t lvl, T& t_end, T& margin) {
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
    if (!(t_in > m) || a_in < 0) return false;      // rounding says we are inside it
    if (t_in < t_end) {
      t_end = t_in;
      margin = skip_margin(t_in, margin_base(o[a_in], d[a_in], box[a_in], box[a_in + 3]));
    }
  }
  return true;
}

// The cells of level lvl along a ray, axis A = 0, 1, 2 fixed at compile time (an array indexed at run time would
// live in local memory on the GPU). The crossing of the plane through which the ray leaves cell i along axis A is
// a closed form of i, c0 + i * c1 with c0 = (plane(0) - o_A) / d_A and c1 = cell size / d_A taken once per walk: one
// multiply and one add per crossing, nothing accumulated, so nothing drifts (its few ulps of (|o_A| + |plane| +
// |box extent|) / |d_A| are inside skip_margin), and block steps cross exactly the planes that cell steps would.
template <typename T>
struct CellAxes {
  const T* o;
  const T* d;
  const T* box;
  T c0[3], c1[3], mb[3];  // mb: margin_base of each axis
  int32_t s[3], res[3];

  NA_HD CellAxes(const T* o_, const T* d_, const TravGrid<T>& grid, int32_t lvl)
      : o(o_), d(d_), box(grid.aabbs + 6 * lvl) {
    for (int a = 0; a < 3; ++a) {
      res[a] = grid.res[a];
      const T cs = cell_size(a), inv = T(1) / d[a];
      s[a] = d[a] > T(0) ? 1 : -1;
      c0[a] = d[a] == T(0) ? na_inf<T>() : (box[a] + (s[a] > 0 ? cs : T(0)) - o[a]) * inv;
      c1[a] = d[a] == T(0) ? T(0) : cs * inv;
      mb[a] = margin_base(o[a], d[a], box[a], box[a + 3]);
    }
  }
  // Where the ray leaves cell i along axis A (never, for d_A == 0).
  template <int A>
  NA_HD T cross(int32_t i) const {
    return c0[A] + static_cast<T>(i) * c1[A];
  }
  NA_HD T cell_size(int a) const { return (box[a + 3] - box[a]) / static_cast<T>(res_of(a)); }
  // The last cell of i's block along axis A in the ray's direction (i >= 0).
  template <int A>
  NA_HD int32_t block_last(int32_t i) const {
    const int32_t first = i & -kCoarse;
    return s[A] > 0 ? na_min(first + kCoarse - 1, res[A] - 1) : first;
  }
  // s and res of a run-time axis a, by selects (no array indexed at run time).
  NA_HD int32_t s_of(int a) const { return a == 0 ? s[0] : (a == 1 ? s[1] : s[2]); }
  NA_HD int32_t res_of(int a) const { return a == 0 ? res[0] : (a == 1 ? res[1] : res[2]); }
  // The safety margin of a crossing at t_c of a plane of axis a.
  NA_HD T margin(int a, T t_c) const { return skip_margin(t_c, a == 0 ? mb[0] : (a == 1 ? mb[1] : mb[2])); }
};

// The axis whose crossing comes first (ties: x, then y), and that crossing t_c.
template <typename T>
NA_HD int first_axis(T tnx, T tny, T tnz, T& t_c) {
  int a = 0;
  t_c = tnx;
  if (tny < t_c) {
    a = 1;
    t_c = tny;
  }
  if (tnz < t_c) {
    a = 2;
    t_c = tnz;
  }
  return a;
}

// From the empty cell `idx` of level `lvl` holding the midpoint m: the t (minus its safety margin) at which the
// run of empty cells ends along the ray, cell by cell. The walk stops at the first occupied cell, at the exit of
// the level's box, at the entry into a lower-index level's box (whose cells take precedence there), or at t_stop
// (the ray's end). This is the march of the CUDA kernel (and of the CPU with NERFACCEL_TRAVERSE_RUNS=0).
template <typename T>
NA_HD T run_end(const T* o, const T* d, T m, const TravGrid<T>& grid, int32_t lvl, const int32_t* idx, T t_stop) {
  T t_end = t_stop;
  T margin = T(0);
  if (!lower_level_entry(o, d, m, grid, lvl, t_end, margin)) return m;
  const CellAxes<T> ax(o, d, grid, lvl);
  int32_t ix = idx[0], iy = idx[1], iz = idx[2];
  T tnx = ax.template cross<0>(ix), tny = ax.template cross<1>(iy), tnz = ax.template cross<2>(iz);
  const int32_t max_steps = ax.res[0] + ax.res[1] + ax.res[2] + 3;
  for (int32_t s = 0; s < max_steps; ++s) {
    T t_c;
    const int a = first_axis(tnx, tny, tnz, t_c);
    if (!(t_c < t_end)) break;  // the run reaches t_end (also catches NaN)
    // Leaving cell i_a through the plane of axis a at t_c: the next cell along a is i_a + s_a.
    const int32_t i_a = a == 0 ? ix : (a == 1 ? iy : iz);
    const int32_t i_next = i_a + ax.s_of(a);
    if (a == 0) ix = i_next;
    if (a == 1) iy = i_next;
    if (a == 2) iz = i_next;
    if (i_next < 0 || i_next >= ax.res_of(a) || grid.cell(lvl, ix, iy, iz) || s + 1 == max_steps) {
      t_end = t_c;
      margin = ax.margin(a, t_c);
      break;
    }
    tnx = ax.template cross<0>(ix);
    tny = ax.template cross<1>(iy);
    tnz = ax.template cross<2>(iz);
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

// One ray's march: its lattice, the part [lo, hi) of it inside the grids, and the sample lookup of the rule.
template <typename T>
struct RayTrace {
  const T* o;
  const T* d;
  const TravGrid<T>& grid;
  TravLattice<T> lat;
  T lo, hi;

  // Evaluates sample k by the rule: its bounds t0, t1 and midpoint m; returns the level holding m (-1: m outside
  // [lo, hi) or in a gap between boxes) and m's cell in idx.
  NA_HD int32_t lookup(int32_t k, T& t0, T& t1, T& m, int32_t* idx) const {
    t0 = lat.t(k);
    t1 = lat.t(k + 1);
    m = T(0.5) * (t0 + t1);
    if (!(m >= lo && m < hi)) return -1;
    T x[3];
    for (int a = 0; a < 3; ++a) x[a] = o[a] + m * d[a];
    return grid.locate(x, idx);
  }
  // Sample k by lookup alone; emits it when its cell is occupied.
  template <typename Emit>
  NA_HD void eval(int32_t k, Emit& emit) const {
    T t0, t1, m;
    int32_t idx[3];
    const int32_t lvl = lookup(k, t0, t1, m, idx);
    if (lvl >= 0 && grid.cell(lvl, idx[0], idx[1], idx[2])) emit(k, t0, t1);
  }
};

// The CPU march (kRuns): from sample k - 1, whose midpoint m lies in cell `idx` of level `lvl` with occupancy `occ`,
// one DDA walks the cells of that level along the ray across any number of runs of occupied and empty cells, until
// the exit of the level's box, the entry into a lower-index level's box, or the end of the ray; returns the first
// sample not yet decided (the caller looks it up and walks on from there).
// * At each change of occupancy at t_c (margin mu, skip_margin), the samples whose midpoints lie before t_c - mu
//   take the ending run's occupancy (emit.range for occupied runs, no lookup each), and those with midpoints in
//   [t_c - mu, t_c + mu) are looked up one by one; so the output only differs from one lookup per sample for a
//   midpoint within the margin of a cell face, as with a walk per run.
// * A run of empty cells crosses a coarse block without an occupied cell in one step.
// * A cell step picks its axis without branches and selects crossings computed a step ahead (tnn*): on a CPU the
//   axis order is close to random, and a branch per step would mispredict about every other step.
template <typename T, typename Emit, typename Stats>
NA_HD int32_t walk_runs(const RayTrace<T>& ray, T m, int32_t lvl, const int32_t* idx, bool occ, int32_t k,
                        int32_t k_hi, Emit& emit, Stats& stats) {
  const TravGrid<T>& grid = ray.grid;
  const TravLattice<T>& lat = ray.lat;
  T t_end = ray.hi;
  T margin = T(0);
  if (!lower_level_entry(ray.o, ray.d, m, grid, lvl, t_end, margin)) return k;
  const CellAxes<T> ax(ray.o, ray.d, grid, lvl);
  const int32_t rx = ax.res[0], ry = ax.res[1], rz = ax.res[2];
  const int32_t sx = ax.s[0], sy = ax.s[1], sz = ax.s[2];
  // The samples from k on whose midpoints lie before t take the current run's occupancy (occ).
  auto run_until = [&](T t) {
    const int32_t kb = na_max(k, na_min(lat.first_mid_at_or_after(t), k_hi));
    if (occ) {
      stats.visit(kb - k);
      emit.range(lat, k, kb);
    }
    k = kb;
  };
  // A change of occupancy at t_c: the samples before t_c - mu take the ending run's occupancy; those before
  // t_c + mu are looked up.
  auto settle = [&](T t_c, T mu) {
    run_until(t_c - mu);
    for (; k < k_hi && lat.mid(k) < t_c + mu; ++k) {
      stats.visit();
      ray.eval(k, emit);
    }
  };
  auto skip_block = [&](int32_t i, int32_t j, int32_t l) { return !occ && !grid.block(lvl, i, j, l); };
  int32_t ix = idx[0], iy = idx[1], iz = idx[2];
  // skipping: the current cell's block has no occupied cell (only in a run of empty cells); then the tn* are the
  // crossings out of the block's last cells along the ray, else out of the cell, and the tnn* out of the next cells.
  bool skipping = skip_block(ix, iy, iz);
  T tnx = ax.template cross<0>(skipping ? ax.template block_last<0>(ix) : ix);
  T tny = ax.template cross<1>(skipping ? ax.template block_last<1>(iy) : iy);
  T tnz = ax.template cross<2>(skipping ? ax.template block_last<2>(iz) : iz);
  T tnnx = ax.template cross<0>(ix + sx), tnny = ax.template cross<1>(iy + sy), tnnz = ax.template cross<2>(iz + sz);
  const int32_t max_steps = rx + ry + rz + 3;
  for (int32_t s = 0; s < max_steps; ++s) {
    if (!skipping) {
      const T t_xy = na_min(tnx, tny);
      const T t_c = na_min(t_xy, tnz);
      if (!(t_c < t_end)) break;  // the walk reaches t_end (also catches NaN)
      const int32_t y_first = tny < tnx, z_first = tnz < t_xy;
      const int32_t on_y = y_first & (1 - z_first), on_x = (1 - y_first) & (1 - z_first);
      const int32_t jx = ix + on_x * sx, jy = iy + on_y * sy, jz = iz + z_first * sz;
      const int a = z_first ? 2 : (y_first ? 1 : 0);
      if (static_cast<uint32_t>(jx) >= static_cast<uint32_t>(rx) ||
          static_cast<uint32_t>(jy) >= static_cast<uint32_t>(ry) ||
          static_cast<uint32_t>(jz) >= static_cast<uint32_t>(rz) || s + 1 == max_steps) {
        t_end = t_c;
        margin = ax.margin(a, t_c);
        break;
      }
      if (grid.cell(lvl, jx, jy, jz) != occ) {
        settle(t_c, ax.margin(a, t_c));
        if (k >= k_hi) return k;
        occ = !occ;
      }
      ix = jx;
      iy = jy;
      iz = jz;
      skipping = skip_block(ix, iy, iz);
      if (skipping) {
        tnx = ax.template cross<0>(ax.template block_last<0>(ix));
        tny = ax.template cross<1>(ax.template block_last<1>(iy));
        tnz = ax.template cross<2>(ax.template block_last<2>(iz));
      } else {
        tnx = bit_select(on_x, tnnx, tnx);
        tny = bit_select(on_y, tnny, tny);
        tnz = bit_select(z_first, tnnz, tnz);
        tnnx = ax.template cross<0>(ix + sx);
        tnny = ax.template cross<1>(iy + sy);
        tnnz = ax.template cross<2>(iz + sz);
      }
      continue;
    }
    // Across an empty block.
    T t_c;
    const int a = first_axis(tnx, tny, tnz, t_c);
    if (!(t_c < t_end)) break;
    const int32_t e_a = a == 0 ? ax.template block_last<0>(ix)
                               : (a == 1 ? ax.template block_last<1>(iy) : ax.template block_last<2>(iz));
    const int32_t i_next = e_a + ax.s_of(a);
    // Along the other axes, the cell holding the crossing point is found by crossing the cell planes that come
    // first (a tie with an axis ordered before a counts as first, as in cell steps). They lie inside the block:
    // its own exit planes on those axes come at t_c or later.
    for (int32_t q = 1; q < kCoarse && a != 0 && ax.template cross<0>(ix) <= t_c; ++q) ix += sx;
    for (int32_t q = 1; q < kCoarse && a != 1 && (a == 2 ? ax.template cross<1>(iy) <= t_c : ax.template cross<1>(iy) < t_c);
         ++q)
      iy += sy;
    for (int32_t q = 1; q < kCoarse && a != 2 && ax.template cross<2>(iz) < t_c; ++q) iz += sz;
    if (a == 0) ix = i_next;
    if (a == 1) iy = i_next;
    if (a == 2) iz = i_next;
    if (i_next < 0 || i_next >= ax.res_of(a) || s + 1 == max_steps) {
      t_end = t_c;
      margin = ax.margin(a, t_c);
      break;
    }
    if (grid.cell(lvl, ix, iy, iz)) {  // the first occupied cell
      settle(t_c, ax.margin(a, t_c));
      if (k >= k_hi) return k;
      occ = true;
    }
    skipping = skip_block(ix, iy, iz);
    tnx = ax.template cross<0>(skipping ? ax.template block_last<0>(ix) : ix);
    tny = ax.template cross<1>(skipping ? ax.template block_last<1>(iy) : iy);
    tnz = ax.template cross<2>(skipping ? ax.template block_last<2>(iz) : iz);
    if (!skipping) {
      tnnx = ax.template cross<0>(ix + sx);
      tnny = ax.template cross<1>(iy + sy);
      tnnz = ax.template cross<2>(iz + sz);
    }
  }
  // The walk ends at t_end: the samples before t_end - margin take the last run's occupancy; the caller looks up
  // the next one and walks on from its cell.
  run_until(t_end - margin);
  return k;
}

// Marches one ray; calls emit(k, t0, t1) for each kept sample (lattice index k, t0 = t_k, t1 = t_{k+1}), or
// emit.range(lat, k0, k1) for the samples k0 <= k < k1 inside a run of occupied cells, in order; stats.visit(n)
// counts the lattice points evaluated (the samples of a run count as evaluated). kRuns: the CPU march
// (walk_runs); else the CUDA kernel's (a lookup per sample in occupied cells, run_end across empty ones).
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
  const RayTrace<T> ray{o, d, grid, TravLattice<T>(near, step_size, cone_angle), lo, hi};
  int32_t k = ray.lat.first_mid_at_or_after(lo);
  const int32_t k_hi = ray.lat.first_mid_at_or_after(hi);
  while (k < k_hi) {
    stats.visit();
    T t0, t1, m;
    int32_t idx[3];
    const int32_t lvl = ray.lookup(k, t0, t1, m, idx);
    if (lvl < 0) {  // outside [lo, hi) by rounding, or a gap between disjoint boxes
      ++k;
      continue;
    }
    const bool occupied = grid.cell(lvl, idx[0], idx[1], idx[2]);
    if (occupied) emit(k, t0, t1);
    if (kRuns) {
      k = walk_runs(ray, m, lvl, idx, occupied, k + 1, k_hi, emit, stats);
      continue;
    }
    if (occupied) {
      ++k;
      continue;
    }
    const T t_run = run_end(o, d, m, grid, lvl, idx, hi);
    const int32_t k_next = t_run > m ? ray.lat.first_mid_at_or_after(t_run) : k + 1;
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
