// MTP goldens: an MTP layer composed from HF transformers' own modules
// (tests/golden/make_mtp_goldens.py), under both position-0 rules, on an FP8
// sharded checkpoint and on a held-out checkpoint with other dimensions.
// Tolerances: 1e-4 absolute on logits in f32 (the bar; observed
// ~5e-6, f32 rounding in different orders); MTP routing and speculative
// tokens exact (the goldens' smallest routing margin is 2.3e-3 and their
// smallest argmax gap 0.04).
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>
#include <xtensor/xnpy.hpp>

#include <dsv3/tools/speculative.hpp>

#include "test_util.hpp"

using namespace dsv3;

namespace {
const std::string kMtp = std::string(DSV3_SOURCE_DIR) + "/tests/golden/mtp/";

nlohmann::json load_json(const std::string& p) {
  std::ifstream f(p);
  REQUIRE_MESSAGE(f.good(), "missing ", p);
  return nlohmann::json::parse(f);
}

template <class G>
double max_abs(const Mat<float>& a, const G& g) {
  REQUIRE(a.size() == g.size());
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a.data()[i]) - double(g.data()[i])));
  return m;
}
}  // namespace

TEST_CASE("MTP logits match the HF-composed goldens under both position-0 rules") {
  for (const char* c : {"mtp-f32", "mtp-fp8", "mtp-agree-f32", "mtp-heldout-f32"}) {
    CAPTURE(c);
    const auto ids = load_json(kMtp + c + "/meta.json")["ids"].get<std::vector<int32_t>>();
    const int64_t L = int64_t(ids.size());
    Model<float> m(kMtp + c);
    test::use_backend(m);
    REQUIRE(m.has_mtp());
    auto cache = m.new_cache();
    ForwardOptionsT<float> opt;
    Mat<float> h;
    opt.hidden = &h;
    Mat<float> main = m.forward(ids, cache, opt);
    CHECK(max_abs(main, xt::load_npy<float>(kMtp + c + "/main_logits.npy")) < 1e-4);
    const Mat<float> hin = take_rows(h, 0, L - 1);
    const std::vector<int32_t> next(ids.begin() + 1, ids.end());
    for (bool vllm : {false, true}) {
      MTPOptions mo;
      mo.zero_pos0 = vllm;
      auto mc = m.new_mtp_cache();
      std::vector<double> topk;
      Trace t([&](TraceRecord&& r) { topk = r.data; }, [](const std::string& n) { return n == "topk_ids"; });
      Mat<float> ml = m.mtp_forward(hin, next, mc, mo, t);
      const auto g = xt::load_npy<float>(kMtp + c + (vllm ? "/mtp_logits_vllm.npy" : "/mtp_logits_sglang.npy"));
      CHECK_MESSAGE(max_abs(ml, g) < 1e-4, (vllm ? "vllm" : "sglang"), " error ", max_abs(ml, g));
      if (!vllm) {  // routing of the MTP block, exact
        const auto gt = xt::load_npy<int32_t>(kMtp + c + "/mtp_routing_topk.npy");
        REQUIRE(topk.size() == gt.size());
        for (std::size_t i = 0; i < topk.size(); ++i) CHECK(int32_t(topk[i]) == gt.data()[i]);
      }
      // the MTP cache makes row-by-row equal to all rows at once
      auto mc2 = m.new_mtp_cache();
      Mat<float> step = empty<float>(L - 1, m.config().vocab_size);
      for (int64_t i = 0; i < L - 1; ++i) {
        Mat<float> r = m.mtp_forward(take_rows(hin, i, i + 1), {next[std::size_t(i)]}, mc2, mo);
        std::copy(r.begin(), r.end(), step.begin() + i * m.config().vocab_size);
      }
      CHECK(max_abs(step, ml) < 2e-5);
    }
  }
}

TEST_CASE("speculative decoding with MTP is plain greedy, with the golden's acceptance") {
  const std::string c = kMtp + "mtp-agree-f32";
  Model<float> m(c);
  test::use_backend(m);
  for (bool vllm : {false, true}) {
    CAPTURE(vllm);
    const auto g = load_json(c + (vllm ? "/speculative_vllm.json" : "/speculative.json"));
    const auto prompt = g["prompt_ids"].get<std::vector<int32_t>>();
    const auto want = g["generated_ids"].get<std::vector<int32_t>>();
    MTPOptions mo;
    mo.zero_pos0 = vllm;
    const SpecResult r = generate_speculative_mtp(m, prompt, int64_t(want.size()), mo);
    CHECK(r.generated == want);
    CHECK(r.generated == g["plain_greedy_ids"].get<std::vector<int32_t>>());
    CHECK(r.drafted == g["mtp_drafted"].get<int64_t>());
    CHECK(r.accepted == g["mtp_accepted"].get<int64_t>());
    CHECK(r.accepted > 0);
    CHECK(r.accepted < r.drafted);  // both paths taken
    REQUIRE(r.steps.size() == g["per_step"].size());
    for (std::size_t i = 0; i < r.steps.size(); ++i) {
      CHECK(r.steps[i].draft == g["per_step"][i]["draft"].get<int32_t>());
      CHECK(r.steps[i].accepted == g["per_step"][i]["accepted"].get<bool>());
      CHECK(r.steps[i].position == g["per_step"][i]["position"].get<int64_t>());
    }
    // and plain greedy decoding through the cache agrees
    auto cache = m.new_cache();
    ForwardOptions o;
    o.all_logits = false;
    Mat<float> l = m.forward(prompt, cache, o);
    std::vector<int32_t> plain;
    while (plain.size() < want.size()) {
      plain.push_back(argmax_row(l, 0));
      l = m.forward({plain.back()}, cache, o);
    }
    CHECK(plain == want);
  }
}

TEST_CASE("a checkpoint without an MTP layer says so") {
  Model<float> m(std::string(DSV3_SOURCE_DIR) + "/tests/golden/model/a-f32");
  CHECK_FALSE(m.has_mtp());
  auto mc = m.new_mtp_cache();
  CHECK_THROWS_WITH_AS(m.mtp_forward(zeros<float>(1, m.config().hidden_size), {1}, mc),
                       doctest::Contains("no MTP layer (missing 'model.layers.3.eh_proj.weight'"), Error);
}
