// dsv3/model.hpp — the DeepSeek-V3 transformer (model-semantics §3).
//
//   h = Embed[ids]                                       [n, D]
//   for each layer L:
//     h = h + MLA_L(RMSNorm(h; input_layernorm), positions)
//     h = h + FFN_L(RMSNorm(h; post_attention_layernorm))  dense MLP for
//                                                          L < first_k_dense_replace, else MoE
//   logits = lm_head(RMSNorm(h; norm))                   [n, V]
//
// `forward` takes the next n tokens of a sequence whose first `cache.length()`
// tokens are already in the latent cache, so one call over the whole prompt,
// several chunks, or one token at a time give the same logits.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attention.hpp"
#include "config.hpp"
#include "moe.hpp"
#include "ops.hpp"
#include "rope.hpp"
#include "safetensors.hpp"
#include "trace.hpp"
#include "variants.hpp"
#include "weights.hpp"

namespace dsv3 {

struct ForwardOptions {
  AttnForm attn = AttnForm::absorb;
  bool all_logits = true;  // false: only the last position's row (decode)
};

template <class T>
struct KVCache {
  std::vector<LatentCache<T>> layers;
  int64_t length = 0;  // positions [0, length) are cached

  std::size_t bytes() const {
    std::size_t b = 0;
    for (const auto& l : layers) b += (l.c_kv.size() + l.k_pe.size()) * sizeof(T);
    return b;
  }
};

template <class T>
class Model {
 public:
  // Opens a HF-layout directory: config.json + model.safetensors (or shards).
  // `variants` selects other engines' choices (variants.hpp); default official.
  explicit Model(const std::string& dir, const Variants& variants = {})
      : config_(Config::from_file(dir + "/config.json")),
        ckpt_(std::make_unique<Checkpoint>(dir)),
        w_(ModelWeights::bind(*ckpt_, config_)),
        v_(variants),
        inv_freq_(rope_inv_freq(config_, v_.yarn_enabled(config_.rope_scaling.original_max_position_embeddings))) {}

  const Variants& variants() const { return v_; }

  const Config& config() const { return config_; }
  const ModelWeights& weights() const { return w_; }
  const Checkpoint& checkpoint() const { return *ckpt_; }

  KVCache<T> new_cache() const {
    KVCache<T> c;
    c.layers.resize(std::size_t(config_.num_hidden_layers));
    return c;
  }

  // Runs ids at positions [cache.length, cache.length + n); returns logits
  // [n, V] (or [1, V] for the last position when !opt.all_logits).
  Mat<T> forward(const std::vector<int32_t>& ids, KVCache<T>& cache, const ForwardOptions& opt = {},
                 const Trace& trace = Trace()) const {
    const Config& c = config_;
    const int64_t n = int64_t(ids.size()), D = c.hidden_size, start = cache.length;
    if (n == 0) fail("forward: no token ids given");
    if (start + n > c.max_position_embeddings)
      fail("forward: sequence of ", start + n, " tokens exceeds max_position_embeddings = ",
           c.max_position_embeddings, " (config.json)");
    for (int32_t id : ids)
      if (id < 0 || id >= c.vocab_size)
        fail("forward: token id ", id, " is outside the vocabulary [0, ", c.vocab_size, ")");

    // embedding: a plain row lookup, no scaling
    Mat<T> h = empty<T>(n, D);
    for (int64_t i = 0; i < n; ++i) gather_row(w_.embed_tokens, ids[std::size_t(i)], &h(i, 0));
    round_act(v_, h);
    trace.emit("embed", -1, start, n, D, h.data());

    std::vector<RopeRow> rope;
    for (int64_t i = 0; i < n; ++i) rope.push_back(rope_row(inv_freq_, start + i));

    for (int64_t L = 0; L < c.num_hidden_layers; ++L) {
      const LayerWeights& lw = w_.layers[std::size_t(L)];
      Mat<T> a_in = rms_norm(h, lw.input_layernorm, c.rms_norm_eps, v_);
      trace.emit("attn_norm", L, start, n, D, a_in.data());
      h += mla_forward(c, lw.self_attn, a_in, cache.layers[std::size_t(L)], start, rope, opt.attn, trace, L, v_);
      round_act(v_, h);
      trace.emit("resid_attn", L, start, n, D, h.data());
      Mat<T> f_in = rms_norm(h, lw.post_attention_layernorm, c.rms_norm_eps, v_);
      trace.emit("ffn_norm", L, start, n, D, f_in.data());
      Mat<T> f = lw.moe ? moe_forward(c, *lw.moe, f_in, trace, L, start, v_) : mlp_forward(*lw.mlp, f_in, v_);
      trace.emit("ffn_out", L, start, n, D, f.data());
      h += f;
      round_act(v_, h);
      trace.emit("resid_ffn", L, start, n, D, h.data());
    }
    cache.length = start + n;

    Mat<T> last = h;
    if (!opt.all_logits) {
      last = empty<T>(1, D);
      std::copy_n(&h(n - 1, 0), D, last.data());
    }
    Mat<T> hn = rms_norm(last, w_.norm, c.rms_norm_eps, v_);
    trace.emit("final_norm", -1, opt.all_logits ? start : start + n - 1, rows(hn), D, hn.data());
    Linear head;
    head.weight = w_.lm_head;
    Mat<T> logits = linear(hn, head, v_);
    trace.emit("logits", -1, opt.all_logits ? start : start + n - 1, rows(logits), cols(logits),
               logits.data());
    return logits;
  }

 private:
  Config config_;
  std::unique_ptr<Checkpoint> ckpt_;
  ModelWeights w_;
  Variants v_;
  std::vector<float> inv_freq_;
};

}  // namespace dsv3
