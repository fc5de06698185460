// dsv3/tools/make_model.hpp — synthetic checkpoints in the exact HF layout.
//
// `make_model(dir, spec)` writes config.json and model.safetensors (or shards
// plus model.safetensors.index.json), deterministic from the seed: every
// tensor's values come from its own counter-based stream keyed by
// (seed, tensor name), so they do not depend on write order or sharding.
// Values are sized so activations stay O(1): Linear ~ N(0, 1/fan_in), norms
// 1 + 0.1·N(0,1), embeddings N(0,1), router bias bias_mean + 0.1·N(0,1).
// FP8 weights are stored like DeepSeek's: e4m3fn codes with a
// weight_scale_inv per 128×128 block, norms/embeddings/router/lm_head in BF16,
// the router bias in F32 (docs/semantics.md §2.1).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../config.hpp"
#include "../formats/dtype.hpp"
#include "../error.hpp"
#include "../formats/io.hpp"
#include "../formats/safetensors.hpp"
#include "../weights.hpp"

namespace dsv3 {

// FP8 checkpoints are written with the published 128×128 blocks (and say so
// in quantization_config.weight_block_size, which the loader reads).
constexpr int64_t kFp8Block = 128;

struct ModelSpec {
  nlohmann::json config;        // HF config.json content
  std::string dtype = "f32";    // f32 | bf16 | fp8
  uint64_t seed = 0;
  double bias_mean = 0.5;       // e_score_correction_bias mean (negative: see the mask-fill knob)
  uint64_t shard_bytes = uint64_t(2) << 30;  // start a new shard past this size
  bool mtp = false;             // also write the MTP layer(s) (num_nextn_predict_layers, default 1)
  int64_t group_size = 0;       // AWQ / MLX group; 0: the largest of 128, 64, 32 dividing every input
                                // width. MLX with a group that does not divide a module's input width
                                // leaves that module unquantized (BF16), as mlx-lm's quantize_model does.
};

// Named presets. `tiny`: the test model (dims not multiples of 128 so FP8 has
// edge blocks). `demo`: tiny layers with the real 129,280-token vocabulary, so
// the real tokenizer can drive it. `mid`: the benchmark model. `full-dims`:
// DeepSeek-V3's real dimensions (choose the layer count).
inline nlohmann::json preset_config(const std::string& name) {
  nlohmann::json c = {
      {"architectures", {"DeepseekV3ForCausalLM"}}, {"model_type", "deepseek_v3"},
      {"bos_token_id", 0}, {"eos_token_id", 1}, {"hidden_act", "silu"},
      {"rms_norm_eps", 1e-6}, {"rope_theta", 10000.0}, {"tie_word_embeddings", false},
      {"attention_bias", false}, {"scoring_func", "sigmoid"}, {"topk_method", "noaux_tc"},
      {"norm_topk_prob", true}, {"moe_layer_freq", 1}, {"num_nextn_predict_layers", 0}};
  auto yarn = [](int64_t original) {
    return nlohmann::json{{"type", "yarn"}, {"factor", 40.0},
                          {"original_max_position_embeddings", original},
                          {"beta_fast", 32.0}, {"beta_slow", 1.0},
                          {"mscale", 1.0}, {"mscale_all_dim", 1.0}};
  };
  if (name == "tiny" || name == "demo") {
    c.update({{"vocab_size", name == "demo" ? 129280 : 512}, {"hidden_size", 160},
              {"intermediate_size", 320}, {"moe_intermediate_size", 96},
              {"num_hidden_layers", 3}, {"first_k_dense_replace", 1},
              {"num_attention_heads", 4}, {"num_key_value_heads", 4},
              {"n_routed_experts", 16}, {"n_group", 4}, {"topk_group", 2},
              {"num_experts_per_tok", 4}, {"n_shared_experts", 2},
              {"routed_scaling_factor", 2.5}, {"q_lora_rank", 96}, {"kv_lora_rank", 64},
              {"qk_nope_head_dim", 32}, {"qk_rope_head_dim", 16}, {"v_head_dim", 24},
              {"rope_scaling", yarn(32)}, {"max_position_embeddings", 1280}});
    if (name == "demo") c["hidden_size"] = 64, c["intermediate_size"] = 128,
                        c["moe_intermediate_size"] = 32, c["q_lora_rank"] = 48,
                        c["kv_lora_rank"] = 32, c["rope_scaling"] = yarn(4096),
                        c["max_position_embeddings"] = 163840;
  } else if (name == "mid") {
    c.update({{"vocab_size", 32000}, {"hidden_size", 1024}, {"intermediate_size", 2816},
              {"moe_intermediate_size", 192}, {"num_hidden_layers", 8},
              {"first_k_dense_replace", 1}, {"num_attention_heads", 16},
              {"num_key_value_heads", 16}, {"n_routed_experts", 64}, {"n_group", 8},
              {"topk_group", 4}, {"num_experts_per_tok", 6}, {"n_shared_experts", 1},
              {"routed_scaling_factor", 2.5}, {"q_lora_rank", 384}, {"kv_lora_rank", 128},
              {"qk_nope_head_dim", 64}, {"qk_rope_head_dim", 32}, {"v_head_dim", 64},
              {"rope_scaling", yarn(4096)}, {"max_position_embeddings", 163840}});
  } else if (name == "full-dims") {
    c.update({{"vocab_size", 129280}, {"hidden_size", 7168}, {"intermediate_size", 18432},
              {"moe_intermediate_size", 2048}, {"num_hidden_layers", 61},
              {"first_k_dense_replace", 3}, {"num_attention_heads", 128},
              {"num_key_value_heads", 128}, {"n_routed_experts", 256}, {"n_group", 8},
              {"topk_group", 4}, {"num_experts_per_tok", 8}, {"n_shared_experts", 1},
              {"routed_scaling_factor", 2.5}, {"q_lora_rank", 1536}, {"kv_lora_rank", 512},
              {"qk_nope_head_dim", 128}, {"qk_rope_head_dim", 64}, {"v_head_dim", 128},
              {"rope_scaling", yarn(4096)}, {"max_position_embeddings", 163840}});
  } else {
    fail("make-model: unknown preset '", name, "' (expected tiny, demo, mid or full-dims)");
  }
  return c;
}

namespace make_detail {

// splitmix64: a counter-based stream per tensor.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
  double normal() {  // Box–Muller
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};

inline uint64_t name_seed(uint64_t seed, const std::string& name) {
  uint64_t h = 1469598103934665603ull ^ seed;  // FNV-1a
  for (unsigned char ch : name) h = (h ^ ch) * 1099511628211ull;
  return h;
}

// Inverse normal CDF (Acklam's rational approximation; ~1e-9 relative), used
// to build the FP8 code table.
inline double inv_norm_cdf(double p) {
  static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                             1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00};
  static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                             6.680131188771972e+01, -1.328068155286824e+01};
  static const double cc[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                              -2.549671015990110e+00, 4.374664141464968e+00, 2.938163982698783e+00};
  static const double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                             3.754408661907416e+00};
  if (p < 0.02425) {
    const double q = std::sqrt(-2 * std::log(p));
    return (((((cc[0] * q + cc[1]) * q + cc[2]) * q + cc[3]) * q + cc[4]) * q + cc[5]) /
           ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  if (p > 1 - 0.02425) return -inv_norm_cdf(1 - p);
  const double q = p - 0.5, r = q * q;
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
         (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

// FP8 weights are drawn as already-quantised normals: a block's scale_inv is
// sigma·(3 + u)/448 and its codes are e4m3(N(0,1)·448/(3 + u)), clipped to
// ±448. A 64K-entry table maps 16 random bits to a code for one fixed
// ratio (448/4); the block's u only changes its scale — fast enough for the
// 16 GB full-dims checkpoint.
inline const std::array<uint8_t, 65536>& fp8_normal_table() {
  static const std::array<uint8_t, 65536> t = [] {
    std::array<uint8_t, 65536> r{};
    for (int i = 0; i < 65536; ++i) {
      double v = inv_norm_cdf((i + 0.5) / 65536.0) * (448.0 / 4.0);
      v = std::max(-448.0, std::min(448.0, v));
      r[std::size_t(i)] = f32_to_fp8_e4m3(float(v));
    }
    return r;
  }();
  return t;
}

}  // namespace make_detail

// Writes the checkpoint; returns the total bytes of tensor data.
inline uint64_t make_model(const std::string& dir, const ModelSpec& spec) {
  using make_detail::Rng;
  using make_detail::name_seed;
  if (!std::isfinite(spec.bias_mean) || std::fabs(spec.bias_mean) > 1e3)
    fail("make-model: bias_mean = ", spec.bias_mean, " must be a finite number in [-1000, 1000]");
  if (spec.shard_bytes == 0) fail("make-model: shard size must be positive");
  nlohmann::json cj = spec.config;
  if (spec.mtp && cj.value("num_nextn_predict_layers", 0) == 0) cj["num_nextn_predict_layers"] = 1;
  const Config c = Config::from_json(cj, "make-model config");
  const std::string& fmt = spec.dtype;
  if (fmt != "f32" && fmt != "bf16" && fmt != "fp8" && fmt != "awq" && fmt != "mlx4" && fmt != "mlx5" && fmt != "mlx8")
    fail("make-model: --dtype '", fmt, "' is not one of f32, bf16, fp8, awq, mlx4, mlx5, mlx8");
  const bool fp8 = fmt == "fp8", awq = fmt == "awq", mlx = fmt.rfind("mlx", 0) == 0;
  const int64_t mlx_bits = mlx ? fmt[3] - '0' : 0;
  // unquantized tensors: F32 / BF16; F16 in AWQ checkpoints (AutoAWQ saves fp16)
  const DType dense_dt = fmt == "f32" ? DType::F32 : awq ? DType::F16 : DType::BF16;
  // AWQ / MLX group size: the largest of 128, 64, 32 dividing every input width
  int64_t group = spec.group_size;
  if ((awq || mlx) && group && (group < 32 || group % 32 != 0))
    fail("make-model --group-size ", group, ": must be a positive multiple of 32");
  if (awq && group)
    for (int64_t d : {c.hidden_size, c.intermediate_size, c.moe_intermediate_size, c.kv_lora_rank,
                      c.num_attention_heads * c.v_head_dim, c.shared_intermediate()})
      if (d % group) fail("make-model --dtype awq --group-size ", group, ": does not divide input width ", d);
  if ((awq || mlx) && !group) {
    std::vector<int64_t> ins = {c.hidden_size, c.intermediate_size, c.moe_intermediate_size, c.kv_lora_rank,
                                c.qk_nope_head_dim, c.num_attention_heads * c.v_head_dim, c.shared_intermediate()};
    if (c.q_lora_rank) ins.push_back(*c.q_lora_rank);
    for (int64_t g : {128, 64, 32}) {
      bool ok = true;
      for (int64_t d : ins) ok = ok && d > 0 && d % g == 0;
      if (ok) { group = g; break; }
    }
    if (!group) fail("make-model --dtype ", fmt, ": the model's input widths must all be multiples of 32");
  }
  std::filesystem::create_directories(dir);

  std::vector<TensorToWrite> ts;
  const uint64_t seed = spec.seed;
  // A tensor of `shape` with values mean + std·N(0,1), stored as `dt`.
  // `seed_name`: whose stream to use (a copy of another tensor when it differs).
  auto gaussian = [&](const std::string& name, std::vector<int64_t> shape, double mean, double std,
                      DType dt, const std::string& seed_name = "") {
    const std::string sn = seed_name.empty() ? name : seed_name;
    ts.push_back({name, dt, shape, [=](uint8_t* out) {
      Rng rng(name_seed(seed, sn));
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      for (int64_t i = 0; i < n; ++i) {
        const float v = float(mean + std * rng.normal());
        if (dt == DType::F32) std::memcpy(out + 4 * i, &v, 4);
        else { const uint16_t h = dt == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v); std::memcpy(out + 2 * i, &h, 2); }
      }
    }});
  };
  // Random words: every bit pattern is a valid packed code.
  auto random_words = [&](const std::string& name, DType dt, std::vector<int64_t> shape) {
    ts.push_back({name, dt, shape, [=](uint8_t* o) {
      Rng rng(name_seed(seed, name));
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      for (int64_t i = 0; i < n; ++i) { const uint32_t w = uint32_t(rng.next()); std::memcpy(o + 4 * i, &w, 4); }
    }});
  };
  // A per-group scale tensor: base·(0.75 + 0.5u), optionally with a matching
  // bias tensor -scale·mid (MLX: W = q·s + b with q uniform in [0, 2^bits)).
  auto scales = [&](const std::string& name, DType dt, std::vector<int64_t> shape, double base, double mid_bias) {
    const std::string bname = name.substr(0, name.size() - std::string("scales").size()) + "biases";
    for (int part = 0; part < (mid_bias != 0 ? 2 : 1); ++part)
      ts.push_back({part ? bname : name, dt, shape, [=](uint8_t* o) {
        Rng rng(name_seed(seed, name));
        int64_t n = 1;
        for (int64_t d : shape) n *= d;
        for (int64_t i = 0; i < n; ++i) {
          const float sc = float(base * (0.75 + 0.5 * rng.uniform()));
          const float v = part ? float(-sc * mid_bias) : sc;
          const uint16_t h = dt == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
          std::memcpy(o + 2 * i, &h, 2);
        }
      }});
  };
  // MLX affine: weight U32 [.., out, in·bits/32], scales/biases BF16 [.., out, in/g].
  auto mlx_linear = [&](const std::string& prefix, std::vector<int64_t> lead, int64_t out, int64_t in) {
    if (in % group != 0) {  // mlx-lm leaves it unquantized: a plain BF16 weight, no scales
      auto shape = lead;
      shape.push_back(out);
      shape.push_back(in);
      gaussian(prefix + ".weight", shape, 0.0, 1.0 / std::sqrt(double(in)), DType::BF16);
      return;
    }
    const double levels = double((1 << mlx_bits) - 1);
    const double sq = std::sqrt((levels + 1) * (levels + 1) - 1) / std::sqrt(12.0);  // std of uniform codes
    auto sh = [&](int64_t last) { auto v = lead; v.push_back(out); v.push_back(last); return v; };
    random_words(prefix + ".weight", DType::U32, sh(in * mlx_bits / 32));
    scales(prefix + ".scales", DType::BF16, sh(in / group), 1.0 / std::sqrt(double(in)) / sq, levels / 2);
  };
  auto linear = [&](const std::string& prefix, int64_t out, int64_t in, bool keep_bf16) {
    const double sigma = 1.0 / std::sqrt(double(in));
    if (awq && !keep_bf16) {
      // AutoAWQ GEMM: qweight I32 [in, out/8], qzeros I32 [in/g, out/8] (all 8: the
      // mid code), scales F16 [in/g, out]; W = (q − 8)·s with q uniform in [0, 16)
      if (out % 8) fail("make-model --dtype awq: '", prefix, "' has out = ", out, ", not a multiple of 8");
      random_words(prefix + ".qweight", DType::I32, {in, out / 8});
      ts.push_back({prefix + ".qzeros", DType::I32, {in / group, out / 8}, [](uint8_t*) {}});
      ts.back().fill = [n = (in / group) * (out / 8)](uint8_t* o) {
        const uint32_t eights = 0x88888888u;
        for (int64_t i = 0; i < n; ++i) std::memcpy(o + 4 * i, &eights, 4);
      };
      scales(prefix + ".scales", DType::F16, {in / group, out}, sigma / 4.61, 0);
      return;
    }
    if (mlx && !keep_bf16) return mlx_linear(prefix, {}, out, in);
    if (!fp8 || keep_bf16) return gaussian(prefix + ".weight", {out, in}, 0.0, sigma, dense_dt);
    const int64_t br = kFp8Block, bc = kFp8Block, sr = (out + br - 1) / br, sc = (in + bc - 1) / bc;
    const std::string wn = prefix + ".weight", sn = prefix + ".weight_scale_inv";
    ts.push_back({wn, DType::F8_E4M3, {out, in}, [=](uint8_t* o) {
      const auto& table = make_detail::fp8_normal_table();
      Rng rng(name_seed(seed, wn));
      const int64_t n = out * in;
      int64_t i = 0;
      for (; i + 4 <= n; i += 4) {  // four codes per 64 random bits
        const uint64_t r = rng.next();
        for (int k = 0; k < 4; ++k) o[i + k] = table[(r >> (16 * k)) & 0xffff];
      }
      for (; i < n; ++i) o[i] = table[rng.next() & 0xffff];
    }});
    ts.push_back({sn, DType::F32, {sr, sc}, [=](uint8_t* o) {
      Rng rng(name_seed(seed, sn));
      for (int64_t b = 0; b < sr * sc; ++b) {
        // codes carry N(0,1)·112, so W = code·s has std sigma when s = sigma/112;
        // a per-block factor in [0.75, 1.25) varies the blocks' scales.
        const float s = float(sigma / 112.0 * (0.75 + 0.5 * rng.uniform()));
        std::memcpy(o + 4 * b, &s, 4);
      }
    }});
  };
  const double inv_sqrt_d = 1.0 / std::sqrt(double(c.hidden_size));
  const int64_t H = c.num_attention_heads, dn = c.qk_nope_head_dim;
  for (const TensorSpec& t : expected_tensors(c, spec.mtp)) {
    // the layouts of weights.hpp stored_module (Format::mlx_stacked, Format::mlx_split_kvb), under its names
    if (mlx && t.kind == TensorSpec::Linear && t.expert >= 0) {
      // mlx-lm stacks the routed experts: mlp.switch_mlp.{gate,up,down}_proj [E, out, in]
      if (t.expert == 0) mlx_linear(mlx_stack_prefix(t.name), {c.n_routed_experts}, t.shape[0], t.shape[1]);
      continue;
    }
    if (mlx && t.kind == TensorSpec::Linear && !kv_b_split(t.name, "embed_q").empty()) {
      // newer mlx-lm: embed_q [H, kv_lora, nope] (W_UKᵀ) and unembed_out [H, v, kv_lora] (W_UV)
      mlx_linear(kv_b_split(t.name, "embed_q"), {H}, c.kv_lora_rank, dn);
      mlx_linear(kv_b_split(t.name, "unembed_out"), {H}, c.v_head_dim, c.kv_lora_rank);
      continue;
    }
    if (mlx && (t.kind == TensorSpec::Embed || t.kind == TensorSpec::Head)) {  // quantized too
      mlx_linear(t.name.substr(0, t.name.size() - 7), {}, t.shape[0], t.shape[1]);
      continue;
    }
    switch (t.kind) {
      case TensorSpec::Embed: gaussian(t.name, t.shape, 0.0, 1.0, dense_dt, t.copy_of); break;
      case TensorSpec::Norm: gaussian(t.name, t.shape, 1.0, 0.1, dense_dt); break;
      case TensorSpec::Linear: linear(t.name, t.shape[0], t.shape[1], t.keep_bf16); break;
      case TensorSpec::Router: gaussian(t.name, t.shape, 0.0, inv_sqrt_d, dense_dt); break;
      case TensorSpec::RouterBias: gaussian(t.name, t.shape, spec.bias_mean, 0.1, DType::F32); break;
      case TensorSpec::Head: gaussian(t.name, t.shape, 0.0, inv_sqrt_d, dense_dt, t.copy_of); break;
    }
  }

  // config.json
  nlohmann::json cfg = cj;
  cfg["torch_dtype"] = fmt == "f32" ? "float32" : awq ? "float16" : "bfloat16";
  cfg.erase("quantization_config");
  cfg.erase("quantization");
  if (fp8)
    cfg["quantization_config"] = {{"activation_scheme", "dynamic"}, {"fmt", "e4m3"},
                                  {"quant_method", "fp8"}, {"weight_block_size", {kFp8Block, kFp8Block}}};
  if (awq)  // AutoAWQ's config keys (docs/formats.md)
    cfg["quantization_config"] = {{"quant_method", "awq"}, {"bits", 4}, {"group_size", group},
                                  {"zero_point", true}, {"version", "gemm"},
                                  {"modules_to_not_convert", {"lm_head"}}};
  if (mlx) {  // mlx-lm writes both keys
    cfg["quantization"] = {{"group_size", group}, {"bits", mlx_bits}, {"mode", "affine"}};
    cfg["quantization_config"] = cfg["quantization"];
  }

  // shards: consecutive tensors up to shard_bytes each
  std::vector<std::vector<TensorToWrite>> shards(1);
  uint64_t cur = 0, total = 0;
  for (auto& t : ts) {
    if (cur > 0 && cur + t.nbytes() > spec.shard_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    cur += t.nbytes();
    total += t.nbytes();
    shards.back().push_back(std::move(t));
  }
  const nlohmann::json meta = {{"format", "pt"}};
  std::vector<std::string> written;
  if (shards.size() == 1) {
    write_safetensors(dir + "/model.safetensors", shards[0], meta);
    written.push_back("model.safetensors");
  } else {
    nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", nlohmann::json::object()}};
    char name[64];
    for (std::size_t s = 0; s < shards.size(); ++s) {
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
      write_safetensors(dir + "/" + name, shards[s], meta);
      written.push_back(name);
      for (const auto& t : shards[s]) index["weight_map"][t.name] = name;
    }
    write_file_atomic(dir + "/model.safetensors.index.json", index.dump(2) + "\n");
    written.push_back("model.safetensors.index.json");
  }
  // Weights of an earlier model in another layout would take precedence (an
  // index over a single file) or linger: remove what this model did not write.
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    const bool weights = n == "model.safetensors" || n == "model.safetensors.index.json" ||
                         (n.rfind("model-", 0) == 0 && n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0);
    if (weights && std::find(written.begin(), written.end(), n) == written.end()) {
      std::error_code ec;
      std::filesystem::remove(e.path(), ec);
      if (ec) fail(dir, ": cannot remove the earlier model's '", n, "': ", ec.message());
    }
  }
  write_file_atomic(dir + "/config.json", cfg.dump(2) + "\n");
  return total;
}

}  // namespace dsv3
