// Volume rendering along one chunk (weights from densities or opacities) and accumulation.
//
// Written once for the host and the device (NA_HD). Semantics follow the pure-PyTorch reference in
// nerfaccel_plugin/_torch_impl.py, which is the source of truth. Running sums and products along a ray are kept in
// acc_t (double, common.h); per-sample values and outputs in the input type T.
#pragma once

#include "common.h"

NA_NAMESPACE_BEGIN

// ---------------------------------------------------------------------------------------------
// Volume rendering (per chunk: a pass with the running sums, a vectorised pass with the exponentials)
// ---------------------------------------------------------------------------------------------
// A cotangent that autograd did not materialise (None) reads as zero.
template <typename T>
NA_HD T cot(const T* g, index_t i) {
  return g == nullptr ? T(0) : g[i];
}

// Forward from densities: tau_i = sigma_i dt_i, alpha_i = 1 - exp(-tau_i), T_i = exp(-D_i) with the optical
// depth D_i = sum_{j<i} tau_j, w_i = T_i * alpha_i.
template <typename T>
NA_HD T density_tau(T t0, T t1, T sigma) {
  return sigma * (t1 - t0);
}
template <typename T>
NA_HD T alpha_from_tau(T tau) {
  return T(1) - na_exp(-tau);
}
template <typename T>
NA_HD T density_alpha(T t0, T t1, T sigma) {
  return alpha_from_tau(density_tau(t0, t1, sigma));
}

// In two passes: a sequential pass keeps the running optical depth in acc_t (tau and D are parked in the alpha
// and trans outputs, D rounded to T before its exponential), then a pass without dependences between samples
// evaluates the exponentials, which the CPU build vectorises (NA_SIMD).
template <typename T>
NA_HD void render_density_fwd_ray(const T* t0, const T* t1, const T* sigma, T* alpha, T* w, T* trans, index_t s,
                                  index_t n) {
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
    const T tr = na_exp(-trans[i]);
    alpha[i] = a;
    trans[i] = tr;
    w[i] = tr * a;
  }
}

// Backward from densities: d tau_i = (g_a_i + g_w_i T_i) exp(-tau_i) - sum_{j>i} (g_T_j + g_w_j a_j) T_j,
// then d sigma_i = d tau_i dt_i, d t1_i = -d t0_i = d tau_i sigma_i. The suffix sum and d tau_i are computed in
// acc_t (d tau_i is the small difference of two large terms on long rays). Missing cotangents (nullptr) are zero;
// g_t0 / g_t1 may be nullptr (those gradients are not needed). The decays exp(-tau_i) are computed first,
// vectorised and parked in g_sigma, then the sequential reverse sweep.
template <typename T>
NA_HD void render_density_bwd_ray(const T* gw, const T* gt, const T* ga, const T* t0, const T* t1, const T* sigma,
                                  const T* trans, const T* alpha, T* g_t0, T* g_t1, T* g_sigma, index_t s,
                                  index_t n) {
  using A = acc_t<T>;
  NA_SIMD
  for (index_t i = s; i < s + n; ++i) g_sigma[i] = na_exp(-density_tau(t0[i], t1[i], sigma[i]));
  A suffix = 0;
  for (index_t i = s + n - 1; i >= s; --i) {
    const T dt = t1[i] - t0[i];
    const T g_w = cot(gw, i);
    const T dtau = static_cast<T>((A(cot(ga, i)) + A(g_w) * A(trans[i])) * A(g_sigma[i]) - suffix);
    suffix += (A(cot(gt, i)) + A(g_w) * A(alpha[i])) * A(trans[i]);
    g_sigma[i] = dtau * dt;
    if (g_t0 != nullptr) {
      g_t0[i] = -dtau * sigma[i];
      g_t1[i] = dtau * sigma[i];
    }
  }
}

// Samples outside every chunk: only the alpha output depends on them.
template <typename T>
NA_HD void render_density_bwd_elem(const T* ga, const T* t0, const T* t1, const T* sigma, T* g_t0, T* g_t1,
                                   T* g_sigma, index_t i) {
  const T dt = t1[i] - t0[i];
  const T dtau = cot(ga, i) * na_exp(-(sigma[i] * dt));
  g_sigma[i] = dtau * dt;
  if (g_t0 != nullptr) {
    g_t0[i] = -dtau * sigma[i];
    g_t1[i] = dtau * sigma[i];
  }
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
    const A g_w = A(cot(gw, i));
    g_alpha[i] = static_cast<T>(g_w * A(trans[i]) - A(trans[i]) * e);
    e = (A(cot(gt, i)) + g_w * A(alpha[i])) + (A(1) - A(alpha[i])) * e;
  }
}

// Accumulation backward for one sample i of out[r] += w[i] * v[i] (or += w[i] without values):
// gw[i] = <go[r], v[i]>, gv[i] = go[r] * w[i]; samples whose ray is outside [0, n_rays) get zeros. gw or gv may be
// nullptr (that gradient is not needed).
// D > 0 fixes the number of values per sample at compile time (dim is then ignored).
template <int D = 0, typename T>
NA_HD void accumulate_bwd_elem(const T* go, const T* w, const T* v, const int64_t* ri, index_t i, int64_t dim_,
                               int64_t n_rays, T* gw, T* gv) {
  const int64_t dim = D > 0 ? D : dim_;
  const int64_t r = ri[i];
  const bool inside = r >= 0 && r < n_rays;
  if (v == nullptr) {
    if (gw != nullptr) gw[i] = inside ? go[r] : T(0);
    return;
  }
  if (gv != nullptr) {
    for (int64_t c = 0; c < dim; ++c) gv[i * dim + c] = inside ? go[r * dim + c] * w[i] : T(0);
  }
  if (gw != nullptr) {
    acc_t<T> acc = 0;
    for (int64_t c = 0; inside && c < dim; ++c) acc += acc_t<T>(go[r * dim + c]) * acc_t<T>(v[i * dim + c]);
    gw[i] = static_cast<T>(acc);
  }
}

NA_NAMESPACE_END
