// dsv3/dispatch.hpp — each op to the backend that can run it.
//
// Dispatch sends each op to a primary backend when that backend supports it
// (Backend::supports: the op, its weight's whole storage format, the knobs)
// and to the fast CPU backend otherwise. An activation moves between the two
// only where consecutive ops run on different sides: a primary that supports
// every op on the path keeps the residual stream in its own memory for the
// whole forward pass. Each layer's cache is made by the backend that runs
// that layer's attention. Composite ops receive the dispatcher, so the linears
// inside a CPU-run attention still go to the primary when it has them.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "backend.hpp"
#include "cpu/backend.hpp"
#include "error.hpp"
#include "reference/backend.hpp"

namespace dsv3 {

template <class T>
class Dispatch : public Backend<T> {
 public:
  explicit Dispatch(std::shared_ptr<const Backend<T>> primary = nullptr) : primary_(std::move(primary)) {}
  std::string name() const override { return primary_ ? primary_->name() + "+cpu" : "cpu"; }
  bool supports(const OpQuery&) const override { return true; }
  bool on_host() const override { return pick({Op::glue}).on_host(); }

  void prepare(const ModelWeights& w, const Config& c) const override {
    if (primary_) primary_->prepare(w, c);
  }
  // Expert parallelism: the CPU backend's MoE runs this process's experts
  // only. A primary backend that runs the MoE itself cannot take part.
  void set_expert_group(std::shared_ptr<const ExpertGroup> g, const Variants& v) {
    if (g && g->size() > 1 && primary_ && primary_->supports({Op::moe, nullptr, nullptr, &v}))
      fail("expert parallelism: backend '", primary_->name(), "' runs the MoE itself; use --backend cpu");
    cpu_.set_expert_group(std::move(g));
  }
  // The host form of x, wherever it is held.
  Mat<T> download(const Act<T>& x) const override { return x.on_host() ? x.host() : x.owner()->download(x); }
  // A host matrix, to where the glue runs (the primary when it takes glue).
  Act<T> upload(const Mat<T>& x) const override { return pick({Op::glue}).upload(x); }
  std::unique_ptr<LayerCache> new_cache(const Config& c, bool bf16) const override {
    return cpu_.new_cache(c, bf16);
  }
  // The cache of one layer, made by the backend that runs its attention.
  std::unique_ptr<LayerCache> new_cache(const Config& c, const AttentionWeights& w, bool bf16, const Variants& v) const {
    return pick({Op::attention_mla, &w.kv_b_proj, nullptr, &v}).new_cache(c, bf16);
  }

