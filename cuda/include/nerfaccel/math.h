// The math of every nerfaccel op, written once for the host and the device.
//
// Each function handles one ray (a packed chunk `[start, start + count)` of a flat tensor) or one
// sample/point. The CPU extension calls them from OpenMP loops over rays; the CUDA extension calls
// them from one thread per ray (or per element). Semantics follow the pure-PyTorch reference in
// nerfaccel_plugin/_torch_impl.py, which is the source of truth. Running sums and products along a ray
// are kept in acc_t (double, common.h); per-sample values and outputs in the input type T.
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

// Grid traversal: traverse.h (float32 for float32 rays, empty-cell skipping).

// ---------------------------------------------------------------------------------------------
// Segmented scans over one chunk [s, s + n)
// ---------------------------------------------------------------------------------------------
template <typename T>
NA_HD void scan_sum_fwd(const T* x, T* y, index_t s, index_t n, bool exclusive) {
  acc_t<T> acc = 0;
  for (index_t i = s; i < s + n; ++i) {
    if (exclusive) {
      y[i] = static_cast<T>(acc);
      acc += x[i];
    } else {
      acc += x[i];
      y[i] = static_cast<T>(acc);
    }
  }
}

// d/dx of sum_i g_i y_i: a reverse cumulative sum of g (shifted by one when exclusive).
template <typename T>
NA_HD void scan_sum_bwd(const T* g, T* gx, index_t s, index_t n, bool exclusive) {
  acc_t<T> acc = 0;
  for (index_t i = s + n - 1; i >= s; --i) {
    if (exclusive) {
      gx[i] = static_cast<T>(acc);
      acc += g[i];
    } else {
      acc += g[i];
      gx[i] = static_cast<T>(acc);
    }
  }
}

template <typename T>
NA_HD void scan_prod_fwd(const T* x, T* y, index_t s, index_t n, bool exclusive) {
  acc_t<T> acc = 1;
  for (index_t i = s; i < s + n; ++i) {
    if (exclusive) {
      y[i] = static_cast<T>(acc);
      acc *= x[i];
    } else {
      acc *= x[i];
      y[i] = static_cast<T>(acc);
    }
  }
}

// Exact gradient of a cumulative product without any division (correct when x contains zeros).
// With P_i = prod_{k<i} x_k (the exclusive product), grad_i = P_i * E_i where
//   inclusive: E_i = g_i + x_{i+1} E_{i+1}          (E past the end = 0)
//   exclusive: E_i = g_{i+1} + x_{i+1} E_{i+1}
// y holds the forward output: P_i = y_i (exclusive) or y_{i-1} (inclusive, 1 for the first).
template <typename T>
NA_HD void scan_prod_bwd(const T* g, const T* x, const T* y, T* gx, index_t s, index_t n, bool exclusive) {
  using A = acc_t<T>;
  A e = 0;  // E_{i+1} on entry to iteration i
  for (index_t i = s + n - 1; i >= s; --i) {
    const bool has_next = i + 1 < s + n;
    if (exclusive) {
      e = has_next ? A(g[i + 1]) + A(x[i + 1]) * e : A(0);
    } else {
      e = has_next ? A(g[i]) + A(x[i + 1]) * e : A(g[i]);
    }
    const A p = exclusive ? A(y[i]) : (i > s ? A(y[i - 1]) : A(1));
    gx[i] = static_cast<T>(p * e);
  }
}

// ---------------------------------------------------------------------------------------------
// Volume rendering (one fused pass per ray, forward and backward)
// ---------------------------------------------------------------------------------------------
template <typename T>
NA_HD T density_alpha(T t0, T t1, T sigma) {
  return T(1) - na_exp(-(sigma * (t1 - t0)));  // = alpha_from_tau(density_tau(t0, t1, sigma))
}

// Forward from densities: tau_i = sigma_i dt_i, alpha_i = 1 - exp(-tau_i), T_i = exp(-D_i) with the optical
// depth D_i = sum_{j<i} tau_j, w_i = T_i * alpha_i. The per-sample pieces are written once here; the fused
// one-pass loop (GPU threads) and the two-pass loop (CPU, vectorised exponentials) both use them.
template <typename T>
NA_HD T density_tau(T t0, T t1, T sigma) {
  return sigma * (t1 - t0);
}
template <typename T>
NA_HD T alpha_from_tau(T tau) {
  return T(1) - na_exp(-tau);
}
template <typename T>
NA_HD T trans_from_depth(T depth) {
  return na_exp(-depth);
}

