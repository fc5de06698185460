// backends/cuda/src/kernels.hpp — the CUDA backend's kernels, as plain
// launchers on device pointers (kernels.cu). No CUDA types cross this line, so
// the backend itself (backend.cpp) is ordinary C++ built by the host compiler.
//
// Every kernel is deterministic by construction: a fixed assignment of work to
// threads, reductions in a fixed tree in shared memory, no atomics. A row's
// result depends on that row alone, never on how many rows are in the batch,
// so a prefill gives the same logits whatever its chunking.
#pragma once

#include <cstddef>
#include <cstdint>

namespace dsv3::cuda::k {

// Stored element types the kernels decode (the safetensors names' order).
enum class Elem : int { f32 = 0, bf16 = 1, f16 = 2, fp8_e4m3 = 3 };

// out[i, :] = table[ids[i], :] as f32; ids on the device.
void gather_rows(const void* table, Elem t, int64_t d, const int32_t* ids, int64_t n, float* out);

// y[n, O] = x[n, K] · Wᵀ with W [O, K] stored as `w_elem`. FP8: W[o, k] =
// fp8(Wq[o, k]) · scale[o / br, k / bc] (scale [ceil(O/br), sc_cols] stored as
// `s_elem`), the product taken in f32 per element as the reference does.
void linear(const float* x, int64_t n, int64_t K, const void* w, Elem w_elem, int64_t O, const void* scale,
            Elem s_elem, int64_t br, int64_t bc, int64_t sc_cols, float* y);

// y = w ⊙ x / sqrt(mean(x²) + eps) per row; the sum of squares in f64.
void rms_norm(const float* x, int64_t n, int64_t d, const void* w, Elem w_elem, double eps, float* y);

// Rotates columns [col0, col0 + width) of each `stride`-wide block of every row
// i by cos[i, :], sin[i, :] (width / 2 each), in place.
void rope(float* x, int64_t n, int64_t cols, int64_t col0, int64_t width, int64_t stride, const float* cos,
          const float* sin, bool interleave);

// h[i] += f[i]
void add(float* h, const float* f, int64_t count);

// y[n, a + b] = [xa | xb] row by row
void concat_cols(const float* xa, int64_t a, const float* xb, int64_t b, int64_t n, float* y);

// Blocks until every launch so far has finished; returns a message on an
// error (launch or execution), or nullptr.
const char* sync();

}  // namespace dsv3::cuda::k
