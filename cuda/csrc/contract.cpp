// contract family: contract_fwd, contract_bwd (mip-NeRF 360 contraction and its inverse). Checked entry points
// (both builds) and their registration; the launchers are in cuda/cpu/contract.cpp and cuda/gpu/contract.cu.
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "nerfaccel/launch.h"

NA_NAMESPACE_BEGIN

namespace {

void check_points(const Tensor& x, const Tensor& aabb) {
  check_float(x, "x", x.device());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == 3, "nerfaccel: `x` must have shape [n, 3], got ", x.sizes());
  check_float(aabb, "aabb", x.device());
  check_same_dtype(aabb, x, "aabb", "x");
  check_shape(aabb, "aabb", {6});
}

Tensor contract_fwd(const Tensor& x, const Tensor& aabb, bool linf, bool inverse) {
  check_points(x, aabb);
  const c10::OptionalDeviceGuard guard(x.device());
  auto y = at::empty_like(x);
  if (x.size(0) > 0) contract_launch(x, aabb, Tensor(), linf, inverse, y);
  return y;
}

Tensor contract_bwd(const Tensor& grad, const Tensor& x, const Tensor& aabb, bool linf, bool inverse) {
  check_points(x, aabb);
  check_like(grad, x, "grad", "x");
  const c10::OptionalDeviceGuard guard(x.device());
  auto gx = at::empty_like(x);
  if (x.size(0) > 0) contract_launch(x, aabb, grad, linf, inverse, gx);
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(nerfaccel, NA_DISPATCH_KEY, m) {
  m.impl("contract_fwd", &contract_fwd);
  m.impl("contract_bwd", &contract_bwd);
}

NA_NAMESPACE_END