template <typename T>
NA_HD void render_density_fwd_ray(const T* t0, const T* t1, const T* sigma, T* alpha, T* w, T* trans, index_t s,
                                  index_t n) {
  acc_t<T> acc = 0;  // optical depth D_i; its exponential is taken in T
  for (index_t i = s; i < s + n; ++i) {
    const T tau = density_tau(t0[i], t1[i], sigma[i]);
    const T a = alpha_from_tau(tau);
    const T tr = trans_from_depth(static_cast<T>(acc));
    alpha[i] = a;
    trans[i] = tr;
    w[i] = tr * a;
    acc += tau;
  }
}

// The same forward in two passes: a sequential pass keeps the running optical depth (tau and D are parked in
// the alpha and trans outputs, D rounded to T as the fused loop rounds it before its exponential), then a pass
// without dependences between samples evaluates the exponentials, which the CPU build vectorises (NA_SIMD). Same
// operations in the same order as the fused loop.
template <typename T>
NA_HD void render_density_fwd_ray_2pass(const T* t0, const T* t1, const T* sigma, T* alpha, T* w, T* trans,
                                        index_t s, index_t n) {
  acc_t<T> acc = 0;
  for (index_t i = s; i < s + n; ++i) {
    const T tau = density_tau(t0[i], t1[i], sigma[i]);
    alpha[i] = tau;
    trans[i] = static_cast<T>(acc);
    acc += tau;
  }
  NA_SIMD
  for (index_t i = s; i < s + n; ++i) {
    const T a = alpha_from_tau(alpha[i]);
    const T tr = trans_from_depth(trans[i]);
    alpha[i] = a;
    trans[i] = tr;
    w[i] = tr * a;
  }
}

// Backward from densities: d tau_i = (g_a_i + g_w_i T_i) exp(-tau_i) - sum_{j>i} (g_T_j + g_w_j a_j) T_j,
// then d sigma_i = d tau_i dt_i, d t1_i = -d t0_i = d tau_i sigma_i. The suffix sum and d tau_i are computed in
// acc_t (d tau_i is the small difference of two large terms on long rays).
template <typename T>
NA_HD T density_bwd_dtau(T ga, T gw, T trans, T decay, acc_t<T> suffix) {
  using A = acc_t<T>;
  return static_cast<T>((A(ga) + A(gw) * A(trans)) * A(decay) - suffix);
}
template <typename T>
NA_HD acc_t<T> density_bwd_suffix_term(T gt, T gw, T alpha, T trans) {
  using A = acc_t<T>;
  return (A(gt) + A(gw) * A(alpha)) * A(trans);
}

template <typename T>
NA_HD void render_density_bwd_ray(const T* gw, const T* gt, const T* ga, const T* t0, const T* t1, const T* sigma,
                                  const T* trans, const T* alpha, T* g_t0, T* g_t1, T* g_sigma, index_t s,
                                  index_t n) {
  acc_t<T> suffix = 0;
  for (index_t i = s + n - 1; i >= s; --i) {
    const T dt = t1[i] - t0[i];
    const T dtau = density_bwd_dtau(ga[i], gw[i], trans[i], na_exp(-density_tau(t0[i], t1[i], sigma[i])), suffix);
    suffix += density_bwd_suffix_term(gt[i], gw[i], alpha[i], trans[i]);
    g_sigma[i] = dtau * dt;
    g_t0[i] = -dtau * sigma[i];
    g_t1[i] = dtau * sigma[i];
  }
}

// The same backward in two passes (CPU): the decays exp(-tau_i) first, vectorised and parked in g_sigma, then
// the sequential reverse sweep.
template <typename T>
NA_HD void render_density_bwd_ray_2pass(const T* gw, const T* gt, const T* ga, const T* t0, const T* t1,
                                        const T* sigma, const T* trans, const T* alpha, T* g_t0, T* g_t1,
                                        T* g_sigma, index_t s, index_t n) {
  NA_SIMD
  for (index_t i = s; i < s + n; ++i) g_sigma[i] = na_exp(-density_tau(t0[i], t1[i], sigma[i]));
  acc_t<T> suffix = 0;
  for (index_t i = s + n - 1; i >= s; --i) {
    const T dt = t1[i] - t0[i];
    const T dtau = density_bwd_dtau(ga[i], gw[i], trans[i], g_sigma[i], suffix);
    suffix += density_bwd_suffix_term(gt[i], gw[i], alpha[i], trans[i]);
    g_sigma[i] = dtau * dt;
    g_t0[i] = -dtau * sigma[i];
    g_t1[i] = dtau * sigma[i];
  }
}

