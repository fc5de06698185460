// dsv3/tools/backend_check.hpp — hold a backend against the reference, op by op.
//
// What tests/test_backend_ops.cpp runs for every backend (in the manner of
// llama.cpp's test-backend-ops), usable from your own code: give it a backend
// (say, one with a new attention kernel) and a model, and it runs each op of the
// seam × the shape classes that take different paths in a fast backend, on your
// backend and on ReferenceBackend with the same inputs, and compares. A case the
// backend declines (Backend::supports) is counted as not supported, never as passed.
//
//   dsv3::check::Tally t{"mine"};
//   dsv3::check::BackendCheck<float> check{my_backend, {}, t, {}};
//   check.run("f32", model, /*quick=*/false);
//   std::puts(t.report().c_str());   // t.failed == 0: every case within tolerance
//
// Tolerances, and why (T = float; T = double: 1e-12 throughout):
//  * embed, rms_norm, rope: 0 — a fast backend must run the reference's own
//    row functions (reference::rms_norm_row, rope_apply); a row lookup has no
//    arithmetic.
//  * linear: |y − y_ref| ≤ 1e-5 · Σ_k |x_k w_k| per element. Both sum K float
//    products in different orders (lanes, BLAS blocking vs a plain loop); two
//    orders differ by at most about 2K·2^-24·Σ|x w| (3.8e-5 at K = 320), and
//    typically by √K·2^-24 ≈ 1e-6. A wrong weight, scale block, nibble or group
//    is O(1) in these units.
//  * composite ops (attention_mla, moe, mlp): max |y − y_ref| / max |y_ref|
//    ≤ 2e-5: a few chained linears, RMSNorm and softmax, each off by the
//    linear bound above.
//  * routing (moe): expert ids identical for every token whose reference
//    margin (K-th minus (K+1)-th candidate score) exceeds 1e-5, where float
//    rounding of the router logits (≈1e-7) cannot reorder candidates; such
//    tokens are left out of the output comparison too (at most one per case).
//  * with bf16 activations (Variants) or a bf16 latent cache: 5e-2 relative
//    for composites, 1e-2 for a linear. Both backends round at the same
//    points, but a float difference of 1e-7 before a rounding flips the bf16
//    result by one bf16 ulp (2^-8 relative) some of the time, and a flipped
//    element propagates through the ops after it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "../backend.hpp"
#include "../model.hpp"
#include "../reference/backend.hpp"

namespace dsv3::check {

template <class T>
inline Mat<T> random_rows(int64_t n, int64_t d, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> nd(0, scale);
  Mat<T> x = empty<T>(n, d);
  for (auto& a : x) a = T(nd(g));
  return x;
}

template <class T>
inline double max_abs(const Mat<T>& a) {
  double m = 0;
  for (auto v : a) m = std::max(m, std::fabs(double(v)));
  return m;
}

// max |a − r| / max |r| over the rows not excluded.
template <class T>
inline double rel_err(const Mat<T>& a, const Mat<T>& r, const std::vector<bool>& skip_row = {}) {
  if (a.shape() != r.shape()) return INFINITY;
  double num = 0, den = 0;
  for (int64_t i = 0; i < rows(r); ++i) {
    if (!skip_row.empty() && skip_row[std::size_t(i)]) continue;
    for (int64_t j = 0; j < cols(r); ++j) {
      if (!std::isfinite(double(a(i, j)))) return INFINITY;
      num = std::max(num, std::fabs(double(a(i, j)) - double(r(i, j))));
      den = std::max(den, std::fabs(double(r(i, j))));
    }
  }
  return den > 0 ? num / den : num;
}

// What one backend did on the suite: each case's error against its tolerance.
struct Tally {
  std::string backend;
  int passed = 0, failed = 0, unsupported = 0;
  std::map<std::string, double> worst;  // op -> largest err/tol seen
  std::vector<std::string> failures;

