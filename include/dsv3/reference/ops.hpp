// dsv3/reference/ops.hpp — the model's elementary ops, written as the
// definition of correct: plain loops in the compute scalar T, one step a line,
// no threads, no SIMD, no blocking. The CPU backend (cpu/) computes the same
// things faster and is tested op by op against these (tests/test_backend_ops.cpp).
//
// Shapes use the legend in config.hpp (n tokens in the call, d = hidden_size, …).
// Engine-emulation knobs (Variants) appear only through the named helpers
// round_act / round_act_value (variants.hpp) and `dequant_row`; with the
// default Variants every one of them is the identity and what is left is the
// official inference/model.py math.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../error.hpp"
#include "../rope.hpp"
#include "../tensor.hpp"
#include "../variants.hpp"
#include "../weights.hpp"

namespace dsv3::reference {

template <class T>
inline T silu(T a) { return a / (T(1) + std::exp(-a)); }

template <class T>
inline T sigmoid(T a) { return T(1) / (T(1) + std::exp(-a)); }

// In-place softmax over p[0, valid); p[valid, len) are masked positions
// (−inf before the softmax) and become 0. The max is subtracted first, as
// torch.softmax does.
template <class T>
inline void softmax_masked(T* p, int64_t len, int64_t valid) {
  T mx = -INFINITY;
  for (int64_t j = 0; j < valid; ++j) mx = std::max(mx, p[j]);
  T sum = 0;
  for (int64_t j = 0; j < valid; ++j) {
    p[j] = std::exp(p[j] - mx);
    sum += p[j];
  }
  const T inv = T(1) / sum;
  for (int64_t j = 0; j < valid; ++j) p[j] *= inv;
  for (int64_t j = valid; j < len; ++j) p[j] = T(0);
}

// Row o of a stored weight as T (its format's own dequantisation, formats/
// weights.hpp), rounded to bf16 when the fp8_dequant_bf16 knob asks for the
// official weight_dequant's bf16 output.
template <class T>
inline void dequant_row(const Linear& W, int64_t o, const Variants& v, T* row) {
  W.decode_rows(o, o + 1, row);
  round_bf16_if(v.fp8_dequant_bf16 && W.is_fp8(), row, row + W.in());
}

// Official gemm_impl = "fp8" (Variants::fp8_w8a8, docs/semantics.md §9.3–9.4):
// each row of x is quantised in 1×128 blocks along K (amax clamped to 1e-4,
// s = amax / 448, e4m3 round-to-nearest-even), and each K block's fp8 × fp8
// dot is accumulated exactly, then added to an fp32 sum times both block
// scales (kernel.py act_quant_kernel, fp8_gemm_kernel).
template <class T>
inline Mat<T> linear_w8a8(const Mat<T>& x, const Linear& W) {
  const Linear::Fp8Blocks& f = *W.fp8();
  const int64_t n = rows(x), K = W.in(), O = W.out(), bc = f.block_cols, nb = ceil_div(K, bc);
  std::vector<float> xq(static_cast<std::size_t>(n * K)), sx(static_cast<std::size_t>(n * nb));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t k0 = b * bc, k1 = std::min(K, k0 + bc);
      float amax = 0;
      for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(float(x(i, k))));
      const float s = std::max(amax, 1e-4f) / 448.0f;
      sx[std::size_t(i * nb + b)] = s;
      for (int64_t k = k0; k < k1; ++k)
        xq[std::size_t(i * K + k)] = fp8_e4m3_to_f32(f32_to_fp8_e4m3(float(x(i, k)) / s));
    }
  Mat<T> y = empty<T>(n, O);
  std::vector<float> wq(static_cast<std::size_t>(K));
  const int64_t sc = f.scale_inv.shape[1];
  for (int64_t o = 0; o < O; ++o) {
    decode_elements(W.weight.data + std::size_t(o * K), DType::F8_E4M3, K, wq.data());
    for (int64_t i = 0; i < n; ++i) {
      float acc = 0;
      for (int64_t b = 0; b < nb; ++b) {
        double part = 0;  // fp8 × fp8 products and their block sum are exact in double
        for (int64_t k = b * bc; k < std::min(K, (b + 1) * bc); ++k)
          part += double(xq[std::size_t(i * K + k)]) * double(wq[std::size_t(k)]);
        acc += float(part) * sx[std::size_t(i * nb + b)] * float(f.scale_inv.at((o / f.block_rows) * sc + b));
      }
      y(i, o) = T(acc);
    }
  }
  return y;
}

