// CPU launchers of the pdf family (entry points: cuda/csrc/pdf.cpp).
#include <ATen/ATen.h>

#include "nerfaccel/launch.h"
#include "nerfaccel/pdf.h"
#include "parallel.h"

NA_NAMESPACE_BEGIN

void searchsorted_launch(const Tensor& sorted_vals, const Tensor& sorted_packed_info, const Tensor& query_vals,
                         const Tensor& query_packed_info, Tensor& left, Tensor& right) {
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
}

void importance_sampling_launch(const Tensor& edge_vals, const Tensor& cdfs, const Tensor& packed_info,
                                const Tensor& s_packed, const Tensor& e_packed, const Tensor& bias, Tensor& samples,
                                Tensor& edges) {
  const int64_t n_rays = packed_info.size(0);
  const int64_t* pi = packed_info.data_ptr<int64_t>();
  const int64_t* sp = s_packed.data_ptr<int64_t>();
  const int64_t* ep = e_packed.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(edge_vals.scalar_type(), "importance_sampling", [&] {
    const scalar_t* t = edge_vals.data_ptr<scalar_t>();
    const scalar_t* c = cdfs.data_ptr<scalar_t>();
    const scalar_t* bs = bias.data_ptr<scalar_t>();
    scalar_t* sm = samples.data_ptr<scalar_t>();
    scalar_t* ed = edges.data_ptr<scalar_t>();
    parallel_rays(n_rays, [&](int64_t r) {
      importance_sample_ray(t, c, pi[2 * r], pi[2 * r + 1], sp[2 * r + 1], bs[r], sm, sp[2 * r], ed, ep[2 * r]);
    });
  });
}

NA_NAMESPACE_END
