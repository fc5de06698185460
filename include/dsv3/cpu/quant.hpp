// dsv3/cpu/quant.hpp — the CPU backend's kernels for the quantized storage
// formats: FP8 e4m3 with 128×128 block scales, AWQ int4 (AutoAWQ GEMM
// packing) and MLX affine 4/5/8-bit.
//
// Two kinds of kernel, both reading each stored byte once:
//  * fused dequantise-and-dot for decode (at most 4 input rows): one weight
//    row (FP8, MLX) or a band of 128 output columns (AWQ, stored [in, out])
//    against every input row, the integer codes widened in registers and the
//    scales applied once per block or group;
//  * band decoders for prefill, which turn a band of rows into floats for
//    BLAS (formats/quant.hpp's decoders are the specification: one element at
//    a time, exact; these produce the same values, vectorised).
//
// Where the arithmetic is rearranged, and the bound that keeps it within the
// reference's tolerance (tools/backend_check.hpp checks every kernel):
//  * FP8: Σ_k x_k·(q_k·s) is computed per 128-column block as s·Σ_k x_k·q_k.
//    Each product x·q is exact in f32 up to one rounding either way, so the
//    two differ like two summation orders (≤ 2^-24·Σ|x w| per block).
//  * MLX: Σ_k x_k·(s·q_k + b) per group is s·Σ x_k·q_k + b·Σ x_k, which is
//    mx.quantized_matmul's own arithmetic (docs/formats.md). The two terms
//    are each at most |w|max-sized per element, so the rounding is bounded by
//    about 2^-24·Σ_k |x_k|·(|s q_k| + |b|) ≤ 3·2^-24·Σ|x|·max|w| per group.
//  * AWQ: every dequantised weight is rounded to f16 exactly as the reference
//    does (AutoAWQ's dequantize_gemm, vLLM's kernels), with a branch-free
//    rounding (round_f16) that vectorises; only the summation order differs.
//
// All loops are plain C++ compiled for AVX-512, AVX2 and baseline x86-64
// (target_clones); per-row work and its order depend on the matrix only, so
// results are bit-identical for every thread count.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <new>
#include <vector>

#include "../weights.hpp"
#include "quant_avx2.hpp"
#include "quant_avx512.hpp"

