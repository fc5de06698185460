// backends/cuda/src/kernels.cu — the CUDA backend's kernels (kernels.hpp says
// what each computes). They follow the reference ops line by line; the only
// freedom taken is the order of a dot product's sum, which is fixed: thread t
// of a block sums k = t, t + B, t + 2B, … in order, then the block's partial
// sums meet in a fixed binary tree. No atomics, no split-K.
#include "kernels.hpp"

#include <cuda_bf16.h>
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

__global__ void swiglu_kernel(float* g, const float* u, int64_t count) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i < count) g[i] = __fmul_rn(__fdiv_rn(g[i], __fadd_rn(1.f, expf(-g[i]))), u[i]);
}

__global__ void gather_f32_kernel(const float* src, int64_t d, const int32_t* idx, float* out) {
  const int64_t i = blockIdx.x, r = idx[i];
  for (int64_t j = threadIdx.x; j < d; j += kThreads) out[i * d + j] = src[r * d + j];
}

__global__ void moe_combine_kernel(const float* const* f, const float* w, int64_t k, int64_t d, float* y) {
  const int64_t t = blockIdx.x;
  for (int64_t e = threadIdx.x; e < d; e += kThreads) {
    float acc = 0.f;
    for (int64_t j = 0; j < k; ++j) acc = __fadd_rn(acc, __fmul_rn(w[t * k + j], f[t * k + j][e]));
    y[t * d + e] = acc;
  }
}

__device__ inline float bf16_round(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

__global__ void cache_append_kernel(float* cache, int64_t len, const float* c_kv, int64_t dc, const float* k_pe,
                                    int64_t dr, bool bf16) {
  const int64_t i = blockIdx.x, w = dc + dr;
  float* row = cache + (len + i) * w;
  for (int64_t j = threadIdx.x; j < w; j += kThreads) {
    const float x = j < dc ? c_kv[i * dc + j] : k_pe[i * dr + j - dc];
    row[j] = bf16 ? bf16_round(x) : x;
  }
}

__device__ inline float weight_at(const WeightRef& W, int64_t r, int64_t c) {
  const float x = load(W.w, W.we, r * W.K + c);
  return W.scale ? __fmul_rn(x, load(W.scale, W.se, (r / W.br) * W.sc_cols + c / W.bc)) : x;
}

__global__ void mla_q_lat_kernel(WeightRef W, const float* q, int64_t H, int64_t dq, int64_t dn, int64_t dv,
                                 int64_t dc, float* q_lat) {
  const int64_t s = blockIdx.x / H, i = blockIdx.x % H;
  const float* qc = q + s * H * dq + i * dq;
  for (int64_t a = threadIdx.x; a < dc; a += kThreads) {
    float acc = 0.f;
    for (int64_t d = 0; d < dn; ++d) acc = __fadd_rn(acc, __fmul_rn(weight_at(W, i * (dn + dv) + d, a), qc[d]));
    q_lat[(s * H + i) * dc + a] = acc;
  }
}

__global__ void mla_head_rows_kernel(WeightRef W, const float* in, int64_t in_s, int64_t in_h, int64_t H, int64_t dn,
                                     int64_t dv, int64_t row0, int64_t R, int64_t dc, float* out, int64_t out_s,
                                     int64_t out_h) {
  const int64_t s = blockIdx.x / H, i = blockIdx.x % H;
  const float* x = in + s * in_s + i * in_h;
  for (int64_t r = threadIdx.x; r < R; r += kThreads) {
    const int64_t row = i * (dn + dv) + row0 + r;
    float acc = 0.f;
    for (int64_t a = 0; a < dc; ++a) acc = __fadd_rn(acc, __fmul_rn(weight_at(W, row, a), x[a]));
    out[s * out_s + i * out_h + r] = acc;
  }
}

__device__ inline float dot_in_order(const float* a, const float* b, int64_t len) {
  float acc = 0.f;
  for (int64_t k = 0; k < len; ++k) acc = __fadd_rn(acc, __fmul_rn(a[k], b[k]));
  return acc;
}

// One block per (token s, head i); threads over the key positions j. The
// max and the sum of the softmax meet in the fixed tree of block_sum/max.
__global__ void mla_scores_kernel(const float* q1, int64_t q1_s, int64_t q1_h, const float* k1, int64_t k1_j,
                                  int64_t k1_h, int64_t len1, const float* q2, int64_t q2_s, int64_t q2_h,
                                  const float* k2, int64_t k2_j, int64_t len2, float scale, int64_t H, int64_t start,
                                  int64_t t, float* p) {
  __shared__ float sh[kThreads];
  const int64_t s = blockIdx.x / H, i = blockIdx.x % H, visible = start + s + 1;
  float* ps = p + blockIdx.x * t;
  const float* a1 = q1 + s * q1_s + i * q1_h;
  const float* a2 = q2 + s * q2_s + i * q2_h;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < visible; j += kThreads) {
    const float c = __fadd_rn(dot_in_order(a1, k1 + j * k1_j + i * k1_h, len1), dot_in_order(a2, k2 + j * k2_j, len2));
    ps[j] = __fmul_rn(c, scale);
    mx = fmaxf(mx, ps[j]);
  }
  // block max, in the same tree shape as block_sum
  sh[threadIdx.x] = mx;
  __syncthreads();
  for (int st = kThreads / 2; st > 0; st >>= 1) {
    if (int(threadIdx.x) < st) sh[threadIdx.x] = fmaxf(sh[threadIdx.x], sh[threadIdx.x + st]);
    __syncthreads();
  }
  const float m = sh[0];
  __syncthreads();
  float sum = 0.f;
  for (int64_t j = threadIdx.x; j < visible; j += kThreads) {
    ps[j] = expf(__fsub_rn(ps[j], m));
    sum = __fadd_rn(sum, ps[j]);
  }
  const float total = block_sum(sum, sh);
  const float inv = __fdiv_rn(1.f, total);
  for (int64_t j = threadIdx.x; j < t; j += kThreads) ps[j] = j < visible ? __fmul_rn(ps[j], inv) : 0.f;
}

