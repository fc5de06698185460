// Quantized-format decoders (include/dsv3/quant.hpp) against the libraries' own output:
// tests/golden/quant/ is written by tests/golden/make_quant_goldens.py with AutoAWQ 0.2.9
// (quantize + pack + dequantize_gemm), mlx 0.32.4 (mx.quantize / mx.dequantize) and
// mlx-lm 0.32.2 (quantize_model + save_model); dsv3 never made these files.
//
// Dequantization is compared bit for bit (every element, float and double, whole matrix and a
// band of rows). The mlx-lm checkpoints are only bound here (names, shapes, per-module bits);
// their logits.npy are for the model integration.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <xtensor/xnpy.hpp>

#include <dsv3/formats/quant.hpp>

#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
const std::string kQuant = std::string(DSV3_SOURCE_DIR) + "/tests/golden/quant/";

nlohmann::json read_json(const std::string& p) { return nlohmann::json::parse(test::read_file(p)); }

std::vector<std::string> case_dirs(const std::string& sub) {
  std::vector<std::string> r;
  for (const auto& e : fs::directory_iterator(kQuant + sub))
    if (e.is_directory()) r.push_back(e.path().string());
  std::sort(r.begin(), r.end());
  return r;
}

// The MLX files as written (their packed words are U32).
std::unique_ptr<dsv3::SafetensorsFile> open_mlx(const std::string& path) {
  return std::make_unique<dsv3::SafetensorsFile>(path);
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

// Decodes all rows (float and double) and rows [r0, r1) (float) and counts elements that differ
// from the golden [out, in] block `g` (row-major, offset `off`).
template <class W>
int64_t count_mismatches(const W& w, const std::vector<float>& g, std::size_t off) {
  const int64_t out = w.out(), in = w.in();
  std::vector<float> f(std::size_t(out * in));
  std::vector<double> d(std::size_t(out * in));
  w.decode_rows(0, out, f.data());
  w.decode_rows(0, out, d.data());
  int64_t bad = 0;
  for (int64_t i = 0; i < out * in; ++i) {
    const float want = g[off + std::size_t(i)];
    if (!same_bits(f[std::size_t(i)], want) || d[std::size_t(i)] != double(want)) ++bad;
  }
  const int64_t r0 = std::min<int64_t>(3, out), r1 = std::min<int64_t>(out, r0 + 11);
  std::vector<float> band(std::size_t((r1 - r0) * in));
  w.decode_rows(r0, r1, band.data());
  for (int64_t i = 0; i < (r1 - r0) * in; ++i)
    if (!same_bits(band[std::size_t(i)], g[off + std::size_t(r0 * in + i)])) ++bad;
  return bad;
}

// Owned bytes behind a synthetic TensorView (for the malformed-tensor tests).
struct Fake {
  std::vector<uint8_t> bytes;
  dsv3::TensorView view;
  Fake(const std::string& name, dsv3::DType dt, std::vector<int64_t> shape) {
    view.name = name;
    view.dtype = dt;
    view.shape = std::move(shape);
    bytes.assign(view.nbytes() + 8, 0);
    view.data = bytes.data();
  }
};

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const dsv3::Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

TEST_CASE("quant: AWQ dequantization is bit-exact vs AutoAWQ dequantize_gemm") {
  int modules = 0;
  for (const std::string& dir : case_dirs("awq")) {
    CAPTURE(dir);
    const auto qp = dsv3::quant_params(read_json(dir + "/config.json"));
    REQUIRE(qp.format == dsv3::QuantFormat::Awq);
    const auto meta = read_json(dir + "/meta.json");
    CHECK(qp.group_size == meta["group_size"].get<int64_t>());
    dsv3::SafetensorsFile f(dir + "/model.safetensors");
    for (const auto& m : meta["modules"]) {
      const std::string p = m["prefix"];
      CAPTURE(p);
      CHECK_FALSE(dsv3::awq_module_skipped(qp, p));
      auto w = dsv3::AwqWeight::bind(f.get(p + ".qweight"), f.get(p + ".qzeros"), f.get(p + ".scales"),
                                     qp.bits, qp.group_size, m["out"].get<int64_t>(), m["in"].get<int64_t>());
      CHECK(w.out() == m["out"].get<int64_t>());
      CHECK(w.in() == m["in"].get<int64_t>());
      auto g = xt::load_npy<float>(dir + "/dequant/" + p + ".npy");
      REQUIRE(g.shape().size() == 2);
      REQUIRE(int64_t(g.shape()[0]) == w.out());
      REQUIRE(int64_t(g.shape()[1]) == w.in());
      std::vector<float> gv(g.begin(), g.end());
      CHECK(count_mismatches(w, gv, 0) == 0);
      ++modules;
    }
  }
  CHECK(modules == 6);
}

TEST_CASE("quant: MLX dequantization is bit-exact vs mx.dequantize (4/5/8 bits, bf16/f16/f32)") {
  int slices = 0, cases = 0;
  for (const std::string& dir : case_dirs("mlx")) {
    CAPTURE(dir);
    const auto qp = dsv3::quant_params(read_json(dir + "/config.json"));
    REQUIRE(qp.format == dsv3::QuantFormat::Mlx);
    const auto meta = read_json(dir + "/meta.json");
    auto f = open_mlx(dir + "/model.safetensors");
    ++cases;
    for (const auto& t : meta["tensors"]) {
      const std::string p = t["prefix"];
      CAPTURE(p);
      const auto mq = dsv3::mlx_module_quant(qp, p, f->has(p + ".scales"));
      REQUIRE(mq.quantized);
      auto w = dsv3::MlxWeight::bind(f->get(p + ".weight"), f->get(p + ".scales"), f->get(p + ".biases"),
                                     mq.bits, mq.group_size);
      auto g = xt::load_npy<float>(dir + "/dequant/" + p + ".npy");
      std::vector<float> gv(g.begin(), g.end());
      const auto shape = t["shape"].get<std::vector<int64_t>>();
      REQUIRE(shape == std::vector<int64_t>(g.shape().begin(), g.shape().end()));
      CHECK(w.in() == shape.back());
      CHECK(w.out() == shape[shape.size() - 2]);
      if (w.stacked()) {
        CHECK(w.num_slices() == shape[0]);
        for (int64_t e = 0; e < w.num_slices(); ++e) {
          CAPTURE(e);
          CHECK(count_mismatches(w.slice(e), gv, std::size_t(e * w.out() * w.in())) == 0);
          ++slices;
        }
      } else {
        CHECK(count_mismatches(w, gv, 0) == 0);
        ++slices;
      }
    }
  }
  CHECK(cases == 7);
  CHECK(slices == 3 * (1 + 1 + 3 + 2 + 1) + 2 * (1 + 4 + 1) + 2 * (1 + 2));
}

TEST_CASE("quant: MLX unrounded decode (quantized_matmul's s*q+b) stays within one storage rounding") {
  const std::string dir = kQuant + "mlx/b4-g64-bf16";
  auto f = open_mlx(dir + "/model.safetensors");
  const std::string p = "model.layers.0.mlp.down_proj";
  auto w = dsv3::MlxWeight::bind(f->get(p + ".weight"), f->get(p + ".scales"), f->get(p + ".biases"), 4, 64);
  w.round_to_storage = false;
  std::vector<double> d(std::size_t(w.out() * w.in()));
  w.decode_rows(0, w.out(), d.data());
  auto g = xt::load_npy<float>(dir + "/dequant/" + p + ".npy");
  int64_t differ = 0;
  // mx.dequantize rounds s*q and then s*q + b to bf16: each costs at most 2^-9 of a magnitude
  // bounded by twice the group's largest |w|.
  int64_t over = 0;
  for (std::size_t i = 0; i < d.size(); ++i) {
    const std::size_t g0 = i / 64 * 64;
    double gmax = 0;
    for (std::size_t j = g0; j < g0 + 64; ++j) gmax = std::max(gmax, std::fabs(double(g.data()[j])));
    const double want = g.data()[i];
    if (std::fabs(d[i] - want) > std::ldexp(gmax, -7)) ++over;
    if (d[i] != want) ++differ;
  }
  CHECK(over == 0);
  CHECK(differ > 0);  // the rounding mx.dequantize adds is really there
}

TEST_CASE("quant: mlx-lm DeepSeek-V3 checkpoints bind module by module") {
  int cases = 0;
  for (const std::string& dir : case_dirs("mlx-lm")) {
    CAPTURE(dir);
    const auto config = read_json(dir + "/config.json");
    const auto qp = dsv3::quant_params(config);
    REQUIRE(qp.format == dsv3::QuantFormat::Mlx);
    const auto meta = read_json(dir + "/meta.json");
    auto f = open_mlx(dir + "/model.safetensors");
    ++cases;
    const int64_t H = config["hidden_size"], nh = config["num_attention_heads"];
    const int64_t kvr = config["kv_lora_rank"], nope = config["qk_nope_head_dim"], vd = config["v_head_dim"];
    const int64_t E = config["n_routed_experts"], mi = config["moe_intermediate_size"], V = config["vocab_size"];
    int quantized = 0;
    for (const auto& kv : f->tensors()) {
      const std::string& name = kv.first;
      if (name.size() < 7 || name.compare(name.size() - 7, 7, ".scales") != 0) continue;
      const std::string path = name.substr(0, name.size() - 7);
      CAPTURE(path);
      const auto mq = dsv3::mlx_module_quant(qp, path, true);
      REQUIRE(mq.quantized);
      auto w = dsv3::MlxWeight::bind(f->get(path + ".weight"), f->get(path + ".scales"),
                                     f->get(path + ".biases"), mq.bits, mq.group_size);
      if (path == "lm_head" || path == "model.embed_tokens") {
        CHECK(w.out() == V);
        CHECK(w.in() == H);
        CHECK(mq.bits == (meta["per_module_override"].is_null() ? meta["bits"].get<int64_t>() : 8));
      } else {
        CHECK(mq.bits == meta["bits"].get<int64_t>());
      }
      if (path.find("switch_mlp") != std::string::npos) {
        CHECK(w.num_slices() == E);
        CHECK(w.out() == (path.find("down_proj") != std::string::npos ? H : mi));
        std::vector<float> rows(std::size_t(2 * w.in()));
        w.slice(E - 1).decode_rows(w.out() - 2, w.out(), rows.data());
      }
      if (path.find("embed_q") != std::string::npos) {  // [heads, kv_lora_rank, qk_nope] per head
        CHECK(w.num_slices() == nh);
        CHECK(w.out() == kvr);
        CHECK(w.in() == nope);
      }
      if (path.find("unembed_out") != std::string::npos) {  // [heads, v_head_dim, kv_lora_rank]
        CHECK(w.num_slices() == nh);
        CHECK(w.out() == vd);
        CHECK(w.in() == kvr);
      }
      if (path.find("kv_b_proj") != std::string::npos) {  // old conversions
        CHECK(meta["layout"] == "old");
        CHECK(w.out() == nh * (nope + vd));
        CHECK(w.in() == kvr);
      }
      ++quantized;
    }
    // Never quantized by mlx-lm: norms, router weight (a plain array in MoEGate) and bias.
    for (const auto& kv : f->tensors()) {
      const std::string& name = kv.first;
      if (name.find("norm") != std::string::npos || name.find("mlp.gate.") != std::string::npos) {
        CAPTURE(name);
        // the router bias: F32 where the script kept it as mlx_lm.convert does (lm-4bit-partial)
        const bool f32_bias = name.find("e_score_correction_bias") != std::string::npos && meta.value("layout", "") == "new" &&
                              dir.find("partial") != std::string::npos;
        CHECK(kv.second.dtype == (f32_bias ? dsv3::DType::F32 : dsv3::DType::BF16));
        CHECK_FALSE(f->has(name.substr(0, name.rfind('.')) + ".scales"));
      }
    }
    // embed, lm_head; per layer q_a, q_b, kv_a, o + (kv_b | embed_q, unembed_out) + 3 MLP.
    // lm-4bit-partial: embed_q (in = qk_nope 32) and the routed down_proj stack (in = 96) stay BF16
    const bool partial = nope % 64 != 0;
    const int per_layer = 4 + (meta["layout"] == "old" ? 1 : partial ? 1 : 2) + 3;
    CHECK(quantized == 2 + 3 * per_layer + 2 * 3 - (partial ? 2 : 0));  // + shared experts in the 2 MoE layers
    if (partial) {
      CHECK(f->get("model.layers.0.self_attn.embed_q.weight").dtype == dsv3::DType::BF16);
      CHECK(f->get("model.layers.1.mlp.switch_mlp.down_proj.weight").shape == std::vector<int64_t>{E, H, mi});
    }
    auto logits = xt::load_npy<float>(dir + "/logits.npy");
    CHECK(logits.shape()[0] == 32);
    CHECK(int64_t(logits.shape()[1]) == V);
  }
  CHECK(cases == 5);
}

TEST_CASE("quant: malformed AWQ tensors give errors naming the tensor") {
  using dsv3::DType;
  Fake qw("m.qweight", DType::I32, {128, 12}), qz("m.qzeros", DType::I32, {2, 12}),
      sc("m.scales", DType::F16, {2, 96});
  auto bind = [&](int64_t bits, int64_t g, int64_t eo = -1, int64_t ei = -1) {
    return dsv3::AwqWeight::bind(qw.view, qz.view, sc.view, bits, g, eo, ei);
  };
  CHECK(bind(4, 64).out() == 96);
  for (int64_t bits : {3, 6, 8}) {
    const std::string e = error_of([&] { bind(bits, 64); });
    CHECK(e.find("m.qweight") != std::string::npos);
    CHECK(e.find("bits = " + std::to_string(bits)) != std::string::npos);
  }
  CHECK(error_of([&] { bind(4, 48); }).find("m.qweight: AWQ group_size 48 does not divide in = 128") == 0);
  CHECK(error_of([&] { bind(4, 64, 100); }).find("m.qweight") == 0);  // wrong packed width for out=100
  CHECK(error_of([&] { bind(4, 64, -1, 256); }).find("m.qweight") == 0);
  CHECK(error_of([&] { bind(4, 32); }).find("m.qzeros: AWQ qzeros must be I32 [in/group, out/8] = [4, 12]") == 0);
  {
    Fake bad("m.qzeros", DType::I32, {2, 11});
    CHECK(error_of([&] { dsv3::AwqWeight::bind(qw.view, bad.view, sc.view, 4, 64); }).find("m.qzeros") == 0);
  }
  {
    Fake bad("m.scales", DType::F16, {2, 95});
    CHECK(error_of([&] { dsv3::AwqWeight::bind(qw.view, qz.view, bad.view, 4, 64); })
              .find("m.scales: AWQ scales must be F16 [in/group, out] = [2, 96]") == 0);
  }
  {
    Fake bad("m.scales", DType::I32, {2, 96});
    CHECK(error_of([&] { dsv3::AwqWeight::bind(qw.view, qz.view, bad.view, 4, 64); }).find("m.scales") == 0);
  }
  {
    Fake bad("m.qweight", DType::F16, {128, 12});
    CHECK(error_of([&] { dsv3::AwqWeight::bind(bad.view, qz.view, sc.view, 4, 64); }).find("m.qweight") == 0);
  }
  auto w = bind(4, 64);
  std::vector<float> buf(std::size_t(w.in()));
  CHECK(error_of([&] { w.decode_rows(95, 97, buf.data()); }).find("m.qweight") == 0);
}

TEST_CASE("quant: malformed MLX tensors give errors naming the tensor") {
  using dsv3::DType;
  // 5 bits, group 64: in = 320 -> 50 words, 5 groups.
  Fake w("x.weight", DType::I32, {6, 50}), s("x.scales", DType::BF16, {6, 5}), b("x.biases", DType::BF16, {6, 5});
  auto bind = [&](int64_t bits, int64_t g, int64_t eo = -1, int64_t ei = -1) {
    return dsv3::MlxWeight::bind(w.view, s.view, b.view, bits, g, -1, eo, ei);
  };
  CHECK(bind(5, 64).in() == 320);
  for (int64_t bits : {3, 6, 2, 7}) {
    const std::string e = error_of([&] { bind(bits, 64); });
    CHECK(e.find("x.weight: MLX bits = " + std::to_string(bits) + " is not supported") == 0);
  }
  // Wrong packed width for the bits: 50 words is 400 4-bit values = 10 groups of 40, not 5.
  CHECK(error_of([&] { bind(4, 40); }).find("x.scales: MLX scales must be a float tensor [6, 10]") == 0);
  CHECK(error_of([&] { bind(5, 64, -1, 384); }).find("x.weight: packed width 50 words holds in = 320") == 0);
  CHECK(error_of([&] { bind(5, 64, 7); }).find("x.weight") == 0);
  CHECK(error_of([&] { bind(5, 48); }).find("x.weight: MLX group_size 48 does not divide in = 320") == 0);
  {
    Fake odd("x.weight", DType::I32, {6, 51});  // 51*32 bits is not a multiple of 5
    CHECK(error_of([&] { dsv3::MlxWeight::bind(odd.view, s.view, b.view, 5, 64); })
              .find("x.weight: packed width 51 words (1632 bits) is not a whole number of 5-bit values") == 0);
  }
  {
    Fake bad("x.biases", DType::BF16, {6, 4});
    CHECK(error_of([&] { dsv3::MlxWeight::bind(w.view, s.view, bad.view, 5, 64); }).find("x.biases: MLX biases") == 0);
  }
  {
    Fake bad("x.biases", DType::F16, {6, 5});
    CHECK(error_of([&] { dsv3::MlxWeight::bind(w.view, s.view, bad.view, 5, 64); }).find("x.biases: MLX biases dtype F16") == 0);
  }
  {
    Fake bad("x.weight", DType::BF16, {6, 50});
    CHECK(error_of([&] { dsv3::MlxWeight::bind(bad.view, s.view, b.view, 5, 64); }).find("x.weight: MLX quantized weight must be U32") == 0);
  }
  {
    Fake st("e.weight", DType::I32, {3, 6, 50}), ss("e.scales", DType::BF16, {3, 6, 5}), sb("e.biases", DType::BF16, {3, 6, 5});
    auto sw = dsv3::MlxWeight::bind(st.view, ss.view, sb.view, 5, 64);
    std::vector<float> buf(320);
    CHECK(error_of([&] { sw.decode_rows(0, 1, buf.data()); }).find("e.weight: stacked MLX weight") == 0);
    CHECK(error_of([&] { sw.slice(3); }).find("e.weight: slice 3 outside [0, 3)") == 0);
    sw.slice(2).decode_rows(5, 6, buf.data());
    Fake s2("e.scales", DType::BF16, {2, 6, 5});
    CHECK(error_of([&] { dsv3::MlxWeight::bind(st.view, s2.view, sb.view, 5, 64); }).find("e.scales") == 0);
  }
}

TEST_CASE("quant: config parsing (AWQ / MLX / per-module overrides)") {
  auto awq = dsv3::quant_params(nlohmann::json::parse(R"({"quantization_config": {"quant_method": "awq",
      "bits": 4, "group_size": 64, "zero_point": true, "version": "gemm",
      "modules_to_not_convert": ["kv_a_proj_with_mqa"]}})"));
  CHECK(awq.format == dsv3::QuantFormat::Awq);
  CHECK(awq.group_size == 64);
  CHECK(dsv3::awq_module_skipped(awq, "model.layers.3.self_attn.kv_a_proj_with_mqa"));
  CHECK_FALSE(dsv3::awq_module_skipped(awq, "model.layers.3.self_attn.kv_b_proj"));
  CHECK(error_of([] { dsv3::quant_params(nlohmann::json::parse(
            R"({"quantization_config": {"quant_method": "awq", "bits": 3, "group_size": 64}})")); })
            .find("'quantization_config.bits' = 3") != std::string::npos);
  CHECK(dsv3::quant_params(nlohmann::json::parse(R"({"quantization_config": {"quant_method": "fp8"}})")).format ==
        dsv3::QuantFormat::Fp8);
  CHECK(dsv3::quant_params(nlohmann::json::parse(R"({"hidden_size": 8})")).format == dsv3::QuantFormat::None);

  auto mlx = dsv3::quant_params(nlohmann::json::parse(R"({"quantization": {"group_size": 64, "bits": 4,
      "model.layers.0.mlp.gate": false, "lm_head": {"group_size": 32, "bits": 8}},
      "quantization_config": {"group_size": 64, "bits": 4}})"));
  CHECK(mlx.format == dsv3::QuantFormat::Mlx);
  CHECK(mlx.bits == 4);
  auto m1 = dsv3::mlx_module_quant(mlx, "model.layers.0.mlp.gate", true);
  CHECK_FALSE(m1.quantized);
  auto m2 = dsv3::mlx_module_quant(mlx, "lm_head", true);
  CHECK((m2.quantized && m2.bits == 8 && m2.group_size == 32));
  auto m3 = dsv3::mlx_module_quant(mlx, "model.layers.0.self_attn.o_proj", true);
  CHECK((m3.quantized && m3.bits == 4 && m3.group_size == 64));
  CHECK_FALSE(dsv3::mlx_module_quant(mlx, "model.layers.0.input_layernorm", false).quantized);
  for (const char* bad : {R"({"quantization": {"group_size": 64, "bits": 3}})",
                          R"({"quantization": {"group_size": 64, "bits": 6}})",
                          R"({"quantization": {"group_size": 32, "bits": 4, "mode": "mxfp4"}})"}) {
    CAPTURE(bad);
    CHECK(error_of([&] { dsv3::quant_params(nlohmann::json::parse(bad)); }).find("config.json: 'quantization.") == 0);
  }
}
