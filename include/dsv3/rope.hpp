// dsv3/rope.hpp — RoPE with YaRN frequency scaling (docs/semantics.md §5.2,
// Appendix A; the YaRN paper, Peng et al. 2023, §3.2 "NTK-by-parts" and §3.4).
//
// YaRN in the paper's terms: RoPE turns pair i of a head (d = qk_rope_head_dim)
// at frequency θ_i = base^(−2i/d), wavelength λ_i = 2π/θ_i. Over the original
// context L0 (original_max_position_embeddings) pair i makes r_i = L0/λ_i
// turns. With scale s (factor), each frequency becomes
//   h(θ_i) = (1 − γ(r_i)) · θ_i / s + γ(r_i) · θ_i                 YaRN §3.2
//   γ(r) = 0 if r < α, 1 if r > β, (r − α)/(β − α) between          α = beta_slow (1), β = beta_fast (32)
// i.e. fast pairs (many turns) keep θ_i, slow pairs are interpolated by s.
// The official code (and HF, MLX) express γ through the pair index instead
// of r: the ramp runs linearly in i between the correction dimensions where
// r_i = β and r_i = α (correction_dim below), floored/ceiled — that is what
// dsv3 computes, and the two agree at the ends. The attention temperature
//   sqrt(1/t) = 0.1 · ln(s) + 1                                     YaRN §3.4
// enters as mscale² in the softmax scale (Config::softmax_scale), not here.
//
// The official code builds the frequency table in fp32 (inference/model.py
// precompute_freqs_cis) and so does HF (its rotary embedding casts to float);
// dsv3 does the same whatever the compute scalar: inverse frequencies, the
// angle pos * inv_freq and cos/sin are fp32 values. Only the rotation itself
// runs in T.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "config.hpp"

namespace dsv3 {

namespace rope_detail {
constexpr double kPi = 3.14159265358979323846;

// Pair index (in units of dimensions) whose frequency makes `num_rotations`
// turns over the original context: solve L0/λ = rot for the dimension,
// dim · ln(L0 / (2π·rot)) / (2 ln base).
inline double correction_dim(double num_rotations, int64_t dim, double base, double max_pos) {
  return double(dim) * std::log(max_pos / (num_rotations * 2.0 * kPi)) / (2.0 * std::log(base));
}
}  // namespace rope_detail

// inv_freq[i], i in [0, d/2): fp32. With YaRN, the interpolated frequency f/s
// and the original f are blended by a linear ramp between the correction
// dimensions of beta_fast and beta_slow: f/s·(1−m) + f·m, m = 1 − ramp.
// Always applied when rope_scaling is yarn (the HF/MLX rule; the official code
// also gates it on max_seq_len > original_max_position_embeddings).
// `yarn_on` = false reproduces OFF's gate (Variants::yarn "official" with
// max_seq_len <= original): plain RoPE frequencies.
inline std::vector<float> rope_inv_freq(const Config& c, bool yarn_on = true) {
  const int64_t d = c.qk_rope_head_dim;
  std::vector<float> f(std::size_t(d / 2));
  for (int64_t i = 0; i < d / 2; ++i) {
    const float expo = float(2 * i) / float(d);
    f[std::size_t(i)] = 1.0f / std::pow(float(c.rope_theta), expo);
  }
  if (c.rope_scaling.type != "yarn" || !yarn_on) return f;
  const auto& y = c.rope_scaling;
  const double L0 = double(y.original_max_position_embeddings);
  double low = std::floor(rope_detail::correction_dim(y.beta_fast, d, c.rope_theta, L0));
  double high = std::ceil(rope_detail::correction_dim(y.beta_slow, d, c.rope_theta, L0));
  low = std::max(low, 0.0);
  high = std::min(high, double(d - 1));
  float lo = float(low), hi = float(high);
  if (lo == hi) hi += 0.001f;
  const float factor = float(y.factor);
  for (int64_t i = 0; i < d / 2; ++i) {
    float ramp = (float(i) - lo) / (hi - lo);
    ramp = std::min(1.0f, std::max(0.0f, ramp));
    const float smooth = 1.0f - ramp;                                // γ(r_i), YaRN §3.2
    const float fi = f[std::size_t(i)];
    f[std::size_t(i)] = fi / factor * (1.0f - smooth) + fi * smooth;  // h(θ_i) = (1 − γ) θ_i/s + γ θ_i
  }
  return f;
}

// cos/sin of one position: table[i] for pair i.
struct RopeRow {
  std::vector<float> cos, sin;
};

inline RopeRow rope_row(const std::vector<float>& inv_freq, int64_t pos) {
  RopeRow r;
  r.cos.resize(inv_freq.size());
  r.sin.resize(inv_freq.size());
  for (std::size_t i = 0; i < inv_freq.size(); ++i) {
    const float angle = float(pos) * inv_freq[i];  // torch.outer in fp32
    r.cos[i] = std::cos(angle);
    r.sin[i] = std::sin(angle);
  }
  return r;
}

// RoPE(·) of eqs. (3) and (8): rotates one head's rope part x[0..d) in place,
// pair (x_a, x_b) at angle pos·θ_i to (x_a cos − x_b sin, x_a sin + x_b cos).
// Interleaved (official, HF rope_interleave=true): pairs (2i, 2i+1).
// Otherwise (NeoX style): pairs (i, i + d/2).
template <class T>
inline void rope_apply(T* x, int64_t d, const RopeRow& r, bool interleave) {
  const int64_t h = d / 2;
  for (int64_t i = 0; i < h; ++i) {
    const int64_t a = interleave ? 2 * i : i, b = interleave ? 2 * i + 1 : i + h;
    const T c = T(r.cos[std::size_t(i)]), s = T(r.sin[std::size_t(i)]);
    const T x0 = x[a], x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
  }
}

}  // namespace dsv3
