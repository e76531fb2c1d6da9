// Shared definitions for the host (C++) and device (CUDA) builds of nerfaccel's kernels.
//
// NA_HD marks a function as callable from both host and device code. It expands to
// `__host__ __device__` under nvcc and to nothing under the system C++ compiler, so every per-ray /
// per-sample routine in math.h is written once and compiled into both extensions.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define NA_HD __host__ __device__ __forceinline__
#define NA_SIMD
#else
#define NA_HD inline
// Marks a loop without dependences between iterations for OpenMP SIMD vectorisation (CPU build only).
#define NA_SIMD _Pragma("omp simd")
#endif

#if defined(NERFACCEL_LIBMVEC) && !defined(__CUDACC__) && defined(__GNUC__) && !defined(__clang__)
// glibc's vector math library (libmvec, linked by the build when present) has SIMD versions of exp and expf.
// glibc declares them only under -ffast-math, which we do not use (NaN and inf must behave as in torch), so
// they are declared here; NA_SIMD loops then call them (2-3x faster than the scalar calls, within 2 ulp).
extern "C" {
__attribute__((simd("notinbranch"))) float expf(float) noexcept;
__attribute__((simd("notinbranch"))) double exp(double) noexcept;
}
#endif

// Each extension's code lives in its own inline namespace, nerfaccel::cpu_build or nerfaccel::cuda_build. The two
// builds compile the same sources, so without it they would define the same C++ symbols (the entry points, and the
// header functions, which are weak): loaded together with RTLD_GLOBAL, one extension's calls could bind to the
// other's definitions. Inline, so the code still says nerfaccel::f. Every header and source opens it through
// NA_NAMESPACE_BEGIN / NA_NAMESPACE_END.
#if defined(NERFACCEL_WITH_CUDA)
#define NA_BUILD_NS cuda_build
#else
#define NA_BUILD_NS cpu_build
#endif
#define NA_NAMESPACE_BEGIN \
  namespace nerfaccel {    \
  inline namespace NA_BUILD_NS {
#define NA_NAMESPACE_END \
  }                      \
  }

NA_NAMESPACE_BEGIN

// 64-bit indices everywhere a count of samples can exceed 2^31.
using index_t = int64_t;

// Accumulator of every running sum and product along a ray (scans, optical depth, transmittance, gradient suffixes,
// accumulation): double for float32 and float64 inputs, on the host and the device. A float32 running sum drifts
// with the length of the ray (~1e-2 after 2e5 samples); per-sample values and outputs stay in the input type.
template <typename T>
struct AccType {
  using type = double;
};
template <typename T>
using acc_t = typename AccType<T>::type;

template <typename T>
NA_HD T na_min(T a, T b) { return b < a ? b : a; }
template <typename T>
NA_HD T na_max(T a, T b) { return a < b ? b : a; }

// torch.maximum / torch.minimum propagate NaN; mirror that so kernels match the reference.
template <typename T>
NA_HD T nan_max(T a, T b) { return (a != a || b != b) ? (a + b) : (a < b ? b : a); }
template <typename T>
NA_HD T nan_min(T a, T b) { return (a != a || b != b) ? (a + b) : (b < a ? b : a); }

template <typename T>
NA_HD T na_inf() { return static_cast<T>(INFINITY); }

NA_HD float na_exp(float x) { return expf(x); }
NA_HD double na_exp(double x) { return exp(x); }
NA_HD float na_sqrt(float x) { return sqrtf(x); }
NA_HD double na_sqrt(double x) { return sqrt(x); }
NA_HD float na_abs(float x) { return fabsf(x); }
NA_HD double na_abs(double x) { return fabs(x); }
NA_HD float na_ceil(float x) { return ceilf(x); }
NA_HD double na_ceil(double x) { return ceil(x); }
NA_HD float na_log(float x) { return logf(x); }
NA_HD double na_log(double x) { return log(x); }
NA_HD float na_log1p(float x) { return log1pf(x); }
NA_HD double na_log1p(double x) { return log1p(x); }
#if defined(__CUDA_ARCH__)
NA_HD bool na_isfinite(float x) { return isfinite(x); }
NA_HD bool na_isfinite(double x) { return isfinite(x); }
#else
NA_HD bool na_isfinite(float x) { return std::isfinite(x); }
NA_HD bool na_isfinite(double x) { return std::isfinite(x); }
#endif

NA_NAMESPACE_END
