// dsv3/attention.hpp — Multi-head Latent Attention (MLA), model-semantics §5.
//
// Per token (DeepSeek-V3 report §2.1.1, eqs. 1–11):
//   c_q  = RMSNorm(W_DQ x)                 q_a_proj, q_a_layernorm   [q_lora]
//   q    = W_UQ c_q  -> [H, nope | rope]   q_b_proj                  [H, qk_head]
//   kv   = W_DKV x   -> [c_kv | k_pe]      kv_a_proj_with_mqa        [kv_lora + rope]
//   c_kv = RMSNorm(c_kv)                   kv_a_layernorm
//   q_pe, k_pe = RoPE(q_pe), RoPE(k_pe)    k_pe shared by all heads
//   k_nope, v  = W_UK c_kv, W_UV c_kv      kv_b_proj rows per head: [nope | v]
//   o_h  = softmax(scale · (q_nope·k_nope + q_pe·k_pe)) v             [H, v_head]
//   out  = W_O [o_1 … o_H]                 o_proj
// The cache holds only c_kv and k_pe: kv_lora_rank + qk_rope_head_dim values
// per token per layer (576 for V3).
//
// Two forms compute the same scores:
//   naive:  expands k_nope and v for every cached position, then attends
//           (HF; OFF attn_impl="naive").
//   absorb: folds W_UK into the query and W_UV into the output and attends in
//           the latent space (OFF attn_impl="absorb", the official default):
//             q_lat = q_nope W_UK_h            (einsum "shd,hdc->shc")
//             score = q_lat·c_kv + q_pe·k_pe
//             o_h   = (Σ_t p_t c_kv_t) W_UV_hᵀ (einsum "shc,hdc->shd")
#pragma once

#include <cstdint>
#include <vector>

#include "backend.hpp"
#include "config.hpp"
#include "ops.hpp"
#include "rope.hpp"
#include "trace.hpp"
#include "weights.hpp"

