// dsv3/cpu/mla.hpp — the CPU backend's Multi-head Latent Attention.
//
// The same math as reference/mla.hpp (eqs. 1–11 there), made fast: the two
// projections of x share one round of threads, heads are taken whole by
// threads, and query rows go in blocks of kAttnRowBlock that attend only to
// the positions their last row can see, each block one q·k GEMM over the
// content and RoPE parts together. The naive and absorbed forms share the
// loop; absorbed decode takes heads four at a time, so that each row of the
// latent cache is read once for four heads' queries.
// tests/test_backend_ops.cpp checks it against the reference.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "../backend.hpp"
#include "../config.hpp"
#include "../reference/ops.hpp"
#include "../rope.hpp"
#include "../trace.hpp"
#include "../weights.hpp"
#include "few_rows.hpp"
#include "linear.hpp"

namespace dsv3::cpu {

// Query rows per attention block (a fixed size: results do not depend on
// the thread count).
constexpr int64_t kAttnRowBlock = 64;
// Heads a unit of work in absorbed decode (see mla below).
constexpr int64_t kAttnHeadGroup = 4;

// y[i·ldy + o] = Σ_k x[i·K + k]·W[o, k] for every row o of W and n ≤ 4 rows
// of x, on the calling thread: the fused kernel of W's format, or (plain
// float storage) a row at a time.
inline void rows_dot(const Linear& W, const float* x, int64_t n, float* y, int64_t ldy, FusedInput& in,
                     std::vector<float>& scratch) {
  const int64_t K = W.in();
  if (has_fused_kernel<float>(W)) {
    fused_prepare(W, x, n, in);
    fused_rows(W, x, n, in, 0, W.out(), scratch, y, ldy);
    return;
  }
  scratch.resize(std::size_t(K));
  for (int64_t o = 0; o < W.out(); ++o) {
    decode_band(W, o, o + 1, scratch.data());
    dot_rows_f32(x, n, K, scratch.data(), y + o, ldy);
  }
}

// One head's product C[M, N] = A·Bᵀ (tb) or A·B, K the inner length, as
// gemm's arguments. A block of a few query rows (decode) at T = float runs
// few_rows.hpp's direct loops; a BLAS call costs more than the arithmetic
// at those sizes.
template <class T>
inline void head_gemm(bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
                      T* C, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>)
    if (M <= kFusedMaxRows)
      return tb ? rows_dot_rows(A, lda, M, K, B, ldb, N, C, ldc) : rows_mix_rows(A, lda, M, K, B, ldb, N, C, ldc);
  gemm(false, tb, M, N, K, T(1), A, lda, B, ldb, T(0), C, ldc);
}

