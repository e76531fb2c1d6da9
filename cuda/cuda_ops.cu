// CUDA implementation of nerfaccel's ops: thin kernels around the shared math in math.h.
//
// Per-ray ops run one thread per ray (sequential within the ray, so each ray is a single fused pass);
// per-element ops run one thread per element. Loops are grid-stride with 64-bit indices, so counts
// beyond 2^31 are safe. Every launch is followed by C10_CUDA_KERNEL_LAUNCH_CHECK().
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <string>
#include <type_traits>

#include "nerfaccel/math.h"
#include "nerfaccel/ops.h"
#include "nerfaccel/traverse.h"

#if !defined(NERFACCEL_WITH_CUDA)
#error "the CUDA build must define NERFACCEL_WITH_CUDA (every translation unit: it selects the build's namespace)"
#endif

NA_NAMESPACE_BEGIN

namespace {

constexpr int kThreads = 256;

inline int64_t n_blocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min<int64_t>(blocks, 65535 * 32));
}

#define NA_GRID_LOOP(i, n) \
  for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<index_t>(blockDim.x) * gridDim.x)

#define NA_LAUNCH(kernel, n, ...)                                                                      \
  do {                                                                                                 \
    if ((n) > 0) {                                                                                     \
      kernel<<<n_blocks(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(__VA_ARGS__);              \
      C10_CUDA_KERNEL_LAUNCH_CHECK();                                                                  \
    }                                                                                                  \
  } while (0)

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------
template <typename T>
__global__ void ray_aabb_kernel(const T* o, const T* d, const T* boxes, int64_t n, int64_t m, T near_plane,
                                T far_plane, T miss, T* tmin, T* tmax, bool* hit) {
  NA_GRID_LOOP(i, n * m) {
    const index_t r = i / m, j = i % m;
    ray_aabb_pair<T>(o + 3 * r, d + 3 * r, boxes + 6 * j, near_plane, far_plane, miss, tmin[i], tmax[i], hit[i]);
  }
}

// traverse_kernel (count and fill passes): cuda/include/nerfaccel/traverse.h.

template <typename T>
__global__ void scan_fwd_kernel(const T* x, const int64_t* pi, int64_t n_rays, bool prod, bool exclusive, T* y) {
  NA_GRID_LOOP(r, n_rays) {
    if (prod) {
      scan_prod_fwd(x, y, pi[2 * r], pi[2 * r + 1], exclusive);
    } else {
      scan_sum_fwd(x, y, pi[2 * r], pi[2 * r + 1], exclusive);
    }
  }
}

template <typename T>
__global__ void scan_bwd_kernel(const T* g, const T* x, const T* y, const int64_t* pi, int64_t n_rays, bool prod,
                                bool exclusive, T* gx) {
  NA_GRID_LOOP(r, n_rays) {
    if (prod) {
      scan_prod_bwd(g, x, y, gx, pi[2 * r], pi[2 * r + 1], exclusive);
    } else {
      scan_sum_bwd(g, gx, pi[2 * r], pi[2 * r + 1], exclusive);
    }
  }
}

template <typename T>
__global__ void density_alpha_kernel(const T* t0, const T* t1, const T* sg, int64_t n, T* a) {
  NA_GRID_LOOP(i, n) { a[i] = density_alpha(t0[i], t1[i], sg[i]); }
}

template <typename T>
__global__ void density_fwd_kernel(const T* t0, const T* t1, const T* sg, T* a, const int64_t* pi,
                                   int64_t n_rays, T* w, T* tr) {
  NA_GRID_LOOP(r, n_rays) { render_density_fwd_ray(t0, t1, sg, a, w, tr, pi[2 * r], pi[2 * r + 1]); }
}

template <typename T>
__global__ void density_bwd_elem_kernel(const T* ga, const T* t0, const T* t1, const T* sg, int64_t n, T* o0, T* o1,
                                        T* os) {
  NA_GRID_LOOP(i, n) { render_density_bwd_elem(ga, t0, t1, sg, o0, o1, os, i); }
}

template <typename T>
__global__ void density_bwd_kernel(const T* gw, const T* gt, const T* ga, const T* t0, const T* t1, const T* sg,
                                   const T* tr, const T* a, const int64_t* pi, int64_t n_rays, T* o0, T* o1, T* os) {
  NA_GRID_LOOP(r, n_rays) {
    render_density_bwd_ray(gw, gt, ga, t0, t1, sg, tr, a, o0, o1, os, pi[2 * r], pi[2 * r + 1]);
  }
}

template <typename T>
__global__ void alpha_fwd_kernel(const T* a, const int64_t* pi, int64_t n_rays, T* w, T* tr) {
  NA_GRID_LOOP(r, n_rays) { render_alpha_fwd_ray(a, w, tr, pi[2 * r], pi[2 * r + 1]); }
}

template <typename T>
__global__ void alpha_bwd_kernel(const T* gw, const T* gt, const T* a, const T* tr, const int64_t* pi, int64_t n_rays,
                                 T* ga) {
  NA_GRID_LOOP(r, n_rays) { render_alpha_bwd_ray(gw, gt, a, tr, ga, pi[2 * r], pi[2 * r + 1]); }
}

// Unsorted ray indices: one thread per sample, double atomics into an acc_t buffer (the order of the sums is not
// deterministic; the buffer is rounded to the input type afterwards).
template <typename T>
__global__ void accumulate_fwd_kernel(const T* w, const T* v, const int64_t* ri, int64_t n, int64_t dim,
                                      int64_t n_rays, acc_t<T>* out) {
  using A = acc_t<T>;
  NA_GRID_LOOP(i, n) {
    const int64_t r = ri[i];
    if (r < 0 || r >= n_rays) continue;  // checked on the host before the launch
    if (v == nullptr) {
      atomicAdd(out + r, A(w[i]));
    } else {
      for (int64_t c = 0; c < dim; ++c) atomicAdd(out + r * dim + c, A(w[i]) * A(v[i * dim + c]));
    }
  }
}

// Sorted ray indices (the samplers' layout): one thread per (ray, channel) sums the ray's samples
// [bounds[r], bounds[r + 1]) in sample order, without atomics. Deterministic, and the same additions in the
// same order as the CPU kernel.
template <typename T>
__global__ void accumulate_sorted_kernel(const T* w, const T* v, const int64_t* bounds, int64_t n_rays, int64_t dim,
                                         T* out) {
  using A = acc_t<T>;
  NA_GRID_LOOP(j, n_rays * dim) {
    const index_t r = j / dim, c = j % dim;
    A acc = 0;
    if (v == nullptr) {
      for (int64_t i = bounds[r]; i < bounds[r + 1]; ++i) acc += A(w[i]);
    } else {
      for (int64_t i = bounds[r]; i < bounds[r + 1]; ++i) acc += A(w[i]) * A(v[i * dim + c]);
    }
    out[j] = static_cast<T>(acc);
  }
}

template <typename T>
__global__ void accumulate_bwd_kernel(const T* go, const T* w, const T* v, const int64_t* ri, int64_t n, int64_t dim,
                                      int64_t n_rays, T* gw, T* gv) {
  NA_GRID_LOOP(i, n) { accumulate_bwd_elem(go, w, v, ri, i, dim, n_rays, gw, gv); }
}

template <typename T>
__global__ void searchsorted_kernel(const T* s, const int64_t* spi, const T* q, const int64_t* qpi, int64_t n_rays,
                                    int64_t total, int64_t* l, int64_t* rr) {
  NA_GRID_LOOP(r, n_rays) {
    const int64_t qs = qpi[2 * r], qn = qpi[2 * r + 1];
    for (int64_t i = qs; i < qs + qn; ++i) searchsorted_one(s, spi[2 * r], spi[2 * r + 1], total, q[i], l[i], rr[i]);
  }
}

// The ray owning output slot i of a packed layout (rows (start, count), starts ascending): the last row whose start
// is <= i (rows of count 0 share the next row's start, so that row holds i).
__device__ __forceinline__ int64_t owner_row(const int64_t* packed, int64_t n_rows, int64_t i) {
  int64_t lo = 0, hi = n_rows - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (packed[2 * mid] <= i) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Importance sampling with one thread per output sample (and one per output edge): a 4096-ray batch keeps every
// SM busy, where one thread per ray kept 16 of 132 busy. Values are bitwise those of importance_sample_ray.
template <typename T>
__global__ void importance_samples_kernel(const T* t, const T* c, const int64_t* pi, const int64_t* sp,
                                          const T* bias, int64_t n_rays, int64_t n_samples, T* sm) {
  NA_GRID_LOOP(i, n_samples) {
    const int64_t r = owner_row(sp, n_rays, i);
    const int64_t n = sp[2 * r + 1], cnt = pi[2 * r + 1];
    if (cnt <= 0 || i - sp[2 * r] >= n) continue;
    sm[i] = importance_sample_one(t, c, pi[2 * r], cnt, n, bias[r], i - sp[2 * r]);
  }
}

template <typename T>
__global__ void importance_edges_kernel(const T* t, const T* c, const int64_t* pi, const int64_t* sp,
                                        const int64_t* ep, const T* bias, int64_t n_rays, int64_t n_edges, T* ed) {
  NA_GRID_LOOP(e, n_edges) {
    const int64_t r = owner_row(ep, n_rays, e);
    const int64_t n = sp[2 * r + 1], cnt = pi[2 * r + 1];
    if (cnt <= 0 || n <= 0 || e - ep[2 * r] > n) continue;
    ed[e] = importance_edge_one(t, c, pi[2 * r], cnt, n, bias[r], e - ep[2 * r]);
  }
}

template <typename T>
__global__ void contract_kernel(const T* x, const T* aabb, const T* gy, int64_t n, bool linf, bool inverse, T* out) {
  NA_GRID_LOOP(i, n) {
    if (gy == nullptr) {
      if (inverse) {
        uncontract_point<T>(x + 3 * i, aabb, linf, out + 3 * i, nullptr, nullptr);
      } else {
        contract_point<T>(x + 3 * i, aabb, linf, out + 3 * i, nullptr, nullptr);
      }
    } else {
      if (inverse) {
        uncontract_point<T>(x + 3 * i, aabb, linf, nullptr, gy + 3 * i, out + 3 * i);
      } else {
        contract_point<T>(x + 3 * i, aabb, linf, nullptr, gy + 3 * i, out + 3 * i);
      }
    }
  }
}

__device__ __forceinline__ void atomic_max(float* addr, float v) {
  int* a = reinterpret_cast<int*>(addr);
  int old = *a;
  while (true) {
    const float cur = __int_as_float(old);
    const float next = nan_max(cur, v);
    if (next == cur || (next != next && cur != cur)) return;
    const int seen = atomicCAS(a, old, __float_as_int(next));
    if (seen == old) return;
    old = seen;
  }
}

__device__ __forceinline__ void atomic_max(double* addr, double v) {
  unsigned long long* a = reinterpret_cast<unsigned long long*>(addr);
  unsigned long long old = *a;
  while (true) {
    const double cur = __longlong_as_double(static_cast<long long>(old));
    const double next = nan_max(cur, v);
    if (next == cur || (next != next && cur != cur)) return;
    const unsigned long long seen =
        atomicCAS(a, old, static_cast<unsigned long long>(__double_as_longlong(next)));
    if (seen == old) return;
    old = seen;
  }
}

template <typename T>
__global__ void ema_decay_kernel(const T* o, const int64_t* ids, int64_t k, int64_t c, T decay, T* out) {
  NA_GRID_LOOP(i, k) {
    const int64_t id = ids[i];
    if (id >= 0 && id < c && o[id] >= T(0)) out[id] = o[id] * decay;  // same value from every duplicate
  }
}

template <typename T>
__global__ void ema_max_kernel(const T* o, const int64_t* ids, const T* v, int64_t k, int64_t c, T* out) {
  NA_GRID_LOOP(i, k) {
    const int64_t id = ids[i];
    if (id >= 0 && id < c && o[id] >= T(0)) atomic_max(out + id, v[i]);
  }
}

// Index range checks on the host, as the CPU kernels do (one device sync): a kernel cannot raise, and an
// out-of-range index would otherwise be skipped on the GPU but an error on the CPU.
std::string first_outside(const Tensor& ids, int64_t hi) {
  const auto bad = at::nonzero((ids < 0).logical_or(ids >= hi));
  const int64_t i = bad.size(0) > 0 ? bad[0][0].item<int64_t>() : -1;
  return "[" + std::to_string(i) + "] = " + std::to_string(i >= 0 ? ids[i].item<int64_t>() : 0);
}

// Checks 0 <= ray_indices < n_rays and returns whether the indices are sorted (ascending).
bool check_ray_indices_cuda(const Tensor& ri, int64_t n_rays) {
  const int64_t n = ri.size(0);
  const auto ordered = n > 1 ? (ri.slice(0, 1) >= ri.slice(0, 0, n - 1)).all() : at::ones({}, ri.options());
  const auto stats = at::stack({ri.min(), ri.max(), ordered.to(at::kLong)}).cpu();
  const int64_t* s = stats.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(s[0] >= 0 && s[1] < n_rays, "nerfaccel: ray_indices", first_outside(ri, n_rays),
                    " is outside [0, n_rays = ", n_rays, ")");
  return s[2] != 0;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points: checks, allocation, launch
// ---------------------------------------------------------------------------------------------
Tensors3 ray_aabb_intersect(const Tensor& rays_o, const Tensor& rays_d, const Tensor& aabbs, double near_plane,
                            double far_plane, double miss_value) {
  check_rays(rays_o, rays_d);
  check_aabbs(aabbs, rays_o);
  const c10::cuda::CUDAGuard guard(rays_o.device());
  const int64_t n = rays_o.size(0), m = aabbs.size(0);
  auto t_mins = at::empty({n, m}, rays_o.options());
  auto t_maxs = at::empty({n, m}, rays_o.options());
  auto hits = at::empty({n, m}, rays_o.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(rays_o.scalar_type(), "ray_aabb_intersect", [&] {
    NA_LAUNCH(ray_aabb_kernel<scalar_t>, n * m, rays_o.data_ptr<scalar_t>(), rays_d.data_ptr<scalar_t>(),
              aabbs.data_ptr<scalar_t>(), n, m, static_cast<scalar_t>(near_plane), static_cast<scalar_t>(far_plane),
              static_cast<scalar_t>(miss_value), t_mins.data_ptr<scalar_t>(), t_maxs.data_ptr<scalar_t>(),
              hits.data_ptr<bool>());
  });
  return {t_mins, t_maxs, hits};
}

Tensors3 traverse_grids(const Tensor& rays_o, const Tensor& rays_d, const Tensor& binaries, const Tensor& aabbs,
                        const Tensor& near_planes, const Tensor& far_planes, double step_size, double cone_angle) {
  check_traverse(rays_o, rays_d, binaries, aabbs, near_planes, far_planes);
  const c10::cuda::CUDAGuard guard(rays_o.device());
  const int64_t n = rays_o.size(0);
  const auto out_opts = rays_o.options();
  if (n == 0 || binaries.numel() == 0) {
    return {at::empty({0}, out_opts.dtype(at::kLong)), at::empty({0}, out_opts), at::empty({0}, out_opts)};
  }
  TORCH_CHECK(binaries.size(1) < (1 << 30) && binaries.size(2) < (1 << 30) && binaries.size(3) < (1 << 30),
              "traverse_grids: grid resolutions must be below 2^30 per axis");
  // The march runs in the rays' precision (float32 rays: no FP64 instruction).
  const auto dt = rays_o.scalar_type();
  const auto o = rays_o.contiguous();
  const auto d = rays_d.to(dt).contiguous();
  const auto boxes = aabbs.to(dt).contiguous();
  const auto nearc = near_planes.to(dt).contiguous();
  const auto farc = far_planes.to(dt).contiguous();
  const auto binc = binaries.contiguous();
  auto counts = at::empty({n}, out_opts.dtype(at::kLong));
  Tensor ray_indices, t_starts, t_ends;
  AT_DISPATCH_FLOATING_TYPES(dt, "traverse_grids", [&] {
    using T = scalar_t;
    const TravGrid<T> grid{binc.data_ptr<bool>(), boxes.data_ptr<T>(), static_cast<int32_t>(binc.size(0)),
                           {static_cast<int32_t>(binc.size(1)), static_cast<int32_t>(binc.size(2)),
                            static_cast<int32_t>(binc.size(3))}};
    const T step = static_cast<T>(step_size), cone = static_cast<T>(cone_angle);
    NA_LAUNCH(traverse_kernel<T>, n, o.data_ptr<T>(), d.data_ptr<T>(), nearc.data_ptr<T>(), farc.data_ptr<T>(), grid,
              step, cone, n, static_cast<const int64_t*>(nullptr), counts.data_ptr<int64_t>(),
              static_cast<int64_t*>(nullptr), static_cast<T*>(nullptr), static_cast<T*>(nullptr));
    const auto ends = counts.cumsum(0);
    const int64_t total = ends[-1].item<int64_t>();  // the one host sync: the output size
    ray_indices = at::empty({total}, out_opts.dtype(at::kLong));
    t_starts = at::empty({total}, out_opts);
    t_ends = at::empty({total}, out_opts);
    if (total > 0) {
      NA_LAUNCH(traverse_kernel<T>, n, o.data_ptr<T>(), d.data_ptr<T>(), nearc.data_ptr<T>(), farc.data_ptr<T>(),
                grid, step, cone, n, ends.data_ptr<int64_t>(), counts.data_ptr<int64_t>(),
                ray_indices.data_ptr<int64_t>(), t_starts.data_ptr<T>(), t_ends.data_ptr<T>());
    }
  });
  return {ray_indices, t_starts, t_ends};
}

Tensor scan_fwd(const Tensor& inputs, const Tensor& packed_info, bool prod, bool exclusive) {
  check_scan(inputs, packed_info);
  const c10::cuda::CUDAGuard guard(inputs.device());
  auto out = at::zeros_like(inputs);
  const int64_t n_rays = packed_info.size(0);
  AT_DISPATCH_FLOATING_TYPES(inputs.scalar_type(), "scan_fwd", [&] {
    NA_LAUNCH(scan_fwd_kernel<scalar_t>, n_rays, inputs.data_ptr<scalar_t>(), packed_info.data_ptr<int64_t>(), n_rays,
              prod, exclusive, out.data_ptr<scalar_t>());
  });
  return out;
}

Tensor scan_bwd(const Tensor& grad, const Tensor& inputs, const Tensor& outputs, const Tensor& packed_info, bool prod,
                bool exclusive) {
  check_scan(inputs, packed_info);
  check_same_flat(grad, inputs, "grad", "inputs");
  check_same_flat(outputs, inputs, "outputs", "inputs");
  const c10::cuda::CUDAGuard guard(inputs.device());
  auto gx = at::zeros_like(inputs);
  const int64_t n_rays = packed_info.size(0);
  AT_DISPATCH_FLOATING_TYPES(inputs.scalar_type(), "scan_bwd", [&] {
    NA_LAUNCH(scan_bwd_kernel<scalar_t>, n_rays, grad.data_ptr<scalar_t>(), inputs.data_ptr<scalar_t>(),
              outputs.data_ptr<scalar_t>(), packed_info.data_ptr<int64_t>(), n_rays, prod, exclusive,
              gx.data_ptr<scalar_t>());
  });
  return gx;
}

Tensors3 render_density_fwd(const Tensor& t_starts, const Tensor& t_ends, const Tensor& sigmas,
                            const Tensor& packed_info, bool covers_all) {
  check_density(t_starts, t_ends, sigmas, packed_info);
  const c10::cuda::CUDAGuard guard(sigmas.device());
  const int64_t n = sigmas.size(0), n_rays = packed_info.size(0);
  auto weights = at::zeros_like(sigmas);
  auto trans = at::zeros_like(sigmas);
  auto alphas = at::empty_like(sigmas);
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "render_density_fwd", [&] {
    const scalar_t* t0 = t_starts.data_ptr<scalar_t>();
    const scalar_t* t1 = t_ends.data_ptr<scalar_t>();
    const scalar_t* sg = sigmas.data_ptr<scalar_t>();
    // Samples outside every chunk still get their alpha; skipped when the caller knows the chunks cover everything
    // (checking it here would cost a device sync).
    if (!covers_all) NA_LAUNCH(density_alpha_kernel<scalar_t>, n, t0, t1, sg, n, alphas.data_ptr<scalar_t>());
    NA_LAUNCH(density_fwd_kernel<scalar_t>, n_rays, t0, t1, sg, alphas.data_ptr<scalar_t>(),
              packed_info.data_ptr<int64_t>(), n_rays, weights.data_ptr<scalar_t>(), trans.data_ptr<scalar_t>());
  });
  return {weights, trans, alphas};
}

Tensors3 render_density_bwd(const Tensor& g_w, const Tensor& g_trans, const Tensor& g_alpha, const Tensor& t_starts,
                            const Tensor& t_ends, const Tensor& sigmas, const Tensor& trans, const Tensor& alphas,
                            const Tensor& packed_info, bool covers_all) {
  check_density(t_starts, t_ends, sigmas, packed_info);
  check_same_flat(g_w, sigmas, "grad_weights", "sigmas");
  check_same_flat(g_trans, sigmas, "grad_trans", "sigmas");
  check_same_flat(g_alpha, sigmas, "grad_alphas", "sigmas");
  check_same_flat(trans, sigmas, "trans", "sigmas");
  check_same_flat(alphas, sigmas, "alphas", "sigmas");
  const c10::cuda::CUDAGuard guard(sigmas.device());
  const int64_t n = sigmas.size(0), n_rays = packed_info.size(0);
  auto g_t0 = at::empty_like(sigmas);
  auto g_t1 = at::empty_like(sigmas);
  auto g_sg = at::empty_like(sigmas);
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "render_density_bwd", [&] {
    const scalar_t* t0 = t_starts.data_ptr<scalar_t>();
    const scalar_t* t1 = t_ends.data_ptr<scalar_t>();
    const scalar_t* sg = sigmas.data_ptr<scalar_t>();
    // Elements outside every chunk only feed the alpha output; chunk elements are overwritten by the ray pass.
    if (!covers_all) {
      NA_LAUNCH(density_bwd_elem_kernel<scalar_t>, n, g_alpha.data_ptr<scalar_t>(), t0, t1, sg, n,
                g_t0.data_ptr<scalar_t>(), g_t1.data_ptr<scalar_t>(), g_sg.data_ptr<scalar_t>());
    }
    NA_LAUNCH(density_bwd_kernel<scalar_t>, n_rays, g_w.data_ptr<scalar_t>(), g_trans.data_ptr<scalar_t>(),
              g_alpha.data_ptr<scalar_t>(), t0, t1, sg, trans.data_ptr<scalar_t>(), alphas.data_ptr<scalar_t>(),
              packed_info.data_ptr<int64_t>(), n_rays, g_t0.data_ptr<scalar_t>(), g_t1.data_ptr<scalar_t>(),
              g_sg.data_ptr<scalar_t>());
  });
  return {g_t0, g_t1, g_sg};
}

Tensors2 render_alpha_fwd(const Tensor& alphas, const Tensor& packed_info) {
  check_scan(alphas, packed_info);
  const c10::cuda::CUDAGuard guard(alphas.device());
  const int64_t n_rays = packed_info.size(0);
  auto weights = at::zeros_like(alphas);
  auto trans = at::zeros_like(alphas);
  AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "render_alpha_fwd", [&] {
    NA_LAUNCH(alpha_fwd_kernel<scalar_t>, n_rays, alphas.data_ptr<scalar_t>(), packed_info.data_ptr<int64_t>(),
              n_rays, weights.data_ptr<scalar_t>(), trans.data_ptr<scalar_t>());
  });
  return {weights, trans};
}

Tensor render_alpha_bwd(const Tensor& g_w, const Tensor& g_trans, const Tensor& alphas, const Tensor& trans,
                        const Tensor& packed_info) {
  check_scan(alphas, packed_info);
  check_same_flat(g_w, alphas, "grad_weights", "alphas");
  check_same_flat(g_trans, alphas, "grad_trans", "alphas");
  check_same_flat(trans, alphas, "trans", "alphas");
  const c10::cuda::CUDAGuard guard(alphas.device());
  const int64_t n_rays = packed_info.size(0);
  auto g_a = at::zeros_like(alphas);
  AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "render_alpha_bwd", [&] {
    NA_LAUNCH(alpha_bwd_kernel<scalar_t>, n_rays, g_w.data_ptr<scalar_t>(), g_trans.data_ptr<scalar_t>(),
              alphas.data_ptr<scalar_t>(), trans.data_ptr<scalar_t>(), packed_info.data_ptr<int64_t>(), n_rays,
              g_a.data_ptr<scalar_t>());
  });
  return g_a;
}

