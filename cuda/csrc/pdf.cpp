// pdf family: searchsorted, importance_sampling. Checked entry points (both builds) and their registration; the
// launchers are in cuda/cpu/pdf.cpp and cuda/gpu/pdf.cu. Schemas: nerfaccel_plugin/_ops.py.
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <tuple>

#include "nerfaccel/launch.h"

NA_NAMESPACE_BEGIN

namespace {

std::tuple<Tensor, Tensor> searchsorted(const Tensor& sorted_vals, const Tensor& sorted_packed_info,
                                        const Tensor& query_vals, const Tensor& query_packed_info) {
  const auto dev = sorted_vals.device();
  check_float(sorted_vals, "sorted_vals", dev);
  check_dim(sorted_vals, "sorted_vals", 1);
  check_float(query_vals, "query_vals", dev);
  check_same_dtype(query_vals, sorted_vals, "query_vals", "sorted_vals");
  check_dim(query_vals, "query_vals", 1);
  check_packed_info(sorted_packed_info, "sorted_packed_info", dev);
  check_packed_info(query_packed_info, "query_packed_info", dev);
  check_shape(query_packed_info, "query_packed_info", sorted_packed_info.sizes());
  check_packed_ranges(sorted_packed_info, "sorted_packed_info", sorted_vals.size(0), /*disjoint=*/false);
  check_packed_ranges(query_packed_info, "query_packed_info", query_vals.size(0));
  const c10::OptionalDeviceGuard guard(dev);
  auto left = at::zeros({query_vals.size(0)}, query_vals.options().dtype(at::kLong));
  auto right = at::zeros({query_vals.size(0)}, query_vals.options().dtype(at::kLong));
  if (sorted_packed_info.size(0) > 0) {
    searchsorted_launch(sorted_vals, sorted_packed_info, query_vals, query_packed_info, left, right);
  }
  return {left, right};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> importance_sampling(const Tensor& edge_vals, const Tensor& cdfs,
                                                               const Tensor& packed_info, const Tensor& n_per_ray,
                                                               const Tensor& bias, int64_t n_uniform) {
  const auto dev = edge_vals.device();
  check_float(edge_vals, "edge_vals", dev);
  check_dim(edge_vals, "edge_vals", 1);
  check_same_flat(cdfs, edge_vals, "cdfs", "edge_vals");
  check_packed_info(packed_info, "packed_info", dev);
  check_packed_ranges(packed_info, "packed_info", edge_vals.size(0), /*disjoint=*/false);  // only read
  const int64_t n_rays = packed_info.size(0);
  check_long(n_per_ray, "n_per_ray", dev);
  check_flat(n_per_ray, "n_per_ray", n_rays);
  check_float(bias, "bias", dev);
  check_flat(bias, "bias", n_rays);
  const c10::OptionalDeviceGuard guard(dev);
  // Layout (cheap): rays with no edges or n = 0 produce nothing.
  // n_uniform >= 0: the caller promises every ray has edges and n_per_ray == n_uniform (batched layout), so the
  // sizes are known on the host (no device sync); a ray without edges (value checks off) then keeps zeros.
  const bool uniform = n_uniform >= 0;
  const auto counts = packed_info.select(1, 1);
  const auto n = uniform ? at::full_like(n_per_ray, n_uniform)
                         : at::where(counts > 0, n_per_ray, at::zeros_like(n_per_ray)).clamp_min(0);
  const auto e_counts = at::where(n > 0, n + 1, at::zeros_like(n));
  const auto s_packed = at::stack({n.cumsum(0) - n, n}, -1).contiguous();
  const auto e_packed = at::stack({e_counts.cumsum(0) - e_counts, e_counts}, -1).contiguous();
  const int64_t n_samples = uniform ? n_rays * n_uniform : (n_rays > 0 ? n.sum().item<int64_t>() : 0);
  const int64_t n_edges =
      uniform ? (n_uniform > 0 ? n_rays * (n_uniform + 1) : 0) : (n_rays > 0 ? e_counts.sum().item<int64_t>() : 0);
  auto samples = uniform ? at::zeros({n_samples}, edge_vals.options()) : at::empty({n_samples}, edge_vals.options());
  auto edges = uniform ? at::zeros({n_edges}, edge_vals.options()) : at::empty({n_edges}, edge_vals.options());
  const auto bias_c = bias.to(edge_vals.scalar_type()).contiguous();
  if (n_rays > 0 && (n_samples > 0 || n_edges > 0)) {
    importance_sampling_launch(edge_vals, cdfs, packed_info, s_packed, e_packed, bias_c, samples, edges);
  }
  return {samples, s_packed, edges, e_packed};
}

}  // namespace

TORCH_LIBRARY_IMPL(nerfaccel, NA_DISPATCH_KEY, m) {
  m.impl("searchsorted", &searchsorted);
  m.impl("importance_sampling", &importance_sampling);
}

NA_NAMESPACE_END
