// dsv3/formats/checked.hpp — size arithmetic on numbers read from files, which cannot wrap.
//
// Shapes, data offsets and block sizes come from files an attacker may write.
// Every product that sizes memory or addresses bytes is computed here, where a
// result past 2^62 is refused instead of wrapping: a shape whose element count
// passes a cap but whose byte count (count x item size) wraps to 0 would
// otherwise be accepted with an empty span and read past the mapping.
#pragma once

#include <cstdint>
#include <vector>

namespace dsv3 {

constexpr uint64_t kMaxBytes = uint64_t(1) << 62;

// The byte size of a tensor, prod(shape) x item, in `out`; false if a dim is
// negative or the product of the non-zero dims times item passes 2^62. The
// non-zero dims are bounded even when another dim is 0, so that every partial
// product, in any order (TensorView::numel, strides), stays below 2^62.
inline bool checked_bytes(const std::vector<int64_t>& shape, uint64_t item, uint64_t& out) {
  uint64_t need = item;
  bool zero = false;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (d == 0) { zero = true; continue; }
    if (uint64_t(d) > kMaxBytes / need) return false;
    need *= uint64_t(d);
  }
  out = zero ? 0 : need;
  return true;
}

// ceil(a / b) for a >= 0, b > 0, without the (a + b - 1) that overflows for a
// huge b (a weight_block_size of 2^63 - 1, say).
inline int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }

}  // namespace dsv3
