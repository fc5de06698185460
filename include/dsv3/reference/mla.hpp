// dsv3/reference/mla.hpp — Multi-head Latent Attention as the report writes it
// (DeepSeek-V3 report §2.1.1, eqs. 1–11; docs/semantics.md §5), one token and
// one head at a time. Symbols (config.hpp legend): h_t the input row, d_c =
// kv_lora_rank, d_c' = q_lora_rank, d_h = qk_nope_head_dim (the "content"
// part of a query/key head), d_h^R = qk_rope_head_dim, n_h heads, d_v = v_head_dim.
//
//   c_t^Q  = W^DQ h_t                      (6)   q_a_proj, then q_a_layernorm
//   q_t^C  = W^UQ c_t^Q                    (7)   q_b_proj rows [h·(d_h+d_h^R), … + d_h)
//   q_t^R  = RoPE(W^QR c_t^Q)              (8)   q_b_proj rows [… + d_h, … + d_h + d_h^R)
//   q_t,i  = [q_t,i^C ; q_t,i^R]           (9)
//   c_t^KV = W^DKV h_t                     (1)   kv_a_proj_with_mqa rows [0, d_c), then kv_a_layernorm
//   k_t^R  = RoPE(W^KR h_t)                (3)   kv_a_proj_with_mqa rows [d_c, d_c + d_h^R): one for all heads
//   k_t,i^C = W^UK_i c_t^KV                (2)   kv_b_proj rows [i·(d_h+d_v), … + d_h)
//   k_t,i  = [k_t,i^C ; k_t^R]             (4)
//   v_t,i^C = W^UV_i c_t^KV                (5)   kv_b_proj rows [i·(d_h+d_v) + d_h, … + d_v)
//   o_t,i  = Σ_{j≤t} softmax_j(q_t,iᵀ k_j,i · scale) v_j,i^C   (10)  scale = 1/√(d_h+d_h^R) · mscale²
//   u_t    = W^O [o_t,1 ; … ; o_t,n_h]     (11)  o_proj
//
// The paper omits the two RMSNorms (on c^Q and c^KV), which the checkpoint
// has. Only c^KV and k^R are cached: d_c + d_h^R values per token per layer.
//
// Two algebraically equal forms (AttnForm): "naive" builds k_j,i^C and v_j,i^C
// for every cached j (eqs. 2, 5; HF, official attn_impl="naive"); "absorb"
// (the official default) moves W^UK into the query and W^UV after the sum:
//   q_t,iᵀ k_j,i^C = (W^UK_iᵀ q_t,i^C)ᵀ c_j^KV      einsum "shd,hdc->shc"
//   o_t,i = W^UV_i Σ_j p_j c_j^KV                    einsum "shc,hdc->shd"
#pragma once

#include <cstdint>
#include <vector>

#include "../backend.hpp"
#include "../config.hpp"
#include "../trace.hpp"
#include "ops.hpp"

