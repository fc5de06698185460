// dsv3/cpu/few_rows.hpp — products of a few rows (decode), where a BLAS
// call costs more than its arithmetic: MLA's per-head products with the
// latent cache and with W_UK / W_UV when one to four query rows attend.
//
// Two shapes, both over row-major f32 with explicit strides:
//   rows_dot_rows: s[i, j] = Σ_k a[i, k]·b[j, k]      (a·bᵀ: q·k, o_lat·W_UVᵀ)
//   rows_mix_rows: o[i, c] = Σ_j p[i, j]·b[j, c]      (p·b:  P·C,  q_nope·W_UK)
// b may also be BF16 as stored (`const Bf16*`, 2-byte aligned: a BF16
// kv_b_proj's W_UK and W_UV read in place), each value widened exactly as
// it is loaded, so the sums are the ones over b decoded to f32 first.
// The sums run in an order fixed by the shapes alone (never by threads);
// it differs from BLAS's, which is within the reference's tolerance like
// any other summation order (tests/test_backend_ops.cpp, mla cases).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../formats/dtype.hpp"
#include "quant_avx2.hpp"
#include "quant_avx512.hpp"

namespace dsv3::cpu {

// A stored BF16 value (b's element type for BF16 weights read in place).
struct Bf16 {
  uint16_t bits;
};
inline float widen(const float* b) { return *b; }
inline float widen(const Bf16* b) {
  uint16_t h;
  std::memcpy(&h, b, 2);  // (no alignment in the mapping)
  return bf16_to_f32(h);
}
// b as the AVX2 kernels take it: f32, or BF16 as its stored bits.
inline const float* as_stored(const float* b) { return b; }
inline const uint16_t* as_stored(const Bf16* b) { return reinterpret_cast<const uint16_t*>(b); }

#ifdef DSV3_HAVE_AVX512_KERNELS
namespace avx512 {

// Up to 16 values of b from p (m: which), as f32.
DSV3_AVX512 inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
DSV3_AVX512 inline __m512 load16(const Bf16* p, __mmask16 m) { return widen_scales16(reinterpret_cast<const uint16_t*>(p), m); }

// a·bᵀ: four rows of b at a time share each vector of a row of a; the four
// sums end in one horizontal step (hsum_rows). A row's sum is the same
// whichever block its row of b falls in. Four rows of a at a time (MLA's
// decode: four heads' queries against the latent cache) share each vector
// of b as well, so a cache row is loaded once for the four heads, not once
// a head: every sum is the one a row alone gets, in the same order.
template <class B>
DSV3_AVX512 inline void rows_dot_rows(const float* a, int64_t lda, int64_t n, int64_t K, const B* b,
                                      int64_t ldb, int64_t m, float* s, int64_t lds) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float* ai = a + i * lda;
    int64_t j = 0;
    for (; j + 4 <= m; j += 4) {
      __m512 acc[4][4];
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q)
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) acc[q][r] = _mm512_setzero_ps();
      for (int64_t k = 0; k < K; k += 16) {
        const __mmask16 msk = first_lanes(K - k);
        __m512 bv[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) bv[r] = load16(b + (j + r) * ldb + k, msk);
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) {
          const __m512 x = _mm512_maskz_loadu_ps(msk, ai + q * lda + k);
#pragma GCC unroll 4
          for (int r = 0; r < 4; ++r) acc[q][r] = _mm512_fmadd_ps(x, bv[r], acc[q][r]);
        }
      }
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) hsum_rows<4>(acc[q], s + (i + q) * lds + j);
    }
    for (; j < m; ++j) {
      __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      for (int64_t k = 0; k < K; k += 16) {
        const __mmask16 msk = first_lanes(K - k);
        const __m512 bj = load16(b + j * ldb + k, msk);
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) acc[q] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(msk, ai + q * lda + k), bj, acc[q]);
      }
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) hsum_rows<1>(&acc[q], s + (i + q) * lds + j);
    }
  }
  for (; i < n; ++i) {
    const float* ai = a + i * lda;
    int64_t j = 0;
    for (; j + 4 <= m; j += 4) {
      __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      for (int64_t k = 0; k < K; k += 16) {
        const __mmask16 msk = first_lanes(K - k);
        const __m512 x = _mm512_maskz_loadu_ps(msk, ai + k);
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r)
          acc[r] = _mm512_fmadd_ps(x, load16(b + (j + r) * ldb + k, msk), acc[r]);
      }
      hsum_rows<4>(acc, s + i * lds + j);
    }
    for (; j < m; ++j) {
      __m512 acc[1] = {_mm512_setzero_ps()};
      for (int64_t k = 0; k < K; k += 16) {
        const __mmask16 msk = first_lanes(K - k);
        acc[0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(msk, ai + k), load16(b + j * ldb + k, msk), acc[0]);
      }
      hsum_rows<1>(acc, s + i * lds + j);
    }
  }
}