// Samples outside every chunk: only the alpha output depends on them.
template <typename T>
NA_HD void render_density_bwd_elem(const T* ga, const T* t0, const T* t1, const T* sigma, T* g_t0, T* g_t1,
                                   T* g_sigma, index_t i) {
  const T dt = t1[i] - t0[i];
  const T dtau = ga[i] * na_exp(-(sigma[i] * dt));
  g_sigma[i] = dtau * dt;
  g_t0[i] = -dtau * sigma[i];
  g_t1[i] = dtau * sigma[i];
}

// Forward from opacities: T_i = prod_{j<i} (1 - alpha_j), w_i = T_i * alpha_i.
template <typename T>
NA_HD void render_alpha_fwd_ray(const T* alpha, T* w, T* trans, index_t s, index_t n) {
  using A = acc_t<T>;
  A acc = 1;  // (1 - alpha) is formed in acc_t too: in float32 it would lose the low bits of small opacities
  for (index_t i = s; i < s + n; ++i) {
    const T tr = static_cast<T>(acc);
    trans[i] = tr;
    w[i] = tr * alpha[i];
    acc *= (A(1) - A(alpha[i]));
  }
}

// Backward from opacities, division-free (exact when some alpha_j = 1):
// d alpha_i = g_w_i T_i - T_i E_i,  E_i = h_{i+1} + (1 - alpha_{i+1}) E_{i+1},  h_j = g_T_j + g_w_j alpha_j.
template <typename T>
NA_HD void render_alpha_bwd_ray(const T* gw, const T* gt, const T* alpha, const T* trans, T* g_alpha, index_t s,
                                index_t n) {
  using A = acc_t<T>;
  A e = 0;
  for (index_t i = s + n - 1; i >= s; --i) {
    g_alpha[i] = static_cast<T>(A(gw[i]) * A(trans[i]) - A(trans[i]) * e);
    e = (A(gt[i]) + A(gw[i]) * A(alpha[i])) + (A(1) - A(alpha[i])) * e;
  }
}

// ---------------------------------------------------------------------------------------------
// Sorted search and inverse-CDF sampling
// ---------------------------------------------------------------------------------------------

