// CPU launchers of the contract family (entry points: cuda/csrc/contract.cpp).
#include <ATen/ATen.h>

#include "nerfaccel/contract.h"
#include "nerfaccel/launch.h"
#include "parallel.h"

NA_NAMESPACE_BEGIN

void contract_launch(const Tensor& x, const Tensor& aabb, const Tensor& grad, bool linf, bool inverse, Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "contract", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* bp = aabb.data_ptr<scalar_t>();
    const scalar_t* gp = grad.defined() ? grad.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    parallel_elems(x.size(0), [&](int64_t i) { contract_one(xp, bp, gp, linf, inverse, op, i); });
  });
}

NA_NAMESPACE_END
