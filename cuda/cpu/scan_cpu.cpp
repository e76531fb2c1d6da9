// CPU launchers of the scan family (entry points: cuda/csrc/scan.cpp): one chunk per OpenMP iteration.
#include <torch/extension.h>

#include "nerfaccel/launch.h"
#include "nerfaccel/scan.h"
#include "parallel.h"

NA_NAMESPACE_BEGIN

void scan_fwd_launch(const Tensor& inputs, const Chunks& chunks, bool prod, bool exclusive, Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(inputs.scalar_type(), "scan_fwd", [&] {
    const scalar_t* x = inputs.data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
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
