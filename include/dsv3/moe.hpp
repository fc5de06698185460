// dsv3/moe.hpp — the DeepSeekMoE layer: noaux_tc router, routed SwiGLU
// experts and shared experts (model-semantics §7; report §2.1.2, eqs. 12–16).
//
// Router, per token:
//   s      = sigmoid(x W_gateᵀ)                        [E]   affinity
//   b      = s + e_score_correction_bias               [E]   selection only
//   g_j    = sum of the top-2 b in group j             [n_group]
//   keep the topk_group best groups, b = −inf elsewhere (OFF @1398800)
//   idx    = top-k of b                                [k]
//   w      = s[idx] (unbiased), / sum when norm_topk_prob, × routed_scaling_factor
// Output: Σ_i w_i · expert_idx_i(x) + shared_experts(x). Routed outputs are
// summed in ascending expert id (OFF MoE.forward loops over experts in order).
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "backend.hpp"
#include "config.hpp"
#include "ops.hpp"
#include "trace.hpp"
#include "weights.hpp"

namespace dsv3 {

// SwiGLU MLP: down(silu(gate(x)) * up(x)). Dense layers, experts, shared experts.
// Below this many elements a SwiGLU is cheaper than waking threads for it.
constexpr std::size_t kSwigluParallelElems = 65536;

// g <- silu(g) * u, in place.
template <class T>
inline void swiglu(Mat<T>& g, const Mat<T>& u, const Variants& v) {
#pragma omp parallel for schedule(static) if (g.size() > kSwigluParallelElems)
  for (std::size_t i = 0; i < g.size(); ++i) {
    T a = silu(g.data()[i]);
    if (v.bf16_activations) a = T(round_bf16(float(a)));
    g.data()[i] = a * u.data()[i];
  }
  round_act(v, g);
}

template <class T>
inline Mat<T> mlp_forward(const Backend<T>& be, const MLPWeights& w, const Mat<T>& x, const Variants& v = {}) {
  Mat<T> g = be.linear(x, w.gate_proj, v);  // [n, I]
  Mat<T> u = be.linear(x, w.up_proj, v);    // [n, I]
  swiglu(g, u, v);
  return be.linear(g, w.down_proj, v);      // [n, D]
}

// Several SwiGLU MLPs on their own inputs, in two rounds of independent
// linears (every gate and up, then every down): a MoE layer's experts.
template <class T>
inline std::vector<Mat<T>> mlp_forward_many(const Backend<T>& be, const std::vector<const MLPWeights*>& ws,
                                            const std::vector<const Mat<T>*>& xs, const Variants& v = {}) {
  std::vector<LinearJob<T>> jobs;
  for (std::size_t e = 0; e < ws.size(); ++e) {
    jobs.push_back({xs[e], &ws[e]->gate_proj});
    jobs.push_back({xs[e], &ws[e]->up_proj});
  }
  std::vector<Mat<T>> gu = be.linear_many(jobs, v);
  jobs.clear();
  std::size_t elems = 0;
  for (std::size_t e = 0; e < ws.size(); ++e) elems += gu[2 * e].size();
#pragma omp parallel for schedule(dynamic, 1) if (elems > kSwigluParallelElems)
  for (std::size_t e = 0; e < ws.size(); ++e) swiglu(gu[2 * e], gu[2 * e + 1], v);
  for (std::size_t e = 0; e < ws.size(); ++e) jobs.push_back({&gu[2 * e], &ws[e]->down_proj});
  return be.linear_many(jobs, v);
}

struct Routing {
  std::vector<int32_t> ids;   // [n, k] selected experts, ascending per token
  std::vector<double> weights;  // [n, k] combine weights aligned with ids
  int64_t k = 0;
};

// Indices of the `k` largest values (ties: lower index first), in that order.
template <class T>
inline std::vector<int64_t> topk_indices(const T* v, int64_t len, int64_t k) {
  std::vector<int64_t> idx(static_cast<std::size_t>(len));
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int64_t a, int64_t b) {
    return v[a] > v[b] || (v[a] == v[b] && a < b);
  });
  idx.resize(std::size_t(k));
  return idx;
}

