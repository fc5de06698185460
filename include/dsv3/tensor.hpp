// dsv3/tensor.hpp — the activations that cross the backend seam.
//
// Mat<T> is a row-major [rows, cols] xtensor of the compute scalar T (float or
// double): the host form, which the CPU and reference backends compute on.
// Act<T> is what every op of the seam takes and returns: a [rows, cols]
// activation held either on the host (an owned Mat, or a non-owning view of
// one) or by a backend in its own memory (an opaque handle that only that
// backend reads; a GPU buffer, say). The model's residual stream is an Act,
// so it stays wherever the backend running the ops keeps it.
// This header is the one place the model's code names xtensor; it carries no
// BLAS, no threads and no kernels, so a backend compiled outside include/ can
// include it without the CPU implementation.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>

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
template <class T>
class Backend;

template <class T>
class Act {
 public:
  Act() = default;
  // Host, owned: takes the matrix.
  Act(Mat<T>&& m) : owned_(std::make_shared<Mat<T>>(std::move(m))), rows_(dsv3::rows(*owned_)), cols_(dsv3::cols(*owned_)) {}
  // Host, a view of m (no copy): valid while m lives and is not resized.
  static Act view(const Mat<T>& m) {
    Act a;
    a.view_ = &m;
    a.rows_ = dsv3::rows(m);
    a.cols_ = dsv3::cols(m);
    return a;
  }
  // Held by `owner` in its own memory; `handle` is that backend's business.
  Act(const Backend<T>* owner, std::shared_ptr<void> handle, int64_t rows, int64_t cols)
      : owner_(owner), handle_(std::move(handle)), rows_(rows), cols_(cols) {}

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  bool on_host() const { return owner_ == nullptr; }
  // The backend that holds it (nullptr: the host).
  const Backend<T>* owner() const { return owner_; }
  template <class H>
  H* handle() const { return static_cast<H*>(handle_.get()); }

  // The host matrix (an error for an activation a backend holds).
  const Mat<T>& host() const;
  // The host matrix, writable: a view is copied first (copy on write).
  Mat<T>& host_mut();
  // As a host matrix: moved out when owned, copied from a view, downloaded
  // (Backend::download) when a backend holds it.
  Mat<T> to_host() &&;

 private:
  const Backend<T>* owner_ = nullptr;
  std::shared_ptr<Mat<T>> owned_;
  const Mat<T>* view_ = nullptr;
  std::shared_ptr<void> handle_;
  int64_t rows_ = 0, cols_ = 0;
};

// A linear on a host matrix (the CPU kernels' linear_many).
template <class T>
struct MatJob {
  const Mat<T>* x;   // [n, in]
  const Linear* w;   // [out, in]
};

// One of several independent linears y = x · Wᵀ run together (Backend::linear_many).
template <class T>
struct LinearJob {
  const Act<T>* x;   // [n, in]
  const Linear* w;   // [out, in]
};

}  // namespace dsv3