namespace dsv3 {

template <class T>
inline Mat<T> mla_forward(const Backend<T>& be, const Config& c, const AttentionWeights& w, const Mat<T>& x,
                          LatentCache<T>& cache, int64_t start_pos, const std::vector<RopeRow>& rope,
                          AttnForm form, const Trace& trace, int64_t layer, const Variants& v = {}) {
  const int64_t n = rows(x), H = c.num_attention_heads;
  const int64_t dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dq = c.qk_head_dim();
  const int64_t dv = c.v_head_dim, r = c.kv_lora_rank;

  // -- queries: [n, H, nope | rope]
  Mat<T> q;
  if (w.q_a_proj) {
    Mat<T> q_a = be.linear(x, *w.q_a_proj, v);                           // [n, q_lora]
    trace.emit("q_a", layer, start_pos, n, cols(q_a), q_a.data());
    Mat<T> c_q = be.rms_norm(q_a, *w.q_a_layernorm, c.rms_norm_eps, v);  // [n, q_lora]
    trace.emit("q_a_norm", layer, start_pos, n, cols(c_q), c_q.data());
    q = be.linear(c_q, *w.q_b_proj, v);                                  // [n, H*dq]
  } else {
    q = be.linear(x, *w.q_proj, v);
  }
  if (trace.enabled()) {
    std::vector<T> nope(static_cast<std::size_t>(n * H * dn)), pe(static_cast<std::size_t>(n * H * dr));
    for (int64_t i = 0; i < n * H; ++i) {
      std::copy_n(q.data() + i * dq, dn, nope.data() + i * dn);
      std::copy_n(q.data() + i * dq + dn, dr, pe.data() + i * dr);
    }
    trace.emit("q_nope", layer, start_pos, n, H * dn, nope.data());
    trace.emit("q_pe", layer, start_pos, n, H * dr, pe.data());
  }
  be.rope(q, dn, dr, dq, rope, c.rope_interleave);  // each head's rope part
  round_act(v, q);
  if (trace.enabled()) {
    std::vector<T> pe(static_cast<std::size_t>(n * H * dr));
    for (int64_t i = 0; i < n * H; ++i) std::copy_n(q.data() + i * dq + dn, dr, pe.data() + i * dr);
    trace.emit("q_pe_rope", layer, start_pos, n, H * dr, pe.data());
  }

  // -- latent kv for the new tokens, appended to the cache
  Mat<T> kv = be.linear(x, w.kv_a_proj_with_mqa, v);                      // [n, r + dr]
  Mat<T> c_kv_raw = empty<T>(n, r);
  for (int64_t i = 0; i < n; ++i) std::copy_n(&kv(i, 0), r, &c_kv_raw(i, 0));
  Mat<T> c_kv = be.rms_norm(c_kv_raw, w.kv_a_layernorm, c.rms_norm_eps, v);
  trace.emit("c_kv", layer, start_pos, n, r, c_kv.data());
  Mat<T> k_pe = empty<T>(n, dr);
  for (int64_t i = 0; i < n; ++i) std::copy_n(&kv(i, r), dr, &k_pe(i, 0));
  trace.emit("k_pe", layer, start_pos, n, dr, k_pe.data());
  be.rope(k_pe, 0, dr, dr, rope, c.rope_interleave);
  round_act(v, k_pe);
  trace.emit("k_pe_rope", layer, start_pos, n, dr, k_pe.data());
  cache.append(c_kv.data(), c_kv.size(), k_pe.data(), k_pe.size());
  const int64_t t = start_pos + n;                                  // positions visible to the last token
  std::vector<T> wide_c, wide_k;  // a bf16 cache, widened for this call
  if (cache.bf16) {
    wide_c.resize(cache.c_kv16.size());
    wide_k.resize(cache.k_pe16.size());
    for (std::size_t i = 0; i < wide_c.size(); ++i) wide_c[i] = T(bf16_to_f32(cache.c_kv16[i]));
    for (std::size_t i = 0; i < wide_k.size(); ++i) wide_k[i] = T(bf16_to_f32(cache.k_pe16[i]));
  }
  const T* C = cache.bf16 ? wide_c.data() : cache.c_kv.data();       // [t, r]
  const T* KP = cache.bf16 ? wide_k.data() : cache.k_pe.data();      // [t, dr]

  // W_UK / W_UV: kv_b_proj rows for head h are [h*(dn+dv), (h+1)*(dn+dv)),
  // the first dn of them W_UK_h [dn, r], the next dv W_UV_h [dv, r]. Each
  // head decodes its own rows when it needs them (no copy of the whole matrix).
  const T scale = T(c.softmax_scale(v.yarn_enabled(c.rope_scaling.original_max_position_embeddings)));
  const bool bf16 = v.bf16_activations;  // OFF: bf16 einsums, probabilities .type_as(x)
  auto rnd = [&](T* p, int64_t count) { round_bf16_if(bf16, p, p + count); };
  const bool round_w = v.fp8_dequant_bf16 && w.kv_b_proj.is_fp8();
  Mat<T> o = empty<T>(n, H * dv);                                   // [n, H*dv]
  blas_single_threaded();
  // Heads are independent: threads take whole heads, so every head's sums run
  // in the same order whatever the thread count.
#pragma omp parallel
  {
    std::vector<T> wkv(static_cast<std::size_t>((dn + dv) * r));
    std::vector<T> scores(static_cast<std::size_t>(n * t));
    std::vector<T> qh(static_cast<std::size_t>(n * r));
    std::vector<T> tmp(static_cast<std::size_t>(std::max(n * r, t * std::max(dn, dv))));
#pragma omp for schedule(static)
    for (int64_t h = 0; h < H; ++h) {
      w.kv_b_proj.decode_rows(h * (dn + dv), (h + 1) * (dn + dv), wkv.data());
      if (round_w) round_bf16_if(true, wkv.begin(), wkv.end());
      const T* W_UK = wkv.data();                                   // [dn, r]
      const T* W_UV = W_UK + dn * r;                                // [dv, r]
      const T* q_nope = q.data() + h * dq;                          // rows stride H*dq
      const T* q_pe = q_nope + dn;
      if (form == AttnForm::absorb) {
        // q_lat[n, r] = q_nope[n, dn] @ W_UK[dn, r]
        gemm(false, false, n, r, dn, T(1), q_nope, H * dq, W_UK, r, T(0), qh.data(), r);
        rnd(qh.data(), n * r);
        // scores[n, t] = q_lat @ C^T + q_pe @ KP^T
        gemm(false, true, n, t, r, T(1), qh.data(), r, C, r, T(0), scores.data(), t);
        gemm(false, true, n, t, dr, T(1), q_pe, H * dq, KP, dr, T(1), scores.data(), t);
      } else {
        // k_nope[t, dn] = C @ W_UK^T; scores = q_nope @ k_nope^T + q_pe @ KP^T
        gemm(false, true, t, dn, r, T(1), C, r, W_UK, r, T(0), tmp.data(), dn);
        rnd(tmp.data(), t * dn);
        gemm(false, true, n, t, dn, T(1), q_nope, H * dq, tmp.data(), dn, T(0), scores.data(), t);
        gemm(false, true, n, t, dr, T(1), q_pe, H * dq, KP, dr, T(1), scores.data(), t);
      }
      // causal mask: token i sits at position start_pos + i and sees [0, start_pos + i]
      for (int64_t i = 0; i < n; ++i) {
        T* s = scores.data() + i * t;
        for (int64_t j = 0; j < t; ++j) s[j] *= scale;
        softmax_masked(s, t, start_pos + i + 1);
        rnd(s, t);
      }
      T* oh = o.data() + h * dv;                                    // rows stride H*dv
      if (form == AttnForm::absorb) {
        // o_lat[n, r] = P[n, t] @ C[t, r];  o_h[n, dv] = o_lat @ W_UV^T
        gemm(false, false, n, r, t, T(1), scores.data(), t, C, r, T(0), tmp.data(), r);
        rnd(tmp.data(), n * r);
        gemm(false, true, n, dv, r, T(1), tmp.data(), r, W_UV, r, T(0), oh, H * dv);
      } else {
        // v[t, dv] = C @ W_UV^T;  o_h = P @ v
        gemm(false, true, t, dv, r, T(1), C, r, W_UV, r, T(0), tmp.data(), dv);
        rnd(tmp.data(), t * dv);
        gemm(false, false, n, dv, t, T(1), scores.data(), t, tmp.data(), dv, T(0), oh, H * dv);
      }
    }
  }
  round_act(v, o);
  trace.emit("attn_out", layer, start_pos, n, H * dv, o.data());
  Mat<T> out = be.linear(o, w.o_proj, v);                                 // [n, D]
  trace.emit("attn_o_proj", layer, start_pos, n, cols(out), out.data());
  return out;
}

}  // namespace dsv3
