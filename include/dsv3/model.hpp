// dsv3/model.hpp — the DeepSeek-V3 transformer (docs/semantics.md §3).
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

#include "config.hpp"
#include "dispatch.hpp"
#include "rope.hpp"
#include "formats/safetensors.hpp"
#include "trace.hpp"
#include "variants.hpp"
#include "weights.hpp"

namespace dsv3 {

template <class T>
struct ForwardOptionsT {
  AttnForm attn = AttnForm::automatic;
  bool all_logits = true;     // false: only the last position's row (decode)
  Mat<T>* hidden = nullptr;   // if set: the final-normed hidden state of every row (MTP input)
};
using ForwardOptions = ForwardOptionsT<float>;

// The latent cache of a sequence: one LayerCache per layer, each owned by
// the backend that runs that layer's attention.
template <class T>
struct KVCache {
  std::vector<std::unique_ptr<LayerCache>> layers;
  int64_t length = 0;  // positions [0, length) are cached

  std::size_t bytes() const {
    std::size_t b = 0;
    for (const auto& l : layers) b += l->bytes();
    return b;
  }
  // Forgets positions [len, length) (a rejected speculative draft).
  void truncate(int64_t len) {
    if (len < 0 || len > length) fail("KVCache::truncate(", len, "): cache holds ", length, " positions");
    for (auto& l : layers) l->truncate(len, length);
    length = len;
  }
};

// Multi-token prediction options (docs/semantics.md §10).
struct MTPOptions {
  // vLLM deepseek_mtp.py DeepSeekMultiTokenPredictorLayer.forward zeroes the
  // embedding at position 0 ("masking inputs at position 0"); SGLang
  // deepseek_nextn.py and the paper do not. Default: not zeroed.
  bool zero_pos0 = false;
  AttnForm attn = AttnForm::automatic;
};

template <class T>
class Model {
 public:
  using Scalar = T;
  // Opens a HF-layout directory: config.json + model.safetensors (or shards).
  // `variants` selects other engines' choices (variants.hpp); default official.
  explicit Model(const std::string& dir, const Variants& variants = {})
      : config_(Config::from_file(dir + "/config.json")),
        ckpt_(std::make_unique<Checkpoint>(dir)),
        w_(ModelWeights::bind(*ckpt_, config_)),
        v_(variants),
        inv_freq_(rope_inv_freq(config_, v_.yarn_enabled(config_.rope_scaling.original_max_position_embeddings))) {}

  const Variants& variants() const { return v_; }

  // Runs the ops this backend supports on it, the rest on the CPU backend
  // (nullptr: the CPU backend alone). Its prepare() hook sees the weights once.
  void set_backend(std::shared_ptr<const Backend<T>> primary) {
    be_ = Dispatch<T>(std::move(primary));
    be_.prepare(w_, config_);
  }
  const Backend<T>& backend() const { return be_; }

  // Expert parallelism (experts.hpp): this process computes only the routed
  // experts it owns in `g`; the logits stay byte-identical to one process.
  void set_expert_group(std::shared_ptr<const ExpertGroup> g) { be_.set_expert_group(std::move(g), v_); }

  const Config& config() const { return config_; }
  const ModelWeights& weights() const { return w_; }
  const Checkpoint& checkpoint() const { return *ckpt_; }

  // bf16_cache: store the latent cache as bf16 (half the memory; values
  // rounded once when cached).
  KVCache<T> new_cache(bool bf16_cache = false) const {
    KVCache<T> c;
    for (const LayerWeights& lw : w_.layers) c.layers.push_back(be_.new_cache(config_, lw.self_attn, bf16_cache, v_));
    return c;
  }