namespace dsv3::cpu {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DSV3_QCLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DSV3_QCLONES
#endif

namespace qk {

inline float as_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
// A packed word where the mapping has it: safetensors gives no alignment, so
// every scalar read of a stored word goes through memcpy.
inline uint32_t word(const uint32_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
inline uint32_t as_u32(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// f32 → nearest f16 value (round to nearest even), returned as f32, without
// branches: the normal range rounds the mantissa at bit 13; below 2^-14 the
// f16 subnormals are multiples of 2^-24, which (a + 0.5f) − 0.5f rounds to;
// at or above 65520 it is ±inf. Equal to f16_to_f32(f32_to_f16(v)) for every
// finite v and inf (tests/test_backend_ops.cpp checks every AWQ product).
inline float round_f16(float v) {
  const uint32_t u = as_u32(v), a = u & 0x7fffffffu;
  uint32_t r = (a + 0xfffu + ((a >> 13) & 1u)) & 0xffffe000u;
  r = r > 0x477fe000u ? 0x7f800000u : r;
  const uint32_t sub = as_u32((as_f32(a) + 0.5f) - 0.5f);
  r = a < 0x38800000u ? sub : r;
  r = a > 0x7f800000u ? a : r;  // NaN stays NaN
  return as_f32(r | (u & 0x80000000u));
}

inline float load_scale(const uint8_t* p, DType t, int64_t i) {
  uint16_t h;
  switch (t) {
    case DType::F16: std::memcpy(&h, p + 2 * i, 2); return f16_to_f32(h);
    case DType::BF16: std::memcpy(&h, p + 2 * i, 2); return bf16_to_f32(h);
    default: { float f; std::memcpy(&f, p + 4 * i, 4); return f; }
  }
}

// ---------------------------------------------------------------------------
// MLX: a row of `in` values of `bits` bits is a little-endian bit stream of
// 32-bit words. A unit is the fewest whole words holding whole values: one
// word of 8 (4-bit) or 4 (8-bit) values, five words of 32 values (5-bit).
template <int BITS>
struct MlxUnit {
  static constexpr int words = BITS == 5 ? 5 : 1;
  static constexpr int values = 32 * words / BITS;
  static constexpr uint32_t mask = (1u << BITS) - 1u;
  // value j of the unit starting at u (j < values); a value may straddle two words
  static uint32_t at(const uint32_t* u, int j) {
    const int bit = j * BITS, m = bit >> 5, sh = bit & 31;
    if constexpr (words == 1) return (word(u) >> sh) & mask;
    const int m2 = m + 1 < words ? m + 1 : m;  // the last word never straddles
    return uint32_t(((uint64_t(word(u + m2)) << 32) | word(u + m)) >> sh) & mask;
  }
};

}  // namespace qk

// ===========================================================================
// FP8 e4m3, 128×128 block scales. out[i·stride] = Σ_k x[i,k]·W[o,k] for one
// weight row w (K codes) whose column blocks have scales s[K / bc].
DSV3_QCLONES [[maybe_unused]] static void fp8_dot_row(const float* x, int64_t n, int64_t K, const uint8_t* w,
                                                     const float* s, int64_t bc, float* out, int64_t stride) {
  constexpr int L = 64;  // independent partial sums: the adds never wait on each other
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * K;
    float acc[L] = {0};
    for (int64_t c0 = 0, cb = 0; c0 < K; c0 += bc, ++cb) {
      const int64_t c1 = std::min(K, c0 + bc);
      float t[L] = {0};
      int64_t k = c0;
      for (; k + L <= c1; k += L) {
        if (i == 0) __builtin_prefetch(w + k + 4096);
        for (int j = 0; j < L; ++j) t[j] += xi[k + j] * fp8_e4m3_to_f32_bits(w[k + j]);
      }
      for (; k < c1; ++k) t[(k - c0) % L] += xi[k] * fp8_e4m3_to_f32_bits(w[k]);
      for (int j = 0; j < L; ++j) acc[j] += s[cb] * t[j];
    }
    for (int h = L / 2; h >= 1; h /= 2)
      for (int j = 0; j < h; ++j) acc[j] += acc[j + h];
    out[i * stride] = acc[0];
  }
}

// ===========================================================================
// MLX affine. One weight row of K values (packed words w), its group scales
// and biases widened to f32 (sg, bg: K / G each). x is given permuted, per
// row of K values, so that a run of 16 units is 16 lanes: xp[(c·V + j)·16 + l]
// = x[(c·16 + l)·V + j] for chunk c (see mlx_permute); a tail of fewer than 16
// units keeps x's own order. xs[i·ng + g] = Σ_{k in group g} x[i,k].
// out = Σ_g s_g·(Σ_{k in g} x_k·q_k) + Σ_g bg[g]·xs[g].
template <int BITS>
inline void mlx_permute(const float* x, int64_t K, float* xp) {
  using U = qk::MlxUnit<BITS>;
  constexpr int V = U::values;
  const int64_t units = K / V, full = units / 16 * 16;
  for (int64_t c = 0; c < full / 16; ++c)
    for (int j = 0; j < V; ++j)
      for (int l = 0; l < 16; ++l) xp[(c * V + j) * 16 + l] = x[(c * 16 + l) * V + j];
  std::copy(x + full * V, x + K, xp + full * V);
}

template <int BITS>
inline void mlx_dot_row_t(const float* xp, const float* xs, int64_t n, int64_t K, int64_t G, const uint32_t* w,
                          const float* su, const float* bg, float* out, int64_t stride) {
  using U = qk::MlxUnit<BITS>;
  constexpr int V = U::values, W = U::words;
  const int64_t units = K / V, chunks = units / 16, ng = K / G;
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = xp + i * K;
    float acc[16] = {0};
    for (int64_t c = 0; c < chunks; ++c) {
      const uint32_t* wc = w + c * 16 * W;
      const float* xc = xi + c * 16 * V;
      float t[16] = {0};
      for (int j = 0; j < V; ++j)
        for (int l = 0; l < 16; ++l) t[l] += xc[j * 16 + l] * float(U::at(wc + l * W, j));
      for (int l = 0; l < 16; ++l) acc[l] += su[c * 16 + l] * t[l];
    }
    float tail = 0;
    for (int64_t u = chunks * 16; u < units; ++u) {  // fewer than 16 units left: one at a time
      float t = 0;
      for (int j = 0; j < V; ++j) t += xi[u * V + j] * float(U::at(w + u * W, j));
      tail += su[u] * t;
    }
    for (int h = 8; h >= 1; h /= 2)
      for (int l = 0; l < h; ++l) acc[l] += acc[l + h];
    float bias = 0;
    for (int64_t g = 0; g < ng; ++g) bias += bg[g] * xs[i * ng + g];
    out[i * stride] = (acc[0] + tail) + bias;
  }
}

DSV3_QCLONES [[maybe_unused]] static void mlx_dot_row4(const float* xp, const float* xs, int64_t n, int64_t K,
                                                      int64_t G, const uint32_t* w, const float* su, const float* bg,
                                                      float* out, int64_t stride) {
  mlx_dot_row_t<4>(xp, xs, n, K, G, w, su, bg, out, stride);
}
DSV3_QCLONES [[maybe_unused]] static void mlx_dot_row5(const float* xp, const float* xs, int64_t n, int64_t K,
                                                      int64_t G, const uint32_t* w, const float* su, const float* bg,
                                                      float* out, int64_t stride) {
  mlx_dot_row_t<5>(xp, xs, n, K, G, w, su, bg, out, stride);
}
DSV3_QCLONES [[maybe_unused]] static void mlx_dot_row8(const float* xp, const float* xs, int64_t n, int64_t K,
                                                      int64_t G, const uint32_t* w, const float* su, const float* bg,
                                                      float* out, int64_t stride) {
  mlx_dot_row_t<8>(xp, xs, n, K, G, w, su, bg, out, stride);
}

// A row of MLX values decoded to f32 (s·q + b, unrounded: round_to_storage =
// false, the form the model binds), for prefill bands and MLA's W_UK / W_UV.
template <int BITS>
inline void mlx_decode_row_t(int64_t K, int64_t G, const uint32_t* w, const float* sg, const float* bg, float* dst) {
  using U = qk::MlxUnit<BITS>;
  constexpr int V = U::values, W = U::words;
  const int64_t units = K / V, upg = G / V;  // units per group
  for (int64_t u = 0; u < units; ++u) {
    const float s = sg[u / upg], b = bg[u / upg];
    for (int j = 0; j < V; ++j) dst[u * V + j] = s * float(U::at(w + u * W, j)) + b;
  }
}
DSV3_QCLONES [[maybe_unused]] static void mlx_decode_row4(int64_t K, int64_t G, const uint32_t* w, const float* sg,
                                                         const float* bg, float* dst) {
  mlx_decode_row_t<4>(K, G, w, sg, bg, dst);
}
DSV3_QCLONES [[maybe_unused]] static void mlx_decode_row5(int64_t K, int64_t G, const uint32_t* w, const float* sg,
                                                         const float* bg, float* dst) {
  mlx_decode_row_t<5>(K, G, w, sg, bg, dst);
}
DSV3_QCLONES [[maybe_unused]] static void mlx_decode_row8(int64_t K, int64_t G, const uint32_t* w, const float* sg,
                                                         const float* bg, float* dst) {
  mlx_decode_row_t<8>(K, G, w, sg, bg, dst);
}

// ===========================================================================
// AWQ int4, GEMM packing: qweight [in, out/8], output column 8·w + kAwqOrder[j]
// in nibble j of word w (kAwqOrder is AutoAWQ's order_map; formats/quant.hpp
// has its inverse). A band is 16 words = 128 output columns; per input row k
// the band's 16 words are one 64-byte line. acc (per x row) holds [8][16]
// partial sums in nibble order; zq/sq the band's zero points and scales for
// the current group, in the same order.
inline constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};

DSV3_QCLONES [[maybe_unused]] static void awq_dot_group(const float* x, int64_t n, int64_t K, int64_t k0, int64_t k1,
                                                       const uint32_t* qw, int64_t words, int64_t nw,
                                                       const float* zq, const float* sq, float* acc) {
  for (int64_t k = k0; k < k1; ++k) {
    uint32_t row[16] = {0};  // the band's words (nw ≤ 16; a last partial band reads only its own)
    std::memcpy(row, qw + k * words, std::size_t(nw) * 4);
    float v[8][16];
    for (int j = 0; j < 8; ++j)
      for (int l = 0; l < 16; ++l)
        v[j][l] = qk::round_f16((float((row[l] >> (4 * j)) & 0xFu) - zq[j * 16 + l]) * sq[j * 16 + l]);
    for (int64_t i = 0; i < n; ++i) {
      const float xv = x[i * K + k];
      float* a = acc + i * 128;
      for (int j = 0; j < 8; ++j)
        for (int l = 0; l < 16; ++l) a[j * 16 + l] += xv * v[j][l];
    }
  }
}

// ===========================================================================
// Per-matrix dispatch used by linear.hpp and mla.hpp.

