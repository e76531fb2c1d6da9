// Sorted search and inverse-CDF sampling of one ray.
//
// Written once for the host and the device (NA_HD). Semantics follow the pure-PyTorch reference in
// nerfaccel_plugin/_torch_impl.py, which is the source of truth. Running sums and products along a ray are kept in
// acc_t (double, common.h); per-sample values and outputs in the input type T.
#pragma once

#include "common.h"

NA_NAMESPACE_BEGIN

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

NA_NAMESPACE_END
