// CPU implementation of nerfaccel's ops: OpenMP loops over rays around the shared math in math.h.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <vector>

#include "nerfaccel/math.h"
#include "nerfaccel/ops.h"
#include "nerfaccel/traverse.h"

NA_NAMESPACE_BEGIN

namespace {

// Below this many work items a parallel region costs more than it saves.
constexpr int64_t kParallelGrain = 2048;

int n_threads() { return std::max(1, at::get_num_threads()); }

// Calls fn(i) for i in [0, n): dynamic scheduling because rays differ in length.
template <typename F>
void parallel_rays(int64_t n, F fn) {
#pragma omp parallel for schedule(dynamic, 256) num_threads(n_threads()) if (n > kParallelGrain)
  for (int64_t i = 0; i < n; ++i) fn(i);
}

template <typename F>
void parallel_elems(int64_t n, F fn) {
#pragma omp parallel for schedule(static) num_threads(n_threads()) if (n > 8 * kParallelGrain)
  for (int64_t i = 0; i < n; ++i) fn(i);
}

// One call per block of work, blocks handed out one at a time.
template <typename F>
void parallel_blocks(int64_t n_blocks, bool parallel, F fn) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads()) if (parallel)
  for (int64_t b = 0; b < n_blocks; ++b) fn(b);
}

// Whether the chunks tile [0, n): the non-empty ones in order, each starting where the previous one ended (empty
// chunks may start anywhere). Then every element belongs to a chunk and the pass over all elements can be skipped.
// (Counts summing to n are not enough: [[0, 2], [0, 2]] with n = 4 leaves elements 2 and 3 in no chunk; such
// overlapping chunks are rejected by check_packed_ranges anyway. Chunks out of order fall back to the element pass.)
bool covers_all(const int64_t* pi, int64_t n_rays, int64_t n) {
  int64_t next = 0;
  for (int64_t r = 0; r < n_rays; ++r) {
    const int64_t start = pi[2 * r], count = pi[2 * r + 1];
    if (count == 0) continue;
    if (start != next) return false;
    next += count;
  }
  return next == n;
}

}  // namespace

