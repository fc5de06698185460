// Ops against naive loops and closed forms, on both backends: the reference
// (the definition) and the CPU kernels.
// Tolerances: linear vs a double-precision loop, 1e-5 relative to the row's
// sum of |x·w| terms (f32 BLAS rounding over K products); f64 paths 1e-12.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>
#include <set>

#include <dsv3/cpu/backend.hpp>
#include <dsv3/tools/make_model.hpp>
#include <dsv3/reference/backend.hpp>
#include <dsv3/rope.hpp>
#include <dsv3/tools/sampler.hpp>

#include "test_util.hpp"

using namespace dsv3;

namespace {
// A checkpoint holding one [O, I] weight in `dt` (FP8 with block scales).
struct OneWeight {
  test::TempDir dir;
  std::unique_ptr<Checkpoint> ck;
  Linear lin;
  OneWeight(int64_t O, int64_t I, DType dt, uint64_t seed) {
    std::mt19937_64 g(seed);
    std::normal_distribution<float> nd(0, 1);
    std::vector<float> w(static_cast<std::size_t>(O * I));
    for (auto& v : w) v = nd(g);
    std::vector<TensorToWrite> ts;
    if (dt == DType::F8_E4M3) {
      const int64_t sr = (O + 127) / 128, sc = (I + 127) / 128;
      std::vector<float> s(static_cast<std::size_t>(sr * sc), 0.f);
      for (int64_t r = 0; r < O; ++r)
        for (int64_t c = 0; c < I; ++c) {
          float& m = s[std::size_t((r / 128) * sc + c / 128)];
          m = std::max(m, std::fabs(w[std::size_t(r * I + c)]) / 448.f);
        }
      ts.push_back({"w.weight", dt, {O, I}, [=](uint8_t* o) {
        for (int64_t r = 0; r < O; ++r)
          for (int64_t c = 0; c < I; ++c)
            o[r * I + c] = f32_to_fp8_e4m3(w[std::size_t(r * I + c)] / s[std::size_t((r / 128) * sc + c / 128)]);
      }});
      ts.push_back({"w.weight_scale_inv", DType::F32, {sr, sc}, [=](uint8_t* o) { std::memcpy(o, s.data(), s.size() * 4); }});
    } else {
      ts.push_back({"w.weight", dt, {O, I}, [=](uint8_t* o) {
        for (std::size_t i = 0; i < w.size(); ++i) {
          if (dt == DType::F32) std::memcpy(o + 4 * i, &w[i], 4);
          else { uint16_t h = dt == DType::BF16 ? f32_to_bf16(w[i]) : f32_to_f16(w[i]); std::memcpy(o + 2 * i, &h, 2); }
        }
      }});
    }
    write_safetensors(dir.path + "/model.safetensors", ts);
    ck = std::make_unique<Checkpoint>(dir.path);
    lin = detail::need_linear(*ck, test::v3_config(), "w", O, I);
  }
};

template <class T>
void check_linear(const Backend<T>& be, DType dt) {
  const int64_t O = 300, I = 200, n = 5;  // 300 rows: FP8 bands of 128 with an edge band
  OneWeight ow(O, I, dt, 7);
  Mat<T> x = empty<T>(n, I);
  std::mt19937_64 g(1);
  std::normal_distribution<double> nd(0, 1);
  for (auto& v : x) v = T(nd(g));
  Mat<T> y = home(be.linear(Act<T>::view(x), ow.lin, {}));
  std::vector<double> row(static_cast<std::size_t>(I));
  for (int64_t o = 0; o < O; ++o) {
    ow.lin.decode_rows(o, o + 1, row.data());
    for (int64_t i = 0; i < n; ++i) {
      double acc = 0, mag = 0;
      for (int64_t k = 0; k < I; ++k) {
        acc += double(x(i, k)) * row[std::size_t(k)];
        mag += std::fabs(double(x(i, k)) * row[std::size_t(k)]);
      }
      const double tol = (std::is_same_v<T, float> ? 1e-5 : 1e-12) * mag;
      CHECK_MESSAGE(std::fabs(double(y(i, o)) - acc) <= tol, be.name(), " ", dtype_name(dt), " row ", o);
    }
  }
}
}  // namespace

TEST_CASE("linear over every stored dtype matches a naive loop") {
  for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::F8_E4M3}) {
    check_linear<float>(CpuBackend<float>(), dt);
    check_linear<double>(CpuBackend<double>(), dt);
    check_linear<float>(ReferenceBackend<float>(), dt);
    check_linear<double>(ReferenceBackend<double>(), dt);
  }
}

