// Closed-form checks of the stored formats and the config/safetensors
// validation. Exact comparisons unless stated: these are bit-level formats.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>

#include <dsv3/config.hpp>
#include <dsv3/formats/dtype.hpp>
#include <dsv3/rope.hpp>
#include <dsv3/formats/safetensors.hpp>
#include <dsv3/weights.hpp>

#include "test_util.hpp"

using namespace dsv3;

TEST_CASE("fp8 e4m3fn: all 256 codes decode to the closed form") {
  for (int b = 0; b < 256; ++b) {
    const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    const double v = fp8_e4m3_to_f32(uint8_t(b));
    if (e == 15 && m == 7) { CHECK(std::isnan(v)); continue; }
    double want = e == 0 ? (m / 8.0) * std::pow(2.0, -6) : (1 + m / 8.0) * std::pow(2.0, e - 7);
    if (s) want = -want;
    CHECK(v == want);
    // the encoder inverts the decoder on every finite code (bar -0 == +0)
    if (v != 0) CHECK(f32_to_fp8_e4m3(float(v)) == b);
  }
  CHECK(fp8_e4m3_to_f32(0x7e) == 448.0f);
  for (int b = 0; b < 256; ++b) {  // the table-free decoder used by FP8 linears: same bits
    const float a = fp8_e4m3_to_f32(uint8_t(b)), f = fp8_e4m3_to_f32_bits(uint8_t(b));
    uint32_t ua, uf;
    std::memcpy(&ua, &a, 4);
    std::memcpy(&uf, &f, 4);
    CHECK_MESSAGE(ua == uf, "code ", b);
  }
  CHECK(f32_to_fp8_e4m3(460.0f) == 0x7e);          // rounds to the max finite
  CHECK(std::isnan(fp8_e4m3_to_f32(f32_to_fp8_e4m3(500.0f))));  // torch: out of range -> NaN
}

TEST_CASE("bf16 and f16 conversions") {
  CHECK(bf16_to_f32(0x3f80) == 1.0f);
  CHECK(f32_to_bf16(1.0f + 1.0f / 256) == 0x3f80);            // tie -> even
  CHECK(f32_to_bf16(1.0f + 3.0f / 256) == 0x3f82);            // tie -> even (up)
  for (uint32_t h = 0; h < 0x7c00; h += 7) CHECK(f32_to_f16(f16_to_f32(uint16_t(h))) == h);
  CHECK(f16_to_f32(0x3c00) == 1.0f);
  // every code against IEEE 754's definition: (−1)^s · 2^(e−15) · (1 + m/1024), m·2^−24 for e = 0
  int64_t bad = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    const int e = int(h >> 10) & 31, m = int(h & 1023);
    const double mag = e == 0 ? std::ldexp(double(m), -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp(1024.0 + m, e - 25);
    const double want = (h & 0x8000) ? -mag : mag;
    const float got = f16_to_f32(uint16_t(h));
    bad += std::isnan(want) ? !std::isnan(got) : (double(got) != want || std::signbit(got) != std::signbit(want));
  }
  CHECK(bad == 0);
}

TEST_CASE("YaRN inverse frequencies match docs/semantics.md Appendix A") {
  // V3: d = 64, base 1e4, factor 40, L0 4096, beta 32/1. Values from the
  // appendix (fp32 emulation); 2 fp32 ulps allowed for pow's rounding (the
  // appendix notes PyTorch's pow may differ by 1 ulp, and D4 another).
  Config c = test::v3_config();
  auto f = rope_inv_freq(c);
  const double want[32] = {1.000000000e+00, 7.498942018e-01, 5.623413324e-01, 4.216965139e-01,
                           3.162277639e-01, 2.371373624e-01, 1.778279394e-01, 1.333521456e-01,
                           1.000000015e-01, 7.498941571e-02, 5.623412877e-02, 3.900692612e-02,
                           2.687936090e-02, 1.837814413e-02, 1.244795602e-02, 8.334509097e-03,
                           5.500000436e-03, 3.561997321e-03, 2.249365207e-03, 1.370513462e-03,
                           7.905694074e-04, 4.149904125e-04, 1.778279402e-04, 3.333803761e-05,
                           2.500000119e-05, 1.874735426e-05, 1.405853254e-05, 1.054241238e-05,
                           7.905694474e-06, 5.928434803e-06, 4.445698323e-06, 3.333803761e-06};
  REQUIRE(f.size() == 32);
  for (int i = 0; i < 32; ++i) CHECK(std::fabs(f[i] - want[i]) <= 2.5e-7 * want[i]);
  // softmax scale: 192^-0.5 * (0.1 ln 40 + 1)^2
  CHECK(c.softmax_scale() == doctest::Approx(0.1352337789).epsilon(1e-9));
}

