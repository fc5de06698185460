// dsv3/tools/sampler.hpp — next-token choice from a row of logits.
//
// temperature 0: argmax (ties: lowest id). Otherwise softmax(logits / T),
// keep the top_k most likely (0 = all), then the smallest prefix whose
// probability reaches top_p, renormalise and draw by inverse CDF. The random
// stream is splitmix64 from the seed, so a run is reproducible on any machine.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "../error.hpp"

namespace dsv3 {

struct SamplerOptions {
  double temperature = 0.0;
  double top_p = 1.0;
  int64_t top_k = 0;
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& o) : o_(o), state_(o.seed) {
    if (!(o.temperature >= 0) || !std::isfinite(o.temperature))
      fail("sampler: temperature = ", o.temperature, " must be >= 0");
    if (!(o.top_p > 0 && o.top_p <= 1)) fail("sampler: top_p = ", o.top_p, " must be in (0, 1]");
    if (o.top_k < 0) fail("sampler: top_k = ", o.top_k, " must be >= 0");
  }

  template <class T>
  int32_t sample(const T* logits, int64_t V) {
    if (o_.temperature == 0.0) return int32_t(argmax(logits, V));
    std::vector<int64_t> idx(static_cast<std::size_t>(V));
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
    int64_t keep = o_.top_k > 0 ? std::min(o_.top_k, V) : V;
    std::vector<double> p(static_cast<std::size_t>(keep));
    const double mx = double(logits[idx[0]]);
    double sum = 0;
    for (int64_t i = 0; i < keep; ++i) sum += p[std::size_t(i)] = std::exp((double(logits[idx[std::size_t(i)]]) - mx) / o_.temperature);
    double cum = 0;
    int64_t cut = keep;
    for (int64_t i = 0; i < keep; ++i) {
      cum += p[std::size_t(i)] / sum;
      if (cum >= o_.top_p) { cut = i + 1; break; }
    }
    double s2 = 0;
    for (int64_t i = 0; i < cut; ++i) s2 += p[std::size_t(i)];
    const double u = uniform() * s2;
    double acc = 0;
    for (int64_t i = 0; i < cut; ++i) {
      acc += p[std::size_t(i)];
      if (u < acc) return int32_t(idx[std::size_t(i)]);
    }
    return int32_t(idx[std::size_t(cut - 1)]);
  }

 private:
  // The first index of the largest logit (a NaN never wins a comparison; a
  // NaN at 0 gives 0). Two passes the compiler vectorises: the largest value,
  // 16 lanes of running maxima, then the first index that holds it.
  template <class T>
  static int64_t argmax(const T* logits, int64_t V) {
    T lane[16];
    std::fill_n(lane, 16, logits[0]);
    int64_t i = 0;
    for (; i + 16 <= V; i += 16)
      for (int l = 0; l < 16; ++l) lane[l] = logits[i + l] > lane[l] ? logits[i + l] : lane[l];
    T top = lane[0];
    for (int l = 1; l < 16; ++l) top = lane[l] > top ? lane[l] : top;
    for (; i < V; ++i) top = logits[i] > top ? logits[i] : top;
    if (!(top == top)) return 0;  // NaN at 0, and nothing compares greater
    for (i = 0; i + 16 <= V; i += 16) {  // a block at a time, then its first match
      int hit = 0;
      for (int l = 0; l < 16; ++l) hit |= logits[i + l] == top;
      if (hit) break;
    }
    for (; i < V; ++i)
      if (logits[i] == top) return i;
    return 0;
  }
  double uniform() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return double(z >> 11) * (1.0 / 9007199254740992.0);
  }
  SamplerOptions o_;
  uint64_t state_;
};

}  // namespace dsv3
