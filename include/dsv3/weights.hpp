// dsv3/weights.hpp — the model's tensors, bound by their HF checkpoint names.
//
// Weights stay where the checkpoint's mmap put them, in their stored dtype.
// A `Linear` is a [out, in] matrix (PyTorch nn.Linear convention) plus, for
// FP8 e4m3fn storage, its `weight_scale_inv` blocks; `decode_rows` turns a
// band of rows into the compute scalar when the matmul needs them, so the
// model is never materialised in f32 (docs/semantics.md §2.1, §9.2).
//
// The list of tensors lives in one place, `ModelWeights::bind`, which checks
// each one's presence, shape and dtype and names the first that is wrong.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config.hpp"
#include "formats/dtype.hpp"
#include "formats/quant.hpp"
#include "formats/safetensors.hpp"

namespace dsv3 {

// All 256 e4m3fn codes as floats (exact), for table decoding.
inline const float* fp8_e4m3_table() {
  static const auto t = [] {
    std::array<float, 256> a{};
    for (int b = 0; b < 256; ++b) a[std::size_t(b)] = fp8_e4m3_to_f32(uint8_t(b));
    return a;
  }();
  return t.data();
}

// The same values as the table, computed without one (so the loop
// vectorises): normal codes move their exponent and mantissa bits into an
// f32, subnormals are m·2^-9, 0x7f/0xff are NaN. Bit-identical for all 256
// codes (tests/test_formats.cpp).
inline float fp8_e4m3_to_f32_bits(uint8_t b) {
  auto as_f32 = [](uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; };
  auto as_u32 = [](float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; };
  const uint32_t em = b & 0x7fu;
  const float x = as_f32((em << 20) + (120u << 23));  // normal: 2^(e-7) * (1 + m/8)
  const float sub = (x - 0x1p-7f) * 2.0f;            // e = 0: m * 2^-9 (exact)
  const uint32_t normal = 0u - uint32_t(em >= 8), nan = 0u - uint32_t(em == 0x7fu);  // masks, no branches
  const uint32_t mag = (as_u32(x) & normal) | (as_u32(sub) & ~normal);
  return as_f32((0x7fc00000u & nan) | ((mag | (uint32_t(b & 0x80u) << 24)) & ~nan));
}

// dst[i] = fp8(src[i]) * s for one block-row stretch of an FP8 weight row:
// decode and scale in one pass, compiled for AVX-512, AVX2 and baseline.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
[[maybe_unused]] static void fp8_scaled_to_f32(const uint8_t* src, int64_t n, float s, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp8_e4m3_to_f32_bits(src[i]) * s;
}

// Converts `n` stored elements starting at `src` to T.
template <class T>
inline void decode_elements(const uint8_t* src, DType dt, int64_t n, T* dst) {
  switch (dt) {
    case DType::F32:
      for (int64_t i = 0; i < n; ++i) { float f; std::memcpy(&f, src + 4 * i, 4); dst[i] = T(f); }
      break;
    case DType::BF16:  // (src and dst never overlap: ivdep lets the loop vectorise)
#pragma GCC ivdep
      for (int64_t i = 0; i < n; ++i) { uint16_t h; std::memcpy(&h, src + 2 * i, 2); dst[i] = T(bf16_to_f32(h)); }
      break;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) { uint16_t h; std::memcpy(&h, src + 2 * i, 2); dst[i] = T(f16_to_f32(h)); }
      break;
    case DType::F8_E4M3: {
      const float* lut = fp8_e4m3_table();
      for (int64_t i = 0; i < n; ++i) dst[i] = T(lut[src[i]]);
      break;
    }
    default:
      for (int64_t i = 0; i < n; ++i) dst[i] = T(load_as_double(src + dtype_size(dt) * i, dt));
  }
}

// A 1-D tensor (norm weight, router bias) decoded to T.
template <class T>
inline std::vector<T> decode_vector(const TensorView& t) {
  std::vector<T> v(static_cast<std::size_t>(t.numel()));
  decode_elements(t.data, t.dtype, t.numel(), v.data());
  return v;
}

