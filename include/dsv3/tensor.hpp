// dsv3/tensor.hpp — the activation type every op takes and returns.
//
// Mat<T> is a row-major [rows, cols] xtensor of the compute scalar T (float or
// double). This header is the one place the model's code names xtensor; it
// carries no BLAS, no threads and no kernels, so a backend compiled outside
// include/ can include it without the CPU implementation.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include <xtensor/xtensor.hpp>

namespace dsv3 {

template <class T>
using Mat = xt::xtensor<T, 2>;

template <class T>
inline Mat<T> empty(int64_t rows, int64_t cols) {
  return Mat<T>::from_shape({std::size_t(rows), std::size_t(cols)});
}

template <class T>
inline Mat<T> zeros(int64_t rows, int64_t cols) {
  Mat<T> m = empty<T>(rows, cols);
  m.fill(T(0));
  return m;
}

template <class T>
inline int64_t rows(const Mat<T>& m) { return int64_t(m.shape()[0]); }
template <class T>
inline int64_t cols(const Mat<T>& m) { return int64_t(m.shape()[1]); }

// Rows [r0, r1) of x, as a new matrix.
template <class T>
inline Mat<T> take_rows(const Mat<T>& x, int64_t r0, int64_t r1) {
  Mat<T> y = empty<T>(r1 - r0, cols(x));
  std::copy(x.data() + r0 * cols(x), x.data() + r1 * cols(x), y.data());
  return y;
}
template <class T>
inline Mat<T> take_row(const Mat<T>& x, int64_t r) { return take_rows(x, r, r + 1); }

// Columns [c0, c0 + width) of x, as a new matrix.
template <class T>
inline Mat<T> take_cols(const Mat<T>& x, int64_t c0, int64_t width) {
  Mat<T> y = empty<T>(rows(x), width);
  for (int64_t i = 0; i < rows(x); ++i) std::copy_n(x.data() + i * cols(x) + c0, width, y.data() + i * width);
  return y;
}

struct Linear;

// One of several independent linears y = x · Wᵀ run together (Backend::linear_many).
template <class T>
struct LinearJob {
  const Mat<T>* x;   // [n, in]
  const Linear* w;   // [out, in]
};

}  // namespace dsv3
