// dsv3/trace.hpp — the observation hook of the forward pass.
//
// The forward pass calls `trace.emit(name, layer, rows, cols, data)` at named
// points (e.g. "attn_norm", "router_scores", "topk_ids"; layer −1 for global
// tensors). With no sink installed `enabled()` is false and nothing is copied:
// tracing costs one branch per point when off.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace dsv3 {

struct TraceRecord {
  std::string name;
  int64_t layer = -1;
  int64_t start_pos = 0;       // position of row 0
  std::vector<int64_t> shape;  // [rows, cols]
  std::vector<double> data;    // row-major
};

class Trace {
 public:
  using Sink = std::function<void(TraceRecord&&)>;
  // `filter(name)` says which names to keep (default: all).
  explicit Trace(Sink sink = nullptr, std::function<bool(const std::string&)> filter = nullptr)
      : sink_(std::move(sink)), filter_(std::move(filter)) {}

  bool enabled() const { return bool(sink_); }

  template <class V>
  void emit(const char* name, int64_t layer, int64_t start_pos, int64_t rows, int64_t cols,
            const V* data) const {
    if (!sink_) return;
    if (filter_ && !filter_(name)) return;
    TraceRecord r;
    r.name = name;
    r.layer = layer;
    r.start_pos = start_pos;
    r.shape = {rows, cols};
    r.data.assign(data, data + rows * cols);
    sink_(std::move(r));
  }

  // Emits columns [col0, col0 + width) of every head block of `stride`
  // columns of a [rows, heads * stride] activation as [rows, heads * width]
  // (e.g. the q_pe part of each head's [q_nope | q_pe]).
  template <class V>
  void emit_heads(const char* name, int64_t layer, int64_t start_pos, int64_t rows, int64_t heads,
                  int64_t stride, int64_t col0, int64_t width, const V* data) const {
    if (!sink_ || (filter_ && !filter_(name))) return;
    std::vector<V> part(static_cast<std::size_t>(rows * heads * width));
    for (int64_t i = 0; i < rows * heads; ++i)
      std::copy_n(data + i * stride + col0, width, part.data() + i * width);
    emit(name, layer, start_pos, rows, heads * width, part.data());
  }

 private:
  Sink sink_;
  std::function<bool(const std::string&)> filter_;
};

}  // namespace dsv3
