// CPU launchers of the volrend family (entry points: cuda/csrc/volrend.cpp): one chunk per OpenMP iteration, the
// running sums in double (acc_t), the exponentials in vectorised passes.
#include <ATen/ATen.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "nerfaccel/launch.h"
#include "nerfaccel/volrend.h"
#include "parallel.h"

NA_NAMESPACE_BEGIN

namespace {
template <typename T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}
template <typename T>
T* mut_or_null(Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}
// Batched rows (n_rays, s): blocks of kRows rows advance together, sample by sample, so their running sums (double)
// form independent dependence chains instead of one long chain per ray; then one vectorised exponential pass over
// the block. The same operations in the same order per ray as render_density_fwd_ray / _bwd_ray.
constexpr int64_t kRows = 8;

// float32 rows also get an AVX2 clone chosen at load time (GCC target_clones, x86-64 with libmvec): its exp passes
// call libmvec's 8-wide expf. No FMA (-ffp-contract=off holds), so the running sums round as in the default clone.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(NERFACCEL_LIBMVEC)
#define NA_ROW_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define NA_ROW_CLONES
#endif
#define NA_ROW_INLINE inline __attribute__((always_inline))

template <typename T>
NA_ROW_INLINE void density_fwd_rows(const T* t0, const T* t1, const T* sg, T* a, T* w, T* tr, int64_t r0, int64_t nr, int64_t s) {
  acc_t<T> acc[kRows] = {};
  for (int64_t j = 0; j < s; ++j) {
    for (int64_t k = 0; k < nr; ++k) {
      const int64_t i = (r0 + k) * s + j;
      const T tau = density_tau(t0[i], t1[i], sg[i]);
      a[i] = tau;
      tr[i] = static_cast<T>(acc[k]);
      acc[k] += tau;
    }
  }
  const int64_t lo = r0 * s, hi = (r0 + nr) * s;
  NA_SIMD
  for (int64_t i = lo; i < hi; ++i) {
    const T al = alpha_from_tau(a[i]);
    const T t = na_exp(-tr[i]);
    a[i] = al;
    tr[i] = t;
    w[i] = t * al;
  }
}

template <typename T>
NA_ROW_INLINE void density_bwd_rows(const T* gw, const T* gt, const T* ga, const T* t0, const T* t1, const T* sigma, const T* trans,
                      const T* alpha, T* g_t0, T* g_t1, T* g_sigma, int64_t r0, int64_t nr, int64_t s) {
  using A = acc_t<T>;
  const int64_t lo = r0 * s, hi = (r0 + nr) * s;
  NA_SIMD
  for (int64_t i = lo; i < hi; ++i) g_sigma[i] = na_exp(-density_tau(t0[i], t1[i], sigma[i]));
  A suffix[kRows] = {};
  for (int64_t j = s - 1; j >= 0; --j) {
    for (int64_t k = 0; k < nr; ++k) {
      const int64_t i = (r0 + k) * s + j;
      const T dt = t1[i] - t0[i];
      const T g_w = cot(gw, i);
      const T dtau = static_cast<T>((A(cot(ga, i)) + A(g_w) * A(trans[i])) * A(g_sigma[i]) - suffix[k]);
      suffix[k] += (A(cot(gt, i)) + A(g_w) * A(alpha[i])) * A(trans[i]);
      g_sigma[i] = dtau * dt;
      if (g_t0 != nullptr) {
        g_t0[i] = -dtau * sigma[i];
        g_t1[i] = dtau * sigma[i];
      }
    }
  }
}

NA_ROW_CLONES void density_fwd_rows_f32(const float* t0, const float* t1, const float* sg, float* a, float* w,
                                        float* tr, int64_t r0, int64_t nr, int64_t s) {
  density_fwd_rows(t0, t1, sg, a, w, tr, r0, nr, s);
}
NA_ROW_CLONES void density_bwd_rows_f32(const float* gw, const float* gt, const float* ga, const float* t0,
                                        const float* t1, const float* sigma, const float* trans, const float* alpha,
                                        float* g_t0, float* g_t1, float* g_sigma, int64_t r0, int64_t nr, int64_t s) {
  density_bwd_rows(gw, gt, ga, t0, t1, sigma, trans, alpha, g_t0, g_t1, g_sigma, r0, nr, s);
}
template <typename T>
void density_fwd_rows_any(const T* t0, const T* t1, const T* sg, T* a, T* w, T* tr, int64_t r0, int64_t nr,
                          int64_t s) {
  if constexpr (std::is_same_v<T, float>) {
    density_fwd_rows_f32(t0, t1, sg, a, w, tr, r0, nr, s);
  } else {
    density_fwd_rows(t0, t1, sg, a, w, tr, r0, nr, s);
  }
}
template <typename T>
void density_bwd_rows_any(const T* gw, const T* gt, const T* ga, const T* t0, const T* t1, const T* sigma,
                          const T* trans, const T* alpha, T* g_t0, T* g_t1, T* g_sigma, int64_t r0, int64_t nr,
                          int64_t s) {
  if constexpr (std::is_same_v<T, float>) {
    density_bwd_rows_f32(gw, gt, ga, t0, t1, sigma, trans, alpha, g_t0, g_t1, g_sigma, r0, nr, s);
  } else {
    density_bwd_rows(gw, gt, ga, t0, t1, sigma, trans, alpha, g_t0, g_t1, g_sigma, r0, nr, s);
  }
}

}  // namespace

