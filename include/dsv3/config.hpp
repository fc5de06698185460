// dsv3/config.hpp — the model's hyper-parameters, read from HF `config.json`.
//
// Field names are the HF `config.json` keys (docs/semantics.md §1). Derived
// dimensions are member functions. Every value is checked on load; a value dsv3
// cannot run is an Error naming the field and what was expected — never a
// silently different model.
//
// Dimension legend, used in shape comments throughout dsv3 (row-major), with
// the DeepSeek-V3 report's symbols and DeepSeek-V3's values:
//   n      tokens in one forward call          t      cached positions (+ n)
//   d      hidden_size                 7168    V      vocab_size          129280
//   n_h    num_attention_heads          128    d_c    kv_lora_rank           512
//   d_c'   q_lora_rank                 1536    d_h    qk_nope_head_dim       128
//   d_h^R  qk_rope_head_dim              64    d_v    v_head_dim             128
//   N_r    n_routed_experts             256    N_s    n_shared_experts         1
//   K_r    num_experts_per_tok            8    M      n_group (topk_group 4)   8
//   I      moe_intermediate_size       2048    (dense layers: intermediate_size 18432)
// CPU kernels use short forms: dn = d_h, dr = d_h^R, dq = d_h + d_h^R,
// dv = d_v, r = d_c, H = n_h, D = d, E = N_r.
#pragma once

#include <cmath>
#include <cstdint>
#include <sys/stat.h>

#include <fstream>
#include <iterator>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "formats/json.hpp"

#include "error.hpp"

namespace dsv3 {

struct RopeScaling {          // rope_scaling (HF <= 4.x) or rope_parameters (HF 5.x)
  std::string type = "none";  // "yarn" or "none" (plain RoPE)
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;  // 0 = absent: no softmax-scale correction (HF rule)
};

// DeepSeek-V3 uses 128 x 128. A block larger than a matrix is one scale for all
// of it; the bound keeps block arithmetic (offset + block) far from overflow.
constexpr int64_t kMaxFp8Block = int64_t(1) << 16;

struct QuantizationConfig {   // quantization_config (FP8 checkpoints)
  std::string quant_method;   // "fp8"
  std::string fmt = "e4m3";
  std::string activation_scheme = "dynamic";
  int64_t block_rows = 128, block_cols = 128;  // weight_block_size, each in [1, kMaxFp8Block]
};

struct Config {
  int64_t vocab_size = 0;              // V
  int64_t hidden_size = 0;             // d
  int64_t intermediate_size = 0;       // dense MLP width (layers < first_k_dense_replace)
  int64_t moe_intermediate_size = 0;   // I: width of one routed / shared expert
  int64_t num_hidden_layers = 0;
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  int64_t num_attention_heads = 0;     // n_h
  int64_t n_routed_experts = 0;        // N_r
  int64_t n_shared_experts = 0;        // N_s
  int64_t num_experts_per_tok = 0;     // K_r
  int64_t n_group = 1;                 // M groups of N_r / M experts
  int64_t topk_group = 1;              // groups kept per token
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = true;
  std::string scoring_func = "sigmoid";
  std::string topk_method = "noaux_tc";
  std::optional<int64_t> q_lora_rank;  // d_c'; null: a plain q_proj (DeepSeek-V2-Lite style)
  int64_t kv_lora_rank = 0;            // d_c
  int64_t qk_nope_head_dim = 0;        // d_h
  int64_t qk_rope_head_dim = 0;        // d_h^R
  int64_t v_head_dim = 0;              // d_v
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool rope_interleave = true;         // adjacent-pair rotation (official / HF default)
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 0;
  int64_t eos_token_id = 1;
  int64_t num_nextn_predict_layers = 0;
  std::optional<QuantizationConfig> quantization_config;
  nlohmann::json raw;                  // the file as read, for `inspect` and round trips

