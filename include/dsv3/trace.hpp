// dsv3/trace.hpp — the observation hook of the forward pass.
//
// The forward pass calls `trace.emit(name, layer, rows, cols, data)` at named
// points (e.g. "attn_norm", "router_scores", "topk_ids"; layer −1 for global
// tensors). With no sink installed `enabled()` is false and nothing is copied:
// tracing costs one branch per point when off.
#pragma once

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

 private:
  Sink sink_;
  std::function<bool(const std::string&)> filter_;
};

}  // namespace dsv3
