// dsv3/reference/backend.hpp — the reference as a backend of its own
// (`dsv3 --backend reference`): every op of the model in the literal form of
// reference/ops.hpp, reference/mla.hpp and reference/moe.hpp. Slow, single
// threaded, and the definition of correct that every other backend is
// checked against, op by op (tests/test_backend_ops.cpp) and end to end (the
// goldens).
#pragma once

#include <string>
#include <vector>

#include "../backend.hpp"
#include "mla.hpp"
#include "moe.hpp"
#include "ops.hpp"

namespace dsv3 {

template <class T>
class ReferenceBackend : public Backend<T> {
 public:
  std::string name() const override { return "reference"; }
  bool supports(const OpQuery&) const override { return true; }

  Act<T> embed(const Linear& table, const std::vector<int32_t>& ids, const Variants& v) const override {
    return reference::embed<T>(table, ids, v);
  }
  Act<T> linear(const Act<T>& x, const Linear& w, const Variants& v) const override {
    return reference::linear(x.host(), w, v);
  }
  Act<T> rms_norm(const Act<T>& x, const TensorView& w, double eps, const Variants& v) const override {
    return reference::rms_norm(x.host(), w, eps, v);
  }
  void rope(Act<T>& x, int64_t col0, int64_t width, int64_t stride, const std::vector<RopeRow>& r,
            bool interleave) const override {
    reference::rope(x.host_mut(), col0, width, stride, r, interleave);
  }
  Act<T> attention_mla(const Backend<T>& ops, const Config& c, const AttentionWeights& w, const Act<T>& x,
                       LayerCache& cache, int64_t start_pos, const std::vector<RopeRow>& rope, AttnForm form,
                       const Trace& trace, int64_t layer, const Variants& v) const override {
    return reference::mla(ops, c, w, x.host(), latent_cache<T>(cache, name()), start_pos, rope, form, trace, layer, v);
  }
  Act<T> moe(const Backend<T>& ops, const Config& c, const MoEWeights& w, const Act<T>& x, const Trace& trace,
             int64_t layer, int64_t start_pos, const Variants& v) const override {
    return reference::moe(ops, c, w, x.host(), trace, layer, start_pos, v);
  }
  Act<T> mlp(const Backend<T>& ops, const MLPWeights& w, const Act<T>& x, const Variants& v) const override {
    return reference::mlp(ops, w, x.host(), v);
  }
};

}  // namespace dsv3
