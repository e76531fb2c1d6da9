// Host-side argument checks shared by the CPU and CUDA wrappers (kept apart from the launches).
#pragma once

#include <torch/extension.h>

#include <string>

namespace nerfaccel {

inline void check_tensor(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK(t.defined(), "nerfaccel: `", name, "` is undefined");
  TORCH_CHECK(t.device() == device, "nerfaccel: `", name, "` is on ", t.device(), " but the other inputs are on ",
              device);
  TORCH_CHECK(t.is_contiguous(), "nerfaccel: `", name, "` must be contiguous (call .contiguous() first)");
}

inline void check_float(const at::Tensor& t, const char* name, const at::Device& device) {
  check_tensor(t, name, device);
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "nerfaccel: `", name,
              "` must be float32 or float64 (upcast float16/bfloat16 first), got ", t.scalar_type());
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* na, const char* nb) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "nerfaccel: `", na, "` (", a.scalar_type(), ") and `", nb, "` (",
              b.scalar_type(), ") must have the same dtype");
}

inline void check_dim(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, "nerfaccel: `", name, "` must have ", dim, " dimensions, got shape ", t.sizes());
}

inline void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, "nerfaccel: `", name, "` must have shape ", shape, ", got ", t.sizes());
}

inline void check_long(const at::Tensor& t, const char* name, const at::Device& device) {
  check_tensor(t, name, device);
  TORCH_CHECK(t.scalar_type() == at::kLong, "nerfaccel: `", name, "` must be int64, got ", t.scalar_type());
}

inline void check_packed_info(const at::Tensor& p, const char* name, const at::Device& device) {
  check_long(p, name, device);
  TORCH_CHECK(p.dim() == 2 && p.size(1) == 2, "nerfaccel: `", name, "` must have shape [n_rays, 2], got ", p.sizes());
}

inline void check_flat(const at::Tensor& t, const char* name, int64_t n) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, "nerfaccel: `", name, "` must have shape [", n, "], got ", t.sizes());
}

}  // namespace nerfaccel
