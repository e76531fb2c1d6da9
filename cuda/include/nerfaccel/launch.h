// The per-device launchers behind the checked entry points of cuda/csrc/<family>.cpp.
//
// Each build compiles cuda/csrc/*.cpp (argument checks, output allocation, registration with the dispatcher) and
// its own launchers: the CPU build cuda/cpu/<family>.cpp (OpenMP), the CUDA build cuda/gpu/<family>.cu. A launcher
// gets checked, contiguous inputs and allocated outputs, and fills the outputs. All float inputs are float32 or
// float64 (the Python layer upcasts 16-bit floats); all index tensors are int64.
//
// Segmented ops (scans, rendering, accumulation) and the hash encoding have CPU launchers only: on CUDA they are
// served by Triton kernels registered from Python (nerfaccel_plugin/_triton, issue 13), or by the reference.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "checks.h"
#include "grid.h"

#if defined(NERFACCEL_WITH_CUDA)
#define NA_DISPATCH_KEY CUDA
#define NA_SEGMENTED_KERNELS 0
#else
#define NA_DISPATCH_KEY CPU
#define NA_SEGMENTED_KERNELS 1
#endif

NA_NAMESPACE_BEGIN

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using Tensors3 = std::tuple<Tensor, Tensor, Tensor>;

// grid family ---------------------------------------------------------------------------------------------------
void ray_aabb_intersect_launch(const Tensor& rays_o, const Tensor& rays_d, const Tensor& aabbs, double near_plane,
                               double far_plane, double miss_value, Tensor& t_mins, Tensor& t_maxs, Tensor& hits);
// Inputs in the rays' dtype T (o, d [n, 3]; near, far [n]; aabbs [levels, 6]), contiguous: the march runs in T (traverse.h).
// Outputs in the dtype of out_opts (T), sorted by ray.
Tensors3 traverse_grids_launch(const Tensor& o, const Tensor& d, const Tensor& near_planes, const Tensor& far_planes,
                               const Tensor& binaries, const Tensor& aabbs, double step_size, double cone_angle,
                               const at::TensorOptions& out_opts);
#if !defined(NERFACCEL_WITH_CUDA)
// CPU build only (benchmarks): lattice points evaluated per ray by the march, into visits (zeros [n], int64).
void traverse_grids_visits_launch(const Tensor& o, const Tensor& d, const Tensor& near_planes,
                                  const Tensor& far_planes, const Tensor& binaries, const Tensor& aabbs,
                                  double step_size, double cone_angle, Tensor& visits);
#endif
// out = occs.clone() on entry. CPU: raises on cell ids outside [0, occs.size(0)); CUDA: skips them (no host sync;
// the Python kernel call checks the range when the value checks are on).
void grid_ema_update_launch(const Tensor& occs, const Tensor& cell_ids, const Tensor& values, double ema_decay,
                            Tensor& out);

// pdf family ----------------------------------------------------------------------------------------------------
void searchsorted_launch(const Tensor& sorted_vals, const Tensor& sorted_packed_info, const Tensor& query_vals,
                         const Tensor& query_packed_info, Tensor& left, Tensor& right);
// s_packed / e_packed: the output layouts (computed by the entry point); the output sizes are samples.size(0) and
// edges.size(0) (known on the host, so the CUDA launcher needs no device read).
void importance_sampling_launch(const Tensor& edge_vals, const Tensor& cdfs, const Tensor& packed_info,
                                const Tensor& s_packed, const Tensor& e_packed, const Tensor& bias, Tensor& samples,
                                Tensor& edges);

// contract family -----------------------------------------------------------------------------------------------
// grad undefined: forward (out = y); defined: backward (out = d/dx of <grad, y>).
void contract_launch(const Tensor& x, const Tensor& aabb, const Tensor& grad, bool linf, bool inverse, Tensor& out);

#if NA_SEGMENTED_KERNELS
// A chunked layout: rows of a packed_info (start, count), or (packed == nullptr) `rows` rows of `stride` samples.
struct Chunks {
  const int64_t* packed;
  int64_t rows;
  int64_t stride;
  int64_t start(int64_t r) const { return packed != nullptr ? packed[2 * r] : r * stride; }
  int64_t count(int64_t r) const { return packed != nullptr ? packed[2 * r + 1] : stride; }
};

// The chunks of a segmented op's layout (see check_layout) and whether they cover every sample (CPU tensors).
inline Chunks chunks_of(const Tensor& x, const OptTensor& packed_info, bool* covers) {
  if (!packed_info.has_value()) {
    *covers = true;
    return {nullptr, x.size(0), x.size(1)};
  }
  const int64_t* pi = packed_info->data_ptr<int64_t>();
  *covers = chunks_cover_all(pi, packed_info->size(0), x.size(0));
  return {pi, packed_info->size(0), 0};
}

// scan family ---------------------------------------------------------------------------------------------------
void scan_fwd_launch(const Tensor& inputs, const Chunks& chunks, bool prod, bool exclusive, Tensor& out);
void scan_bwd_launch(const Tensor& grad, const Tensor& inputs, const Tensor& outputs, const Chunks& chunks,
                     bool prod, bool exclusive, Tensor& g_inputs);

// volrend family (missing cotangents and unneeded gradients are undefined tensors) ----------------------------
// covers_all: every sample lies in a chunk (no separate pass for the others).
void density_fwd_launch(const Tensor& t_starts, const Tensor& t_ends, const Tensor& sigmas, const Chunks& chunks,
                        bool covers_all, Tensor& weights, Tensor& trans, Tensor& alphas);
void density_bwd_launch(const Tensor& g_w, const Tensor& g_trans, const Tensor& g_alpha, const Tensor& t_starts,
                        const Tensor& t_ends, const Tensor& sigmas, const Tensor& trans, const Tensor& alphas,
                        const Chunks& chunks, bool covers_all, Tensor& g_t0, Tensor& g_t1, Tensor& g_sigmas);
void alpha_fwd_launch(const Tensor& alphas, const Chunks& chunks, Tensor& weights, Tensor& trans);
void alpha_bwd_launch(const Tensor& g_w, const Tensor& g_trans, const Tensor& alphas, const Tensor& trans,
                      const Chunks& chunks, Tensor& g_alphas);
// out: zeros [n_rays, dim]; raises on ray indices outside [0, n_rays).
void accumulate_fwd_launch(const Tensor& weights, const OptTensor& values, const Tensor& ray_indices, Tensor& out);
void accumulate_bwd_launch(const Tensor& grad_out, const Tensor& weights, const OptTensor& values,
                           const Tensor& ray_indices, Tensor& g_w, Tensor& g_v);

// hash family ---------------------------------------------------------------------------------------------------
void hash_encode_fwd_launch(const Tensor& x, const Tensor& table, const Tensor& scales, int64_t table_size,
                            Tensor& out);
// g_table: zeros; g_x: zeros or undefined (not needed).
void hash_encode_bwd_launch(const Tensor& grad_out, const Tensor& x, const Tensor& table, const Tensor& scales,
                            int64_t table_size, Tensor& g_table, Tensor& g_x);
#endif

NA_NAMESPACE_END
