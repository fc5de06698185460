// dsv3/formats/quant.hpp — decoders for the published integer-quantized DeepSeek-V3-0324 formats.
//
// Two formats besides the official FP8 checkpoint (docs/formats.md has the layouts, the
// config keys and the citations):
//
//  * AWQ "GEMM" (AutoAWQ; cognitivecomputations/DeepSeek-V3-0324-AWQ, run by vLLM/SGLang):
//      <module>.qweight  I32 [in, out/8]       8 4-bit values per word, AWQ order
//      <module>.qzeros   I32 [in/group, out/8] same packing
//      <module>.scales   F16 [in/group, out]
//    Output column c of a row lives in word c/8 at bit 4*kAwqReverseOrder[c%8]
//    (AutoAWQ packs order_map [0,2,4,6,1,3,5,7]). W[o, i] = f16((q - z) * s): AutoAWQ's
//    dequantize_gemm and vLLM's awq_dequantize both form the product in the scales' dtype,
//    so every dequantized weight is one f16 rounding of the exact product.
//
//  * MLX affine (mlx-community/DeepSeek-V3-0324-{4,5,8}bit, mlx-lm):
//      <module>.weight   U32 [out, in*bits/32]   (or [E, out, in*bits/32] stacked experts /
//                                                  [heads, out, in*bits/32] MultiLinear)
//      <module>.scales   BF16 [out, in/group]    (dtype of the converted model)
//      <module>.biases   same as scales
//    Each row is a little-endian bit stream: value k is bits [k*bits, (k+1)*bits), so 5-bit
//    values straddle words. mx.dequantize computes w = q*s + b in the scales' dtype with two
//    roundings (product, then sum); `decode_rows` reproduces that bit for bit. Set
//    `round_to_storage = false` for the unrounded s*q + b that mx.quantized_matmul effectively
//    uses (it accumulates sum(x*q)*s + sum(x)*b in float32 and never materialises W).
//
// The weights stay in the mapping; `decode_rows(r0, r1, dst)` produces rows [r0, r1) of the
// dequantized [out, in] matrix (PyTorch Linear convention) as float or double — the same
// contract as `Linear::decode_rows` in weights.hpp. Little-endian hosts only (like the
// safetensors reader).
//
// The 32-bit packed words may be stored as U32 (MLX) or I32 (AWQ); both are accepted as any
// 4-byte integer dtype.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dtype.hpp"
#include "../error.hpp"
#include "safetensors.hpp"

namespace dsv3 {

// How a quantized module is named in `inspect` and Linear::format().
inline std::string awq_label(int64_t group_size) { return "AWQ int4 g" + std::to_string(group_size); }
inline std::string mlx_label(int64_t bits, int64_t group_size) {
  return "MLX " + std::to_string(bits) + "-bit g" + std::to_string(group_size);
}

namespace quant_detail {

inline bool is_word32(DType t) { return dtype_size(t) == 4 && !is_float(t); }
inline bool is_scale_dtype(DType t) { return t == DType::F16 || t == DType::BF16 || t == DType::F32; }

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline float load_scale(const uint8_t* p, DType t) {
  uint16_t h;
  switch (t) {
    case DType::F16: std::memcpy(&h, p, 2); return f16_to_f32(h);
    case DType::BF16: std::memcpy(&h, p, 2); return bf16_to_f32(h);
    default: { float f; std::memcpy(&f, p, 4); return f; }
  }
}

// Round a float to the nearest value of dtype t (RNE), as a tensor op in that dtype does.
inline float round_to(float x, DType t) {
  switch (t) {
    case DType::F16: return f16_to_f32(f32_to_f16(x));
    case DType::BF16: return round_bf16(x);
    default: return x;
  }
}

inline std::string dims_str(const std::vector<int64_t>& v) { return shape_str(v); }

}  // namespace quant_detail

// ===========================================================================================
// AWQ (AutoAWQ GEMM packing)
// ===========================================================================================

// Bit position (in nibbles) of output column c%8 inside its 32-bit word: AutoAWQ packs
// order_map [0,2,4,6,1,3,5,7] (nibble i holds column order_map[i]); this is its inverse,
// AWQ_REVERSE_ORDER in AutoAWQ's packing_utils.py and vLLM's awq_triton.py.
inline constexpr int kAwqReverseOrder[8] = {0, 4, 1, 5, 2, 6, 3, 7};

struct AwqWeight {
  TensorView qweight;  // I32 [in, out/8]
  TensorView qzeros;   // I32 [in/group, out/8]
  TensorView scales;   // F16 [in/group, out] (BF16/F32 accepted; the rounding follows it)
  int64_t bits = 4;
  int64_t group_size = 128;