Tensors3 ray_aabb_intersect(const Tensor& rays_o, const Tensor& rays_d, const Tensor& aabbs, double near_plane,
                            double far_plane, double miss_value) {
  check_rays(rays_o, rays_d);
  check_aabbs(aabbs, rays_o);
  const int64_t n = rays_o.size(0), m = aabbs.size(0);
  auto t_mins = at::empty({n, m}, rays_o.options());
  auto t_maxs = at::empty({n, m}, rays_o.options());
  auto hits = at::empty({n, m}, rays_o.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(rays_o.scalar_type(), "ray_aabb_intersect", [&] {
    const scalar_t* o = rays_o.data_ptr<scalar_t>();
    const scalar_t* d = rays_d.data_ptr<scalar_t>();
    const scalar_t* b = aabbs.data_ptr<scalar_t>();
    scalar_t* tmin = t_mins.data_ptr<scalar_t>();
    scalar_t* tmax = t_maxs.data_ptr<scalar_t>();
    bool* hit = hits.data_ptr<bool>();
    parallel_elems(n * m, [&](int64_t i) {
      const int64_t r = i / m, j = i % m;
      ray_aabb_pair<scalar_t>(o + 3 * r, d + 3 * r, b + 6 * j, static_cast<scalar_t>(near_plane),
                              static_cast<scalar_t>(far_plane), static_cast<scalar_t>(miss_value), tmin[i], tmax[i],
                              hit[i]);
    });
  });
  return {t_mins, t_maxs, hits};
}

namespace {
// Converts the traversal's inputs to the rays' dtype (the march runs in that precision, float32 for float32 rays).
struct TraverseInputs {
  Tensor o, d, boxes, near, far;
  TraverseInputs(const Tensor& rays_o, const Tensor& rays_d, const Tensor& aabbs, const Tensor& near_planes,
                 const Tensor& far_planes) {
    const auto dt = rays_o.scalar_type();
    o = rays_o.contiguous();
    d = rays_d.to(dt).contiguous();
    boxes = aabbs.to(dt).contiguous();
    near = near_planes.to(dt).contiguous();
    far = far_planes.to(dt).contiguous();
  }
  template <typename T>
  TravGrid<T> grid(const Tensor& binaries) const {
    return TravGrid<T>{binaries.data_ptr<bool>(), boxes.data_ptr<T>(), static_cast<int32_t>(binaries.size(0)),
                       {static_cast<int32_t>(binaries.size(1)), static_cast<int32_t>(binaries.size(2)),
                        static_cast<int32_t>(binaries.size(3))}};
  }
};
}  // namespace

namespace {
// Appends a block's samples to its own buffers (the CPU march is single-pass: no count pass to disagree with).
template <typename T>
struct PushEmit {
  std::vector<int64_t>* rays;
  std::vector<T>* t;  // t0, t1 interleaved
  int64_t ray;
  void operator()(T t0, T t1) {
    rays->push_back(ray);
    t->push_back(t0);
    t->push_back(t1);
  }
};
}  // namespace

// One march per ray (traverse.h), in the rays' precision, single pass: contiguous blocks of rays each append to
// their own buffers, concatenated in block order (output sorted by ray, then t).
Tensors3 traverse_grids(const Tensor& rays_o, const Tensor& rays_d, const Tensor& binaries, const Tensor& aabbs,
                        const Tensor& near_planes, const Tensor& far_planes, double step_size, double cone_angle) {
  check_traverse(rays_o, rays_d, binaries, aabbs, near_planes, far_planes);
  const int64_t n = rays_o.size(0);
  const auto out_opts = rays_o.options();
  if (n == 0 || binaries.numel() == 0) {
    return {at::empty({0}, out_opts.dtype(at::kLong)), at::empty({0}, out_opts), at::empty({0}, out_opts)};
  }
  TORCH_CHECK(binaries.size(1) < (1 << 30) && binaries.size(2) < (1 << 30) && binaries.size(3) < (1 << 30),
              "traverse_grids: grid resolutions must be below 2^30 per axis");
  const TraverseInputs in(rays_o, rays_d, aabbs, near_planes, far_planes);
  const auto binc = binaries.contiguous();
  Tensor ray_indices, t_starts, t_ends;
  AT_DISPATCH_FLOATING_TYPES(rays_o.scalar_type(), "traverse_grids", [&] {
    using T = scalar_t;
    const TravGrid<T> grid = in.grid<T>(binc);
    const T* o = in.o.data_ptr<T>();
    const T* d = in.d.data_ptr<T>();
    const T* nearp = in.near.data_ptr<T>();
    const T* farp = in.far.data_ptr<T>();
    const T step = static_cast<T>(step_size), cone = static_cast<T>(cone_angle);
    const int64_t n_blocks = std::min<int64_t>(n, static_cast<int64_t>(n_threads()) * 16);
    const int64_t per_block = (n + n_blocks - 1) / n_blocks;
    std::vector<std::vector<int64_t>> block_rays(n_blocks);
    std::vector<std::vector<T>> block_t(n_blocks);
    parallel_blocks(n_blocks, n > 256, [&](int64_t blk) {
      PushEmit<T> emit{&block_rays[blk], &block_t[blk], 0};
      NoStats stats;
      const int64_t r1 = std::min(n, (blk + 1) * per_block);
      for (int64_t r = blk * per_block; r < r1; ++r) {
        emit.ray = r;
        traverse_ray(o + 3 * r, d + 3 * r, nearp[r], farp[r], grid, step, cone, emit, stats);
      }
    });
    std::vector<int64_t> offsets(n_blocks + 1, 0);
    for (int64_t blk = 0; blk < n_blocks; ++blk) offsets[blk + 1] = offsets[blk] + block_rays[blk].size();
    const int64_t total = offsets[n_blocks];
    ray_indices = at::empty({total}, out_opts.dtype(at::kLong));
    t_starts = at::empty({total}, out_opts);
    t_ends = at::empty({total}, out_opts);
    int64_t* ri = ray_indices.data_ptr<int64_t>();
    T* ts = t_starts.data_ptr<T>();
    T* te = t_ends.data_ptr<T>();
    parallel_blocks(n_blocks, total > kParallelGrain, [&](int64_t blk) {
      const int64_t base = offsets[blk];
      const auto& rs = block_rays[blk];
      const auto& tv = block_t[blk];
      for (size_t i = 0; i < rs.size(); ++i) {
        ri[base + i] = rs[i];
        ts[base + i] = tv[2 * i];
        te[base + i] = tv[2 * i + 1];
      }
    });
  });
  return {ray_indices, t_starts, t_ends};
}

// Lattice points evaluated per ray by the march (benchmarks: work per emitted sample). CPU build only.
Tensor traverse_grids_visits(const Tensor& rays_o, const Tensor& rays_d, const Tensor& binaries, const Tensor& aabbs,
                             const Tensor& near_planes, const Tensor& far_planes, double step_size,
                             double cone_angle) {
  check_traverse(rays_o, rays_d, binaries, aabbs, near_planes, far_planes);
  const int64_t n = rays_o.size(0);
  auto visits = at::zeros({n}, rays_o.options().dtype(at::kLong));
  if (n == 0 || binaries.numel() == 0) return visits;
  const TraverseInputs in(rays_o, rays_d, aabbs, near_planes, far_planes);
  const auto binc = binaries.contiguous();
  int64_t* v = visits.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(rays_o.scalar_type(), "traverse_grids_visits", [&] {
    using T = scalar_t;
    const TravGrid<T> grid = in.grid<T>(binc);
    parallel_rays(n, [&](int64_t r) {
      SlotEmit<T> emit{nullptr, nullptr, nullptr, 0, 0, r, false};
      VisitStats stats;
      traverse_ray(in.o.data_ptr<T>() + 3 * r, in.d.data_ptr<T>() + 3 * r, in.near.data_ptr<T>()[r],
                   in.far.data_ptr<T>()[r], grid, static_cast<T>(step_size), static_cast<T>(cone_angle), emit, stats);
      v[r] = stats.visits;
    });
  });
  return visits;
}

Tensor scan_fwd(const Tensor& inputs, const Tensor& packed_info, bool prod, bool exclusive) {
  check_scan(inputs, packed_info);
  auto out = at::zeros_like(inputs);
  const int64_t n_rays = packed_info.size(0);
  const int64_t* pi = packed_info.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(inputs.scalar_type(), "scan_fwd", [&] {
    const scalar_t* x = inputs.data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    parallel_rays(n_rays, [&](int64_t r) {
      if (prod) {
        scan_prod_fwd(x, y, pi[2 * r], pi[2 * r + 1], exclusive);
      } else {
        scan_sum_fwd(x, y, pi[2 * r], pi[2 * r + 1], exclusive);
      }
    });
  });
  return out;
}

Tensor scan_bwd(const Tensor& grad, const Tensor& inputs, const Tensor& outputs, const Tensor& packed_info, bool prod,
                bool exclusive) {
  check_scan(inputs, packed_info);
  check_same_flat(grad, inputs, "grad", "inputs");
  check_same_flat(outputs, inputs, "outputs", "inputs");
  auto gx = at::zeros_like(inputs);
  const int64_t n_rays = packed_info.size(0);
  const int64_t* pi = packed_info.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(inputs.scalar_type(), "scan_bwd", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* x = inputs.data_ptr<scalar_t>();
    const scalar_t* y = outputs.data_ptr<scalar_t>();
    scalar_t* out = gx.data_ptr<scalar_t>();
    parallel_rays(n_rays, [&](int64_t r) {
      if (prod) {
        scan_prod_bwd(g, x, y, out, pi[2 * r], pi[2 * r + 1], exclusive);
      } else {
        scan_sum_bwd(g, out, pi[2 * r], pi[2 * r + 1], exclusive);
      }
    });
  });
  return gx;
}