struct Linear {
  TensorView weight;                     // [out, in]; for AWQ/MLX: the packed tensor
  std::optional<TensorView> scale_inv;   // FP8 only: [ceil(out/br), ceil(in/bc)] F32
  int64_t block_rows = 128, block_cols = 128;
  // Integer-quantized formats (quant.hpp): AWQ int4 (AutoAWQ GEMM packing) or
  // MLX affine 4/5/8-bit; decoded group by group when used.
  std::shared_ptr<const AwqWeight> awq;
  std::shared_ptr<const MlxWeight> mlx;
  // mlx-lm's newer conversions split kv_b_proj into per-head embed_q
  // [H, kv_lora, nope] (= W_UKᵀ) and unembed_out [H, v, kv_lora] (= W_UV):
  // rows are reassembled in kv_b_proj order.
  std::shared_ptr<const MlxWeight> embed_q, unembed_out;
  int64_t rows_ = -1, cols_ = -1;        // logical [out, in] when `weight` is packed

  int64_t out() const { return rows_ >= 0 ? rows_ : weight.shape[0]; }
  int64_t in() const { return cols_ >= 0 ? cols_ : weight.shape[1]; }
  bool is_fp8() const { return weight.dtype == DType::F8_E4M3 && !awq && !mlx && !embed_q; }
  bool is_dense() const { return !scale_inv && !awq && !mlx && !embed_q; }
  const std::string& name() const { return weight.name; }
  std::string format() const {
    if (awq) return awq_label(awq->group_size);
    if (mlx) return mlx_label(mlx->bits, mlx->group_size);
    if (embed_q) return mlx_label(embed_q->bits, embed_q->group_size) + " (embed_q/unembed_out)";
    if (scale_inv) return "FP8 e4m3 " + std::to_string(block_rows) + "x" + std::to_string(block_cols);
    return dtype_name(weight.dtype);
  }

  // Rows [r0, r1) as T, row-major into dst[(r1-r0) * in]. FP8:
  // W[i,j] = fp8(Wq[i,j]) * scale_inv[i / br, j / bc] — a multiply despite the
  // name (OFF kernel.py weight_dequant_kernel); partial edge blocks use the
  // same block's scale.
  template <class T>
  void decode_rows(int64_t r0, int64_t r1, T* dst) const {
    if (awq) return awq->decode_rows(r0, r1, dst);
    if (mlx) return mlx->decode_rows(r0, r1, dst);
    if (embed_q) return decode_kvb_rows(r0, r1, dst);
    const int64_t n_in = in();
    const std::size_t es = dtype_size(weight.dtype);
    for (int64_t r = r0; r < r1; ++r) {
      T* row = dst + (r - r0) * n_in;
      const uint8_t* src = weight.data + std::size_t(r * n_in) * es;
      if (!scale_inv) {
        decode_elements(src, weight.dtype, n_in, row);
        continue;
      }
      const int64_t sc = scale_inv->shape[1], br = r / block_rows;
      for (int64_t cb = 0; cb < sc; ++cb) {
        const int64_t c0 = cb * block_cols, c1 = std::min(n_in, c0 + block_cols);
        const T s = T(scale_inv->at(br * sc + cb));
        if constexpr (std::is_same_v<T, float>)
          if (weight.dtype == DType::F8_E4M3) {  // decode and scale in one vectorised pass
            fp8_scaled_to_f32(src + c0, c1 - c0, s, row + c0);
            continue;
          }
        decode_elements(src + std::size_t(c0) * es, weight.dtype, c1 - c0, row + c0);
        for (int64_t c = c0; c < c1; ++c) row[c] *= s;
      }
    }
  }

 private:
  // kv_b_proj row h*(dn+dv) + j is column j of embed_q[h] (j < dn), else row
  // j - dn of unembed_out[h].
  template <class T>
  void decode_kvb_rows(int64_t r0, int64_t r1, T* dst) const {
    const int64_t r = in(), dn = embed_q->out() == r ? embed_q->in() : 0, dv = unembed_out->out();
    const int64_t per = dn + dv;
    std::vector<T> eq(static_cast<std::size_t>(r * dn)), uo(static_cast<std::size_t>(dv * r));
    int64_t cur = -1;
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t h = row / per, j = row % per;
      if (h != cur) {
        embed_q->slice(h).decode_rows(0, r, eq.data());      // [r, dn]
        unembed_out->slice(h).decode_rows(0, dv, uo.data());  // [dv, r]
        cur = h;
      }
      T* out = dst + (row - r0) * r;
      if (j < dn)
        for (int64_t c = 0; c < r; ++c) out[c] = eq[std::size_t(c * dn + j)];
      else
        std::copy_n(uo.data() + (j - dn) * r, r, out);
    }
  }
};