template <class T>
inline Routing route(const Backend<T>& be, const Config& c, const GateWeights& gw, const Mat<T>& x, const Trace& trace,
                     int64_t layer, int64_t start_pos, const Variants& v = {}) {
  const int64_t n = rows(x), E = c.n_routed_experts, G = c.n_group, per = c.experts_per_group();
  const int64_t k = v.experts_per_tok > 0 ? v.experts_per_tok : c.num_experts_per_tok;
  if (k > c.topk_group * per)
    fail("experts_per_tok = ", k, " exceeds the ", c.topk_group * per, " experts of the kept groups");
  const bool bf16 = v.router_precision == "bf16";  // OFF Gate: bf16 linear, sigmoid, weights
  const T fill = v.group_mask_fill == "0" ? T(0) : T(-INFINITY);
  auto rb = [&](T a) { return bf16 ? T(round_bf16(float(a))) : a; };
  Linear gate;
  gate.weight = gw.weight;
  Mat<T> logits = be.linear(x, gate, Variants{});  // [n, E], never rounded by the activation knobs
  if (bf16) round_bf16_if(true, logits.begin(), logits.end());
  trace.emit("router_logits", layer, start_pos, n, E, logits.data());
  std::vector<T> bias(static_cast<std::size_t>(E), T(0));
  if (gw.e_score_correction_bias) bias = decode_vector<T>(*gw.e_score_correction_bias);
  Routing r;
  r.k = k;
  r.ids.resize(std::size_t(n * k));
  r.weights.resize(std::size_t(n * k));
  const bool tr = trace.enabled();
  std::vector<T> all_s(tr ? std::size_t(n * E) : 0), all_b(tr ? std::size_t(n * E) : 0), all_g(tr ? std::size_t(n * G) : 0);
  std::vector<double> all_margin(tr ? std::size_t(n) : 0);
  std::vector<int32_t> all_groups(tr ? std::size_t(n * c.topk_group) : 0);
#pragma omp parallel for schedule(static) if (n > kFusedMaxRows)
  for (int64_t i = 0; i < n; ++i) {  // tokens are independent
    std::vector<T> s(static_cast<std::size_t>(E)), b(static_cast<std::size_t>(E)), gs(static_cast<std::size_t>(G));
    for (int64_t e = 0; e < E; ++e) {
      s[e] = rb(sigmoid(logits(i, e)));
      b[e] = s[e] + bias[e];
    }
    for (int64_t g = 0; g < G; ++g) {  // group score: sum of the top-2 biased scores
      auto top2 = topk_indices(b.data() + g * per, per, std::min<int64_t>(2, per));
      T sum = 0;
      for (int64_t j : top2) sum += b[std::size_t(g * per + j)];
      gs[g] = sum;
    }
    auto groups = topk_indices(gs.data(), G, c.topk_group);
    std::vector<T> masked(std::size_t(E), fill);
    for (int64_t g : groups)
      for (int64_t e = g * per; e < (g + 1) * per; ++e) masked[e] = b[e];
    auto ids = topk_indices(masked.data(), E, std::min(E, k + 1));
    // near-tie margin: k-th minus (k+1)-th candidate (what a rounding can flip)
    const double margin = int64_t(ids.size()) > k ? double(masked[ids[std::size_t(k - 1)]] - masked[ids[std::size_t(k)]]) : INFINITY;
    ids.resize(std::size_t(k));
    std::sort(ids.begin(), ids.end());
    double denom = 0;
    for (int64_t e : ids) denom += double(s[e]);
    denom = double(rb(T(denom)));
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = ids[std::size_t(j)];
      T wgt = s[e];
      if (c.norm_topk_prob) wgt = rb(T(double(wgt) / denom));
      r.ids[std::size_t(i * k + j)] = int32_t(e);
      r.weights[std::size_t(i * k + j)] = double(rb(wgt * T(c.routed_scaling_factor)));
    }
    if (tr) {
      std::copy(s.begin(), s.end(), all_s.begin() + i * E);
      std::copy(b.begin(), b.end(), all_b.begin() + i * E);
      std::copy(gs.begin(), gs.end(), all_g.begin() + i * G);
      all_margin[std::size_t(i)] = margin;
      std::sort(groups.begin(), groups.end());
      for (std::size_t j = 0; j < groups.size(); ++j) all_groups[std::size_t(i * c.topk_group) + j] = int32_t(groups[j]);
    }
  }
  if (tr) {
    trace.emit("router_scores", layer, start_pos, n, E, all_s.data());
    trace.emit("router_biased", layer, start_pos, n, E, all_b.data());
    trace.emit("group_scores", layer, start_pos, n, G, all_g.data());
    trace.emit("topk_groups", layer, start_pos, n, c.topk_group, all_groups.data());
    trace.emit("topk_ids", layer, start_pos, n, k, r.ids.data());
    trace.emit("topk_weights", layer, start_pos, n, k, r.weights.data());
    trace.emit("topk_margin", layer, start_pos, n, 1, all_margin.data());
  }
  return r;
}

