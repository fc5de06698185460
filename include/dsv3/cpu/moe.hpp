// dsv3/cpu/moe.hpp — the CPU backend's MoE layer and SwiGLU MLPs.
//
// The same math as reference/moe.hpp (eqs. 12–16 there), made fast: the
// router runs reference::select_experts for the tokens in parallel; tokens
// are grouped by expert, so each expert that any token chose runs once over
// its rows, and with the shared expert they are independent MLPs run as two
// rounds of linears (mlp_many); each token's terms are then added in
// ascending expert id, as the reference does. tests/test_backend_ops.cpp
// checks it against the reference.
#pragma once

#include <algorithm>
#include <cstring>
#include <cstdint>
#include <numeric>
#include <vector>

#include "../backend.hpp"
#include "../config.hpp"
#include "../experts.hpp"
#include "../reference/moe.hpp"
#include "../trace.hpp"
#include "../weights.hpp"
#include "linear.hpp"

namespace dsv3::cpu {

// SwiGLU MLP: down(silu(gate(x)) * up(x)). Dense layers, experts, shared experts.
// Below this many elements a SwiGLU is cheaper than waking threads for it.
// An element costs about 9 ns (an exp and a divide), an OpenMP region about
// 1 µs: a decode step's seven mid-model experts (7 × 192 elements) took 13 µs
// a layer alone, 7 µs over 2 threads (it was 65536, and every decode step's
// SwiGLUs ran on one thread: about 2% of mid decode).
constexpr std::size_t kSwigluParallelElems = 1024;

// g <- silu(g) * u, in place.
template <class T>
inline void swiglu(Mat<T>& g, const Mat<T>& u, const Variants& v) {
  for_rows(int64_t(g.size()), g.size() > kSwigluParallelElems,
           [&](int64_t i) { g.data()[i] = reference::swiglu(g.data()[i], u.data()[i], v); });
  round_act(v, g);
}

template <class T>
inline Mat<T> mlp(const Backend<T>& be, const MLPWeights& w, const Mat<T>& x, const Variants& v = {}) {
  const HostOps<T> ops{be};
  Mat<T> g = ops.linear(x, w.gate_proj, v);  // [n, I]
  Mat<T> u = ops.linear(x, w.up_proj, v);    // [n, I]
  swiglu(g, u, v);
  return ops.linear(g, w.down_proj, v);      // [n, D]
}

// Several SwiGLU MLPs on their own inputs, in two rounds of independent
// linears (every gate and up, then every down): a MoE layer's experts.
template <class T>
inline std::vector<Mat<T>> mlp_many(const Backend<T>& be, const std::vector<const MLPWeights*>& ws,
                                            const std::vector<const Mat<T>*>& xs, const Variants& v = {}) {
  std::vector<MatJob<T>> jobs;
  for (std::size_t e = 0; e < ws.size(); ++e) {
    jobs.push_back({xs[e], &ws[e]->gate_proj});
    jobs.push_back({xs[e], &ws[e]->up_proj});
  }
  std::vector<Mat<T>> gu = HostOps<T>{be}.linear_many(jobs, v);
  jobs.clear();
  std::size_t elems = 0;
  for (std::size_t e = 0; e < ws.size(); ++e) elems += gu[2 * e].size();
  if (elems > kSwigluParallelElems) {  // an expert a thread at a time (each expert's own loop then runs plainly)
#pragma omp parallel for schedule(dynamic, 1)
    for (std::size_t e = 0; e < ws.size(); ++e) swiglu(gu[2 * e], gu[2 * e + 1], v);
  } else {
    for (std::size_t e = 0; e < ws.size(); ++e) swiglu(gu[2 * e], gu[2 * e + 1], v);
  }
  for (std::size_t e = 0; e < ws.size(); ++e) jobs.push_back({&gu[2 * e], &ws[e]->down_proj});
  return HostOps<T>{be}.linear_many(jobs, v);
}

// The router: reference::select_experts for every token, tokens over threads.
template <class T>
inline Routing route(const Backend<T>& be, const Config& c, const GateWeights& gw, const Mat<T>& x, const Trace& trace,
                     int64_t layer, int64_t start_pos, const Variants& v = {}) {
  const int64_t n = rows(x), K = reference::experts_per_token(c, v);
  const Mat<T> logits = reference::router_logits(be, gw, x, v);  // [n, E]
  const std::vector<T> bias = reference::router_bias<T>(gw, c);
  std::vector<reference::TokenRoute<T>> routes(static_cast<std::size_t>(n));
  ThreadErrors errs;
  for_rows(n, n > kFusedMaxRows, [&](int64_t i) {
    errs.run([&] { routes[std::size_t(i)] = reference::select_experts(&logits(i, 0), bias.data(), c, K, v); });
  });
  errs.rethrow();
  return reference::pack_routing(routes, logits, c, K, trace, layer, start_pos);
}

// Expert parallelism (experts.hpp): every process computed the outputs of
// the active experts it owns (`out[a]` for those a); afterwards every process
// holds every active expert's output. Rank order is ascending expert order.
template <class T>
inline void exchange_expert_outputs(const ExpertGroup& g, int64_t n_experts, const std::vector<int64_t>& active,
                                    const std::vector<std::vector<int64_t>>& by_expert, int64_t D,
                                    std::vector<Mat<T>>& out) {
  std::vector<std::size_t> counts(std::size_t(g.size()), 0);
  for (int64_t e : active) counts[std::size_t(g.owner(e, n_experts))] += by_expert[std::size_t(e)].size() * std::size_t(D) * sizeof(T);
  std::vector<unsigned char> mine;
  mine.reserve(counts[std::size_t(g.rank())]);
  for (std::size_t a = 0; a < active.size(); ++a)
    if (g.owns(active[a], n_experts)) {
      const auto* p = reinterpret_cast<const unsigned char*>(out[a].data());
      mine.insert(mine.end(), p, p + out[a].size() * sizeof(T));
    }
  std::vector<unsigned char> all;
  g.allgather(mine, counts, all);
  std::size_t off = 0;
  for (std::size_t a = 0; a < active.size(); ++a) {
    const int64_t m = int64_t(by_expert[std::size_t(active[a])].size());
    if (!g.owns(active[a], n_experts)) {
      out[a] = empty<T>(m, D);
      std::memcpy(out[a].data(), all.data() + off, out[a].size() * sizeof(T));
    }
    off += std::size_t(m * D) * sizeof(T);
  }
}

// Tokens are grouped by expert: each expert that any token chose runs once on
// the rows that chose it, and its weighted output is added to those rows.
// With an expert group, this process runs only the experts it owns.
template <class T>
inline Mat<T> moe(const Backend<T>& be, const Config& c, const MoEWeights& w, const Mat<T>& x, const Trace& trace,
                          int64_t layer, int64_t start_pos, const Variants& v = {}, const ExpertGroup* group = nullptr) {
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
  const bool split = group && group->size() > 1;
  auto mine = [&](std::size_t a) { return !split || group->owns(active[a], c.n_routed_experts); };
  // An expert's input: the rows that chose it, copied; or, where every token
  // chose it (always in decode, n = 1), x itself: its rows are then 0 … n − 1
  // in order. The linears see one input for those experts, so x is prepared
  // for them once, with no copies to compare.
  std::vector<Mat<T>> xs(active.size());
  std::vector<const Mat<T>*> inputs;
  std::vector<const MLPWeights*> mlps;
  std::vector<std::size_t> ran, copied;  // the active slots this process computes; those with a copy
  for (std::size_t a = 0; a < active.size(); ++a) {
    if (!mine(a)) continue;
    const int64_t m = int64_t(by_expert[std::size_t(active[a])].size());
    if (m < n) xs[a] = empty<T>(m, D), copied.push_back(a);
    inputs.push_back(m < n ? &xs[a] : &x);
    mlps.push_back(&w.experts[std::size_t(active[a])]);
    ran.push_back(a);
  }
  for_rows(int64_t(copied.size()), n > kFusedMaxRows, [&](int64_t r) {  // (copies: any order)
    const std::size_t a = copied[std::size_t(r)];
    const auto& rows_e = by_expert[std::size_t(active[a])];
    for (std::size_t m = 0; m < rows_e.size(); ++m) std::copy_n(&x(rows_e[m], 0), D, &xs[a](int64_t(m), 0));
  });
  if (w.shared_experts) inputs.push_back(&x), mlps.push_back(&*w.shared_experts);
  std::vector<Mat<T>> computed = mlp_many(be, mlps, inputs, v);
  Mat<T> shared;
  if (w.shared_experts) shared = std::move(computed.back());
  std::vector<Mat<T>> out(active.size());
  for (std::size_t r = 0; r < ran.size(); ++r) out[ran[r]] = std::move(computed[r]);
  if (split) exchange_expert_outputs(*group, c.n_routed_experts, active, by_expert, D, out);
  // Each token's terms in ascending expert id (its ids are ascending).
  Mat<T> y = empty<T>(n, D);
  for_rows(n, n > kFusedMaxRows, [&](int64_t i) {  // rows are independent; each row's sum keeps its order
    T* dst = &y(i, 0);
    std::fill_n(dst, D, T(0));
    for (int64_t j = 0; j < r.k; ++j) {
      const std::size_t ij = std::size_t(i * r.k + j);
      reference::add_weighted(dst, T(r.weights[ij]), &out[slot[std::size_t(r.ids[ij])]](row_in[ij], 0), D, v);
    }
  });
  trace.edit("routed_out", layer, start_pos, n, D, y.data());
  if (w.shared_experts) {
    trace.edit("shared_out", layer, start_pos, n, D, shared.data());
    for_rows(n, n > kFusedMaxRows, [&](int64_t i) {
      for (int64_t d = 0; d < D; ++d) y(i, d) += shared(i, d);
    });
    round_act(v, y);
  }
  return y;
}

}  // namespace dsv3::cpu
