// dsv3/cuda/backend.hpp — the CUDA backend (backends/cuda; CMake option
// DSV3_CUDA, target dsv3::cuda). Only this declaration is public: CUDA's own
// headers stay inside the library, so a program including this needs no CUDA
// toolkit to compile, only the library and the CUDA runtime to link.
//
// What it runs on the device (supports()): the embedding gather, linear over
// F32 / BF16 / F16 and FP8 e4m3 with block scales (decoded in the kernel: no
// full-precision copy of a matrix exists on the device), RMSNorm, RoPE and the
// glue (residual add, row slices, concatenation), in f32, with the default
// knobs. Weights are uploaded once, at first use, in their stored dtype, and
// stay resident; activations between two device ops stay on the device.
// Attention, the MoE and the dense MLP are declined: Dispatch runs them on
// the CPU backend, and the linears inside them come back here.
// docs/backends.md says what remains and how a backend plugs in.
#pragma once

#include <memory>

#include <dsv3/backend.hpp>
#include <dsv3/dispatch.hpp>

namespace dsv3::cuda {

// CUDA devices visible (0 without a driver or a device: never an error).
int device_count();

// The backend on `device`; an error naming the reason when there is none.
std::shared_ptr<const Backend<float>> make_backend(int device = 0);

// Makes `--backend cuda` (backend_named) find it.
inline void register_backend() {
  backend_registry<float>()["cuda"] = [] { return make_backend(0); };
}

}  // namespace dsv3::cuda
