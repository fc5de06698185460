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

// g <- silu(g) ⊙ u, silu(g) = g / (1 + e^-g) (reference::swiglu)
void swiglu(float* g, const float* u, int64_t count);

// out[i, :] = src[idx[i], :] (f32 rows, idx on the device)
void gather_f32_rows(const float* src, int64_t d, const int32_t* idx, int64_t m, float* out);

// y[t, :] = Σ_j w[t·k + j] · f[t·k + j][:] for j = 0..k-1 in order, from 0, each
// product and sum rounded on its own (reference::add_weighted with the default
// knobs); f holds device pointers to the expert output rows.
void moe_combine(const float* const* f, const float* w, int64_t n, int64_t k, int64_t d, float* y);

// The latent cache: rows [len, len + n) of cache [·, dc + dr] = [c_kv | k_pe],
// rounded to bf16 (kept as f32) when `bf16`.
void cache_append(float* cache, int64_t len, const float* c_kv, int64_t dc, const float* k_pe, int64_t dr, int64_t n,
                  bool bf16);

// A weight matrix as the MLA kernels read it: stored bytes [rows, K] with its
// format (FP8: block scales), element (r, c) = decode(w[r, c]) · scale.
struct WeightRef {
  const void* w = nullptr;
  Elem we = Elem::f32;
  int64_t K = 0;
  const void* scale = nullptr;
  Elem se = Elem::f32;
  int64_t br = 1, bc = 1, sc_cols = 1;
};

// MLA per head (reference/mla.hpp), H heads, head i's kv_b_proj rows at
// i·(dn + dv): W_UK_i = rows [0, dn), W_UV_i = rows [dn, dn + dv), each d_c wide.
//
// absorb: q_lat[s, i, a] = Σ_{d<dn} W_UK_i[d, a] · q[s, i·dq + d]   (matvec_t, d in order)
void mla_q_lat(const WeightRef& kvb, const float* q, int64_t n, int64_t H, int64_t dq, int64_t dn, int64_t dv,
               int64_t dc, float* q_lat);
// out[s, i, r] = Σ_{a<dc} W[i·(dn+dv) + row0 + r, a] · in[s·in_s + i·in_h + a]   (matvec, a in order), r < R
void mla_head_rows(const WeightRef& kvb, const float* in, int64_t in_s, int64_t in_h, int64_t n, int64_t H, int64_t dn,
                   int64_t dv, int64_t row0, int64_t R, int64_t dc, float* out, int64_t out_s, int64_t out_h);
// p[s, i, j] = softmax_{j ≤ start + s}((q1·k1_j + q2·k2_j) · scale), j < t (0 past the causal bound)
//   q1 at q1 + s·q1_s + i·q1_h (len1), k1_j at k1 + j·k1_j + i·k1_h; q2, k2 alike (len2, k2 shared by heads)
void mla_scores(const float* q1, int64_t q1_s, int64_t q1_h, const float* k1, int64_t k1_j, int64_t k1_h, int64_t len1,
                const float* q2, int64_t q2_s, int64_t q2_h, const float* k2, int64_t k2_j, int64_t len2, float scale,
                int64_t n, int64_t H, int64_t start, int64_t t, float* p);
// out[s·out_s + i·out_h + e] = Σ_{j ≤ start + s} p[s, i, j] · v[j·v_j + i·v_h + e], e < len (j in order)
void mla_weighted_sum(const float* p, int64_t n, int64_t H, int64_t start, int64_t t, const float* v, int64_t v_j,
                      int64_t v_h, int64_t len, float* out, int64_t out_s, int64_t out_h);

// Blocks until every launch so far has finished; returns a message on an
// error (launch or execution), or nullptr.
const char* sync();
// The last launch's error (no wait), or nullptr.
const char* launched();

}  // namespace dsv3::cuda::k