// Tokens are grouped by expert: each expert that any token chose runs once on
// the rows that chose it, and its weighted output is added to those rows.
template <class T>
inline Mat<T> moe_forward(const Backend<T>& be, const Config& c, const MoEWeights& w, const Mat<T>& x, const Trace& trace,
                          int64_t layer, int64_t start_pos, const Variants& v = {}) {
  const int64_t n = rows(x), D = cols(x);
  Routing r = route(be, c, w.gate, x, trace, layer, start_pos, v);
  // Tokens grouped by expert: the token rows that chose each expert, and for
  // every choice (i, j) the row it takes in its expert's input.
  std::vector<std::vector<int64_t>> by_expert(static_cast<std::size_t>(c.n_routed_experts));
  std::vector<int64_t> row_in(r.ids.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < r.k; ++j) {
      auto& rows_e = by_expert[std::size_t(r.ids[std::size_t(i * r.k + j)])];
      row_in[std::size_t(i * r.k + j)] = int64_t(rows_e.size());
      rows_e.push_back(i);
    }
  std::vector<int64_t> active;                                   // experts some token chose, ascending
  std::vector<std::size_t> slot(static_cast<std::size_t>(c.n_routed_experts));  // expert id -> index in active
  for (int64_t e = 0; e < c.n_routed_experts; ++e)
    if (!by_expert[std::size_t(e)].empty()) slot[std::size_t(e)] = active.size(), active.push_back(e);
  // One expert = one SwiGLU over its rows; with the shared expert they are
  // independent MLPs, run together in two rounds of linears (every gate and
  // up, then every down: mlp_forward_many), however the backend spreads them
  // over its threads. Each expert's output is the same as alone, and they
  // are summed below in ascending expert id, then the shared expert's output.
  std::vector<Mat<T>> xs(active.size());
  std::vector<const Mat<T>*> inputs;
  std::vector<const MLPWeights*> mlps;
  for (std::size_t a = 0; a < active.size(); ++a) {
    xs[a] = empty<T>(int64_t(by_expert[std::size_t(active[a])].size()), D);
    inputs.push_back(&xs[a]);
    mlps.push_back(&w.experts[std::size_t(active[a])]);
  }
#pragma omp parallel for schedule(static) if (n > kFusedMaxRows)
  for (std::size_t a = 0; a < active.size(); ++a) {  // the rows that chose expert active[a] (copies: any order)
    const auto& rows_e = by_expert[std::size_t(active[a])];
    for (std::size_t m = 0; m < rows_e.size(); ++m) std::copy_n(&x(rows_e[m], 0), D, &xs[a](int64_t(m), 0));
  }
  if (w.shared_experts) inputs.push_back(&x), mlps.push_back(&*w.shared_experts);
  std::vector<Mat<T>> out = mlp_forward_many(be, mlps, inputs, v);
  Mat<T> shared;
  if (w.shared_experts) shared = std::move(out.back());
  // Each token's terms in ascending expert id (its ids are ascending).
  Mat<T> y = empty<T>(n, D);
#pragma omp parallel for schedule(static) if (n > kFusedMaxRows)
  for (int64_t i = 0; i < n; ++i) {  // rows are independent; each row's sum keeps its order
    T* dst = &y(i, 0);
    std::fill_n(dst, D, T(0));
    for (int64_t j = 0; j < r.k; ++j) {
      const std::size_t ij = std::size_t(i * r.k + j);
      const T wt = T(r.weights[ij]);
      const T* src = &out[slot[std::size_t(r.ids[ij])]](row_in[ij], 0);
      for (int64_t d = 0; d < D; ++d) {
        const T term = wt * src[d];
        dst[d] += v.bf16_activations ? T(round_bf16(float(term))) : term;
        if (v.bf16_activations) dst[d] = T(round_bf16(float(dst[d])));  // OFF: bf16 running sum
      }
    }
  }
  trace.emit("routed_out", layer, start_pos, n, D, y.data());
  if (w.shared_experts) {
    trace.emit("shared_out", layer, start_pos, n, D, shared.data());
#pragma omp parallel for schedule(static) if (n > kFusedMaxRows)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t d = 0; d < D; ++d) y(i, d) += shared(i, d);
    round_act(v, y);
  }
  return y;
}

}  // namespace dsv3
