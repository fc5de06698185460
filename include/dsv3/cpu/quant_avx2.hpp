// dsv3/cpu/quant_avx2.hpp — AVX2 (with FMA and F16C) versions of the
// quantized-format kernels, for x86-64 CPUs without AVX-512 (AMD Zen 1–3,
// Intel client cores). quant_avx512.hpp has the AVX-512 ones; quant.hpp's
// plain loops are the specification both are tested against.
//
// Each computes what its plain twin in quant.hpp computes, in the same order
// of blocks and groups (lanes differ), and is chosen at run time when the
// CPU has the instructions and the AVX-512 kernels are not chosen
// (avx2_kernels()); tests/test_backend_ops.cpp runs the op suite with each
// kind of kernel the CPU has.
//
// What eight lanes change against sixteen:
//  * FP8: F16C's vcvtph2ps takes the codes moved into f16 fields, eight a
//    vector, as the AVX-512 kernel does sixteen.
//  * MLX: no byte permute or multishift. 4-bit: eight 16-bit words zero-
//    extended to eight lanes, each nibble read where it lies (three masks,
//    and a shift for the top one): values 4l + j of a run of 32, so x is
//    read in that order, scaled by 2^-4j to match (mlx4_permute). 5-bit: a
//    byte shuffle gives each lane the two bytes that hold its value, a shift
//    by 5v mod 8 and a mask. 8-bit: a byte shuffle gives each lane its byte.
//  * AWQ: no 16-entry table lookup (vpermps reads 3 bits), so each weight is
//    computed, f16((q − z)·s) by vcvtps2ph / vcvtph2ps, eight columns a vector.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "../formats/dtype.hpp"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12's intrinsic headers (an undefined __Y)
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#define DSV3_HAVE_AVX2_KERNELS 1
#define DSV3_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

namespace dsv3::cpu {

// Whether the AVX2 kernels may run: the CPU has AVX2, FMA and F16C. (Where
// avx512_kernels() is also on, the AVX-512 kernels are chosen.) A program
// or test may set it to false to run the plain loops.
inline bool& avx2_kernels() {
#ifdef DSV3_HAVE_AVX2_KERNELS
  static bool on = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  static bool on = false;
#endif
  return on;
}

// Whether the AVX2 MLX kernel may read its integer codes as f32 subnormals
// (mlx_x32's Sub route below): on AMD's cores a multiply-add with a
// subnormal operand runs at full speed, where Intel's take a microcode
// assist for each. A test may set it either way.
inline bool& avx2_subnormal_codes() {
#ifdef DSV3_HAVE_AVX2_KERNELS
  static bool on = __builtin_cpu_is("amd");
#else
  static bool on = false;
#endif
  return on;
}

#ifdef DSV3_HAVE_AVX2_KERNELS
namespace avx2 {

// The 4 sums of v's two halves (lane l + lane l + 4).
__attribute__((always_inline)) DSV3_AVX2 inline __m128 halves(__m256 v) { return _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)); }

// out[r] = the sum of v[r]'s 8 lanes, for R ≤ 4 vectors at once, in one
// order whatever R is: halves, then pairs of lanes twice (vhaddps).
template <int R>
__attribute__((always_inline)) DSV3_AVX2 inline void hsum_rows(const __m256* v, float* out) {
  const __m128 z = _mm_setzero_ps();
  const __m128 a0 = halves(v[0]), a1 = R > 1 ? halves(v[1]) : z, a2 = R > 2 ? halves(v[2]) : z,
               a3 = R > 3 ? halves(v[3]) : z;
  alignas(16) float lanes[4];
  _mm_store_ps(lanes, _mm_hadd_ps(_mm_hadd_ps(a0, a1), _mm_hadd_ps(a2, a3)));
  for (int r = 0; r < R; ++r) out[r] = lanes[r];
}
DSV3_AVX2 inline float hsum(__m256 v) {
  float s;
  hsum_rows<1>(&v, &s);
  return s;
}

// 16 FP8 e4m3 codes → two vectors of 8 floats, each 2^-8 times the code's
// value (quant_avx512.hpp's fp8x32_scaled, half as wide): the code
// sign-extended to 16 bits and shifted left by 7 is an f16 with the code's
// sign (bit 14, a copy of it, cleared), exponent and mantissa.
DSV3_AVX2 inline void fp8x16_scaled(__m128i b, __m256& lo, __m256& hi) {
  const __m256i h = _mm256_and_si256(_mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7), _mm256_set1_epi16(short(0xBFFF)));
  lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
  hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}

// 8 FP8 e4m3 codes → 8 floats, each 2^-120 times the code's value (the Sub
// route of fp8_dot_rows): sign-extended to 32 bits, the code's exponent and
// mantissa shifted to f32's bits 20–26 and its sign to bit 31. Codes of
// exponent 0 become f32 subnormals, the rest normal f32s below 2^-111.
DSV3_AVX2 inline __m256 fp8x8_sub(const uint8_t* p) {
  const __m256i d = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(d, 20), _mm256_set1_epi32(int(0x87F00000u))));
}

