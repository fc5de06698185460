// dsv3/cpu/backend.hpp — the fast CPU backend (the default): every op of the
// model with the kernels of cpu/linear.hpp, cpu/mla.hpp and cpu/moe.hpp,
// threaded with OpenMP, bit-identical for any thread count. Checked op by op
// against ReferenceBackend (reference/backend.hpp) by tests/test_backend_ops.cpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "../backend.hpp"
#include "../experts.hpp"
#include "../reference/ops.hpp"
#include "linear.hpp"
#include "mla.hpp"
#include "moe.hpp"

namespace dsv3 {

template <class T>
class CpuBackend : public Backend<T> {
 public:
  std::string name() const override { return "cpu"; }
  bool supports(const OpQuery&) const override { return true; }

  // Expert parallelism (experts.hpp): run only this process's routed experts.
  void set_expert_group(std::shared_ptr<const ExpertGroup> g) { group_ = std::move(g); }
  const ExpertGroup* expert_group() const { return group_.get(); }

  Act<T> embed(const Linear& table, const std::vector<int32_t>& ids, const Variants& v) const override {
    // A forward's first op: the threads and BLAS's buffers are taken here,
    // after checking that the address space has room (cpu/linear.hpp),
    // before anything else can run a parallel region. (Under a tight
    // `ulimit -v`, libgomp failing to start a thread ends the process with
    // its own message.)
    cpu::blas_single_threaded();
    return reference::embed<T>(table, ids, v);  // a row lookup: nothing to make faster
  }
  Act<T> linear(const Act<T>& x, const Linear& w, const Variants& v) const override {
    return cpu::linear(x.host(), w, v);
  }
  std::vector<Act<T>> linear_many(const std::vector<LinearJob<T>>& jobs, const Variants& v) const override {
    std::vector<MatJob<T>> mats;
    mats.reserve(jobs.size());
    for (const auto& j : jobs) mats.push_back({&j.x->host(), j.w});
    std::vector<Act<T>> ys;
    ys.reserve(jobs.size());
    for (Mat<T>& y : cpu::linear_many(mats, v)) ys.emplace_back(std::move(y));
    return ys;
  }
  Act<T> rms_norm(const Act<T>& x, const TensorView& w, double eps, const Variants& v) const override {
    return cpu::rms_norm(x.host(), w, eps, v);
  }
  void rope(Act<T>& xa, int64_t col0, int64_t width, int64_t stride, const std::vector<RopeRow>& r,
            bool interleave) const override {
    Mat<T>& x = xa.host_mut();
    cpu::for_rows(rows(x), rows(x) > cpu::kFusedMaxRows, [&](int64_t i) {
      for (int64_t c = col0; c + width <= cols(x); c += stride) rope_apply(&x(i, c), width, r[std::size_t(i)], interleave);
    });
  }
  Act<T> attention_mla(const Backend<T>& ops, const Config& c, const AttentionWeights& w, const Act<T>& x,
                       LayerCache& cache, int64_t start_pos, const std::vector<RopeRow>& rope, AttnForm form,
                       const Trace& trace, int64_t layer, const Variants& v) const override {
    return cpu::mla(ops, c, w, x.host(), latent_cache<T>(cache, name()), start_pos, rope, form, trace, layer, v);
  }
  Act<T> moe(const Backend<T>& ops, const Config& c, const MoEWeights& w, const Act<T>& x, const Trace& trace,
             int64_t layer, int64_t start_pos, const Variants& v) const override {
    return cpu::moe(ops, c, w, x.host(), trace, layer, start_pos, v, group_.get());
  }
  Act<T> mlp(const Backend<T>& ops, const MLPWeights& w, const Act<T>& x, const Variants& v) const override {
    return cpu::mlp(ops, w, x.host(), v);
  }

 private:
  std::shared_ptr<const ExpertGroup> group_;
};

}  // namespace dsv3
