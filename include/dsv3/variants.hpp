// dsv3/variants.hpp — named knobs that reproduce other engines' choices.
//
// The default of every knob is the official inference/model.py behaviour
// (or, for precision, the exact math in the compute scalar). Each knob names
// the engine whose behaviour it reproduces, so that `dsv3 compare` can turn a
// mismatch into a cause. The divergences themselves are catalogued in
// docs/semantics.md §12 (D-numbers below).
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "formats/dtype.hpp"
#include "error.hpp"

namespace dsv3 {

// The knobs' values, resolved once from their names (JSON, CLI) to enums.
enum class MaskFill { neg_inf, zero };          // "-inf" | "0"
enum class RouterPrecision { fp32, bf16 };      // "fp32" | "bf16"
enum class RmsNormRounding { single, hf };      // "single" | "hf"
enum class YarnRule { always, official };       // "always" | "official"

struct Variants {
  // D7. Masked-group fill before the top-k: −inf (OFF since @1398800; HF
  // since transformers#45441) or 0.0 (mlx-lm deepseek_v3.py `put_along_axis(..., 0.0)`,
  // HF before #45441, vLLM before #13474). Differs when biased scores are negative.
  MaskFill group_mask_fill = MaskFill::neg_inf;
  // D6. Router precision: fp32 (HF, vLLM after #14027) or bf16 (OFF Gate:
  // bf16 linear, bf16 sigmoid, bf16 combine weights; the fp32 bias still
  // promotes the selection scores, OFF @4592be4).
  RouterPrecision router_precision = RouterPrecision::fp32;
  // OFF holds activations in bf16 (torch.set_default_dtype(torch.bfloat16)
  // in generate.py): every linear/norm/RoPE output, the residual stream and
  // the attention probabilities are rounded to bf16.
  bool bf16_activations = false;
  // D12. RMSNorm rounding with bf16 activations: "single" (fp32 normalise and
  // weight multiply, one rounding; torch >= 2.5 F.rms_norm, MLX) or "hf"
  // (fp32 normalise -> bf16 -> × weight in bf16; HF DeepseekV3RMSNorm, OFF on
  // its pinned torch 2.4).
  RmsNormRounding rmsnorm_rounding = RmsNormRounding::single;
  // D14. OFF gemm_impl="fp8": FP8 linears quantise activations in 1×128
  // blocks (amax clamped to 1e-4, scale amax/448, e4m3 RNE) and accumulate
  // each 128-wide K block's exact fp8×fp8 dot in fp32, scaled by both block
  // scales (kernel.py act_quant_kernel / fp8_gemm_kernel). Default: W8A16
  // (dequantised weights, OFF gemm_impl="bf16").
  bool fp8_w8a8 = false;
  // D15. Round dequantised FP8 weights to bf16 before the matmul: OFF
  // weight_dequant writes bf16(fp8·s) (kernel.py), mlx-lm's sanitize
  // dequantises FP8 checkpoints to bf16 at load. Default: the f32 product.
  bool fp8_dequant_bf16 = false;
  // D3. YaRN "always" (HF, MLX) or "official": only when max_seq_len >
  // original_max_position_embeddings (OFF precompute_freqs_cis and the
  // softmax-scale mscale), with OFF's max_seq_len (default 16384).
  YarnRule yarn = YarnRule::always;
  int64_t max_seq_len = 16384;
  // Number of routed experts per token; 0 = config (num_experts_per_tok).
  // llama.cpp `--override-kv deepseek2.expert_used_count=int:6`
  // (ggml-org/llama.cpp#11446), KTransformers' 6-expert mode.
  int64_t experts_per_tok = 0;

  bool yarn_enabled(int64_t original_max_position_embeddings) const {
    return yarn == YarnRule::always || max_seq_len > original_max_position_embeddings;
  }

  static Variants from_json(const nlohmann::json& j, const std::string& where = "variants") {
    Variants v;
    if (!j.is_object()) fail(where, ": expected a JSON object");
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& k = it.key();
      const auto& x = it.value();
      // a named value -> its enum (the names, in enum order)
      auto pick = [&](auto& dst, std::initializer_list<const char*> names) {
        if (!x.is_string()) fail(where, ": '", k, "' must be a string");
        const std::string got = x.get<std::string>();
        int i = 0;
        for (const char* n : names) {
          if (got == n) {
            dst = static_cast<std::remove_reference_t<decltype(dst)>>(i);
            return;
          }
          ++i;
        }
        std::string list;
        for (const char* n : names) list += std::string(list.empty() ? "" : ", ") + n;
        fail(where, ": '", k, "' = \"", got, "\" is not one of ", list);
      };
      if (k == "group_mask_fill") pick(v.group_mask_fill, {"-inf", "0"});
      else if (k == "router_precision") pick(v.router_precision, {"fp32", "bf16"});
      else if (k == "rmsnorm_rounding") pick(v.rmsnorm_rounding, {"single", "hf"});
      else if (k == "yarn") pick(v.yarn, {"always", "official"});
      else if (k == "bf16_activations" || k == "fp8_w8a8" || k == "fp8_dequant_bf16") {
        if (!x.is_boolean()) fail(where, ": '", k, "' must be true or false");
        (k == "bf16_activations" ? v.bf16_activations : k == "fp8_w8a8" ? v.fp8_w8a8 : v.fp8_dequant_bf16) = x.get<bool>();
      } else if (k == "max_seq_len" || k == "experts_per_tok") {
        if (!x.is_number_integer() || x.get<int64_t>() < 0) fail(where, ": '", k, "' must be a non-negative integer");
        (k == "max_seq_len" ? v.max_seq_len : v.experts_per_tok) = x.get<int64_t>();
      } else {
        fail(where, ": unknown knob '", k, "' (known: group_mask_fill, router_precision, bf16_activations, "
             "rmsnorm_rounding, fp8_w8a8, fp8_dequant_bf16, yarn, max_seq_len, experts_per_tok)");
      }
    }
    return v;
  }

  nlohmann::json to_json() const {
    return {{"group_mask_fill", group_mask_fill == MaskFill::zero ? "0" : "-inf"},
            {"router_precision", router_precision == RouterPrecision::bf16 ? "bf16" : "fp32"},
            {"bf16_activations", bf16_activations},
            {"rmsnorm_rounding", rmsnorm_rounding == RmsNormRounding::hf ? "hf" : "single"},
            {"fp8_w8a8", fp8_w8a8}, {"fp8_dequant_bf16", fp8_dequant_bf16},
            {"yarn", yarn == YarnRule::official ? "official" : "always"}, {"max_seq_len", max_seq_len},
            {"experts_per_tok", experts_per_tok}};
  }
};

// Rounds every element to bf16 when `on` (OFF's bf16 activations).
template <class It>
inline void round_bf16_if(bool on, It begin, It end) {
  if (!on) return;
  for (It p = begin; p != end; ++p) *p = decltype(+*p)(round_bf16(float(*p)));
}

// Engine emulation: rounds a whole activation (any container) to bf16 when
// the bf16-activation knob is on; the default (official math in T) leaves it.
template <class M>
inline void round_act(const Variants& v, M& m) {
  round_bf16_if(v.bf16_activations, m.begin(), m.end());
}
// One value, the same rule.
template <class T>
inline T round_act_value(const Variants& v, T a) {
  return v.bf16_activations ? T(round_bf16(float(a))) : a;
}

}  // namespace dsv3
