// dsv3/backend.hpp — the seam where a backend plugs in (ggml's backend
// interface with supports_op; style-guide §(d)).
//
// The model is written against this interface only: the ops at the
// granularity of the paper's blocks, plus the glue between them (residual add,
// row slicing, concatenation), on activations (Act, tensor.hpp) that the
// backend running them holds — on the host, or in its own memory. A backend
// owns what it keeps between ops: the activations it returns, each layer's
// latent cache (new_cache), and the weights it made resident (prepare). It
// answers `supports()` per op, seeing the whole storage format of the op's
// weight (FP8 block size, AWQ/MLX bits and group, split kv_b) and the variant
// knobs in force; `Dispatch` (dispatch.hpp) runs what it declines on the CPU
// backend, moving the activation across (upload/download) only then. Composite
// ops (attention, MoE, MLP) receive the dispatcher, so the linears inside a
// CPU-run attention still go to the primary backend when it has them.
//
// Backends: ReferenceBackend (reference/: the definition of correct, literal
// and slow), CpuBackend (cpu/: the fast default); others (CUDA, …) live
// outside include/ and are held against the reference by test_backend_ops.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
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
// One layer's attention cache, owned by the backend that runs the layer's
// attention (Backend::new_cache); the model only sizes and truncates it.
struct LayerCache {
  virtual ~LayerCache() = default;
  virtual std::size_t bytes() const = 0;
  // Keeps the first `len` of `total` positions.
  virtual void truncate(int64_t len, int64_t total) = 0;
};

// The host backends' cache of one layer.
template <class T>
struct LatentCache : LayerCache {
  bool bf16 = false;
  std::vector<T> rows;           // [len, kv_lora_rank + qk_rope_head_dim]
  std::vector<uint16_t> rows16;  // the same, when bf16

  std::size_t bytes() const override { return rows.size() * sizeof(T) + rows16.size() * 2; }
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
  void truncate(int64_t len, int64_t total) override {
    if (total == 0) return;
    auto cut = [&](auto& v) { v.resize(v.size() / std::size_t(total) * std::size_t(len)); };
    cut(rows); cut(rows16);
  }
};

enum class Op { embed, linear, rms_norm, rope, attention_mla, moe, mlp, glue };

inline const char* op_name(Op op) {
  switch (op) {
    case Op::embed: return "embed";
    case Op::linear: return "linear";
    case Op::rms_norm: return "rms_norm";
    case Op::rope: return "rope";
    case Op::attention_mla: return "attention_mla";
    case Op::moe: return "moe";
    case Op::mlp: return "mlp";
    case Op::glue: return "glue";
  }
  return "?";
}

// What a backend is asked before it is given an op: the op, the weight it
// runs on with its whole storage format (Linear: dtype, FP8 block size, AWQ /
// MLX bits and group, split kv_b — see Linear::format()), and the knobs.
struct OpQuery {
  Op op;
  const Linear* weight = nullptr;      // embed/linear: the matrix; attention_mla: kv_b_proj;
                                       // moe: expert 0's gate_proj; mlp: gate_proj
  const TensorView* vector = nullptr;  // rms_norm: its weight
  const Variants* variants = nullptr;
  DType dtype() const { return weight ? weight->weight.dtype : vector ? vector->dtype : DType::F32; }
};

template <class T>
class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual bool supports(const OpQuery& q) const = 0;

  // -- residency --------------------------------------------------------------
  // Does it compute on host activations (Mat)? Then Acts it returns are host
  // Acts and Dispatch hands it host Acts; otherwise it holds its own and the
  // activations it returns name it as their owner.
  virtual bool on_host() const { return true; }
  // Called once when a model is given this backend: make weights resident.
  virtual void prepare(const ModelWeights&, const Config&) const {}
  // Host -> this backend, and back (Dispatch calls these only where an op
  // moves between backends; the model, for outputs and trace points).
  virtual Act<T> upload(const Mat<T>& x) const { return Act<T>(Mat<T>(x)); }
  virtual Mat<T> download(const Act<T>& x) const { return x.host(); }
  // One layer's cache, in this backend's memory.
  virtual std::unique_ptr<LayerCache> new_cache(const Config&, bool bf16) const {
    auto c = std::make_unique<LatentCache<T>>();
    c->bf16 = bf16;
    return c;
  }

  // -- the model's ops ----------------------------------------------------------
  // x[n, d] = table[ids]                                    (embedding rows)
  virtual Act<T> embed(const Linear& table, const std::vector<int32_t>& ids, const Variants& v) const = 0;
  // y[n, out] = x[n, in] · Wᵀ                               (any stored format)
  virtual Act<T> linear(const Act<T>& x, const Linear& w, const Variants& v) const = 0;
  // Independent linears y_i = x_i · W_iᵀ at once (the experts of a decode
  // step); a backend may run them in one launch. Default: one by one.
  virtual std::vector<Act<T>> linear_many(const std::vector<LinearJob<T>>& jobs, const Variants& v) const {
    std::vector<Act<T>> ys;
    ys.reserve(jobs.size());
    for (const auto& j : jobs) ys.push_back(linear(*j.x, *j.w, v));
    return ys;
  }
  // y = w ⊙ x / sqrt(mean(x²) + eps), per row
  virtual Act<T> rms_norm(const Act<T>& x, const TensorView& w, double eps, const Variants& v) const = 0;
  // Rotates columns [col0, col0 + width) of every head block of `stride`
  // columns in each row i by rope[i], in place.
  virtual void rope(Act<T>& x, int64_t col0, int64_t width, int64_t stride, const std::vector<RopeRow>& rope,
                    bool interleave) const = 0;
  // The whole MLA block for n new tokens (appends to `cache`, which this
  // backend's new_cache made): [n, d] -> [n, d].
  virtual Act<T> attention_mla(const Backend<T>& ops, const Config& c, const AttentionWeights& w, const Act<T>& x,
                               LayerCache& cache, int64_t start_pos, const std::vector<RopeRow>& rope, AttnForm form,
                               const Trace& trace, int64_t layer, const Variants& v) const = 0;
  // Router + routed experts + shared experts: [n, d] -> [n, d].
  virtual Act<T> moe(const Backend<T>& ops, const Config& c, const MoEWeights& w, const Act<T>& x,
                     const Trace& trace, int64_t layer, int64_t start_pos, const Variants& v) const = 0;
  // Dense SwiGLU MLP: down(silu(gate(x)) ⊙ up(x)).
  virtual Act<T> mlp(const Backend<T>& ops, const MLPWeights& w, const Act<T>& x, const Variants& v) const = 0;

  // -- glue between the ops (defaults: on host activations) --------------------
  // h = h + f, then the activation rounding of the knobs (the residual stream).
  virtual void add(Act<T>& h, const Act<T>& f, const Variants& v) const {
    Mat<T>& a = h.host_mut();
    a += f.host();
    round_act(v, a);
  }
  // Rows [r0, r1).
  virtual Act<T> take_rows(const Act<T>& x, int64_t r0, int64_t r1) const { return dsv3::take_rows(x.host(), r0, r1); }
  // [a | b], row by row.
  virtual Act<T> concat_cols(const Act<T>& a, const Act<T>& b) const {
    Mat<T> y = empty<T>(a.rows(), a.cols() + b.cols());
    for (int64_t i = 0; i < a.rows(); ++i) {
      std::copy_n(&a.host()(i, 0), a.cols(), &y(i, 0));
      std::copy_n(&b.host()(i, 0), b.cols(), &y(i, a.cols()));
    }
    return y;
  }
  // Rows [r0, r1) set to 0.
  virtual void zero_rows(Act<T>& x, int64_t r0, int64_t r1) const {
    Mat<T>& m = x.host_mut();
    std::fill(m.data() + r0 * x.cols(), m.data() + r1 * x.cols(), T(0));
  }
};