// R consecutive FP8 rows (R ≤ 4, all in one block row: s, their column
// blocks' scales, is theirs) · x rows, as quant.hpp's fp8_dot_row per row:
// per column block s·Σ x·q. Runs of 32 codes, then of 16, in vectors (four
// sums, so that the adds do not wait on each other); a block's last < 16
// codes one at a time. The R rows' lanes are summed together (hsum_rows),
// in the order one row alone gets: a row's result does not depend on R.
//
// A NaN code (0x7f / 0xff) makes its row's result NaN, as in the reference.
// Check looks for one in every code (two instructions a 32 codes) and
// returns whether the rows hold one; without it, the caller knows they hold
// none (Fp8NanMemo) and false is returned. Leaving it out makes the kernel
// 9-11% faster (Zen 3, one or two cores, from DRAM) and mid fp8 decode take
// 2-3% less CPU time.
//
// x comes scaled by 2^xexp (xexp = 0: as it is). Sub (AMD, as the MLX
// kernel's): codes read as f32 fields (fp8x8_sub, three instructions for 8
// codes, where F16C takes more), each product x·q·2^(xexp−120), so that a
// block's sum is the F16C route's times 2^(xexp−112), which `back` undoes;
// otherwise codes through f16 (fp8x16_scaled), `back` = 2^-xexp. The tail's
// scalar sums are scaled back by 2^-xexp. The sums are the F16C route's on
// unscaled x, scaled by powers of two: the same bits where they stay normal
// (subnormal_exponent's choice of xexp sees to that).
//
// FixedBC: the block width known when compiled (128, the published one,
// where K is a multiple of it), so that a block's four steps are unrolled;
// the same operations in the same order.
template <int R, bool Sub, bool Check, int FixedBC = 0>
DSV3_AVX2 inline bool fp8_dot_rows_t(const float* x, int64_t n, int64_t K, const uint8_t* w, const float* s,
                                     int64_t bc_, float back, float tail_back, float* out, int64_t ldy,
                                     float (*scalar)(uint8_t)) {
  const int64_t bc = FixedBC > 0 ? FixedBC : bc_;
  const __m256i low7 = _mm256_set1_epi8(0x7f);
  bool any_nan = false;
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * K;
    __m256 acc[R];
    float tail[R];
    bool nan[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* wr = w + r * K;
      __m256 a = _mm256_setzero_ps();
      float tl = 0;
      __m256i big = _mm256_setzero_si256();
      bool tail_nan = false;
      for (int64_t c0 = 0, cb = 0; c0 < K; c0 += bc, ++cb) {
        const int64_t c1 = FixedBC > 0 ? c0 + bc : std::min(K, c0 + bc);
        __m256 t0 = _mm256_setzero_ps(), t1 = _mm256_setzero_ps(), t2 = _mm256_setzero_ps(), t3 = _mm256_setzero_ps();
        int64_t k = c0;
#pragma GCC unroll 4
        for (; k + 32 <= c1; k += 32) {
          if (i == 0) _mm_prefetch(reinterpret_cast<const char*>(wr + k) + 2048, _MM_HINT_T0);
          const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + k));
          if constexpr (Check) big = _mm256_max_epu8(big, _mm256_and_si256(raw, low7));  // 0x7f: a NaN code
          __m256 q0, q1, q2, q3;
          if constexpr (Sub) {
            q0 = fp8x8_sub(wr + k), q1 = fp8x8_sub(wr + k + 8), q2 = fp8x8_sub(wr + k + 16), q3 = fp8x8_sub(wr + k + 24);
          } else {
            fp8x16_scaled(_mm256_castsi256_si128(raw), q0, q1);
            fp8x16_scaled(_mm256_extracti128_si256(raw, 1), q2, q3);
          }
          t0 = _mm256_fmadd_ps(_mm256_loadu_ps(xi + k), q0, t0);
          t1 = _mm256_fmadd_ps(_mm256_loadu_ps(xi + k + 8), q1, t1);
          t2 = _mm256_fmadd_ps(_mm256_loadu_ps(xi + k + 16), q2, t2);
          t3 = _mm256_fmadd_ps(_mm256_loadu_ps(xi + k + 24), q3, t3);
        }
        for (; k + 16 <= c1; k += 16) {
          const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + k));
          if constexpr (Check) big = _mm256_max_epu8(big, _mm256_zextsi128_si256(_mm_and_si128(b, _mm_set1_epi8(0x7f))));
          __m256 lo, hi;
          if constexpr (Sub) {
            lo = fp8x8_sub(wr + k), hi = fp8x8_sub(wr + k + 8);
          } else {
            fp8x16_scaled(b, lo, hi);
          }
          t0 = _mm256_fmadd_ps(_mm256_loadu_ps(xi + k), lo, t0);
          t1 = _mm256_fmadd_ps(_mm256_loadu_ps(xi + k + 8), hi, t1);
        }
        const __m256 sv = _mm256_set1_ps(s[cb] * 256.0f);  // × 2^8 undoes the f16 exponent offset
        a = _mm256_fmadd_ps(sv, _mm256_add_ps(_mm256_add_ps(t0, t1), _mm256_add_ps(t2, t3)), a);
        float t = 0;
        for (; k < c1; ++k) {  // (a NaN code is NaN here, checked or not)
          t += xi[k] * scalar(wr[k]);
          if constexpr (Check) tail_nan = tail_nan || (wr[k] & 0x7f) == 0x7f;
        }
        tl += s[cb] * t;
      }
      acc[r] = _mm256_mul_ps(a, _mm256_set1_ps(back));
      tail[r] = tl;
      nan[r] = Check && (tail_nan || _mm256_movemask_epi8(_mm256_cmpeq_epi8(big, low7)) != 0);
    }
    float sum[R];
    hsum_rows<R>(acc, sum);
    for (int r = 0; r < R; ++r) {
      out[i * ldy + r] = nan[r] ? std::numeric_limits<float>::quiet_NaN() : sum[r] + tail[r] * tail_back;
      any_nan = any_nan || nan[r];
    }
  }
  return any_nan;
}

// 2^e for a normal e, built from its bits.
inline float pow2f(int e) {
  const uint32_t u = uint32_t(127 + e) << 23;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Whether this thread reads subnormal operands as zero (MXCSR's DAZ bit, as
// programs built with -ffast-math set it). Reading MXCSR waits for the
// floating-point instructions in flight (its status flags), so a kernel
// call that read it could not overlap the one before: fused_rows reads it
// once per run of calls on the thread that runs them and passes it down
// (`daz`).
inline bool denormals_are_zero() { return (_mm_getcsr() & 0x40) != 0; }

// The largest |x_e| of count values into amax, eight lanes at a time (a
// maximum: the same whatever the order); false where one is not finite.
DSV3_AVX2 inline bool abs_max_finite(const float* x, int64_t count, float& amax) {
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  __m256 m = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
  int64_t e = 0;
  for (; e + 8 <= count; e += 8) {
    const __m256 a = _mm256_and_ps(_mm256_loadu_ps(x + e), magnitude);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ));  // ∞ or NaN
    m = _mm256_max_ps(m, a);
  }
  if (_mm256_movemask_ps(bad) != 0) return false;
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  amax = 0;
  for (float l : lanes) amax = std::max(amax, l);
  for (; e < count; ++e) {
    if (!std::isfinite(x[e])) return false;
    amax = std::max(amax, std::fabs(x[e]));
  }
  return true;
}

// R FP8 rows (R = 4 or 1, in one block row) · x rows for x scaled by
// 2^xexp: the Sub route where the caller chose it (xexp ≠ 0) and subnormals
// are read as they are (daz: denormals_are_zero() on this thread), else
// F16C. Check: look for NaN codes (above).
template <int R, bool Check>
DSV3_AVX2 inline bool fp8_dot_rows(const float* x, int64_t n, int64_t K, const uint8_t* w, const float* s, int64_t bc,
                                   int xexp, bool daz, float* out, int64_t ldy, float (*scalar)(uint8_t)) {
  if (xexp != 0 && !daz) {
    if (bc == 128 && K % 128 == 0)
      return fp8_dot_rows_t<R, true, Check, 128>(x, n, K, w, s, bc, pow2f(112 - xexp), pow2f(-xexp), out, ldy, scalar);
    return fp8_dot_rows_t<R, true, Check>(x, n, K, w, s, bc, pow2f(112 - xexp), pow2f(-xexp), out, ldy, scalar);
  }
  return fp8_dot_rows_t<R, false, Check>(x, n, K, w, s, bc, pow2f(-xexp), pow2f(-xexp), out, ldy, scalar);
}

// One FP8 row decoded to f32, q·s per column block (the reference's
// values), 16 codes at a time, as quant_avx512.hpp's fp8_decode_row: each
// code is 2^-8 times its value through f16 (exact), × 2^8 (exact), × s (the
// one rounding q·s makes); NaN codes (0x7f / 0xff) give NaN. For prefill
// bands and, in decode, MLA's per-head rows of an FP8 kv_b_proj.
DSV3_AVX2 inline void fp8_decode_row(const uint8_t* w, int64_t K, const float* s, int64_t bc, float* dst,
                                     float (*scalar)(uint8_t)) {
  const __m256 nanv = _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN()), up = _mm256_set1_ps(256.0f);
  for (int64_t c0 = 0, cb = 0; c0 < K; c0 += bc, ++cb) {
    const int64_t c1 = std::min(K, c0 + bc);
    const __m256 sv = _mm256_set1_ps(s[cb]);
    int64_t k = c0;
    for (; k + 16 <= c1; k += 16) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k));
      __m256 lo, hi;
      fp8x16_scaled(b, lo, hi);
      const __m128i nan = _mm_cmpeq_epi8(_mm_and_si128(b, _mm_set1_epi8(0x7f)), _mm_set1_epi8(0x7f));
      const __m256 nlo = _mm256_castsi256_ps(_mm256_cvtepi8_epi32(nan));
      const __m256 nhi = _mm256_castsi256_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(nan, 8)));
      _mm256_storeu_ps(dst + k, _mm256_blendv_ps(_mm256_mul_ps(_mm256_mul_ps(lo, up), sv), nanv, nlo));
      _mm256_storeu_ps(dst + k + 8, _mm256_blendv_ps(_mm256_mul_ps(_mm256_mul_ps(hi, up), sv), nanv, nhi));
    }
    for (; k < c1; ++k) dst[k] = scalar(w[k]) * s[cb];
  }
}

