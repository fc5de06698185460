// Every backend, op by op, against the reference (in the manner of llama.cpp's
// test-backend-ops): each op of the seam × each stored format × the shape
// classes that take different paths in a fast backend, run on the backend under
// test and on ReferenceBackend (the definition of correct) with the same
// inputs, and compared. A backend that does not support a case says so
// (Backend::supports) and the case is reported as "not supported" — never
// counted as passed. ctest runs this suite as `backend_ops`.
//
// Backends under test: `backends_under_test()` below (the CPU backend today;
// CUDA and MPI register there). Formats: the `tiny` preset written by
// make-model as F32, BF16 (its AWQ variant has F16 embedding/head), FP8 e4m3
// with 128×128 blocks (160/96/320-wide matrices: edge blocks in both
// directions), AWQ int4 and MLX 4/5/8-bit (whose kv_b_proj is split into
// embed_q/unembed_out).
//
// The cases and their tolerances, each with its reason, are in
// include/dsv3/tools/backend_check.hpp (BackendCheck), which research code
// can run on a backend of its own.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <dsv3/cpu/backend.hpp>
#include <dsv3/dispatch.hpp>
#include <dsv3/make_model.hpp>
#include <dsv3/model.hpp>
#include <dsv3/reference/backend.hpp>
#include <dsv3/tools/backend_check.hpp>

#include "test_util.hpp"

using namespace dsv3;
using namespace dsv3::check;

namespace {

template <class T>
struct NamedBackend {
  std::string name;
  std::shared_ptr<const Backend<T>> be;
};

// The backends this suite holds against the reference.
template <class T>
std::vector<NamedBackend<T>> backends_under_test() {
  return {{"cpu", std::make_shared<CpuBackend<T>>()}};
}

const char* kFormats[] = {"f32", "bf16", "fp8", "awq", "mlx4", "mlx5", "mlx8"};

// One tiny model per format, written once for the whole suite.
const std::string& model_dir(const std::string& fmt) {
  static test::TempDir root;
  static std::map<std::string, std::string> made;
  auto it = made.find(fmt);
  if (it != made.end()) return it->second;
  ModelSpec s;
  s.config = preset_config("tiny");
  s.dtype = fmt;
  s.seed = 11;
  s.bias_mean = -0.2;  // some negative biased scores: the −inf group mask matters
  const std::string dir = root.path + "/" + fmt;
  make_model(dir, s);
  return made.emplace(fmt, dir).first->second;
}

template <class T>
Tally run_suite(const NamedBackend<T>& nb, bool quick) {
  Tally tally;
  tally.backend = nb.name + (std::is_same_v<T, double> ? " (f64)" : " (f32)");
  BackendCheck<T> s{*nb.be, {}, tally, {}};
  for (const char* fmt : kFormats) {
    Model<T> m(model_dir(fmt));
    s.run(fmt, m, quick);
  }
  return tally;
}

}  // namespace

