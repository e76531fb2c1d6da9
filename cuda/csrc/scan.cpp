// scan family: scan_fwd, scan_bwd (inclusive/exclusive sums and products along each ray). Checked entry points and
// their registration; launchers in cuda/cpu/scan.cpp. CPU build only: on CUDA the Triton kernels of issue 13
// register these schemas from Python (nerfaccel_plugin/_ops.py has them).
#include <torch/library.h>

#include "nerfaccel/launch.h"

#if NA_SEGMENTED_KERNELS
NA_NAMESPACE_BEGIN

namespace {

Tensor scan_fwd(const Tensor& inputs, const OptTensor& packed_info, bool prod, bool exclusive) {
  check_layout(inputs, packed_info, "inputs");
  bool covers = false;
  const Chunks chunks = chunks_of(inputs, packed_info, &covers);
  auto out = covers ? at::empty_like(inputs) : at::zeros_like(inputs);
  scan_fwd_launch(inputs, chunks, prod, exclusive, out);
  return out;
}

Tensor scan_bwd(const Tensor& grad, const Tensor& inputs, const Tensor& outputs, const OptTensor& packed_info,
                bool prod, bool exclusive) {
  check_layout(inputs, packed_info, "inputs");
  check_like(grad, inputs, "grad", "inputs");
  check_like(outputs, inputs, "outputs", "inputs");
  bool covers = false;
  const Chunks chunks = chunks_of(inputs, packed_info, &covers);
  auto g = covers ? at::empty_like(inputs) : at::zeros_like(inputs);
  scan_bwd_launch(grad, inputs, outputs, chunks, prod, exclusive, g);
  return g;
}

}  // namespace

TORCH_LIBRARY_IMPL(nerfaccel, NA_DISPATCH_KEY, m) {
  m.impl("scan_fwd", &scan_fwd);
  m.impl("scan_bwd", &scan_bwd);
}

NA_NAMESPACE_END
#endif