struct MLPWeights {          // SwiGLU: down(silu(gate(x)) * up(x))
  Linear gate_proj, up_proj, down_proj;
};

struct GateWeights {         // the MoE router
  TensorView weight;                          // [n_routed_experts, hidden]
  std::optional<TensorView> e_score_correction_bias;  // [n_routed_experts], F32 in V3
};

struct MoEWeights {
  GateWeights gate;
  std::vector<MLPWeights> experts;            // n_routed_experts
  std::optional<MLPWeights> shared_experts;   // width moe_intermediate * n_shared_experts
};

struct AttentionWeights {    // MLA (docs/semantics.md §5)
  std::optional<Linear> q_proj;               // when q_lora_rank is null
  std::optional<Linear> q_a_proj;             // [q_lora_rank, hidden]
  std::optional<TensorView> q_a_layernorm;    // [q_lora_rank]
  std::optional<Linear> q_b_proj;             // [H * qk_head_dim, q_lora_rank]
  Linear kv_a_proj_with_mqa;                  // [kv_lora_rank + qk_rope_head_dim, hidden]
  TensorView kv_a_layernorm;                  // [kv_lora_rank]
  Linear kv_b_proj;                           // [H * (qk_nope + v_head), kv_lora_rank]
  Linear o_proj;                              // [hidden, H * v_head]
};

struct LayerWeights {
  TensorView input_layernorm;                 // [hidden]
  AttentionWeights self_attn;
  TensorView post_attention_layernorm;        // [hidden]
  std::optional<MLPWeights> mlp;              // dense layers
  std::optional<MoEWeights> moe;              // MoE layers (HF prefix `mlp.` too)
};

// Multi-token prediction module (docs/semantics.md §10), stored as layer
// num_hidden_layers + j: its own copies of the embedding and head, two norms,
// the [hidden, 2·hidden] projection, and a full MoE decoder block.
struct MTPWeights {
  Linear embed_tokens;                        // [vocab, hidden] (copy of the main one)
  TensorView enorm, hnorm;                    // [hidden]
  Linear eh_proj;                             // [hidden, 2·hidden]; BF16 in the FP8 release
  LayerWeights block;                         // MLA + MoE
  TensorView shared_head_norm;                // [hidden]
  Linear shared_head_head;                    // [vocab, hidden] (copy of lm_head)
};

struct ModelWeights {
  Linear embed_tokens;                        // [vocab, hidden]; rows looked up (MLX quantizes it)
  std::vector<LayerWeights> layers;
  TensorView norm;                            // [hidden]
  Linear lm_head;                             // [vocab, hidden]
  std::vector<MTPWeights> mtp;                // empty unless the checkpoint has them

  static ModelWeights bind(const Checkpoint& ck, const Config& cfg);
  // Name of the tensor that marks an MTP layer as present.
  static std::string mtp_marker(const Config& c, int64_t j = 0) {
    return "model.layers." + std::to_string(c.num_hidden_layers + j) + ".eh_proj.weight";
  }
};

// ---------------------------------------------------------------------------
// The checkpoint's tensor list as the config implies it (HF names, shapes).
// `make-model` writes exactly these and `inspect` checks a directory against
// them. Linear entries name the module (".weight" / ".weight_scale_inv" are
// added by the format).
struct TensorSpec {
  enum Kind { Embed, Norm, Linear, Router, RouterBias, Head };
  std::string name;
  std::vector<int64_t> shape;
  Kind kind;
  int64_t layer = -1;   // -1: global
  int64_t expert = -1;  // routed expert index, or -1
  std::string copy_of;  // make-model: same values as this tensor (MTP's embedding/head)
  bool keep_bf16 = false;  // stays BF16 in FP8 checkpoints (MTP eh_proj)

  TensorSpec(std::string n, std::vector<int64_t> s, Kind k, int64_t l = -1, int64_t e = -1,
             std::string copy = "", bool bf16 = false)
      : name(std::move(n)), shape(std::move(s)), kind(k), layer(l), expert(e),
        copy_of(std::move(copy)), keep_bf16(bf16) {}
};