namespace {

// kFused: the one-pass per-ray loops the CUDA kernels run (exposed for tests); otherwise the two-pass loops with
// vectorised exponentials.
// (The covers_all hint of the CUDA build is not needed here: covers_all() on the host costs one pass over the rays.)
template <bool kFused>
Tensors3 render_density_fwd_impl(const Tensor& t_starts, const Tensor& t_ends, const Tensor& sigmas,
                                 const Tensor& packed_info) {
  check_density(t_starts, t_ends, sigmas, packed_info);
  const int64_t n = sigmas.size(0), n_rays = packed_info.size(0);
  auto weights = at::zeros_like(sigmas);
  auto trans = at::zeros_like(sigmas);
  auto alphas = at::empty_like(sigmas);
  const int64_t* pi = packed_info.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "render_density_fwd", [&] {
    const scalar_t* t0 = t_starts.data_ptr<scalar_t>();
    const scalar_t* t1 = t_ends.data_ptr<scalar_t>();
    const scalar_t* sg = sigmas.data_ptr<scalar_t>();
    scalar_t* w = weights.data_ptr<scalar_t>();
    scalar_t* tr = trans.data_ptr<scalar_t>();
    scalar_t* a = alphas.data_ptr<scalar_t>();
    // Samples outside every chunk still get their alpha; skipped when the chunks cover everything.
    if (!covers_all(pi, n_rays, n)) parallel_elems(n, [&](int64_t i) { a[i] = density_alpha(t0[i], t1[i], sg[i]); });
    parallel_rays(n_rays, [&](int64_t r) {
      if (kFused) {
        render_density_fwd_ray(t0, t1, sg, a, w, tr, pi[2 * r], pi[2 * r + 1]);
      } else {
        render_density_fwd_ray_2pass(t0, t1, sg, a, w, tr, pi[2 * r], pi[2 * r + 1]);
      }
    });
  });
  return {weights, trans, alphas};
}

