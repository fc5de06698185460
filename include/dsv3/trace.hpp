// dsv3/trace.hpp — the observation and intervention hooks of the forward pass.
//
// The forward pass calls `trace.emit(name, layer, start_pos, rows, cols, data)`
// at named points (e.g. "attn_norm", "router_scores", "topk_ids"; layer −1 for
// global tensors; docs/trace-names.md lists them). A Sink receives a copy of
// each. An Editor (research: force a token's experts, zero a head, patch an
// activation) receives the value at the points the pass calls through
// `trace.edit` — the ones it reads again afterwards — and what the editor
// writes back is what the forward pass continues with, on every backend. With
// neither installed `enabled()` is false and nothing is copied: the hooks cost
// one branch per point when off.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "error.hpp"

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
  // Sees an editable point's value (as doubles) and may change it in place;
  // the shape must stay as it is.
  using Editor = std::function<void(TraceRecord&)>;
  // `filter(name)` says which names the sink keeps (default: all); the editor
  // sees every editable point.
  explicit Trace(Sink sink = nullptr, std::function<bool(const std::string&)> filter = nullptr,
                 Editor editor = nullptr)
      : sink_(std::move(sink)), filter_(std::move(filter)), editor_(std::move(editor)) {}

  bool enabled() const { return bool(sink_) || bool(editor_); }
  const Editor& editor() const { return editor_; }

  // An editable point: the editor (if any) may change data[rows·cols] in
  // place, then the sink sees the value the pass goes on with.
  template <class V>
  void edit(const char* name, int64_t layer, int64_t start_pos, int64_t rows, int64_t cols, V* data) const {
    if (editor_) {
      TraceRecord r = record(name, layer, start_pos, rows, cols, static_cast<const V*>(data));
      editor_(r);
      if (r.data.size() != std::size_t(rows * cols))
        fail("trace editor changed the size of '", name, "' (layer ", layer, "): ", r.data.size(), " values, expected ",
             rows * cols);
      for (int64_t i = 0; i < rows * cols; ++i) data[i] = V(r.data[std::size_t(i)]);
    }
    emit(name, layer, start_pos, rows, cols, static_cast<const V*>(data));
  }

  template <class V>
  void emit(const char* name, int64_t layer, int64_t start_pos, int64_t rows, int64_t cols,
            const V* data) const {
    if (!sink_) return;
    if (filter_ && !filter_(name)) return;
    sink_(record(name, layer, start_pos, rows, cols, data));
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
  template <class V>
  static TraceRecord record(const char* name, int64_t layer, int64_t start_pos, int64_t rows, int64_t cols,
                            const V* data) {
    TraceRecord r;
    r.name = name;
    r.layer = layer;
    r.start_pos = start_pos;
    r.shape = {rows, cols};
    r.data.assign(data, data + rows * cols);
    return r;
  }

  Sink sink_;
  std::function<bool(const std::string&)> filter_;
  Editor editor_;
};

}  // namespace dsv3
