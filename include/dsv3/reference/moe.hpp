// dsv3/reference/moe.hpp — DeepSeekMoE as the report writes it (DeepSeek-V3
// report §2.1.2, eqs. 12–16; docs/semantics.md §6–7), one token at a time.
// Symbols: u_t the input row, N_s shared and N_r routed experts, K_r =
// num_experts_per_tok, e_i expert i's router row (gate.weight), b_i its
// bias (e_score_correction_bias), M groups (n_group) of which topk_group are kept.
//
//   h'_t    = u_t + Σ_{i≤N_s} FFN_i^(s)(u_t) + Σ_{i≤N_r} g_i,t FFN_i^(r)(u_t)   (12)  (u_t + … is the block's residual add)
//   g_i,t   = g'_i,t / Σ_j g'_j,t                                             (13)  norm_topk_prob, then × routed_scaling_factor
//   s_i,t   = Sigmoid(u_tᵀ e_i)                                               (15)
//   g'_i,t  = s_i,t if s_i,t + b_i ∈ Topk({s_j,t + b_j}, K_r), else 0          (16)  (eq. 14 without the bias)
// Group-limited (node-limited) selection before the top-K: a group's score
// is the sum of its two largest s + b; only the topk_group best groups take
// part, the others are masked with −inf (official @1398800; D7).
// FFN(u) = W_down (silu(W_gate u) ⊙ W_up u), SwiGLU (dense layers use it too).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "../backend.hpp"
#include "../config.hpp"
#include "../trace.hpp"
#include "ops.hpp"

namespace dsv3 {

struct Routing {
  std::vector<int32_t> ids;     // [n, k] selected experts, ascending per token
  std::vector<double> weights;  // [n, k] combine weights g_i,t aligned with ids
  int64_t k = 0;
};

namespace reference {

// Indices of the `k` largest values (ties: lower index first), in that order.
template <class T>
inline std::vector<int64_t> topk_indices(const T* a, int64_t len, int64_t k) {
  std::vector<int64_t> idx(static_cast<std::size_t>(len));
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int64_t x, int64_t y) {
    return a[x] > a[y] || (a[x] == a[y] && x < y);
  });
  idx.resize(std::size_t(k));
  return idx;
}

// The routing of one token, and what the trace shows of it.
template <class T>
struct TokenRoute {
  std::vector<int32_t> ids;       // K_r experts, ascending
  std::vector<double> weights;    // g_i,t × routed_scaling_factor, aligned with ids
  std::vector<T> s, biased;       // [N_r] s_i,t and s_i,t + b_i
  std::vector<T> group_scores;    // [M]
  std::vector<int32_t> groups;    // the kept groups, ascending
  double margin = INFINITY;       // K-th minus (K+1)-th candidate: how close a flip is
};

// Engine emulation: the official Gate runs in bf16 (D6) when asked.
template <class T>
inline T router_round(const Variants& v, T a) {
  return v.router_precision == RouterPrecision::bf16 ? T(round_bf16(float(a))) : a;
}

// Router logits u_tᵀ e_i for every token, [n, N_r]: fp32 (or, D6, bf16-rounded);
// never rounded by the activation knobs.
template <class T>
inline Mat<T> router_logits(const Backend<T>& be, const GateWeights& gw, const Mat<T>& x, const Variants& v) {
  Linear gate;
  gate.weight = gw.weight;
  Mat<T> logits = HostOps<T>{be}.linear(x, gate, Variants{});
  round_bf16_if(v.router_precision == RouterPrecision::bf16, logits.begin(), logits.end());
  return logits;
}

// Experts per token: the config's K_r, or the experts_per_tok knob.
inline int64_t experts_per_token(const Config& c, const Variants& v) {
  const int64_t k = v.experts_per_tok > 0 ? v.experts_per_tok : c.num_experts_per_tok;
  if (k > c.topk_group * c.experts_per_group())
    fail("experts_per_tok = ", k, " exceeds the ", c.topk_group * c.experts_per_group(), " experts of the kept groups");
  return k;
}