// p·b: up to 128 columns of o held in eight vectors while the rows of b
// stream past, each scaled by its p and added in row order. Four rows of p
// at a time (MLA's decode: four heads' probabilities over the latent cache)
// take 64 columns at a time instead, each vector of b loaded once for the
// four: every column's sum is the same, in the same order.
template <class B>
DSV3_AVX512 inline void rows_mix_rows(const float* p, int64_t ldp, int64_t n, int64_t m, const B* b,
                                      int64_t ldb, int64_t width, float* o, int64_t ldo) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int64_t c0 = 0; c0 < width; c0 += 64) {
      __mmask16 msk[4];
      __m512 acc[4][4];
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) {
        msk[v] = first_lanes(width - c0 - 16 * v);
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) acc[q][v] = _mm512_setzero_ps();
      }
      for (int64_t j = 0; j < m; ++j) {
        const B* bj = b + j * ldb + c0;
        __m512 bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) bv[v] = load16(bj + 16 * v, msk[v]);
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) {
          const __m512 pj = _mm512_set1_ps(p[(i + q) * ldp + j]);
#pragma GCC unroll 4
          for (int v = 0; v < 4; ++v) acc[q][v] = _mm512_fmadd_ps(pj, bv[v], acc[q][v]);
        }
      }
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q)
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) _mm512_mask_storeu_ps(o + (i + q) * ldo + c0 + 16 * v, msk[v], acc[q][v]);
    }
  for (; i < n; ++i)
    for (int64_t c0 = 0; c0 < width; c0 += 128) {
      __mmask16 msk[8];
      __m512 acc[8];
#pragma GCC unroll 8
      for (int v = 0; v < 8; ++v) msk[v] = first_lanes(width - c0 - 16 * v), acc[v] = _mm512_setzero_ps();
      for (int64_t j = 0; j < m; ++j) {
        const __m512 pj = _mm512_set1_ps(p[i * ldp + j]);
        const B* bj = b + j * ldb + c0;
#pragma GCC unroll 8
        for (int v = 0; v < 8; ++v) acc[v] = _mm512_fmadd_ps(pj, load16(bj + 16 * v, msk[v]), acc[v]);
      }
#pragma GCC unroll 8
      for (int v = 0; v < 8; ++v) _mm512_mask_storeu_ps(o + i * ldo + c0 + 16 * v, msk[v], acc[v]);
    }
}

}  // namespace avx512
#endif

// s[i·lds + j] = Σ_{k<K} a[i·lda + k]·b[j·ldb + k], for i < n, j < m.
template <class B>
inline void rows_dot_rows(const float* a, int64_t lda, int64_t n, int64_t K, const B* b, int64_t ldb, int64_t m,
                          float* s, int64_t lds) {
#ifdef DSV3_HAVE_AVX512_KERNELS
  if (avx512_kernels()) return avx512::rows_dot_rows(a, lda, n, K, b, ldb, m, s, lds);
#endif
#ifdef DSV3_HAVE_AVX2_KERNELS
  if (avx2_kernels()) return avx2::rows_dot_rows(a, lda, n, K, as_stored(b), ldb, m, s, lds);
#endif
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // 8 partial sums, combined in a fixed order
      for (int64_t k = 0; k < K; ++k) acc[k % 8] += a[i * lda + k] * widen(b + j * ldb + k);
      s[i * lds + j] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    }
}

// o[i·ldo + c] = Σ_{j<m} p[i·ldp + j]·b[j·ldb + c], for i < n, c < width.
template <class B>
inline void rows_mix_rows(const float* p, int64_t ldp, int64_t n, int64_t m, const B* b, int64_t ldb,
                          int64_t width, float* o, int64_t ldo) {
#ifdef DSV3_HAVE_AVX512_KERNELS
  if (avx512_kernels()) return avx512::rows_mix_rows(p, ldp, n, m, b, ldb, width, o, ldo);
#endif
#ifdef DSV3_HAVE_AVX2_KERNELS
  if (avx2_kernels()) return avx2::rows_mix_rows(p, ldp, n, m, as_stored(b), ldb, width, o, ldo);
#endif
  for (int64_t i = 0; i < n; ++i) {
    float* oi = o + i * ldo;
    std::fill(oi, oi + width, 0.0f);
    for (int64_t j = 0; j < m; ++j) {
      const float pj = p[i * ldp + j];
      for (int64_t c = 0; c < width; ++c) oi[c] += pj * widen(b + j * ldb + c);
    }
  }
}

}  // namespace dsv3::cpu
