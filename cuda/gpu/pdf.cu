// CUDA launchers of the pdf family (entry points: cuda/csrc/pdf.cpp): one thread per ray.
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

template <typename T>
__global__ void importance_kernel(const T* t, const T* c, const int64_t* pi, const int64_t* sp, const int64_t* ep,
                                  const T* bias, int64_t n_rays, T* sm, T* ed) {
  NA_GRID_LOOP(r, n_rays) {
    importance_sample_ray(t, c, pi[2 * r], pi[2 * r + 1], sp[2 * r + 1], bias[r], sm, sp[2 * r], ed, ep[2 * r]);
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
  AT_DISPATCH_FLOATING_TYPES(edge_vals.scalar_type(), "importance_sampling", [&] {
    NA_LAUNCH(importance_kernel<scalar_t>, n_rays, edge_vals.data_ptr<scalar_t>(), cdfs.data_ptr<scalar_t>(),
              packed_info.data_ptr<int64_t>(), s_packed.data_ptr<int64_t>(), e_packed.data_ptr<int64_t>(),
              bias.data_ptr<scalar_t>(), n_rays, samples.data_ptr<scalar_t>(), edges.data_ptr<scalar_t>());
  });
}

NA_NAMESPACE_END