template <bool kFused>
Tensors3 render_density_bwd_impl(const Tensor& g_w, const Tensor& g_trans, const Tensor& g_alpha,
                                 const Tensor& t_starts, const Tensor& t_ends, const Tensor& sigmas,
                                 const Tensor& trans, const Tensor& alphas, const Tensor& packed_info) {
  check_density(t_starts, t_ends, sigmas, packed_info);
  check_same_flat(g_w, sigmas, "grad_weights", "sigmas");
  check_same_flat(g_trans, sigmas, "grad_trans", "sigmas");
  check_same_flat(g_alpha, sigmas, "grad_alphas", "sigmas");
  check_same_flat(trans, sigmas, "trans", "sigmas");
  check_same_flat(alphas, sigmas, "alphas", "sigmas");
  const int64_t n = sigmas.size(0), n_rays = packed_info.size(0);
  auto g_t0 = at::empty_like(sigmas);
  auto g_t1 = at::empty_like(sigmas);
  auto g_sg = at::empty_like(sigmas);
  const int64_t* pi = packed_info.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "render_density_bwd", [&] {
    const scalar_t* gw = g_w.data_ptr<scalar_t>();
    const scalar_t* gt = g_trans.data_ptr<scalar_t>();
    const scalar_t* ga = g_alpha.data_ptr<scalar_t>();
    const scalar_t* t0 = t_starts.data_ptr<scalar_t>();
    const scalar_t* t1 = t_ends.data_ptr<scalar_t>();
    const scalar_t* sg = sigmas.data_ptr<scalar_t>();
    const scalar_t* tr = trans.data_ptr<scalar_t>();
    const scalar_t* a = alphas.data_ptr<scalar_t>();
    scalar_t* o0 = g_t0.data_ptr<scalar_t>();
    scalar_t* o1 = g_t1.data_ptr<scalar_t>();
    scalar_t* os = g_sg.data_ptr<scalar_t>();
    // Elements outside every chunk only feed the alpha output; chunk elements are overwritten below.
    if (!covers_all(pi, n_rays, n)) {
      parallel_elems(n, [&](int64_t i) { render_density_bwd_elem(ga, t0, t1, sg, o0, o1, os, i); });
    }
    parallel_rays(n_rays, [&](int64_t r) {
      if (kFused) {
        render_density_bwd_ray(gw, gt, ga, t0, t1, sg, tr, a, o0, o1, os, pi[2 * r], pi[2 * r + 1]);
      } else {
        render_density_bwd_ray_2pass(gw, gt, ga, t0, t1, sg, tr, a, o0, o1, os, pi[2 * r], pi[2 * r + 1]);
      }
    });
  });
  return {g_t0, g_t1, g_sg};
}

}  // namespace