// y[n, out] = x[n, in] · Wᵀ  (nn.Linear without bias; W in any stored format).
template <class T>
inline Mat<T> linear(const Mat<T>& x, const Linear& W, const Variants& v = {}) {
  const int64_t n = rows(x), K = W.in(), O = W.out();
  if (cols(x) != K) fail("linear '", W.name(), "': input has ", cols(x), " columns, expected ", K);
  if (v.fp8_w8a8 && W.is_fp8()) {
    Mat<T> y = linear_w8a8(x, W);
    round_act(v, y);
    return y;
  }
  Mat<T> y = empty<T>(n, O);
  std::vector<T> w(static_cast<std::size_t>(K));
  for (int64_t o = 0; o < O; ++o) {
    dequant_row(W, o, v, w.data());             // W[o, :]
    for (int64_t i = 0; i < n; ++i) {
      T acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += x(i, k) * w[std::size_t(k)];
      y(i, o) = acc;                            // y[i, o] = Σ_k x[i, k] W[o, k]
    }
  }
  round_act(v, y);
  return y;
}

// RMSNorm of one row (docs/semantics.md §4): y = w ⊙ x / sqrt(mean(x²) + eps).
// The mean of squares is accumulated in double. With bf16 activations the
// "hf" rounding (D12) rounds x / rms to bf16 before the weight multiply.
template <class T>
inline void rms_norm_row(const T* x, const T* w, int64_t d, double eps, const Variants& v, T* y) {
  double ss = 0;
  for (int64_t j = 0; j < d; ++j) ss += double(x[j]) * double(x[j]);
  const T inv = T(1.0 / std::sqrt(ss / double(d) + eps));    // 1 / rms(x)
  const bool hf = v.bf16_activations && v.rmsnorm_rounding == RmsNormRounding::hf;
  for (int64_t j = 0; j < d; ++j) {
    if (hf) y[j] = T(round_bf16(float(w[j] * T(round_bf16(float(x[j] * inv))))));
    else    y[j] = w[j] * (x[j] * inv);
  }
}

// The norm's weight as T, checked against the row width d.
template <class T>
inline std::vector<T> rms_norm_weight(const TensorView& weight, int64_t d) {
  if (weight.numel() != d) fail("rms_norm '", weight.name, "': weight has ", weight.numel(), " elements, expected ", d);
  return decode_vector<T>(weight);
}

template <class T>
inline Mat<T> rms_norm(const Mat<T>& x, const TensorView& weight, double eps, const Variants& v = {}) {
  const int64_t n = rows(x), d = cols(x);
  const std::vector<T> w = rms_norm_weight<T>(weight, d);
  Mat<T> y = empty<T>(n, d);
  for (int64_t i = 0; i < n; ++i) rms_norm_row(&x(i, 0), w.data(), d, eps, v, &y(i, 0));
  round_act(v, y);
  return y;
}

// x[n, d] = E[ids]: embedding rows, looked up (no scaling).
template <class T>
inline Mat<T> embed(const Linear& table, const std::vector<int32_t>& ids, const Variants& v = {}) {
  const int64_t n = int64_t(ids.size()), d = table.in();
  Mat<T> h = empty<T>(n, d);
  for (int64_t i = 0; i < n; ++i) table.decode_rows(ids[std::size_t(i)], ids[std::size_t(i)] + 1, &h(i, 0));
  round_act(v, h);
  return h;
}

// RoPE on columns [col0, col0 + width) of every head block of `stride`
// columns; row i is at the position whose cos/sin are rope[i] (rope.hpp).
template <class T>
inline void rope(Mat<T>& x, int64_t col0, int64_t width, int64_t stride, const std::vector<RopeRow>& rope,
                 bool interleave) {
  for (int64_t i = 0; i < rows(x); ++i)
    for (int64_t c = col0; c + width <= cols(x); c += stride) rope_apply(&x(i, c), width, rope[std::size_t(i)], interleave);
}

// SwiGLU's gate: silu(g) ⊙ u, one element (docs/semantics.md §6). With bf16
// activations silu(g) is rounded before the product, as a bf16 torch graph does.
template <class T>
inline T swiglu(T g, T u, const Variants& v) {
  return round_act_value(v, silu(g)) * u;
}

}  // namespace dsv3::reference