Tensor accumulate_fwd(const Tensor& weights, const std::optional<Tensor>& values, const Tensor& ray_indices,
                      int64_t n_rays) {
  check_accumulate(weights, values, ray_indices, n_rays);
  const c10::cuda::CUDAGuard guard(weights.device());
  const int64_t n = weights.size(0);
  const int64_t dim = values.has_value() ? values->size(1) : 1;
  auto out = at::zeros({n_rays, dim}, weights.options());
  if (n == 0 || dim == 0) return out;  // (a [n, 0] values tensor has no data pointer)
  const bool sorted = check_ray_indices_cuda(ray_indices, n_rays);
  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), "accumulate_fwd", [&] {
    const scalar_t* w = weights.data_ptr<scalar_t>();
    const scalar_t* v = values.has_value() ? values->data_ptr<scalar_t>() : nullptr;
    if (sorted) {
      const auto bounds = at::searchsorted(ray_indices, at::arange(n_rays + 1, ray_indices.options()));
      NA_LAUNCH(accumulate_sorted_kernel<scalar_t>, n_rays * dim, w, v, bounds.data_ptr<int64_t>(), n_rays, dim,
                out.data_ptr<scalar_t>());
    } else {
      at::globalContext().alertNotDeterministic("nerfaccel::accumulate_along_rays with unsorted ray_indices on CUDA");
      using A = acc_t<scalar_t>;
      auto acc = std::is_same<A, scalar_t>::value ? out : at::zeros({n_rays, dim}, out.options().dtype(at::kDouble));
      NA_LAUNCH(accumulate_fwd_kernel<scalar_t>, n, w, v, ray_indices.data_ptr<int64_t>(), n, dim, n_rays,
                acc.data_ptr<A>());
      if (!acc.is_same(out)) out.copy_(acc);
    }
  });
  return out;
}