  void record(const std::string& op, const std::string& what, double err, double tol) {
    const bool ok = err <= tol;
    (ok ? passed : failed)++;
    worst[op] = std::max(worst[op], tol > 0 ? err / tol : (err > 0 ? INFINITY : 0.0));
    if (!ok) failures.push_back(op + " " + what + ": error " + std::to_string(err) + " > tolerance " + std::to_string(tol));
  }
  std::vector<std::string> declined;
  void not_supported(const std::string& op, const std::string& what) {
    unsupported++;
    declined.push_back(op + " " + what);
  }
  // One summary line, then a line per failed and per unsupported case.
  std::string report() const {
    std::string out = backend + ": " + std::to_string(passed) + " cases passed, " + std::to_string(failed) +
                      " failed, " + std::to_string(unsupported) + " not supported; worst err/tol per op:";
    for (const auto& [op, w] : worst) {
      char buf[96];
      std::snprintf(buf, sizeof buf, " %s %.3g", op.c_str(), w);
      out += buf;
    }
    for (const auto& f : failures) out += "\n" + backend + ": FAILED " + f;
    for (const auto& d : declined) out += "\n" + backend + ": not supported (not counted as passed): " + d;
    return out;
  }
};

template <class T>
struct Tol {
  static constexpr bool f64 = std::is_same_v<T, double>;
  double linear(bool bf16) const { return f64 ? 1e-12 : bf16 ? 1e-2 : 1e-5; }
  double composite(bool bf16) const { return f64 ? 1e-12 : bf16 ? 5e-2 : 2e-5; }
};

template <class T>
struct BackendCheck {
  const Backend<T>& be;
  ReferenceBackend<T> ref;
  Tally& tally;
  Tol<T> tol;

  // Inputs go to the backend where it computes (host view, or uploaded);
  // every result comes back to the host to be compared.
  Act<T> in(const Mat<T>& x) const { return be.on_host() ? Act<T>::view(x) : be.upload(x); }
  static Act<T> view(const Mat<T>& x) { return Act<T>::view(x); }
  bool takes(Op op, const Linear* w, const TensorView* t, const Variants& v) const { return be.supports({op, w, t, &v}); }

  // -- linear: per element, relative to Σ|x w| ------------------------------
  void linear_case(const std::string& fmt, const Linear& W, int64_t n, const Variants& v, const std::string& tag) {
    const std::string what = fmt + " " + W.name() + " n=" + std::to_string(n) + tag;
    if (!takes(Op::linear, &W, nullptr, v)) return tally.not_supported("linear", what);
    const Mat<T> x = random_rows<T>(n, W.in(), uint64_t(n * 131 + W.out()));
    const Mat<T> y = home(be.linear(in(x), W, v)), r = home(ref.linear(view(x), W, v));
    tally.record("linear", what, linear_err(x, W, y, r, v), tol.linear(v.bf16_activations));
  }
  double linear_err(const Mat<T>& x, const Linear& W, const Mat<T>& y, const Mat<T>& r, const Variants& v) {
    if (y.shape() != r.shape()) return INFINITY;
    std::vector<double> w(static_cast<std::size_t>(W.in()));
    double worst = 0;
    for (int64_t o = 0; o < W.out(); ++o) {
      reference::dequant_row(W, o, v, w.data());
      for (int64_t i = 0; i < rows(x); ++i) {
        double mag = 0;
        for (int64_t k = 0; k < W.in(); ++k) mag += std::fabs(double(x(i, k)) * w[std::size_t(k)]);
        if (v.bf16_activations) mag = std::max(mag, std::fabs(double(r(i, o))));  // bf16 ulps are relative to y
        const double e = std::fabs(double(y(i, o)) - double(r(i, o)));
        worst = std::max(worst, std::isfinite(e) ? e / std::max(mag, 1e-30) : INFINITY);
      }
    }
    return worst;
  }