// o[i·ldo + c] = Σ_{j<m} p[i·ldp + j]·(q_jc·s_c) for i < n, c < width: rows
// j of FP8 codes at w + j·ldw, all in one block row, s_c = s[c / bc] their
// column blocks' scales. The products rows_mix_rows makes over those rows
// decoded by fp8_decode_row, bit for bit, without decoding them: each value
// q·s is the one rounding fp8_decode_row makes ((2^-8·q)·(2^8·s), the same
// real product), and each column's sum runs over j in order by fused
// multiply-adds from zero, as rows_mix_rows's does at any vector width.
// (MLA's q_nope·W_UK with an FP8 kv_b_proj.) 16 columns a step, 64 held in
// registers while the rows stream past; the last width mod 16 columns one
// at a time. Returns false, with o not to be used, where a code in the
// vector steps is a NaN (0x7f / 0xff), or 2^8·s would not be exact: the
// caller decodes the rows then (NaN codes give NaN there, as in the
// reference). bc: a multiple of 16.
DSV3_AVX2 inline bool fp8_mix_rows(const float* p, int64_t ldp, int64_t n, int64_t m, const uint8_t* w, int64_t ldw,
                                   const float* s, int64_t bc, int64_t width, float* o, int64_t ldo,
                                   float (*scalar)(uint8_t)) {
  for (int64_t cb = 0; cb * bc < width; ++cb)
    if (!(std::fabs(s[cb]) <= 0x1p100f)) return false;
  const int64_t W16 = width / 16 * 16;
  const __m128i low7 = _mm_set1_epi8(0x7f);
  __m128i big = _mm_setzero_si128();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c0 = 0; c0 < W16; c0 += 64) {
      const int nv = int(std::min<int64_t>(4, (W16 - c0) / 16));  // steps of 16 columns in this chunk
      __m256 acc[8], up[4];
      for (int v = 0; v < 8; ++v) acc[v] = _mm256_setzero_ps();
      for (int v = 0; v < nv; ++v) up[v] = _mm256_set1_ps(256.0f * s[(c0 + 16 * v) / bc]);
      for (int64_t j = 0; j < m; ++j) {
        const __m256 pj = _mm256_set1_ps(p[i * ldp + j]);
        const uint8_t* wj = w + j * ldw + c0;
        for (int v = 0; v < nv; ++v) {
          const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wj + 16 * v));
          big = _mm_max_epu8(big, _mm_and_si128(b, low7));
          __m256 lo, hi;
          fp8x16_scaled(b, lo, hi);
          acc[2 * v] = _mm256_fmadd_ps(pj, _mm256_mul_ps(lo, up[v]), acc[2 * v]);
          acc[2 * v + 1] = _mm256_fmadd_ps(pj, _mm256_mul_ps(hi, up[v]), acc[2 * v + 1]);
        }
      }
      for (int v = 0; v < 2 * nv; ++v) _mm256_storeu_ps(o + i * ldo + c0 + 8 * v, acc[v]);
    }
    for (int64_t c = W16; c < width; ++c) {  // (a NaN code is NaN here)
      float t = 0;
      for (int64_t j = 0; j < m; ++j) t = std::fma(p[i * ldp + j], scalar(w[j * ldw + c]) * s[c / bc], t);
      o[i * ldo + c] = t;
    }
  }
  return _mm_movemask_epi8(_mm_cmpeq_epi8(big, low7)) == 0;
}

// A scale or bias as f32: BF16 as the published checkpoints store them, or
// f32 (widened by the caller); 8 of them from p. (few_rows' BF16 b is
// widened by the same two, and so are BF16 and F32 rows: dense_dot_row.)
inline float widen_scale(const float* p) { return *p; }
inline float widen_scale(const uint16_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);  // (no alignment in the mapping)
  return bf16_to_f32(h);
}
DSV3_AVX2 inline __m256 widen_scales8(const float* p) { return _mm256_loadu_ps(p); }
DSV3_AVX2 inline __m256 widen_scales8(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}

// A row of stored weights · x rows, 32 weights a step in four sums: F16
// (AWQ keeps its embedding and lm_head in F16), BF16 or F32, each widened
// exactly; every 64-byte line of the row asked for 4 KB ahead. F16 where
// the AVX2 kernels stream (quant.hpp's avx2_streams()); BF16 and F32 on Zen 4
// only (avx512_preferred() off), where BF16 ran mid bf16 decode 1.38× as
// fast as half_dot_row, and F32 1.09× as fast as four rows at a time and
// 1.25× the AVX-512 loop. CPUs without AVX-512 keep linear.hpp's
// dot_rows_bf16 loop for BF16 and four rows at a time for F32 (+16% on Zen 3).
DSV3_AVX2 inline __m256 f16x8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
enum class RowType { f16, bf16, f32 };
template <RowType T, class W>
DSV3_AVX2 inline __m256 row8(const W* p) {
  if constexpr (T == RowType::f16) return f16x8(p);
  else return widen_scales8(p);  // BF16 (uint16_t) or F32
}
template <RowType T, class W>
DSV3_AVX2 inline void dense_dot_row(const float* x, int64_t n, int64_t K, const W* w, float* out, int64_t stride) {
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * K;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      if (i == 0)
        for (std::size_t b = 0; b < 32 * sizeof(W); b += 64)
          _mm_prefetch(reinterpret_cast<const char*>(w + k) + 4096 + b, _MM_HINT_T0);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xi + k), row8<T>(w + k), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xi + k + 8), row8<T>(w + k + 8), a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(xi + k + 16), row8<T>(w + k + 16), a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(xi + k + 24), row8<T>(w + k + 24), a3);
    }
    float tail = 0;
    for (; k < K; ++k) {
      if constexpr (T == RowType::f16) tail += xi[k] * f16_to_f32(w[k]);
      else tail += xi[k] * widen_scale(w + k);
    }
    out[i * stride] = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))) + tail;
  }
}
DSV3_AVX2 inline void f16_dot_row(const float* x, int64_t n, int64_t K, const uint16_t* w, float* out, int64_t stride) {
  dense_dot_row<RowType::f16>(x, n, K, w, out, stride);
}
DSV3_AVX2 inline void bf16_dot_row(const float* x, int64_t n, int64_t K, const uint16_t* w, float* out, int64_t stride) {
  dense_dot_row<RowType::bf16>(x, n, K, w, out, stride);
}
DSV3_AVX2 inline void f32_dot_row(const float* x, int64_t n, int64_t K, const float* w, float* out, int64_t stride) {
  dense_dot_row<RowType::f32>(x, n, K, w, out, stride);
}

// ---------------------------------------------------------------------------
// MLX affine, groups a multiple of 32: 32 values a step.

// The order (and scale) the 4-bit dot kernel wants x in, per 32 values
// (16 bytes): mlx_x32's in-place route widens the 16 bytes' eight 16-bit
// words to eight lanes, word l holding values 4l … 4l + 3 in its nibbles j =
// 0 … 3, and reads nibble j where it lies, q·2^(4j) (j < 3, a mask) or moved
// to the bottom (j = 3, a shift). So vector j takes values 4l + j, scaled by
// 2^(xexp − 4j) (j < 3) or 2^xexp (j = 3): each product is x·q·2^xexp, as
// before, and exact where x·2^(xexp − 8) stays normal: always with xexp ≠ 0
// (subnormal_exponent gives xexp ≥ 81, so even the least subnormal x is then
// 2^-68), and with xexp = 0 for every |x| ≥ 2^-118.
inline void mlx4_permute(const float* x, int64_t K, float* xp, int xexp) {
  float up[4];
  for (int j = 0; j < 4; ++j) up[j] = std::ldexp(1.0f, xexp - (j < 3 ? 4 * j : 0));
  for (int64_t c = 0; c < K; c += 32)
    for (int j = 0; j < 4; ++j)
      for (int l = 0; l < 8; ++l) xp[c + 8 * j + l] = x[c + 4 * l + j] * up[j];
}