  // Runs ids at positions [cache.length, cache.length + n); returns logits
  // [n, V] (or [1, V] for the last position when !opt.all_logits).
  template <class Opt = ForwardOptionsT<T>>
  Mat<T> forward(const std::vector<int32_t>& ids, KVCache<T>& cache, const Opt& opt_in = {},
                 const Trace& trace = Trace()) const {
    ForwardOptionsT<T> opt;
    opt.attn = opt_in.attn;
    opt.all_logits = opt_in.all_logits;
    if constexpr (std::is_same_v<Opt, ForwardOptionsT<T>>) opt.hidden = opt_in.hidden;
    const Config& c = config_;
    const int64_t n = int64_t(ids.size()), start = cache.length;
    if (n == 0) fail("forward: no token ids given");
    if (start + n > c.max_position_embeddings)
      fail("forward: sequence of ", start + n, " tokens exceeds max_position_embeddings = ",
           c.max_position_embeddings, " (config.json)");
    for (int32_t id : ids)
      if (id < 0 || id >= c.vocab_size)
        fail("forward: token id ", id, " is outside the vocabulary [0, ", c.vocab_size, ")");

    Act<T> h = be_.embed(w_.embed_tokens, ids, v_);  // a plain row lookup, no scaling
    trace_point(trace, "embed", -1, start, h);

    const std::vector<RopeRow> rope = rope_rows(start, n);
    for (int64_t L = 0; L < c.num_hidden_layers; ++L)
      block_forward(w_.layers[std::size_t(L)], h, *cache.layers[std::size_t(L)], start, rope, opt.attn, trace, L);
    cache.length = start + n;
    if (opt.hidden) *opt.hidden = home(be_.rms_norm(h, w_.norm, c.rms_norm_eps, v_));

    const Act<T> last = opt.all_logits ? h : be_.take_rows(h, n - 1, n);
    Act<T> hn = be_.rms_norm(last, w_.norm, c.rms_norm_eps, v_);
    trace_point(trace, "final_norm", -1, opt.all_logits ? start : start + n - 1, hn);
    Act<T> logits = be_.linear(hn, w_.lm_head, v_);
    trace_point(trace, "logits", -1, opt.all_logits ? start : start + n - 1, logits);
    return home(std::move(logits));
  }

  // -- multi-token prediction ------------------------------------------------
  bool has_mtp() const { return !w_.mtp.empty(); }
  KVCache<T> new_mtp_cache() const {
    KVCache<T> c;
    if (!w_.mtp.empty()) c.layers.push_back(be_.new_cache(config_, w_.mtp[0].block.self_attn, false, v_));
    return c;
  }

  // MTP logits for rows at positions [cache.length, cache.length + n):
  // row i takes h (the main model's final-normed hidden state at that
  // position) and the NEXT token, and predicts the token after that.
  //   u = eh_proj([enorm(embed(t_{i+1})) ; hnorm(h_i)])   embedding first
  //       (vLLM deepseek_mtp.py, SGLang deepseek_nextn.py; not the paper's order)
  //   g = DecoderBlock(u) at RoPE position i, with the MTP's own latent cache
  //   logits = shared_head.head(shared_head.norm(g))
  Mat<T> mtp_forward(const Mat<T>& h, const std::vector<int32_t>& next_ids, KVCache<T>& cache,
                     const MTPOptions& o = {}, const Trace& trace = Trace()) const {
    const Config& c = config_;
    if (w_.mtp.empty())
      fail("MTP: the checkpoint has no MTP layer (missing '", ModelWeights::mtp_marker(c),
           "'; config num_nextn_predict_layers = ", c.num_nextn_predict_layers, ")");
    const MTPWeights& m = w_.mtp[0];
    const int64_t n = rows(h), start = cache.length;
    if (int64_t(next_ids.size()) != n) fail("MTP: ", n, " hidden rows but ", next_ids.size(), " next tokens");
    if (start + n > c.max_position_embeddings)
      fail("MTP: position ", start + n - 1, " exceeds max_position_embeddings = ", c.max_position_embeddings);
    for (int32_t id : next_ids)
      if (id < 0 || id >= c.vocab_size) fail("MTP: token id ", id, " is outside the vocabulary [0, ", c.vocab_size, ")");
    Act<T> e = be_.embed(m.embed_tokens, next_ids, v_);
    if (o.zero_pos0 && start == 0) be_.zero_rows(e, 0, 1);
    const Act<T> en = be_.rms_norm(e, m.enorm, c.rms_norm_eps, v_);
    const Act<T> hn = be_.rms_norm(be_.upload(h), m.hnorm, c.rms_norm_eps, v_);
    Act<T> u = be_.linear(be_.concat_cols(en, hn), m.eh_proj, v_);  // eh_proj [enorm(e) | hnorm(h)]: [n, 2D] -> [n, D]
    const int64_t L = c.num_hidden_layers;  // trace layer index of the MTP block
    trace_point(trace, "mtp_eh_proj", L, start, u);
    block_forward(m.block, u, *cache.layers[0], start, rope_rows(start, n), o.attn, trace, L);
    cache.length = start + n;
    Act<T> logits = be_.linear(be_.rms_norm(u, m.shared_head_norm, c.rms_norm_eps, v_), m.shared_head_head, v_);
    Mat<T> out = home(std::move(logits));
    trace.emit("mtp_logits", L, start, n, cols(out), out.data());
    return out;
  }