inline std::vector<TensorSpec> expected_tensors(const Config& c, bool with_mtp = false) {
  std::vector<TensorSpec> v;
  const int64_t D = c.hidden_size, H = c.num_attention_heads;
  v.push_back({"model.embed_tokens.weight", {c.vocab_size, D}, TensorSpec::Embed});
  auto layer = [&](int64_t L, const std::string& p, bool moe) {
    auto lin = [&](const std::string& n, int64_t o, int64_t i, int64_t e = -1) {
      v.push_back({p + n, {o, i}, TensorSpec::Linear, L, e});
    };
    auto mlp = [&](const std::string& n, int64_t I, int64_t e = -1) {
      lin(n + ".gate_proj", I, D, e);
      lin(n + ".up_proj", I, D, e);
      lin(n + ".down_proj", D, I, e);
    };
    v.push_back({p + "input_layernorm.weight", {D}, TensorSpec::Norm, L});
    if (c.q_lora_rank) {
      lin("self_attn.q_a_proj", *c.q_lora_rank, D);
      v.push_back({p + "self_attn.q_a_layernorm.weight", {*c.q_lora_rank}, TensorSpec::Norm, L});
      lin("self_attn.q_b_proj", H * c.qk_head_dim(), *c.q_lora_rank);
    } else {
      lin("self_attn.q_proj", H * c.qk_head_dim(), D);
    }
    lin("self_attn.kv_a_proj_with_mqa", c.kv_cache_width(), D);
    v.push_back({p + "self_attn.kv_a_layernorm.weight", {c.kv_lora_rank}, TensorSpec::Norm, L});
    lin("self_attn.kv_b_proj", H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
    lin("self_attn.o_proj", D, H * c.v_head_dim);
    v.push_back({p + "post_attention_layernorm.weight", {D}, TensorSpec::Norm, L});
    if (!moe) {
      mlp("mlp", c.intermediate_size);
    } else {
      v.push_back({p + "mlp.gate.weight", {c.n_routed_experts, D}, TensorSpec::Router, L});
      v.push_back({p + "mlp.gate.e_score_correction_bias", {c.n_routed_experts}, TensorSpec::RouterBias, L});
      for (int64_t e = 0; e < c.n_routed_experts; ++e)
        mlp("mlp.experts." + std::to_string(e), c.moe_intermediate_size, e);
      if (c.n_shared_experts > 0) mlp("mlp.shared_experts", c.shared_intermediate());
    }
  };
  for (int64_t L = 0; L < c.num_hidden_layers; ++L)
    layer(L, "model.layers." + std::to_string(L) + ".", c.is_moe_layer(L));
  v.push_back({"model.norm.weight", {D}, TensorSpec::Norm});
  v.push_back({"lm_head.weight", {c.vocab_size, D}, TensorSpec::Head});
  if (with_mtp) {
    for (int64_t j = 0; j < c.num_nextn_predict_layers; ++j) {
      const int64_t L = c.num_hidden_layers + j;
      const std::string p = "model.layers." + std::to_string(L) + ".";
      v.push_back({p + "embed_tokens.weight", {c.vocab_size, D}, TensorSpec::Embed, L, -1, "model.embed_tokens.weight"});
      v.push_back({p + "enorm.weight", {D}, TensorSpec::Norm, L});
      v.push_back({p + "hnorm.weight", {D}, TensorSpec::Norm, L});
      v.push_back({p + "eh_proj", {D, 2 * D}, TensorSpec::Linear, L, -1, "", true});
      layer(L, p, true);
      v.push_back({p + "shared_head.norm.weight", {D}, TensorSpec::Norm, L});
      v.push_back({p + "shared_head.head.weight", {c.vocab_size, D}, TensorSpec::Head, L, -1, "lm_head.weight"});
    }
  }
  return v;
}

// Parameter counts the config implies, from the same table: the report's
// "671B total, 37B activated per token" for DeepSeek-V3. Active: every
// tensor a token's forward pass reads (its embedding row counted as the whole
// table, as the report's figure does), with K_r = num_experts_per_tok routed
// experts per MoE layer. The MTP module apart (its embedding and head copies
// included, as the checkpoint stores them).
struct ParameterCounts {
  uint64_t total = 0, active = 0;         // main model
  uint64_t embedding = 0;                 // embed_tokens + lm_head (in both figures above)
  uint64_t mtp = 0, mtp_active = 0;       // MTP module(s)
};

inline ParameterCounts parameter_counts(const Config& c) {
  ParameterCounts p;
  for (const TensorSpec& s : expected_tensors(c, true)) {
    uint64_t n = 1;
    for (int64_t d : s.shape) n *= uint64_t(d);
    const bool mtp = s.layer >= c.num_hidden_layers;
    const bool active = s.expert < 0 || s.expert < c.num_experts_per_tok;  // any K_r experts' worth
    (mtp ? p.mtp : p.total) += n;
    if (active) (mtp ? p.mtp_active : p.active) += n;
    if (!mtp && (s.kind == TensorSpec::Embed || s.kind == TensorSpec::Head)) p.embedding += n;
  }
  return p;
}

// ---------------------------------------------------------------------------
namespace detail {

inline const TensorView& need(const Checkpoint& ck, const std::string& name,
                              const std::vector<int64_t>& shape, bool float_only = true) {
  if (!ck.has(name))
    fail(ck.dir(), ": missing tensor '", name, "' (expected shape ", shape_str(shape), ")");
  const TensorView& t = ck.get(name);
  if (t.shape != shape)
    fail(t.file, ": tensor '", name, "' has shape ", shape_str(t.shape), ", expected ",
         shape_str(shape));
  if (float_only && !(t.dtype == DType::F32 || t.dtype == DType::BF16 || t.dtype == DType::F16 ||
                      t.dtype == DType::F64))
    fail(t.file, ": tensor '", name, "' has dtype ", dtype_name(t.dtype),
         ", expected F32, BF16 or F16");
  return t;
}

// A quantized (AWQ / MLX) module at `prefix`, when the checkpoint stores it so.
inline bool bind_quantized(const Checkpoint& ck, const QuantParams& qp, const std::string& prefix, int64_t out,
                           int64_t in, Linear& l) {
  if (qp.format == QuantFormat::Awq && ck.has(prefix + ".qweight")) {
    for (const char* part : {".qzeros", ".scales"})
      if (!ck.has(prefix + part)) fail(ck.dir(), ": missing tensor '", prefix, part, "' (AWQ module '", prefix, "')");
    l.awq = std::make_shared<AwqWeight>(AwqWeight::bind(ck.get(prefix + ".qweight"), ck.get(prefix + ".qzeros"),
                                                        ck.get(prefix + ".scales"), qp.bits, qp.group_size, out, in));
    l.weight = ck.get(prefix + ".qweight");
  } else if (qp.format == QuantFormat::Mlx) {
    const MlxModuleQuant mq = mlx_module_quant(qp, prefix, ck.has(prefix + ".scales"));
    if (!mq.quantized) return false;
    for (const char* part : {".weight", ".scales", ".biases"})
      if (!ck.has(prefix + part)) fail(ck.dir(), ": missing tensor '", prefix, part, "' (MLX quantized module '", prefix, "')");
    auto w = MlxWeight::bind(ck.get(prefix + ".weight"), ck.get(prefix + ".scales"), ck.get(prefix + ".biases"),
                             mq.bits, mq.group_size, -1, out, in);
    w.round_to_storage = false;  // mlx's quantized_matmul uses s·q + b unrounded
    l.mlx = std::make_shared<MlxWeight>(w);
    l.weight = ck.get(prefix + ".weight");
  } else {
    return false;
  }
  l.rows_ = out;
  l.cols_ = in;
  return true;
}

inline Linear need_linear(const Checkpoint& ck, const Config& cfg, const std::string& prefix,
                          int64_t out, int64_t in) {
  Linear ql;
  if (cfg.quantization_config && cfg.quantization_config->quant_method != "fp8" &&
      bind_quantized(ck, quant_params(cfg.raw), prefix, out, in, ql))
    return ql;
  const std::string wn = prefix + ".weight";
  if (!ck.has(wn))
    fail(ck.dir(), ": missing tensor '", wn, "' (expected shape ", shape_str({out, in}), ")");
  const TensorView& w = ck.get(wn);
  if (w.shape != std::vector<int64_t>{out, in})
    fail(w.file, ": tensor '", wn, "' has shape ", shape_str(w.shape), ", expected ",
         shape_str({out, in}));
  Linear l;
  l.weight = w;
  if (w.dtype == DType::F8_E4M3) {
    if (cfg.quantization_config) {
      l.block_rows = cfg.quantization_config->block_rows;
      l.block_cols = cfg.quantization_config->block_cols;
    }
    const std::string sn = prefix + ".weight_scale_inv";
    const std::vector<int64_t> ss = {(out + l.block_rows - 1) / l.block_rows,
                                     (in + l.block_cols - 1) / l.block_cols};
    if (!ck.has(sn))
      fail(ck.dir(), ": missing tensor '", sn, "' (FP8 weight '", wn, "' needs its ",
           shape_str(ss), " F32 block scales)");
    const TensorView& s = ck.get(sn);
    if (s.shape != ss)
      fail(s.file, ": tensor '", sn, "' has shape ", shape_str(s.shape), ", expected ",
           shape_str(ss), " (", l.block_rows, "x", l.block_cols, " blocks of ", shape_str({out, in}), ")");
    if (s.dtype != DType::F32 && s.dtype != DType::BF16)
      fail(s.file, ": tensor '", sn, "' has dtype ", dtype_name(s.dtype), ", expected F32");
    l.scale_inv = s;
  } else if (!(w.dtype == DType::F32 || w.dtype == DType::BF16 || w.dtype == DType::F16 ||
               w.dtype == DType::F64)) {
    fail(w.file, ": tensor '", wn, "' has dtype ", dtype_name(w.dtype),
         ", expected F32, BF16, F16 or F8_E4M3");
  }
  return l;
}

inline MLPWeights need_mlp(const Checkpoint& ck, const Config& cfg, const std::string& prefix,
                           int64_t hidden, int64_t inter) {
  return {need_linear(ck, cfg, prefix + ".gate_proj", inter, hidden),
          need_linear(ck, cfg, prefix + ".up_proj", inter, hidden),
          need_linear(ck, cfg, prefix + ".down_proj", hidden, inter)};
}

}  // namespace detail

namespace detail {

// One decoder block at `prefix` ("model.layers.L."); MoE when `moe`.
inline LayerWeights need_layer(const Checkpoint& ck, const Config& c, const std::string& p, bool moe) {
  const int64_t D = c.hidden_size, H = c.num_attention_heads;
  LayerWeights lw;
  lw.input_layernorm = need(ck, p + "input_layernorm.weight", {D});
  lw.post_attention_layernorm = need(ck, p + "post_attention_layernorm.weight", {D});
  AttentionWeights& a = lw.self_attn;
  if (c.q_lora_rank) {
    a.q_a_proj = need_linear(ck, c, p + "self_attn.q_a_proj", *c.q_lora_rank, D);
    a.q_a_layernorm = need(ck, p + "self_attn.q_a_layernorm.weight", {*c.q_lora_rank});
    a.q_b_proj = need_linear(ck, c, p + "self_attn.q_b_proj", H * c.qk_head_dim(), *c.q_lora_rank);
  } else {
    a.q_proj = need_linear(ck, c, p + "self_attn.q_proj", H * c.qk_head_dim(), D);
  }
  a.kv_a_proj_with_mqa = need_linear(ck, c, p + "self_attn.kv_a_proj_with_mqa", c.kv_cache_width(), D);
  a.kv_a_layernorm = need(ck, p + "self_attn.kv_a_layernorm.weight", {c.kv_lora_rank});
  if (ck.has(p + "self_attn.embed_q.weight")) {  // newer mlx-lm conversions
    const QuantParams qp = quant_params(c.raw);
    Linear eq, uo;
    if (!bind_quantized(ck, qp, p + "self_attn.embed_q", c.kv_lora_rank, c.qk_nope_head_dim, eq) ||
        !bind_quantized(ck, qp, p + "self_attn.unembed_out", c.v_head_dim, c.kv_lora_rank, uo))
      fail(ck.dir(), ": '", p, "self_attn.embed_q' / 'unembed_out' must be MLX-quantized");
    if (eq.mlx->num_slices() != H || uo.mlx->num_slices() != H)
      fail(ck.dir(), ": '", p, "self_attn.embed_q' / 'unembed_out' must have ", H, " heads");
    a.kv_b_proj.weight = ck.get(p + "self_attn.embed_q.weight");
    a.kv_b_proj.embed_q = eq.mlx;
    a.kv_b_proj.unembed_out = uo.mlx;
    a.kv_b_proj.rows_ = H * (c.qk_nope_head_dim + c.v_head_dim);
    a.kv_b_proj.cols_ = c.kv_lora_rank;
  } else {
    a.kv_b_proj = need_linear(ck, c, p + "self_attn.kv_b_proj",
                              H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
  }
  a.o_proj = need_linear(ck, c, p + "self_attn.o_proj", D, H * c.v_head_dim);
  if (!moe) {
    lw.mlp = need_mlp(ck, c, p + "mlp", D, c.intermediate_size);
    return lw;
  }
  MoEWeights m;
  m.gate.weight = need(ck, p + "mlp.gate.weight", {c.n_routed_experts, D});
  // The bias is what makes the routing "noaux_tc"; HF always has one.
  m.gate.e_score_correction_bias = need(ck, p + "mlp.gate.e_score_correction_bias", {c.n_routed_experts});
  m.experts.reserve(static_cast<std::size_t>(c.n_routed_experts));
  if (ck.has(p + "mlp.switch_mlp.gate_proj.weight")) {
    // mlx-lm stacks the experts: mlp.switch_mlp.{gate,up,down}_proj [E, out, in]
    const QuantParams qp = quant_params(c.raw);
    Linear st[3];
    const char* names[3] = {"gate_proj", "up_proj", "down_proj"};
    const int64_t outs[3] = {c.moe_intermediate_size, c.moe_intermediate_size, D};
    const int64_t ins[3] = {D, D, c.moe_intermediate_size};
    for (int k = 0; k < 3; ++k) {
      if (!bind_quantized(ck, qp, p + "mlp.switch_mlp." + names[k], outs[k], ins[k], st[k]))
        fail(ck.dir(), ": '", p, "mlp.switch_mlp.", names[k], "' must be MLX-quantized (unquantized stacked experts are not supported)");
      if (st[k].mlx->num_slices() != c.n_routed_experts)
        fail(ck.dir(), ": '", p, "mlp.switch_mlp.", names[k], ".weight' stacks ", st[k].mlx->num_slices(),
             " experts, expected n_routed_experts = ", c.n_routed_experts);
    }
    for (int64_t e = 0; e < c.n_routed_experts; ++e) {
      MLPWeights ex{st[0], st[1], st[2]};
      for (Linear* l : {&ex.gate_proj, &ex.up_proj, &ex.down_proj})
        l->mlx = std::make_shared<MlxWeight>(l->mlx->slice(e));
      m.experts.push_back(std::move(ex));
    }
  } else {
    for (int64_t e = 0; e < c.n_routed_experts; ++e)
      m.experts.push_back(need_mlp(ck, c, p + "mlp.experts." + std::to_string(e), D, c.moe_intermediate_size));
  }
  if (c.n_shared_experts > 0) m.shared_experts = need_mlp(ck, c, p + "mlp.shared_experts", D, c.shared_intermediate());
  lw.moe = std::move(m);
  return lw;
}

}  // namespace detail

inline ModelWeights ModelWeights::bind(const Checkpoint& ck, const Config& c) {
  using detail::need;
  const int64_t D = c.hidden_size;
  ModelWeights m;
  m.embed_tokens = detail::need_linear(ck, c, "model.embed_tokens", c.vocab_size, D);
  m.norm = need(ck, "model.norm.weight", {D});
  m.lm_head = c.tie_word_embeddings && !ck.has("lm_head.weight") && !ck.has("lm_head.qweight")
                  ? m.embed_tokens
                  : detail::need_linear(ck, c, "lm_head", c.vocab_size, D);
  for (int64_t L = 0; L < c.num_hidden_layers; ++L)
    m.layers.push_back(detail::need_layer(ck, c, "model.layers." + std::to_string(L) + ".", c.is_moe_layer(L)));
  // MTP layers: bound when the checkpoint has them (HF/OFF/MLX conversions drop them).
  for (int64_t j = 0; j < c.num_nextn_predict_layers && ck.has(mtp_marker(c, j)); ++j) {
    const std::string p = "model.layers." + std::to_string(c.num_hidden_layers + j) + ".";
    MTPWeights t;
    t.embed_tokens = detail::need_linear(ck, c, p + "embed_tokens", c.vocab_size, D);
    t.enorm = need(ck, p + "enorm.weight", {D});
    t.hnorm = need(ck, p + "hnorm.weight", {D});
    t.eh_proj = detail::need_linear(ck, c, p + "eh_proj", D, 2 * D);
    t.block = detail::need_layer(ck, c, p, true);
    t.shared_head_norm = need(ck, p + "shared_head.norm.weight", {D});
    t.shared_head_head = detail::need_linear(ck, c, p + "shared_head.head", c.vocab_size, D);
    m.mtp.push_back(std::move(t));
  }
  return m;
}

}  // namespace dsv3