// Upper bound of x in v[s .. s+n-1]: the number of leading entries that are not > x, by bisection (nerfacc's
// comparison, !(v > x): a NaN query lands at the end, like torch.searchsorted's).
template <typename T>
NA_HD index_t count_le(const T* v, index_t s, index_t n, T x) {
  index_t lo = 0, hi = n;
  while (lo < hi) {
    const index_t mid = lo + (hi - lo) / 2;
    if (!(v[s + mid] > x)) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// One query of _searchsorted against the chunk (base, cnt), by nerfacc 0.5's rule (pdf.cu, searchsorted_kernel):
// with last = base + cnt - 1, the upper bound is searched in the chunk without its last entry,
// p = base + count_le(v[base .. last - 1], q), then left = clamp(p - 1, base, last) and right = clamp(p, base, last)
// (max(min(., last), base)). So v[left] <= q < v[right] inside the range; a query below it gives (base, base), one
// at or above v[last] gives (last - 1, last); a one-entry chunk gives (base, base), an empty one base for both.
// total = numel of the sorted values: indices are also clamped to total - 1, which only changes an empty chunk
// at the very end (nerfacc would return the out-of-range index base there).
template <typename T>
NA_HD void searchsorted_one(const T* sorted, index_t base, index_t cnt, index_t total, T q, int64_t& left,
                            int64_t& right) {
  const index_t last = base + cnt - 1;
  const index_t p = base + count_le(sorted, base, na_max<index_t>(cnt - 1, 0), q);
  left = na_max<index_t>(na_min<index_t>(p - 1, last), base);
  right = na_max<index_t>(na_min<index_t>(p, last), base);
  if (total > 0) {
    right = na_min<index_t>(right, total - 1);
    left = na_min<index_t>(left, total - 1);
  }
}

// Sample j (0 <= j < n) of one ray's inverse-CDF sampling (cnt > 0 edges from b).
template <typename T>
NA_HD T importance_sample_one(const T* t, const T* cdf, index_t b, index_t cnt, index_t n, T bias, index_t j) {
  const index_t last = b + cnt - 1;
  const T c_lo = cdf[b];
  const T c_hi = cdf[last];
  const T u = c_lo + (static_cast<T>(j) + bias) * (c_hi - c_lo) / static_cast<T>(n);
  const index_t p = count_le(cdf, b, cnt - 1, u);
  const index_t p0 = na_min<index_t>(na_max<index_t>(b + p - 1, b), last);
  const index_t p1 = na_min<index_t>(na_max<index_t>(b + p, b), last);
  const T cu0 = cdf[p0], cu1 = cdf[p1];
  const T t0 = t[p0], t1 = t[p1];
  const T du = cu1 - cu0;
  return (du < T(1e-10)) ? T(0.5) * (t0 + t1) : t0 + (u - cu0) * (t1 - t0) / du;
}

// Edge q (0 <= q <= n) of one ray's inverse-CDF sampling, from its samples (recomputed: one thread per edge).
template <typename T>
NA_HD T importance_edge_one(const T* t, const T* cdf, index_t b, index_t cnt, index_t n, T bias, index_t q) {
  const index_t last = b + cnt - 1;
  if (n == 1) return q == 0 ? t[b] : t[last];
  if (q == 0) {
    const T s0 = importance_sample_one(t, cdf, b, cnt, n, bias, 0);
    const T s1 = importance_sample_one(t, cdf, b, cnt, n, bias, 1);
    return nan_max(s0 - T(0.5) * (s1 - s0), t[b]);
  }
  if (q == n) {
    const T a = importance_sample_one(t, cdf, b, cnt, n, bias, n - 2);
    const T z = importance_sample_one(t, cdf, b, cnt, n, bias, n - 1);
    return nan_min(z + T(0.5) * (z - a), t[last]);
  }
  return T(0.5) * (importance_sample_one(t, cdf, b, cnt, n, bias, q - 1) +
                   importance_sample_one(t, cdf, b, cnt, n, bias, q));
}

// Inverse-CDF sampling of one ray: n samples into samples[so ..), n + 1 edges into edges[eo ..).
template <typename T>
NA_HD void importance_sample_ray(const T* t, const T* cdf, index_t b, index_t cnt, index_t n, T bias, T* samples,
                                 index_t so, T* edges, index_t eo) {
  if (n <= 0 || cnt <= 0) return;
  const index_t last = b + cnt - 1;
  for (index_t j = 0; j < n; ++j) samples[so + j] = importance_sample_one(t, cdf, b, cnt, n, bias, j);
  const T e_first = t[b];
  const T e_last = t[last];
  const T* sm = samples + so;
  if (n == 1) {
    edges[eo] = e_first;
    edges[eo + 1] = e_last;
    return;
  }
  for (index_t j = 1; j < n; ++j) edges[eo + j] = T(0.5) * (sm[j - 1] + sm[j]);
  edges[eo] = nan_max(sm[0] - T(0.5) * (sm[1] - sm[0]), e_first);
  edges[eo + n] = nan_min(sm[n - 1] + T(0.5) * (sm[n - 1] - sm[n - 2]), e_last);
}

// ---------------------------------------------------------------------------------------------
// Scene contraction (mip-NeRF 360) of one point
// ---------------------------------------------------------------------------------------------

// Norm of z and its gradient direction dn/dz (amax splits ties evenly, like torch).
template <typename T>
NA_HD T contraction_norm(const T* z, bool linf, T* grad) {
  if (!linf) {
    const T n = na_sqrt(z[0] * z[0] + z[1] * z[1] + z[2] * z[2]);
    for (int a = 0; a < 3; ++a) grad[a] = n > T(0) ? z[a] / n : T(0);
    return n;
  }
  const T m = nan_max(nan_max(na_abs(z[0]), na_abs(z[1])), na_abs(z[2]));  // NaN propagates, like torch's amax
  int ties = 0;
  for (int a = 0; a < 3; ++a) ties += (na_abs(z[a]) == m);
  for (int a = 0; a < 3; ++a) {
    const T sgn = z[a] > T(0) ? T(1) : (z[a] < T(0) ? T(-1) : T(0));
    grad[a] = (na_abs(z[a]) == m) ? sgn / static_cast<T>(ties) : T(0);
  }
  return m;
}

// The contraction's limit where |z| is infinite (an infinite coordinate, or a norm that overflows): the point lies
// on the outer shell, y = (z / |z|) / 2 + 1/2 (the formula below would give inf / inf = NaN), with gradient 0. Only
// the infinite coordinates count for the direction (their signs; in L2 shared evenly among them); a NaN coordinate
// keeps the NaN result. Writes y (when given) and returns true when the limit applies.
template <typename T>
NA_HD bool contract_at_infinity(const T* z, bool linf, T n, T* y) {
  if (!(n == na_inf<T>())) return false;
  T s = T(0);
  for (int a = 0; a < 3; ++a) {
    if (z[a] != z[a]) return false;
    s = na_max(s, na_abs(z[a]));
  }
  T u[3], un = T(0);
  for (int a = 0; a < 3; ++a) {
    if (s == na_inf<T>()) {
      u[a] = na_abs(z[a]) == s ? (z[a] > T(0) ? T(1) : T(-1)) : T(0);
    } else {
      u[a] = z[a] / s;  // finite but |z|^2 overflowed: scale before normalising
    }
    un = linf ? na_max(un, na_abs(u[a])) : un + u[a] * u[a];
  }
  if (!linf) un = na_sqrt(un);
  for (int a = 0; y != nullptr && a < 3; ++a) y[a] = u[a] / un * T(0.5) + T(0.5);
  return true;
}

template <typename T>
NA_HD void contract_point(const T* x, const T* aabb, bool linf, T* y, const T* gy, T* gx) {
  T z[3], center[3], half[3], dn[3];
  for (int a = 0; a < 3; ++a) {
    center[a] = (aabb[a] + aabb[a + 3]) * T(0.5);
    half[a] = (aabb[a + 3] - aabb[a]) * T(0.5);
    z[a] = (x[a] - center[a]) / half[a];
  }
  const T n = contraction_norm(z, linf, dn);
  if (contract_at_infinity(z, linf, n, y)) {
    for (int a = 0; gx != nullptr && a < 3; ++a) gx[a] = T(0);
    return;
  }
  const T m = na_max(n, T(1));
  if (y != nullptr) {
    for (int a = 0; a < 3; ++a) y[a] = (T(2) - T(1) / m) * z[a] / m * T(0.25) + T(0.5);
  }
  if (gx != nullptr) {
    // zc = f(m) z with f = 2/m - 1/m^2; J^T g = f g + f'(m) (z . g) dn/dz (when the clamp is inactive).
    const T f = (T(2) - T(1) / m) / m;
    T zg = T(0);
    for (int a = 0; a < 3; ++a) zg += z[a] * gy[a];
    const T fp = n >= T(1) ? (T(-2) / (m * m) + T(2) / (m * m * m)) : T(0);
    for (int a = 0; a < 3; ++a) gx[a] = (T(0.25) * (f * gy[a] + fp * zg * dn[a])) / half[a];
  }
}

template <typename T>
NA_HD void uncontract_point(const T* y, const T* aabb, bool linf, T* x, const T* gx, T* gy) {
  T zc[3], center[3], half[3], dn[3];
  for (int a = 0; a < 3; ++a) {
    center[a] = (aabb[a] + aabb[a + 3]) * T(0.5);
    half[a] = (aabb[a + 3] - aabb[a]) * T(0.5);
    zc[a] = (y[a] - T(0.5)) * T(4);
  }
  const T n = contraction_norm(zc, linf, dn);
  const T m_max = static_cast<T>(2.0 - 1e-6);
  const T m = na_min(na_max(n, T(1)), m_max);
  const T g = m * (T(2) - m);
  if (x != nullptr) {
    for (int a = 0; a < 3; ++a) x[a] = zc[a] / g * half[a] + center[a];
  }
  if (gy != nullptr) {
    // z = zc / g(m), g = m (2 - m): J^T v = v / g - (g'(m) / g^2) (zc . v) dn/dzc when 1 <= n <= m_max.
    T v[3], zv = T(0);
    for (int a = 0; a < 3; ++a) {
      v[a] = gx[a] * half[a];
      zv += zc[a] * v[a];
    }
    const bool active = (n >= T(1)) && (n <= m_max);
    const T c = active ? (T(2) - T(2) * m) / (g * g) : T(0);
    for (int a = 0; a < 3; ++a) gy[a] = T(4) * (v[a] / g - c * zv * dn[a]);
  }
}

// Accumulation backward for one sample i of out[r] += w[i] * v[i] (or += w[i] without values):
// gw[i] = <go[r], v[i]>, gv[i] = go[r] * w[i]; samples whose ray is outside [0, n_rays) get zeros.
template <typename T>
NA_HD void accumulate_bwd_elem(const T* go, const T* w, const T* v, const int64_t* ri, index_t i, int64_t dim,
                               int64_t n_rays, T* gw, T* gv) {
  const int64_t r = ri[i];
  if (r < 0 || r >= n_rays) {
    gw[i] = T(0);
    for (int64_t c = 0; gv != nullptr && c < dim; ++c) gv[i * dim + c] = T(0);
    return;
  }
  if (v == nullptr) {
    gw[i] = go[r];
    return;
  }
  acc_t<T> acc = 0;
  for (int64_t c = 0; c < dim; ++c) {
    acc += acc_t<T>(go[r * dim + c]) * acc_t<T>(v[i * dim + c]);
    gv[i * dim + c] = go[r * dim + c] * w[i];
  }
  gw[i] = static_cast<T>(acc);
}

// ---------------------------------------------------------------------------------------------
// Multiresolution hash encoding (instant-ngp), bit-compatible with Nerfstudio's torch HashEncoding:
// level l scales x by scale[l]; the 8 integer corners around it are hashed as
// (cx * 1) ^ (cy * 2654435761) ^ (cz * 805459861) in 64-bit, reduced modulo the table size with a
// non-negative remainder (Python's %), and offset into level l's part of the table; features are
// interpolated trilinearly with offset o = s - floor(s).
// ---------------------------------------------------------------------------------------------
NA_HD int64_t hash_corner(int64_t cx, int64_t cy, int64_t cz, int64_t table_size) {
  int64_t h = cx ^ (cy * 2654435761LL) ^ (cz * 805459861LL);
  h %= table_size;
  return h < 0 ? h + table_size : h;
}

// The 8 table rows (within the whole table) and trilinear weights of point x at one level. Corner k takes
// the ceiling on axis a when bit a of k is set. `dw` (optional) receives d w_k / d o_a as dw[3 * k + a].
template <typename T>
NA_HD void hash_level_corners(const T* x, T scale, int64_t table_size, int64_t level, int64_t* rows, T* w, T* dw) {
  T o[3];
  int64_t lo[3], hi[3];
  for (int a = 0; a < 3; ++a) {
    const T s = x[a] * scale;
    const T f = static_cast<T>(floor(static_cast<double>(s)));
    lo[a] = static_cast<int64_t>(static_cast<int32_t>(f));
    hi[a] = static_cast<int64_t>(static_cast<int32_t>(ceil(static_cast<double>(s))));
    o[a] = s - f;
  }
  for (int k = 0; k < 8; ++k) {
    const int64_t c0 = (k & 1) ? hi[0] : lo[0];
    const int64_t c1 = (k & 2) ? hi[1] : lo[1];
    const int64_t c2 = (k & 4) ? hi[2] : lo[2];
    rows[k] = level * table_size + hash_corner(c0, c1, c2, table_size);
    T f[3];
    for (int a = 0; a < 3; ++a) f[a] = ((k >> a) & 1) ? o[a] : T(1) - o[a];
    w[k] = f[0] * f[1] * f[2];
    if (dw != nullptr) {
      for (int a = 0; a < 3; ++a) {
        const T sign = ((k >> a) & 1) ? T(1) : T(-1);
        dw[3 * k + a] = sign * f[(a + 1) % 3] * f[(a + 2) % 3];
      }
    }
  }
}

// Forward of one point at one level: out[0..F) = sum_k w_k * table[rows_k].
template <typename T>
NA_HD void hash_encode_fwd_level(const T* x, T scale, const T* table, int64_t table_size, int64_t level, int64_t F,
                                 T* out) {
  int64_t rows[8];
  T w[8];
  hash_level_corners<T>(x, scale, table_size, level, rows, w, nullptr);
  for (int64_t c = 0; c < F; ++c) {
    T acc = T(0);
    for (int k = 0; k < 8; ++k) acc += w[k] * table[rows[k] * F + c];
    out[c] = acc;
  }
}

// Gradient of one point at one level w.r.t. x (added into gx[0..3)), given the output gradient go[0..F).
template <typename T>
NA_HD void hash_encode_bwd_x_level(const T* x, T scale, const T* table, int64_t table_size, int64_t level,
                                   int64_t F, const T* go, T* gx) {
  int64_t rows[8];
  T w[8], dw[24];
  hash_level_corners<T>(x, scale, table_size, level, rows, w, dw);
  for (int k = 0; k < 8; ++k) {
    T dot = T(0);
    for (int64_t c = 0; c < F; ++c) dot += go[c] * table[rows[k] * F + c];
    for (int a = 0; a < 3; ++a) gx[a] += dot * dw[3 * k + a] * scale;
  }
}

NA_NAMESPACE_END