// 5-bit: for the 8 values from 8·h of 16 (10 bytes), lane v takes the two
// bytes from ⌊5·(8h + v)/8⌋ (vpshufb, from the 16 bytes in each half of the
// register), then shifts by 5v mod 8 (the same for h = 0 and 1).
//
// Or (InPlace) no shift: lane v masks its field where it lies, 31·2^(5v mod
// 8), so that it holds q·2^(5v mod 8); x comes with lane v's values scaled by
// 2^-(5v mod 8) to match (mlx5_lane_shift), and each product is the same.
//
// A row's last 32 values (20 bytes): the second 16 bytes are read from p + 4
// instead of p + 10, so that no load passes the row's end (the last row of
// a mapping may end a page), with indices 6 further on (idx_end). The last
// field's second byte (index 10 + 6) is never needed (its 5 bits lie in one
// byte) and reads a byte of the step that its mask then drops.
struct Mlx5Tables2 {
  alignas(32) uint8_t idx[2][32];
  alignas(32) uint8_t idx_end[2][32];
  alignas(32) uint32_t sh[8];
  alignas(32) uint32_t field[8];
  constexpr Mlx5Tables2() : idx(), idx_end(), sh(), field() {
    for (int h = 0; h < 2; ++h)
      for (int v = 0; v < 8; ++v)
        for (int b = 0; b < 4; ++b) {
          const int at = 5 * (8 * h + v) / 8 + b;  // at most 10; b = 1 at 10 only for the last field
          idx[h][4 * v + b] = b < 2 ? uint8_t(at) : uint8_t(0x80);
          idx_end[h][4 * v + b] = b < 2 ? uint8_t(std::min(at + 6, 15)) : uint8_t(0x80);
        }
    for (int v = 0; v < 8; ++v) sh[v] = uint32_t(5 * v % 8), field[v] = 31u << sh[v];
  }
};
// The power of two a 5-bit field in lane (k mod 8) is read at, in place.
inline int mlx5_lane_shift(int64_t k) { return int(5 * (k % 8) % 8); }

// Integer codes in lanes as floats: their value (vcvtdq2ps), or (Sub) their
// bits read as an f32, the subnormal q·2^-149 (exact; no instruction).
template <bool Sub>
DSV3_AVX2 inline __m256 codes(__m256i q) {
  if constexpr (Sub) return _mm256_castsi256_ps(q);
  else return _mm256_cvtepi32_ps(q);
}

// 32 values of a row at p → four vectors of 8 floats (codes<Sub>), in the
// lane order the kernel reads x in (4-bit InPlace: mlx4_permute's, nibble j
// as q·2^(4j); 4-bit otherwise: values 2m and 2m + 1 of 16, for
// mlx_decode_row; 5- and 8-bit: in order). `last`: the row ends within 16
// bytes of p's 20 (5-bit reads its second 16 bytes from p + 4 instead of p +
// 10: Mlx5Tables2). Before, those
// 20 bytes were copied to a buffer first, at every row's last step: the 5-bit
// kernel at K = 192 ran at half the 4-bit one's speed, now 1.74× as fast as
// then (K = 384: 1.42×, 1024: 1.21×; one core, in cache, the same bits).
template <int BITS, bool Sub = false, bool InPlace = false>
DSV3_AVX2 inline void mlx_x32(const uint8_t* p, bool last, __m256& q0, __m256& q1, __m256& q2, __m256& q3) {
  if constexpr (BITS == 4 && InPlace) {
    // (mlx4_permute's order) one vpmovzxwd, three masks and a shift for 32
    // values, where the route below takes two vpmovzxbd, two masks and two
    // shifts: the widening shuffles are what bound it (kernel 27 → 28.5 G
    // weights/s in cache, one Zen 4 core, K = 1024; 18 → 19.2 at K = 192)
    const __m256i A = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    q0 = codes<Sub>(_mm256_and_si256(A, _mm256_set1_epi32(0xF)));
    q1 = codes<Sub>(_mm256_and_si256(A, _mm256_set1_epi32(0xF0)));
    q2 = codes<Sub>(_mm256_and_si256(A, _mm256_set1_epi32(0xF00)));
    q3 = codes<Sub>(_mm256_srli_epi32(A, 12));
  } else if constexpr (BITS == 4) {  // in order of pairs (mlx_decode_row puts them back in order)
    const __m256i mask = _mm256_set1_epi32(15);
    const __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    const __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8)));
    q0 = codes<Sub>(_mm256_and_si256(b0, mask));
    q1 = codes<Sub>(_mm256_srli_epi32(b0, 4));
    q2 = codes<Sub>(_mm256_and_si256(b1, mask));
    q3 = codes<Sub>(_mm256_srli_epi32(b1, 4));
  } else if constexpr (BITS == 8) {
    // 16 bytes in both halves of a vector, a byte to each lane by an in-lane
    // shuffle: 1.01–1.17× the kernel's speed with four vpmovzxbd from memory
    // (one core, Zen 3, K = 192 … 7168), the same lanes
    const __m256i v0 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m256i v1 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)));
    const __m256i i0 = _mm256_setr_epi8(0, -1, -1, -1, 1, -1, -1, -1, 2, -1, -1, -1, 3, -1, -1, -1, 4, -1, -1, -1, 5, -1, -1, -1, 6, -1, -1, -1, 7, -1, -1, -1);
    const __m256i i1 = _mm256_add_epi32(i0, _mm256_set1_epi32(8));
    q0 = codes<Sub>(_mm256_shuffle_epi8(v0, i0));
    q1 = codes<Sub>(_mm256_shuffle_epi8(v0, i1));
    q2 = codes<Sub>(_mm256_shuffle_epi8(v1, i0));
    q3 = codes<Sub>(_mm256_shuffle_epi8(v1, i1));
  } else {
    static_assert(BITS == 5, "MLX stores 4, 5 or 8 bits here");
    static constexpr Mlx5Tables2 t{};
    const __m256i i0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(t.idx[0]));
    const __m256i i1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(t.idx[1]));
    // the second 16 bytes: from p + 10, or (the row's last step) from p + 4 with indices 6 on
    const int back = last ? 6 : 0;
    const __m256i j0 = last ? _mm256_load_si256(reinterpret_cast<const __m256i*>(t.idx_end[0])) : i0;
    const __m256i j1 = last ? _mm256_load_si256(reinterpret_cast<const __m256i*>(t.idx_end[1])) : i1;
    const __m256i r0 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m256i r1 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 10 - back)));
    if constexpr (InPlace) {  // a mask a lane: q·2^(5v mod 8), one instruction fewer than shifting
      const __m256i field = _mm256_load_si256(reinterpret_cast<const __m256i*>(t.field));
      q0 = codes<Sub>(_mm256_and_si256(_mm256_shuffle_epi8(r0, i0), field));
      q1 = codes<Sub>(_mm256_and_si256(_mm256_shuffle_epi8(r0, i1), field));
      q2 = codes<Sub>(_mm256_and_si256(_mm256_shuffle_epi8(r1, j0), field));
      q3 = codes<Sub>(_mm256_and_si256(_mm256_shuffle_epi8(r1, j1), field));
      return;
    }
    const __m256i sh = _mm256_load_si256(reinterpret_cast<const __m256i*>(t.sh));
    const __m256i mask = _mm256_set1_epi32(31);
    q0 = codes<Sub>(_mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(r0, i0), sh), mask));
    q1 = codes<Sub>(_mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(r0, i1), sh), mask));
    q2 = codes<Sub>(_mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(r1, j0), sh), mask));
    q3 = codes<Sub>(_mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(r1, j1), sh), mask));
  }
}