  // -- derived dimensions ---------------------------------------------------
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  int64_t experts_per_group() const { return n_routed_experts / n_group; }
  int64_t shared_intermediate() const { return moe_intermediate_size * n_shared_experts; }
  bool is_moe_layer(int64_t layer) const { return layer >= first_k_dense_replace; }
  int64_t kv_cache_width() const { return kv_lora_rank + qk_rope_head_dim; }  // per token, layer
  bool is_fp8() const { return quantization_config && quantization_config->quant_method == "fp8"; }

  // Softmax scale of eq. (10): 1/sqrt(d_h + d_h^R), times mscale² when YaRN
  // is on, with YaRN's attention temperature mscale = sqrt(1/t) =
  // 0.1·mscale_all_dim·ln(factor) + 1 (YaRN §3.4 "sqrt(1/t) = 0.1 ln(s) + 1";
  // squared because it scales both q and k; docs/semantics.md §5).
  double softmax_scale(bool yarn_on = true) const {
    double s = 1.0 / std::sqrt(double(qk_head_dim()));
    if (yarn_on && rope_scaling.type == "yarn" && rope_scaling.mscale_all_dim != 0.0 &&
        rope_scaling.factor > 1.0) {
      const double m = 0.1 * rope_scaling.mscale_all_dim * std::log(rope_scaling.factor) + 1.0;
      s *= m * m;
    }
    return s;
  }

  static Config from_json(const nlohmann::json& j, const std::string& where = "config.json");
  static Config from_file(const std::string& path);
  void validate(const std::string& where = "config.json") const;
};

namespace detail {

template <class T>
T get_field(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.contains(key)) fail(where, ": missing field '", key, "'");
  const auto& v = j.at(key);
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) fail(where, ": field '", key, "' must be a boolean, got ", v.dump());
    return v.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    if (!v.is_number_integer())
      fail(where, ": field '", key, "' must be an integer, got ", v.dump());
    return v.get<T>();
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!v.is_number()) fail(where, ": field '", key, "' must be a number, got ", v.dump());
    return v.get<T>();
  } else {
    if (!v.is_string()) fail(where, ": field '", key, "' must be a string, got ", v.dump());
    return v.get<T>();
  }
}

template <class T>
T get_field_or(const nlohmann::json& j, const char* key, T dflt, const std::string& where) {
  if (!j.contains(key) || j.at(key).is_null()) return dflt;
  return get_field<T>(j, key, where);
}

}  // namespace detail

