// Build metadata of an extension (the same file for the CPU and CUDA builds). No ops here: their schemas are
// defined in nerfaccel_plugin/_ops.py, and each op family registers its kernels for the build's device with
// TORCH_LIBRARY_IMPL in cuda/csrc/<family>.cpp when this module is loaded.
#include <pybind11/pybind11.h>

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME nerfaccel_ext
#endif
// Set by the build (nerfaccel_plugin/_ext/build.py or setup.py) so a stale binary can be detected.
#define NA_STRINGIFY_(x) #x
#define NA_STRINGIFY(x) NA_STRINGIFY_(x)
#ifdef NERFACCEL_SOURCE_HASH
#define NA_SOURCE_HASH NA_STRINGIFY(NERFACCEL_SOURCE_HASH)
#else
#define NA_SOURCE_HASH ""
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef NERFACCEL_WITH_CUDA
  m.attr("device_type") = "cuda";
#ifdef NERFACCEL_CUDA_ARCH
  m.attr("cuda_arch") = NA_STRINGIFY(NERFACCEL_CUDA_ARCH);
#endif
#else
  m.attr("device_type") = "cpu";
#endif
  m.attr("source_hash") = NA_SOURCE_HASH;
}