  int64_t in() const { return qweight.shape.at(0); }
  int64_t out() const { return qweight.shape.at(1) * (32 / bits); }

  // Validates and returns the weight. group_size -1 means one group over the whole input
  // (AutoAWQ q_group_size -1). expect_out/expect_in (if >= 0) check the logical [out, in].
  static AwqWeight bind(const TensorView& qweight, const TensorView& qzeros, const TensorView& scales,
                        int64_t bits, int64_t group_size, int64_t expect_out = -1,
                        int64_t expect_in = -1) {
    using namespace quant_detail;
    const std::string& n = qweight.name;
    if (bits != 4)
      fail(n, ": AWQ bits = ", bits,
           " is not supported (AutoAWQ GEMM packing and vLLM's AWQ kernels are 4-bit only)");
    if (qweight.shape.size() != 2 || !is_word32(qweight.dtype))
      fail(n, ": AWQ qweight must be a 2-D I32 tensor [in, out/8], got ", dtype_name(qweight.dtype),
           " ", dims_str(qweight.shape));
    const int64_t n_in = qweight.shape[0], words = qweight.shape[1], n_out = words * 8;
    if (group_size == -1) group_size = n_in;
    if (group_size <= 0) fail(n, ": AWQ group_size = ", group_size, " must be positive (or -1)");
    if (n_in == 0 || words == 0) fail(n, ": AWQ qweight ", dims_str(qweight.shape), " is empty");
    if (n_in % group_size != 0)
      fail(n, ": AWQ group_size ", group_size, " does not divide in = ", n_in);
    if (expect_in >= 0 && expect_in != n_in)
      fail(n, ": AWQ qweight ", dims_str(qweight.shape), " has in = ", n_in, ", expected ", expect_in,
           " (qweight is [in, out/8])");
    if (expect_out >= 0 && expect_out != n_out)
      fail(n, ": AWQ qweight ", dims_str(qweight.shape), " packs out = ", n_out, " (", words,
           " words x 8), expected out = ", expect_out, " i.e. [", n_in, ", ", expect_out / 8, "]");
    const int64_t groups = n_in / group_size;
    if (qzeros.shape.size() != 2 || !is_word32(qzeros.dtype) || qzeros.shape[0] != groups ||
        qzeros.shape[1] != words)
      fail(qzeros.name, ": AWQ qzeros must be I32 [in/group, out/8] = [", groups, ", ", words,
           "] for qweight ", dims_str(qweight.shape), " and group_size ", group_size, ", got ",
           dtype_name(qzeros.dtype), " ", dims_str(qzeros.shape));
    if (scales.shape.size() != 2 || !is_scale_dtype(scales.dtype) || scales.shape[0] != groups ||
        scales.shape[1] != n_out)
      fail(scales.name, ": AWQ scales must be F16 [in/group, out] = [", groups, ", ", n_out,
           "] for qweight ", dims_str(qweight.shape), " and group_size ", group_size, ", got ",
           dtype_name(scales.dtype), " ", dims_str(scales.shape));
    AwqWeight w;
    w.qweight = qweight;
    w.qzeros = qzeros;
    w.scales = scales;
    w.bits = bits;
    w.group_size = group_size;
    return w;
  }