 private:
  std::vector<RopeRow> rope_rows(int64_t start, int64_t n) const {
    std::vector<RopeRow> r;
    for (int64_t i = 0; i < n; ++i) r.push_back(rope_row(inv_freq_, start + i));
    return r;
  }

  // One pre-norm decoder block, in place on the residual stream h [n, D]:
  //   h = h + MLA(RMSNorm(h)),  h = h + FFN(RMSNorm(h))  (dense MLP or MoE)
  void block_forward(const LayerWeights& lw, Act<T>& h, LayerCache& cache, int64_t start,
                     const std::vector<RopeRow>& rope, AttnForm attn, const Trace& trace, int64_t L) const {
    const Config& c = config_;
    Act<T> a_in = be_.rms_norm(h, lw.input_layernorm, c.rms_norm_eps, v_);
    trace_point(trace, "attn_norm", L, start, a_in);
    be_.add(h, be_.attention_mla(be_, c, lw.self_attn, a_in, cache, start, rope, attn, trace, L, v_), v_);
    trace_point(trace, "resid_attn", L, start, h);
    Act<T> f_in = be_.rms_norm(h, lw.post_attention_layernorm, c.rms_norm_eps, v_);
    trace_point(trace, "ffn_norm", L, start, f_in);
    Act<T> f = lw.moe ? be_.moe(be_, c, *lw.moe, f_in, trace, L, start, v_) : be_.mlp(be_, *lw.mlp, f_in, v_);
    trace_point(trace, "ffn_out", L, start, f);
    be_.add(h, f, v_);
    trace_point(trace, "resid_ffn", L, start, h);
  }

  // A named point of the forward pass on an activation wherever it is held:
  // read back for the sink, and put back edited when an editor is installed.
  void trace_point(const Trace& trace, const char* name, int64_t layer, int64_t start, Act<T>& a) const {
    if (!trace.enabled()) return;
    Mat<T> m = be_.download(a);
    trace.edit(name, layer, start, rows(m), cols(m), m.data());
    if (trace.editor()) a = a.on_host() ? Act<T>(std::move(m)) : a.owner()->upload(m);
  }

  Config config_;
  std::unique_ptr<Checkpoint> ckpt_;
  ModelWeights w_;
  Variants v_;
  std::vector<float> inv_freq_;
  Dispatch<T> be_;
};

// A fixed schedule of forward calls over ids (what `dsv3 forward` and
// `dsv3 trace` run). prefill: calls of `chunk` tokens (0: all at once), every
// row's logits; decode: the first `prefill_len` tokens in calls of `chunk`
// (0: one call), then one token per call, the last row of each. on_rows(
// logits, start) receives the rows the schedule outputs — prefill: every
// call's; decode: the last prefill call's and every one-token call's — with
// the position of the call's first token.
enum class Schedule { prefill, decode };

template <class T, class OnRows>
void run_schedule(const Model<T>& m, const std::vector<int32_t>& ids, Schedule mode, int64_t prefill_len,
                  int64_t chunk, ForwardOptionsT<T> opt, KVCache<T>& cache, const Trace& trace, OnRows&& on_rows) {
  const int64_t L = int64_t(ids.size());
  const int64_t P = mode == Schedule::prefill ? L : prefill_len;
  if (P < 1 || P > L) fail("prefill length ", P, " must be in [1, ", L, "] (the number of ids)");
  if (mode == Schedule::decode) opt.all_logits = false;
  const int64_t step = chunk > 0 ? chunk : P;
  for (int64_t s = 0; s < P; s += step) {
    const int64_t start = cache.length, e = std::min(P, s + step);
    Mat<T> lg = m.forward(std::vector<int32_t>(ids.begin() + s, ids.begin() + e), cache, opt, trace);
    if (mode == Schedule::prefill || e == P) on_rows(lg, start);
  }
  for (int64_t i = P; i < L; ++i) {
    const int64_t start = cache.length;
    on_rows(m.forward({ids[std::size_t(i)]}, cache, opt, trace), start);
  }
}

}  // namespace dsv3
