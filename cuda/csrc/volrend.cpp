// volrend family: render_weight_from_density_{fwd,bwd}, render_weight_from_alpha_{fwd,bwd},
// accumulate_along_rays_{fwd,bwd}. Checked entry points and their registration; launchers in cuda/cpu/volrend.cpp.
// CPU build only: on CUDA the Triton kernels of issue 13 register these schemas from Python.
//
// Backward ops get undefined tensors for cotangents that do not exist (autograd does not materialise them) and
// flags for the gradients that are needed; a gradient that is not needed is returned as an empty (0,) tensor.
#include <torch/library.h>

#include <tuple>

#include "nerfaccel/launch.h"

#if NA_SEGMENTED_KERNELS
NA_NAMESPACE_BEGIN

namespace {

// An optional cotangent: checked against ref, or an undefined tensor.
Tensor cotangent(const OptTensor& g, const Tensor& ref, const char* name, const char* ref_name) {
  if (!g.has_value() || !g->defined()) return Tensor();
  check_like(*g, ref, name, ref_name);
  return *g;
}

Tensor not_needed(const Tensor& like) { return at::empty({0}, like.options()); }

// covers_all: the caller knows that the chunks tile the samples. Not needed here (checked on the host, cheaply);
// kept in the schema for device kernels, which could only find out with a device sync.
Tensors3 density_fwd(const Tensor& t_starts, const Tensor& t_ends, const Tensor& sigmas, const OptTensor& packed_info,
                     bool /*covers_all*/) {
  check_layout(sigmas, packed_info, "sigmas");
  check_like(t_starts, sigmas, "t_starts", "sigmas");
  check_like(t_ends, sigmas, "t_ends", "sigmas");
  bool covers = false;
  const Chunks chunks = chunks_of(sigmas, packed_info, &covers);
  auto weights = covers ? at::empty_like(sigmas) : at::zeros_like(sigmas);
  auto trans = covers ? at::empty_like(sigmas) : at::zeros_like(sigmas);
  auto alphas = at::empty_like(sigmas);
  density_fwd_launch(t_starts, t_ends, sigmas, chunks, covers, weights, trans, alphas);
  return {weights, trans, alphas};
}

Tensors3 density_bwd(const OptTensor& grad_weights, const OptTensor& grad_trans, const OptTensor& grad_alphas,
                     const Tensor& t_starts, const Tensor& t_ends, const Tensor& sigmas, const Tensor& trans,
                     const Tensor& alphas, const OptTensor& packed_info, bool /*covers_all*/, bool need_t_grads) {
  check_layout(sigmas, packed_info, "sigmas");
  check_like(t_starts, sigmas, "t_starts", "sigmas");
  check_like(t_ends, sigmas, "t_ends", "sigmas");
  check_like(trans, sigmas, "trans", "sigmas");
  check_like(alphas, sigmas, "alphas", "sigmas");
  const auto gw = cotangent(grad_weights, sigmas, "grad_weights", "sigmas");
  const auto gt = cotangent(grad_trans, sigmas, "grad_trans", "sigmas");
  const auto ga = cotangent(grad_alphas, sigmas, "grad_alphas", "sigmas");
  bool covers = false;
  const Chunks chunks = chunks_of(sigmas, packed_info, &covers);
  auto g_t0 = need_t_grads ? at::empty_like(sigmas) : not_needed(sigmas);
  auto g_t1 = need_t_grads ? at::empty_like(sigmas) : not_needed(sigmas);
  auto g_sigmas = at::empty_like(sigmas);
  density_bwd_launch(gw, gt, ga, t_starts, t_ends, sigmas, trans, alphas, chunks, covers, g_t0, g_t1, g_sigmas);
  return {g_t0, g_t1, g_sigmas};
}

std::tuple<Tensor, Tensor> alpha_fwd(const Tensor& alphas, const OptTensor& packed_info) {
  check_layout(alphas, packed_info, "alphas");
  bool covers = false;
  const Chunks chunks = chunks_of(alphas, packed_info, &covers);
  auto weights = covers ? at::empty_like(alphas) : at::zeros_like(alphas);
  auto trans = covers ? at::empty_like(alphas) : at::zeros_like(alphas);
  alpha_fwd_launch(alphas, chunks, weights, trans);
  return {weights, trans};
}

Tensor alpha_bwd(const OptTensor& grad_weights, const OptTensor& grad_trans, const Tensor& alphas,
                 const Tensor& trans, const OptTensor& packed_info) {
  check_layout(alphas, packed_info, "alphas");
  check_like(trans, alphas, "trans", "alphas");
  const auto gw = cotangent(grad_weights, alphas, "grad_weights", "alphas");
  const auto gt = cotangent(grad_trans, alphas, "grad_trans", "alphas");
  bool covers = false;
  const Chunks chunks = chunks_of(alphas, packed_info, &covers);
  auto g = covers ? at::empty_like(alphas) : at::zeros_like(alphas);
  alpha_bwd_launch(gw, gt, alphas, trans, chunks, g);
  return g;
}

void check_accumulate(const Tensor& weights, const OptTensor& values, const Tensor& ray_indices) {
  check_float(weights, "weights", weights.device());
  check_dim(weights, "weights", 1);
  check_long(ray_indices, "ray_indices", weights.device());
  check_flat(ray_indices, "ray_indices", weights.size(0));
  if (values.has_value()) {
    check_float(*values, "values", weights.device());
    check_same_dtype(*values, weights, "values", "weights");
    TORCH_CHECK_VALUE(values->dim() == 2 && values->size(0) == weights.size(0),
                      "nerfaccel: `values` must have shape [n_samples, d] with n_samples = ", weights.size(0), ", got ",
                      values->sizes());
  }
}

Tensor accumulate_fwd(const Tensor& weights, const OptTensor& values, const Tensor& ray_indices, int64_t n_rays) {
  check_accumulate(weights, values, ray_indices);
  TORCH_CHECK_VALUE(n_rays >= 0, "nerfaccel: `n_rays` must be >= 0, got ", n_rays);
  const int64_t dim = values.has_value() ? values->size(1) : 1;
  auto out = at::zeros({n_rays, dim}, weights.options());
  accumulate_fwd_launch(weights, values, ray_indices, out);
  return out;
}

// grad_out: [n_rays, d] with d the width of values (1 without values); n_rays is its first size (ray indices outside
// [0, n_rays) get zero gradients).
std::tuple<Tensor, Tensor> accumulate_bwd(const Tensor& grad_out, const Tensor& weights, const OptTensor& values,
                                          const Tensor& ray_indices, bool need_weights_grad, bool need_values_grad) {
  check_accumulate(weights, values, ray_indices);
  check_float(grad_out, "grad_out", weights.device());
  check_same_dtype(grad_out, weights, "grad_out", "weights");
  const int64_t dim = values.has_value() ? values->size(1) : 1;
  TORCH_CHECK_VALUE(grad_out.dim() == 2 && grad_out.size(1) == dim, "nerfaccel: `grad_out` must have shape [n_rays, ",
                    dim, "] (the accumulated output's shape", values.has_value() ? ", d = values.shape[1]" : "",
                    "), got ", grad_out.sizes());
  const bool need_v = need_values_grad && values.has_value();
  auto g_w = need_weights_grad ? at::empty_like(weights) : not_needed(weights);
  auto g_v = need_v ? at::empty_like(*values) : not_needed(weights);
  if (dim == 0) return {need_weights_grad ? at::zeros_like(weights) : g_w, g_v};  // (no data pointers)
  accumulate_bwd_launch(grad_out, weights, values, ray_indices, g_w, g_v);
  return {g_w, g_v};
}

}  // namespace

TORCH_LIBRARY_IMPL(nerfaccel, NA_DISPATCH_KEY, m) {
  m.impl("render_weight_from_density_fwd", &density_fwd);
  m.impl("render_weight_from_density_bwd", &density_bwd);
  m.impl("render_weight_from_alpha_fwd", &alpha_fwd);
  m.impl("render_weight_from_alpha_bwd", &alpha_bwd);
  m.impl("accumulate_along_rays_fwd", &accumulate_fwd);
  m.impl("accumulate_along_rays_bwd", &accumulate_bwd);
}

NA_NAMESPACE_END
#endif