  // Rows [r0, r1) of W = [out, in] into dst[(r1-r0) * in]. Storage is [in, out], so a band of
  // output rows is a band of columns: walk the input rows once, decoding the band from each.
  template <class T>
  void decode_rows(int64_t r0, int64_t r1, T* dst) const {
    using namespace quant_detail;
    const int64_t n_in = in(), n_out = out(), words = qweight.shape[1];
    if (r0 < 0 || r1 > n_out || r0 > r1)
      fail(qweight.name, ": decode_rows [", r0, ", ", r1, ") outside [0, ", n_out, ")");
    const int64_t nr = r1 - r0;
    const std::size_t ses = dtype_size(scales.dtype);
    std::vector<int32_t> z(static_cast<std::size_t>(nr));
    std::vector<double> s(static_cast<std::size_t>(nr));
    for (int64_t g = 0; g * group_size < n_in; ++g) {
      const uint8_t* zrow = qzeros.data + std::size_t(g * words) * 4;
      const uint8_t* srow = scales.data + std::size_t(g * n_out) * ses;
      for (int64_t r = r0; r < r1; ++r) {
        const uint32_t zw = load_u32(zrow + std::size_t(r / 8) * 4);
        z[r - r0] = int32_t((zw >> (4 * kAwqReverseOrder[r % 8])) & 0xFu);
        s[r - r0] = load_scale(srow + std::size_t(r) * ses, scales.dtype);
      }
      const int64_t i1 = std::min(n_in, (g + 1) * group_size);
      for (int64_t i = g * group_size; i < i1; ++i) {
        const uint8_t* qrow = qweight.data + std::size_t(i * words) * 4;
        for (int64_t r = r0; r < r1; ++r) {
          const uint32_t qw = load_u32(qrow + std::size_t(r / 8) * 4);
          const int32_t q = int32_t((qw >> (4 * kAwqReverseOrder[r % 8])) & 0xFu);
          // (q - z) * s exactly (double), rounded once to float, then to the scales' dtype:
          // torch's int * f16 -> f16 product (AutoAWQ dequantize_gemm).
          const float p = float(double(q - z[r - r0]) * s[r - r0]);
          dst[(r - r0) * n_in + i] = T(round_to(p, scales.dtype));
        }
      }
    }
  }
};

// ===========================================================================================
// MLX affine quantization (mx.quantize mode "affine")
// ===========================================================================================

// Bit widths accepted here: those of the published DeepSeek-V3-0324 MLX conversions.
// (mlx itself also has 2, 3 and 6; the bit-stream decoder below handles them unchanged.)
inline bool mlx_bits_supported(int64_t bits) { return bits == 4 || bits == 5 || bits == 8; }

struct MlxWeight {
  TensorView weight;   // U32 [out, in*bits/32] or [E, out, in*bits/32]
  TensorView scales;   // [.., out, in/group] BF16/F16/F32
  TensorView biases;   // same shape and dtype as scales
  int64_t bits = 4;
  int64_t group_size = 64;
  int64_t expert = -1;            // slice of a 3-D (stacked) tensor; -1 for 2-D tensors
  bool round_to_storage = true;   // true: exactly mx.dequantize; false: s*q + b unrounded in T

  // weight's last two dimensions, kept by bind: decode reads them for every
  // call on a matrix, and the shape's own storage, elsewhere on the heap,
  // had left the cache since the last token (a miss per call; the CPU
  // backend's fused_rows spent 1.3% of mid mlx4 decode on that one load)
  int64_t out_ = 0, packed_ = 0;

  bool stacked() const { return weight.shape.size() == 3; }
  int64_t num_slices() const { return stacked() ? weight.shape[0] : 1; }
  int64_t out() const { return out_; }
  int64_t packed() const { return packed_; }
  int64_t in() const { return packed() * 32 / bits; }