TEST_SUITE("backend_ops") {
TEST_CASE("every backend matches the reference op by op (f32)") {
  for (const auto& nb : backends_under_test<float>()) {
    const Tally t = run_suite(nb, false);
    MESSAGE(t.report());
    CHECK_MESSAGE(t.failed == 0, t.backend, ": ", t.failed, " case(s) past tolerance");
    CHECK_MESSAGE(t.passed > 0, t.backend, ": no case ran");
  }
}

TEST_CASE("every backend matches the reference op by op (f64)") {
  for (const auto& nb : backends_under_test<double>()) {
    const Tally t = run_suite(nb, true);
    MESSAGE(t.report());
    CHECK_MESSAGE(t.failed == 0, t.backend, ": ", t.failed, " case(s) past tolerance");
    CHECK_MESSAGE(t.passed > 0, t.backend, ": no case ran");
  }
}

// The suite can fail: a CPU backend with one deliberately broken kernel (the
// last FP8 column block's scale ignored, i.e. the edge block mis-scaled) is
// caught, and a backend that declines FP8 is reported as not supported.
namespace {
struct EdgeBlockBroken : CpuBackend<float> {
  std::string name() const override { return "broken"; }
  Mat<float> linear(const Mat<float>& x, const Linear& w, const Variants& v) const override {
    Mat<float> y = CpuBackend<float>::linear(x, w, v);
    if (!w.is_fp8() || w.in() % w.block_cols == 0) return y;
    // subtract the edge block's contribution once: as if its scale were 0
    std::vector<float> row(static_cast<std::size_t>(w.in()));
    for (int64_t o = 0; o < w.out(); ++o) {
      w.decode_rows(o, o + 1, row.data());
      for (int64_t i = 0; i < rows(x); ++i)
        for (int64_t k = w.in() / w.block_cols * w.block_cols; k < w.in(); ++k) y(i, o) -= x(i, k) * row[std::size_t(k)];
    }
    return y;
  }
};
struct NoFp8 : CpuBackend<float> {
  std::string name() const override { return "no-fp8"; }
  bool supports(Op, DType dt) const override { return dt != DType::F8_E4M3; }
};
}  // namespace

TEST_CASE("the suite catches a broken kernel and reports unsupported cases") {
  Tally broken, declined;
  broken.backend = "broken";
  declined.backend = "no-fp8";
  Model<float> m(model_dir("fp8"));
  EdgeBlockBroken eb;
  BackendCheck<float> s{eb, {}, broken, {}};
  const Linear& q_a = *m.weights().layers[0].self_attn.q_a_proj;  // FP8 [96, 160]: column blocks 128 + 32
  s.linear_case("fp8", q_a, 3, {}, "");
  s.linear_case("fp8", q_a, 40, {}, "");
  CHECK(broken.failed == 2);
  NoFp8 nf;
  BackendCheck<float> s2{nf, {}, declined, {}};
  s2.linear_case("fp8", q_a, 3, {}, "");
  s2.mlp_case("fp8", m, *m.weights().layers[0].mlp, 2, "dense", {});
  CHECK(declined.unsupported == 2);
  CHECK(declined.passed == 0);
}

// Dispatch: a primary backend that takes only F32 linears gets exactly those,
// the CPU backend runs the rest, and the logits match the CPU's.
namespace {
struct F32LinearsOnly : ReferenceBackend<float> {
  mutable int linears = 0, other = 0;
  std::string name() const override { return "f32-linears"; }
  bool supports(Op op, DType dt) const override { return op == Op::linear && dt == DType::F32; }
  Mat<float> linear(const Mat<float>& x, const Linear& w, const Variants& v) const override {
    (w.weight.dtype == DType::F32 ? linears : other)++;
    return ReferenceBackend<float>::linear(x, w, v);
  }
  Mat<float> rms_norm(const Mat<float>& x, const TensorView& w, double eps, const Variants& v) const override {
    other++;
    return ReferenceBackend<float>::rms_norm(x, w, eps, v);
  }
  Mat<float> embed(const Linear& t, const std::vector<int32_t>& ids, const Variants& v) const override {
    other++;
    return ReferenceBackend<float>::embed(t, ids, v);
  }
};
}  // namespace

TEST_CASE("Dispatch sends each op to the primary when it supports it, else to the CPU") {
  Model<float> m(model_dir("f32"));
  auto primary = std::make_shared<F32LinearsOnly>();
  const std::vector<int32_t> ids = {3, 1, 4, 1, 5};
  auto c1 = m.new_cache();
  const Mat<float> cpu = m.forward(ids, c1);
  m.set_backend(primary);
  auto c2 = m.new_cache();
  const Mat<float> mixed = m.forward(ids, c2);
  CHECK(m.backend().name() == "f32-linears+cpu");
  // every linear of the model: 7 per layer before its FFN (q_a, q_b, kv_a,
  // o_proj, …), the router, the experts; counted, never an rms_norm or embed
  CHECK(primary->linears > 3 * m.config().num_hidden_layers);
  CHECK(primary->other == 0);
  CHECK(rel_err(mixed, cpu) <= 2e-5);
}
}  // TEST_SUITE

TEST_SUITE("backend_ops") {
// The edit hook (Trace editor) acts at the same points on every backend: a
// forced routing, a zeroed head and a patched residual give the same logits on
// the CPU backend as on the reference (to the composite tolerance), and an
// edit that names no expert is an error naming the layer and token.
TEST_CASE("trace edits act the same on every backend") {
  Model<float> m(model_dir("f32"));
  const std::vector<int32_t> ids = {3, 1, 4, 1, 5, 9};
  const int64_t L = m.config().first_k_dense_replace, K = m.config().num_experts_per_tok, dv = m.config().v_head_dim;
  Trace edits(nullptr, nullptr, [&](TraceRecord& r) {
    if (r.name == "topk_ids" && r.layer == L)
      for (int64_t j = 0; j < K; ++j) r.data[std::size_t(2 * K + j)] = double(K - 1 - j);  // token 2: experts K-1..0
    if (r.name == "attn_out" && r.layer == 0)
      for (int64_t i = 0; i < r.shape[0]; ++i) std::fill_n(r.data.begin() + i * r.shape[1], dv, 0.0);  // head 0
    if (r.name == "resid_ffn" && r.layer == 0) r.data.back() += 1.0;
  });
  std::vector<double> forced_ids;
  Trace seen([&](TraceRecord&& r) { if (r.layer == L) forced_ids = r.data; },
             [&](const std::string& n) { return n == "topk_ids"; }, edits.editor());
  auto c1 = m.new_cache();
  const Mat<float> plain = m.forward(ids, c1);
  auto c2 = m.new_cache();
  const Mat<float> cpu = m.forward(ids, c2, {}, seen);
  m.set_backend(std::make_shared<ReferenceBackend<float>>());
  auto c3 = m.new_cache();
  const Mat<float> ref = m.forward(ids, c3, {}, edits);
  CHECK(rel_err(cpu, ref) <= 2e-5);
  CHECK(rel_err(cpu, plain) > 1e-3);                                   // the edits took effect
  REQUIRE(forced_ids.size() == std::size_t(int64_t(ids.size()) * K));  // the sink sees the edited routing
  CHECK(forced_ids[std::size_t(2 * K)] == double(K - 1));
  Trace bad(nullptr, nullptr, [&](TraceRecord& r) {
    if (r.name == "topk_ids") r.data[1] = r.data[0];
  });
  auto c4 = m.new_cache();
  CHECK_THROWS_WITH_AS(m.forward(ids, c4, {}, bad), doctest::Contains("token 0: topk_ids edited to expert"), Error);
}
}  // TEST_SUITE
