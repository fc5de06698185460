// End-to-end logits of checkpoints quantized by mlx-lm's own code path
// (tests/golden/make_quant_goldens.py: mlx 0.32.4 / mlx-lm 0.32.2), loaded in
// mlx-lm's exact layout (stacked switch_mlp experts, embed_q/unembed_out or
// the older kv_b_proj, quantized embedding and lm_head, U32 packing).
// Tolerance 1e-4 absolute (f32): mlx-lm ran with every scale and bias upcast
// to f32 and its quantized matmul forms s·q + b unrounded, as dsv3 does; the
// remaining difference is summation order (observed ≤ 6e-6). Greedy tokens
// exact. mlx-lm masks dropped groups with 0.0; these configs have positive
// router biases, where 0.0 and −inf select the same experts (checked below).
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>
#include <xtensor/xnpy.hpp>

#include <dsv3/model.hpp>

#include "test_util.hpp"

using namespace dsv3;

TEST_CASE("mlx-lm quantized checkpoints (4, 5 mixed, 8 bit; new and old kv_b layout; partially quantized) match mlx-lm's logits") {
  const std::string root = std::string(DSV3_SOURCE_DIR) + "/tests/golden/quant/mlx-lm/";
  for (const char* c : {"lm-4bit", "lm-5bit-mixed", "lm-8bit", "lm-4bit-kvb", "lm-4bit-partial"}) {
    CAPTURE(c);
    std::ifstream f(root + c + "/meta.json");
    const auto ids = nlohmann::json::parse(f)["ids"].get<std::vector<int32_t>>();
    const std::string golden = std::string(c) == "lm-4bit-kvb" ? "/logits_no_requant.npy" : "/logits.npy";
    const auto g = xt::load_npy<float>(root + c + golden);
    for (const char* fill : {"-inf", "0"}) {
      const Variants v = Variants::from_json({{"group_mask_fill", fill}});
      Model<float> m(root + c, v);
      test::use_backend(m);
      auto cache = m.new_cache();
      Mat<float> l = m.forward(ids, cache);
      REQUIRE(l.size() == g.size());
      double err = 0;
      for (std::size_t i = 0; i < l.size(); ++i) err = std::max(err, double(std::fabs(l.data()[i] - g.data()[i])));
      CHECK_MESSAGE(err < 1e-4, c, " mask fill ", fill, ": max error ", err);
      const int64_t V = cols(l);
      for (int64_t i = 0; i < rows(l); ++i) {
        const auto a = std::max_element(&l(i, 0), &l(i, 0) + V) - &l(i, 0);
        const auto b = std::max_element(&g(i, 0), &g(i, 0) + V) - &g(i, 0);
        CHECK(a == b);
      }
    }
  }
}

// lm-4bit-partial: mlx-lm left embed_q (qk_nope 32) and the stacked routed
// down_proj (moe_intermediate 96) in BF16 beside quantized modules, and kept the
// router bias F32. Binding follows the tensors present; decode (one token per
// call: absorbed attention through the BF16 embed_q and the 4-bit
// unembed_out) matches mlx-lm's logits too.
TEST_CASE("a partially quantized mlx-lm checkpoint decodes token by token like mlx-lm's prefill") {
  const std::string dir = std::string(DSV3_SOURCE_DIR) + "/tests/golden/quant/mlx-lm/lm-4bit-partial";
  std::ifstream f(dir + "/meta.json");
  const auto ids = nlohmann::json::parse(f)["ids"].get<std::vector<int32_t>>();
  const auto g = xt::load_npy<float>(dir + "/logits.npy");
  Model<float> m(dir);
  test::use_backend(m);
  CHECK(m.weights().layers[1].self_attn.kv_b_proj.format() == "embed_q BF16, unembed_out MLX 4-bit g64");
  CHECK(m.weights().layers[1].moe->experts[3].down_proj.is_dense());
  auto cache = m.new_cache();
  const std::size_t P = 12;
  Mat<float> first = m.forward(std::vector<int32_t>(ids.begin(), ids.begin() + P), cache);
  double err = 0;
  const int64_t V = cols(first);
  for (std::size_t t = P; t <= ids.size(); ++t) {
    const Mat<float> l = t == P ? first : m.forward({ids[t - 1]}, cache);
    const int64_t row = t == P ? int64_t(P) - 1 : 0;
    for (int64_t v = 0; v < V; ++v) err = std::max(err, double(std::fabs(l(row, v) - g(t - 1, v))));
  }
  CHECK_MESSAGE(err < 1e-4, "decode max error ", err);
}