inline Config Config::from_json(const nlohmann::json& j, const std::string& where) {
  using detail::get_field;
  using detail::get_field_or;
  if (!j.is_object()) fail(where, ": expected a JSON object at top level");
  Config c;
  c.raw = j;
  c.vocab_size = get_field<int64_t>(j, "vocab_size", where);
  c.hidden_size = get_field<int64_t>(j, "hidden_size", where);
  c.intermediate_size = get_field<int64_t>(j, "intermediate_size", where);
  c.moe_intermediate_size = get_field<int64_t>(j, "moe_intermediate_size", where);
  c.num_hidden_layers = get_field<int64_t>(j, "num_hidden_layers", where);
  c.first_k_dense_replace = get_field<int64_t>(j, "first_k_dense_replace", where);
  c.moe_layer_freq = get_field_or<int64_t>(j, "moe_layer_freq", 1, where);
  c.num_attention_heads = get_field<int64_t>(j, "num_attention_heads", where);
  c.n_routed_experts = get_field<int64_t>(j, "n_routed_experts", where);
  c.n_shared_experts = get_field_or<int64_t>(j, "n_shared_experts", 0, where);
  c.num_experts_per_tok = get_field<int64_t>(j, "num_experts_per_tok", where);
  c.n_group = get_field<int64_t>(j, "n_group", where);
  c.topk_group = get_field<int64_t>(j, "topk_group", where);
  c.routed_scaling_factor = get_field<double>(j, "routed_scaling_factor", where);
  c.norm_topk_prob = get_field_or<bool>(j, "norm_topk_prob", true, where);
  c.scoring_func = get_field_or<std::string>(j, "scoring_func", "sigmoid", where);
  c.topk_method = get_field_or<std::string>(j, "topk_method", "noaux_tc", where);
  if (j.contains("q_lora_rank") && !j.at("q_lora_rank").is_null())
    c.q_lora_rank = get_field<int64_t>(j, "q_lora_rank", where);
  c.kv_lora_rank = get_field<int64_t>(j, "kv_lora_rank", where);
  c.qk_nope_head_dim = get_field<int64_t>(j, "qk_nope_head_dim", where);
  c.qk_rope_head_dim = get_field<int64_t>(j, "qk_rope_head_dim", where);
  c.v_head_dim = get_field<int64_t>(j, "v_head_dim", where);
  c.max_position_embeddings = get_field<int64_t>(j, "max_position_embeddings", where);
  c.rms_norm_eps = get_field_or<double>(j, "rms_norm_eps", 1e-6, where);
  c.tie_word_embeddings = get_field_or<bool>(j, "tie_word_embeddings", false, where);
  c.bos_token_id = get_field_or<int64_t>(j, "bos_token_id", 0, where);
  if (j.contains("eos_token_id") && j.at("eos_token_id").is_array()) {
    if (j.at("eos_token_id").empty() || !j.at("eos_token_id")[0].is_number_integer())
      fail(where, ": field 'eos_token_id' must be an integer or a non-empty list of integers");
    c.eos_token_id = j.at("eos_token_id")[0].get<int64_t>();
  } else {
    c.eos_token_id = get_field_or<int64_t>(j, "eos_token_id", 1, where);
  }
  c.num_nextn_predict_layers = get_field_or<int64_t>(j, "num_nextn_predict_layers", 0, where);
  c.rope_interleave = get_field_or<bool>(j, "rope_interleave", true, where);

  const std::string act = get_field_or<std::string>(j, "hidden_act", "silu", where);
  if (act != "silu") fail(where, ": field 'hidden_act' = \"", act, "\" is unsupported (expected \"silu\")");
  if (get_field_or<bool>(j, "attention_bias", false, where))
    fail(where, ": field 'attention_bias' = true is unsupported (DeepSeek-V3 has no biases)");

  // RoPE: HF 4.x writes rope_theta + rope_scaling; HF 5.x writes rope_parameters
  // (which holds rope_theta too). Accept both spellings of the type key.
  nlohmann::json rs;
  std::string rs_name = "rope_scaling";
  if (j.contains("rope_scaling") && !j.at("rope_scaling").is_null()) {
    rs = j.at("rope_scaling");
  } else if (j.contains("rope_parameters") && !j.at("rope_parameters").is_null()) {
    rs = j.at("rope_parameters");
    rs_name = "rope_parameters";
  }
  c.rope_theta = get_field_or<double>(j, "rope_theta", 10000.0, where);
  if (!rs.is_null()) {
    if (!rs.is_object()) fail(where, ": field '", rs_name, "' must be an object");
    const std::string w = where + ": " + rs_name;
    if (rs.contains("rope_theta")) c.rope_theta = get_field<double>(rs, "rope_theta", w);
    std::string type;
    if (rs.contains("rope_type")) type = get_field<std::string>(rs, "rope_type", w);
    else if (rs.contains("type")) type = get_field<std::string>(rs, "type", w);
    else fail(w, ": missing field 'type' (or 'rope_type')");
    if (type == "yarn") {
      RopeScaling& y = c.rope_scaling;
      y.type = "yarn";
      y.factor = get_field<double>(rs, "factor", w);
      y.original_max_position_embeddings =
          get_field<int64_t>(rs, "original_max_position_embeddings", w);
      y.beta_fast = get_field_or<double>(rs, "beta_fast", 32.0, w);
      y.beta_slow = get_field_or<double>(rs, "beta_slow", 1.0, w);
      y.mscale = get_field_or<double>(rs, "mscale", 1.0, w);
      y.mscale_all_dim = get_field_or<double>(rs, "mscale_all_dim", 0.0, w);
    } else if (type == "default" || type == "none") {
      c.rope_scaling.type = "none";
    } else {
      fail(w, ": unknown rope type \"", type, "\" (expected \"yarn\" or \"default\")");
    }
  }

  if (j.contains("quantization") && j.at("quantization").is_object()) {
    // MLX (mlx-lm) affine quantization: details in quant.hpp (quant_params)
    QuantizationConfig qc;
    qc.quant_method = "mlx";
    c.quantization_config = qc;
  } else if (j.contains("quantization_config") && !j.at("quantization_config").is_null()) {
    const auto& q = j.at("quantization_config");
    const std::string w = where + ": quantization_config";
    if (!q.is_object()) fail(w, " must be an object");
    QuantizationConfig qc;
    qc.quant_method = get_field<std::string>(q, "quant_method", w);
    if (qc.quant_method == "fp8") {
      qc.fmt = get_field_or<std::string>(q, "fmt", "e4m3", w);
      qc.activation_scheme = get_field_or<std::string>(q, "activation_scheme", "dynamic", w);
      if (qc.fmt != "e4m3") fail(w, ": fmt \"", qc.fmt, "\" is unsupported (expected \"e4m3\")");
      if (q.contains("weight_block_size")) {
        const auto& b = q.at("weight_block_size");
        if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() ||
            !b[1].is_number_integer() || b[0].get<int64_t>() <= 0 || b[1].get<int64_t>() <= 0 ||
            b[0].get<int64_t>() > kMaxFp8Block || b[1].get<int64_t>() > kMaxFp8Block)
          fail(w, ": weight_block_size must be two integers in [1, ", kMaxFp8Block, "], got ", b.dump());
        qc.block_rows = b[0].get<int64_t>();
        qc.block_cols = b[1].get<int64_t>();
      }
    } else if (qc.quant_method != "awq") {  // AWQ details: quant.hpp (quant_params)
      fail(w, ": quant_method \"", qc.quant_method, "\" is unsupported (expected \"fp8\" or \"awq\")");
    }
    c.quantization_config = qc;
  }

  c.validate(where);
  return c;
}