  void linear_many_case(const std::string& fmt, const std::vector<const Linear*>& ws, const std::vector<int64_t>& ns) {
    std::string what = fmt + " linear_many n=";
    for (int64_t n : ns) what += std::to_string(n) + ",";
    for (const Linear* w : ws)
      if (!takes(Op::linear, w, nullptr, {})) return tally.not_supported("linear_many", what);
    std::vector<Mat<T>> xs;
    std::vector<Act<T>> acts;
    for (std::size_t j = 0; j < ws.size(); ++j) xs.push_back(random_rows<T>(ns[j], ws[j]->in(), 900 + j));
    for (const Mat<T>& x : xs) acts.push_back(in(x));
    std::vector<LinearJob<T>> jobs;
    for (std::size_t j = 0; j < ws.size(); ++j) jobs.push_back({&acts[j], ws[j]});
    std::vector<Act<T>> ys = be.linear_many(jobs, {});
    if (ys.size() != ws.size()) return tally.record("linear_many", what + " (wrong number of results)", INFINITY, 0);
    double worst = 0;
    for (std::size_t j = 0; j < ws.size(); ++j)
      worst = std::max(worst, linear_err(xs[j], *ws[j], home(std::move(ys[j])), home(ref.linear(view(xs[j]), *ws[j], {})), {}));
    tally.record("linear_many", what, worst, tol.linear(false));
  }

  // -- row-wise ops: exact ------------------------------------------------------
  void rowwise_cases(const std::string& fmt, const Model<T>& m) {
    const Config& c = m.config();
    const ModelWeights& w = m.weights();
    const std::vector<int32_t> ids = {0, 5, int32_t(c.vocab_size - 1), 5};
    if (takes(Op::embed, &w.embed_tokens, nullptr, {}))
      tally.record("embed", fmt, rel_err(home(be.embed(w.embed_tokens, ids, {})), home(ref.embed(w.embed_tokens, ids, {}))), 0);
    else
      tally.not_supported("embed", fmt);
    for (int64_t n : {1, 5, 70}) {
      const Mat<T> x = random_rows<T>(n, c.hidden_size, 77 + n, 3.0);
      if (takes(Op::rms_norm, nullptr, &w.norm, {}))
        tally.record("rms_norm", fmt + " n=" + std::to_string(n),
                     rel_err(home(be.rms_norm(in(x), w.norm, c.rms_norm_eps, {})),
                             home(ref.rms_norm(view(x), w.norm, c.rms_norm_eps, {}))), 0);
      else
        tally.not_supported("rms_norm", fmt);
      const int64_t H = c.num_attention_heads, dq = c.qk_head_dim();
      Mat<T> q = random_rows<T>(n, H * dq, 99 + n), q_ref = q;
      std::vector<RopeRow> rope;
      const auto f = rope_inv_freq(c);
      for (int64_t i = 0; i < n; ++i) rope.push_back(rope_row(f, 4000 + 37 * i));  // past original_max_position_embeddings
      if (!takes(Op::rope, nullptr, nullptr, {})) {
        tally.not_supported("rope", fmt);
        continue;
      }
      Act<T> qb = in(q), qr(std::move(q_ref));
      be.rope(qb, c.qk_nope_head_dim, c.qk_rope_head_dim, dq, rope, c.rope_interleave);
      ref.rope(qr, c.qk_nope_head_dim, c.qk_rope_head_dim, dq, rope, c.rope_interleave);
      tally.record("rope", fmt + " n=" + std::to_string(n), rel_err(home(std::move(qb)), home(std::move(qr))), 0);
    }
  }

