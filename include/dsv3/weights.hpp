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
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <variant>
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

// Whether each group of four rows (rows 4g .. 4g + 3) of an FP8 weight
// holds a NaN code (0x7f / 0xff), learnt the first time a kernel that looks
// for them reads the group (0: not read yet, 1: none, 2: some). The CPU
// backend's decode kernels then leave out their per-code check on groups
// that hold none, as real checkpoints' never do; nothing is read twice. The
// answers belong to the bytes they were learnt from: a copy of a Linear
// given other bytes shares the memo but gets no answers from it (`flags`
// returns null). Thread-safe. Checkpoints are mapped read-only, so their
// bytes never change; code that builds a Linear over a buffer of its own and
// writes NaN codes into it after a forward pass gives it a fresh memo (or
// none: every call then checks).
class Fp8NanMemo {
 public:
  // The flags of `data`'s `groups` groups of rows, zero until learnt; null
  // where this memo was first asked for other bytes.
  std::atomic<uint8_t>* flags(const uint8_t* data, int64_t groups) const {
    std::call_once(made_, [&] {
      flags_.reset(new std::atomic<uint8_t>[std::size_t(groups)]());
      data_ = data, n_ = groups;
    });
    return data_ == data && n_ == groups ? flags_.get() : nullptr;
  }

 private:
  mutable std::once_flag made_;
  mutable std::unique_ptr<std::atomic<uint8_t>[]> flags_;
  mutable const uint8_t* data_ = nullptr;
  mutable int64_t n_ = 0;
};

struct Linear {
  // How the [out, in] matrix is stored: one alternative per format.
  struct Dense {};                             // `weight` is [out, in] F32 / BF16 / F16 / F64
  struct Fp8Blocks {                           // `weight` is [out, in] F8_E4M3:
    TensorView scale_inv;                      //   W = fp8(Wq) · scale_inv[i / br, j / bc], [ceil(out/br), ceil(in/bc)]
    int64_t block_rows = 128, block_cols = 128;  // quantization_config.weight_block_size
    std::shared_ptr<const Fp8NanMemo> nan_memo = std::make_shared<Fp8NanMemo>();  // (above)
  };
  struct Awq { std::shared_ptr<const AwqWeight> q; };   // AutoAWQ GEMM packing (formats/quant.hpp)
  struct Mlx { std::shared_ptr<const MlxWeight> q; };   // MLX affine: a module, or one expert of a stack
  // mlx-lm's newer conversions split kv_b_proj into per-head embed_q
  // [H, kv_lora, nope] (= W_UKᵀ) and unembed_out [H, v, kv_lora] (= W_UV):
  // rows are reassembled in kv_b_proj order. Each half is MLX-quantized, or
  // a float tensor [H, out, in] where mlx-lm left it unquantized (it does so
  // when the input width is not a multiple of the group size).
  struct KvbHalf {
    std::shared_ptr<const MlxWeight> q;  // null: `dense` holds it
    TensorView dense;                    // [H, out, in] F32 / BF16 / F16
    // head h alone as an [out, in] Linear (an MLX slice, or a view into
    // `dense`), made once at load (kvb_heads below): the CPU backend's
    // absorbed decode multiplies by each head every token (without them,
    // it decodes each head's rows instead).
    std::vector<Linear> heads;
    int64_t out() const { return q ? q->out() : dense.shape[1]; }
    int64_t in() const { return q ? q->in() : dense.shape[2]; }
    // rows [r0, r1) of head h, row-major into dst[(r1-r0) * in]
    template <class T>
    void decode_head(int64_t h, int64_t r0, int64_t r1, T* dst) const {
      if (q) return q->slice(h).decode_rows(r0, r1, dst);
      const std::size_t es = dtype_size(dense.dtype);
      decode_elements(dense.data + std::size_t((h * out() + r0) * in()) * es, dense.dtype, (r1 - r0) * in(), dst);
    }
    std::string format() const { return q ? mlx_label(q->bits, q->group_size) : dtype_name(dense.dtype); }
  };
  struct MlxSplitKvb { KvbHalf embed_q, unembed_out; };