TEST_CASE("rms_norm matches its definition") {
  OneWeight ow(1, 37, DType::F32, 3);  // reuse a 37-element row as the norm weight
  TensorView w = ow.lin.weight;
  w.shape = {37};
  Mat<double> x = empty<double>(3, 37);
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 37; ++j) x(i, j) = std::sin(double(i * 37 + j)) * (i + 1);
  for (const Mat<double>& y : {cpu::rms_norm(x, w, 1e-6), reference::rms_norm(x, w, 1e-6)})
  for (int64_t i = 0; i < 3; ++i) {
    double ms = 0;
    for (int64_t j = 0; j < 37; ++j) ms += x(i, j) * x(i, j) / 37.0;
    for (int64_t j = 0; j < 37; ++j) CHECK(y(i, j) == doctest::Approx(w.at(j) * x(i, j) / std::sqrt(ms + 1e-6)).epsilon(1e-13));
  }
}

TEST_CASE("RoPE: adjacent-pair rotation is a rotation by pos * inv_freq") {
  Config c = test::v3_config();
  auto f = rope_inv_freq(c);
  for (int64_t pos : {0, 1, 4095, 4096, 100000, 163839}) {
    RopeRow r = rope_row(f, pos);
    std::vector<double> x(64), y(64);
    for (int i = 0; i < 64; ++i) x[i] = y[i] = std::cos(0.3 * i) + 0.1 * i;
    rope_apply(y.data(), 64, r, true);
    for (int i = 0; i < 32; ++i) {
      const double a = double(float(float(pos) * f[i]));  // the fp32 angle, as the official table
      CHECK(y[2 * i] == doctest::Approx(x[2 * i] * std::cos(a) - x[2 * i + 1] * std::sin(a)).epsilon(1e-6));
      CHECK(y[2 * i + 1] == doctest::Approx(x[2 * i] * std::sin(a) + x[2 * i + 1] * std::cos(a)).epsilon(1e-6));
      // norm of each pair is preserved
      CHECK(std::hypot(y[2 * i], y[2 * i + 1]) == doctest::Approx(std::hypot(x[2 * i], x[2 * i + 1])).epsilon(1e-6));
    }
  }
}

TEST_CASE("router: group-limited top-k against a brute-force enumeration") {
  // 8 experts in 4 groups, keep 2 groups, top-3: enumerate every choice of 2
  // groups, take the best by group score (top-2 sum), then the top-3 experts.
  nlohmann::json j = test::v3_config_json();
  j["n_routed_experts"] = 8; j["n_group"] = 4; j["topk_group"] = 2; j["num_experts_per_tok"] = 3;
  j["hidden_size"] = 4;
  Config c = Config::from_json(j);
  test::TempDir dir;
  std::mt19937_64 g(5);
  std::normal_distribution<float> nd(0, 1);
  std::vector<float> gw(32), bias(8);
  for (auto& v : gw) v = nd(g);
  for (auto& v : bias) v = -1.0f + 0.3f * nd(g);  // negative biased scores: the -inf fill matters
  write_safetensors(dir.path + "/model.safetensors",
                    {{"g", DType::F32, {8, 4}, [&](uint8_t* o) { std::memcpy(o, gw.data(), 128); }},
                     {"b", DType::F32, {8}, [&](uint8_t* o) { std::memcpy(o, bias.data(), 32); }}});
  Checkpoint ck(dir.path);
  GateWeights gwts{ck.get("g"), ck.get("b")};
  Mat<double> x = empty<double>(20, 4);
  for (auto& v : x) v = nd(g);
  for (const Routing& r : {cpu::route(CpuBackend<double>(), c, gwts, x, Trace(), 0, 0),
                           reference::route(ReferenceBackend<double>(), c, gwts, x, Trace(), 0, 0, Variants{})})
  for (int64_t i = 0; i < 20; ++i) {
    double s[8], b[8], gs[4];
    for (int e = 0; e < 8; ++e) {
      double l = 0;
      for (int k = 0; k < 4; ++k) l += x(i, k) * gw[std::size_t(e * 4 + k)];
      s[e] = 1 / (1 + std::exp(-l));
      b[e] = s[e] + bias[std::size_t(e)];
    }
    for (int gr = 0; gr < 4; ++gr) gs[gr] = b[2 * gr] + b[2 * gr + 1];  // 2 per group: top-2 sum = sum
    int best_a = -1, best_b = -1;
    for (int ga = 0; ga < 4; ++ga)
      for (int gb = ga + 1; gb < 4; ++gb)
        if (best_a < 0 || gs[ga] + gs[gb] > gs[best_a] + gs[best_b]) best_a = ga, best_b = gb;
    std::vector<int> cand = {2 * best_a, 2 * best_a + 1, 2 * best_b, 2 * best_b + 1};
    std::sort(cand.begin(), cand.end(), [&](int p, int q) { return b[p] > b[q]; });
    std::vector<int> want(cand.begin(), cand.begin() + 3);
    std::sort(want.begin(), want.end());
    double denom = s[want[0]] + s[want[1]] + s[want[2]];
    for (int k = 0; k < 3; ++k) {
      CHECK(r.ids[std::size_t(i * 3 + k)] == want[std::size_t(k)]);
      CHECK(r.weights[std::size_t(i * 3 + k)] == doctest::Approx(s[want[std::size_t(k)]] / denom * 2.5).epsilon(1e-12));
    }
  }
}

