// hash family: hash_encode_fwd, hash_encode_bwd (multiresolution hash encoding, bit-compatible with Nerfstudio's
// torch HashEncoding). Checked entry points and their registration; launchers in cuda/cpu/hash.cpp. CPU build only
// (on CUDA Nerfstudio uses tiny-cuda-nn or torch).
#include <torch/library.h>

#include <tuple>

#include "nerfaccel/launch.h"

#if NA_SEGMENTED_KERNELS
NA_NAMESPACE_BEGIN

namespace {

// x [n, 3], table [levels * table_size, F], scales [levels].
void check_hash(const Tensor& x, const Tensor& table, const Tensor& scales, int64_t table_size) {
  check_float(x, "x", x.device());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == 3, "nerfaccel: `x` must have shape [n, 3], got ", x.sizes());
  check_float(table, "table", x.device());
  check_same_dtype(table, x, "table", "x");
  check_float(scales, "scales", x.device());
  check_same_dtype(scales, x, "scales", "x");
  check_dim(scales, "scales", 1);
  TORCH_CHECK_VALUE(table_size > 0, "nerfaccel: `table_size` must be > 0, got ", table_size);
  TORCH_CHECK_VALUE(table.dim() == 2 && table.size(0) == scales.size(0) * table_size,
                    "nerfaccel: `table` must have shape [levels * table_size, features] = [",
                    scales.size(0) * table_size, ", F], got ", table.sizes());
}

Tensor hash_encode_fwd(const Tensor& x, const Tensor& table, const Tensor& scales, int64_t table_size) {
  check_hash(x, table, scales, table_size);
  auto out = at::empty({x.size(0), scales.size(0) * table.size(1)}, x.options());
  hash_encode_fwd_launch(x, table, scales, table_size, out);
  return out;
}

// Returns (grad_table, grad_x); grad_x is empty (0,) unless need_x_grad.
std::tuple<Tensor, Tensor> hash_encode_bwd(const Tensor& grad, const Tensor& x, const Tensor& table,
                                           const Tensor& scales, int64_t table_size, bool need_x_grad) {
  check_hash(x, table, scales, table_size);
  const int64_t n = x.size(0), width = scales.size(0) * table.size(1);
  check_float(grad, "grad", x.device());
  check_same_dtype(grad, x, "grad", "x");
  TORCH_CHECK_VALUE(grad.dim() == 2 && grad.size(0) == n && grad.size(1) == width, "nerfaccel: `grad` must have shape [",
                    n, ", ", width, "], got ", grad.sizes());
  auto g_table = at::zeros_like(table);
  Tensor g_x = need_x_grad ? at::zeros_like(x) : at::empty({0}, x.options());
  hash_encode_bwd_launch(grad, x, table, scales, table_size, g_table, g_x);
  return {g_table, g_x};
}

}  // namespace

TORCH_LIBRARY_IMPL(nerfaccel, NA_DISPATCH_KEY, m) {
  m.impl("hash_encode_fwd", &hash_encode_fwd);
  m.impl("hash_encode_bwd", &hash_encode_bwd);
}

NA_NAMESPACE_END
#endif
