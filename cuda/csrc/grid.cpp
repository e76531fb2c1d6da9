// grid family: ray_aabb_intersect, traverse_grids, grid_ema_update. The checked entry points (compiled into both
// builds) and their registration for the build's device; the launchers are in cuda/cpu/grid.cpp and
// cuda/gpu/grid.cu. Schemas: nerfaccel_plugin/_ops.py.
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "nerfaccel/launch.h"

NA_NAMESPACE_BEGIN

namespace {

void check_rays(const Tensor& rays_o, const Tensor& rays_d) {
  const auto dev = rays_o.device();
  check_float(rays_o, "rays_o", dev);
  check_float(rays_d, "rays_d", dev);
  check_same_dtype(rays_o, rays_d, "rays_o", "rays_d");
  TORCH_CHECK_VALUE(rays_o.dim() == 2 && rays_o.size(1) == 3, "nerfaccel: `rays_o` must have shape [n_rays, 3], got ",
                    rays_o.sizes());
  check_shape(rays_d, "rays_d", rays_o.sizes());
}

Tensors3 ray_aabb_intersect(const Tensor& rays_o, const Tensor& rays_d, const Tensor& aabbs, double near_plane,
                            double far_plane, double miss_value) {
  check_rays(rays_o, rays_d);
  check_float(aabbs, "aabbs", rays_o.device());
  check_same_dtype(aabbs, rays_o, "aabbs", "rays_o");
  TORCH_CHECK_VALUE(aabbs.dim() == 2 && aabbs.size(1) == 6, "nerfaccel: `aabbs` must have shape [m, 6], got ",
                    aabbs.sizes());
  const c10::OptionalDeviceGuard guard(rays_o.device());
  const int64_t n = rays_o.size(0), m = aabbs.size(0);
  auto t_mins = at::empty({n, m}, rays_o.options());
  auto t_maxs = at::empty({n, m}, rays_o.options());
  auto hits = at::empty({n, m}, rays_o.options().dtype(at::kBool));
  if (n * m > 0) ray_aabb_intersect_launch(rays_o, rays_d, aabbs, near_plane, far_plane, miss_value, t_mins, t_maxs, hits);
  return {t_mins, t_maxs, hits};
}

// Argument rules of traverse_grids (and of traverse_grids_visits), written once.
void check_traverse(const Tensor& rays_o, const Tensor& rays_d, const Tensor& binaries, const Tensor& aabbs,
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
  TORCH_CHECK_VALUE(binaries.size(1) < (1 << 30) && binaries.size(2) < (1 << 30) && binaries.size(3) < (1 << 30),
                    "nerfaccel: traverse_grids: grid resolutions must be below 2^30 per axis, got ", binaries.sizes());
}

Tensors3 traverse_grids(const Tensor& rays_o, const Tensor& rays_d, const Tensor& binaries, const Tensor& aabbs,
                        const Tensor& near_planes, const Tensor& far_planes, double step_size, double cone_angle) {
  check_traverse(rays_o, rays_d, binaries, aabbs, near_planes, far_planes);
  const auto dev = rays_o.device();
  const c10::OptionalDeviceGuard guard(dev);
  const int64_t n = rays_o.size(0);
  const auto out_opts = rays_o.options();
  if (n == 0 || binaries.numel() == 0) {
    return {at::empty({0}, out_opts.dtype(at::kLong)), at::empty({0}, out_opts), at::empty({0}, out_opts)};
  }
  // The march runs in the rays' precision (float32 rays: no FP64 instruction; traverse.h).
  const auto dt = rays_o.scalar_type();
  return traverse_grids_launch(rays_o.contiguous(), rays_d.to(dt).contiguous(), near_planes.to(dt).contiguous(),
                               far_planes.to(dt).contiguous(), binaries.contiguous(), aabbs.to(dt).contiguous(),
                               step_size, cone_angle, out_opts);
}

#if !defined(NERFACCEL_WITH_CUDA)
// Lattice points evaluated per ray by the march (benchmarks: work per emitted sample). CPU build only.
Tensor traverse_grids_visits(const Tensor& rays_o, const Tensor& rays_d, const Tensor& binaries, const Tensor& aabbs,
                             const Tensor& near_planes, const Tensor& far_planes, double step_size,
                             double cone_angle) {
  check_traverse(rays_o, rays_d, binaries, aabbs, near_planes, far_planes);
  const int64_t n = rays_o.size(0);
  auto visits = at::zeros({n}, rays_o.options().dtype(at::kLong));
  if (n == 0 || binaries.numel() == 0) return visits;
  const auto dt = rays_o.scalar_type();
  traverse_grids_visits_launch(rays_o.contiguous(), rays_d.to(dt).contiguous(), near_planes.to(dt).contiguous(),
                               far_planes.to(dt).contiguous(), binaries.contiguous(), aabbs.to(dt).contiguous(),
                               step_size, cone_angle, visits);
  return visits;
}
#endif

Tensor grid_ema_update(const Tensor& occs, const Tensor& cell_ids, const Tensor& values, double ema_decay) {
  const auto dev = occs.device();
  check_float(occs, "occs", dev);
  check_dim(occs, "occs", 1);
  check_long(cell_ids, "cell_ids", dev);
  check_dim(cell_ids, "cell_ids", 1);
  check_float(values, "values", dev);
  check_flat(values, "values", cell_ids.size(0));
  const c10::OptionalDeviceGuard guard(dev);
  const auto vals = values.to(occs.scalar_type()).contiguous();
  auto out = occs.clone();
  if (cell_ids.size(0) > 0) grid_ema_update_launch(occs, cell_ids, vals, ema_decay, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(nerfaccel, NA_DISPATCH_KEY, m) {
  m.impl("ray_aabb_intersect", &ray_aabb_intersect);
  m.impl("traverse_grids", &traverse_grids);
  m.impl("grid_ema_update", &grid_ema_update);
#if !defined(NERFACCEL_WITH_CUDA)
  m.impl("traverse_grids_visits", &traverse_grids_visits);
#endif
}

NA_NAMESPACE_END