namespace dsv3::reference {

template <class T>
inline T dot(const T* a, const T* b, int64_t len) {
  T s = 0;
  for (int64_t k = 0; k < len; ++k) s += a[k] * b[k];
  return s;
}

// y[rows_out] = M[rows_out, len] · x[len]  (M row-major)
template <class T>
inline void matvec(const T* M, int64_t rows_out, int64_t len, const T* x, T* y) {
  for (int64_t o = 0; o < rows_out; ++o) y[o] = dot(M + o * len, x, len);
}

// y[len] = Mᵀ[len, rows_in] · x[rows_in]  (M [rows_in, len] row-major)
template <class T>
inline void matvec_t(const T* M, int64_t rows_in, int64_t len, const T* x, T* y) {
  for (int64_t c = 0; c < len; ++c) {
    T s = 0;
    for (int64_t d = 0; d < rows_in; ++d) s += M[d * len + c] * x[d];
    y[c] = s;
  }
}

template <class T>
inline Mat<T> mla(const Backend<T>& be, const Config& c, const AttentionWeights& w, const Mat<T>& x,
                  LatentCache<T>& cache, int64_t start_pos, const std::vector<RopeRow>& rope, AttnForm form,
                  const Trace& trace, int64_t layer, const Variants& v) {
  const HostOps<T> ops{be};                                          // the dispatcher's linears, norms, RoPE
  const int64_t n = rows(x), n_h = c.num_attention_heads;
  const int64_t d_h = c.qk_nope_head_dim, d_hR = c.qk_rope_head_dim, d_q = d_h + d_hR;
  const int64_t d_v = c.v_head_dim, d_c = c.kv_lora_rank;
  const double eps = c.rms_norm_eps;

  // -- queries, [n, n_h · (d_h + d_h^R)]: each head [q^C | q^R]
  Mat<T> q;
  if (w.q_a_proj) {
    Mat<T> q_a = ops.linear(x, *w.q_a_proj, v);                      // eq. (6)  W^DQ h_t      [n, d_c']
    trace.edit("q_a", layer, start_pos, n, cols(q_a), q_a.data());
    Mat<T> c_q = ops.rms_norm(q_a, *w.q_a_layernorm, eps, v);        //          c_t^Q         [n, d_c']
    trace.edit("q_a_norm", layer, start_pos, n, cols(c_q), c_q.data());
    q = ops.linear(c_q, *w.q_b_proj, v);                             // eqs. (7), (8): W^UQ c^Q, W^QR c^Q
  } else {
    q = ops.linear(x, *w.q_proj, v);                                 // q_lora_rank null: one W^Q
  }
  trace.emit_heads("q_nope", layer, start_pos, n, n_h, d_q, /*col0=*/0, /*width=*/d_h, q.data());
  trace.emit_heads("q_pe", layer, start_pos, n, n_h, d_q, /*col0=*/d_h, /*width=*/d_hR, q.data());
  ops.rope(q, /*col0=*/d_h, /*width=*/d_hR, /*stride=*/d_q, rope, c.rope_interleave);  // eq. (8) RoPE(q^R)
  round_act(v, q);
  trace.emit_heads("q_pe_rope", layer, start_pos, n, n_h, d_q, d_h, d_hR, q.data());

  // -- the latent kv of the new tokens, appended to the cache
  const Mat<T> kv = ops.linear(x, w.kv_a_proj_with_mqa, v);          // eqs. (1), (3): [W^DKV h | W^KR h]
  Mat<T> c_kv = ops.rms_norm(take_cols(kv, 0, d_c), w.kv_a_layernorm, eps, v);  // eq. (1) c_t^KV [n, d_c]
  trace.edit("c_kv", layer, start_pos, n, d_c, c_kv.data());
  Mat<T> k_pe = take_cols(kv, d_c, d_hR);                            //          W^KR h_t      [n, d_h^R]
  trace.edit("k_pe", layer, start_pos, n, d_hR, k_pe.data());
  ops.rope(k_pe, /*col0=*/0, /*width=*/d_hR, /*stride=*/d_hR, rope, c.rope_interleave);  // eq. (3) k_t^R
  round_act(v, k_pe);
  trace.edit("k_pe_rope", layer, start_pos, n, d_hR, k_pe.data());
  cache.append(c_kv.data(), k_pe.data(), n, d_c, d_hR);

  const int64_t t_all = start_pos + n;                               // positions in the cache
  std::vector<T> scratch;
  const T* KV = cache.read(scratch);                                 // [t_all, d_c + d_h^R]: row j = [c_j^KV | k_j^R]
  const int64_t d_kv = d_c + d_hR;
  if (form == AttnForm::automatic) form = attn_form_for(c, n, start_pos);
  const bool absorb = form == AttnForm::absorb;
  const T scale = T(c.softmax_scale(v.yarn_enabled(c.rope_scaling.original_max_position_embeddings)));

  Mat<T> o = empty<T>(n, n_h * d_v);                                 // [n, n_h · d_v]
  std::vector<T> W_h(static_cast<std::size_t>((d_h + d_v) * d_c));   // head i's kv_b_proj rows
  std::vector<T> k_C(absorb ? 0 : static_cast<std::size_t>(t_all * d_h)), v_C(absorb ? 0 : static_cast<std::size_t>(t_all * d_v));
  std::vector<T> q_lat(static_cast<std::size_t>(d_c)), o_lat(static_cast<std::size_t>(d_c)), p(static_cast<std::size_t>(t_all));
  for (int64_t i = 0; i < n_h; ++i) {
    for (int64_t row = 0; row < d_h + d_v; ++row) dequant_row(w.kv_b_proj, i * (d_h + d_v) + row, v, &W_h[std::size_t(row * d_c)]);
    const T* W_UK = W_h.data();                                      // [d_h, d_c]
    const T* W_UV = W_h.data() + d_h * d_c;                          // [d_v, d_c]
    if (!absorb)
      for (int64_t j = 0; j < t_all; ++j) {
        matvec(W_UK, d_h, d_c, KV + j * d_kv, &k_C[std::size_t(j * d_h)]);  // eq. (2) k_j,i^C = W^UK_i c_j^KV
        matvec(W_UV, d_v, d_c, KV + j * d_kv, &v_C[std::size_t(j * d_v)]);  // eq. (5) v_j,i^C = W^UV_i c_j^KV
        round_bf16_if(v.bf16_activations, k_C.data() + j * d_h, k_C.data() + (j + 1) * d_h);
      }
    round_act(v, v_C);
    for (int64_t s = 0; s < n; ++s) {                                // the new token at position t = start_pos + s
      const int64_t visible = start_pos + s + 1;                     // causal: positions j ≤ t
      const T* q_C = &q(s, i * d_q);                                 // eq. (9) q_t,i = [q^C | q^R]
      const T* q_R = q_C + d_h;
      if (absorb) {
        matvec_t(W_UK, d_h, d_c, q_C, q_lat.data());                 // W^UK_iᵀ q_t,i^C          [d_c]
        round_act(v, q_lat);
      }
      for (int64_t j = 0; j < visible; ++j) {
        const T* c_j = KV + j * d_kv;
        const T* k_R = c_j + d_c;
        const T content = absorb ? dot(q_lat.data(), c_j, d_c)      // (W^UK_iᵀ q^C)ᵀ c_j^KV
                                 : dot(q_C, &k_C[std::size_t(j * d_h)], d_h);  // q^Cᵀ k_j,i^C
        p[std::size_t(j)] = (content + dot(q_R, k_R, d_hR)) * scale; // eqs. (4), (10): q_t,iᵀ k_j,i · scale
      }
      softmax_masked(p.data(), visible, visible);                    // eq. (10) softmax_j
      round_bf16_if(v.bf16_activations, p.begin(), p.begin() + visible);
      T* o_ti = &o(s, i * d_v);
      if (absorb) {
        for (int64_t a = 0; a < d_c; ++a) {
          T sum = 0;
          for (int64_t j = 0; j < visible; ++j) sum += p[std::size_t(j)] * KV[j * d_kv + a];
          o_lat[std::size_t(a)] = sum;                               // Σ_j p_j c_j^KV           [d_c]
        }
        round_act(v, o_lat);
        matvec(W_UV, d_v, d_c, o_lat.data(), o_ti);                  // eq. (10) o_t,i = W^UV_i Σ_j p_j c_j^KV
      } else {
        for (int64_t e = 0; e < d_v; ++e) {
          T sum = 0;
          for (int64_t j = 0; j < visible; ++j) sum += p[std::size_t(j)] * v_C[std::size_t(j * d_v + e)];
          o_ti[e] = sum;                                             // eq. (10) o_t,i = Σ_j p_j v_j,i^C
        }
      }
    }
  }
  round_act(v, o);
  trace.edit("attn_out", layer, start_pos, n, n_h * d_v, o.data());
  Mat<T> u = ops.linear(o, w.o_proj, v);                             // eq. (11) u_t = W^O [o_t,1; …; o_t,n_h]
  trace.edit("attn_o_proj", layer, start_pos, n, cols(u), u.data());
  return u;
}

}  // namespace dsv3::reference