Tensors2 accumulate_bwd(const Tensor& grad_out, const Tensor& weights, const std::optional<Tensor>& values,
                        const Tensor& ray_indices) {
  check_accumulate(weights, values, ray_indices, 0);
  check_accumulate_grad(grad_out, weights, values);  // its shape bounds every read below
  const c10::cuda::CUDAGuard guard(weights.device());
  const int64_t n = weights.size(0);
  Tensor g_v = values.has_value() ? at::empty_like(*values) : at::empty({0}, weights.options());
  if (values.has_value() && values->size(1) == 0) return {at::zeros_like(weights), g_v};
  if (n > 0) check_ray_indices_cuda(ray_indices, grad_out.size(0));
  auto g_w = at::empty_like(weights);
  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), "accumulate_bwd", [&] {
    NA_LAUNCH(accumulate_bwd_kernel<scalar_t>, n, grad_out.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(),
              values.has_value() ? values->data_ptr<scalar_t>() : nullptr, ray_indices.data_ptr<int64_t>(), n,
              grad_out.size(1), grad_out.size(0), g_w.data_ptr<scalar_t>(),
              values.has_value() ? g_v.data_ptr<scalar_t>() : nullptr);
  });
  return {g_w, g_v};
}

Tensors2 searchsorted(const Tensor& sorted_vals, const Tensor& sorted_packed_info, const Tensor& query_vals,
                      const Tensor& query_packed_info) {
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
  const c10::cuda::CUDAGuard guard(dev);
  auto left = at::zeros({query_vals.size(0)}, query_vals.options().dtype(at::kLong));
  auto right = at::zeros({query_vals.size(0)}, query_vals.options().dtype(at::kLong));
  const int64_t n_rays = sorted_packed_info.size(0);
  AT_DISPATCH_FLOATING_TYPES(sorted_vals.scalar_type(), "searchsorted", [&] {
    NA_LAUNCH(searchsorted_kernel<scalar_t>, n_rays, sorted_vals.data_ptr<scalar_t>(),
              sorted_packed_info.data_ptr<int64_t>(), query_vals.data_ptr<scalar_t>(),
              query_packed_info.data_ptr<int64_t>(), n_rays, sorted_vals.size(0), left.data_ptr<int64_t>(),
              right.data_ptr<int64_t>());
  });
  return {left, right};
}

