// CUDA launchers of the contract family (entry points: cuda/csrc/contract.cpp): one thread per point.
#include "launch.cuh"
#include "nerfaccel/contract.h"
#include "nerfaccel/launch.h"

NA_NAMESPACE_BEGIN

namespace {

// gy == nullptr: forward (out = y); otherwise backward (out = gx).
template <typename T>
__global__ void contract_kernel(const T* x, const T* aabb, const T* gy, int64_t n, bool linf, bool inverse, T* out) {
  NA_GRID_LOOP(i, n) { contract_one(x, aabb, gy, linf, inverse, out, i); }
}

}  // namespace

void contract_launch(const Tensor& x, const Tensor& aabb, const Tensor& grad, bool linf, bool inverse, Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "contract", [&] {
    const scalar_t* gy = grad.defined() ? grad.data_ptr<scalar_t>() : nullptr;
    NA_LAUNCH(contract_kernel<scalar_t>, x.size(0), x.data_ptr<scalar_t>(), aabb.data_ptr<scalar_t>(), gy, x.size(0),
              linf, inverse, out.data_ptr<scalar_t>());
  });
}

NA_NAMESPACE_END