// A host backend's view of a layer cache it made (a cache another backend made
// is an error naming both).
template <class T>
inline LatentCache<T>& latent_cache(LayerCache& c, const std::string& backend) {
  auto* l = dynamic_cast<LatentCache<T>*>(&c);
  if (!l) fail("backend '", backend, "' was given a layer cache it did not make (a cache belongs to the backend "
               "that runs the layer's attention)");
  return *l;
}

// The result of an op as a host matrix (host composites: cpu/, reference/).
template <class T>
inline Mat<T> home(Act<T>&& a) {
  return std::move(a).to_host();
}

// The dispatcher as a host composite (cpu/, reference/) uses it: its ops on
// host matrices, each result brought to the host (a no-op when the op ran on
// the host; a download when the primary backend ran it on its own memory).
template <class T>
struct HostOps {
  const Backend<T>& be;
  Mat<T> linear(const Mat<T>& x, const Linear& w, const Variants& v) const {
    return home(be.linear(Act<T>::view(x), w, v));
  }
  std::vector<Mat<T>> linear_many(const std::vector<MatJob<T>>& jobs, const Variants& v) const {
    std::vector<Act<T>> xs;
    xs.reserve(jobs.size());
    for (const auto& j : jobs) xs.push_back(Act<T>::view(*j.x));
    std::vector<LinearJob<T>> acts;
    acts.reserve(jobs.size());
    for (std::size_t i = 0; i < jobs.size(); ++i) acts.push_back({&xs[i], jobs[i].w});
    std::vector<Mat<T>> ys;
    ys.reserve(jobs.size());
    for (Act<T>& y : be.linear_many(acts, v)) ys.push_back(home(std::move(y)));
    return ys;
  }
  Mat<T> rms_norm(const Mat<T>& x, const TensorView& w, double eps, const Variants& v) const {
    return home(be.rms_norm(Act<T>::view(x), w, eps, v));
  }
  void rope(Mat<T>& x, int64_t col0, int64_t width, int64_t stride, const std::vector<RopeRow>& r, bool interleave) const {
    Act<T> a(std::move(x));
    be.rope(a, col0, width, stride, r, interleave);
    x = home(std::move(a));
  }
  Mat<T> mlp(const MLPWeights& w, const Mat<T>& x, const Variants& v) const {
    return home(be.mlp(be, w, Act<T>::view(x), v));
  }
};

// -- Act's host access (needs Backend for the download) --------------------------
template <class T>
const Mat<T>& Act<T>::host() const {
  if (owner_) fail("activation [", rows_, ", ", cols_, "] is held by backend '", owner_->name(), "', not on the host");
  if (owned_) return *owned_;
  if (view_) return *view_;
  fail("empty activation read");
}
template <class T>
Mat<T>& Act<T>::host_mut() {
  if (view_) {
    owned_ = std::make_shared<Mat<T>>(*view_);
    view_ = nullptr;
  } else if (owned_ && owned_.use_count() > 1) {
    owned_ = std::make_shared<Mat<T>>(*owned_);  // shared with another Act: copy on write
  }
  return const_cast<Mat<T>&>(host());
}
template <class T>
Mat<T> Act<T>::to_host() && {
  if (owner_) return owner_->download(*this);
  if (owned_ && owned_.use_count() == 1) return std::move(*owned_);
  return host();
}

}  // namespace dsv3
