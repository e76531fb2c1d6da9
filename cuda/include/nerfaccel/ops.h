// Declarations of the extension entry points and their argument checks.
//
// The same declarations are implemented twice: by cpu_ops.cpp (system C++ compiler, OpenMP over rays)
// for the CPU extension and by cuda_ops.cu (nvcc) for the CUDA extension. bindings.cpp exposes them to
// Python; nerfaccel_plugin/_ext/ops.py registers them as torch.library ops with autograd and fake
// implementations. All float inputs must be float32 or float64 (the Python layer upcasts 16-bit
// floats); all index tensors are int64.
#pragma once

#include <torch/extension.h>

#include <optional>
#include <tuple>
#include <vector>

#include "checks.h"

NA_NAMESPACE_BEGIN

using at::Tensor;
using Tensors2 = std::tuple<Tensor, Tensor>;
using Tensors3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensors4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;

Tensors3 ray_aabb_intersect(const Tensor& rays_o, const Tensor& rays_d, const Tensor& aabbs, double near_plane,
                            double far_plane, double miss_value);
Tensors3 traverse_grids(const Tensor& rays_o, const Tensor& rays_d, const Tensor& binaries, const Tensor& aabbs,
                        const Tensor& near_planes, const Tensor& far_planes, double step_size, double cone_angle);
Tensor traverse_grids_visits(const Tensor& rays_o, const Tensor& rays_d, const Tensor& binaries, const Tensor& aabbs,
                             const Tensor& near_planes, const Tensor& far_planes, double step_size, double cone_angle);
Tensor scan_fwd(const Tensor& inputs, const Tensor& packed_info, bool prod, bool exclusive);
Tensor scan_bwd(const Tensor& grad, const Tensor& inputs, const Tensor& outputs, const Tensor& packed_info, bool prod,
                bool exclusive);
// covers_all: the caller knows that the chunks tile [0, n) contiguously (packed_info built by pack_info or for a
// batched layout), so no sample lies outside every chunk and the separate pass over all samples for their alphas
// (gradients) can be skipped. The CUDA build trusts it (knowing it otherwise takes a device sync); the CPU build
// ignores it and checks on the host, which is cheap there.
Tensors3 render_density_fwd(const Tensor& t_starts, const Tensor& t_ends, const Tensor& sigmas,
                            const Tensor& packed_info, bool covers_all);
Tensors3 render_density_bwd(const Tensor& g_w, const Tensor& g_trans, const Tensor& g_alpha, const Tensor& t_starts,
                            const Tensor& t_ends, const Tensor& sigmas, const Tensor& trans, const Tensor& alphas,
                            const Tensor& packed_info, bool covers_all);
Tensors2 render_alpha_fwd(const Tensor& alphas, const Tensor& packed_info);
Tensor render_alpha_bwd(const Tensor& g_w, const Tensor& g_trans, const Tensor& alphas, const Tensor& trans,
                        const Tensor& packed_info);
Tensor accumulate_fwd(const Tensor& weights, const std::optional<Tensor>& values, const Tensor& ray_indices,
                      int64_t n_rays);
Tensors2 accumulate_bwd(const Tensor& grad_out, const Tensor& weights, const std::optional<Tensor>& values,
                        const Tensor& ray_indices);
Tensors2 searchsorted(const Tensor& sorted_vals, const Tensor& sorted_packed_info, const Tensor& query_vals,
                      const Tensor& query_packed_info);
Tensors4 importance_sampling(const Tensor& edge_vals, const Tensor& cdfs, const Tensor& packed_info,
                             const Tensor& n_per_ray, const Tensor& bias, int64_t n_uniform);
Tensor contract_fwd(const Tensor& x, const Tensor& aabb, bool linf, bool inverse);
Tensor contract_bwd(const Tensor& grad_out, const Tensor& x, const Tensor& aabb, bool linf, bool inverse);
// Hash encoding (CPU build only for now): x [n, 3], table [levels * table_size, F], scales [levels].
Tensor hash_encode_fwd(const Tensor& x, const Tensor& table, const Tensor& scales, int64_t table_size);
// Returns (grad_table, grad_x); grad_x is empty unless need_x_grad.
Tensors2 hash_encode_bwd(const Tensor& grad_out, const Tensor& x, const Tensor& table, const Tensor& scales,
                         int64_t table_size, bool need_x_grad);
Tensor grid_ema_update(const Tensor& occs, const Tensor& cell_ids, const Tensor& values, double ema_decay);
// CPU build only: density rendering through the fused one-pass per-ray loops that the CUDA kernels run (the CPU
// ops use the two-pass loops with vectorised exponentials), so the GPU's per-ray math is tested without a GPU.
Tensors3 render_density_fwd_fused(const Tensor& t_starts, const Tensor& t_ends, const Tensor& sigmas,
                                  const Tensor& packed_info);
Tensors3 render_density_bwd_fused(const Tensor& g_w, const Tensor& g_trans, const Tensor& g_alpha,
                                  const Tensor& t_starts, const Tensor& t_ends, const Tensor& sigmas,
                                  const Tensor& trans, const Tensor& alphas, const Tensor& packed_info);