Tensors4 importance_sampling(const Tensor& edge_vals, const Tensor& cdfs, const Tensor& packed_info,
                             const Tensor& n_per_ray, const Tensor& bias, int64_t n_uniform) {
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
  const c10::cuda::CUDAGuard guard(dev);
  const auto counts = packed_info.select(1, 1);
  // n_uniform >= 0: the caller promises every ray has edges and n_per_ray == n_uniform (batched layout), so the
  // sizes are known on the host (no device sync); a ray without edges (value checks off) then keeps zeros.
  const bool uniform = n_uniform >= 0;
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
  AT_DISPATCH_FLOATING_TYPES(edge_vals.scalar_type(), "importance_sampling", [&] {
    NA_LAUNCH(importance_samples_kernel<scalar_t>, n_samples, edge_vals.data_ptr<scalar_t>(),
              cdfs.data_ptr<scalar_t>(), packed_info.data_ptr<int64_t>(), s_packed.data_ptr<int64_t>(),
              bias_c.data_ptr<scalar_t>(), n_rays, n_samples, samples.data_ptr<scalar_t>());
    NA_LAUNCH(importance_edges_kernel<scalar_t>, n_edges, edge_vals.data_ptr<scalar_t>(), cdfs.data_ptr<scalar_t>(),
              packed_info.data_ptr<int64_t>(), s_packed.data_ptr<int64_t>(), e_packed.data_ptr<int64_t>(),
              bias_c.data_ptr<scalar_t>(), n_rays, n_edges, edges.data_ptr<scalar_t>());
  });
  return {samples, s_packed, edges, e_packed};
}