  TensorView weight;     // the stored matrix, or the format's main packed tensor (name, dtype)
  std::variant<Dense, Fp8Blocks, Awq, Mlx, MlxSplitKvb> storage;
  int64_t rows_ = -1, cols_ = -1;        // logical [out, in] when `weight` is packed

  int64_t out() const { return rows_ >= 0 ? rows_ : weight.shape[0]; }
  int64_t in() const { return cols_ >= 0 ? cols_ : weight.shape[1]; }
  const std::string& name() const { return weight.name; }
  bool is_dense() const { return std::holds_alternative<Dense>(storage); }
  const Fp8Blocks* fp8() const { return std::get_if<Fp8Blocks>(&storage); }
  bool is_fp8() const { return fp8() != nullptr; }
  const AwqWeight* awq() const {
    const Awq* a = std::get_if<Awq>(&storage);
    return a ? a->q.get() : nullptr;
  }
  const MlxWeight* mlx() const {
    const Mlx* m = std::get_if<Mlx>(&storage);
    return m ? m->q.get() : nullptr;
  }
  std::string format() const {
    if (const AwqWeight* a = awq()) return awq_label(a->group_size);
    if (const MlxWeight* m = mlx()) return mlx_label(m->bits, m->group_size);
    if (const auto* s = std::get_if<MlxSplitKvb>(&storage)) {
      const std::string a = s->embed_q.format(), b = s->unembed_out.format();
      return a == b ? a + " (embed_q/unembed_out)" : "embed_q " + a + ", unembed_out " + b;
    }
    if (const Fp8Blocks* f = fp8()) return "FP8 e4m3 " + std::to_string(f->block_rows) + "x" + std::to_string(f->block_cols);
    return dtype_name(weight.dtype);
  }

