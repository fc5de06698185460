// backends/cuda/src/kernels.cu — the CUDA backend's kernels (kernels.hpp says
// what each computes). They follow the reference ops line by line; the only
// freedom taken is the order of a dot product's sum, which is fixed: thread t
// of a block sums k = t, t + B, t + 2B, … in order, then the block's partial
// sums meet in a fixed binary tree. No atomics, no split-K.
#include "kernels.hpp"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace dsv3::cuda::k {
namespace {

constexpr int kThreads = 256;  // per block, a power of two (the reduction tree)

__device__ inline float bf16_to_f32(uint16_t h) { return __uint_as_float(uint32_t(h) << 16); }

__device__ inline float f16_to_f32(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// float8_e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities;
// S.1111.111 is NaN. Every code is exact in f32.
__device__ inline float fp8_e4m3_to_f32(uint8_t b) {
  const uint32_t sign = uint32_t(b & 0x80) << 24, e = (b >> 3) & 0xf, m = b & 0x7;
  if (e == 0xf && m == 0x7) return __uint_as_float(sign | 0x7fc00000u);
  if (e == 0) {
    const float v = float(m) * 0.001953125f;  // m · 2^-9
    return sign ? -v : v;
  }
  return __uint_as_float(sign | ((e + 120) << 23) | (m << 20));  // rebias 7 -> 127
}

__device__ inline float load(const void* p, Elem t, int64_t i) {
  switch (t) {
    case Elem::f32: return static_cast<const float*>(p)[i];
    case Elem::bf16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case Elem::f16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case Elem::fp8_e4m3: return fp8_e4m3_to_f32(static_cast<const uint8_t*>(p)[i]);
  }
  return 0.f;
}

// The block's partial sums, added in a fixed tree; thread 0 gets the total.
template <class A>
__device__ inline A block_sum(A v, A* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  return sh[0];
}

__global__ void gather_rows_kernel(const void* table, Elem t, int64_t d, const int32_t* ids, float* out) {
  const int64_t i = blockIdx.x, row = ids[i];
  for (int64_t j = threadIdx.x; j < d; j += kThreads) out[i * d + j] = load(table, t, row * d + j);
}

// One block per (output column o, input row i): y[i, o] = Σ_k x[i, k] · W[o, k].
__global__ void linear_kernel(const float* x, int64_t K, const void* w, Elem we, int64_t O, const void* scale,
                              Elem se, int64_t br, int64_t bc, int64_t sc_cols, float* y) {
  __shared__ float sh[kThreads];
  const int64_t o = blockIdx.x, i = blockIdx.y;
  const float* xi = x + i * K;
  float acc = 0.f;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) {
    float wv = load(w, we, o * K + k);
    if (scale) wv *= load(scale, se, (o / br) * sc_cols + k / bc);
    acc += xi[k] * wv;
  }
  const float s = block_sum(acc, sh);
  if (threadIdx.x == 0) y[i * O + o] = s;
}

// Bit-identical to reference::rms_norm_row, as test_backend_ops requires (a
// tolerance of 0): the sum of squares in f64 in the reference's order (one
// thread; d is at most a few thousand), and every product and sum rounded on
// its own (the _rn intrinsics: nvcc would otherwise contract a * b + c into one
// fused multiply-add, which the host code does not do).
__global__ void rms_norm_kernel(const float* x, int64_t d, const void* w, Elem we, double eps, float* y) {
  __shared__ float inv_sh;
  const int64_t i = blockIdx.x;
  const float* xi = x + i * d;
  if (threadIdx.x == 0) {
    double ss = 0;
    for (int64_t j = 0; j < d; ++j) ss = __dadd_rn(ss, __dmul_rn(double(xi[j]), double(xi[j])));
    inv_sh = float(__ddiv_rn(1.0, __dsqrt_rn(__dadd_rn(__ddiv_rn(ss, double(d)), eps))));  // 1 / rms(x)
  }
  __syncthreads();
  const float inv = inv_sh;
  for (int64_t j = threadIdx.x; j < d; j += kThreads) y[i * d + j] = __fmul_rn(load(w, we, j), __fmul_rn(xi[j], inv));
}

// rope_apply (rope.hpp), element for element, without contraction.
__global__ void rope_kernel(float* x, int64_t cols, int64_t col0, int64_t width, int64_t stride, const float* cs,
                            const float* sn, bool interleave, int64_t blocks_per_row) {
  const int64_t h = width / 2, i = blockIdx.x;
  for (int64_t u = threadIdx.x; u < blocks_per_row * h; u += kThreads) {
    const int64_t blk = u / h, p = u % h;
    float* xb = x + i * cols + col0 + blk * stride;
    const int64_t a = interleave ? 2 * p : p, b = interleave ? 2 * p + 1 : p + h;
    const float c = cs[i * h + p], s = sn[i * h + p], x0 = xb[a], x1 = xb[b];
    xb[a] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    xb[b] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
  }
}

__global__ void add_kernel(float* h, const float* f, int64_t count) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i < count) h[i] += f[i];
}

__global__ void concat_kernel(const float* xa, int64_t a, const float* xb, int64_t b, float* y) {
  const int64_t i = blockIdx.x, w = a + b;
  for (int64_t j = threadIdx.x; j < w; j += kThreads) y[i * w + j] = j < a ? xa[i * a + j] : xb[i * b + j - a];
}

// Grids past 2^31 - 1 blocks in x or 65535 in y are split by the callers
// below; the shapes of one model never come near (y: tokens of one call).
constexpr int64_t kMaxGridY = 65535;

}  // namespace

void gather_rows(const void* table, Elem t, int64_t d, const int32_t* ids, int64_t n, float* out) {
  if (n > 0) gather_rows_kernel<<<unsigned(n), kThreads>>>(table, t, d, ids, out);
}

void linear(const float* x, int64_t n, int64_t K, const void* w, Elem w_elem, int64_t O, const void* scale,
            Elem s_elem, int64_t br, int64_t bc, int64_t sc_cols, float* y) {
  for (int64_t i0 = 0; i0 < n; i0 += kMaxGridY) {
    const int64_t rows = n - i0 < kMaxGridY ? n - i0 : kMaxGridY;
    linear_kernel<<<dim3(unsigned(O), unsigned(rows)), kThreads>>>(x + i0 * K, K, w, w_elem, O, scale, s_elem, br, bc,
                                                                    sc_cols, y + i0 * O);
  }
}

void rms_norm(const float* x, int64_t n, int64_t d, const void* w, Elem w_elem, double eps, float* y) {
  if (n > 0) rms_norm_kernel<<<unsigned(n), kThreads>>>(x, d, w, w_elem, eps, y);
}

void rope(float* x, int64_t n, int64_t cols, int64_t col0, int64_t width, int64_t stride, const float* cos,
          const float* sin, bool interleave) {
  int64_t blocks = 0;
  for (int64_t c = col0; c + width <= cols; c += stride) ++blocks;
  if (n > 0 && blocks > 0) rope_kernel<<<unsigned(n), kThreads>>>(x, cols, col0, width, stride, cos, sin, interleave, blocks);
}

void add(float* h, const float* f, int64_t count) {
  if (count > 0) add_kernel<<<unsigned((count + kThreads - 1) / kThreads), kThreads>>>(h, f, count);
}

void concat_cols(const float* xa, int64_t a, const float* xb, int64_t b, int64_t n, float* y) {
  if (n > 0) concat_kernel<<<unsigned(n), kThreads>>>(xa, a, xb, b, y);
}

const char* sync() {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace dsv3::cuda::k