TEST_CASE("config: invalid values are rejected with the field named") {
  auto j = test::v3_config_json();
  CHECK_NOTHROW(Config::from_json(j));
  auto expect = [&](nlohmann::json bad, const char* needle) {
    try {
      Config::from_json(bad);
      FAIL("accepted a bad config, expected error containing ", needle);
    } catch (const Error& e) {
      CHECK_MESSAGE(std::string(e.what()).find(needle) != std::string::npos, e.what());
    }
  };
  { auto b = j; b["n_group"] = 3; expect(b, "'n_group' = 3 must divide n_routed_experts"); }
  { auto b = j; b["topk_group"] = 9; expect(b, "'topk_group' = 9 must be <= n_group"); }
  { auto b = j; b["rope_scaling"]["type"] = "ntk"; expect(b, "unknown rope type \"ntk\""); }
  { auto b = j; b.erase("kv_lora_rank"); expect(b, "missing field 'kv_lora_rank'"); }
  { auto b = j; b["hidden_size"] = 0; expect(b, "'hidden_size' = 0 must be in"); }
  { auto b = j; b["hidden_size"] = int64_t(1) << 40; expect(b, "'hidden_size' = 1099511627776"); }
  { auto b = j; b["num_attention_heads"] = "128"; expect(b, "'num_attention_heads' must be an integer"); }
  { auto b = j; b["scoring_func"] = "softmax"; expect(b, "'scoring_func' = \"softmax\""); }
  { auto b = j; b["qk_rope_head_dim"] = 63; expect(b, "'qk_rope_head_dim' = 63 must be even"); }
  { auto b = j; b["quantization_config"]["quant_method"] = "gptq"; expect(b, "quant_method \"gptq\""); }
}

TEST_CASE("safetensors: round trip and strict validation") {
  test::TempDir tmp;
  const std::string p = tmp.path + "/t.safetensors";
  std::vector<TensorToWrite> ts = {
      {"a", DType::F32, {2, 3}, [](uint8_t* o) { float v[6] = {1, 2, 3, 4, 5, 6}; std::memcpy(o, v, 24); }},
      {"b", DType::BF16, {4}, [](uint8_t* o) { for (int i = 0; i < 4; ++i) { uint16_t h = f32_to_bf16(float(i)); std::memcpy(o + 2 * i, &h, 2); } }},
      {"c", DType::F8_E4M3, {3}, [](uint8_t* o) { o[0] = 0x38; o[1] = 0xb8; o[2] = 0; }},
  };
  write_safetensors(p, ts);
  {
    SafetensorsFile f(p);
    CHECK(f.get("a").shape == std::vector<int64_t>{2, 3});
    CHECK(f.get("a").at(5) == 6.0);
    CHECK(f.get("b").at(3) == 3.0);
    CHECK(f.get("c").at(0) == 1.0);
    CHECK(f.get("c").at(1) == -1.0);
  }
  auto bytes = test::read_file(p);
  auto expect = [&](const std::string& data, const char* needle) {
    test::write_file(p, data);
    try {
      SafetensorsFile f(p);
      FAIL("accepted a malformed file, expected ", needle);
    } catch (const Error& e) {
      const std::string m = e.what();
      CHECK_MESSAGE(m.find(needle) != std::string::npos, m);
      CHECK_MESSAGE(m.find(p) != std::string::npos, m);  // names the file
    }
  };
  expect(bytes.substr(0, 5), "truncated");
  expect(bytes.substr(0, bytes.size() - 1), "run past the end of the data");
  std::string huge = bytes;
  huge[0] = char(0xff); huge[1] = char(0xff); huge[2] = char(0x0f);
  expect(huge, "runs past the end of the file");
  auto with_header = [&](const std::string& json) {
    std::string h = json;
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = char((uint64_t(h.size()) >> (8 * i)) & 0xff);
    return out + h + std::string(64, '\0');
  };
  expect(with_header("{not json"), "header: invalid JSON");
  expect(with_header(R"({"x":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})"), "unknown dtype \"F33\"");
  expect(with_header(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})"), "needs 8 bytes");
  expect(with_header(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,400]}})"), "'x'");
  expect(with_header(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})"),
         "overlap");
  // 2^31 x 2^31 elements pass a 2^62 element cap, but x 4 bytes wraps to 0 and
  // matched the empty span [0, 0]; every later read went past the mapping
  expect(with_header(R"({"x":{"dtype":"F32","shape":[2147483648,2147483648],"data_offsets":[0,0]}})"),
         "shape [2147483648, 2147483648] x F32 is absurd (its byte size passes 2^62)");
  // a zero dim first must not let the other dims run unbounded
  expect(with_header(R"({"x":{"dtype":"F32","shape":[0,4611686018427387904,4611686018427387904],"data_offsets":[0,0]}})"),
         "is absurd");
}