void density_fwd_launch(const Tensor& t_starts, const Tensor& t_ends, const Tensor& sigmas, const Chunks& chunks,
                        bool covers_all, Tensor& weights, Tensor& trans, Tensor& alphas) {
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "render_weight_from_density_fwd", [&] {
    const scalar_t* t0 = t_starts.data_ptr<scalar_t>();
    const scalar_t* t1 = t_ends.data_ptr<scalar_t>();
    const scalar_t* sg = sigmas.data_ptr<scalar_t>();
    scalar_t* w = weights.data_ptr<scalar_t>();
    scalar_t* tr = trans.data_ptr<scalar_t>();
    scalar_t* a = alphas.data_ptr<scalar_t>();
    // Samples outside every chunk still get their alpha.
    if (!covers_all) {
      parallel_elems(sigmas.numel(), [&](int64_t i) { a[i] = density_alpha(t0[i], t1[i], sg[i]); });
    }
    if (chunks.packed == nullptr) {
      parallel_row_blocks(chunks.rows, chunks.stride, kRows, [&](int64_t r0, int64_t nr) {
        density_fwd_rows_any(t0, t1, sg, a, w, tr, r0, nr, chunks.stride);
      });
      return;
    }
    parallel_rays(chunks.rows, [&](int64_t r) {
      render_density_fwd_ray(t0, t1, sg, a, w, tr, chunks.start(r), chunks.count(r));
    });
  });
}

void density_bwd_launch(const Tensor& g_w, const Tensor& g_trans, const Tensor& g_alpha, const Tensor& t_starts,
                        const Tensor& t_ends, const Tensor& sigmas, const Tensor& trans, const Tensor& alphas,
                        const Chunks& chunks, bool covers_all, Tensor& g_t0, Tensor& g_t1, Tensor& g_sigmas) {
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "render_weight_from_density_bwd", [&] {
    const scalar_t* gw = ptr_or_null<scalar_t>(g_w);
    const scalar_t* gt = ptr_or_null<scalar_t>(g_trans);
    const scalar_t* ga = ptr_or_null<scalar_t>(g_alpha);
    const scalar_t* t0 = t_starts.data_ptr<scalar_t>();
    const scalar_t* t1 = t_ends.data_ptr<scalar_t>();
    const scalar_t* sg = sigmas.data_ptr<scalar_t>();
    const scalar_t* tr = trans.data_ptr<scalar_t>();
    const scalar_t* a = alphas.data_ptr<scalar_t>();
    scalar_t* o0 = mut_or_null<scalar_t>(g_t0);
    scalar_t* o1 = mut_or_null<scalar_t>(g_t1);
    scalar_t* os = g_sigmas.data_ptr<scalar_t>();
    // Elements outside every chunk only feed the alpha output; chunk elements are overwritten below.
    if (!covers_all) {
      parallel_elems(sigmas.numel(), [&](int64_t i) { render_density_bwd_elem(ga, t0, t1, sg, o0, o1, os, i); });
    }
    if (chunks.packed == nullptr) {
      parallel_row_blocks(chunks.rows, chunks.stride, kRows, [&](int64_t r0, int64_t nr) {
        density_bwd_rows_any(gw, gt, ga, t0, t1, sg, tr, a, o0, o1, os, r0, nr, chunks.stride);
      });
      return;
    }
    parallel_rays(chunks.rows, [&](int64_t r) {
      render_density_bwd_ray(gw, gt, ga, t0, t1, sg, tr, a, o0, o1, os, chunks.start(r), chunks.count(r));
    });
  });
}

void alpha_fwd_launch(const Tensor& alphas, const Chunks& chunks, Tensor& weights, Tensor& trans) {
  AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "render_weight_from_alpha_fwd", [&] {
    const scalar_t* a = alphas.data_ptr<scalar_t>();
    scalar_t* w = weights.data_ptr<scalar_t>();
    scalar_t* tr = trans.data_ptr<scalar_t>();
    parallel_rays(chunks.rows, [&](int64_t r) { render_alpha_fwd_ray(a, w, tr, chunks.start(r), chunks.count(r)); });
  });
}