Tensors3 render_density_fwd(const Tensor& t_starts, const Tensor& t_ends, const Tensor& sigmas,
                            const Tensor& packed_info, bool /*covers_all*/) {
  return render_density_fwd_impl<false>(t_starts, t_ends, sigmas, packed_info);
}

Tensors3 render_density_bwd(const Tensor& g_w, const Tensor& g_trans, const Tensor& g_alpha, const Tensor& t_starts,
                            const Tensor& t_ends, const Tensor& sigmas, const Tensor& trans, const Tensor& alphas,
                            const Tensor& packed_info, bool /*covers_all*/) {
  return render_density_bwd_impl<false>(g_w, g_trans, g_alpha, t_starts, t_ends, sigmas, trans, alphas, packed_info);
}

Tensors3 render_density_fwd_fused(const Tensor& t_starts, const Tensor& t_ends, const Tensor& sigmas,
                                  const Tensor& packed_info) {
  return render_density_fwd_impl<true>(t_starts, t_ends, sigmas, packed_info);
}

Tensors3 render_density_bwd_fused(const Tensor& g_w, const Tensor& g_trans, const Tensor& g_alpha,
                                  const Tensor& t_starts, const Tensor& t_ends, const Tensor& sigmas,
                                  const Tensor& trans, const Tensor& alphas, const Tensor& packed_info) {
  return render_density_bwd_impl<true>(g_w, g_trans, g_alpha, t_starts, t_ends, sigmas, trans, alphas, packed_info);
}

Tensors2 render_alpha_fwd(const Tensor& alphas, const Tensor& packed_info) {
  check_scan(alphas, packed_info);
  const int64_t n_rays = packed_info.size(0);
  auto weights = at::zeros_like(alphas);
  auto trans = at::zeros_like(alphas);
  const int64_t* pi = packed_info.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "render_alpha_fwd", [&] {
    const scalar_t* a = alphas.data_ptr<scalar_t>();
    scalar_t* w = weights.data_ptr<scalar_t>();
    scalar_t* tr = trans.data_ptr<scalar_t>();
    parallel_rays(n_rays, [&](int64_t r) { render_alpha_fwd_ray(a, w, tr, pi[2 * r], pi[2 * r + 1]); });
  });
  return {weights, trans};
}

Tensor render_alpha_bwd(const Tensor& g_w, const Tensor& g_trans, const Tensor& alphas, const Tensor& trans,
                        const Tensor& packed_info) {
  check_scan(alphas, packed_info);
  check_same_flat(g_w, alphas, "grad_weights", "alphas");
  check_same_flat(g_trans, alphas, "grad_trans", "alphas");
  check_same_flat(trans, alphas, "trans", "alphas");
  const int64_t n_rays = packed_info.size(0);
  auto g_a = at::zeros_like(alphas);
  const int64_t* pi = packed_info.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "render_alpha_bwd", [&] {
    const scalar_t* gw = g_w.data_ptr<scalar_t>();
    const scalar_t* gt = g_trans.data_ptr<scalar_t>();
    const scalar_t* a = alphas.data_ptr<scalar_t>();
    const scalar_t* tr = trans.data_ptr<scalar_t>();
    scalar_t* ga = g_a.data_ptr<scalar_t>();
    parallel_rays(n_rays, [&](int64_t r) { render_alpha_bwd_ray(gw, gt, a, tr, ga, pi[2 * r], pi[2 * r + 1]); });
  });
  return g_a;
}