__global__ void mla_weighted_sum_kernel(const float* p, int64_t H, int64_t start, int64_t t, const float* v,
                                        int64_t v_j, int64_t v_h, int64_t len, float* out, int64_t out_s,
                                        int64_t out_h) {
  const int64_t s = blockIdx.x / H, i = blockIdx.x % H, visible = start + s + 1;
  const float* ps = p + blockIdx.x * t;
  for (int64_t e = threadIdx.x; e < len; e += kThreads) {
    float acc = 0.f;
    for (int64_t j = 0; j < visible; ++j) acc = __fadd_rn(acc, __fmul_rn(ps[j], v[j * v_j + i * v_h + e]));
    out[s * out_s + i * out_h + e] = acc;
  }
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

void swiglu(float* g, const float* u, int64_t count) {
  if (count > 0) swiglu_kernel<<<unsigned((count + kThreads - 1) / kThreads), kThreads>>>(g, u, count);
}

void gather_f32_rows(const float* src, int64_t d, const int32_t* idx, int64_t m, float* out) {
  if (m > 0) gather_f32_kernel<<<unsigned(m), kThreads>>>(src, d, idx, out);
}

void moe_combine(const float* const* f, const float* w, int64_t n, int64_t k, int64_t d, float* y) {
  if (n > 0) moe_combine_kernel<<<unsigned(n), kThreads>>>(f, w, k, d, y);
}

void cache_append(float* cache, int64_t len, const float* c_kv, int64_t dc, const float* k_pe, int64_t dr, int64_t n,
                  bool bf16) {
  if (n > 0) cache_append_kernel<<<unsigned(n), kThreads>>>(cache, len, c_kv, dc, k_pe, dr, bf16);
}

void mla_q_lat(const WeightRef& kvb, const float* q, int64_t n, int64_t H, int64_t dq, int64_t dn, int64_t dv,
               int64_t dc, float* q_lat) {
  if (n > 0) mla_q_lat_kernel<<<unsigned(n * H), kThreads>>>(kvb, q, H, dq, dn, dv, dc, q_lat);
}

void mla_head_rows(const WeightRef& kvb, const float* in, int64_t in_s, int64_t in_h, int64_t n, int64_t H, int64_t dn,
                   int64_t dv, int64_t row0, int64_t R, int64_t dc, float* out, int64_t out_s, int64_t out_h) {
  if (n > 0) mla_head_rows_kernel<<<unsigned(n * H), kThreads>>>(kvb, in, in_s, in_h, H, dn, dv, row0, R, dc, out, out_s, out_h);
}

void mla_scores(const float* q1, int64_t q1_s, int64_t q1_h, const float* k1, int64_t k1_j, int64_t k1_h, int64_t len1,
                const float* q2, int64_t q2_s, int64_t q2_h, const float* k2, int64_t k2_j, int64_t len2, float scale,
                int64_t n, int64_t H, int64_t start, int64_t t, float* p) {
  if (n > 0)
    mla_scores_kernel<<<unsigned(n * H), kThreads>>>(q1, q1_s, q1_h, k1, k1_j, k1_h, len1, q2, q2_s, q2_h, k2, k2_j, len2,
                                                     scale, H, start, t, p);
}

void mla_weighted_sum(const float* p, int64_t n, int64_t H, int64_t start, int64_t t, const float* v, int64_t v_j,
                      int64_t v_h, int64_t len, float* out, int64_t out_s, int64_t out_h) {
  if (n > 0) mla_weighted_sum_kernel<<<unsigned(n * H), kThreads>>>(p, H, start, t, v, v_j, v_h, len, out, out_s, out_h);
}

const char* sync() {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

const char* launched() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace dsv3::cuda::k
