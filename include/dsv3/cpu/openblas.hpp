// dsv3/cpu/openblas.hpp — which OpenBLAS core dsv3 runs GEMMs on.
//
// OpenBLAS 0.3.21 (Debian 12) does not recognise some virtualised Xeons and
// EPYCs and falls back to its generic "Prescott" SSE3 kernels, 2.5x slower in
// prefill than the kernels the CPU supports. The core is chosen once, when
// the library initialises, from OPENBLAS_CORETYPE. So a program must decide
// before OpenBLAS loads: the CLI re-executes itself once with the variable
// set; the Python package asks a child process and sets it before importing
// its extension. Both use this function, so both run the same GEMM kernels
// (the same summation order: logits byte-identical between them).
// A user's own OPENBLAS_CORETYPE is always kept; DSV3_KEEP_BLAS_CORE=1
// disables the change.
#pragma once

#include <strings.h>

#include <cstdlib>

// OpenBLAS's core detection (weak: absent with another BLAS).
extern "C" __attribute__((weak)) char* openblas_get_corename(void);

namespace dsv3 {

// The core to set in OPENBLAS_CORETYPE before OpenBLAS initialises, or
// nullptr to leave its own choice.
inline const char* openblas_preferred_core() {
  if (!openblas_get_corename || std::getenv("OPENBLAS_CORETYPE") || std::getenv("DSV3_KEEP_BLAS_CORE")) return nullptr;
  const char* core = openblas_get_corename();
  if (!core || strcasecmp(core, "prescott") != 0) return nullptr;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return nullptr;
}

}  // namespace dsv3