// R consecutive rows (R ≤ 4) of an MLX matrix against n rows of x (x in the
// kernel's order, 4-bit as mlx4_permute orders it, and scaled by 2^xexp),
// as quant_avx512.hpp's mlx_dot_rows: out[i·ldy + r] = Σ_g s_rg·Σ_{k in g}
// x_k·q_rk + Σ_g b_rg·xs[i·ng + g]. Per row: a group's products go into four
// vectors of lanes, s·(their sum) into acc, then (× back, a power of two)
// b·xs eight groups at a time (a last < 8 groups one at a time, after), and
// one horizontal sum. A row's sums do not depend on R.
//
// Sub: the codes are read as the subnormals q·2^-149 (no conversion
// instruction: 9 instead of 13 a run of 32 4-bit values), against x scaled
// by 2^xexp, so each product is x·q·2^(xexp−149) and `back` = 2^(149−xexp)
// undoes it. mlx_prepare picks xexp from the largest |x| so that those
// products and sums stay normal and finite; every sum is then the
// conversion route's, scaled by a power of two: the same bits after `back`.
// InPlace: the codes are left where they lie in their lanes (mlx_x32),
// against x scaled to match by mlx_prepare: 5-bit (where xexp ≠ 0) q·2^(5v
// mod 8) in lane v against x·2^(xexp − (5v mod 8)); 4-bit (always) nibble j
// of a 16-bit word, q·2^(4j), against x·2^(xexp − 4j) (mlx4_permute). The
// same products, so the same bits.
//
// FixedG: the group size known when compiled (64, the published one), so
// that a group's steps are unrolled; the same operations in the same order.
// With MXCSR no longer read per call (denormals_are_zero), this made the
// kernel 1.14–1.6× as fast in cache, one core (4/5/8-bit, K = 192 … 7168),
// and cut mid mlx decode's CPU time by a fifth to a third; either change
// alone gained 0–9% (docs/formats.md §5).
template <int BITS, int R, class S, bool Sub, bool InPlace = false, int FixedG = 0>
DSV3_AVX2 inline void mlx_dot_rows_t(const float* x, const float* xs, int64_t n, int64_t K, int64_t G_,
                                     const uint32_t* w, int64_t pk, const S* sf, const S* bf, float back, float* out,
                                     int64_t ldy) {
  const int64_t G = FixedG > 0 ? FixedG : G_;
  const int64_t ng = K / G, row_bytes = pk * 4;
  const auto* p = reinterpret_cast<const uint8_t*>(w);
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * K;
    __m256 acc[R];
    float tail[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* q = p + r * row_bytes;  // 32 values = 4·BITS bytes a step
      const uint8_t* const end = q + row_bytes;
      const float* xk = xi;
      __m256 a = _mm256_setzero_ps();  // (in a register: acc[r] would be stored and reloaded every group)
      for (int64_t g = 0; g < ng; ++g) {
        // four sums, so that a group's multiply-adds do not wait on each other
        __m256 t0 = _mm256_setzero_ps(), t1 = _mm256_setzero_ps(), t2 = _mm256_setzero_ps(), t3 = _mm256_setzero_ps();
#pragma GCC unroll 2
        for (int64_t k = 0; k < G; k += 32, q += 4 * BITS, xk += 32) {
          if (i == 0 && k == 0) _mm_prefetch(reinterpret_cast<const char*>(q) + 1024, _MM_HINT_T0);  // one a group
          __m256 q0, q1, q2, q3;
          mlx_x32<BITS, Sub, InPlace>(q, BITS == 5 && q + 26 > end, q0, q1, q2, q3);
          t0 = _mm256_fmadd_ps(_mm256_loadu_ps(xk), q0, t0);
          t1 = _mm256_fmadd_ps(_mm256_loadu_ps(xk + 8), q1, t1);
          t2 = _mm256_fmadd_ps(_mm256_loadu_ps(xk + 16), q2, t2);
          t3 = _mm256_fmadd_ps(_mm256_loadu_ps(xk + 24), q3, t3);
        }
        const __m256 t = _mm256_add_ps(_mm256_add_ps(t0, t1), _mm256_add_ps(t2, t3));
        a = _mm256_fmadd_ps(_mm256_set1_ps(widen_scale(sf + r * ng + g)), t, a);
      }
      a = _mm256_mul_ps(a, _mm256_set1_ps(back));
      int64_t g = 0;  // + Σ_g b_rg·xs_g
      for (; g + 8 <= ng; g += 8)
        a = _mm256_fmadd_ps(widen_scales8(bf + r * ng + g), _mm256_loadu_ps(xs + i * ng + g), a);
      acc[r] = a;
      tail[r] = 0;
      for (; g < ng; ++g) tail[r] = std::fma(widen_scale(bf + r * ng + g), xs[i * ng + g], tail[r]);
    }
    hsum_rows<R>(acc, out + i * ldy);
    for (int r = 0; r < R; ++r) out[i * ldy + r] += tail[r];
  }
}

// The kernel for x scaled by 2^xexp: the Sub route where mlx_prepare chose
// one (xexp ≠ 0) and subnormals are read as they are (daz: MXCSR's
// denormals-are-zero on this thread, as -ffast-math programs set it, would
// make every code 0), else the conversion route (× 2^-xexp after). 5-bit
// with xexp ≠ 0, and 4-bit always: x comes scaled per lane too, and either
// route reads the codes in place.
template <int BITS, int R, class S>
DSV3_AVX2 inline void mlx_dot_rows(const float* x, const float* xs, int64_t n, int64_t K, int64_t G,
                                   const uint32_t* w, int64_t pk, const S* sf, const S* bf, int xexp, bool daz,
                                   float* out, int64_t ldy) {
  constexpr bool in_place = BITS == 5 || BITS == 4;  // 5-bit where x is scaled; 4-bit always (mlx4_permute)
  if (xexp != 0 && !daz) {
    if (G == 64)  // (the route nearly every call takes; the others keep G a variable)
      return mlx_dot_rows_t<BITS, R, S, true, in_place, 64>(x, xs, n, K, G, w, pk, sf, bf, pow2f(149 - xexp), out, ldy);
    return mlx_dot_rows_t<BITS, R, S, true, in_place>(x, xs, n, K, G, w, pk, sf, bf, pow2f(149 - xexp), out, ldy);
  }
  // the conversion routes (Intel's AVX2 cores, which have no subnormal codes: xexp = 0), G = 64 compiled in as well
  if (xexp != 0) {
    if (G == 64)
      return mlx_dot_rows_t<BITS, R, S, false, in_place, 64>(x, xs, n, K, G, w, pk, sf, bf, pow2f(-xexp), out, ldy);
    return mlx_dot_rows_t<BITS, R, S, false, in_place>(x, xs, n, K, G, w, pk, sf, bf, pow2f(-xexp), out, ldy);
  }
  constexpr bool in_place4 = BITS == 4;
  if (G == 64) return mlx_dot_rows_t<BITS, R, S, false, in_place4, 64>(x, xs, n, K, G, w, pk, sf, bf, 1.0f, out, ldy);
  mlx_dot_rows_t<BITS, R, S, false, in_place4>(x, xs, n, K, G, w, pk, sf, bf, 1.0f, out, ldy);
}