  // Rows [r0, r1) as T, row-major into dst[(r1-r0) * in]. FP8:
  // W[i,j] = fp8(Wq[i,j]) * scale_inv[i / br, j / bc] — a multiply despite the
  // name (OFF kernel.py weight_dequant_kernel); partial edge blocks use the
  // same block's scale.
  template <class T>
  void decode_rows(int64_t r0, int64_t r1, T* dst) const {
    if (const AwqWeight* a = awq()) return a->decode_rows(r0, r1, dst);
    if (const MlxWeight* m = mlx()) return m->decode_rows(r0, r1, dst);
    if (const auto* s = std::get_if<MlxSplitKvb>(&storage)) return decode_kvb_rows(*s, r0, r1, dst);
    const int64_t n_in = in();
    const std::size_t es = dtype_size(weight.dtype);
    const Fp8Blocks* f = fp8();
    for (int64_t r = r0; r < r1; ++r) {
      T* row = dst + (r - r0) * n_in;
      const uint8_t* src = weight.data + std::size_t(r * n_in) * es;
      if (!f) {
        decode_elements(src, weight.dtype, n_in, row);
        continue;
      }
      const int64_t sc = f->scale_inv.shape[1], br = r / f->block_rows;
      for (int64_t cb = 0; cb < sc; ++cb) {
        const int64_t c0 = cb * f->block_cols, c1 = std::min(n_in, c0 + f->block_cols);
        const T s = T(f->scale_inv.at(br * sc + cb));
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
  void decode_kvb_rows(const MlxSplitKvb& s, int64_t r0, int64_t r1, T* dst) const {
    const int64_t r = in(), dn = s.embed_q.out() == r ? s.embed_q.in() : 0, dv = s.unembed_out.out();
    const int64_t per = dn + dv;
    std::vector<T> eq(static_cast<std::size_t>(r * dn)), uo(static_cast<std::size_t>(dv * r));
    int64_t cur = -1;
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t h = row / per, j = row % per;
      if (h != cur) {
        s.embed_q.decode_head(h, 0, r, eq.data());      // [r, dn]
        s.unembed_out.decode_head(h, 0, dv, uo.data());  // [dv, r]
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

// Fills half.heads: head h of an [H, out, in] half as a Linear of its own.
inline void kvb_heads(Linear::KvbHalf& half, int64_t H) {
  half.heads.clear();
  for (int64_t h = 0; h < H; ++h) {
    Linear l;
    if (half.q) {
      l.weight = half.q->weight;
      l.storage = Linear::Mlx{std::make_shared<MlxWeight>(half.q->slice(h))};
      l.rows_ = half.out();
      l.cols_ = half.in();
    } else {
      l.weight = half.dense;
      l.weight.shape = {half.out(), half.in()};
      l.weight.data = half.dense.data + std::size_t(h * half.out() * half.in()) * dtype_size(half.dense.dtype);
    }
    half.heads.push_back(std::move(l));
  }
}

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
  std::string symbol;      // the report's name for it (docs/paper-map.md)

  TensorSpec(std::string n, std::vector<int64_t> s, Kind k, int64_t l = -1, int64_t e = -1,
             std::string copy = "", bool bf16 = false)
      : name(std::move(n)), shape(std::move(s)), kind(k), layer(l), expert(e),
        copy_of(std::move(copy)), keep_bf16(bf16) {}
};

inline std::vector<TensorSpec> expected_tensors(const Config& c, bool with_mtp = false) {
  std::vector<TensorSpec> v;
  const int64_t D = c.hidden_size, H = c.num_attention_heads;
  auto sym = [&](const char* s) { v.back().symbol = s; };
  v.push_back({"model.embed_tokens.weight", {c.vocab_size, D}, TensorSpec::Embed});
  sym("Emb");
  auto layer = [&](int64_t L, const std::string& p, bool moe) {
    auto lin = [&](const std::string& n, int64_t o, int64_t i, const char* s, int64_t e = -1) {
      v.push_back({p + n, {o, i}, TensorSpec::Linear, L, e});
      sym(s);
    };
    auto mlp = [&](const std::string& n, int64_t I, const char* which, int64_t e = -1) {
      for (const char* proj : {".gate_proj", ".up_proj", ".down_proj"}) {
        const bool down = proj[1] == 'd';
        lin(n + proj, down ? D : I, down ? I : D, which, e);
      }
    };
    v.push_back({p + "input_layernorm.weight", {D}, TensorSpec::Norm, L});
    sym("RMSNorm before MLA");
    if (c.q_lora_rank) {
      lin("self_attn.q_a_proj", *c.q_lora_rank, D, "W^DQ, eq. (6)");
      v.push_back({p + "self_attn.q_a_layernorm.weight", {*c.q_lora_rank}, TensorSpec::Norm, L});
      sym("RMSNorm of c^Q");
      lin("self_attn.q_b_proj", H * c.qk_head_dim(), *c.q_lora_rank, "W^UQ; W^QR, eqs. (7), (8)");
    } else {
      lin("self_attn.q_proj", H * c.qk_head_dim(), D, "W^Q (no query compression)");
    }
    lin("self_attn.kv_a_proj_with_mqa", c.kv_cache_width(), D, "W^DKV; W^KR, eqs. (1), (3)");
    v.push_back({p + "self_attn.kv_a_layernorm.weight", {c.kv_lora_rank}, TensorSpec::Norm, L});
    sym("RMSNorm of c^KV");
    lin("self_attn.kv_b_proj", H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank, "W^UK; W^UV, eqs. (2), (5)");
    lin("self_attn.o_proj", D, H * c.v_head_dim, "W^O, eq. (11)");
    v.push_back({p + "post_attention_layernorm.weight", {D}, TensorSpec::Norm, L});
    sym("RMSNorm before the FFN");
    if (!moe) {
      mlp("mlp", c.intermediate_size, "dense FFN (SwiGLU)");
    } else {
      v.push_back({p + "mlp.gate.weight", {c.n_routed_experts, D}, TensorSpec::Router, L});
      sym("e_i, eq. (15)");
      v.push_back({p + "mlp.gate.e_score_correction_bias", {c.n_routed_experts}, TensorSpec::RouterBias, L});
      sym("b_i, eq. (16)");
      for (int64_t e = 0; e < c.n_routed_experts; ++e)
        mlp("mlp.experts." + std::to_string(e), c.moe_intermediate_size, "FFN_i^(r), eq. (12)", e);
      if (c.n_shared_experts > 0) mlp("mlp.shared_experts", c.shared_intermediate(), "FFN^(s), eq. (12)");
    }
  };
  for (int64_t L = 0; L < c.num_hidden_layers; ++L)
    layer(L, "model.layers." + std::to_string(L) + ".", c.is_moe_layer(L));
  v.push_back({"model.norm.weight", {D}, TensorSpec::Norm});
  sym("final RMSNorm");
  v.push_back({"lm_head.weight", {c.vocab_size, D}, TensorSpec::Head});
  sym("output head");
  if (with_mtp) {
    for (int64_t j = 0; j < c.num_nextn_predict_layers; ++j) {
      const int64_t L = c.num_hidden_layers + j;
      const std::string p = "model.layers." + std::to_string(L) + ".";
      v.push_back({p + "embed_tokens.weight", {c.vocab_size, D}, TensorSpec::Embed, L, -1, "model.embed_tokens.weight"});
      sym("Emb (MTP's copy), eq. (21)");
      v.push_back({p + "enorm.weight", {D}, TensorSpec::Norm, L});
      sym("RMSNorm of Emb(t_i+k), eq. (21)");
      v.push_back({p + "hnorm.weight", {D}, TensorSpec::Norm, L});
      sym("RMSNorm of h_i, eq. (21)");
      v.push_back({p + "eh_proj", {D, 2 * D}, TensorSpec::Linear, L, -1, "", true});
      sym("M_k, eq. (21)");
      layer(L, p, true);
      v.push_back({p + "shared_head.norm.weight", {D}, TensorSpec::Norm, L});
      sym("OutHead's RMSNorm, eq. (23)");
      v.push_back({p + "shared_head.head.weight", {c.vocab_size, D}, TensorSpec::Head, L, -1, "lm_head.weight"});
      sym("OutHead, eq. (23)");
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

inline bool is_float_dtype(DType t) {
  return t == DType::F32 || t == DType::BF16 || t == DType::F16 || t == DType::F64;
}

inline const TensorView& need(const Checkpoint& ck, const std::string& name,
                              const std::vector<int64_t>& shape, bool float_only = true) {
  if (!ck.has(name))
    fail(ck.dir(), ": missing tensor '", name, "' (expected shape ", shape_str(shape), ")");
  const TensorView& t = ck.get(name);
  if (t.shape != shape)
    fail(t.file, ": tensor '", name, "' has shape ", shape_str(t.shape), ", expected ",
         shape_str(shape));
  if (float_only && !is_float_dtype(t.dtype))
    fail(t.file, ": tensor '", name, "' has dtype ", dtype_name(t.dtype),
         ", expected F32, BF16 or F16");
  return t;
}

}  // namespace detail

// ---------------------------------------------------------------------------
// Storage formats. How a checkpoint stores one linear module of the tensor
// table is decided in one place, `stored_module`: `need_linear` binds what it
// finds, `dsv3 inspect` lists its parts, and make-model writes the same parts
// under the same names (mlx_stack_prefix, kv_b_split).
// dense_stacked: a routed expert's slice of an unquantized mlx-lm stack
// (switch_mlp.*_proj [N_r, out, in] in F32/BF16/F16).
enum class Format { dense, fp8_blocks, awq, mlx, mlx_stacked, mlx_split_kvb, dense_stacked };

// One linear module of the table: its HF prefix (without ".weight"), its
// logical [out, in], and its routed expert index (-1: not an expert).
struct ModuleRef {
  std::string prefix;
  int64_t out = 0, in = 0;
  int64_t expert = -1;
};

// mlx-lm stacks a layer's routed experts: "model.layers.L.mlp.experts.E.up_proj"
// is slice E of "model.layers.L.mlp.switch_mlp.up_proj" [N_r, out, in].
inline std::string mlx_stack_prefix(const std::string& expert_prefix) {
  const std::size_t at = expert_prefix.find(".mlp.experts.");
  return expert_prefix.substr(0, at) + ".mlp.switch_mlp" + expert_prefix.substr(expert_prefix.rfind('.'));
}
// mlx-lm's newer conversions store "…self_attn.kv_b_proj" as two per-head
// modules, "…self_attn.embed_q" and "…self_attn.unembed_out"; "" for any
// other module.
inline std::string kv_b_split(const std::string& prefix, const std::string& part) {
  const std::string kvb = ".kv_b_proj";
  if (prefix.size() < kvb.size() || prefix.compare(prefix.size() - kvb.size(), kvb.size(), kvb) != 0) return "";
  return prefix.substr(0, prefix.size() - kvb.size() + 1) + part;
}

struct StoredModule {
  struct Part {
    std::string name;
    std::vector<int64_t> shape;  // expected; {} for packed parts (checked when bound)
  };
  Format format = Format::dense;
  std::string label;             // how inspect names the format
  std::vector<Part> parts;       // every tensor of the module
};

inline StoredModule stored_module(const Checkpoint& ck, const Config& c, const QuantParams& qp, const ModuleRef& m) {
  const std::string& p = m.prefix;
  auto packed = [](const std::string& base, std::initializer_list<const char*> suffixes) {
    std::vector<StoredModule::Part> v;
    for (const char* s : suffixes) v.push_back({base + s, {}});
    return v;
  };
  auto mlx_of = [&](const std::string& base, bool has_scales) {
    const MlxModuleQuant mq = mlx_module_quant(qp, base, has_scales);
    return mlx_label(mq.bits, mq.group_size);
  };
  if (qp.format == QuantFormat::Awq && ck.has(p + ".qweight"))
    return {Format::awq, awq_label(qp.group_size), packed(p, {".qweight", ".qzeros", ".scales"})};
  if (qp.format == QuantFormat::Mlx) {
    // Binding follows what the checkpoint holds: mlx-lm leaves a module
    // unquantized (plain float weight, no scales) when its input width is not a
    // multiple of the group size, and a per-module entry may say `false`.
    auto quantized = [&](const std::string& base) { return mlx_module_quant(qp, base, ck.has(base + ".scales")).quantized; };
    auto dense_label = [&](const std::string& base) { return std::string(dtype_name(ck.get(base + ".weight").dtype)); };
    const std::string stack = m.expert >= 0 ? mlx_stack_prefix(p) : "";
    if (!stack.empty() && ck.has(stack + ".weight")) {
      if (quantized(stack))
        return {Format::mlx_stacked, mlx_of(stack, true) + " stacked", packed(stack, {".weight", ".scales", ".biases"})};
      return {Format::dense_stacked, dense_label(stack) + " stacked", {{stack + ".weight", {c.n_routed_experts, m.out, m.in}}}};
    }
    const std::string eq = kv_b_split(p, "embed_q"), uo = kv_b_split(p, "unembed_out");
    if (!eq.empty() && !ck.has(p + ".weight") && ck.has(eq + ".weight")) {
      const int64_t H = c.num_attention_heads;
      StoredModule sm{Format::mlx_split_kvb, "", {}};
      std::string labels[2];
      int i = 0;
      for (const auto& [base, shape] : {std::pair{eq, std::vector<int64_t>{H, c.kv_lora_rank, c.qk_nope_head_dim}},
                                        std::pair{uo, std::vector<int64_t>{H, c.v_head_dim, c.kv_lora_rank}}}) {
        if (quantized(base)) {
          for (auto& part : packed(base, {".weight", ".scales", ".biases"})) sm.parts.push_back(part);
          labels[i++] = mlx_of(base, true);
        } else {
          sm.parts.push_back({base + ".weight", shape});
          labels[i++] = ck.has(base + ".weight") ? dense_label(base) : "-";
        }
      }
      sm.label = labels[0] == labels[1] ? labels[0] + " per head" : "embed_q " + labels[0] + ", unembed_out " + labels[1];
      return sm;
    }
    if (mlx_module_quant(qp, p, ck.has(p + ".scales")).quantized)
      return {Format::mlx, mlx_of(p, ck.has(p + ".scales")), packed(p, {".weight", ".scales", ".biases"})};
  }
  if (ck.has(p + ".weight") && ck.get(p + ".weight").dtype == DType::F8_E4M3) {
    const int64_t br = c.quantization_config ? c.quantization_config->block_rows : 128;  // weight_block_size
    const int64_t bc = c.quantization_config ? c.quantization_config->block_cols : 128;
    return {Format::fp8_blocks, "FP8 e4m3 " + std::to_string(br) + "x" + std::to_string(bc),
            {{p + ".weight", {m.out, m.in}}, {p + ".weight_scale_inv", {ceil_div(m.out, br), ceil_div(m.in, bc)}}}};
  }
  return {Format::dense, ck.has(p + ".weight") ? dtype_name(ck.get(p + ".weight").dtype) : "-", {{p + ".weight", {m.out, m.in}}}};
}

namespace detail {

inline MlxWeight need_mlx(const Checkpoint& ck, const QuantParams& qp, const std::string& base, int64_t out, int64_t in) {
  const MlxModuleQuant mq = mlx_module_quant(qp, base, ck.has(base + ".scales"));
  if (!mq.quantized) fail(ck.dir(), ": '", base, "' must be MLX-quantized");
  auto w = MlxWeight::bind(ck.get(base + ".weight"), ck.get(base + ".scales"), ck.get(base + ".biases"), mq.bits,
                           mq.group_size, -1, out, in);
  w.round_to_storage = false;  // mlx's quantized_matmul uses s·q + b unrounded
  return w;
}

// Binds the module as the checkpoint stores it (stored_module), checking
// every part's presence, shape and dtype, and naming the first that is wrong.
inline Linear need_linear(const Checkpoint& ck, const Config& cfg, const QuantParams& qp, const ModuleRef& m) {
  const StoredModule sm = stored_module(ck, cfg, qp, m);
  const std::string& p = m.prefix;
  for (const auto& part : sm.parts)
    if (!ck.has(part.name)) {
      if (sm.format == Format::dense)
        fail(ck.dir(), ": missing tensor '", part.name, "' (expected shape ", shape_str(part.shape), ")");
      if (sm.format == Format::fp8_blocks)
        fail(ck.dir(), ": missing tensor '", part.name, "' (FP8 weight '", p, ".weight' needs its ",
             shape_str(part.shape), " F32 block scales)");
      fail(ck.dir(), ": missing tensor '", part.name, "' (", sm.label, " module '", p, "')");
    }
  Linear l;
  l.weight = ck.get(sm.parts[0].name);
  switch (sm.format) {
    case Format::awq:
      l.storage = Linear::Awq{std::make_shared<AwqWeight>(AwqWeight::bind(
          ck.get(p + ".qweight"), ck.get(p + ".qzeros"), ck.get(p + ".scales"), qp.bits, qp.group_size, m.out, m.in))};
      break;
    case Format::mlx:
      l.storage = Linear::Mlx{std::make_shared<MlxWeight>(need_mlx(ck, qp, p, m.out, m.in))};
      break;
    case Format::mlx_stacked: {
      const std::string stack = mlx_stack_prefix(p);
      const MlxWeight st = need_mlx(ck, qp, stack, m.out, m.in);
      if (st.num_slices() != cfg.n_routed_experts)
        fail(ck.dir(), ": '", stack, ".weight' stacks ", st.num_slices(), " experts, expected n_routed_experts = ",
             cfg.n_routed_experts);
      l.storage = Linear::Mlx{std::make_shared<MlxWeight>(st.slice(m.expert))};
      break;
    }
    case Format::mlx_split_kvb: {
      const int64_t H = cfg.num_attention_heads;
      auto half = [&](const std::string& base, int64_t out, int64_t in) {
        Linear::KvbHalf h;
        if (mlx_module_quant(qp, base, ck.has(base + ".scales")).quantized) {
          h.q = std::make_shared<MlxWeight>(need_mlx(ck, qp, base, out, in));
          if (h.q->num_slices() != H || !h.q->stacked())
            fail(ck.dir(), ": '", base, ".weight' ", shape_str(h.q->weight.shape), " must have ", H, " heads");
          return h;
        }
        h.dense = ck.get(base + ".weight");
        const std::vector<int64_t> want = {H, out, in};
        if (h.dense.shape != want || !is_float_dtype(h.dense.dtype) || h.dense.dtype == DType::F8_E4M3)
          fail(h.dense.file, ": tensor '", h.dense.name, "' (unquantized: no '", base, ".scales') must be F32, BF16 or F16 ",
               shape_str(want), ", got ", dtype_name(h.dense.dtype), " ", shape_str(h.dense.shape));
        return h;
      };
      Linear::MlxSplitKvb split{half(kv_b_split(p, "embed_q"), cfg.kv_lora_rank, cfg.qk_nope_head_dim),
                                half(kv_b_split(p, "unembed_out"), cfg.v_head_dim, cfg.kv_lora_rank)};
      kvb_heads(split.embed_q, H);
      kvb_heads(split.unembed_out, H);
      l.storage = std::move(split);
      break;
    }
    case Format::dense_stacked: {
      const TensorView& st = l.weight;  // the whole stack [N_r, out, in]
      if (st.shape != sm.parts[0].shape || !is_float_dtype(st.dtype) || st.dtype == DType::F8_E4M3)
        fail(st.file, ": tensor '", st.name, "' (unquantized stacked experts) must be F32, BF16 or F16 ",
             shape_str(sm.parts[0].shape), ", got ", dtype_name(st.dtype), " ", shape_str(st.shape));
      TensorView slice = st;  // expert m.expert's [out, in]
      slice.shape = {m.out, m.in};
      slice.data = st.data + std::size_t(m.expert * m.out * m.in) * dtype_size(st.dtype);
      l.weight = slice;
      return l;
    }
    case Format::fp8_blocks: {
      const TensorView& w = l.weight;
      if (w.shape != sm.parts[0].shape)
        fail(w.file, ": tensor '", w.name, "' has shape ", shape_str(w.shape), ", expected ", shape_str(sm.parts[0].shape));
      Linear::Fp8Blocks f;
      if (cfg.quantization_config) {
        f.block_rows = cfg.quantization_config->block_rows;
        f.block_cols = cfg.quantization_config->block_cols;
      }
      const TensorView& s = ck.get(sm.parts[1].name);
      if (s.shape != sm.parts[1].shape)
        fail(s.file, ": tensor '", s.name, "' has shape ", shape_str(s.shape), ", expected ", shape_str(sm.parts[1].shape),
             " (", f.block_rows, "x", f.block_cols, " blocks of ", shape_str({m.out, m.in}), ")");
      if (s.dtype != DType::F32 && s.dtype != DType::BF16)
        fail(s.file, ": tensor '", s.name, "' has dtype ", dtype_name(s.dtype), ", expected F32");
      f.scale_inv = s;
      l.storage = f;
      return l;
    }
    case Format::dense: {
      const TensorView& w = l.weight;
      if (w.shape != sm.parts[0].shape)
        fail(w.file, ": tensor '", w.name, "' has shape ", shape_str(w.shape), ", expected ", shape_str(sm.parts[0].shape));
      if (!is_float_dtype(w.dtype))
        fail(w.file, ": tensor '", w.name, "' has dtype ", dtype_name(w.dtype), ", expected F32, BF16, F16 or F8_E4M3");
      return l;
    }
  }
  l.rows_ = m.out;  // packed formats: the logical shape
  l.cols_ = m.in;
  return l;
}

// One module alone (its config's quantization read here).
inline Linear need_linear(const Checkpoint& ck, const Config& cfg, const std::string& prefix, int64_t out, int64_t in) {
  return need_linear(ck, cfg, quant_params(cfg.raw), ModuleRef{prefix, out, in});
}

inline MLPWeights need_mlp(const Checkpoint& ck, const Config& cfg, const QuantParams& qp, const std::string& prefix,
                           int64_t hidden, int64_t inter, int64_t expert = -1) {
  return {need_linear(ck, cfg, qp, {prefix + ".gate_proj", inter, hidden, expert}),
          need_linear(ck, cfg, qp, {prefix + ".up_proj", inter, hidden, expert}),
          need_linear(ck, cfg, qp, {prefix + ".down_proj", hidden, inter, expert})};
}

}  // namespace detail


namespace detail {

// One decoder block at `prefix` ("model.layers.L."); MoE when `moe`.
// need_linear for one checkpoint, config and quantization (read once per bind).
struct ModuleBinder {
  const Checkpoint& ck;
  const Config& c;
  const QuantParams& qp;
  Linear operator()(const std::string& prefix, int64_t out, int64_t in) const {
    return need_linear(ck, c, qp, {prefix, out, in});
  }
};

inline LayerWeights need_layer(const Checkpoint& ck, const Config& c, const QuantParams& qp, const std::string& p,
                               bool moe) {
  const ModuleBinder need_linear{ck, c, qp};
  const int64_t D = c.hidden_size, H = c.num_attention_heads;
  LayerWeights lw;
  lw.input_layernorm = need(ck, p + "input_layernorm.weight", {D});
  lw.post_attention_layernorm = need(ck, p + "post_attention_layernorm.weight", {D});
  AttentionWeights& a = lw.self_attn;
  if (c.q_lora_rank) {
    a.q_a_proj = need_linear(p + "self_attn.q_a_proj", *c.q_lora_rank, D);
    a.q_a_layernorm = need(ck, p + "self_attn.q_a_layernorm.weight", {*c.q_lora_rank});
    a.q_b_proj = need_linear(p + "self_attn.q_b_proj", H * c.qk_head_dim(), *c.q_lora_rank);
  } else {
    a.q_proj = need_linear(p + "self_attn.q_proj", H * c.qk_head_dim(), D);
  }
  a.kv_a_proj_with_mqa = need_linear(p + "self_attn.kv_a_proj_with_mqa", c.kv_cache_width(), D);
  a.kv_a_layernorm = need(ck, p + "self_attn.kv_a_layernorm.weight", {c.kv_lora_rank});
  a.kv_b_proj = need_linear(p + "self_attn.kv_b_proj", H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
  a.o_proj = need_linear(p + "self_attn.o_proj", D, H * c.v_head_dim);
  if (!moe) {
    lw.mlp = need_mlp(ck, c, qp, p + "mlp", D, c.intermediate_size);
    return lw;
  }
  MoEWeights m;
  m.gate.weight = need(ck, p + "mlp.gate.weight", {c.n_routed_experts, D});
  // The bias is what makes the routing "noaux_tc"; HF always has one.
  m.gate.e_score_correction_bias = need(ck, p + "mlp.gate.e_score_correction_bias", {c.n_routed_experts});
  m.experts.reserve(static_cast<std::size_t>(c.n_routed_experts));
  for (int64_t e = 0; e < c.n_routed_experts; ++e)  // one module each, or slices of mlx-lm's stacks
    m.experts.push_back(need_mlp(ck, c, qp, p + "mlp.experts." + std::to_string(e), D, c.moe_intermediate_size, e));
  if (c.n_shared_experts > 0) m.shared_experts = need_mlp(ck, c, qp, p + "mlp.shared_experts", D, c.shared_intermediate());
  lw.moe = std::move(m);
  return lw;
}

}  // namespace detail

inline ModelWeights ModelWeights::bind(const Checkpoint& ck, const Config& c) {
  using detail::need;
  const int64_t D = c.hidden_size;
  ModelWeights m;
  const QuantParams qp = quant_params(c.raw);  // read once for every module
  const detail::ModuleBinder need_linear{ck, c, qp};
  m.embed_tokens = need_linear("model.embed_tokens", c.vocab_size, D);
  m.norm = need(ck, "model.norm.weight", {D});
  m.lm_head = c.tie_word_embeddings && !ck.has("lm_head.weight") && !ck.has("lm_head.qweight")
                  ? m.embed_tokens
                  : need_linear("lm_head", c.vocab_size, D);
  for (int64_t L = 0; L < c.num_hidden_layers; ++L)
    m.layers.push_back(detail::need_layer(ck, c, qp, "model.layers." + std::to_string(L) + ".", c.is_moe_layer(L)));
  // MTP layers: bound when the checkpoint has them (HF/OFF/MLX conversions drop them).
  for (int64_t j = 0; j < c.num_nextn_predict_layers && ck.has(mtp_marker(c, j)); ++j) {
    const std::string p = "model.layers." + std::to_string(c.num_hidden_layers + j) + ".";
    MTPWeights t;
    t.embed_tokens = need_linear(p + "embed_tokens", c.vocab_size, D);
    t.enorm = need(ck, p + "enorm.weight", {D});
    t.hnorm = need(ck, p + "hnorm.weight", {D});
    t.eh_proj = need_linear(p + "eh_proj", D, 2 * D);
    t.block = detail::need_layer(ck, c, qp, p, true);
    t.shared_head_norm = need(ck, p + "shared_head.norm.weight", {D});
    t.shared_head_head = need_linear(p + "shared_head.head", c.vocab_size, D);
    m.mtp.push_back(std::move(t));
  }
  return m;
}

}  // namespace dsv3