  // Validates and returns the weight. For 3-D tensors pass the slice (`expert`) to decode, or
  // bind with -1 and pick slices later with `slice(e)`. expect_out/expect_in (if >= 0) check the
  // logical [out, in] of one slice.
  static MlxWeight bind(const TensorView& weight, const TensorView& scales, const TensorView& biases,
                        int64_t bits, int64_t group_size, int64_t expert = -1,
                        int64_t expect_out = -1, int64_t expect_in = -1) {
    using namespace quant_detail;
    const std::string& n = weight.name;
    if (!mlx_bits_supported(bits))
      fail(n, ": MLX bits = ", bits,
           " is not supported (the published DeepSeek-V3-0324 MLX conversions use 4, 5 or 8)");
    if (group_size <= 0) fail(n, ": MLX group_size = ", group_size, " must be positive");
    const std::size_t nd = weight.shape.size();
    if ((nd != 2 && nd != 3) || !is_word32(weight.dtype))
      fail(n, ": MLX quantized weight must be U32 [out, in*bits/32] (or [E, out, in*bits/32]), got ",
           dtype_name(weight.dtype), " ", dims_str(weight.shape));
    const int64_t pk = weight.shape.back(), n_out = weight.shape[nd - 2];
    if (pk <= 0 || n_out <= 0) fail(n, ": MLX quantized weight ", dims_str(weight.shape), " is empty");
    if ((pk * 32) % bits != 0)
      fail(n, ": packed width ", pk, " words (", pk * 32, " bits) is not a whole number of ", bits,
           "-bit values");
    const int64_t n_in = pk * 32 / bits;
    if (n_in % group_size != 0)
      fail(n, ": MLX group_size ", group_size, " does not divide in = ", n_in, " (", pk,
           " words x 32 / ", bits, " bits)");
    if (expect_out >= 0 && expect_out != n_out)
      fail(n, ": has out = ", n_out, " (shape ", dims_str(weight.shape), "), expected ", expect_out);
    if (expect_in >= 0 && expect_in != n_in)
      fail(n, ": packed width ", pk, " words holds in = ", n_in, " values of ", bits,
           " bits, expected in = ", expect_in, " i.e. ", expect_in * bits / 32, " words");
    std::vector<int64_t> want = weight.shape;
    want.back() = n_in / group_size;
    for (const TensorView* t : {&scales, &biases}) {
      const char* what = t == &scales ? "scales" : "biases";
      if (!is_scale_dtype(t->dtype) || t->shape != want)
        fail(t->name, ": MLX ", what, " must be a float tensor ", dims_str(want), " ([.., out, in/",
             group_size, "] for ", n, " ", dims_str(weight.shape), ", ", bits, " bits), got ",
             dtype_name(t->dtype), " ", dims_str(t->shape));
    }
    if (biases.dtype != scales.dtype)
      fail(biases.name, ": MLX biases dtype ", dtype_name(biases.dtype), " differs from scales ",
           dtype_name(scales.dtype));
    MlxWeight w;
    w.weight = weight;
    w.scales = scales;
    w.biases = biases;
    w.bits = bits;
    w.group_size = group_size;
    w.expert = -1;
    w.out_ = n_out;
    w.packed_ = pk;
    return expert == -1 ? w : w.slice(expert);
  }

  // The same weight with slice e of a stacked tensor selected.
  MlxWeight slice(int64_t e) const {
    if (!stacked()) fail(weight.name, ": slice ", e, " of a 2-D MLX weight (only [E, out, ..] tensors have slices)");
    if (e < 0 || e >= weight.shape[0])
      fail(weight.name, ": slice ", e, " outside [0, ", weight.shape[0], ") of ", shape_str(weight.shape));
    MlxWeight w = *this;
    w.expert = e;
    return w;
  }