// The exponent x is scaled by for the Sub routes (quant.hpp's
// subnormal_route_exponent): the largest |x| (amax) to below 2^101, so that
// a product is at most 2^-44 (MLX: x·q·2^(xexp−149), q < 2^8) or 2^-10
// (FP8: x·q·2^(xexp−120), |q| ≤ 448) and its sums stay far from f32's
// largest; terms down to 2^-77 of amax (MLX; FP8's smallest codes: 2^-68)
// stay normal. 0 (the conversion route, x as it is) for amax outside
// [2^-20, 2^20).
inline int subnormal_exponent(float amax) {
  if (!(amax >= 0x1p-20f && amax < 0x1p20f)) return 0;
  return 100 - std::ilogb(amax);
}

// One MLX row decoded to f32, s·q + b (one fused multiply-add), for prefill
// bands and MLA's per-head W_UK / W_UV, in order.
template <int BITS>
DSV3_AVX2 inline void mlx_decode_row(int64_t K, int64_t G, const uint32_t* w, const float* sg, const float* bg,
                                     float* dst) {
  const auto* p = reinterpret_cast<const uint8_t*>(w);
  const int64_t row_bytes = K / 8 * BITS;
  for (int64_t g = 0; g < K / G; ++g) {
    const __m256 s = _mm256_set1_ps(sg[g]), b = _mm256_set1_ps(bg[g]);
    for (int64_t k = g * G; k < (g + 1) * G; k += 32) {
      const int64_t at = k / 8 * BITS;
      __m256 q0, q1, q2, q3;
      mlx_x32<BITS>(p + at, BITS == 5 && at + 26 > row_bytes, q0, q1, q2, q3);
      if constexpr (BITS == 4) {  // lanes hold values 2m (q0, q2) and 2m + 1 (q1, q3): interleave them back
        const __m256 a0 = _mm256_unpacklo_ps(q0, q1), a1 = _mm256_unpackhi_ps(q0, q1);  // 0,1,2,3 | 8,9,10,11 ; 4..7 | 12..15
        const __m256 b0 = _mm256_unpacklo_ps(q2, q3), b1 = _mm256_unpackhi_ps(q2, q3);
        q0 = _mm256_permute2f128_ps(a0, a1, 0x20);
        q1 = _mm256_permute2f128_ps(a0, a1, 0x31);
        q2 = _mm256_permute2f128_ps(b0, b1, 0x20);
        q3 = _mm256_permute2f128_ps(b0, b1, 0x31);
      }
      _mm256_storeu_ps(dst + k, _mm256_fmadd_ps(s, q0, b));
      _mm256_storeu_ps(dst + k + 8, _mm256_fmadd_ps(s, q1, b));
      _mm256_storeu_ps(dst + k + 16, _mm256_fmadd_ps(s, q2, b));
      _mm256_storeu_ps(dst + k + 24, _mm256_fmadd_ps(s, q3, b));
    }
  }
}

// ---------------------------------------------------------------------------
// Nibble j of 8 AWQ words as weights, f16((q − z)·s): fma(q, s, −z·s) when
// `exact` (mzs = −z·s), else (q − z)·s (mzs = z); rounded to f16 and back.
DSV3_AVX2 inline __m256 awq_weights(__m256i q, int j, __m256 s, __m256 mzs, bool exact) {
  const __m256 qf = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srl_epi32(q, _mm_cvtsi32_si128(4 * j)), _mm256_set1_epi32(15)));
  const __m256 v = exact ? _mm256_fmadd_ps(qf, s, mzs) : _mm256_mul_ps(_mm256_sub_ps(qf, mzs), s);
  return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// A band's rows are far apart in memory (a row is all `words` of the
// matrix), and each of them gives the band one 64-byte line: the hardware
// prefetcher does not see that stream. So the kernel asks for row k + 8 of
// its half band (8 words at qh), and for the next band's line of row k (read
// by the next call, which walks the same rows). One core from memory: 3.2–4.2
// → 5.3–5.9 G weights/s, the in-cache speed, on every shape of the mid model
// (Zen 3); prefetch instructions do not fault past the matrix.
//
// A safetensors file aligns its tensors to 8 bytes only (the data follow a
// header of any length), so a half band's 32 bytes may lie across two lines:
// the kernel asks for the line of its last byte too (the same line where
// they do not).
DSV3_AVX2 inline void awq_prefetch(const uint32_t* qh, int64_t k, int64_t words) {
  _mm_prefetch(reinterpret_cast<const char*>(qh + (k + 8) * words), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(qh + (k + 8) * words + 8) - 1, _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(qh + k * words + 16), _MM_HINT_T0);
}

// AWQ int4 along the input, as quant.hpp's awq_dot_group: input rows [k0,
// k1) of one group against a band of nw ≤ 16 words (8·nw columns), acc (per
// x row, [8][16] in nibble order) += x·f16((q − z)·s). Each weight is
// computed: (q − z)·s as fma(q, s, −z·s), which is exact when s has at most
// 11 significant bits (F16 / BF16 scales: z·s and q·s are exact and so is
// their difference; `exact` says so), else as (q − z)·s; then rounded to f16
// and back (vcvtps2ph / vcvtph2ps: round to nearest even, as the
// reference). The band's two halves of 8 words go one after the other, each
// with its 8 nibbles' sums in registers across the group's rows (one x row),
// or in acc (several).
DSV3_AVX2 inline void awq_dot_group(const float* x, int64_t n, int64_t ldx, int64_t k0, int64_t k1,
                                    const uint32_t* qw, int64_t words, int64_t nw, const float* zq, const float* sq,
                                    bool exact, float* acc) {
  for (int64_t h = 0; h * 8 < nw; ++h) {
    const int64_t hw = std::min<int64_t>(8, nw - 8 * h);
    const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(hw)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 s[8], mzs[8];  // the half's scales and −z·s (or z) per nibble
    for (int j = 0; j < 8; ++j) {
      s[j] = _mm256_loadu_ps(sq + 16 * j + 8 * h);
      const __m256 z = _mm256_loadu_ps(zq + 16 * j + 8 * h);
      mzs[j] = exact ? _mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), z), s[j]) : z;
    }
    const uint32_t* qh = qw + 8 * h;
    if (n == 1) {
      __m256 a[8];
      for (int j = 0; j < 8; ++j) a[j] = _mm256_loadu_ps(acc + 16 * j + 8 * h);
      for (int64_t k = k0; k < k1; ++k) {
        awq_prefetch(qh, k, words);
        const __m256i q = _mm256_maskload_epi32(reinterpret_cast<const int*>(qh + k * words), live);
        const __m256 xv = _mm256_set1_ps(x[k]);
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) a[j] = _mm256_fmadd_ps(xv, awq_weights(q, j, s[j], mzs[j], exact), a[j]);
      }
      for (int j = 0; j < 8; ++j) _mm256_storeu_ps(acc + 16 * j + 8 * h, a[j]);
      continue;
    }
    for (int64_t k = k0; k < k1; ++k) {
      awq_prefetch(qh, k, words);
      const __m256i q = _mm256_maskload_epi32(reinterpret_cast<const int*>(qh + k * words), live);
      for (int j = 0; j < 8; ++j) {
        const __m256 v = awq_weights(q, j, s[j], mzs[j], exact);
        for (int64_t i = 0; i < n; ++i) {
          float* a = acc + i * 128 + 16 * j + 8 * h;
          _mm256_storeu_ps(a, _mm256_fmadd_ps(_mm256_set1_ps(x[i * ldx + k]), v, _mm256_loadu_ps(a)));
        }
      }
    }
  }
}

