// dsv3/cpu/quant_avx512.hpp — AVX-512 versions of the quantized-format
// kernels whose plain loops (quant.hpp) the compiler cannot vectorise well:
// the conversions that x86 has instructions for (F16C's vcvtph2ps /
// vcvtps2ph, VBMI's byte permute and multishift for 5-bit streams).
//
// Each computes what its plain twin in quant.hpp computes, in the same
// order of blocks and groups (lanes differ), and is chosen at run time when
// the CPU has the instructions (avx512_kernels()); tests/test_backend_ops.cpp
// runs the op suite with them on and off.
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
#include <cpuid.h>
#define DSV3_HAVE_AVX512_KERNELS 1
#define DSV3_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,f16c,fma")))
#endif

namespace dsv3::cpu {

// Whether the AVX-512 kernels run: the CPU has AVX-512 F/BW/VL/VBMI, F16C
// and FMA. A program (or test) may set it to false to run the plain loops.
inline bool& avx512_kernels() {
#ifdef DSV3_HAVE_AVX512_KERNELS
  static bool on = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi") &&
                   __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
#else
  static bool on = false;
#endif
  return on;
}

// Whether the kernels that stream weights through decode take their AVX-512
// versions where avx512_kernels() is on, or their AVX2 ones: the stored
// formats' (FP8, AWQ, MLX: quant.hpp) and the dense rows' (BF16, F16, F32:
// linear.hpp). Off on AMD's family 25 with AVX-512 (Zen 4; Zen 3, also
// family 25, has none), which runs each 512-bit instruction as two 256-bit
// halves. There the AVX2 kernels decoded the mid model 1.14× (fp8) to 1.44×
// (awq) as fast, mlx4 as fast, and bf16 1.38× (docs/formats.md §5); prefill
// (which decodes bands for BLAS) ran as fast. The few-row attention products
// keep AVX-512 there, and so does AWQ's decode kernel (awq_groups_tr: a
// table of each column's 16 weights, where the AVX2 kernel rounds every
// weight to f16 itself; docs/formats.md §5). A program (or test) may set it.
inline bool& avx512_preferred() {
#ifdef DSV3_HAVE_AVX512_KERNELS
  static bool on = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__builtin_cpu_is("amd") || !__get_cpuid(1, &a, &b, &c, &d)) return true;
    const unsigned family = ((a >> 8) & 0xF) + ((a >> 8 & 0xF) == 0xF ? (a >> 20) & 0xFF : 0);
    return family != 25;
  }();
#else
  static bool on = true;  // (no AVX-512 kernels: never read)
#endif
  return on;
}

#ifdef DSV3_HAVE_AVX512_KERNELS
namespace avx512 {

DSV3_AVX512 inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

// The first min(n, 16) of 16 lanes (none for n ≤ 0): masked loads of a tail.
inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n > 0 ? __mmask16((1u << n) - 1u) : __mmask16(0);
}

// out[r] = the sum of v[r]'s 16 lanes, for R ≤ 4 vectors at once, in one
// order whatever R is (halves, then quarters, then pairs of lanes):
// 512 → 256 for two vectors per shuffle pair, 256 → 128 for four, then
// within each 128-bit lane.
template <int R>
DSV3_AVX512 inline void hsum_rows(const __m512* v, float* out) {
  const __m512 z = _mm512_setzero_ps();
  const __m512 a0 = v[0], a1 = R > 1 ? v[1] : z, a2 = R > 2 ? v[2] : z, a3 = R > 3 ? v[3] : z;
  const __m512 b01 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, 0x44), _mm512_shuffle_f32x4(a0, a1, 0xEE));  // [lo+hi of a0 | of a1]
  const __m512 b23 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, 0x44), _mm512_shuffle_f32x4(a2, a3, 0xEE));
  const __m512 c = _mm512_add_ps(_mm512_shuffle_f32x4(b01, b23, 0x88), _mm512_shuffle_f32x4(b01, b23, 0xDD));  // 128-bit lane r: row r
  const __m512 d = _mm512_add_ps(c, _mm512_permute_ps(c, 0x4E));
  const __m512 e = _mm512_add_ps(d, _mm512_permute_ps(d, 0xB1));
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, e);
  for (int r = 0; r < R; ++r) out[r] = lanes[4 * r];
}

// 32 FP8 e4m3 codes → two vectors of 16 floats, each 2^-8 times the code's
// value: the code's sign, exponent and mantissa fields moved into an f16
// (exponent bias 15 instead of 7, subnormals included), then vcvtph2ps.
// Sign-extended to 16 bits and shifted left by 7, the sign lands on bit 15
// (and 14, cleared), exponent and mantissa on bits 7..13.
DSV3_AVX512 inline void fp8x32_scaled(__m256i b, __m512& lo, __m512& hi) {
  const __m512i h = _mm512_and_si512(_mm512_slli_epi16(_mm512_cvtepi8_epi16(b), 7), _mm512_set1_epi16(short(0xBFFF)));
  lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
  hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
}
DSV3_AVX512 inline void fp8x32_scaled(const uint8_t* p, __m512& lo, __m512& hi) {
  fp8x32_scaled(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), lo, hi);
}