Tensor accumulate_fwd(const Tensor& weights, const std::optional<Tensor>& values, const Tensor& ray_indices,
                      int64_t n_rays) {
  check_accumulate(weights, values, ray_indices, n_rays);
  const int64_t n = weights.size(0);
  const int64_t dim = values.has_value() ? values->size(1) : 1;
  auto out = at::zeros({n_rays, dim}, weights.options());
  const int64_t* ri = ray_indices.data_ptr<int64_t>();
  // Out-of-range indices are an error; sorted indices (what the samplers produce) allow a parallel pass.
  int64_t bad = -1;
  bool sorted = true;
  for (int64_t i = 0; i < n; ++i) {
    if (ri[i] < 0 || ri[i] >= n_rays) {
      bad = i;
      break;
    }
    if (i > 0 && ri[i] < ri[i - 1]) sorted = false;
  }
  TORCH_CHECK_VALUE(bad < 0, "nerfaccel: ray_indices[", bad, "] = ", bad >= 0 ? ri[bad] : 0,
                    " is outside [0, n_rays = ", n_rays, ")");
  if (dim == 0 || n == 0) return out;  // (a [n, 0] values tensor has no data pointer)
  // Sums in double (acc_t), rounded to the input type once at the end; exact products of float32 inputs.
  auto acc = weights.scalar_type() == at::kDouble ? out : at::zeros({n_rays, dim}, out.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), "accumulate_fwd", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* w = weights.data_ptr<scalar_t>();
    const scalar_t* v = values.has_value() ? values->data_ptr<scalar_t>() : nullptr;
    A* o = acc.data_ptr<A>();
    auto add_range = [&](int64_t lo, int64_t hi) {  // samples [lo, hi) in order
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t r = ri[i];
        if (v == nullptr) {
          o[r] += A(w[i]);
        } else {
          for (int64_t c = 0; c < dim; ++c) o[r * dim + c] += A(w[i]) * A(v[i * dim + c]);
        }
      }
    };
    const int64_t n_chunks = sorted && n > 8 * kParallelGrain ? int64_t(n_threads()) * 4 : 1;
    if (n_chunks == 1) {
      add_range(0, n);  // unsorted: sequential in sample order, like index_add on the CPU
      return;
    }
    // Chunk starts moved forward to the next ray boundary, so every ray is summed by one thread, in sample
    // order: the same result as the sequential loop, bit for bit.
    std::vector<int64_t> start(n_chunks + 1, n);
    for (int64_t k = 0; k < n_chunks; ++k) {
      int64_t i = n * k / n_chunks;
      while (i > 0 && i < n && ri[i] == ri[i - 1]) ++i;
      start[k] = i;
    }
    parallel_blocks(n_chunks, true, [&](int64_t k) {
      const int64_t hi = std::max(start[k], start[k + 1]);
      add_range(start[k], hi);
    });
  });
  if (!acc.is_same(out)) out.copy_(acc);
  return out;
}