Tensor contract_fwd(const Tensor& x, const Tensor& aabb, bool linf, bool inverse) {
  check_points(x, aabb);
  const c10::cuda::CUDAGuard guard(x.device());
  auto y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "contract_fwd", [&] {
    const scalar_t* no_grad = nullptr;
    NA_LAUNCH(contract_kernel<scalar_t>, x.size(0), x.data_ptr<scalar_t>(), aabb.data_ptr<scalar_t>(), no_grad,
              x.size(0), linf, inverse, y.data_ptr<scalar_t>());
  });
  return y;
}

Tensor contract_bwd(const Tensor& grad_out, const Tensor& x, const Tensor& aabb, bool linf, bool inverse) {
  check_points(x, aabb);
  check_float(grad_out, "grad_out", x.device());
  check_shape(grad_out, "grad_out", x.sizes());
  const c10::cuda::CUDAGuard guard(x.device());
  auto gx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "contract_bwd", [&] {
    NA_LAUNCH(contract_kernel<scalar_t>, x.size(0), x.data_ptr<scalar_t>(), aabb.data_ptr<scalar_t>(),
              grad_out.data_ptr<scalar_t>(), x.size(0), linf, inverse, gx.data_ptr<scalar_t>());
  });
  return gx;
}

Tensor grid_ema_update(const Tensor& occs, const Tensor& cell_ids, const Tensor& values, double ema_decay) {
  const auto dev = occs.device();
  check_float(occs, "occs", dev);
  check_dim(occs, "occs", 1);
  check_long(cell_ids, "cell_ids", dev);
  check_dim(cell_ids, "cell_ids", 1);
  check_float(values, "values", dev);
  check_flat(values, "values", cell_ids.size(0));
  const c10::cuda::CUDAGuard guard(dev);
  const auto vals = values.to(occs.scalar_type()).contiguous();
  auto out = occs.clone();
  const int64_t k = cell_ids.size(0), c = occs.size(0);
  // No host-side range check here (it would sync every grid update): the kernels skip out-of-range ids, and the
  // Python op checks the range when the value checks are on (nerfaccel_plugin/_ext/ops.py::_grid_ema_update).
  AT_DISPATCH_FLOATING_TYPES(occs.scalar_type(), "grid_ema_update", [&] {
    NA_LAUNCH(ema_decay_kernel<scalar_t>, k, occs.data_ptr<scalar_t>(), cell_ids.data_ptr<int64_t>(), k, c,
              static_cast<scalar_t>(ema_decay), out.data_ptr<scalar_t>());
    NA_LAUNCH(ema_max_kernel<scalar_t>, k, occs.data_ptr<scalar_t>(), cell_ids.data_ptr<int64_t>(),
              vals.data_ptr<scalar_t>(), k, c, out.data_ptr<scalar_t>());
  });
  return out;
}

NA_NAMESPACE_END