// Can `fused_rows` take this matrix at T?
template <class T>
inline bool has_fused_kernel(const Linear& W) {
  if constexpr (!std::is_same_v<T, float>) return false;
  if (W.is_dense()) return W.weight.dtype == DType::F16 && reinterpret_cast<uintptr_t>(W.weight.data) % 2 == 0;
  if (const auto* f = W.fp8()) return W.weight.dtype == DType::F8_E4M3 && f->block_cols > 0;
  if (const MlxWeight* m = W.mlx()) {
    const int V = m->bits == 5 ? 32 : 32 / int(m->bits);
    return m->group_size % V == 0 && !m->round_to_storage;  // (mx.dequantize's roundings: the reference's loop)
  }
  return W.awq() != nullptr;
}

// Storage that starts on a 64-byte line (C++17's aligned new), for the
// activations the decode kernels read: malloc's 16 bytes of alignment let
// every other 32-byte load of x cross a line. Aligned, the 4-bit MLX
// kernel's samples in one-thread mid mlx4 decode fell 3–5% (Zen 4).
template <class T>
struct LineAllocator {
  using value_type = T;
  LineAllocator() = default;
  template <class U>
  LineAllocator(const LineAllocator<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(64)); }
  // A resize default-initialises: its floats are left unset, not zeroed
  // first, as every user writes each element before it reads one.
  template <class U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible_v<U>) { ::new (static_cast<void*>(p)) U; }
  template <class U, class... A>
  void construct(U* p, A&&... a) { ::new (static_cast<void*>(p)) U(std::forward<A>(a)...); }
  template <class U>
  bool operator==(const LineAllocator<U>&) const { return true; }
  template <class U>
  bool operator!=(const LineAllocator<U>&) const { return false; }
};

// State shared by every band of one matrix in one call: the activations in
// the layout each kernel reads (MLX: permuted, with group sums).
struct FusedInput {
  std::vector<float, LineAllocator<float>> xp, xs;
  int xexp = 0;  // the AVX2 MLX / FP8 kernels' xp is x·2^xexp (their subnormal-code routes; 0: x as it is)
};

// Whether the CPU has the AVX2 kernels and not the AVX-512 ones.
inline bool avx2_runs() { return !avx512_kernels() && avx2_kernels(); }

// Which kernels stream the weights in decode (the stored formats, the dense
// rows): the AVX-512 ones where the CPU has them and avx512_preferred() (not
// on Zen 4), else the AVX2 ones where it has those (avx2_streams(): CPUs
// without AVX-512, and Zen 4), else the plain loops.
inline bool avx512_runs() { return avx512_kernels() && avx512_preferred(); }
inline bool avx2_streams() { return !avx512_runs() && avx2_kernels(); }

// Which MLX kernel runs: the AVX-512 one (groups of 64 and more), the AVX2
// one (groups of 32 and more; every MLX group size), or the plain loops.
// Each reads x in its own order.
enum class MlxKernel { plain, avx2, avx512 };
inline MlxKernel mlx_kernel(const MlxWeight& m) {
  if (avx512_runs() && m.group_size % 64 == 0) return MlxKernel::avx512;
  if (avx2_kernels() && m.group_size % 32 == 0) return MlxKernel::avx2;
  return MlxKernel::plain;
}

// The exponent the AVX2 kernels' subnormal-code routes scale x by
// (avx2::mlx_dot_rows_t, avx2::fp8_dot_rows_t), where the CPU allows them
// and subnormals are not read as zero (MXCSR's DAZ bit); 0: x as it is.
inline int subnormal_route_exponent(const float* x, int64_t count) {
  if (!avx2_kernels() || !avx2_subnormal_codes() || avx2::denormals_are_zero()) return 0;
  float amax = 0;
  if (!avx2::abs_max_finite(x, count, amax)) return 0;
  return avx2::subnormal_exponent(amax);
}

template <int BITS>
inline void mlx_prepare(const float* x, int64_t n, int64_t K, int64_t G, MlxKernel kern, FusedInput& in) {
  in.xexp = kern == MlxKernel::avx2 ? subnormal_route_exponent(x, n * K) : 0;
  // the plain loops' lanes, or the vector kernels' 4-bit nibble order (5- and 8-bit: x as it is, or scaled)
  const bool permute = kern == MlxKernel::plain || BITS == 4;
  in.xp.resize(permute || in.xexp != 0 ? std::size_t(n * K) : 0);
  in.xs.resize(std::size_t(n * (K / G)));  // (each group's sum is written below)
  for (int64_t i = 0; i < n; ++i) {
    float* xpi = in.xp.data() + i * K;
    if (permute && kern == MlxKernel::avx512) avx512::mlx4_permute(x + i * K, K, xpi);
    if (permute && kern == MlxKernel::avx2) avx2::mlx4_permute(x + i * K, K, xpi, in.xexp);  // (scaled there)
    if (permute && kern == MlxKernel::plain) mlx_permute<BITS>(x + i * K, K, xpi);
    if (in.xexp != 0 && BITS != 4) {
      // exact: powers of two, and x·up stays below 2^101. 5-bit: the AVX2 kernel reads
      // the codes where they lie, q·2^(5v mod 8) in lane v, so x·2^-(5v mod 8) to match.
      float up[8];
      for (int v = 0; v < 8; ++v) up[v] = std::ldexp(1.0f, in.xexp - (BITS == 5 ? avx2::mlx5_lane_shift(v) : 0));
      if (!permute) std::copy(x + i * K, x + (i + 1) * K, xpi);
      for (int64_t k = 0; k < K; k += 8)  // (K: a multiple of 32; eight lanes a step, which compilers vectorise)
        for (int v = 0; v < 8; ++v) xpi[k + v] *= up[v];
    }
    for (int64_t g = 0; g < K / G; ++g) {  // 16 partial sums a group, combined in a fixed order
      float part[16] = {0};
      const float* xg = x + i * K + g * G;
      for (int64_t k = 0; k + 16 <= G; k += 16)  // (MLX groups are multiples of 32)
        for (int l = 0; l < 16; ++l) part[l] += xg[k + l];
      for (int h = 8; h >= 1; h /= 2)
        for (int l = 0; l < h; ++l) part[l] += part[l + h];
      in.xs[std::size_t(i * (K / G) + g)] = part[0];
    }
  }
}