// FP8 row · x rows, as quant.hpp's fp8_dot_row: per column block
// s·Σ x·q. Runs of 64 codes, then of 32, in vectors; a block's last < 32
// codes one at a time. Any NaN code (0x7f / 0xff) makes the result NaN, as
// in the reference (the largest of code & 0x7f, kept per byte lane).
DSV3_AVX512 inline void fp8_dot_row(const float* x, int64_t n, int64_t K, const uint8_t* w, const float* s,
                                    int64_t bc, float* out, int64_t stride, float (*scalar)(uint8_t)) {
  const __m512i low7 = _mm512_set1_epi8(0x7f);
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * K;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    float tail = 0;
    __m512i big = _mm512_setzero_si512();
    for (int64_t c0 = 0, cb = 0; c0 < K; c0 += bc, ++cb) {
      const int64_t c1 = std::min(K, c0 + bc);
      __m512 t0 = _mm512_setzero_ps(), t1 = _mm512_setzero_ps();
      int64_t k = c0;
      for (; k + 64 <= c1; k += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(w + k) + 4096, _MM_HINT_T0);
        big = _mm512_max_epu8(big, _mm512_and_si512(_mm512_loadu_si512(w + k), low7));  // 0x7f: a NaN code
        __m512 q0, q1, q2, q3;
        fp8x32_scaled(w + k, q0, q1);
        fp8x32_scaled(w + k + 32, q2, q3);
        t0 = _mm512_fmadd_ps(_mm512_loadu_ps(xi + k), q0, t0);
        t1 = _mm512_fmadd_ps(_mm512_loadu_ps(xi + k + 16), q1, t1);
        t0 = _mm512_fmadd_ps(_mm512_loadu_ps(xi + k + 32), q2, t0);
        t1 = _mm512_fmadd_ps(_mm512_loadu_ps(xi + k + 48), q3, t1);
      }
      for (; k + 32 <= c1; k += 32) {
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k));
        big = _mm512_max_epu8(big, _mm512_zextsi256_si512(_mm256_and_si256(b, _mm256_set1_epi8(0x7f))));
        __m512 lo, hi;
        fp8x32_scaled(b, lo, hi);
        t0 = _mm512_fmadd_ps(_mm512_loadu_ps(xi + k), lo, t0);
        t1 = _mm512_fmadd_ps(_mm512_loadu_ps(xi + k + 16), hi, t1);
      }
      const __m512 sv = _mm512_set1_ps(s[cb] * 256.0f);  // × 2^8 undoes the f16 exponent offset
      acc0 = _mm512_fmadd_ps(sv, t0, acc0);
      acc1 = _mm512_fmadd_ps(sv, t1, acc1);
      float t = 0;
      for (; k < c1; ++k) t += xi[k] * scalar(w[k]);
      tail += s[cb] * t;
    }
    const bool nan = _mm512_cmpeq_epi8_mask(big, low7) != 0;
    out[i * stride] = nan ? std::numeric_limits<float>::quiet_NaN() : hsum(_mm512_add_ps(acc0, acc1)) + tail;
  }
}

// One FP8 row decoded to f32, q·s per column block (the reference's
// values: q·s is one rounding either way), 32 codes at a time.
DSV3_AVX512 inline void fp8_decode_row(const uint8_t* w, int64_t K, const float* s, int64_t bc, float* dst,
                                       float (*scalar)(uint8_t)) {
  for (int64_t c0 = 0, cb = 0; c0 < K; c0 += bc, ++cb) {
    const int64_t c1 = std::min(K, c0 + bc);
    const __m512 sv = _mm512_set1_ps(s[cb]);
    int64_t k = c0;
    for (; k + 32 <= c1; k += 32) {
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k));
      __m512 lo, hi;
      fp8x32_scaled(b, lo, hi);  // 2^-8 · value: exact, then × 2^8 · s below rounds once, as q·s does
      lo = _mm512_mul_ps(_mm512_mul_ps(lo, _mm512_set1_ps(256.0f)), sv);
      hi = _mm512_mul_ps(_mm512_mul_ps(hi, _mm512_set1_ps(256.0f)), sv);
      const __mmask32 nan = _mm256_cmpeq_epi8_mask(_mm256_and_si256(b, _mm256_set1_epi8(0x7f)), _mm256_set1_epi8(0x7f));
      _mm512_storeu_ps(dst + k, _mm512_mask_mov_ps(lo, __mmask16(nan), _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN())));
      _mm512_storeu_ps(dst + k + 16, _mm512_mask_mov_ps(hi, __mmask16(nan >> 16), _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN())));
    }
    for (; k < c1; ++k) dst[k] = scalar(w[k]) * s[cb];
  }
}

// 16 BF16 weights widened exactly: vpmovzxwd and a 16-bit shift.
DSV3_AVX512 inline __m512 bf16x16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
// 16 F16 weights widened exactly: vcvtph2ps.
DSV3_AVX512 inline __m512 f16x16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

template <bool F16>
DSV3_AVX512 inline __m512 half16(const uint16_t* p) {
  if constexpr (F16) return f16x16(p);
  else return bf16x16(p);
}

// A BF16 (F16 = false) or F16 row · x rows (F16: AWQ keeps its embedding
// and lm_head in F16).
template <bool F16>
DSV3_AVX512 inline void half_dot_row(const float* x, int64_t n, int64_t K, const uint16_t* w, float* out,
                                     int64_t stride) {
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * K;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
      if (i == 0) {  // both lines of the step's 128 bytes, 4 KB ahead
        _mm_prefetch(reinterpret_cast<const char*>(w + k) + 4096, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(w + k) + 4096 + 64, _MM_HINT_T0);
      }
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xi + k), half16<F16>(w + k), a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(xi + k + 16), half16<F16>(w + k + 16), a1);
      a2 = _mm512_fmadd_ps(_mm512_loadu_ps(xi + k + 32), half16<F16>(w + k + 32), a2);
      a3 = _mm512_fmadd_ps(_mm512_loadu_ps(xi + k + 48), half16<F16>(w + k + 48), a3);
    }
    float tail = 0;
    for (; k < K; ++k) tail += xi[k] * (F16 ? f16_to_f32(w[k]) : bf16_to_f32(w[k]));
    out[i * stride] = hsum(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3))) + tail;
  }
}

// MLX 4-bit in order (mlx_x64_ps, for decoding rows), groups a multiple of
// 64: 64 values (8·BITS bytes) at a time. vpermb gives each 64-bit lane l
// the 8 bytes from BITS·l, vpmultishiftqb takes the 8 bits at offset BITS·i
// of that lane into byte i (value 8·l + i), & mask.
template <int BITS>
struct MlxTables {
  alignas(64) uint8_t idx[64], sh[64];
  constexpr MlxTables() : idx(), sh() {
    for (int l = 0; l < 8; ++l)
      for (int i = 0; i < 8; ++i) {
        idx[8 * l + i] = uint8_t(BITS * l + i);
        sh[8 * l + i] = uint8_t(BITS * i);
      }
  }
};

template <int BITS>
DSV3_AVX512 inline __m512i mlx_x64(const uint8_t* p) {
  static_assert(BITS < 8, "8-bit values are the bytes themselves");
  const __m512i raw = _mm512_maskz_loadu_epi8((__mmask64(1) << (8 * BITS)) - 1, p);
  static constexpr MlxTables<BITS> t{};
  const __m512i lanes = _mm512_permutexvar_epi8(_mm512_load_si512(t.idx), raw);
  return _mm512_and_si512(_mm512_multishift_epi64_epi8(_mm512_load_si512(t.sh), lanes),
                          _mm512_set1_epi8(char((1 << BITS) - 1)));
}