void alpha_bwd_launch(const Tensor& g_w, const Tensor& g_trans, const Tensor& alphas, const Tensor& trans,
                      const Chunks& chunks, Tensor& g_alphas) {
  AT_DISPATCH_FLOATING_TYPES(alphas.scalar_type(), "render_weight_from_alpha_bwd", [&] {
    const scalar_t* gw = ptr_or_null<scalar_t>(g_w);
    const scalar_t* gt = ptr_or_null<scalar_t>(g_trans);
    const scalar_t* a = alphas.data_ptr<scalar_t>();
    const scalar_t* tr = trans.data_ptr<scalar_t>();
    scalar_t* ga = g_alphas.data_ptr<scalar_t>();
    parallel_rays(chunks.rows, [&](int64_t r) {
      render_alpha_bwd_ray(gw, gt, a, tr, ga, chunks.start(r), chunks.count(r));
    });
  });
}

void accumulate_fwd_launch(const Tensor& weights, const OptTensor& values, const Tensor& ray_indices, Tensor& out) {
  const int64_t n = weights.size(0), n_rays = out.size(0), dim = out.size(1);
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
  if (dim == 0 || n == 0) return;  // (a [n, 0] values tensor has no data pointer)
  // Sums in double (acc_t), rounded to the input type once at the end; exact products of float32 inputs.
  auto acc = weights.scalar_type() == at::kDouble ? out : at::zeros({n_rays, dim}, out.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), "accumulate_along_rays_fwd", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* w = weights.data_ptr<scalar_t>();
    const scalar_t* v = values.has_value() ? values->data_ptr<scalar_t>() : nullptr;
    A* o = acc.data_ptr<A>();
    auto add_range = [&](int64_t lo, int64_t hi) {  // samples [lo, hi) in order
      // A run of one ray's samples is summed in registers from the stored value and stored once: the same adds in
      // the same order as one += per sample, without a store-to-load dependency per sample.
      if (v == nullptr) {
        for (int64_t i = lo; i < hi;) {
          const int64_t r = ri[i];
          A s0 = o[r];
          for (; i < hi && ri[i] == r; ++i) s0 += A(w[i]);
          o[r] = s0;
        }
      } else if (dim == 3) {  // colours, unrolled
        for (int64_t i = lo; i < hi;) {
          const int64_t r = ri[i];
          A* out = o + r * 3;
          A s0 = out[0], s1 = out[1], s2 = out[2];
          for (; i < hi && ri[i] == r; ++i) {
            const A wi = A(w[i]);
            s0 += wi * A(v[i * 3]);
            s1 += wi * A(v[i * 3 + 1]);
            s2 += wi * A(v[i * 3 + 2]);
          }
          out[0] = s0;
          out[1] = s1;
          out[2] = s2;
        }
      } else {
        for (int64_t i = lo; i < hi; ++i) {
          for (int64_t c = 0; c < dim; ++c) o[ri[i] * dim + c] += A(w[i]) * A(v[i * dim + c]);
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
}

void accumulate_bwd_launch(const Tensor& grad_out, const Tensor& weights, const OptTensor& values,
                           const Tensor& ray_indices, Tensor& g_w, Tensor& g_v) {
  const int64_t n = weights.size(0), dim = grad_out.size(1), n_rays = grad_out.size(0);
  const int64_t* ri = ray_indices.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), "accumulate_along_rays_bwd", [&] {
    const scalar_t* go = grad_out.data_ptr<scalar_t>();
    const scalar_t* w = weights.data_ptr<scalar_t>();
    const scalar_t* v = values.has_value() ? values->data_ptr<scalar_t>() : nullptr;
    scalar_t* gw = mut_or_null<scalar_t>(g_w);
    scalar_t* gv = mut_or_null<scalar_t>(g_v);
    // Contiguous ranges per thread; 3 values per sample (colours) unrolled.
    at::parallel_for(0, n, kRowGrainSamples, [&](int64_t lo, int64_t hi) {
      if (v != nullptr && dim == 3) {
        for (int64_t i = lo; i < hi; ++i) accumulate_bwd_elem<3>(go, w, v, ri, i, dim, n_rays, gw, gv);
      } else {
        for (int64_t i = lo; i < hi; ++i) accumulate_bwd_elem(go, w, v, ri, i, dim, n_rays, gw, gv);
      }
    });
  });
}

NA_NAMESPACE_END