// AWQ's storage read along its rows (quant.hpp's awq_rows_dot): storage
// rows [c0, c1) of one group against the 8·nw columns of the nw ≤ 16 words
// at qw: y[i·ldy + c] += Σ_{l, j} x[i·ldx + 8·l + order[j]]·f16((q − z)·s),
// for n ≤ 4 rows of x. x is first put in nibble order (xp[i][16·j + l]), so
// that each of a row's words gives eight lanes of weights (awq_weights) to
// multiply with a vector of x; one horizontal sum a row. Returns c1.
DSV3_AVX2 inline int64_t awq_rows(const float* x, int64_t ldx, int64_t n, int64_t c0, int64_t c1, const uint32_t* qw,
                                  int64_t words, int64_t nw, const float* zq, const float* sq, bool exact, float* y,
                                  int64_t ldy) {
  static constexpr int kOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};  // AutoAWQ's order_map (quant.hpp's kAwqOrder)
  alignas(32) float xp[4][128], mzs[128];
  for (int64_t i = 0; i < n; ++i)
    for (int j = 0; j < 8; ++j)
      for (int64_t l = 0; l < 16; ++l) xp[i][16 * j + l] = l < nw ? x[i * ldx + 8 * l + kOrder[j]] : 0.0f;
  for (int e = 0; e < 128; ++e) mzs[e] = exact ? -zq[e] * sq[e] : zq[e];
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  // Storage rows lie a whole row of words apart (1 KB for mid's kv_b), each
  // giving one line, or two where the nw words lie across a line's end (a
  // safetensors file aligns tensors to 8 bytes: awq_prefetch): ask for both
  // lines 32 rows ahead (and the first 32 rows' now). Prefetches past the
  // matrix do not fault.
  auto ahead = [&](int64_t c) {  // the first and the last line of row c's nw words
    _mm_prefetch(reinterpret_cast<const char*>(qw + c * words), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(qw + c * words + nw) - 1, _MM_HINT_T0);
  };
  for (int64_t c = c0; c < std::min(c1, c0 + 32); ++c) ahead(c);
  for (int64_t c = c0; c < c1; ++c) {
    ahead(c + 32);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t h = 0; h * 8 < nw; ++h) {
      const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(std::min<int64_t>(8, nw - 8 * h))), iota);
      const __m256i q = _mm256_maskload_epi32(reinterpret_cast<const int*>(qw + c * words + 8 * h), live);
      for (int j = 0; j < 8; ++j) {
        const __m256 w = awq_weights(q, j, _mm256_loadu_ps(sq + 16 * j + 8 * h), _mm256_load_ps(mzs + 16 * j + 8 * h), exact);
        for (int64_t i = 0; i < n; ++i) acc[i] = _mm256_fmadd_ps(_mm256_load_ps(xp[i] + 16 * j + 8 * h), w, acc[i]);
      }
    }
    for (int64_t i = 0; i < n; ++i) y[i * ldy + c] += hsum(acc[i]);
  }
  return c1;
}

// AWQ prefill: one input row's band of nw ≤ 16 words decoded to f32,
// f16((q − z)·s) as the reference rounds it, in nibble order: dst[16·j + l]
// is column 8·l + kAwqOrder[j] of the band (lanes l ≥ nw are 0), as
// quant_avx512.hpp's awq_decode_krow.
DSV3_AVX2 inline void awq_decode_krow(const uint32_t* row, int64_t nw, const float* zq, const float* sq, float* dst) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t h = 0; h < 2; ++h) {
    const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(std::clamp<int64_t>(nw - 8 * h, 0, 8))), iota);
    const __m256i q = _mm256_maskload_epi32(reinterpret_cast<const int*>(row + 8 * h), live);
    for (int j = 0; j < 8; ++j) {
      const __m256 w = awq_weights(q, j, _mm256_loadu_ps(sq + 16 * j + 8 * h), _mm256_loadu_ps(zq + 16 * j + 8 * h), false);
      _mm256_storeu_ps(dst + 16 * j + 8 * h, _mm256_and_ps(w, _mm256_castsi256_ps(live)));
    }
  }
}

// Rows r[0..7] of an 8 × 8 block of floats become its columns.
DSV3_AVX2 inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20), r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20), r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20), r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20), r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// A band's zero points and F16 scales for one group in awq_dot_group's
// layout (nibble order), as quant_avx512.hpp's awq_band_params: zq[16·j +
// l] = nibble j of zero-point word l, sq[16·j + l] = the scale of column
// 8·l + order[j]; lanes l ≥ nw are 0. Vectors throughout: the words'
// nibbles j in eight lanes at a time; word l's 8 scales widened (F16C) as
// row l of two 8 × 8 blocks (words 0–7, 8–15), which are transposed so that
// column order[j] of a block gives sq's lanes. (One element at a time, this
// took 6.5% of mid awq decode on one Zen 3 core; in vectors, 5%.)
DSV3_AVX2 inline void awq_band_params(const uint32_t* zw, int64_t nw, const uint8_t* s16, const int* order, float* zq,
                                      float* sq) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), fifteen = _mm256_set1_epi32(15);
  for (int64_t h = 0; h < 2; ++h) {  // words 8h .. 8h + 7
    const int64_t live_n = std::clamp<int64_t>(nw - 8 * h, 0, 8);
    const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(live_n)), iota);
    const __m256i z = _mm256_maskload_epi32(reinterpret_cast<const int*>(zw + 8 * h), live);  // (0 past nw)
    for (int j = 0; j < 8; ++j)
      _mm256_storeu_ps(zq + 16 * j + 8 * h,
                       _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srl_epi32(z, _mm_cvtsi32_si128(4 * j)), fifteen)));
    __m256 r[8];  // row l: word 8h + l's 8 scales (0 past nw)
    for (int64_t l = 0; l < 8; ++l)
      r[l] = l < live_n ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s16 + 16 * (8 * h + l))))
                        : _mm256_setzero_ps();
    transpose8(r);  // r[c]: column c of each word
    for (int j = 0; j < 8; ++j) _mm256_storeu_ps(sq + 16 * j + 8 * h, r[order[j]]);
  }
}

// ---------------------------------------------------------------------------
// few_rows.hpp's products, eight lanes (b F32, or BF16 as stored: B =
// uint16_t, widened as widen_scales8 / widen_scale widen scales).

// One row of a against one row of b, the first K8 values (a multiple of 8):
// eight lanes, then the horizontal step.
template <class B>
__attribute__((always_inline)) DSV3_AVX2 inline float dot_row8(const float* a, const B* b, int64_t K8) {
  __m256 acc[1] = {_mm256_setzero_ps()};
  for (int64_t k = 0; k < K8; k += 8) acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), widen_scales8(b + k), acc[0]);
  float h;
  hsum_rows<1>(acc, &h);
  return h;
}

