// dsv3/tools/speculative.hpp — exact speculative decoding with the MTP module.
//
// Greedy, one draft per step (the scheme vLLM/SGLang run with
// num_nextn_predict_layers = 1). With seq the accepted tokens, n = |seq|:
//   draft   d = argmax MTP(h_{n-2}, seq[n-1])            predicts position n
//   verify  run the main model on [seq[n-1], d] at positions n-1, n
//           a = argmax at n-1 (the main model's own token for position n)
//   a == d: accept, emit d and the bonus b = argmax at n  (2 tokens)
//   a != d: reject, emit a, drop the draft's cache entry  (1 token)
// Every emitted token is the main model's own greedy choice, so the output is
// plain greedy decoding's, token for token; the MTP only saves main-model
// calls. The MTP cache only ever holds verified rows.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "../model.hpp"

namespace dsv3 {

struct SpecStep {
  int64_t position = 0;   // n: the position the draft is for
  int32_t draft = 0;
  bool accepted = false;
  int32_t main_token = 0;
  std::vector<int32_t> emitted;
};

struct SpecResult {
  std::vector<int32_t> generated;
  int64_t drafted = 0, accepted = 0;
  std::vector<SpecStep> steps;
};

template <class T>
inline int32_t argmax_row(const Mat<T>& m, int64_t r) {
  const T* p = &m(r, 0);
  return int32_t(std::max_element(p, p + cols(m)) - p);
}

// `on_token` is called for every emitted token as it is decided.
template <class T>
SpecResult generate_speculative_mtp(const Model<T>& m, const std::vector<int32_t>& prompt, int64_t max_new,
                                    const MTPOptions& mo = {}, AttnForm attn = AttnForm::automatic,
                                    const std::function<void(int32_t)>& on_token = nullptr) {
  SpecResult r;
  if (max_new <= 0) return r;
  const int32_t eos = int32_t(m.config().eos_token_id);
  auto cache = m.new_cache();
  auto mcache = m.new_mtp_cache();
  ForwardOptionsT<T> opt;
  opt.attn = attn;
  opt.all_logits = false;
  Mat<T> H;
  opt.hidden = &H;
  const int64_t P = int64_t(prompt.size());
  Mat<T> logits = m.forward(prompt, cache, opt);
  int32_t last = argmax_row(logits, 0);
  auto emit = [&](int32_t t) {
    r.generated.push_back(t);
    if (on_token) on_token(t);
  };
  emit(last);
  // MTP rows 0..P-1: (h_p, seq[p+1]); the last one drafts position P+1.
  std::vector<int32_t> next(prompt.begin() + 1, prompt.end());
  next.push_back(last);
  Mat<T> draft_logits = m.mtp_forward(H, next, mcache, mo);
  int64_t n = P + 1;
  MTPOptions mo_rows = mo;
  mo_rows.attn = attn;
  while (int64_t(r.generated.size()) < max_new && last != eos) {
    SpecStep st;
    st.position = n;
    st.draft = argmax_row(draft_logits, rows(draft_logits) - 1);
    ForwardOptionsT<T> vopt;
    vopt.attn = attn;
    Mat<T> Hv;
    vopt.hidden = &Hv;
    Mat<T> vl = m.forward({last, st.draft}, cache, vopt);  // positions n-1, n
    st.main_token = argmax_row(vl, 0);
    st.accepted = st.main_token == st.draft;
    ++r.drafted;
    if (st.accepted) {
      ++r.accepted;
      const int32_t bonus = argmax_row(vl, 1);
      st.emitted = {st.draft, bonus};
      if (st.draft == eos) st.emitted.pop_back();
      draft_logits = m.mtp_forward(Hv, {st.draft, bonus}, mcache, mo_rows);
      last = st.emitted.back();
      n += 2;
    } else {
      cache.truncate(n);  // forget the draft at position n
      st.emitted = {st.main_token};
      draft_logits = m.mtp_forward(take_rows(Hv, 0, 1), {st.main_token}, mcache, mo_rows);
      last = st.main_token;
      n += 1;
    }
    for (int32_t t : st.emitted)
      if (int64_t(r.generated.size()) < max_new) emit(t);
    r.steps.push_back(std::move(st));
  }
  return r;
}

}  // namespace dsv3