// One token: logits [N_r] and bias b [N_r] -> its K_r experts and weights.
template <class T>
inline TokenRoute<T> select_experts(const T* logits, const T* b, const Config& c, int64_t K, const Variants& v) {
  const int64_t N_r = c.n_routed_experts, M = c.n_group, per = c.experts_per_group();
  TokenRoute<T> r;
  r.s.resize(std::size_t(N_r));
  r.biased.resize(std::size_t(N_r));
  for (int64_t i = 0; i < N_r; ++i) {
    r.s[i] = router_round(v, sigmoid(logits[i]));                     // eq. (15) s_i,t
    r.biased[i] = r.s[i] + b[i];                                       // eq. (16) s_i,t + b_i, selection only
  }
  r.group_scores.resize(std::size_t(M));
  for (int64_t g = 0; g < M; ++g) {                                    // group score: its two largest s + b
    T sum = 0;
    for (int64_t j : topk_indices(r.biased.data() + g * per, per, std::min<int64_t>(2, per))) sum += r.biased[std::size_t(g * per + j)];
    r.group_scores[std::size_t(g)] = sum;
  }
  std::vector<int64_t> kept = topk_indices(r.group_scores.data(), M, c.topk_group);
  const T fill = v.group_mask_fill == MaskFill::zero ? T(0) : T(-INFINITY);     // D7: −inf (official) or 0 (mlx-lm)
  std::vector<T> candidates(std::size_t(N_r), fill);
  for (int64_t g : kept)
    for (int64_t i = g * per; i < (g + 1) * per; ++i) candidates[std::size_t(i)] = r.biased[std::size_t(i)];
  // eqs. (14), (16): Topk(·, K_r) over s + b (eq. 14 is the same rule on s alone); one more for the margin
  std::vector<int64_t> top = topk_indices(candidates.data(), N_r, std::min(N_r, K + 1));
  if (int64_t(top.size()) > K) r.margin = double(candidates[std::size_t(top[std::size_t(K - 1)])] - candidates[std::size_t(top[std::size_t(K)])]);
  top.resize(std::size_t(K));
  std::sort(top.begin(), top.end());
  double denom = 0;                                                    // eq. (13) Σ_j g'_j,t
  for (int64_t i : top) denom += double(r.s[std::size_t(i)]);
  denom = double(router_round(v, T(denom)));
  for (int64_t i : top) {
    T g = r.s[std::size_t(i)];                                         // eq. (16) g'_i,t = s_i,t (unbiased)
    if (c.norm_topk_prob) g = router_round(v, T(double(g) / denom));   // eq. (13)
    r.ids.push_back(int32_t(i));
    r.weights.push_back(double(router_round(v, g * T(c.routed_scaling_factor))));
  }
  std::sort(kept.begin(), kept.end());
  r.groups.assign(kept.begin(), kept.end());
  return r;
}

// Packs the tokens' routes into a Routing, emitting the router's trace points.
template <class T>
inline Routing pack_routing(const std::vector<TokenRoute<T>>& routes, const Mat<T>& logits, const Config& c, int64_t K,
                            const Trace& trace, int64_t layer, int64_t start_pos) {
  const int64_t n = int64_t(routes.size()), N_r = c.n_routed_experts, M = c.n_group;
  Routing r;
  r.k = K;
  for (const auto& t : routes) {
    r.ids.insert(r.ids.end(), t.ids.begin(), t.ids.end());
    r.weights.insert(r.weights.end(), t.weights.begin(), t.weights.end());
  }
  trace.emit("router_logits", layer, start_pos, n, N_r, logits.data());
  if (!trace.enabled()) return r;
  // the selection, editable (force a token's experts): checked before any expert runs
  trace.edit("topk_ids", layer, start_pos, n, K, r.ids.data());
  trace.edit("topk_weights", layer, start_pos, n, K, r.weights.data());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < K; ++j) {
      const int32_t e = r.ids[std::size_t(t * K + j)];
      if (e < 0 || e >= N_r) fail("layer ", layer, " token ", t, ": topk_ids edited to expert ", e, ", outside [0, ", N_r, ")");
      for (int64_t q = 0; q < j; ++q)
        if (r.ids[std::size_t(t * K + q)] == e) fail("layer ", layer, " token ", t, ": topk_ids edited to expert ", e, " twice");
      if (!std::isfinite(r.weights[std::size_t(t * K + j)])) fail("layer ", layer, " token ", t, ": topk_weights edited to a non-finite value");
    }
  std::vector<T> s, b, g;
  std::vector<int32_t> groups;
  std::vector<double> margin;
  for (const auto& t : routes) {
    s.insert(s.end(), t.s.begin(), t.s.end());
    b.insert(b.end(), t.biased.begin(), t.biased.end());
    g.insert(g.end(), t.group_scores.begin(), t.group_scores.end());
    groups.insert(groups.end(), t.groups.begin(), t.groups.end());
    margin.push_back(t.margin);
  }
  trace.emit("router_scores", layer, start_pos, n, N_r, s.data());
  trace.emit("router_biased", layer, start_pos, n, N_r, b.data());
  trace.emit("group_scores", layer, start_pos, n, M, g.data());
  trace.emit("topk_groups", layer, start_pos, n, c.topk_group, groups.data());
  trace.emit("topk_margin", layer, start_pos, n, 1, margin.data());
  return r;
}

