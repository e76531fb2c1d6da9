// Multiresolution hash encoding of one point.
//
// Written once for the host and the device (NA_HD). Semantics follow the pure-PyTorch reference in
// nerfaccel_plugin/_torch_impl.py, which is the source of truth. Running sums and products along a ray are kept in
// acc_t (double, common.h); per-sample values and outputs in the input type T.
#pragma once

#include "common.h"

NA_NAMESPACE_BEGIN

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