// One AWQ column's 16 weights in a group, f16((q − z)·s) for q = 0..15,
// rounded as the reference rounds them: the table vpermps looks nibbles up in.
DSV3_AVX512 inline __m512 awq_table(float z, float s) {
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 v = _mm512_mul_ps(_mm512_sub_ps(iota, _mm512_set1_ps(z)), _mm512_set1_ps(s));
  return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
// The tables of nw ≤ 16 words' columns, lut[(8·l + j)·16 + q], from zero
// points and scales in awq_band_params's layout.
DSV3_AVX512 inline void awq_tables(const float* zq, const float* sq, int64_t nw, float* lut) {
  for (int64_t l = 0; l < nw; ++l)
    for (int j = 0; j < 8; ++j) _mm512_storeu_ps(lut + (l * 8 + j) * 16, awq_table(zq[j * 16 + l], sq[j * 16 + l]));
}
// The gather indices of 16 consecutive storage rows of `words` words.
DSV3_AVX512 inline __m512i awq_row_offsets(int64_t words) {
  return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                            _mm512_set1_epi32(int(words)));
}
// A word's 8 columns of lanes summed (two hsum_rows steps) into acc[16·j]
// (nibble order, the word's lane), with `tail`, the sums of the rows done
// one at a time, added.
DSV3_AVX512 inline void awq_add_word(const __m512* a, const float* tail, float* acc) {
  float sum[8];
  hsum_rows<4>(a, sum);
  hsum_rows<4>(a + 4, sum + 4);
  for (int j = 0; j < 8; ++j) acc[j * 16] += sum[j] + tail[j];
}

// AWQ along the input: input rows [k0, k1), groups of G from k0, against a
// band of nw ≤ 16 words (8·nw output columns). For each column word l and
// nibble j, a group's 16 possible weights f16((q − z)·s) (q = 0..15) are a
// table in one register; vpermps looks them up for 16 input rows at a time
// (a gather brings the 16 rows' words of column word l, and vpermps reads
// only an index's low 4 bits, so a shift isolates a nibble). The 8 columns'
// sums of a word stay in lanes across all the groups, and end in two
// horizontal steps: acc[i][j][l] += Σ_k x[i,k]·w, in nibble order (column
// 8·l + kAwqOrder[j]). params: per group (in order from k0) 128 zero points
// then 128 scales, as awq_band_params lays them out. Rows of a group past
// its last multiple of 16 (a group size not a multiple of 16) go one at a
// time through the same tables.
DSV3_AVX512 inline void awq_groups_lut(const float* x, int64_t n, int64_t K, int64_t k0, int64_t k1, int64_t G,
                                       const uint32_t* qw, int64_t words, int64_t nw, const float* params,
                                       float* acc) {
  const __m512i rows = awq_row_offsets(words);
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * K;
    for (int64_t l = 0; l < nw; ++l) {
      __m512 a[8];
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) a[j] = _mm512_setzero_ps();
      float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      const float* zq = params;
      for (int64_t g0 = k0; g0 < k1; g0 += G, zq += 256) {
        const int64_t g1 = std::min(k1, g0 + G);
        __m512 t[8];
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) t[j] = awq_table(zq[j * 16 + l], zq[128 + j * 16 + l]);
        int64_t k = g0;
        for (; k + 16 <= g1; k += 16) {
          const __m512i q = _mm512_i32gather_epi32(rows, reinterpret_cast<const int*>(qw + k * words + l), 4);
          const __m512 xv = _mm512_loadu_ps(xi + k);
#pragma GCC unroll 8
          for (int j = 0; j < 8; ++j)
            a[j] = _mm512_fmadd_ps(xv, _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4 * j), t[j]), a[j]);
        }
        if (k < g1) {
          alignas(64) float tb[8][16];
          for (int j = 0; j < 8; ++j) _mm512_store_ps(tb[j], t[j]);
          for (; k < g1; ++k) {
            uint32_t q;
            std::memcpy(&q, qw + k * words + l, 4);  // (no alignment in the mapping)
            // std::fma written out, here and in the other table kernels' row-at-a-time sums: left
            // as `+= x·w`, GCC (-ffp-contract=fast) fused it in one compiled copy of a kernel and
            // not in another (a clone for constant arguments), and the same call gave other bits
            for (int j = 0; j < 8; ++j) tail[j] = std::fma(xi[k], tb[j][(q >> (4 * j)) & 15u], tail[j]);
          }
        }
      }
      awq_add_word(a, tail, acc + i * 128 + l);
    }
  }
}

// awq_groups_lut for rows that crowd L1's sets (quant.hpp's awq_wide):
// the same sums, the rows taken 32 at a time across every word of the band,
// each word's 8 vectors of lanes kept in `lanes` ([i][l][j][16]) between
// chunks and the tables in `lut` ([l][j][16], built once a group). A word's
// pass over a whole group of rows spaced 512 bytes or more apart would
// fall into a few of L1's sets and miss L1 on every pass; 32 rows stay in
// it. acc, params, x as awq_groups_lut.
DSV3_AVX512 inline void awq_groups_lut_wide(const float* x, int64_t n, int64_t K, int64_t k0, int64_t k1, int64_t G,
                                            const uint32_t* qw, int64_t words, int64_t nw, const float* params,
                                            float* lut, float* lanes, float* acc) {
  const __m512i rows = awq_row_offsets(words);
  float tail[4][16][8] = {};
  for (int64_t e = 0; e < n * 2048; e += 16) _mm512_storeu_ps(lanes + e, _mm512_setzero_ps());
  for (int64_t g0 = k0; g0 < k1; g0 += G, params += 256) {
    const int64_t g1 = std::min(k1, g0 + G), full = g0 + (g1 - g0) / 16 * 16;  // rows [g0, full) in blocks of 16
    awq_tables(params, params + 128, nw, lut);
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = x + i * K;
      for (int64_t c0 = g0; c0 < full; c0 += 32) {
        const int64_t c1 = std::min(full, c0 + 32);
        for (int64_t l = 0; l < nw; ++l) {
          float* la = lanes + i * 2048 + l * 128;
          const float* t = lut + l * 128;
          __m512 a[8];
#pragma GCC unroll 8
          for (int j = 0; j < 8; ++j) a[j] = _mm512_loadu_ps(la + 16 * j);
          for (int64_t k = c0; k < c1; k += 16) {
            const __m512i q = _mm512_i32gather_epi32(rows, reinterpret_cast<const int*>(qw + k * words + l), 4);
            const __m512 xv = _mm512_loadu_ps(xi + k);
#pragma GCC unroll 8
            for (int j = 0; j < 8; ++j)
              a[j] = _mm512_fmadd_ps(xv, _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4 * j), _mm512_loadu_ps(t + 16 * j)), a[j]);
          }
#pragma GCC unroll 8
          for (int j = 0; j < 8; ++j) _mm512_storeu_ps(la + 16 * j, a[j]);
        }
      }
      for (int64_t k = full; k < g1; ++k)
        for (int64_t l = 0; l < nw; ++l) {
          uint32_t q;
          std::memcpy(&q, qw + k * words + l, 4);  // (no alignment in the mapping)
          for (int j = 0; j < 8; ++j) tail[i][l][j] = std::fma(xi[k], lut[(l * 8 + j) * 16 + ((q >> (4 * j)) & 15u)], tail[i][l][j]);
        }
    }
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t l = 0; l < nw; ++l) {
      __m512 a[8];
      for (int j = 0; j < 8; ++j) a[j] = _mm512_loadu_ps(lanes + i * 2048 + l * 128 + 16 * j);
      awq_add_word(a, tail[i][l], acc + i * 128 + l);
    }
}