template <class T>
inline std::vector<T> router_bias(const GateWeights& gw, const Config& c) {
  if (gw.e_score_correction_bias) return decode_vector<T>(*gw.e_score_correction_bias);
  return std::vector<T>(static_cast<std::size_t>(c.n_routed_experts), T(0));
}

// The router for every token of x (eqs. 13–16).
template <class T>
inline Routing route(const Backend<T>& be, const Config& c, const GateWeights& gw, const Mat<T>& x, const Trace& trace,
                     int64_t layer, int64_t start_pos, const Variants& v) {
  const int64_t K = experts_per_token(c, v);
  const Mat<T> logits = router_logits(be, gw, x, v);                  // u_tᵀ e_i       [n, N_r]
  const std::vector<T> b = router_bias<T>(gw, c);
  std::vector<TokenRoute<T>> routes;
  for (int64_t t = 0; t < rows(x); ++t) routes.push_back(select_experts(&logits(t, 0), b.data(), c, K, v));
  return pack_routing(routes, logits, c, K, trace, layer, start_pos);
}

// FFN(u) = W_down (silu(W_gate u) ⊙ W_up u): dense MLP, routed and shared experts.
template <class T>
inline Mat<T> mlp(const Backend<T>& be, const MLPWeights& w, const Mat<T>& x, const Variants& v) {
  const HostOps<T> ops{be};
  const Mat<T> gate = ops.linear(x, w.gate_proj, v);                   // [n, I]
  const Mat<T> up = ops.linear(x, w.up_proj, v);                       // [n, I]
  Mat<T> a = empty<T>(rows(gate), cols(gate));
  for (std::size_t e = 0; e < a.size(); ++e) a.data()[e] = swiglu(gate.data()[e], up.data()[e], v);
  round_act(v, a);
  return ops.linear(a, w.down_proj, v);                                // [n, d]
}

// y[0, d) += g · f[0, d): one routed expert's term of eq. (12). With bf16
// activations each term and the running sum are bf16 (the official code's
// bf16 `y[idx] += expert(x[idx]) * weights[idx, top, None]`).
template <class T>
inline void add_weighted(T* y, T g, const T* f, int64_t d, const Variants& v) {
  for (int64_t e = 0; e < d; ++e) y[e] = round_act_value(v, y[e] + round_act_value(v, g * f[e]));
}

// The MoE layer for every token of x: [n, d] -> [n, d], without the residual.
template <class T>
inline Mat<T> moe(const Backend<T>& be, const Config& c, const MoEWeights& w, const Mat<T>& x, const Trace& trace,
                  int64_t layer, int64_t start_pos, const Variants& v) {
  const int64_t n = rows(x), d = cols(x);
  const HostOps<T> ops{be};                                             // experts run through the dispatcher
  const Routing r = route(be, c, w.gate, x, trace, layer, start_pos, v);
  Mat<T> y = zeros<T>(n, d);
  for (int64_t t = 0; t < n; ++t) {
    const Mat<T> u_t = take_row(x, t);                                 // [1, d]
    for (int64_t j = 0; j < r.k; ++j) {                                // ascending expert id (official MoE.forward order)
      const int32_t i = r.ids[std::size_t(t * r.k + j)];
      const Mat<T> f = ops.mlp(w.experts[std::size_t(i)], u_t, v);     // FFN_i^(r)(u_t)
      add_weighted(&y(t, 0), T(r.weights[std::size_t(t * r.k + j)]), f.data(), d, v);  // eq. (12) Σ g_i,t FFN_i^(r)(u_t)
    }
  }
  trace.edit("routed_out", layer, start_pos, n, d, y.data());
  if (!w.shared_experts) return y;
  Mat<T> shared = ops.mlp(*w.shared_experts, x, v);             // eq. (12) Σ FFN_i^(s)(u_t): N_s experts as one wider FFN
  trace.edit("shared_out", layer, start_pos, n, d, shared.data());
  y += shared;
  round_act(v, y);
  return y;
}

}  // namespace reference
}  // namespace dsv3