  // -- attention: both forms, caches of several lengths, bf16 cache, chunks ---
  void mla_case(const std::string& fmt, const Model<T>& m, int64_t layer, AttnForm form, int64_t start, int64_t n,
                bool bf16_cache, int64_t chunk, const Variants& v) {
    const Config& c = m.config();
    const AttentionWeights& w = m.weights().layers[std::size_t(layer)].self_attn;
    const char* fname = form == AttnForm::absorb ? "absorb" : form == AttnForm::naive ? "naive" : "auto";
    const std::string what = fmt + " " + fname + " start=" + std::to_string(start) + " n=" + std::to_string(n) +
                             (bf16_cache ? " bf16-cache" : "") + (chunk ? " chunk=" + std::to_string(chunk) : "") +
                             (v.bf16_activations ? " bf16-act" : "");
    if (!takes(Op::attention_mla, &w.kv_b_proj, nullptr, v)) return tally.not_supported("attention_mla", what);
    const auto f = rope_inv_freq(c);
    std::vector<RopeRow> rope_all;
    for (int64_t p = 0; p < start + n; ++p) rope_all.push_back(rope_row(f, p));
    const Mat<T> x_all = random_rows<T>(start + n, c.hidden_size, 500 + start * 7 + n);
    // the cached prefix: the reference writes it for a host backend (the same
    // rows for both); a backend with caches of its own writes its own
    auto cr = ref.new_cache(c, bf16_cache);
    auto cb = be.new_cache(c, bf16_cache);
    const std::vector<RopeRow> rope_pre(rope_all.begin(), rope_all.begin() + start);
    if (start > 0) {
      const Mat<T> x_pre = take_rows(x_all, 0, start);
      ref.attention_mla(ref, c, w, view(x_pre), *cr, 0, rope_pre, AttnForm::absorb, Trace(), layer, v);
      auto* host_cb = dynamic_cast<LatentCache<T>*>(cb.get());
      if (host_cb) *host_cb = latent_cache<T>(*cr, "reference");
      else be.attention_mla(be, c, w, in(x_pre), *cb, 0, rope_pre, AttnForm::absorb, Trace(), layer, v);
    }
    const Mat<T> x = take_rows(x_all, start, start + n);
    const std::vector<RopeRow> rope(rope_all.begin() + start, rope_all.end());
    const Mat<T> r = home(ref.attention_mla(ref, c, w, view(x), *cr, start, rope, form, Trace(), layer, v));
    Mat<T> y = empty<T>(n, c.hidden_size);
    const int64_t step = chunk > 0 ? chunk : n;
    for (int64_t s = 0; s < n; s += step) {  // the backend may run the new tokens in chunks
      const int64_t e = std::min(n, s + step);
      const Mat<T> xs = take_rows(x, s, e);
      const Mat<T> part = home(be.attention_mla(be, c, w, in(xs), *cb, start + s,
                                                std::vector<RopeRow>(rope.begin() + s, rope.begin() + e), form, Trace(), layer, v));
      std::copy(part.begin(), part.end(), y.begin() + s * c.hidden_size);
    }
    const double err = rel_err(y, r);
    // the cache rows appended, [c_kv | k_pe] per new position (host caches)
    double cache_num = 0, cache_den = 1;
    if (auto* host_cb = dynamic_cast<LatentCache<T>*>(cb.get())) {
      std::vector<T> sb, sr;
      const int64_t width = c.kv_cache_width();
      const T* kb = host_cb->read(sb);
      const T* kr = latent_cache<T>(*cr, "reference").read(sr);
      cache_den = 0;
      for (int64_t i = start * width; i < (start + n) * width; ++i) {
        cache_num = std::max(cache_num, std::fabs(double(kb[i]) - double(kr[i])));
        cache_den = std::max(cache_den, std::fabs(double(kr[i])));
      }
    }
    // a bf16 cache rounds each new row once: like bf16 activations, a float
    // difference can flip one element's rounding by a bf16 ulp
    tally.record("attention_mla", what, std::max(err, cache_num / cache_den), tol.composite(v.bf16_activations || bf16_cache));
  }