// 16 rows of 16 words become 16 vectors of one word each: r[l]'s lane m is
// word l of row m. Four rounds of 16 two-vector shuffles: pairs of rows
// (32-bit interleave), fours (64-bit), then 128-bit lanes twice.
DSV3_AVX512 inline void transpose16(__m512i r[16]) {
  __m512i a[16], b[16];
  for (int i = 0; i < 16; i += 2) {
    a[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);      // lane L: words 4L, 4L + 1 of rows i, i + 1
    a[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);  // words 4L + 2, 4L + 3
  }
  for (int i = 0; i < 16; i += 4) {  // b[i + c], lane L: word 4L + c of rows i .. i + 3
    b[i] = _mm512_unpacklo_epi64(a[i], a[i + 2]);
    b[i + 1] = _mm512_unpackhi_epi64(a[i], a[i + 2]);
    b[i + 2] = _mm512_unpacklo_epi64(a[i + 1], a[i + 3]);
    b[i + 3] = _mm512_unpackhi_epi64(a[i + 1], a[i + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i e0 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0x44), e1 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0xEE);
    const __m512i f0 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0x44), f1 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0xEE);
    r[c] = _mm512_shuffle_i32x4(e0, f0, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(e0, f0, 0xDD);
    r[8 + c] = _mm512_shuffle_i32x4(e1, f1, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(e1, f1, 0xDD);
  }
}

// f16_to_f32(f32_to_f16(v)) for v = (q − z)·s computed exactly (an F16 or
// BF16 scale s with 2^-14 ≤ |s| ≤ 4366, or 0: the weight is 0 or a normal
// f16), in three operations instead of two conversions: Veltkamp's split,
// c = v·(2^13 + 1), v rounded to 24 − 13 = 11 significant bits is c − (c −
// v). Round to nearest, ties to even, as vcvtps2ph: the same value for every
// such product (tests/test_backend_ops.cpp tries each f16 scale). The empty
// asm keeps the compiler from fusing c − v into an fma (-ffp-contract),
// which would give v back.
DSV3_AVX512 inline __m512 round_f16_normal(__m512 v) {
  __m512 c = _mm512_mul_ps(v, _mm512_set1_ps(8193.0f));
  asm("" : "+v"(c));
  return _mm512_sub_ps(c, _mm512_sub_ps(c, v));
}
// Whether every scale of a band's group (128, awq_band_params's layout) is
// one that round_f16_normal takes: 2^-14 ≤ |s| ≤ 4366 (15·4366 < 65504), or 0.
DSV3_AVX512 inline bool awq_scales_normal(const float* sq) {
  __mmask16 bad = 0;
  for (int e = 0; e < 128; e += 16) {
    const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(sq + e));
    const __mmask16 in = _mm512_cmp_ps_mask(a, _mm512_set1_ps(0x1p-14f), _CMP_GE_OQ) &
                         _mm512_cmp_ps_mask(a, _mm512_set1_ps(4366.0f), _CMP_LE_OQ);
    bad |= __mmask16(~in & ~_mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_EQ_OQ));
  }
  return bad == 0;
}

// Whether a group's tables take round_f16_normal (`exact` products and
// awq_scales_normal); if so, mzs[e] = −z·s for its 128 columns.
DSV3_AVX512 inline bool awq_normal_tables(bool exact, const float* zq, const float* sq, float* mzs) {
  if (!exact || !awq_scales_normal(sq)) return false;
  for (int e = 0; e < 128; e += 16)
    _mm512_storeu_ps(mzs + e, _mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_loadu_ps(zq + e)), _mm512_loadu_ps(sq + e)));
  return true;
}

// Column e's table (awq_band_params's layout, e = 16·j + l): its 16 weights
// f16((q − z)·s), by round_f16_normal from mzs = −z·s where the group's
// scales allow (`normal`), else by awq_table's conversions.
DSV3_AVX512 inline __m512 awq_column_table(bool normal, const float* zq, const float* sq, const float* mzs, int64_t e) {
  if (!normal) return awq_table(zq[e], sq[e]);
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  return round_f16_normal(_mm512_fmadd_ps(iota, _mm512_set1_ps(sq[e]), _mm512_set1_ps(mzs[e])));
}