// ---------------------------------------------------------------------------------------------
// Argument checks (host only, shared by both implementations)
// ---------------------------------------------------------------------------------------------
inline void check_rays(const Tensor& rays_o, const Tensor& rays_d) {
  const auto dev = rays_o.device();
  check_float(rays_o, "rays_o", dev);
  check_float(rays_d, "rays_d", dev);
  check_same_dtype(rays_o, rays_d, "rays_o", "rays_d");
  TORCH_CHECK_VALUE(rays_o.dim() == 2 && rays_o.size(1) == 3, "nerfaccel: `rays_o` must have shape [n_rays, 3], got ",
                    rays_o.sizes());
  check_shape(rays_d, "rays_d", rays_o.sizes());
}

inline void check_aabbs(const Tensor& aabbs, const Tensor& like) {
  check_float(aabbs, "aabbs", like.device());
  check_same_dtype(aabbs, like, "aabbs", "rays_o");
  TORCH_CHECK_VALUE(aabbs.dim() == 2 && aabbs.size(1) == 6, "nerfaccel: `aabbs` must have shape [m, 6], got ",
                    aabbs.sizes());
}

inline void check_traverse(const Tensor& rays_o, const Tensor& rays_d, const Tensor& binaries, const Tensor& aabbs,
                           const Tensor& near_planes, const Tensor& far_planes) {
  check_rays(rays_o, rays_d);
  const auto dev = rays_o.device();
  check_tensor(binaries, "binaries", dev);
  TORCH_CHECK_TYPE(binaries.scalar_type() == at::kBool, "nerfaccel: `binaries` must be bool, got ",
                   binaries.scalar_type());
  check_dim(binaries, "binaries", 4);
  check_float(aabbs, "aabbs", dev);
  check_shape(aabbs, "aabbs", {binaries.size(0), 6});
  check_float(near_planes, "near_planes", dev);
  check_float(far_planes, "far_planes", dev);
  check_flat(near_planes, "near_planes", rays_o.size(0));
  check_flat(far_planes, "far_planes", rays_o.size(0));
}

inline void check_scan(const Tensor& inputs, const Tensor& packed_info) {
  check_float(inputs, "inputs", inputs.device());
  check_dim(inputs, "inputs", 1);
  check_packed_info(packed_info, "packed_info", inputs.device());
  check_packed_ranges(packed_info, "packed_info", inputs.size(0));
}

inline void check_same_flat(const Tensor& t, const Tensor& ref, const char* name, const char* ref_name) {
  check_float(t, name, ref.device());
  check_same_dtype(t, ref, name, ref_name);
  check_flat(t, name, ref.size(0));
}

inline void check_density(const Tensor& t_starts, const Tensor& t_ends, const Tensor& sigmas,
                          const Tensor& packed_info) {
  check_float(sigmas, "sigmas", sigmas.device());
  check_dim(sigmas, "sigmas", 1);
  check_same_flat(t_starts, sigmas, "t_starts", "sigmas");
  check_same_flat(t_ends, sigmas, "t_ends", "sigmas");
  check_packed_info(packed_info, "packed_info", sigmas.device());
  check_packed_ranges(packed_info, "packed_info", sigmas.size(0));
}

inline void check_accumulate(const Tensor& weights, const std::optional<Tensor>& values, const Tensor& ray_indices,
                             int64_t n_rays) {
  check_float(weights, "weights", weights.device());
  check_dim(weights, "weights", 1);
  check_long(ray_indices, "ray_indices", weights.device());
  check_flat(ray_indices, "ray_indices", weights.size(0));
  TORCH_CHECK_VALUE(n_rays >= 0, "nerfaccel: `n_rays` must be >= 0, got ", n_rays);
  if (values.has_value()) {
    check_float(*values, "values", weights.device());
    check_same_dtype(*values, weights, "values", "weights");
    TORCH_CHECK_VALUE(values->dim() == 2 && values->size(0) == weights.size(0),
                      "nerfaccel: `values` must have shape [n_samples, d] with n_samples = ", weights.size(0), ", got ",
                      values->sizes());
  }
}

// grad_out of accumulate_along_rays: [n_rays, d] with d the width of values (1 without values); n_rays is its first
// size (ray indices outside [0, n_rays) get zero gradients).
inline void check_accumulate_grad(const Tensor& grad_out, const Tensor& weights, const std::optional<Tensor>& values) {
  check_float(grad_out, "grad_out", weights.device());
  check_same_dtype(grad_out, weights, "grad_out", "weights");
  const int64_t dim = values.has_value() ? values->size(1) : 1;
  TORCH_CHECK_VALUE(grad_out.dim() == 2 && grad_out.size(1) == dim, "nerfaccel: `grad_out` must have shape [n_rays, ",
                    dim, "] (the accumulated output's shape", values.has_value() ? ", d = values.shape[1]" : "",
                    "), got ", grad_out.sizes());
}

inline void check_points(const Tensor& x, const Tensor& aabb) {
  check_float(x, "x", x.device());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == 3, "nerfaccel: `x` must have shape [n, 3], got ", x.sizes());
  check_float(aabb, "aabb", x.device());
  check_same_dtype(aabb, x, "aabb", "x");
  check_shape(aabb, "aabb", {6});
}

inline void check_hash(const Tensor& x, const Tensor& table, const Tensor& scales, int64_t table_size) {
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

NA_NAMESPACE_END