  // -- MoE: experts with 0/1/many tokens, routing compared, near-ties --------
  void moe_case(const std::string& fmt, const Model<T>& m, const MoEWeights& w, const Mat<T>& x, const Variants& v,
                const std::string& tag) {
    const Config& c = m.config();
    const std::string what = fmt + " n=" + std::to_string(rows(x)) + tag;
    if (!takes(Op::moe, w.experts.empty() ? nullptr : &w.experts[0].gate_proj, nullptr, v))
      return tally.not_supported("moe", what);
    std::map<std::string, std::vector<double>> tb, tr;
    auto keep = [](const std::string& s) { return s == "topk_ids" || s == "topk_margin"; };
    const Mat<T> y = home(be.moe(be, c, w, in(x), Trace([&](TraceRecord&& t) { tb[t.name] = t.data; }, keep), 1, 0, v));
    const Mat<T> r = home(ref.moe(ref, c, w, view(x), Trace([&](TraceRecord&& t) { tr[t.name] = t.data; }, keep), 1, 0, v));
    const int64_t n = rows(x), K = int64_t(tr["topk_ids"].size()) / n;
    std::vector<bool> near_tie(static_cast<std::size_t>(n), false);
    int64_t ties = 0, id_mismatch = 0;
    for (int64_t i = 0; i < n; ++i) {
      near_tie[std::size_t(i)] = tr["topk_margin"][std::size_t(i)] <= 1e-5;
      ties += near_tie[std::size_t(i)];
      for (int64_t j = 0; j < K && !near_tie[std::size_t(i)]; ++j)
        id_mismatch += tb["topk_ids"][std::size_t(i * K + j)] != tr["topk_ids"][std::size_t(i * K + j)];
    }
    tally.record("moe routing", what + " (ids differing on clear margins)", double(id_mismatch), 0);
    tally.record("moe routing", what + " (near-tie tokens, at most 1)", double(std::max<int64_t>(0, ties - 1)), 0);
    tally.record("moe", what, rel_err(y, r, near_tie), tol.composite(v.bf16_activations));
  }

  // Exact ties: a zero input with no router bias scores every expert 0.5, so
  // the selection is decided by tie-breaking alone (the lower expert id, the
  // lower group), on every backend.
  void moe_tie_case(const std::string& fmt, const Model<T>& m, const MoEWeights& layer_weights) {
    MoEWeights w = layer_weights;
    w.gate.e_score_correction_bias.reset();
    const Mat<T> x = zeros<T>(3, m.config().hidden_size);
    std::vector<double> ids_b, ids_r;
    auto keep = [](const std::string& s) { return s == "topk_ids"; };
    if (!takes(Op::moe, &w.experts[0].gate_proj, nullptr, {})) return tally.not_supported("moe", fmt + " exact ties");
    be.moe(be, m.config(), w, in(x), Trace([&](TraceRecord&& t) { ids_b = t.data; }, keep), 1, 0, {});
    ref.moe(ref, m.config(), w, view(x), Trace([&](TraceRecord&& t) { ids_r = t.data; }, keep), 1, 0, {});
    double diff = ids_b.size() == ids_r.size() ? 0 : 1;
    for (std::size_t i = 0; i < std::min(ids_b.size(), ids_r.size()); ++i) diff += ids_b[i] != ids_r[i];
    // and the tie-break is the documented one: experts 0..K-1 (groups 0, 1 first)
    for (int64_t j = 0; j < int64_t(ids_r.size()) / 3; ++j) diff += ids_r[std::size_t(j)] != double(j);
    tally.record("moe routing", fmt + " exact ties", diff, 0);
  }

  void mlp_case(const std::string& fmt, const Model<T>& m, const MLPWeights& w, int64_t n, const std::string& which,
                const Variants& v) {
    const std::string what = fmt + " " + which + " n=" + std::to_string(n) + (v.bf16_activations ? " bf16-act" : "");
    if (!takes(Op::mlp, &w.gate_proj, nullptr, v)) return tally.not_supported("mlp", what);
    const Mat<T> x = random_rows<T>(n, m.config().hidden_size, 300 + n);
    tally.record("mlp", what, rel_err(home(be.mlp(be, w, in(x), v)), home(ref.mlp(ref, w, view(x), v))),
                 tol.composite(v.bf16_activations));
  }