inline void fused_prepare(const Linear& W, const float* x, int64_t n, FusedInput& in) {
  if (W.fp8() && avx2_streams()) {  // x scaled for the AVX2 kernel's subnormal-code route, where it runs
    const int64_t K = W.in();
    in.xexp = subnormal_route_exponent(x, n * K);
    in.xp.resize(in.xexp != 0 ? std::size_t(n * K) : 0);
    if (in.xexp != 0) {
      const float up = std::ldexp(1.0f, in.xexp);
      for (int64_t e = 0; e < n * K; ++e) in.xp[std::size_t(e)] = x[e] * up;
    }
    return;
  }
  if (const MlxWeight* m = W.mlx()) {
    const int64_t K = W.in(), G = m->group_size;
    const MlxKernel kern = mlx_kernel(*m);
    if (m->bits == 4) mlx_prepare<4>(x, n, K, G, kern, in);
    if (m->bits == 5) mlx_prepare<5>(x, n, K, G, kern, in);
    if (m->bits == 8) mlx_prepare<8>(x, n, K, G, kern, in);
  }
}

// Whether fused_prepare makes A and B the same FusedInput from the same x:
// both MLX with the same bits, group size, width and kernel, or both FP8 of
// the same width. (AWQ prepares nothing.)
inline bool same_fused_input(const Linear& A, const Linear& B) {
  if (A.fp8() && B.fp8()) return A.in() == B.in();
  const MlxWeight *a = A.mlx(), *b = B.mlx();
  return a && b && a->bits == b->bits && a->group_size == b->group_size && A.in() == B.in() &&
         mlx_kernel(*a) == mlx_kernel(*b);
}

// Scales and biases of one MLX row (slice-aware) widened to f32, per group;
// with su, the scales repeated per unit too (the fused kernel's lanes).
inline void mlx_row_scales(const MlxWeight& m, int64_t r, float* sg, float* bg, float* su = nullptr) {
  const int64_t ng = m.in() / m.group_size, base = m.expert >= 0 ? m.expert * m.out() : 0;
  const int64_t upg = m.group_size / (m.bits == 5 ? 32 : 32 / m.bits);
  for (int64_t g = 0; g < ng; ++g) {
    sg[g] = qk::load_scale(m.scales.data, m.scales.dtype, (base + r) * ng + g);
    bg[g] = qk::load_scale(m.biases.data, m.biases.dtype, (base + r) * ng + g);
    if (su) std::fill(su + g * upg, su + (g + 1) * upg, sg[g]);
  }
}
inline const uint32_t* mlx_row_words(const MlxWeight& m, int64_t r) {
  const int64_t base = m.expert >= 0 ? m.expert * m.out() : 0;
  return reinterpret_cast<const uint32_t*>(m.weight.data) + (base + r) * m.packed();
}

// The vector MLX kernels for `bits` and R rows a call (4, or 1), scales of
// type S: AVX-512, and AVX2 (which also takes x's scale exponent).
template <class S>
inline auto mlx_rows_kernel_avx2(int64_t bits, int R) {
  if (R == 4)
    return bits == 4 ? avx2::mlx_dot_rows<4, 4, S> : bits == 5 ? avx2::mlx_dot_rows<5, 4, S> : avx2::mlx_dot_rows<8, 4, S>;
  return bits == 4 ? avx2::mlx_dot_rows<4, 1, S> : bits == 5 ? avx2::mlx_dot_rows<5, 1, S> : avx2::mlx_dot_rows<8, 1, S>;
}
template <class S>
inline auto mlx_rows_kernel(int64_t bits, int R) {
  if (R == 4)
    return bits == 4 ? avx512::mlx_dot_rows<4, 4, S> : bits == 5 ? avx512::mlx_dot_rows<5, 4, S> : avx512::mlx_dot_rows<8, 4, S>;
  return bits == 4 ? avx512::mlx_dot_rows<4, 1, S> : bits == 5 ? avx512::mlx_dot_rows<5, 1, S> : avx512::mlx_dot_rows<8, 1, S>;
}

// The scales of an FP8 weight's block row `br`, one per column block, as f32
// (fused_rows, the band decoder, MLA's per-head W_UK).
inline void fp8_row_scales(const Linear::Fp8Blocks& f, int64_t br, float* s) {
  const int64_t sc = f.scale_inv.shape[1];
  for (int64_t cb = 0; cb < sc; ++cb) s[cb] = float(f.scale_inv.at(br * sc + cb));
}