// AWQ along the input with awq_groups_lut's tables and sums, the words
// brought into lanes by transposes instead of gathers (slow on AMD's CPUs):
// the kernel AWQ decode runs there. Input rows [k0, k1), groups of G from
// k0, against a band of nw ≤ 16 words; params, acc as awq_groups_lut's.
// A group's rows go in chunks of at most 128. Each block of 16 rows of the
// band (one or two lines a row) is loaded once, transposed (transpose16)
// and stored word by word into `tw` ([16][128], 64-byte aligned); then for
// each word l, its 8 columns' tables (built once a chunk: awq_column_table)
// look up the nibbles of 16 rows at a time. A word's lanes wait in `lanes`
// ([n][16][8][16]) from one chunk to the next. Each lane adds the same
// products in the same order as awq_groups_lut's, so the two give the same
// bits; no weight is rounded on its own (a table holds a column's 16
// weights for a group's rows), where the AVX2 kernel rounds each one.
// `exact`: (q − z)·s is one exact fma (quant.hpp's awq_fma_exact).
//
// Memory: a band's rows lie a whole row of words apart, one or two lines
// each (two unless the tensor is line-aligned: a safetensors file aligns to
// 8 bytes). `first`: the unit's first band, whose lines no earlier call
// asked for: while a block is loaded, the kernel asks for both lines of the
// row 16 on. Every call asks (into L2) for the next band's last line of each
// of its rows (the next call walks the same rows; its first line is this
// band's last), a few rows a word's pass, so that the requests do not queue
// up behind each other: all of them while the blocks were loaded (an
// earlier version) left the kernel waiting on its prefetches in situ.
DSV3_AVX512 inline void awq_groups_tr(const float* x, int64_t n, int64_t ldx, int64_t k0, int64_t k1, int64_t G,
                                      const uint32_t* qw, int64_t words, int64_t nw, const float* params, bool exact,
                                      bool first, uint32_t* tw, float* lanes, float* acc) {
  constexpr int64_t kChunk = 128;
  const __mmask16 live = first_lanes(nw);
  float tail[4][16][8];  // rows past a group's last block (G not a multiple of 16)
  if (G % 16) std::memset(tail, 0, sizeof(tail));
  alignas(64) float mzs[128];
  for (int64_t g0 = k0; g0 < k1; g0 += G, params += 256) {
    const int64_t g1 = std::min(k1, g0 + G), full = g0 + (g1 - g0) / 16 * 16;  // rows [g0, full) in blocks of 16
    const float *zq = params, *sq = params + 128;
    const bool normal = awq_normal_tables(exact, zq, sq, mzs);
    for (int64_t c0 = g0; c0 < full; c0 += kChunk) {
      const int64_t c1 = std::min(full, c0 + kChunk);
      for (int64_t k = c0; k < c1; k += 16) {
        __m512i r[16];
        for (int m = 0; m < 16; ++m) {
          const uint32_t* row = qw + (k + m) * words;
          if (first) {
            _mm_prefetch(reinterpret_cast<const char*>(row + 16 * words), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(row + 16 * words + 16) - 1, _MM_HINT_T0);
          }
          r[m] = _mm512_maskz_loadu_epi32(live, row);
        }
        transpose16(r);
        for (int64_t l = 0; l < nw; ++l) _mm512_store_si512(tw + l * kChunk + (k - c0), r[l]);
      }
      const int64_t per_l = (c1 - c0 + nw - 1) / nw;  // rows whose next band's line each word's pass asks for
      for (int64_t i = 0; i < n; ++i) {
        const float* xi = x + i * ldx;
        for (int64_t l = 0; l < nw; ++l) {
          if (i == 0)
            for (int64_t k = c0 + l * per_l; k < std::min(c1, c0 + (l + 1) * per_l); ++k)
              _mm_prefetch(reinterpret_cast<const char*>(qw + k * words + 32) - 1, _MM_HINT_T1);
          float* la = lanes + i * 2048 + l * 128;
          const uint32_t* tl = tw + l * kChunk - c0;
          __m512 a[8], t[8];
#pragma GCC unroll 8
          for (int j = 0; j < 8; ++j) {  // (the call's first chunk starts the lanes)
            a[j] = c0 == k0 ? _mm512_setzero_ps() : _mm512_loadu_ps(la + 16 * j);
            t[j] = awq_column_table(normal, zq, sq, mzs, j * 16 + l);
          }
          for (int64_t k = c0; k < c1; k += 16) {
            __m512i q = _mm512_load_si512(tl + k);
            const __m512 xv = _mm512_loadu_ps(xi + k);
#pragma GCC unroll 8
            for (int j = 0; j < 8; ++j, q = _mm512_srli_epi32(q, 4))
              a[j] = _mm512_fmadd_ps(xv, _mm512_permutexvar_ps(q, t[j]), a[j]);
          }
#pragma GCC unroll 8
          for (int j = 0; j < 8; ++j) _mm512_storeu_ps(la + 16 * j, a[j]);
        }
      }
    }
    if (full < g1)  // rows past the group's last multiple of 16, one at a time through the same tables
      for (int64_t l = 0; l < nw; ++l) {
        alignas(64) float tb[8][16];
        for (int j = 0; j < 8; ++j) _mm512_store_ps(tb[j], awq_column_table(normal, zq, sq, mzs, j * 16 + l));
        for (int64_t k = full; k < g1; ++k) {
          uint32_t q;
          std::memcpy(&q, qw + k * words + l, 4);  // (no alignment in the mapping)
          for (int64_t i = 0; i < n; ++i)
            for (int j = 0; j < 8; ++j) tail[i][l][j] = std::fma(x[i * ldx + k], tb[j][(q >> (4 * j)) & 15u], tail[i][l][j]);
        }
      }
  }
  static const float none[8] = {};
  const bool blocks = std::min(G, k1 - k0) >= 16;  // whether the first group had a block (and so `lanes` holds sums)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t l = 0; l < nw; ++l) {
      __m512 a[8];
      for (int j = 0; j < 8; ++j) a[j] = blocks ? _mm512_loadu_ps(lanes + i * 2048 + l * 128 + 16 * j) : _mm512_setzero_ps();
      awq_add_word(a, G % 16 ? tail[i][l] : none, acc + i * 128 + l);
    }
}

// One word's 8 columns for 16 storage rows (q: word l of each row, in the
// lanes), against x's 8 values of that word (xl = x + 8·l): each column's
// table t[16·j ..] (awq_tables' layout) looked up for the 16 rows, times
// x[kAwqOrder[j]], into acc0 (even nibbles) and acc1 (odd ones). The step of
// both row kernels (awq_rows_lut, awq_rows_tr), so that they add the same
// products in the same order.
DSV3_AVX512 inline void awq_rows_word(__m512i q, const float* t, const float* xl, __m512& acc0, __m512& acc1) {
  static constexpr int kOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};  // AutoAWQ's order_map (quant.hpp's kAwqOrder)
