// CPU launchers of the scan family (entry points: cuda/csrc/scan.cpp): one chunk per OpenMP iteration.
#include <ATen/ATen.h>

#include <algorithm>

#include "nerfaccel/launch.h"
#include "nerfaccel/scan.h"
#include "parallel.h"

NA_NAMESPACE_BEGIN

namespace {

// Batched rows (n_rays, s): blocks of kRows rows advance together, sample by sample, so their running sums and
// products (double) form independent dependence chains. Same operations in the same order per row as scan.h.
constexpr int64_t kRows = 8;

template <typename T>
void scan_fwd_rows(const T* x, T* y, int64_t r0, int64_t nr, int64_t s, bool prod, bool exclusive) {
  acc_t<T> acc[kRows];
  for (int64_t k = 0; k < kRows; ++k) acc[k] = prod ? 1 : 0;
  for (int64_t j = 0; j < s; ++j) {
    for (int64_t k = 0; k < nr; ++k) {
      const int64_t i = (r0 + k) * s + j;
      if (exclusive) y[i] = static_cast<T>(acc[k]);
      acc[k] = prod ? acc[k] * x[i] : acc[k] + x[i];
      if (!exclusive) y[i] = static_cast<T>(acc[k]);
    }
  }
}

template <typename T>
void scan_sum_bwd_rows(const T* g, T* gx, int64_t r0, int64_t nr, int64_t s, bool exclusive) {
  acc_t<T> acc[kRows] = {};
  for (int64_t j = s - 1; j >= 0; --j) {
    for (int64_t k = 0; k < nr; ++k) {
      const int64_t i = (r0 + k) * s + j;
      if (exclusive) gx[i] = static_cast<T>(acc[k]);
      acc[k] += g[i];
      if (!exclusive) gx[i] = static_cast<T>(acc[k]);
    }
  }
}

// The division-free product backward of scan.h (scan_prod_bwd), kRows rows at a time.
template <typename T>
void scan_prod_bwd_rows(const T* g, const T* x, const T* y, T* gx, int64_t r0, int64_t nr, int64_t s, bool exclusive) {
  using A = acc_t<T>;
  A e[kRows] = {};  // E_{j+1} of each row on entry to step j
  for (int64_t j = s - 1; j >= 0; --j) {
    const bool has_next = j + 1 < s;
    for (int64_t k = 0; k < nr; ++k) {
      const int64_t i = (r0 + k) * s + j;
      if (exclusive) {
        e[k] = has_next ? A(g[i + 1]) + A(x[i + 1]) * e[k] : A(0);
      } else {
        e[k] = has_next ? A(g[i]) + A(x[i + 1]) * e[k] : A(g[i]);
      }
      const A p = exclusive ? A(y[i]) : (j > 0 ? A(y[i - 1]) : A(1));
      gx[i] = static_cast<T>(p * e[k]);
    }
  }
}

}  // namespace

void scan_fwd_launch(const Tensor& inputs, const Chunks& chunks, bool prod, bool exclusive, Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(inputs.scalar_type(), "scan_fwd", [&] {
    const scalar_t* x = inputs.data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    if (chunks.packed == nullptr) {
      parallel_row_blocks(chunks.rows, chunks.stride, kRows, [&](int64_t r0, int64_t nr) {
        scan_fwd_rows(x, y, r0, nr, chunks.stride, prod, exclusive);
      });
      return;
    }
    parallel_rays(chunks.rows, [&](int64_t r) {
      if (prod) {
        scan_prod_fwd(x, y, chunks.start(r), chunks.count(r), exclusive);
      } else {
        scan_sum_fwd(x, y, chunks.start(r), chunks.count(r), exclusive);
      }
    });
  });
}

void scan_bwd_launch(const Tensor& grad, const Tensor& inputs, const Tensor& outputs, const Chunks& chunks,
                     bool prod, bool exclusive, Tensor& g_inputs) {
  AT_DISPATCH_FLOATING_TYPES(inputs.scalar_type(), "scan_bwd", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* x = inputs.data_ptr<scalar_t>();
    const scalar_t* y = outputs.data_ptr<scalar_t>();
    scalar_t* gx = g_inputs.data_ptr<scalar_t>();
    if (chunks.packed == nullptr) {
      parallel_row_blocks(chunks.rows, chunks.stride, kRows, [&](int64_t r0, int64_t nr) {
        if (prod) {
          scan_prod_bwd_rows(g, x, y, gx, r0, nr, chunks.stride, exclusive);
        } else {
          scan_sum_bwd_rows(g, gx, r0, nr, chunks.stride, exclusive);
        }
      });
      return;
    }
    parallel_rays(chunks.rows, [&](int64_t r) {
      if (prod) {
        scan_prod_bwd(g, x, y, gx, chunks.start(r), chunks.count(r), exclusive);
      } else {
        scan_sum_bwd(g, gx, chunks.start(r), chunks.count(r), exclusive);
      }
    });
  });
}

NA_NAMESPACE_END