// y[i, o] for o in [r0, r1) and every row i of x (n ≤ 4 rows, ldy = out):
// the fused kernel of W's format (AWQ: awq_group_partial below). Row o
// goes to column o − y0 of y (y0 > 0: y holds only columns from row y0 on,
// as MLA's per-head W_UV rows of an FP8 kv_b_proj are written).
inline void fused_rows(const Linear& W, const float* x, int64_t n, const FusedInput& in, int64_t r0, int64_t r1,
                       std::vector<float>& scratch, float* y, int64_t ldy, int64_t y0 = 0) {
  const int64_t K = W.in();
  if (const auto* f = W.fp8()) {
    const int64_t sc = f->scale_inv.shape[1], br = f->block_rows;
    scratch.resize(std::size_t(sc));
    // AVX2: groups of four rows known to hold no NaN code skip the kernel's
    // check; the first call on a group checks and records what it found
    std::atomic<uint8_t>* memo =
        avx2_streams() && f->nan_memo ? f->nan_memo->flags(W.weight.data, (W.out() + 3) / 4) : nullptr;
    const bool daz = avx2_streams() && avx2::denormals_are_zero();  // (read once: see there)
    int64_t cur = -1;
    for (int64_t o = r0; o < r1;) {
      if (o / br != cur) {
        cur = o / br;
        fp8_row_scales(*f, cur, scratch.data());
      }
      if (avx2_streams()) {  // 4 rows a call where they share a block row (their scales), else 1
        const float* xin = in.xexp != 0 ? in.xp.data() : x;
        auto dot = [&](auto kernel) {  // rows o.. of W; true: a NaN code among them (checking kernels)
          return kernel(xin, n, K, W.weight.data + o * K, scratch.data(), f->block_cols, in.xexp, daz, y + (o - y0), ldy,
                        fp8_e4m3_to_f32_bits);
        };
        if (r1 - o >= 4 && (o + 3) / br == cur) {
          // a group of the memo's (o a multiple of 4), or 4 rows across two groups (always checked)
          std::atomic<uint8_t>* group = memo && o % 4 == 0 ? &memo[o / 4] : nullptr;
          const uint8_t known = group ? group->load(std::memory_order_relaxed) : 0;
          if (known == 1) {
            dot(avx2::fp8_dot_rows<4, false>);
          } else {
            const bool nan = dot(avx2::fp8_dot_rows<4, true>);
            if (group && known == 0) group->store(nan ? 2 : 1, std::memory_order_relaxed);
          }
          o += 4;
        } else {
          dot(avx2::fp8_dot_rows<1, true>);
          o += 1;
        }
        continue;
      }
      if (avx512_runs())
        avx512::fp8_dot_row(x, n, K, W.weight.data + o * K, scratch.data(), f->block_cols, y + (o - y0), ldy,
                            fp8_e4m3_to_f32_bits);
      else
        fp8_dot_row(x, n, K, W.weight.data + o * K, scratch.data(), f->block_cols, y + (o - y0), ldy);
      ++o;
    }
    return;
  }
  if (W.is_dense()) {  // F16 (AWQ's embedding and lm_head)
    const auto* w = reinterpret_cast<const uint16_t*>(W.weight.data);
    scratch.resize(std::size_t(K));
    for (int64_t o = r0; o < r1; ++o) {
      if (avx512_runs()) {
        avx512::half_dot_row<true>(x, n, K, w + o * K, y + (o - y0), ldy);
        continue;
      }
      if (avx2_kernels()) {
        avx2::f16_dot_row(x, n, K, w + o * K, y + (o - y0), ldy);
        continue;
      }
      decode_elements(W.weight.data + o * K * 2, DType::F16, K, scratch.data());
      for (int64_t i = 0; i < n; ++i) {
        float acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += x[i * K + k] * scratch[std::size_t(k)];
        y[i * ldy + (o - y0)] = acc;
      }
    }
    return;
  }
  if (const MlxWeight* m = W.mlx()) {
    if (const MlxKernel kern = mlx_kernel(*m); kern != MlxKernel::plain) {  // 4 rows a call (and 1 at a time for the rest); x permuted for 4-bit
      const int64_t ng = K / m->group_size, base = m->expert >= 0 ? m->expert * m->out() : 0;
      const std::size_t ses = dtype_size(m->scales.dtype);
      const bool bf16 = m->scales.dtype == DType::BF16;  // read as stored; others widened per 4 rows
      scratch.resize(std::size_t(8 * ng));
      float *sf = scratch.data(), *bf = sf + 4 * ng;
      const float* xin = m->bits == 4 || in.xexp != 0 ? in.xp.data() : x;
      const bool daz = kern == MlxKernel::avx2 && avx2::denormals_are_zero();  // (read once: see there)
      for (int64_t o = r0; o < r1;) {
        const int R = r1 - o >= 4 ? 4 : 1;
        const uint8_t* sp = m->scales.data + std::size_t((base + o) * ng) * ses;
        const uint8_t* bp = m->biases.data + std::size_t((base + o) * ng) * ses;
        const uint32_t* wr = mlx_row_words(*m, o);
        const auto* s16 = reinterpret_cast<const uint16_t*>(sp);
        const auto* b16 = reinterpret_cast<const uint16_t*>(bp);
        if (!bf16) {
          decode_elements(sp, m->scales.dtype, R * ng, sf);
          decode_elements(bp, m->biases.dtype, R * ng, bf);
        }
        const int64_t G = m->group_size, pk = m->packed();
        if (kern == MlxKernel::avx2 && bf16)
          mlx_rows_kernel_avx2<uint16_t>(m->bits, R)(xin, in.xs.data(), n, K, G, wr, pk, s16, b16, in.xexp, daz, y + (o - y0), ldy);
        else if (kern == MlxKernel::avx2)
          mlx_rows_kernel_avx2<float>(m->bits, R)(xin, in.xs.data(), n, K, G, wr, pk, sf, bf, in.xexp, daz, y + (o - y0), ldy);
        else if (bf16)
          mlx_rows_kernel<uint16_t>(m->bits, R)(xin, in.xs.data(), n, K, G, wr, pk, s16, b16, y + (o - y0), ldy);
        else
          mlx_rows_kernel<float>(m->bits, R)(xin, in.xs.data(), n, K, G, wr, pk, sf, bf, y + (o - y0), ldy);
        o += R;
      }
      return;
    }
    const int64_t ng = K / m->group_size, units = K / (m->bits == 5 ? 32 : 32 / m->bits);
    scratch.resize(std::size_t(2 * ng + units));
    float *sg = scratch.data(), *bg = sg + ng, *su = bg + ng;
    auto* kern = m->bits == 4 ? mlx_dot_row4 : m->bits == 5 ? mlx_dot_row5 : mlx_dot_row8;
    for (int64_t o = r0; o < r1; ++o) {
      mlx_row_scales(*m, o, sg, bg, su);
      kern(in.xp.data(), in.xs.data(), n, K, m->group_size, mlx_row_words(*m, o), su, bg, y + (o - y0), ldy);
    }
    return;
  }
  fail("fused_rows: '", W.name(), "' has no fused kernel");
}

// Which AVX-512 kernel AWQ decode runs. Both look each column's 16 weights
// up in a table for 16 input rows at a time; they bring a column word's 16
// rows into the lanes by a gather (awq_groups_lut and its wide form) or by
// loading 16 rows of the band and transposing them (awq_groups_tr). The
// gathers were the faster on the Xeon they were written on; AMD's gathers
// are slow, so the transposes run on AMD CPUs (measured on Zen 4:
// docs/formats.md §5). A program (or test) may set awq_gathers_preferred()
// to run the other one.
inline bool& awq_gathers_preferred() {
#ifdef DSV3_HAVE_AVX512_KERNELS
  static bool on = (__builtin_cpu_init(), !__builtin_cpu_is("amd"));
#else
  static bool on = true;  // (no AVX-512 kernels: never read)
#endif
  return on;
}
inline bool awq_gather_kernel() { return avx512_runs() && awq_gathers_preferred(); }
// Where the gathers do not run, AVX-512 (Zen 4 too, whose other streams
// are AVX2: avx512_preferred) runs the transposes.
inline bool awq_transpose_kernel() { return avx512_kernels() && !awq_gather_kernel(); }

// Whether a group's rows crowd into few of L1's 64 sets (of 64-byte lines):
// more than 8 rows a set, where L1 has 12 ways. Rows spaced a multiple of
// 1 KB apart do (DeepSeek-V3's AWQ widths: 2048, 7168, 24576 columns); the
// AVX-512 kernel's wide form (awq_groups_lut_wide) then takes 32 rows at a
// time across the band's words, and its units are not limited by L1. Row k
// starts in set ⌊k·row_bytes/64⌋ mod 64; for whole lines (every published
// width) that is k·L mod 64, L = row_bytes/64, which repeats every
// 64/gcd(L, 64) rows, so no loop is needed on each call.
inline bool awq_wide(const AwqWeight& a) {
  if (!awq_gather_kernel()) return false;
  const int64_t row_bytes = a.qweight.shape[1] * 4, rows = std::min<int64_t>(a.group_size, 256);
  int64_t sets = 0;
  if (row_bytes % 64 == 0) {
    sets = std::min<int64_t>(rows, 64 / std::gcd<int64_t>(row_bytes / 64, 64));
  } else {
    uint64_t used = 0;
    for (int64_t k = 0; k < rows; ++k) used |= uint64_t(1) << ((k * row_bytes / 64) % 64);
    sets = __builtin_popcountll(used);
  }
  return rows > 8 * sets;
}