#pragma GCC unroll 8
  for (int j = 0; j < 8; j += 2) {
    acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q, 4 * j), _mm512_loadu_ps(t + 16 * j)),
                           _mm512_set1_ps(xl[kOrder[j]]), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q, 4 * j + 4), _mm512_loadu_ps(t + 16 * j + 16)),
                           _mm512_set1_ps(xl[kOrder[j + 1]]), acc1);
  }
}

// AWQ's storage read along its rows (quant.hpp's awq_rows_dot): storage
// rows [c0, c1) of one group, 16 at a time in the lanes, against the 8·nw
// columns of the nw ≤ 16 words at qw (zq / sq as awq_band_params lays them
// out): y[i·ldy + c] += Σ_{l, j} x[i·ldx + 8·l + kAwqOrder[j]]·f16((q − z)·s).
// Each column's 16 weights are a table (vpermps looks a nibble up), each x
// value a broadcast. Returns the first row it left (c1 less a remainder of
// fewer than 16 rows), which the caller finishes.
DSV3_AVX512 inline int64_t awq_rows_lut(const float* x, int64_t ldx, int64_t n, int64_t c0, int64_t c1,
                                        const uint32_t* qw, int64_t words, int64_t nw, const float* zq,
                                        const float* sq, float* lut, float* y, int64_t ldy) {
  awq_tables(zq, sq, nw, lut);
  const __m512i rows = awq_row_offsets(words);
  int64_t c = c0;
  for (; c + 16 <= c1; c += 16)
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = x + i * ldx;
      __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
      for (int64_t l = 0; l < nw; ++l)
        awq_rows_word(_mm512_i32gather_epi32(rows, reinterpret_cast<const int*>(qw + c * words + l), 4),
                      lut + l * 128, xi + 8 * l, acc0, acc1);
      float* yi = y + i * ldy + c;
      _mm512_storeu_ps(yi, _mm512_add_ps(_mm512_loadu_ps(yi), _mm512_add_ps(acc0, acc1)));
    }
  return c;
}

// awq_rows_lut's sums, the words brought into the lanes by transposes (as
// awq_groups_tr's) instead of gathers (slow on AMD's CPUs): 16 storage rows'
// nw words are loaded (one or two lines a row) and transposed (transpose16),
// so that r[l] holds word l of the 16 rows. Every lane adds the same
// products in the same order as awq_rows_lut's, so the two give the same
// bits. Tables: awq_column_table, from mzs = −z·s where the group's scales
// allow (`exact` and awq_scales_normal), the same values as awq_tables'.
// Rows 32 on are asked for (both lines) while a block is loaded; the first
// 32 before the first block. Returns the first row it left, as
// awq_rows_lut.
DSV3_AVX512 inline int64_t awq_rows_tr(const float* x, int64_t ldx, int64_t n, int64_t c0, int64_t c1,
                                       const uint32_t* qw, int64_t words, int64_t nw, const float* zq,
                                       const float* sq, bool exact, float* lut, float* y, int64_t ldy) {
  if (c1 - c0 < 16) return c0;
  alignas(64) float mzs[128];
  const bool normal = awq_normal_tables(exact, zq, sq, mzs);
  for (int64_t l = 0; l < nw; ++l)  // lut[(8·l + j)·16 + q], as awq_tables lays them out
    for (int j = 0; j < 8; ++j) _mm512_storeu_ps(lut + (l * 8 + j) * 16, awq_column_table(normal, zq, sq, mzs, j * 16 + l));
  const __mmask16 live = first_lanes(nw);
  auto ahead = [&](int64_t c) {  // the first and the last line of row c's nw words (past the matrix: no fault)
    _mm_prefetch(reinterpret_cast<const char*>(qw + c * words), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(qw + c * words + nw) - 1, _MM_HINT_T0);
  };
  for (int64_t c = c0; c < std::min(c1, c0 + 32); ++c) ahead(c);
  int64_t c = c0;
  for (; c + 16 <= c1; c += 16) {
    __m512i r[16];
    for (int m = 0; m < 16; ++m) {
      ahead(c + 32 + m);
      r[m] = _mm512_maskz_loadu_epi32(live, qw + (c + m) * words);
    }
    transpose16(r);
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = x + i * ldx;
      __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
      for (int64_t l = 0; l < nw; ++l) awq_rows_word(r[l], lut + l * 128, xi + 8 * l, acc0, acc1);
      float* yi = y + i * ldy + c;
      _mm512_storeu_ps(yi, _mm512_add_ps(_mm512_loadu_ps(yi), _mm512_add_ps(acc0, acc1)));
    }
  }
  return c;
}

// A band's zero points and F16 scales for one group, widened in the layout
// awq_groups_lut reads (nibble order): zq[16·j + l] = nibble j of zero-point
// word l, sq[16·j + l] = the scale of column 8·l + order[j]; lanes l ≥ nw
// are 0. zw: the band's zero-point words; s16: the band's first column's
// scale (F16, any alignment). Each nibble's 16 scales are picked from the
// band's 128 with two vpermt2w (no gather: slow on AMD).
DSV3_AVX512 inline void awq_band_params(const uint32_t* zw, int64_t nw, const uint8_t* s16, const int* order,
                                        float* zq, float* sq) {
  const __m512i z = _mm512_maskz_loadu_epi32(first_lanes(nw), zw);
  // the band's 8·nw F16 scales in two pairs of vectors (0 past them): words 0–7, 8–15
  auto live = [](int64_t n) { return n >= 32 ? __mmask32(0xFFFFFFFFu) : n > 0 ? __mmask32((1u << n) - 1u) : __mmask32(0); };
  const __m512i r0 = _mm512_maskz_loadu_epi16(live(8 * nw), s16), r1 = _mm512_maskz_loadu_epi16(live(8 * nw - 32), s16 + 64);
  const __m512i r2 = _mm512_maskz_loadu_epi16(live(8 * nw - 64), s16 + 128), r3 = _mm512_maskz_loadu_epi16(live(8 * nw - 96), s16 + 192);
  // lane l of 16 (and again l + 16): scale 8·(l mod 8) + column of its pair
  const __m512i stride8 = _mm512_set_epi16(56, 48, 40, 32, 24, 16, 8, 0, 56, 48, 40, 32, 24, 16, 8, 0,
                                           56, 48, 40, 32, 24, 16, 8, 0, 56, 48, 40, 32, 24, 16, 8, 0);
  for (int j = 0; j < 8; ++j) {
    const __m512i q = _mm512_and_si512(_mm512_srl_epi32(z, _mm_cvtsi32_si128(4 * j)), _mm512_set1_epi32(15));
    _mm512_storeu_ps(zq + 16 * j, _mm512_cvtepi32_ps(q));
    const __m512i idx = _mm512_add_epi16(stride8, _mm512_set1_epi16(short(order[j])));
    const __m512i lo = _mm512_permutex2var_epi16(r0, idx, r1), hi = _mm512_permutex2var_epi16(r2, idx, r3);  // words 0–7 | 8–15
    _mm512_storeu_ps(sq + 16 * j, _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_mask_blend_epi16(0xFF00, lo, hi))));
  }
}