TEST_CASE("make-model is deterministic from the seed and independent of sharding") {
  test::TempDir a, b;
  ModelSpec s;
  s.config = preset_config("tiny");
  s.dtype = "fp8";
  s.seed = 9;
  make_model(a.path, s);
  s.shard_bytes = 200000;
  make_model(b.path, s);
  Checkpoint ca(a.path), cb(b.path);
  CHECK(cb.num_files() > 1);
  CHECK(ca.names() == cb.names());
  for (const auto& n : ca.names()) {
    const auto& x = ca.get(n);
    const auto& y = cb.get(n);
    REQUIRE(x.nbytes() == y.nbytes());
    CHECK_MESSAGE(std::memcmp(x.data, y.data, x.nbytes()) == 0, n);
  }
}

// Greedy choice: the first index of the largest logit, as a plain loop with
// a strict > finds it (ties: lowest id; a NaN never wins; NaN at 0 gives 0),
// at lengths around the vectorised passes' 16-wide blocks.
TEST_CASE("greedy sampling is the plain loop's argmax: ties, NaN, signed zeros, tails") {
  auto plain = [](const std::vector<float>& l) {
    int64_t best = 0;
    for (int64_t i = 1; i < int64_t(l.size()); ++i)
      if (l[std::size_t(i)] > l[std::size_t(best)]) best = i;
    return best;
  };
  Sampler greedy(SamplerOptions{});
  std::mt19937 g(5);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  int64_t checked = 0;
  for (int64_t V : {1, 2, 15, 16, 17, 31, 33, 100, 32000, 32007}) {
    for (int trial = 0; trial < 12; ++trial) {
      std::vector<float> l(static_cast<std::size_t>(V));
      std::uniform_int_distribution<int> few(-3, 3);  // few distinct values: many ties
      for (auto& v : l) v = trial % 2 ? float(few(g)) : std::normal_distribution<float>()(g);
      const auto at = [&](int64_t i) -> float& { return l[std::size_t(i % V)]; };
      if (trial == 2) at(V - 1) = 100;                      // the largest in the tail
      if (trial == 3) at(V / 2) = nan, at(V - 1) = 50;      // a NaN elsewhere is passed over
      if (trial == 4) at(0) = nan;                          // NaN at 0: 0, as the plain loop
      if (trial == 5) std::fill(l.begin(), l.end(), 0.0f), at(V / 3) = -0.0f, at(V - 1) = 0.0f;
      if (trial == 6) std::fill(l.begin(), l.end(), -1.0f), at(V - 1) = -0.0f, at(V / 2) = 0.0f;
      CHECK_MESSAGE(greedy.sample(l.data(), V) == plain(l), "V=", V, " trial ", trial);
      ++checked;
    }
  }
  CHECK(checked == 120);
}

TEST_CASE("sampling: a seed gives the same draws; top_k = 1 is greedy; bad options are refused") {
  std::vector<float> l(1000);
  std::mt19937 g(9);
  for (auto& v : l) v = std::normal_distribution<float>()(g);
  SamplerOptions o;
  o.temperature = 0.8, o.top_p = 0.9, o.seed = 42;
  Sampler a(o), b(o);
  std::vector<int32_t> da, db;
  for (int i = 0; i < 50; ++i) da.push_back(a.sample(l.data(), 1000)), db.push_back(b.sample(l.data(), 1000));
  CHECK(da == db);
  CHECK(std::set<int32_t>(da.begin(), da.end()).size() > 1);  // it does draw, not always the top
  o.top_k = 1;
  Sampler k1(o);
  CHECK(k1.sample(l.data(), 1000) == Sampler(SamplerOptions{}).sample(l.data(), 1000));
  SamplerOptions bad;
  bad.top_p = 0;
  CHECK_THROWS_WITH_AS(Sampler{bad}, doctest::Contains("top_p"), Error);
}