// AWQ decode works along the input instead (its storage is [in, out]): a
// unit is a run of whole groups of input rows [k0, k1) — a contiguous block
// of the file — against every output column, giving a partial y that the
// caller sums over the units in their order. A unit's groups depend on the
// matrix only (awq_groups_per_unit), so the result does not depend on the
// threads. part[i·out + c] = Σ_{k in [k0, k1)} x[i,k]·f16((q_kc − z_c)·s_c),
// for n ≤ 4 rows; each group's zero points and scales are widened once a band.
//
// The groups a unit takes: up to four (where the matrix has 16 or more
// groups), so that a column's sum ends in a horizontal step once per four
// groups, not once per group. The unit's rows stay within 32 KB, so that a
// band's rows, read again for each of its 16 words, stay in L1: rows of 512
// bytes in units of 256 fall into 8 of L1's 64 sets and evicted each other
// (the mid model's 1024 × 1024 AWQ matrices ran 35% slower than a group a
// unit). The wide form (awq_wide) is not limited by L1.
//
// The transposes (avx512::awq_groups_tr) and the AVX2 kernel that computes
// each weight (avx2::awq_dot_group) read each row's lines of a band once a
// call, so a unit's size does not bear on L1; they take four groups, and
// the partial outputs summed after the round are a quarter as many.
inline int64_t awq_groups_per_unit(const AwqWeight& a) {
  const int64_t G = a.group_size, row_bytes = a.qweight.shape[1] * 4;
  const bool once = !awq_gather_kernel() && (avx512_kernels() || avx2_kernels());  // each line read once a call
  const int64_t fit = awq_wide(a) || once ? 4 : (32 << 10) / (G * row_bytes);
  return std::clamp<int64_t>(std::min(a.in() / G / 4, fit), 1, 4);
}

// Zero points and scales of group g for the nw ≤ 16 words from w0, in
// nibble order: zq[16·j + l] = nibble j of zero-point word w0 + l, sq[16·j
// + l] = the scale of column 8·(w0 + l) + kAwqOrder[j]; lanes l ≥ nw are 0.
inline void awq_group_params(const AwqWeight& a, int64_t g, int64_t w0, int64_t nw, float* zq, float* sq) {
  const int64_t words = a.qweight.shape[1], O = a.out();
  const auto* qz = reinterpret_cast<const uint32_t*>(a.qzeros.data) + g * words + w0;
  if (avx512_kernels() && a.scales.dtype == DType::F16) {  // (writes every lane; Zen 4 too, as awq_cols_partial)
    avx512::awq_band_params(qz, nw, a.scales.data + std::size_t(g * O + 8 * w0) * 2, kAwqOrder, zq, sq);
    return;
  }
  if (avx2_kernels() && a.scales.dtype == DType::F16) {
    avx2::awq_band_params(qz, nw, a.scales.data + std::size_t(g * O + 8 * w0) * 2, kAwqOrder, zq, sq);
    return;
  }
  std::fill(zq, zq + 128, 0.0f);
  std::fill(sq, sq + 128, 0.0f);
  for (int j = 0; j < 8; ++j)
    for (int l = 0; l < nw; ++l) {
      zq[j * 16 + l] = float((qk::word(qz + l) >> (4 * j)) & 0xFu);
      sq[j * 16 + l] = qk::load_scale(a.scales.data, a.scales.dtype, g * O + 8 * (w0 + l) + kAwqOrder[j]);
    }
}

// Whether (q − z)·s is exact as one fused multiply-add q·s + (−z·s), as the
// AVX2 kernels compute it: for scales of at most 11 significant bits (F16,
// BF16; avx2::awq_dot_group).
inline bool awq_fma_exact(const AwqWeight& a) { return a.scales.dtype == DType::F16 || a.scales.dtype == DType::BF16; }

// The partial product of input rows [k0, k1) (whole groups from k0) with the
// output columns of words [wb, we): part[i·ldp + c − 8·wb] = Σ_{k in [k0,
// k1)} x[i·ldx + k]·f16((q_kc − z_c)·s_c), for n ≤ 4 rows of x. A linear's
// unit takes every word; MLA's absorbed decode takes one head's W_UV.
inline void awq_cols_partial(const AwqWeight& a, const float* x, int64_t ldx, int64_t n, int64_t k0, int64_t k1,
                             int64_t wb, int64_t we, std::vector<float>& scratch, float* part, int64_t ldp) {
  const int64_t words = a.qweight.shape[1], G = a.group_size;
  const int64_t ng = (k1 - k0 + G - 1) / G;  // groups in [k0, k1), the first at k0 (a multiple of G)
  const auto* qw = reinterpret_cast<const uint32_t*>(a.qweight.data);
  const bool wide = awq_wide(a);
  const bool exact = awq_fma_exact(a);
  const bool transposed = awq_transpose_kernel();
  scratch.resize(std::size_t(ng * 256 + n * 128 + (wide ? 2048 + n * 2048 : transposed ? 2048 + 16 + n * 2048 : 0)));
  float* params = scratch.data();  // per group: 128 zero points, 128 scales (nibble order)
  float* acc = params + ng * 256;
  float* lut = acc + n * 128;      // the wide kernel's tables and lanes
  float* lanes = lut + 2048;
  uint32_t* tw = nullptr;  // the transposes' words ([16][128], 64-byte aligned), then their lanes
  if (transposed) {
    tw = reinterpret_cast<uint32_t*>((reinterpret_cast<uintptr_t>(acc + n * 128) + 63) & ~uintptr_t(63));
    lanes = reinterpret_cast<float*>(tw + 2048);
  }
  for (int64_t w0 = wb; w0 < we; w0 += 16) {  // bands of 16 words: 128 columns, one 64-byte line a row
    const int64_t nw = std::min<int64_t>(16, we - w0), c0 = 8 * (w0 - wb);
    std::fill(acc, acc + n * 128, 0.0f);
    for (int64_t gi = 0; gi < ng; ++gi) awq_group_params(a, k0 / G + gi, w0, nw, params + gi * 256, params + gi * 256 + 128);
    if (wide)
      avx512::awq_groups_lut_wide(x, n, ldx, k0, k1, G, qw + w0, words, nw, params, lut, lanes, acc);
    else if (awq_gather_kernel())
      avx512::awq_groups_lut(x, n, ldx, k0, k1, G, qw + w0, words, nw, params, acc);
    else if (transposed)  // (a band of 8 words or fewer fills the lanes too: they run along the input)
      avx512::awq_groups_tr(x, n, ldx, k0, k1, G, qw + w0, words, nw, params, exact, w0 == wb, tw, lanes, acc);
    else if (avx2_kernels())
      for (int64_t gi = 0; gi < ng; ++gi)
        avx2::awq_dot_group(x, n, ldx, k0 + gi * G, std::min(k1, k0 + (gi + 1) * G), qw + w0, words, nw,
                            params + gi * 256, params + gi * 256 + 128, exact, acc);
    else
      for (int64_t gi = 0; gi < ng; ++gi)
        awq_dot_group(x, n, ldx, k0 + gi * G, std::min(k1, k0 + (gi + 1) * G), qw + w0, words, nw, params + gi * 256,
                      params + gi * 256 + 128, acc);
    for (int64_t i = 0; i < n; ++i)
      for (int j = 0; j < 8; ++j)
        for (int l = 0; l < nw; ++l) part[i * ldp + c0 + 8 * l + kAwqOrder[j]] = acc[i * 128 + j * 16 + l];
  }
}