Tensors2 accumulate_bwd(const Tensor& grad_out, const Tensor& weights, const std::optional<Tensor>& values,
                        const Tensor& ray_indices) {
  check_accumulate(weights, values, ray_indices, 0);
  check_accumulate_grad(grad_out, weights, values);  // its shape bounds every read below
  const int64_t n = weights.size(0);
  const int64_t dim = grad_out.size(1);
  const int64_t n_rays = grad_out.size(0);
  Tensor g_v = values.has_value() ? at::empty_like(*values) : at::empty({0}, weights.options());
  if (values.has_value() && values->size(1) == 0) return {at::zeros_like(weights), g_v};
  auto g_w = at::empty_like(weights);
  const int64_t* ri = ray_indices.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), "accumulate_bwd", [&] {
    const scalar_t* go = grad_out.data_ptr<scalar_t>();
    const scalar_t* w = weights.data_ptr<scalar_t>();
    const scalar_t* v = values.has_value() ? values->data_ptr<scalar_t>() : nullptr;
    scalar_t* gw = g_w.data_ptr<scalar_t>();
    scalar_t* gv = values.has_value() ? g_v.data_ptr<scalar_t>() : nullptr;
    parallel_elems(n, [&](int64_t i) { accumulate_bwd_elem(go, w, v, ri, i, dim, n_rays, gw, gv); });
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
  auto left = at::zeros({query_vals.size(0)}, query_vals.options().dtype(at::kLong));
  auto right = at::zeros({query_vals.size(0)}, query_vals.options().dtype(at::kLong));
  const int64_t n_rays = sorted_packed_info.size(0), total = sorted_vals.size(0);
  const int64_t* spi = sorted_packed_info.data_ptr<int64_t>();
  const int64_t* qpi = query_packed_info.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(sorted_vals.scalar_type(), "searchsorted", [&] {
    const scalar_t* s = sorted_vals.data_ptr<scalar_t>();
    const scalar_t* q = query_vals.data_ptr<scalar_t>();
    int64_t* l = left.data_ptr<int64_t>();
    int64_t* rr = right.data_ptr<int64_t>();
    parallel_rays(n_rays, [&](int64_t r) {
      const int64_t qs = qpi[2 * r], qn = qpi[2 * r + 1];
      for (int64_t i = qs; i < qs + qn; ++i) searchsorted_one(s, spi[2 * r], spi[2 * r + 1], total, q[i], l[i], rr[i]);
    });
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
  // Layout (cheap, on the host): rays with no edges or n = 0 produce nothing.
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
  const int64_t* pi = packed_info.data_ptr<int64_t>();
  const int64_t* sp = s_packed.data_ptr<int64_t>();
  const int64_t* ep = e_packed.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(edge_vals.scalar_type(), "importance_sampling", [&] {
    const scalar_t* t = edge_vals.data_ptr<scalar_t>();
    const scalar_t* c = cdfs.data_ptr<scalar_t>();
    const scalar_t* bs = bias_c.data_ptr<scalar_t>();
    scalar_t* sm = samples.data_ptr<scalar_t>();
    scalar_t* ed = edges.data_ptr<scalar_t>();
    parallel_rays(n_rays, [&](int64_t r) {
      importance_sample_ray(t, c, pi[2 * r], pi[2 * r + 1], sp[2 * r + 1], bs[r], sm, sp[2 * r], ed, ep[2 * r]);
    });
  });
  return {samples, s_packed, edges, e_packed};
}

Tensor contract_fwd(const Tensor& x, const Tensor& aabb, bool linf, bool inverse) {
  check_points(x, aabb);
  auto y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "contract_fwd", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* bp = aabb.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    parallel_elems(x.size(0), [&](int64_t i) {
      if (inverse) {
        uncontract_point<scalar_t>(xp + 3 * i, bp, linf, yp + 3 * i, nullptr, nullptr);
      } else {
        contract_point<scalar_t>(xp + 3 * i, bp, linf, yp + 3 * i, nullptr, nullptr);
      }
    });
  });
  return y;
}

Tensor contract_bwd(const Tensor& grad_out, const Tensor& x, const Tensor& aabb, bool linf, bool inverse) {
  check_points(x, aabb);
  check_float(grad_out, "grad_out", x.device());
  check_shape(grad_out, "grad_out", x.sizes());
  auto gx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "contract_bwd", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* bp = aabb.data_ptr<scalar_t>();
    const scalar_t* gp = grad_out.data_ptr<scalar_t>();
    scalar_t* op = gx.data_ptr<scalar_t>();
    parallel_elems(x.size(0), [&](int64_t i) {
      if (inverse) {
        uncontract_point<scalar_t>(xp + 3 * i, bp, linf, nullptr, gp + 3 * i, op + 3 * i);
      } else {
        contract_point<scalar_t>(xp + 3 * i, bp, linf, nullptr, gp + 3 * i, op + 3 * i);
      }
    });
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
  const auto vals = values.to(occs.scalar_type()).contiguous();
  auto out = occs.clone();
  const int64_t k = cell_ids.size(0), c = occs.size(0);
  const int64_t* ids = cell_ids.data_ptr<int64_t>();
  int64_t bad = -1;
  AT_DISPATCH_FLOATING_TYPES(occs.scalar_type(), "grid_ema_update", [&] {
    const scalar_t* o = occs.data_ptr<scalar_t>();
    const scalar_t* v = vals.data_ptr<scalar_t>();
    scalar_t* n = out.data_ptr<scalar_t>();
    const scalar_t decay = static_cast<scalar_t>(ema_decay);
    for (int64_t i = 0; i < k; ++i) {  // decay every visible sampled cell once
      const int64_t id = ids[i];
      if (id < 0 || id >= c) {
        bad = i;
        return;
      }
      if (o[id] >= scalar_t(0)) n[id] = o[id] * decay;
    }
    for (int64_t i = 0; i < k; ++i) {  // then a deterministic scatter-max
      const int64_t id = ids[i];
      if (o[id] >= scalar_t(0)) n[id] = nan_max(n[id], v[i]);
    }
  });
  TORCH_CHECK_VALUE(bad < 0, "nerfaccel: cell_ids[", bad, "] = ", bad >= 0 ? ids[bad] : 0, " is outside [0, ", c, ")");
  return out;
}