TEST_CASE("sharded checkpoint: a missing shard is named") {
  test::TempDir tmp;
  std::vector<TensorToWrite> ts = {{"w", DType::F32, {1}, nullptr}};
  write_safetensors(tmp.path + "/s1.safetensors", ts);
  test::write_file(tmp.path + "/model.safetensors.index.json",
                   R"({"weight_map":{"w":"s1.safetensors","v":"s2.safetensors"}})");
  try {
    Checkpoint ck(tmp.path);
    FAIL("missing shard accepted");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("shard 's2.safetensors'") != std::string::npos);
  }
  test::write_file(tmp.path + "/model.safetensors.index.json",
                   R"({"weight_map":{"w":"s1.safetensors"}})");
  Checkpoint ck(tmp.path);
  CHECK(ck.has("w"));
}

TEST_CASE("FP8 block dequantisation: edge blocks use their own scale") {
  // W [130, 260] with 128x128 blocks: scale grid [2, 3]; the last row block
  // has 2 rows and the last column block 4 columns.
  test::TempDir tmp;
  const int64_t O = 130, I = 260;
  std::vector<uint8_t> q(std::size_t(O * I));
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = uint8_t((i * 37) % 256 == 0x7f ? 0 : (i * 37) % 256) & 0xf7;
  float sc[6] = {0.5f, 2.0f, 0.25f, 3.0f, 1.5f, 0.125f};
  std::vector<TensorToWrite> ts = {
      {"w.weight", DType::F8_E4M3, {O, I}, [&](uint8_t* o) { std::memcpy(o, q.data(), q.size()); }},
      {"w.weight_scale_inv", DType::F32, {2, 3}, [&](uint8_t* o) { std::memcpy(o, sc, 24); }}};
  write_safetensors(tmp.path + "/model.safetensors", ts);
  Checkpoint ck(tmp.path);
  Config cfg = test::v3_config();
  Linear l = detail::need_linear(ck, cfg, "w", O, I);
  std::vector<double> rows(std::size_t(O * I));
  l.decode_rows(0, O, rows.data());
  for (int64_t r = 0; r < O; ++r)
    for (int64_t col = 0; col < I; ++col)
      CHECK(rows[std::size_t(r * I + col)] ==
            double(fp8_e4m3_to_f32(q[std::size_t(r * I + col)])) * sc[(r / 128) * 3 + col / 128]);
  // a wrong scale grid is named
  std::vector<TensorToWrite> bad = {
      {"w.weight", DType::F8_E4M3, {O, I}, nullptr},
      {"w.weight_scale_inv", DType::F32, {1, 3}, nullptr}};
  write_safetensors(tmp.path + "/model.safetensors", bad);
  Checkpoint ck2(tmp.path);
  CHECK_THROWS_WITH_AS(detail::need_linear(ck2, cfg, "w", O, I),
                       doctest::Contains("'w.weight_scale_inv' has shape [1, 3], expected [2, 3]"), Error);
}