inline void awq_group_partial(const AwqWeight& a, const float* x, int64_t n, int64_t K, int64_t k0, int64_t k1,
                              std::vector<float>& scratch, float* part) {
  awq_cols_partial(a, x, K, n, k0, k1, 0, a.qweight.shape[1], scratch, part, a.out());
}

// AWQ's storage read along its rows: y[i·ldy + c] = Σ_{m < 8·nw} x[i·ldx +
// m]·W[8·w0 + m, c] for every input index c of W [out, in] (storage row c,
// the nw words from w0), for n ≤ 4 rows of x. MLA's absorbed decode takes
// q_lat = q_nope·W_UK this way from a head's rows of kv_b, whose input index
// is q_lat's. The AVX-512 kernels take 16 storage rows at a time in the
// lanes (each word by a gather, or, where the transposes run as for the
// linears, awq_transpose_kernel, by loading the 16 rows and transposing
// them: the same bits), a group's 8·nw columns as tables of their 16
// weights; the AVX2 kernel computes each weight; the plain loop adds one
// column at a time.
inline void awq_rows_dot(const AwqWeight& a, const float* x, int64_t ldx, int64_t n, int64_t w0, int64_t nw,
                         std::vector<float>& scratch, float* y, int64_t ldy) {
  const int64_t words = a.qweight.shape[1], G = a.group_size, in = a.in();
  const auto* qw = reinterpret_cast<const uint32_t*>(a.qweight.data);
  const bool exact = awq_fma_exact(a);
  scratch.resize(std::size_t(256 + 16 * 128));
  float *zq = scratch.data(), *sq = zq + 128, *lut = sq + 128;
  for (int64_t i = 0; i < n; ++i) std::fill(y + i * ldy, y + i * ldy + in, 0.0f);
  for (int64_t g = 0; g < in / G; ++g)
    for (int64_t wc = w0; wc < w0 + nw; wc += 16) {  // 16 words (128 columns) a chunk
      const int64_t cnw = std::min<int64_t>(16, w0 + nw - wc);
      awq_group_params(a, g, wc, cnw, zq, sq);
      const float* xc = x + 8 * (wc - w0);
      int64_t c = g * G;
      if (awq_gather_kernel()) c = avx512::awq_rows_lut(xc, ldx, n, c, (g + 1) * G, qw + wc, words, cnw, zq, sq, lut, y, ldy);
      else if (awq_transpose_kernel())
        c = avx512::awq_rows_tr(xc, ldx, n, c, (g + 1) * G, qw + wc, words, cnw, zq, sq, exact, lut, y, ldy);
      else if (avx2_kernels()) c = avx2::awq_rows(xc, ldx, n, c, (g + 1) * G, qw + wc, words, cnw, zq, sq, exact, y, ldy);
      for (; c < (g + 1) * G; ++c)
        for (int64_t i = 0; i < n; ++i) {
          float acc = 0;
          for (int64_t l = 0; l < cnw; ++l) {
            const uint32_t q = qk::word(qw + c * words + wc + l);
            for (int j = 0; j < 8; ++j)
              acc += xc[i * ldx + 8 * l + kAwqOrder[j]] *
                     qk::round_f16((float((q >> (4 * j)) & 0xFu) - zq[j * 16 + l]) * sq[j * 16 + l]);
          }
          y[i * ldy + c] += acc;
        }
    }
}

// AWQ prefill: the band of nw ≤ 16 words from word w0 (columns 8·w0 ..) for
// every input row, k-major in nibble order: dst[k·128 + 16·j + l] =
// W[8·(w0 + l) + kAwqOrder[j], k] (lanes l ≥ nw are 0), ready for a GEMM
// x @ dst whose output columns the caller puts back in order. Storage is
// [in, out], so this walks the file in order; no transpose.
inline void awq_decode_kmajor(const AwqWeight& a, int64_t w0, int64_t nw, float* dst) {
  const int64_t words = a.qweight.shape[1], G = a.group_size, O = a.out(), K = a.in();
  const auto* qw = reinterpret_cast<const uint32_t*>(a.qweight.data);
  const auto* qz = reinterpret_cast<const uint32_t*>(a.qzeros.data);
  float zq[128] = {0}, sq[128] = {0};
  for (int64_t g = 0; g * G < K; ++g) {
    for (int j = 0; j < 8; ++j)
      for (int64_t l = 0; l < nw; ++l) {
        zq[j * 16 + l] = float((qk::word(qz + g * words + w0 + l) >> (4 * j)) & 0xFu);
        sq[j * 16 + l] = qk::load_scale(a.scales.data, a.scales.dtype, g * O + 8 * (w0 + l) + kAwqOrder[j]);
      }
    for (int64_t k = g * G; k < std::min(K, (g + 1) * G); ++k) {
      const uint32_t* row = qw + k * words + w0;
      __builtin_prefetch(row + 8 * words);  // as avx2::awq_prefetch: rows far apart, one line each
      __builtin_prefetch(row + 16);         // (prefetches do not fault past the matrix)
      float* d = dst + k * 128;
      if (avx512_runs()) {
        avx512::awq_decode_krow(row, nw, zq, sq, d);
        continue;
      }
      if (avx2_kernels()) {
        avx2::awq_decode_krow(row, nw, zq, sq, d);
        continue;
      }
      for (int j = 0; j < 8; ++j)
        for (int l = 0; l < 16; ++l)
          d[16 * j + l] = l < nw ? qk::round_f16((float((qk::word(row + l) >> (4 * j)) & 0xFu) - zq[j * 16 + l]) * sq[j * 16 + l]) : 0.0f;
    }
  }
}

