// Python bindings of the extension entry points (the same file for the CPU and CUDA builds).
// The ops are registered with torch.library in nerfaccel_plugin/_ext/ops.py.
#include <torch/extension.h>

#include "nerfaccel/ops.h"

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME nerfaccel_ext
#endif
// Set by the build (nerfaccel_plugin/_ext/build.py or setup.py) so a stale binary can be detected.
#define NA_STRINGIFY_(x) #x
#define NA_STRINGIFY(x) NA_STRINGIFY_(x)
#ifdef NERFACCEL_SOURCE_HASH
#define NA_SOURCE_HASH NA_STRINGIFY(NERFACCEL_SOURCE_HASH)
#else
#define NA_SOURCE_HASH ""
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace na = nerfaccel;
#ifdef NERFACCEL_WITH_CUDA
  m.attr("device_type") = "cuda";
#ifdef NERFACCEL_CUDA_ARCH
  m.attr("cuda_arch") = NA_STRINGIFY(NERFACCEL_CUDA_ARCH);
#endif
#else
  m.attr("device_type") = "cpu";
#endif
  m.attr("source_hash") = NA_SOURCE_HASH;
  m.def("ray_aabb_intersect", &na::ray_aabb_intersect);
  m.def("traverse_grids", &na::traverse_grids);
  m.def("scan_fwd", &na::scan_fwd);
  m.def("scan_bwd", &na::scan_bwd);
  m.def("render_density_fwd", &na::render_density_fwd);
  m.def("render_density_bwd", &na::render_density_bwd);
  m.def("render_alpha_fwd", &na::render_alpha_fwd);
  m.def("render_alpha_bwd", &na::render_alpha_bwd);
  m.def("accumulate_fwd", &na::accumulate_fwd);
  m.def("accumulate_bwd", &na::accumulate_bwd);
  m.def("searchsorted", &na::searchsorted);
  m.def("importance_sampling", &na::importance_sampling);
  m.def("contract_fwd", &na::contract_fwd);
  m.def("contract_bwd", &na::contract_bwd);
  m.def("grid_ema_update", &na::grid_ema_update);
#ifndef NERFACCEL_WITH_CUDA
  m.def("traverse_grids_visits", &na::traverse_grids_visits);  // lattice points per ray, for benchmarks
  m.def("hash_encode_fwd", &na::hash_encode_fwd);  // CPU build only (CUDA uses tiny-cuda-nn or torch)
  m.def("hash_encode_bwd", &na::hash_encode_bwd);
  m.def("render_density_fwd_fused", &na::render_density_fwd_fused);  // the CUDA per-ray loops, for tests
  m.def("render_density_bwd_fused", &na::render_density_bwd_fused);
#endif
}