  // Rows [r0, r1) of W = [out, in] (of the selected slice) into dst[(r1-r0) * in].
  template <class T>
  void decode_rows(int64_t r0, int64_t r1, T* dst) const {
    using namespace quant_detail;
    if (stacked() && expert < 0)
      fail(weight.name, ": stacked MLX weight ", shape_str(weight.shape), " needs a slice (expert) to decode");
    const int64_t n_out = out(), n_in = in(), pk = packed(), ng = n_in / group_size;
    if (r0 < 0 || r1 > n_out || r0 > r1)
      fail(weight.name, ": decode_rows [", r0, ", ", r1, ") outside [0, ", n_out, ")");
    const int64_t base = stacked() ? expert * n_out : 0;
    const std::size_t ses = dtype_size(scales.dtype);
    const uint32_t mask = (uint32_t(1) << bits) - 1u;
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* wrow = weight.data + std::size_t((base + r) * pk) * 4;
      const uint8_t* srow = scales.data + std::size_t((base + r) * ng) * ses;
      const uint8_t* brow = biases.data + std::size_t((base + r) * ng) * ses;
      T* out_row = dst + (r - r0) * n_in;
      for (int64_t g = 0; g < ng; ++g) {
        const float s = load_scale(srow + std::size_t(g) * ses, scales.dtype);
        const float b = load_scale(brow + std::size_t(g) * ses, scales.dtype);
        for (int64_t k = g * group_size; k < (g + 1) * group_size; ++k) {
          const int64_t bit = k * bits, word = bit >> 5, sh = bit & 31;
          uint64_t v = load_u32(wrow + std::size_t(word) * 4);
          if (sh + bits > 32) v |= uint64_t(load_u32(wrow + std::size_t(word + 1) * 4)) << 32;
          const uint32_t q = uint32_t(v >> sh) & mask;
          if (round_to_storage) {
            // mx.dequantize (CPU): multiply(w, scales) then add(biases), each an op in the
            // scales' dtype = float arithmetic rounded to that dtype. q*s is exact in double.
            const float p = round_to(float(double(q) * double(s)), scales.dtype);
            out_row[k] = T(round_to(p + b, scales.dtype));
          } else {
            out_row[k] = T(s) * T(q) + T(b);
          }
        }
      }
    }
  }
};

// ===========================================================================================
// Config: which format a checkpoint uses and how each module is quantized
// ===========================================================================================

enum class QuantFormat { None, Fp8, Awq, Mlx };

struct QuantParams {
  QuantFormat format = QuantFormat::None;
  int64_t bits = 0, group_size = 0;
  nlohmann::json config;  // the "quantization_config" (AWQ/FP8) or "quantization" (MLX) object
};

// Reads config.json's quantization keys:
//  * MLX (mlx-lm): "quantization": {"group_size", "bits", ["mode": "affine"], per-module
//    entries}; mlx-lm also mirrors it as "quantization_config" (no quant_method).
//  * AWQ (AutoAWQ): "quantization_config": {"quant_method": "awq", "bits", "group_size",
//    "zero_point", "version": "gemm", "modules_to_not_convert"}.
//  * FP8: "quantization_config": {"quant_method": "fp8", ...} (handled by weights.hpp).
inline QuantParams quant_params(const nlohmann::json& config, const std::string& where = "config.json") {
  QuantParams p;
  auto int_field = [&](const nlohmann::json& o, const char* key, const std::string& obj) -> int64_t {
    if (!o.contains(key) || !o[key].is_number_integer())
      fail(where, ": '", obj, ".", key, "' must be an integer");
    return o[key].get<int64_t>();
  };
  if (config.contains("quantization") && !config["quantization"].is_null()) {
    const auto& q = config["quantization"];
    if (!q.is_object()) fail(where, ": 'quantization' must be an object");
    if (q.contains("mode") && q["mode"] != "affine")
      fail(where, ": 'quantization.mode' = ", q["mode"].dump(), " is not supported (only \"affine\")");
    p.format = QuantFormat::Mlx;
    p.bits = int_field(q, "bits", "quantization");
    p.group_size = int_field(q, "group_size", "quantization");
    if (!mlx_bits_supported(p.bits))
      fail(where, ": 'quantization.bits' = ", p.bits, " is not supported (4, 5 or 8)");
    p.config = q;
    return p;
  }
  if (config.contains("quantization_config") && config["quantization_config"].is_object()) {
    const auto& q = config["quantization_config"];
    const std::string m = q.value("quant_method", std::string());
    if (m == "fp8") {
      p.format = QuantFormat::Fp8;
      p.config = q;
      return p;
    }
    if (m == "awq") {
      p.format = QuantFormat::Awq;
      p.bits = int_field(q, "bits", "quantization_config");
      p.group_size = int_field(q, "group_size", "quantization_config");
      if (p.bits != 4) fail(where, ": 'quantization_config.bits' = ", p.bits, " is not supported for AWQ (only 4)");
      const std::string v = q.value("version", std::string("gemm"));
      if (v != "gemm" && v != "GEMM")
        fail(where, ": 'quantization_config.version' = \"", v, "\" is not supported (only \"gemm\")");
      if (q.contains("zero_point") && q["zero_point"] != true)
        fail(where, ": 'quantization_config.zero_point' must be true (symmetric AWQ is not supported)");
      p.config = q;
      return p;
    }
    if (!m.empty()) fail(where, ": 'quantization_config.quant_method' = \"", m, "\" is not supported");
  }
  return p;
}

