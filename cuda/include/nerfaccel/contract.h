// Scene contraction (mip-NeRF 360) of one point.
//
// Written once for the host and the device (NA_HD). Semantics follow the pure-PyTorch reference in
// nerfaccel_plugin/_torch_impl.py, which is the source of truth. Running sums and products along a ray are kept in
// acc_t (double, common.h); per-sample values and outputs in the input type T.
#pragma once

#include "common.h"

NA_NAMESPACE_BEGIN

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

// Point i of contract_fwd (gy == nullptr: out = y) or contract_bwd (out = d/dx of <gy, y>), forward or inverse.
template <typename T>
NA_HD void contract_one(const T* x, const T* aabb, const T* gy, bool linf, bool inverse, T* out, index_t i) {
  T* y = gy == nullptr ? out + 3 * i : nullptr;
  const T* g = gy == nullptr ? nullptr : gy + 3 * i;
  T* gx = gy == nullptr ? nullptr : out + 3 * i;
  if (inverse) {
    uncontract_point<T>(x + 3 * i, aabb, linf, y, g, gx);
  } else {
    contract_point<T>(x + 3 * i, aabb, linf, y, g, gx);
  }
}

NA_NAMESPACE_END
