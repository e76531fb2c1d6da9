// Segmented scans over one chunk [s, s + n) of a flat tensor (a packed_info row or a batched row).
//
// Written once for the host and the device (NA_HD). Semantics follow the pure-PyTorch reference in
// nerfaccel_plugin/_torch_impl.py, which is the source of truth. Running sums and products along a ray are kept in
// acc_t (double, common.h); per-sample values and outputs in the input type T.
#pragma once

#include "common.h"

NA_NAMESPACE_BEGIN

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

NA_NAMESPACE_END
