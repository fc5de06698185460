// dsv3/dispatch.hpp — each op to the backend that can run it.
//
// Dispatch sends each op to a primary backend when that backend supports it
// (for the weight format at hand) and to the fast CPU backend otherwise.
// Composite ops (attention, MoE, MLP) receive the dispatcher, so the linears
// inside a CPU-run attention still go to the primary when it has them.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend.hpp"
#include "cpu/backend.hpp"
#include "error.hpp"
#include "reference/backend.hpp"

namespace dsv3 {

// Each op to `primary` if it supports it, else to the CPU reference.
template <class T>
class Dispatch : public Backend<T> {
 public:
  explicit Dispatch(std::shared_ptr<const Backend<T>> primary = nullptr) : primary_(std::move(primary)) {}
  std::string name() const override { return primary_ ? primary_->name() + "+cpu" : "cpu"; }
  bool supports(Op, DType) const override { return true; }

  Mat<T> embed(const Linear& table, const std::vector<int32_t>& ids, const Variants& v) const override {
    return pick(Op::embed, table.weight.dtype).embed(table, ids, v);
  }
  Mat<T> linear(const Mat<T>& x, const Linear& w, const Variants& v) const override {
    return pick(Op::linear, w.weight.dtype).linear(x, w, v);
  }
  // All to the primary if it takes every one, all to the CPU if it takes
  // none, else one by one.
  std::vector<Mat<T>> linear_many(const std::vector<LinearJob<T>>& jobs, const Variants& v) const override {
    std::size_t taken = 0;
    for (const auto& j : jobs) taken += primary_ && primary_->supports(Op::linear, j.w->weight.dtype);
    if (taken == jobs.size() && taken) return primary_->linear_many(jobs, v);
    if (taken == 0) return cpu_.linear_many(jobs, v);
    return Backend<T>::linear_many(jobs, v);
  }
  Mat<T> rms_norm(const Mat<T>& x, const TensorView& w, double eps, const Variants& v) const override {
    return pick(Op::rms_norm, w.dtype).rms_norm(x, w, eps, v);
  }
  void rope(Mat<T>& x, int64_t col0, int64_t d, int64_t stride, const std::vector<RopeRow>& r,
            bool interleave) const override {
    pick(Op::rope, DType::F32).rope(x, col0, d, stride, r, interleave);
  }
  Mat<T> attention_mla(const Backend<T>&, const Config& c, const AttentionWeights& w, const Mat<T>& x,
                       LatentCache<T>& cache, int64_t start_pos, const std::vector<RopeRow>& rope, AttnForm form,
                       const Trace& trace, int64_t layer, const Variants& v) const override {
    return pick(Op::attention_mla, w.kv_b_proj.weight.dtype)
        .attention_mla(*this, c, w, x, cache, start_pos, rope, form, trace, layer, v);
  }
  Mat<T> moe(const Backend<T>&, const Config& c, const MoEWeights& w, const Mat<T>& x, const Trace& trace,
             int64_t layer, int64_t start_pos, const Variants& v) const override {
    const DType dt = w.experts.empty() ? DType::F32 : w.experts[0].gate_proj.weight.dtype;
    return pick(Op::moe, dt).moe(*this, c, w, x, trace, layer, start_pos, v);
  }
  Mat<T> mlp(const Backend<T>&, const MLPWeights& w, const Mat<T>& x, const Variants& v) const override {
    return pick(Op::mlp, w.gate_proj.weight.dtype).mlp(*this, w, x, v);
  }

 private:
  const Backend<T>& pick(Op op, DType dt) const {
    if (primary_ && primary_->supports(op, dt)) return *primary_;
    return cpu_;
  }
  std::shared_ptr<const Backend<T>> primary_;
  CpuBackend<T> cpu_;
};

// A backend by name (the CLI's global --backend): "cpu", the fast default
// (nullptr: Dispatch's own CPU backend), or "reference", the literal one.
template <class T>
inline std::shared_ptr<const Backend<T>> backend_named(const std::string& name) {
  if (name == "cpu") return nullptr;
  if (name == "reference") return std::make_shared<ReferenceBackend<T>>();
  fail("--backend '", name, "': expected cpu or reference");
}

}  // namespace dsv3