template <class T>
inline Mat<T> mla(const Backend<T>& be, const Config& c, const AttentionWeights& w, const Mat<T>& x,
                          LatentCache<T>& cache, int64_t start_pos, const std::vector<RopeRow>& rope,
                          AttnForm form, const Trace& trace, int64_t layer, const Variants& v = {}) {
  const int64_t n = rows(x), H = c.num_attention_heads;
  const int64_t dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dq = c.qk_head_dim();
  const int64_t dv = c.v_head_dim, r = c.kv_lora_rank;

  // The two projections of x (q_a or q, and kv_a) in one call.
  const HostOps<T> ops{be};  // the dispatcher's linears, norms, RoPE on host matrices
  std::vector<Mat<T>> xa = ops.linear_many({{&x, w.q_a_proj ? &*w.q_a_proj : &*w.q_proj}, {&x, &w.kv_a_proj_with_mqa}}, v);

  // -- queries: [n, H, nope | rope]
  Mat<T> q;
  if (w.q_a_proj) {
    Mat<T>& q_a = xa[0];                                                 // [n, q_lora]
    trace.edit("q_a", layer, start_pos, n, cols(q_a), q_a.data());
    Mat<T> c_q = ops.rms_norm(q_a, *w.q_a_layernorm, c.rms_norm_eps, v);  // [n, q_lora]
    trace.edit("q_a_norm", layer, start_pos, n, cols(c_q), c_q.data());
    q = ops.linear(c_q, *w.q_b_proj, v);                                  // [n, H*dq]
  } else {
    q = std::move(xa[0]);                                                // [n, H*dq]
  }
  trace.emit_heads("q_nope", layer, start_pos, n, H, dq, /*col0=*/0, /*width=*/dn, q.data());
  trace.emit_heads("q_pe", layer, start_pos, n, H, dq, /*col0=*/dn, /*width=*/dr, q.data());
  ops.rope(q, /*col0=*/dn, /*width=*/dr, /*stride=*/dq, rope, c.rope_interleave);  // each head's rope part
  round_act(v, q);
  trace.emit_heads("q_pe_rope", layer, start_pos, n, H, dq, dn, dr, q.data());

  // -- latent kv for the new tokens, appended to the cache
  const Mat<T>& kv = xa[1];                                             // [n, r + dr]
  Mat<T> c_kv = ops.rms_norm(take_cols(kv, 0, r), w.kv_a_layernorm, c.rms_norm_eps, v);
  trace.edit("c_kv", layer, start_pos, n, r, c_kv.data());
  Mat<T> k_pe = take_cols(kv, r, dr);
  trace.edit("k_pe", layer, start_pos, n, dr, k_pe.data());
  ops.rope(k_pe, 0, dr, dr, rope, c.rope_interleave);
  round_act(v, k_pe);
  trace.edit("k_pe_rope", layer, start_pos, n, dr, k_pe.data());
  cache.append(c_kv.data(), k_pe.data(), n, r, dr);
  const int64_t t = start_pos + n;   // positions visible to the last token
  const int64_t dl = r + dr;         // one cache row: [c_kv | k_pe]
  std::vector<T> wide;               // a bf16 cache, widened for this call
  const T* KV = cache.read(wide);    // [t, dl]; C = KV[:, :r], KP = KV[:, r:]
  if (form == AttnForm::automatic) form = attn_form_for(c, n, start_pos);

  // W_UK / W_UV: kv_b_proj rows for head h are [h*(dn+dv), (h+1)*(dn+dv)),
  // the first dn of them W_UK_h [dn, r], the next dv W_UV_h [dv, r]. Each
  // head decodes its own rows when it needs them (no copy of the whole
  // matrix), or reads them in place (F32 weights at T = float).
  const T scale = T(c.softmax_scale(v.yarn_enabled(c.rope_scaling.original_max_position_embeddings)));
  const bool bf16 = v.bf16_activations;  // OFF: bf16 einsums, probabilities .type_as(x)
  auto rnd = [&](T* p, int64_t count) { round_bf16_if(bf16, p, p + count); };
  const bool round_w = v.fp8_dequant_bf16 && w.kv_b_proj.is_fp8();
  const T* kv_b = in_place<T>(w.kv_b_proj);
  const bool absorb = form == AttnForm::absorb;
  // mlx-lm's split layout stores W_UK per head as embed_q[h] [r, dn] and W_UV
  // as unembed_out[h] [dv, r]: both products of the absorbed decode are then
  // rows dotted with a vector (q_lat = embed_q[h]·q_nope, o_h =
  // unembed_out[h]·o_lat), which the fused kernels compute from the stored
  // bytes; nothing is decoded to a matrix.
  const auto* split = std::get_if<Linear::MlxSplitKvb>(&w.kv_b_proj.storage);
  const bool fused_heads = std::is_same_v<T, float> && absorb && split && n <= kFusedMaxRows && !round_w &&
                           int64_t(split->embed_q.heads.size()) == H && int64_t(split->unembed_out.heads.size()) == H;
  // AWQ kv_b: a head's W_UK and W_UV are column slices of the stored [r,
  // out] matrix (its words h·(dn + dv)/8 ..), taken from the stored bytes by
  // awq_rows_dot (q_lat) and awq_cols_partial (o_h), nothing decoded.
  const AwqWeight* awq_kvb = w.kv_b_proj.awq();
  const bool awq_heads = std::is_same_v<T, float> && absorb && awq_kvb && n <= kFusedMaxRows && dn % 8 == 0 &&
                         dv % 8 == 0;
  // An FP8 kv_b (the published checkpoint): a head's W_UV rows are dotted
  // with o_lat by the FP8 linears' fused kernel (fused_rows), from the stored
  // codes and block scales; and q_lat = q_nope·W_UK mixes the head's W_UK
  // rows from their codes (avx2::fp8_mix_rows: the bits of decoding them
  // first), where each head's W_UK lies in one block row. A head the mix
  // declines (a NaN code, a scale out of its range) decodes its W_UK rows.
  const bool fp8_uv = std::is_same_v<T, float> && absorb && w.kv_b_proj.fp8() && n <= kFusedMaxRows && !round_w &&
                      has_fused_kernel<float>(w.kv_b_proj);
  const auto* fp8k = w.kv_b_proj.fp8();
  bool fp8_uk = fp8_uv && avx2_kernels() && fp8k->block_cols % 16 == 0;
  for (int64_t h = 0; fp8_uk && h < H; ++h)
    fp8_uk = h * (dn + dv) / fp8k->block_rows == (h * (dn + dv) + dn - 1) / fp8k->block_rows;
  // A BF16 kv_b (the BF16 checkpoint; dense, absorbed decode at T = float):
  // a head's W_UK and W_UV are read in place, each value widened as
  // few_rows' loops load it, so nothing is decoded per head and token.
  // (At an odd address, as safetensors may leave it, the rows are decoded.)
  const Bf16* kv_b16 = nullptr;
  if constexpr (std::is_same_v<T, float>)
    if (absorb && n <= kFusedMaxRows && !kv_b && w.kv_b_proj.is_dense() && w.kv_b_proj.weight.dtype == DType::BF16 &&
        reinterpret_cast<uintptr_t>(w.kv_b_proj.weight.data) % alignof(Bf16) == 0)
      kv_b16 = reinterpret_cast<const Bf16*>(w.kv_b_proj.weight.data);
  // Otherwise each head decodes its kv_b rows to f32 (into wkv).
  const bool decode_heads = !kv_b && !kv_b16 && !fused_heads && !awq_heads;
  // per head: embed_q[h], unembed_out[h] as Linears (made at load)
  const std::vector<Linear>* uk = fused_heads ? &split->embed_q.heads : nullptr;
  const std::vector<Linear>* uv = fused_heads ? &split->unembed_out.heads : nullptr;
  // Query rows are taken kAttnRowBlock at a time; a block attends only to the
  // positions its last row can see, so the causal upper triangle is skipped.
  const int64_t B = std::min(n, kAttnRowBlock);
  const int64_t dk = absorb ? dl : dq;   // length of a query·key dot product
  Mat<T> o = empty<T>(n, H * dv);        // [n, H*dv]
  // Absorbed decode (at most kFusedMaxRows query rows, at T = float) takes
  // heads kAttnHeadGroup at a time: their queries are one block of rows
  // against the latent cache, so each cache row is read once for the group
  // (few_rows' products share each load among four rows of queries); every
  // sum is the one a head alone gets. Otherwise a unit is one head.
  const bool grouped = std::is_same_v<T, float> && absorb && n <= kFusedMaxRows;
  const int64_t HG = grouped ? kAttnHeadGroup : 1;
  const int64_t units = (H + HG - 1) / HG;
  blas_single_threaded();
  // Heads are independent: threads take whole heads (or groups of heads, a
  // fixed size), so every head's sums run in the same order whatever the
  // thread count.
  ThreadErrors errs;
#pragma omp parallel
  {
    std::vector<T> wkv, qn, scores, qcat, olat, kcat, vh;
    FusedInput fin;
    std::vector<float> fscratch, ukscale;
    errs.run([&] {
      // (grouped: one head's W_UK or W_UV at a time; else one head's both)
      wkv.resize(decode_heads ? static_cast<std::size_t>((grouped ? std::max(dn, dv) : dn + dv) * r) : 0);
      qn.resize(fused_heads ? static_cast<std::size_t>(B * dn) : 0);  // q_nope of one head, rows packed
      scores.resize(static_cast<std::size_t>(HG * B * t));
      qcat.resize(absorb ? static_cast<std::size_t>(HG * B * dl) : 0);  // [HG·B, r | dr]
      olat.resize(absorb ? static_cast<std::size_t>(HG * B * r) : 0);
      kcat.resize(absorb ? 0 : static_cast<std::size_t>(t * dq));  // [t, nope | rope]
      vh.resize(absorb ? 0 : static_cast<std::size_t>(t * dv));
    });
    // Rows [row0, row1) of head h's kv_b rows (W_UK: [0, dn), W_UV: [dn,
    // dn + dv)), [row1 − row0, r]: in place, or decoded into wkv (the
    // previous rows decoded there are then gone). The grouped decode takes a
    // head's W_UK just before its q product and its W_UV just before its
    // output product, so wkv holds one of them, not four heads' both (256 KB
    // against 2 MB a thread at DeepSeek-V3's dimensions; the same speed at
    // full dims on Zen 4).
    auto head_rows = [&](int64_t h, int64_t row0, int64_t row1) -> const T* {
      if (kv_b) return kv_b + (h * (dn + dv) + row0) * r;
      if (!decode_heads) return nullptr;
      T* dst = wkv.data();
      decode_band(w.kv_b_proj, h * (dn + dv) + row0, h * (dn + dv) + row1, dst);
      if (round_w) round_bf16_if(true, dst, dst + (row1 - row0) * r);
      return dst;
    };
    // q_lat[nb, r] = q_nope @ W_UK for head h (query rows qh, stride H*dq),
    // beside q_pe: one dot with a cache row; into rows of qc (stride dl).
    auto absorb_q = [&](int64_t h, const T* qh, int64_t nb, const T* W_UK, T* qc) {
      if (fused_heads) {
        if constexpr (std::is_same_v<T, float>) {
          for (int64_t i = 0; i < nb; ++i) std::copy_n(qh + i * H * dq, dn, qn.data() + i * dn);
          rows_dot((*uk)[std::size_t(h)], qn.data(), nb, qc, dl, fin, fscratch);
        }
      } else if (awq_heads) {
        if constexpr (std::is_same_v<T, float>)
          awq_rows_dot(*awq_kvb, qh, H * dq, nb, h * (dn + dv) / 8, dn / 8, fscratch, qc, dl);
      } else if (kv_b16) {
        if constexpr (std::is_same_v<T, float>)
          rows_mix_rows(qh, H * dq, nb, dn, kv_b16 + h * (dn + dv) * r, r, r, qc, dl);
      } else if (fp8_uk) {
        if constexpr (std::is_same_v<T, float>) {
          const int64_t row0 = h * (dn + dv);
          ukscale.resize(std::size_t(fp8k->scale_inv.shape[1]));
          fp8_row_scales(*fp8k, row0 / fp8k->block_rows, ukscale.data());
          if (!avx2::fp8_mix_rows(qh, H * dq, nb, dn, w.kv_b_proj.weight.data + row0 * r, r, ukscale.data(),
                                  fp8k->block_cols, r, qc, dl, fp8_e4m3_to_f32_bits))
            head_gemm(false, nb, r, dn, qh, H * dq, head_rows(h, 0, dn), r, qc, dl);
        }
      } else {
        head_gemm(false, nb, r, dn, qh, H * dq, W_UK, r, qc, dl);
      }
      for (int64_t i = 0; i < nb; ++i) {
        rnd(qc + i * dl, r);
        std::copy_n(qh + i * H * dq + dn, dr, qc + i * dl + r);
      }
    };
    // o_h[nb, dv] = o_lat @ W_UV^T for head h, into rows of oh (stride H*dv).
    auto absorb_o = [&](int64_t h, const T* ol, int64_t nb, const T* W_UV, T* oh) {
      if (fp8_uv) {
        if constexpr (std::is_same_v<T, float>) {
          const int64_t row0 = h * (dn + dv) + dn;  // W_UV's first row in kv_b
          fused_prepare(w.kv_b_proj, ol, nb, fin);
          fused_rows(w.kv_b_proj, ol, nb, fin, row0, row0 + dv, fscratch, oh, H * dv, row0);
        }
      } else if (fused_heads) {
        if constexpr (std::is_same_v<T, float>) rows_dot((*uv)[std::size_t(h)], ol, nb, oh, H * dv, fin, fscratch);
      } else if (awq_heads) {
        if constexpr (std::is_same_v<T, float>) {
          const int64_t wv = (h * (dn + dv) + dn) / 8;  // W_UV's first word
          awq_cols_partial(*awq_kvb, ol, r, nb, 0, r, wv, wv + dv / 8, fscratch, oh, H * dv);
        }
      } else if (kv_b16) {
        if constexpr (std::is_same_v<T, float>)
          rows_dot_rows(ol, r, nb, r, kv_b16 + (h * (dn + dv) + dn) * r, r, dv, oh, H * dv);
      } else {
        head_gemm(true, nb, dv, r, ol, r, W_UV, r, oh, H * dv);
      }
    };
    // scale, causal mask and softmax of rows [0, rows) of s (stride tv),
    // row ii holding query row i0 + ii mod nb
    auto softmax_rows = [&](T* s, int64_t rows, int64_t nb, int64_t tv, int64_t i0) {
      for (int64_t ii = 0; ii < rows; ++ii) {
        T* si = s + ii * tv;
        // token i sits at position start_pos + i and sees [0, start_pos + i]
        const int64_t valid = start_pos + i0 + ii % nb + 1;
        for (int64_t j = 0; j < valid; ++j) si[j] *= scale;
        reference::softmax_masked(si, tv, valid);
        rnd(si, tv);
      }
    };
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t u = 0; u < units; ++u) errs.run([&] {
      if (grouped) {
        if constexpr (std::is_same_v<T, float>) {
          // heads h0 … h1 − 1, all n query rows: row hh·n + i of qcat, scores and olat
          const int64_t h0 = u * HG, h1 = std::min(H, h0 + HG), rows = (h1 - h0) * n, tv = t;
          for (int64_t h = h0; h < h1; ++h)
            absorb_q(h, q.data() + h * dq, n, fp8_uk ? nullptr : head_rows(h, 0, dn), qcat.data() + (h - h0) * n * dl);
          rows_dot_rows(qcat.data(), dl, rows, dl, KV, dl, tv, scores.data(), tv);  // scores = q·k, nope and rope
          softmax_rows(scores.data(), rows, n, tv, 0);
          rows_mix_rows(scores.data(), tv, rows, tv, KV, dl, r, olat.data(), r);  // o_lat = P @ C
          rnd(olat.data(), rows * r);
          for (int64_t h = h0; h < h1; ++h)
            absorb_o(h, olat.data() + (h - h0) * n * r, n, fp8_uv ? nullptr : head_rows(h, dn, dn + dv),
                     o.data() + h * dv);
        }
        return;
      }
      const int64_t h = u;
      const T* W_UK = head_rows(h, 0, dn + dv);                     // [dn, r]
      const T* W_UV = W_UK ? W_UK + dn * r : nullptr;               // [dv, r]
      const T* K = KV;                                              // keys, dk wide
      if (!absorb) {
        // naive: k_nope[t, dn] = C @ W_UK^T beside k_pe; v[t, dv] = C @ W_UV^T
        gemm(false, true, t, dn, r, T(1), KV, dl, W_UK, r, T(0), kcat.data(), dq);
        for (int64_t j = 0; j < t; ++j) {
          rnd(kcat.data() + j * dq, dn);
          std::copy_n(KV + j * dl + r, dr, kcat.data() + j * dq + dn);
        }
        gemm(false, true, t, dv, r, T(1), KV, dl, W_UV, r, T(0), vh.data(), dv);
        rnd(vh.data(), t * dv);
        K = kcat.data();
      }
      for (int64_t i0 = 0; i0 < n; i0 += B) {
        const int64_t nb = std::min(B, n - i0), tv = std::min(t, start_pos + i0 + nb);
        const T* qh = q.data() + i0 * H * dq + h * dq;              // [nb, nope | rope], stride H*dq
        const T* Q = qh;
        int64_t ldq = H * dq;
        if (absorb) {
          absorb_q(h, qh, nb, W_UK, qcat.data());
          Q = qcat.data();
          ldq = dl;
        }
        // scores[nb, tv] = q·k over nope and rope parts together
        head_gemm(true, nb, tv, dk, Q, ldq, K, dk, scores.data(), tv);
        softmax_rows(scores.data(), nb, nb, tv, i0);
        T* oh = o.data() + i0 * H * dv + h * dv;                    // rows stride H*dv
        if (absorb) {
          // o_lat[nb, r] = P @ C;  o_h = o_lat @ W_UV^T
          head_gemm(false, nb, r, tv, scores.data(), tv, KV, dl, olat.data(), r);
          rnd(olat.data(), nb * r);
          absorb_o(h, olat.data(), nb, W_UV, oh);
        } else {
          head_gemm(false, nb, dv, tv, scores.data(), tv, vh.data(), dv, oh, H * dv);
        }
      }
    });
  }
  errs.rethrow();
  round_act(v, o);
  trace.edit("attn_out", layer, start_pos, n, H * dv, o.data());
  Mat<T> out = ops.linear(o, w.o_proj, v);                                 // [n, D]
  trace.edit("attn_o_proj", layer, start_pos, n, cols(out), out.data());
  return out;
}

}  // namespace dsv3::cpu