  // Every case on one model (any config with at least one dense and one MoE
  // layer: make-model's presets and the goldens). `quick`: fewer attention spans.
  void run(const std::string& fmt, const Model<T>& m, bool quick) {
    const ModelWeights& w = m.weights();
    const LayerWeights* dense = nullptr;
    const LayerWeights* moe = nullptr;
    for (const auto& l : w.layers) {
      if (l.mlp && !dense) dense = &l;
      if (l.moe && !moe) moe = &l;
    }
    if (!dense || !moe) fail("BackendCheck::run: the model needs a dense layer and a MoE layer");
    const MoEWeights& E = *moe->moe;
    const auto expert = [&](int64_t i) -> const MLPWeights& { return E.experts[std::size_t(i % int64_t(E.experts.size()))]; };
    const Linear& q_in = dense->self_attn.q_a_proj ? *dense->self_attn.q_a_proj : *dense->self_attn.q_proj;
    Variants bf16;
    bf16.bf16_activations = true;
    bf16.router_precision = RouterPrecision::bf16;
    bf16.rmsnorm_rounding = RmsNormRounding::hf;
    // linear: 1–4 rows (fused decode kernel), 5+ (prefill bands), 130 (several row blocks)
    for (const Linear* W : {&q_in, &dense->self_attn.kv_b_proj, &expert(3).down_proj, &w.lm_head})
      for (int64_t n : {1, 2, 3, 4, 5, 64, 130}) linear_case(fmt, *W, n, {}, "");
    linear_case(fmt, q_in, 3, bf16, " bf16-act");
    linear_case(fmt, q_in, 9, bf16, " bf16-act");
    if (expert(3).down_proj.is_fp8()) {
      Variants w8a8, dq;
      w8a8.fp8_w8a8 = true;
      dq.fp8_dequant_bf16 = true;
      for (int64_t n : {1, 9}) {
        linear_case(fmt, expert(3).down_proj, n, w8a8, " w8a8");
        linear_case(fmt, expert(3).down_proj, n, dq, " dequant-bf16");
      }
    }
    // linear_many: all decode-sized (one shared round), and mixed (whole jobs)
    const std::vector<const Linear*> trio = {&expert(0).gate_proj, &expert(5).up_proj, &expert(9).down_proj};
    linear_many_case(fmt, trio, {1, 4, 2});
    linear_many_case(fmt, trio, {2, 40, 7});
    rowwise_cases(fmt, m);
    // attention: decode after caches of several lengths, prefill across row blocks, chunks
    const int64_t L = int64_t(moe - w.layers.data());
    const std::vector<std::pair<int64_t, int64_t>> spans =
        quick ? std::vector<std::pair<int64_t, int64_t>>{{0, 5}, {6, 1}, {66, 70}}
              : std::vector<std::pair<int64_t, int64_t>>{{0, 1}, {0, 4}, {0, 70}, {5, 1}, {5, 3}, {70, 1}, {66, 70}};
    for (AttnForm form : {AttnForm::absorb, AttnForm::naive, AttnForm::automatic})
      for (const auto& [start, n] : spans) mla_case(fmt, m, L, form, start, n, false, 0, {});
    mla_case(fmt, m, L, AttnForm::absorb, 5, 3, true, 0, {});
    mla_case(fmt, m, L, AttnForm::naive, 66, 70, true, 0, {});
    mla_case(fmt, m, L, AttnForm::automatic, 3, 70, false, 16, {});
    mla_case(fmt, m, L, AttnForm::absorb, 5, 3, false, 0, bf16);
    // MoE: 1 token (most experts idle), 3–4 (fused decode), 40 (experts with many tokens)
    const int64_t D = m.config().hidden_size;
    for (int64_t n : {1, 3, 4, 40}) moe_case(fmt, m, E, random_rows<T>(n, D, 40 + n), {}, "");
    moe_case(fmt, m, E, random_rows<T>(6, D, 46), bf16, " bf16-act+router");
    Variants mask0;
    mask0.group_mask_fill = MaskFill::zero;
    moe_case(fmt, m, E, random_rows<T>(8, D, 48), mask0, " mask-fill-0");
    moe_tie_case(fmt, m, E);
    for (int64_t n : {1, 4, 9}) mlp_case(fmt, m, *dense->mlp, n, "dense", {});
    if (E.shared_experts) mlp_case(fmt, m, *E.shared_experts, 5, "shared", {});
    mlp_case(fmt, m, *dense->mlp, 3, "dense", bf16);
  }
};

}  // namespace dsv3::check