// AWQ prefill: one input row's band of nw ≤ 16 words decoded to f32,
// f16((q − z)·s) as the reference rounds it, in nibble order: dst[16·j + l]
// is column 8·l + kAwqOrder[j] of the band (lanes l ≥ nw are 0).
DSV3_AVX512 inline void awq_decode_krow(const uint32_t* row, int64_t nw, const float* zq, const float* sq, float* dst) {
  const __m512i q = _mm512_maskz_loadu_epi32(first_lanes(nw), row);
  for (int j = 0; j < 8; ++j) {
    const __m512 qf = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(q, 4 * j), _mm512_set1_epi32(0xF)));
    const __m512 v = _mm512_mul_ps(_mm512_sub_ps(qf, _mm512_loadu_ps(zq + 16 * j)), _mm512_loadu_ps(sq + 16 * j));
    _mm512_storeu_ps(dst + 16 * j, _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
  }
}

// The order 4-bit rows want x in, per 16 values (8 bytes, nibble m is value
// m): mlx4_x16 gives lane 2m value m and lane 2m + 1 value 8 + m.
inline void mlx4_permute(const float* x, int64_t K, float* xp) {
  for (int64_t c = 0; c < K; c += 16)
    for (int m = 0; m < 8; ++m) {
      xp[c + 2 * m] = x[c + m];
      xp[c + 2 * m + 1] = x[c + 8 + m];
    }
}

// 16 4-bit values at p → 16 floats, exactly: the 8 bytes broadcast to every
// 64-bit lane (a load, no shuffle), each 32-bit lane shifted right to its
// nibble (lanes 2m, 2m + 1: nibbles m, 8 + m), and vpermps, which reads only
// an index's low 4 bits, looks the nibble up in 0, 1, …, 15.
DSV3_AVX512 inline __m512 mlx4_x16(const uint8_t* p, __m512i shifts, __m512 iota) {
  uint64_t v;
  std::memcpy(&v, p, 8);  // (no alignment in the mapping)
  return _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_set1_epi64(static_cast<long long>(v)), shifts), iota);
}

// 5-bit: for 16 values (10 bytes, the 16·j-th to 16·j + 15-th of a run of
// 64), vpermb gives 32-bit lane v the two bytes that hold value v (from byte
// 10·j + ⌊5v/8⌋), a shift by 5v mod 8 puts it at the bottom, and vpermt2ps,
// which reads an index's low 5 bits, looks it up in 0, 1, …, 31.
struct Mlx5Tables {
  alignas(64) uint8_t idx[4][64];
  alignas(64) uint32_t sh[16];
  constexpr Mlx5Tables() : idx(), sh() {
    for (int j = 0; j < 4; ++j)
      for (int v = 0; v < 16; ++v)
        for (int b = 0; b < 4; ++b) idx[j][4 * v + b] = uint8_t(10 * j + 5 * v / 8 + (b < 2 ? b : 1));
    for (int v = 0; v < 16; ++v) sh[v] = uint32_t(5 * v % 8);
  }
};

DSV3_AVX512 inline __m512 mlx5_x16(__m512i raw, const uint8_t* idx, __m512i sh, __m512 lo, __m512 hi) {
  return _mm512_permutex2var_ps(lo, _mm512_srlv_epi32(_mm512_permutexvar_epi8(_mm512_load_si512(idx), raw), sh), hi);
}

// 64 values of a row → four vectors of 16 floats, in order (the decode
// kernel reads 4-bit rows with mlx4_x16 instead, in its own lane order).
template <int BITS>
DSV3_AVX512 inline void mlx_x64_ps(const uint8_t* p, __m512& q0, __m512& q1, __m512& q2, __m512& q3) {
  if constexpr (BITS == 5) {
    static constexpr Mlx5Tables t{};
    const __m512i raw = _mm512_maskz_loadu_epi8((__mmask64(1) << 40) - 1, p);
    const __m512i sh = _mm512_load_si512(t.sh);
    const __m512 lo = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 hi = _mm512_add_ps(lo, _mm512_set1_ps(16));
    q0 = mlx5_x16(raw, t.idx[0], sh, lo, hi);
    q1 = mlx5_x16(raw, t.idx[1], sh, lo, hi);
    q2 = mlx5_x16(raw, t.idx[2], sh, lo, hi);
    q3 = mlx5_x16(raw, t.idx[3], sh, lo, hi);
  } else if constexpr (BITS == 8) {  // one byte a value
    q0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    q1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))));
    q2 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 32))));
    q3 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 48))));
  } else {  // 4-bit: vpermb + vpmultishiftqb
    const __m512i q = mlx_x64<BITS>(p);
    q0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm512_castsi512_si128(q)));
    q1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(q, 1)));
    q2 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(q, 2)));
    q3 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(q, 3)));
  }
}

