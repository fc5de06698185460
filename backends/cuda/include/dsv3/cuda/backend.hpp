// dsv3/cuda/backend.hpp — the CUDA backend (backends/cuda; CMake option
// DSV3_CUDA, target dsv3::cuda). Only this declaration is public: CUDA's own
// headers stay inside the library, so a program including this needs no CUDA
// toolkit to compile, only the library and the CUDA runtime to link.
//
// What it runs on the device (supports()): the whole forward pass for F32,
// BF16, F16 and FP8 (block-scaled) checkpoints, in f32 — the embedding,
// linears (FP8 decoded in the kernel: no full-precision copy of a matrix
// exists on the device), RMSNorm, RoPE, MLA (absorbed and naive forms, over a
// latent cache on the device), the MoE (router logits on the device, the
// selection by reference::select_experts on the host, experts on the device)
// and the dense MLP. Weights are uploaded once, at first use, in their stored
// dtype, and stay resident. AWQ/MLX weights and the bf16/W8A8 knobs are
// declined: Dispatch runs those ops on the CPU backend.
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