// AWQ: is module `prefix` (e.g. "model.layers.3.mlp.gate") left unquantized by
// modules_to_not_convert? Substring match, as vLLM/SGLang's is_layer_skipped_awq and AutoAWQ's
// exclude_layers_to_not_quantize do. (Presence of "<prefix>.qweight" is the ground truth.)
inline bool awq_module_skipped(const QuantParams& p, const std::string& prefix) {
  if (!p.config.contains("modules_to_not_convert") || !p.config["modules_to_not_convert"].is_array())
    return false;
  for (const auto& m : p.config["modules_to_not_convert"])
    if (m.is_string() && prefix.find(m.get<std::string>()) != std::string::npos) return true;
  return false;
}

// MLX: how mlx-lm's load_model decides a module (path without ".weight", e.g. "lm_head",
// "model.layers.3.mlp.switch_mlp.up_proj") is quantized: a per-module entry in
// "quantization" wins (false -> not quantized, object -> its bits/group_size); otherwise the
// module is quantized with the global parameters iff "<path>.scales" exists.
struct MlxModuleQuant {
  bool quantized = false;
  int64_t bits = 0, group_size = 0;
};

inline MlxModuleQuant mlx_module_quant(const QuantParams& p, const std::string& path, bool has_scales,
                                       const std::string& where = "config.json") {
  MlxModuleQuant r;
  if (p.config.contains(path)) {
    const auto& e = p.config[path];
    if (e.is_boolean()) {
      r.quantized = e.get<bool>();
      if (r.quantized) { r.bits = p.bits; r.group_size = p.group_size; }
    } else if (e.is_object()) {
      if (e.contains("mode") && e["mode"] != "affine")
        fail(where, ": 'quantization.", path, ".mode' = ", e["mode"].dump(), " is not supported");
      if (!e.contains("bits") || !e["bits"].is_number_integer() || !e.contains("group_size") ||
          !e["group_size"].is_number_integer())
        fail(where, ": 'quantization.", path, "' must have integer 'bits' and 'group_size'");
      r.quantized = true;
      r.bits = e["bits"].get<int64_t>();
      r.group_size = e["group_size"].get<int64_t>();
    } else {
      fail(where, ": 'quantization.", path, "' must be false or an object");
    }
  } else if (has_scales) {
    r.quantized = true;
    r.bits = p.bits;
    r.group_size = p.group_size;
  }
  if (r.quantized && r.bits && !mlx_bits_supported(r.bits))
    fail(where, ": module '", path, "' is quantized with ", r.bits, " bits (supported: 4, 5, 8)");
  return r;
}

}  // namespace dsv3