Tensor hash_encode_fwd(const Tensor& x, const Tensor& table, const Tensor& scales, int64_t table_size) {
  check_hash(x, table, scales, table_size);
  const int64_t n = x.size(0), levels = scales.size(0), F = table.size(1);
  auto out = at::empty({n, levels * F}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hash_encode_fwd", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* tb = table.data_ptr<scalar_t>();
    const scalar_t* sc = scales.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    parallel_rays(n, [&](int64_t i) {
      for (int64_t l = 0; l < levels; ++l) {
        hash_encode_fwd_level(px + 3 * i, sc[l], tb, table_size, l, F, po + (i * levels + l) * F);
      }
    });
  });
  return out;
}

Tensors2 hash_encode_bwd(const Tensor& grad_out, const Tensor& x, const Tensor& table, const Tensor& scales,
                         int64_t table_size, bool need_x_grad) {
  check_hash(x, table, scales, table_size);
  const int64_t n = x.size(0), levels = scales.size(0), F = table.size(1);
  check_float(grad_out, "grad_out", x.device());
  check_same_dtype(grad_out, x, "grad_out", "x");
  TORCH_CHECK_VALUE(grad_out.dim() == 2 && grad_out.size(0) == n && grad_out.size(1) == levels * F,
                    "nerfaccel: `grad_out` must have shape [", n, ", ", levels * F, "], got ", grad_out.sizes());
  auto g_table = at::zeros_like(table);
  Tensor g_x = need_x_grad ? at::zeros_like(x) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hash_encode_bwd", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* tb = table.data_ptr<scalar_t>();
    const scalar_t* sc = scales.data_ptr<scalar_t>();
    const scalar_t* go = grad_out.data_ptr<scalar_t>();
    scalar_t* gt = g_table.data_ptr<scalar_t>();
    // Levels own disjoint parts of the table: one level per task, no atomics, deterministic sums.
    parallel_blocks(levels, n * levels > kParallelGrain, [&](int64_t l) {
      int64_t rows[8];
      scalar_t w[8];
      for (int64_t i = 0; i < n; ++i) {
        hash_level_corners<scalar_t>(px + 3 * i, sc[l], table_size, l, rows, w, nullptr);
        const scalar_t* g = go + (i * levels + l) * F;
        for (int k = 0; k < 8; ++k) {
          for (int64_t c = 0; c < F; ++c) gt[rows[k] * F + c] += w[k] * g[c];
        }
      }
    });
    if (need_x_grad) {
      scalar_t* gx = g_x.data_ptr<scalar_t>();
      parallel_rays(n, [&](int64_t i) {
        for (int64_t l = 0; l < levels; ++l) {
          hash_encode_bwd_x_level(px + 3 * i, sc[l], tb, table_size, l, F, go + (i * levels + l) * F, gx + 3 * i);
        }
      });
    }
  });
  return {g_table, g_x};
}

NA_NAMESPACE_END