// Up to 16 scales or biases from p (m: which), widened to f32: BF16 as the
// published checkpoints store them, or f32 (F16 and F32 files, widened by
// the caller). Masked loads: nothing past the last is read.
DSV3_AVX512 inline __m512 widen_scales16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
DSV3_AVX512 inline __m512 widen_scales16(const uint16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

// R consecutive rows (R ≤ 4) of an MLX matrix against n rows of x (x in its
// own order; 4-bit: as mlx4_permute orders it): out[i·ldy + r] =
// Σ_g s_rg·Σ_{k in g} x_k·q_rk + Σ_g b_rg·xs[i·ng + g] (quant.hpp's
// mlx_dot_row_t computes the same with x permuted). w: row 0's words, `pk`
// words a row; sf / bf: the R rows' scales and biases (BF16 as stored, or
// widened to f32), ng a row. Per row, one vector of lanes: a group's
// products go into t in order, s·t into acc, then b·xs 16 groups at a time,
// and one horizontal sum. Rows share each load of x; each row's sums run in
// the same order whatever R is, so its result does not depend on how rows
// are grouped. Scales are widened 16 groups at a time into `sc`, so that a
// group's scale is one broadcast load.
template <int BITS, int R, class S>
DSV3_AVX512 inline void mlx_dot_rows(const float* x, const float* xs, int64_t n, int64_t K, int64_t G,
                                     const uint32_t* w, int64_t pk, const S* sf, const S* bf, float* out,
                                     int64_t ldy) {
  const int64_t ng = K / G;
  const auto* p = reinterpret_cast<const uint8_t*>(w);
  const int64_t row_bytes = pk * 4;
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i shifts = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
  alignas(64) float sc[R][16];
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * K;
    __m512 acc[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
      if (g % 16 == 0) {
        for (int r = 0; r < R; ++r) _mm512_store_ps(sc[r], widen_scales16(sf + r * ng + g, first_lanes(ng - g)));
      }
      __m512 t[R];
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) t[r] = _mm512_setzero_ps();
      for (int64_t k = g * G; k < (g + 1) * G; k += 64) {
        const __m512 x0 = _mm512_loadu_ps(xi + k), x1 = _mm512_loadu_ps(xi + k + 16);
        const __m512 x2 = _mm512_loadu_ps(xi + k + 32), x3 = _mm512_loadu_ps(xi + k + 48);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const uint8_t* pr = p + r * row_bytes + k / 8 * BITS;
          _mm_prefetch(reinterpret_cast<const char*>(pr) + R * row_bytes + 1024, _MM_HINT_T0);  // the next rows
          __m512 q0, q1, q2, q3;
          if constexpr (BITS == 4) {
            q0 = mlx4_x16(pr, shifts, iota);
            q1 = mlx4_x16(pr + 8, shifts, iota);
            q2 = mlx4_x16(pr + 16, shifts, iota);
            q3 = mlx4_x16(pr + 24, shifts, iota);
          } else {
            mlx_x64_ps<BITS>(pr, q0, q1, q2, q3);
          }
          t[r] = _mm512_fmadd_ps(x0, q0, t[r]);
          t[r] = _mm512_fmadd_ps(x1, q1, t[r]);
          t[r] = _mm512_fmadd_ps(x2, q2, t[r]);
          t[r] = _mm512_fmadd_ps(x3, q3, t[r]);
        }
      }
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(sc[r][g % 16]), t[r], acc[r]);
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {  // + Σ_g b_rg·xs_g, 16 groups a step
      for (int64_t g = 0; g < ng; g += 16) {
        const __mmask16 m = first_lanes(ng - g);
        acc[r] = _mm512_fmadd_ps(widen_scales16(bf + r * ng + g, m), _mm512_maskz_loadu_ps(m, xs + i * ng + g), acc[r]);
      }
    }
    hsum_rows<R>(acc, out + i * ldy);
  }
}

// One MLX row decoded to f32, s·q + b (one fused multiply-add), for prefill
// bands and MLA's per-head W_UK / W_UV; groups a multiple of 64.
template <int BITS>
DSV3_AVX512 inline void mlx_decode_row(int64_t K, int64_t G, const uint32_t* w, const float* sg, const float* bg,
                                       float* dst) {
  const auto* p = reinterpret_cast<const uint8_t*>(w);
  for (int64_t g = 0; g < K / G; ++g) {
    const __m512 s = _mm512_set1_ps(sg[g]), b = _mm512_set1_ps(bg[g]);
    for (int64_t k = g * G; k < (g + 1) * G; k += 64) {
      __m512 q0, q1, q2, q3;
      mlx_x64_ps<BITS>(p + k / 8 * BITS, q0, q1, q2, q3);
      _mm512_storeu_ps(dst + k, _mm512_fmadd_ps(s, q0, b));
      _mm512_storeu_ps(dst + k + 16, _mm512_fmadd_ps(s, q1, b));
      _mm512_storeu_ps(dst + k + 32, _mm512_fmadd_ps(s, q2, b));
      _mm512_storeu_ps(dst + k + 48, _mm512_fmadd_ps(s, q3, b));
    }
  }
}

}  // namespace avx512
#else
// Not x86-64 GCC: avx512_kernels() is false and these are never called.
namespace avx512 {
inline void fp8_dot_row(const float*, int64_t, int64_t, const uint8_t*, const float*, int64_t, float*, int64_t,
                        float (*)(uint8_t)) {}
template <bool F16>
inline void half_dot_row(const float*, int64_t, int64_t, const uint16_t*, float*, int64_t) {}
inline void fp8_decode_row(const uint8_t*, int64_t, const float*, int64_t, float*, float (*)(uint8_t)) {}
inline void mlx4_permute(const float*, int64_t, float*) {}
template <int BITS, int R, class S>
inline void mlx_dot_rows(const float*, const float*, int64_t, int64_t, int64_t, const uint32_t*, int64_t,
                         const S*, const S*, float*, int64_t) {}
inline void awq_groups_lut(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, const uint32_t*, int64_t,
                           int64_t, const float*, float*) {}
inline void awq_groups_lut_wide(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, const uint32_t*, int64_t,
                                int64_t, const float*, float*, float*, float*) {}
inline void awq_decode_krow(const uint32_t*, int64_t, const float*, const float*, float*) {}
inline void awq_groups_tr(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, const uint32_t*, int64_t, int64_t,
                          const float*, bool, bool, uint32_t*, float*, float*) {}
inline void awq_band_params(const uint32_t*, int64_t, const uint8_t*, const int*, float*, float*) {}
inline int64_t awq_rows_lut(const float*, int64_t, int64_t, int64_t c0, int64_t, const uint32_t*, int64_t, int64_t,
                            const float*, const float*, float*, float*, int64_t) { return c0; }
inline int64_t awq_rows_tr(const float*, int64_t, int64_t, int64_t c0, int64_t, const uint32_t*, int64_t, int64_t,
                           const float*, const float*, bool, float*, float*, int64_t) { return c0; }
template <int BITS>
inline void mlx_decode_row(int64_t, int64_t, const uint32_t*, const float*, const float*, float*) {}
}  // namespace avx512
#endif

}  // namespace dsv3::cpu
