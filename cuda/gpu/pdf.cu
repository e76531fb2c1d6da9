// CUDA launchers of the pdf family (entry points: cuda/csrc/pdf.cpp): searchsorted one thread per ray, importance
// sampling one thread per output sample and one per output edge.
#include "launch.cuh"
#include "nerfaccel/launch.h"
#include "nerfaccel/pdf.h"

NA_NAMESPACE_BEGIN

namespace {

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
    if (packed[2 * mid] <= i) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
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

}  // namespace

void searchsorted_launch(const Tensor& sorted_vals, const Tensor& sorted_packed_info, const Tensor& query_vals,
                         const Tensor& query_packed_info, Tensor& left, Tensor& right) {
  const int64_t n_rays = sorted_packed_info.size(0);
  AT_DISPATCH_FLOATING_TYPES(sorted_vals.scalar_type(), "searchsorted", [&] {
    NA_LAUNCH(searchsorted_kernel<scalar_t>, n_rays, sorted_vals.data_ptr<scalar_t>(),
              sorted_packed_info.data_ptr<int64_t>(), query_vals.data_ptr<scalar_t>(),
              query_packed_info.data_ptr<int64_t>(), n_rays, sorted_vals.size(0), left.data_ptr<int64_t>(),
              right.data_ptr<int64_t>());
  });
}

void importance_sampling_launch(const Tensor& edge_vals, const Tensor& cdfs, const Tensor& packed_info,
                                const Tensor& s_packed, const Tensor& e_packed, const Tensor& bias, Tensor& samples,
                                Tensor& edges) {
  const int64_t n_rays = packed_info.size(0);
  const int64_t n_samples = samples.size(0), n_edges = edges.size(0);
  AT_DISPATCH_FLOATING_TYPES(edge_vals.scalar_type(), "importance_sampling", [&] {
    if (n_samples > 0) {
      NA_LAUNCH(importance_samples_kernel<scalar_t>, n_samples, edge_vals.data_ptr<scalar_t>(),
                cdfs.data_ptr<scalar_t>(), packed_info.data_ptr<int64_t>(), s_packed.data_ptr<int64_t>(),
                bias.data_ptr<scalar_t>(), n_rays, n_samples, samples.data_ptr<scalar_t>());
    }
    if (n_edges > 0) {
      NA_LAUNCH(importance_edges_kernel<scalar_t>, n_edges, edge_vals.data_ptr<scalar_t>(),
                cdfs.data_ptr<scalar_t>(), packed_info.data_ptr<int64_t>(), s_packed.data_ptr<int64_t>(),
                e_packed.data_ptr<int64_t>(), bias.data_ptr<scalar_t>(), n_rays, n_edges,
                edges.data_ptr<scalar_t>());
    }
  });
}

NA_NAMESPACE_END