  Act<T> embed(const Linear& table, const std::vector<int32_t>& ids, const Variants& v) const override {
    return pick({Op::embed, &table, nullptr, &v}).embed(table, ids, v);
  }
  Act<T> linear(const Act<T>& x, const Linear& w, const Variants& v) const override {
    const Backend<T>& b = pick({Op::linear, &w, nullptr, &v});
    return b.linear(to(x, b), w, v);
  }
  // All to the primary if it takes every one, all to the CPU if it takes
  // none, else one by one.
  std::vector<Act<T>> linear_many(const std::vector<LinearJob<T>>& jobs, const Variants& v) const override {
    std::size_t taken = 0;
    for (const auto& j : jobs) taken += primary_ && primary_->supports({Op::linear, j.w, nullptr, &v});
    if (taken != jobs.size() && taken != 0) return Backend<T>::linear_many(jobs, v);
    const Backend<T>& b = taken ? *primary_ : static_cast<const Backend<T>&>(cpu_);
    std::vector<Act<T>> xs;
    xs.reserve(jobs.size());
    for (const auto& j : jobs) xs.push_back(to(*j.x, b));
    std::vector<LinearJob<T>> moved;
    moved.reserve(jobs.size());
    for (std::size_t i = 0; i < jobs.size(); ++i) moved.push_back({&xs[i], jobs[i].w});
    return b.linear_many(moved, v);
  }
  Act<T> rms_norm(const Act<T>& x, const TensorView& w, double eps, const Variants& v) const override {
    const Backend<T>& b = pick({Op::rms_norm, nullptr, &w, &v});
    return b.rms_norm(to(x, b), w, eps, v);
  }
  void rope(Act<T>& x, int64_t col0, int64_t width, int64_t stride, const std::vector<RopeRow>& r,
            bool interleave) const override {
    const Backend<T>& b = pick({Op::rope});
    x = to(x, b);
    b.rope(x, col0, width, stride, r, interleave);
  }
  Act<T> attention_mla(const Backend<T>&, const Config& c, const AttentionWeights& w, const Act<T>& x,
                       LayerCache& cache, int64_t start_pos, const std::vector<RopeRow>& rope, AttnForm form,
                       const Trace& trace, int64_t layer, const Variants& v) const override {
    const Backend<T>& b = pick({Op::attention_mla, &w.kv_b_proj, nullptr, &v});
    return b.attention_mla(*this, c, w, to(x, b), cache, start_pos, rope, form, trace, layer, v);
  }
  Act<T> moe(const Backend<T>&, const Config& c, const MoEWeights& w, const Act<T>& x, const Trace& trace,
             int64_t layer, int64_t start_pos, const Variants& v) const override {
    const Backend<T>& b = pick({Op::moe, w.experts.empty() ? nullptr : &w.experts[0].gate_proj, nullptr, &v});
    return b.moe(*this, c, w, to(x, b), trace, layer, start_pos, v);
  }
  Act<T> mlp(const Backend<T>&, const MLPWeights& w, const Act<T>& x, const Variants& v) const override {
    const Backend<T>& b = pick({Op::mlp, &w.gate_proj, nullptr, &v});
    return b.mlp(*this, w, to(x, b), v);
  }
  void add(Act<T>& h, const Act<T>& f, const Variants& v) const override {
    const Backend<T>& b = pick({Op::glue, nullptr, nullptr, &v});
    h = to(h, b);
    b.add(h, to(f, b), v);
  }
  Act<T> take_rows(const Act<T>& x, int64_t r0, int64_t r1) const override {
    const Backend<T>& b = pick({Op::glue});
    return b.take_rows(to(x, b), r0, r1);
  }
  Act<T> concat_cols(const Act<T>& a, const Act<T>& c) const override {
    const Backend<T>& b = pick({Op::glue});
    return b.concat_cols(to(a, b), to(c, b));
  }
  void zero_rows(Act<T>& x, int64_t r0, int64_t r1) const override {
    const Backend<T>& b = pick({Op::glue});
    x = to(x, b);
    b.zero_rows(x, r0, r1);
  }

 private:
  const Backend<T>& pick(const OpQuery& q) const {
    if (primary_ && primary_->supports(q)) return *primary_;
    return cpu_;
  }
  // x where backend b computes: as it is when b holds it (or b computes on the
  // host and x is there), else downloaded and/or uploaded.
  Act<T> to(const Act<T>& x, const Backend<T>& b) const {
    if (b.on_host() ? x.on_host() : x.owner() == &b) return x;
    Mat<T> h = download(x);
    return b.on_host() ? Act<T>(std::move(h)) : b.upload(h);
  }
  std::shared_ptr<const Backend<T>> primary_;
  CpuBackend<T> cpu_;
};

// Backends built outside the header-only core (backends/cuda) register a
// factory under their name; backend_named finds them there.
template <class T>
using BackendFactory = std::function<std::shared_ptr<const Backend<T>>()>;
template <class T>
inline std::map<std::string, BackendFactory<T>>& backend_registry() {
  static std::map<std::string, BackendFactory<T>> r;
  return r;
}

// A backend by name (the CLI's global --backend): "cpu", the fast default
// (nullptr: Dispatch's own CPU backend), "reference", the literal one, or a
// registered one.
template <class T>
inline std::shared_ptr<const Backend<T>> backend_named(const std::string& name) {
  if (name == "cpu") return nullptr;
  if (name == "reference") return std::make_shared<ReferenceBackend<T>>();
  auto it = backend_registry<T>().find(name);
  if (it != backend_registry<T>().end()) return it->second();
  if (!std::is_same_v<T, float> && backend_registry<float>().count(name))
    fail("--backend '", name, "' computes in f32 only (use --precision f32)");
  std::string known = "cpu, reference";
  for (const auto& kv : backend_registry<T>()) known += ", " + kv.first;
  if (name == "cuda")
    fail("--backend 'cuda': this build has no CUDA backend (configure with -DDSV3_CUDA=ON); expected ", known);
  fail("--backend '", name, "': expected ", known);
}

}  // namespace dsv3
