// Host-side argument checks used by the entry points of cuda/csrc/ (compiled into both builds).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common.h"

NA_NAMESPACE_BEGIN

inline void check_tensor(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK_VALUE(t.defined(), "nerfaccel: `", name, "` is undefined");
  TORCH_CHECK_VALUE(t.device() == device, "nerfaccel: `", name, "` is on ", t.device(), " but the other inputs are on ",
                    device);
  TORCH_CHECK_VALUE(t.is_contiguous(), "nerfaccel: `", name, "` must be contiguous (call .contiguous() first)");
}

inline void check_float(const at::Tensor& t, const char* name, const at::Device& device) {
  check_tensor(t, name, device);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "nerfaccel: `", name,
                   "` must be float32 or float64 (upcast float16/bfloat16 first), got ", t.scalar_type());
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* na, const char* nb) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), "nerfaccel: `", na, "` (", a.scalar_type(), ") and `", nb,
                   "` (", b.scalar_type(), ") must have the same dtype");
}

inline void check_dim(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK_VALUE(t.dim() == dim, "nerfaccel: `", name, "` must have ", dim, " dimensions, got shape ", t.sizes());
}

inline void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK_VALUE(t.sizes() == shape, "nerfaccel: `", name, "` must have shape ", shape, ", got ", t.sizes());
}

inline void check_long(const at::Tensor& t, const char* name, const at::Device& device) {
  check_tensor(t, name, device);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, "nerfaccel: `", name, "` must be int64, got ", t.scalar_type());
}

inline void check_packed_info(const at::Tensor& p, const char* name, const at::Device& device) {
  check_long(p, name, device);
  TORCH_CHECK_VALUE(p.dim() == 2 && p.size(1) == 2, "nerfaccel: `", name, "` must have shape [n_rays, 2], got ",
                    p.sizes());
}

// Every chunk [start, start + count) must lie in [0, n), and with `disjoint` (chunks the op writes through) no two
// non-empty chunks may share an element; they need not be in order (one pass when they are, else a sort), and empty
// chunks may start anywhere in [0, n]. The same rules as the Python layer's validation. Checked on the host for CPU
// tensors only: on a GPU it would cost a device sync per call, and the Python layer validates packed_info before
// dispatch (unless NERFACCEL_SKIP_VALUE_CHECKS=1). On a GPU, chunks outside [0, n) read and write out of bounds and
// overlapping chunks race (each element gets one of the rays' values). Keeps direct torch.ops.nerfaccel.* calls
// on the CPU from reading or writing out of bounds, or returning elements that no chunk wrote.
inline void check_packed_ranges(const at::Tensor& p, const char* name, int64_t n, bool disjoint = true) {
  if (!p.device().is_cpu()) return;
  const int64_t* pi = p.data_ptr<int64_t>();
  const int64_t rows = p.size(0);
  bool ordered = true;
  int64_t end = 0;  // end of the last non-empty chunk so far
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t start = pi[2 * r], count = pi[2 * r + 1];
    TORCH_CHECK_VALUE(start >= 0 && count >= 0 && start <= n - count, "nerfaccel: `", name, "`[", r, "] = [", start,
                      ", ", count, "] addresses elements outside [0, ", n,
                      "); packed_info rows are [start, count] chunks of the flat tensor (see pack_info)");
    if (count > 0) {
      ordered = ordered && start >= end;
      end = start + count;
    }
  }
  if (!disjoint || ordered) return;
  std::vector<std::pair<int64_t, int64_t>> chunks;  // (start, row) of the non-empty chunks, by start
  for (int64_t r = 0; r < rows; ++r) {
    if (pi[2 * r + 1] > 0) chunks.emplace_back(pi[2 * r], r);
  }
  std::sort(chunks.begin(), chunks.end());
  for (size_t k = 1; k < chunks.size(); ++k) {
    const int64_t a = chunks[k - 1].second, b = chunks[k].second;
    TORCH_CHECK_VALUE(pi[2 * b] >= pi[2 * a] + pi[2 * a + 1], "nerfaccel: `", name, "`[", a, "] = [", pi[2 * a], ", ",
                      pi[2 * a + 1], "] and `", name, "`[", b, "] = [", pi[2 * b], ", ", pi[2 * b + 1],
                      "] overlap; each element may belong to one chunk only (build packed_info with pack_info)");
  }
}

inline void check_flat(const at::Tensor& t, const char* name, int64_t n) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == n, "nerfaccel: `", name, "` must have shape [", n, "], got ",
                    t.sizes());
}

inline void check_same_flat(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  check_float(t, name, ref.device());
  check_same_dtype(t, ref, name, ref_name);
  check_flat(t, name, ref.size(0));
}

// Like check_same_flat for any layout: same dtype, device and shape as ref.
inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  check_float(t, name, ref.device());
  check_same_dtype(t, ref, name, ref_name);
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), "nerfaccel: `", name, "` must have the shape of `", ref_name, "` ",
                    ref.sizes(), ", got ", t.sizes());
}

// The layout of a segmented op's samples: flat (n,) with packed_info, or batched (n_rays, n) without (each row one
// ray). Checks `x` against it (float, contiguous) and packed_info's rows (on the CPU).
inline void check_layout(const at::Tensor& x, const std::optional<at::Tensor>& packed_info, const char* name) {
  check_float(x, name, x.device());
  if (packed_info.has_value()) {
    TORCH_CHECK_VALUE(x.dim() == 1, "nerfaccel: `", name, "` must be flat (n,) with packed_info, got ", x.sizes());
    check_packed_info(*packed_info, "packed_info", x.device());
    check_packed_ranges(*packed_info, "packed_info", x.size(0));
  } else {
    TORCH_CHECK_VALUE(x.dim() == 2, "nerfaccel: `", name,
                      "` must be batched (n_rays, n) without packed_info (or pass packed_info), got ", x.sizes());
  }
}

// Whether the chunks tile [0, n): the non-empty ones in order, each starting where the previous one ended (empty
// chunks may start anywhere). Then every element belongs to a chunk and the pass over all elements can be skipped.
// (Counts summing to n are not enough: [[0, 2], [0, 2]] with n = 4 leaves elements 2 and 3 in no chunk.) Host data
// only (CPU tensors).
inline bool chunks_cover_all(const int64_t* pi, int64_t n_rays, int64_t n) {
  int64_t next = 0;
  for (int64_t r = 0; r < n_rays; ++r) {
    const int64_t start = pi[2 * r], count = pi[2 * r + 1];
    if (count == 0) continue;
    if (start != next) return false;
    next += count;
  }
  return next == n;
}

NA_NAMESPACE_END
