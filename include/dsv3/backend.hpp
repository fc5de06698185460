// dsv3/backend.hpp — the seam where an accelerator plugs in.
//
// The model is written against this small interface: the hot operations at
// the granularity of the paper's blocks. `CpuBackend` (cpu_backend.hpp) is
// header-only and is the definition of correct; another backend (CUDA,
// Metal: compiled separately, outside include/) implements what it can and
// answers `supports()` for the rest, which `Dispatch` then runs on the CPU.
// Composite ops (attention, MoE, MLP) receive the dispatcher, so the linears
// inside a CPU-run attention still go to the accelerator when it has them.
// The model never knows which backend runs an op (ggml's ggml_backend_i +
// supports_op; style-guide §(d)).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config.hpp"
#include "tensor.hpp"
#include "rope.hpp"
#include "trace.hpp"
#include "variants.hpp"
#include "weights.hpp"

namespace dsv3 {

// The two algebraically equal forms of MLA (attention.hpp). `automatic`
// picks, per call, the one with fewer multiply-adds: absorb for decode and
// short chunks over a long cache, naive for prefill of many tokens.
enum class AttnForm { absorb, naive, automatic };

// AttnForm::automatic: the form with fewer multiply-adds for n new tokens
// after `start` cached ones. Naive expands every cached position once,
// t·r·(dn + dv); absorb attends in the wider latent space, about
// n·(start + n/2)·(2r − dn − dv) more than naive.
inline AttnForm attn_form_for(const Config& c, int64_t n, int64_t start) {
  const double r = double(c.kv_lora_rank), dn = double(c.qk_nope_head_dim), dv = double(c.v_head_dim);
  const double t = double(start + n);
  const double naive_extra = t * r * (dn + dv);
  const double absorb_extra = double(n) * (double(start) + double(n) / 2) * (2 * r - dn - dv);
  return absorb_extra > naive_extra ? AttnForm::naive : AttnForm::absorb;
}

// One layer's latent cache, positions [0, len): one row per position,
// [c_kv | k_pe] (kv_lora_rank + qk_rope_head_dim values), in the compute
// scalar or (bf16 = true) stored as bf16 to halve its memory, widened when read.
template <class T>
struct LatentCache {
  bool bf16 = false;
  std::vector<T> rows;           // [len, kv_lora_rank + qk_rope_head_dim]
  std::vector<uint16_t> rows16;  // the same, when bf16

  std::size_t bytes() const { return rows.size() * sizeof(T) + rows16.size() * 2; }
  // Appends n positions: c_kv [n, r] and k_pe [n, dr], row-major.
  void append(const T* ckv, const T* kpe, int64_t n, int64_t r, int64_t dr) {
    for (int64_t i = 0; i < n; ++i) {
      if (!bf16) {
        rows.insert(rows.end(), ckv + i * r, ckv + (i + 1) * r);
        rows.insert(rows.end(), kpe + i * dr, kpe + (i + 1) * dr);
        continue;
      }
      for (int64_t j = 0; j < r; ++j) rows16.push_back(f32_to_bf16(float(ckv[i * r + j])));
      for (int64_t j = 0; j < dr; ++j) rows16.push_back(f32_to_bf16(float(kpe[i * dr + j])));
    }
  }
  // Every cached row as T: in place, or (bf16) widened into `scratch`.
  const T* read(std::vector<T>& scratch) const {
    if (!bf16) return rows.data();
    scratch.resize(rows16.size());
    for (std::size_t i = 0; i < scratch.size(); ++i) scratch[i] = T(bf16_to_f32(rows16[i]));
    return scratch.data();
  }
  // Keeps the first `len` of `total` positions.
  void truncate(int64_t len, int64_t total) {
    if (total == 0) return;
    auto cut = [&](auto& v) { v.resize(v.size() / std::size_t(total) * std::size_t(len)); };
    cut(rows); cut(rows16);
  }
};

enum class Op { embed, linear, rms_norm, rope, attention_mla, moe, mlp };

inline const char* op_name(Op op) {
  switch (op) {
    case Op::embed: return "embed";
    case Op::linear: return "linear";
    case Op::rms_norm: return "rms_norm";
    case Op::rope: return "rope";
    case Op::attention_mla: return "attention_mla";
    case Op::moe: return "moe";
    case Op::mlp: return "mlp";
  }
  return "?";
}

template <class T>
class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // Can this backend run `op` on weights stored as `weight` (the linear's or
  // table's dtype; F32 for ops without weights)?
  virtual bool supports(Op op, DType weight = DType::F32) const = 0;

  // x[n, D] = table[ids]                                    (embedding rows)
  virtual Mat<T> embed(const Linear& table, const std::vector<int32_t>& ids, const Variants& v) const = 0;
  // y[n, out] = x[n, in] · Wᵀ                               (any stored format)
  virtual Mat<T> linear(const Mat<T>& x, const Linear& w, const Variants& v) const = 0;
  // Independent linears y_i = x_i · W_iᵀ at once (the experts of a decode
  // step); a backend may run them in one launch. Default: one by one.
  virtual std::vector<Mat<T>> linear_many(const std::vector<LinearJob<T>>& jobs, const Variants& v) const {
    std::vector<Mat<T>> ys;
    for (const auto& j : jobs) ys.push_back(linear(*j.x, *j.w, v));
    return ys;
  }
  // y = w ⊙ x / sqrt(mean(x²) + eps), per row
  virtual Mat<T> rms_norm(const Mat<T>& x, const TensorView& w, double eps, const Variants& v) const = 0;
  // Rotates columns [col0, col0 + d) of every head-block of width `stride`
  // in each row i by rope[i], in place.
  virtual void rope(Mat<T>& x, int64_t col0, int64_t d, int64_t stride, const std::vector<RopeRow>& rope,
                    bool interleave) const = 0;
  // The whole MLA block for n new tokens (appends to `cache`): [n, D] -> [n, D].
  virtual Mat<T> attention_mla(const Backend<T>& ops, const Config& c, const AttentionWeights& w, const Mat<T>& x,
                               LatentCache<T>& cache, int64_t start_pos, const std::vector<RopeRow>& rope,
                               AttnForm form, const Trace& trace, int64_t layer, const Variants& v) const = 0;
  // Router + routed experts + shared experts: [n, D] -> [n, D].
  virtual Mat<T> moe(const Backend<T>& ops, const Config& c, const MoEWeights& w, const Mat<T>& x,
                     const Trace& trace, int64_t layer, int64_t start_pos, const Variants& v) const = 0;
  // Dense SwiGLU MLP: down(silu(gate(x)) * up(x)).
  virtual Mat<T> mlp(const Backend<T>& ops, const MLPWeights& w, const Mat<T>& x, const Variants& v) const = 0;
};

}  // namespace dsv3