inline Config Config::from_file(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) fail(path, ": cannot open (expected a HF config.json)");
  if (!S_ISREG(st.st_mode)) fail(path, ": not a regular file (expected a HF config.json)");
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, ": cannot open (expected a HF config.json)");
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) fail(path, ": read error");
  return from_json(parse_json(text, path), path);
}

inline void Config::validate(const std::string& where) const {
  // Bounds keep every product of dimensions far from int64 overflow and reject
  // hand-edited nonsense before anything is allocated.
  auto positive = [&](const char* name, int64_t v, int64_t max) {
    if (v <= 0 || v > max)
      fail(where, ": field '", name, "' = ", v, " must be in [1, ", max, "]");
  };
  positive("vocab_size", vocab_size, int64_t(1) << 24);
  positive("hidden_size", hidden_size, int64_t(1) << 17);
  positive("intermediate_size", intermediate_size, int64_t(1) << 20);
  positive("moe_intermediate_size", moe_intermediate_size, int64_t(1) << 20);
  positive("num_hidden_layers", num_hidden_layers, 4096);
  positive("num_attention_heads", num_attention_heads, 4096);
  positive("n_routed_experts", n_routed_experts, 1 << 16);
  positive("num_experts_per_tok", num_experts_per_tok, 1 << 16);
  positive("n_group", n_group, 1 << 16);
  positive("topk_group", topk_group, 1 << 16);
  positive("kv_lora_rank", kv_lora_rank, 1 << 16);
  positive("qk_nope_head_dim", qk_nope_head_dim, 1 << 14);
  positive("qk_rope_head_dim", qk_rope_head_dim, 1 << 14);
  positive("v_head_dim", v_head_dim, 1 << 14);
  positive("max_position_embeddings", max_position_embeddings, int64_t(1) << 31);
  if (q_lora_rank) positive("q_lora_rank", *q_lora_rank, 1 << 16);
  if (n_shared_experts < 0 || n_shared_experts > 1024)
    fail(where, ": field 'n_shared_experts' = ", n_shared_experts, " must be in [0, 1024]");
  if (first_k_dense_replace < 0 || first_k_dense_replace > num_hidden_layers)
    fail(where, ": field 'first_k_dense_replace' = ", first_k_dense_replace,
         " must be in [0, num_hidden_layers = ", num_hidden_layers, "]");
  if (moe_layer_freq != 1)
    fail(where, ": field 'moe_layer_freq' = ", moe_layer_freq,
         " is unsupported (expected 1: the official code makes every layer from "
         "first_k_dense_replace on an MoE layer)");
  if (n_routed_experts % n_group != 0)
    fail(where, ": field 'n_group' = ", n_group, " must divide n_routed_experts = ",
         n_routed_experts);
  if (topk_group > n_group)
    fail(where, ": field 'topk_group' = ", topk_group, " must be <= n_group = ", n_group);
  if (num_experts_per_tok > topk_group * (n_routed_experts / n_group))
    fail(where, ": field 'num_experts_per_tok' = ", num_experts_per_tok,
         " must be <= topk_group * experts per group = ",
         topk_group * (n_routed_experts / n_group));
  if (n_routed_experts / n_group < 2 && n_group > 1)
    fail(where, ": n_routed_experts / n_group = ", n_routed_experts / n_group,
         " must be >= 2 (a group's score is the sum of its top-2 biased scores)");
  if (qk_rope_head_dim % 2 != 0)
    fail(where, ": field 'qk_rope_head_dim' = ", qk_rope_head_dim, " must be even");
  // Real values inside these ranges give finite results; outside them (a theta
  // near 0 makes the inverse frequencies overflow, a scaling factor near the
  // double limit overflows the MoE output) they give NaN logits.
  auto in_range = [&](const char* name, double v, double lo, double hi, bool lo_open) {
    if (!std::isfinite(v) || v > hi || (lo_open ? !(v > lo) : !(v >= lo)))
      fail(where, ": field '", name, "' = ", v, " must be in ", lo_open ? "(" : "[", lo, ", ", hi, "]");
  };
  in_range("rms_norm_eps", rms_norm_eps, 0.0, 1.0, true);
  in_range("rope_theta", rope_theta, 1.0, 1e12, false);
  in_range("routed_scaling_factor", routed_scaling_factor, 0.0, 1e3, true);
  if (scoring_func != "sigmoid")
    fail(where, ": field 'scoring_func' = \"", scoring_func,
         "\" is unsupported (expected \"sigmoid\", as DeepSeek-V3)");
  if (topk_method != "noaux_tc")
    fail(where, ": field 'topk_method' = \"", topk_method,
         "\" is unsupported (expected \"noaux_tc\", as DeepSeek-V3)");
  if (num_nextn_predict_layers < 0 || num_nextn_predict_layers > 64)
    fail(where, ": field 'num_nextn_predict_layers' = ", num_nextn_predict_layers,
         " must be in [0, 64]");
  if (rope_scaling.type == "yarn") {
    const auto& y = rope_scaling;
    in_range("rope_scaling.factor", y.factor, 1.0, 1e6, false);
    if (y.original_max_position_embeddings <= 0 || y.original_max_position_embeddings > (int64_t(1) << 31))
      fail(where, ": field 'rope_scaling.original_max_position_embeddings' = ",
           y.original_max_position_embeddings, " must be in [1, 2147483648]");
    in_range("rope_scaling.beta_fast", y.beta_fast, 0.0, 1e4, true);
    in_range("rope_scaling.beta_slow", y.beta_slow, 0.0, 1e4, true);
    in_range("rope_scaling.mscale", y.mscale, 0.0, 100.0, false);
    in_range("rope_scaling.mscale_all_dim", y.mscale_all_dim, 0.0, 100.0, false);
  }
}

}  // namespace dsv3