// a·bᵀ: four rows of b at a time share each vector of a row of a; the four
// sums end in one horizontal step; the last K mod 8 one at a time, after
// (explicit fused multiply-adds: the same bits for b as F32 or as BF16).
// Four rows of a at a time (MLA's decode: four heads' queries against the
// latent cache) take two rows of b at a time instead, each vector of b
// loaded once for the four: every sum is the same, in the same order.
template <class B>
DSV3_AVX2 inline void rows_dot_rows(const float* a, int64_t lda, int64_t n, int64_t K, const B* b, int64_t ldb,
                                    int64_t m, float* s, int64_t lds) {
  const int64_t K8 = K / 8 * 8;
  auto tail = [&](int64_t i, int64_t j) {  // the last K mod 8 products of row i of a and row j of b
    float t = 0;
    for (int64_t k = K8; k < K; ++k) t = std::fma(a[i * lda + k], widen_scale(b + j * ldb + k), t);
    return t;
  };
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float* a0 = a + i * lda;
    int64_t j = 0;
    for (; j + 2 <= m; j += 2) {
      __m256 c0[4], c1[4];  // rows j and j + 1 of b, against rows i … i + 3 of a
      for (int r = 0; r < 4; ++r) c0[r] = c1[r] = _mm256_setzero_ps();
      for (int64_t k = 0; k < K8; k += 8) {
        const __m256 b0 = widen_scales8(b + j * ldb + k), b1 = widen_scales8(b + (j + 1) * ldb + k);
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) {
          const __m256 x = _mm256_loadu_ps(a0 + r * lda + k);
          c0[r] = _mm256_fmadd_ps(x, b0, c0[r]);
          c1[r] = _mm256_fmadd_ps(x, b1, c1[r]);
        }
      }
      float h0[4], h1[4];
      hsum_rows<4>(c0, h0);
      hsum_rows<4>(c1, h1);
      for (int r = 0; r < 4; ++r) {
        s[(i + r) * lds + j] = h0[r] + tail(i + r, j);
        s[(i + r) * lds + j + 1] = h1[r] + tail(i + r, j + 1);
      }
    }
    for (; j < m; ++j)
      for (int r = 0; r < 4; ++r) s[(i + r) * lds + j] = dot_row8(a0 + r * lda, b + j * ldb, K8) + tail(i + r, j);
  }
  for (; i < n; ++i) {
    const float* ai = a + i * lda;
    int64_t j = 0;
    for (; j + 4 <= m; j += 4) {
      __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      for (int64_t k = 0; k < K8; k += 8) {
        const __m256 x = _mm256_loadu_ps(ai + k);
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) acc[r] = _mm256_fmadd_ps(x, widen_scales8(b + (j + r) * ldb + k), acc[r]);
      }
      float h[4];
      hsum_rows<4>(acc, h);
      for (int r = 0; r < 4; ++r) s[i * lds + j + r] = h[r] + tail(i, j + r);
    }
    for (; j < m; ++j) s[i * lds + j] = dot_row8(ai, b + j * ldb, K8) + tail(i, j);
  }
}

// p·b: up to 64 columns of o held in eight vectors while the rows of b
// stream past, each scaled by its p and added in row order; the last
// width mod 8 columns one at a time, in the same order. Four rows of p at
// a time (MLA's decode: four heads' probabilities over the latent cache)
// take 16 columns at a time instead, each vector of b loaded once for the
// four: every sum is the same, in the same order.
template <class B>
DSV3_AVX2 inline void rows_mix_rows(const float* p, int64_t ldp, int64_t n, int64_t m, const B* b, int64_t ldb,
                                    int64_t width, float* o, int64_t ldo) {
  const int64_t W8 = width / 8 * 8;
  auto tail = [&](int64_t i) {  // the last width mod 8 columns of row i
    for (int64_t c = W8; c < width; ++c) {
      float t = 0;
      for (int64_t j = 0; j < m; ++j) t = std::fma(p[i * ldp + j], widen_scale(b + j * ldb + c), t);
      o[i * ldo + c] = t;
    }
  };
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float* p0 = p + i * ldp;
    for (int64_t c0 = 0; c0 < W8; c0 += 16) {
      const bool two = c0 + 16 <= W8;  // two vectors of columns, or the last one
      __m256 acc[4][2];
      for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
      if (two) {
        for (int64_t j = 0; j < m; ++j) {
          const __m256 b0 = widen_scales8(b + j * ldb + c0), b1 = widen_scales8(b + j * ldb + c0 + 8);
#pragma GCC unroll 4
          for (int r = 0; r < 4; ++r) {
            const __m256 pj = _mm256_set1_ps(p0[r * ldp + j]);
            acc[r][0] = _mm256_fmadd_ps(pj, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(pj, b1, acc[r][1]);
          }
        }
      } else {
        for (int64_t j = 0; j < m; ++j) {
          const __m256 b0 = widen_scales8(b + j * ldb + c0);
#pragma GCC unroll 4
          for (int r = 0; r < 4; ++r) acc[r][0] = _mm256_fmadd_ps(_mm256_set1_ps(p0[r * ldp + j]), b0, acc[r][0]);
        }
      }
      for (int r = 0; r < 4; ++r) {
        _mm256_storeu_ps(o + (i + r) * ldo + c0, acc[r][0]);
        if (two) _mm256_storeu_ps(o + (i + r) * ldo + c0 + 8, acc[r][1]);
      }
    }
    for (int r = 0; r < 4; ++r) tail(i + r);
  }
  for (; i < n; ++i) {
    for (int64_t c0 = 0; c0 < W8; c0 += 64) {
      const int nv = int(std::min<int64_t>(8, (W8 - c0) / 8));
      __m256 acc[8];
      for (int v = 0; v < 8; ++v) acc[v] = _mm256_setzero_ps();
      for (int64_t j = 0; j < m; ++j) {
        const __m256 pj = _mm256_set1_ps(p[i * ldp + j]);
        const B* bj = b + j * ldb + c0;
        if (nv == 8) {
#pragma GCC unroll 8
          for (int v = 0; v < 8; ++v) acc[v] = _mm256_fmadd_ps(pj, widen_scales8(bj + 8 * v), acc[v]);
        } else {
          for (int v = 0; v < nv; ++v) acc[v] = _mm256_fmadd_ps(pj, widen_scales8(bj + 8 * v), acc[v]);
        }
      }
      for (int v = 0; v < nv; ++v) _mm256_storeu_ps(o + i * ldo + c0 + 8 * v, acc[v]);
    }
    tail(i);
  }
}

}  // namespace avx2
#else
// Not x86-64 GCC: avx2_kernels() is false and these are never called.
namespace avx2 {
inline void fp8_decode_row(const uint8_t*, int64_t, const float*, int64_t, float*, float (*)(uint8_t)) {}
inline bool fp8_mix_rows(const float*, int64_t, int64_t, int64_t, const uint8_t*, int64_t, const float*, int64_t,
                         int64_t, float*, int64_t, float (*)(uint8_t)) { return false; }
template <int R, bool Check>
inline bool fp8_dot_rows(const float*, int64_t, int64_t, const uint8_t*, const float*, int64_t, int, bool, float*,
                         int64_t, float (*)(uint8_t)) { return false; }
inline bool denormals_are_zero() { return false; }
inline bool abs_max_finite(const float*, int64_t, float&) { return false; }
inline void f16_dot_row(const float*, int64_t, int64_t, const uint16_t*, float*, int64_t) {}
inline void bf16_dot_row(const float*, int64_t, int64_t, const uint16_t*, float*, int64_t) {}
inline void f32_dot_row(const float*, int64_t, int64_t, const float*, float*, int64_t) {}
inline void mlx4_permute(const float*, int64_t, float*, int) {}
inline int mlx5_lane_shift(int64_t) { return 0; }
template <int BITS, int R, class S>
inline void mlx_dot_rows(const float*, const float*, int64_t, int64_t, int64_t, const uint32_t*, int64_t,
                         const S*, const S*, int, bool, float*, int64_t) {}
inline int subnormal_exponent(float) { return 0; }
template <int BITS>
inline void mlx_decode_row(int64_t, int64_t, const uint32_t*, const float*, const float*, float*) {}
inline void awq_dot_group(const float*, int64_t, int64_t, int64_t, int64_t, const uint32_t*, int64_t, int64_t,
                          const float*, const float*, bool, float*) {}
inline void awq_band_params(const uint32_t*, int64_t, const uint8_t*, const int*, float*, float*) {}
inline void awq_decode_krow(const uint32_t*, int64_t, const float*, const float*, float*) {}
inline int64_t awq_rows(const float*, int64_t, int64_t, int64_t c0, int64_t, const uint32_t*, int64_t, int64_t,
                        const float*, const float*, bool, float*, int64_t) { return c0; }
template <class B>
inline void rows_dot_rows(const float*, int64_t, int64_t, int64_t, const B*, int64_t, int64_t, float*, int64_t) {}
template <class B>
inline void rows_mix_rows(const float*, int64_t, int64_t, int64_t, const B*, int64_t, int64_t, float*, int64_t) {}
}  // namespace avx2
#endif

}  // namespace dsv3::cpu
