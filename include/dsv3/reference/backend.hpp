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
  bool supports(Op, DType) const override { return true; }

  Mat<T> embed(const Linear& table, const std::vector<int32_t>& ids, const Variants& v) const override {
    return reference::embed<T>(table, ids, v);
  }
  Mat<T> linear(const Mat<T>& x, const Linear& w, const Variants& v) const override {
    return reference::linear(x, w, v);
  }
  Mat<T> rms_norm(const Mat<T>& x, const TensorView& w, double eps, const Variants& v) const override {
    return reference::rms_norm(x, w, eps, v);
  }
  void rope(Mat<T>& x, int64_t col0, int64_t width, int64_t stride, const std::vector<RopeRow>& r,
            bool interleave) const override {
    reference::rope(x, col0, width, stride, r, interleave);
  }
  Mat<T> attention_mla(const Backend<T>& ops, const Config& c, const AttentionWeights& w, const Mat<T>& x,
                       LatentCache<T>& cache, int64_t start_pos, const std::vector<RopeRow>& rope, AttnForm form,
                       const Trace& trace, int64_t layer, const Variants& v) const override {
    return reference::mla(ops, c, w, x, cache, start_pos, rope, form, trace, layer, v);
  }
  Mat<T> moe(const Backend<T>& ops, const Config& c, const MoEWeights& w, const Mat<T>& x, const Trace& trace,
             int64_t layer, int64_t start_pos, const Variants& v) const override {
    return reference::moe(ops, c, w, x, trace, layer, start_pos, v);
  }
  Mat<T> mlp(const Backend<T>& ops, const MLPWeights& w, const Mat<T>& x, const Variants& v) const override {
    return reference::mlp(ops, w, x, v);
  }
};

}  // namespace dsv3