// ===========================================================================
// Prefill bands: rows [r0, r1) of W as f32 into dst [(r1 − r0), in], the
// values the reference's decode_rows gives (AWQ, FP8 exactly; MLX up to the
// contraction of s·q + b into one fused multiply-add). Formats without a
// kernel here use Linear::decode_rows.
DSV3_QCLONES [[maybe_unused]] static void awq_decode_cols(const uint32_t* qw, int64_t words, int64_t k0, int64_t k1,
                                                         int64_t w0, int64_t nw, const float* zq, const float* sq,
                                                         float* dstT) {
  // dstT[(k − k0)·(8·nw) + 8·l + kAwqOrder[j]]: input rows × the band's columns
  for (int64_t k = k0; k < k1; ++k) {
    const uint32_t* row = qw + k * words + w0;
    float* d = dstT + (k - k0) * 8 * nw;
    for (int64_t l = 0; l < nw; ++l)
      for (int j = 0; j < 8; ++j)
        d[8 * l + kAwqOrder[j]] = qk::round_f16((float((qk::word(row + l) >> (4 * j)) & 0xFu) - zq[8 * l + j]) * sq[8 * l + j]);
  }
}

// Rows [r0, r1) of one MLX matrix (or slice) as f32.
inline void mlx_decode_rows(const MlxWeight& m, int64_t r0, int64_t r1, float* dst) {
  const int64_t K = m.in(), ng = K / m.group_size, V = m.bits == 5 ? 32 : 32 / m.bits;
  if (m.group_size % V != 0 || m.round_to_storage) return m.decode_rows(r0, r1, dst);  // mx.dequantize's roundings: the reference's loop
  std::vector<float> sb(std::size_t(2 * ng));
  const MlxKernel kern = mlx_kernel(m);
  auto* dec = kern == MlxKernel::avx512 ? (m.bits == 4   ? avx512::mlx_decode_row<4>
                                           : m.bits == 5 ? avx512::mlx_decode_row<5>
                                                         : avx512::mlx_decode_row<8>)
              : kern == MlxKernel::avx2 ? (m.bits == 4   ? avx2::mlx_decode_row<4>
                                           : m.bits == 5 ? avx2::mlx_decode_row<5>
                                                         : avx2::mlx_decode_row<8>)
                            : m.bits == 4 ? mlx_decode_row4
                            : m.bits == 5 ? mlx_decode_row5
                                          : mlx_decode_row8;
  for (int64_t o = r0; o < r1; ++o) {
    mlx_row_scales(m, o, sb.data(), sb.data() + ng);
    dec(K, m.group_size, mlx_row_words(m, o), sb.data(), sb.data() + ng, dst + (o - r0) * K);
  }
}

// Rows [r0, r1) of W as f32 (the contract of Linear::decode_rows).
inline void decode_rows_fast(const Linear& W, int64_t r0, int64_t r1, float* dst) {
  const int64_t K = W.in();
  if (const auto* f = W.fp8(); f && W.weight.dtype == DType::F8_E4M3 && (avx512_runs() || avx2_kernels())) {
    const int64_t sc = f->scale_inv.shape[1];
    std::vector<float> sb(static_cast<std::size_t>(sc));
    const auto dec = avx512_runs() ? avx512::fp8_decode_row : avx2::fp8_decode_row;
    int64_t cur = -1;
    for (int64_t o = r0; o < r1; ++o) {
      if (o / f->block_rows != cur) {
        cur = o / f->block_rows;
        fp8_row_scales(*f, cur, sb.data());
      }
      dec(W.weight.data + o * K, K, sb.data(), f->block_cols, dst + (o - r0) * K, fp8_e4m3_to_f32_bits);
    }
    return;
  }
  if (const MlxWeight* m = W.mlx()) return mlx_decode_rows(*m, r0, r1, dst);
  if (const auto* s = std::get_if<Linear::MlxSplitKvb>(&W.storage)) {
    // kv_b_proj row h·(dn+dv) + j: column j of embed_q[h] (j < dn), else row j − dn of unembed_out[h]
    const int64_t dn = s->embed_q.in(), dv = s->unembed_out.out(), per = dn + dv;
    auto head_rows = [](const Linear::KvbHalf& half, int64_t h, int64_t a, int64_t b, float* out) {
      if (half.q) return mlx_decode_rows(half.q->slice(h), a, b, out);
      half.decode_head(h, a, b, out);
    };
    std::vector<float> eq(std::size_t(K * dn));
    for (int64_t h = r0 / per; h * per < r1; ++h) {
      const int64_t a = std::max(r0, h * per), b = std::min(r1, (h + 1) * per);
      if (a < h * per + dn) {
        head_rows(s->embed_q, h, 0, K, eq.data());  // [K, dn]
        for (int64_t row = a; row < std::min(b, h * per + dn); ++row)
          for (int64_t c = 0; c < K; ++c) dst[(row - r0) * K + c] = eq[std::size_t(c * dn + row - h * per)];
      }
      const int64_t v0 = std::max(a, h * per + dn);
      if (v0 < b) head_rows(s->unembed_out, h, v0 - h * per - dn, b - h * per - dn, dst + (v0 - r0) * K);
    }
    return;
  }
  if (const AwqWeight* a = W.awq(); a && r0 % 8 == 0 && r1 % 8 == 0) {
    const int64_t words = a->qweight.shape[1], G = a->group_size, O = a->out(), w0 = r0 / 8, nw = (r1 - r0) / 8;
    const auto* qw = reinterpret_cast<const uint32_t*>(a->qweight.data);
    const auto* qz = reinterpret_cast<const uint32_t*>(a->qzeros.data);
    std::vector<float> zs(std::size_t(16 * nw)), t(std::size_t(G * 8 * nw));
    for (int64_t g = 0; g * G < K; ++g) {
      for (int64_t l = 0; l < nw; ++l)
        for (int j = 0; j < 8; ++j) {
          zs[std::size_t(8 * l + j)] = float((qk::word(qz + g * words + w0 + l) >> (4 * j)) & 0xFu);
          zs[std::size_t(8 * nw + 8 * l + j)] =
              qk::load_scale(a->scales.data, a->scales.dtype, g * O + r0 + 8 * l + kAwqOrder[j]);
        }
      const int64_t k0 = g * G, k1 = std::min(K, k0 + G);
      awq_decode_cols(qw, words, k0, k1, w0, nw, zs.data(), zs.data() + 8 * nw, t.data());
      for (int64_t c = 0; c < r1 - r0; ++c)  // the group's [k, c] block, transposed into rows
        for (int64_t k = k0; k < k1; ++k) dst[c * K + k] = t[std::size_t((k - k0) * 8 * nw + c)];
    }
    return;
  }
  W.decode_rows(r0, r1, dst);
}

#undef DSV3_QCLONES

}  // namespace dsv3::cpu
