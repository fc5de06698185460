// dsv3/tools/trace_file.hpp — named traces on disk, and their comparison.
//
// A trace file is a safetensors file: per-layer tensors are named
// "layers.{L}.{name}", global ones "{name}" (names: docs/trace-names.md),
// each [tokens, width] F32 (I32 for expert/group ids), rows = positions
// [start, end). Its __metadata__ holds "dsv3_manifest": a JSON list in
// forward order of {key, name, layer, shape, positions: [start, end], dtype}.
// Another engine's dumper writes the same file (python -m dsv3.dump hf: python/dsv3/dump/).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../error.hpp"
#include "../formats/json.hpp"
#include "../formats/safetensors.hpp"
#include "../trace.hpp"

namespace dsv3 {

inline bool is_index_trace(const std::string& name) { return name == "topk_ids" || name == "topk_groups"; }

inline std::string trace_key(const std::string& name, int64_t layer) {
  return layer < 0 ? name : "layers." + std::to_string(layer) + "." + name;
}

// Collects records of one or several forward calls; rows of the same
// (name, layer) are concatenated in call order.
class TraceCollector {
 public:
  Trace::Sink sink() {
    return [this](TraceRecord&& r) {
      const std::string key = trace_key(r.name, r.layer);
      auto it = index_.find(key);
      if (it == index_.end()) {
        index_[key] = entries_.size();
        entries_.push_back(std::move(r));
        return;
      }
      TraceRecord& e = entries_[it->second];
      if (e.shape[1] != r.shape[1]) fail("trace: '", key, "' changed width between calls");
      e.shape[0] += r.shape[0];
      e.data.insert(e.data.end(), r.data.begin(), r.data.end());
    };
  }
  const std::vector<TraceRecord>& entries() const { return entries_; }

  void write(const std::string& path, const nlohmann::json& extra_meta = nlohmann::json::object()) const {
    std::vector<TensorToWrite> ts;
    nlohmann::json manifest = nlohmann::json::array();
    for (const TraceRecord& r : entries_) {
      const std::string key = trace_key(r.name, r.layer);
      const bool ints = is_index_trace(r.name);
      const TraceRecord* rp = &r;
      ts.push_back({key, ints ? DType::I32 : DType::F32, r.shape, [rp, ints](uint8_t* o) {
        for (std::size_t i = 0; i < rp->data.size(); ++i) {
          if (ints) { const int32_t v = int32_t(rp->data[i]); std::memcpy(o + 4 * i, &v, 4); }
          else { const float v = float(rp->data[i]); std::memcpy(o + 4 * i, &v, 4); }
        }
      }});
      manifest.push_back({{"key", key}, {"name", r.name}, {"layer", r.layer}, {"shape", r.shape},
                          {"positions", {r.start_pos, r.start_pos + r.shape[0]}},
                          {"dtype", ints ? "I32" : "F32"}});
    }
    nlohmann::json meta = {{"format", "dsv3-trace"}, {"dsv3_manifest", manifest.dump()}};
    for (auto it = extra_meta.begin(); it != extra_meta.end(); ++it)
      meta[it.key()] = it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
    write_safetensors(path, ts, meta);
  }

 private:
  std::vector<TraceRecord> entries_;
  std::map<std::string, std::size_t> index_;
};

// A trace read back: entries in manifest (forward) order.
struct TraceEntry {
  std::string key, name;
  int64_t layer = -1, start = 0;
  int64_t rows = 0, cols = 0;
  std::vector<double> data;
};

inline std::vector<TraceEntry> read_trace(const std::string& path) {
  SafetensorsFile f(path);
  const auto& md = f.metadata();
  if (!md.is_object() || !md.contains("dsv3_manifest") || !md["dsv3_manifest"].is_string())
    fail(path, ": not a dsv3 trace (no __metadata__.dsv3_manifest)");
  const nlohmann::json man = parse_json(md["dsv3_manifest"].get<std::string>(), path + ": dsv3_manifest");
  if (!man.is_array()) fail(path, ": dsv3_manifest must be a list");
  std::vector<TraceEntry> out;
  std::set<std::string> seen;  // a key listed twice would be read (and its memory held) twice
  for (const auto& m : man) {
    if (!m.is_object() || !m.contains("key") || !m["key"].is_string())
      fail(path, ": dsv3_manifest entry without a string 'key'");
    TraceEntry e;
    e.key = m["key"].get<std::string>();
    const std::string w = path + ": dsv3_manifest entry '" + e.key + "'";
    if (!seen.insert(e.key).second) fail(w, " is listed twice");
    if (m.contains("name") && !m["name"].is_string()) fail(w, ": 'name' must be a string");
    if (m.contains("layer") && !m["layer"].is_number_integer()) fail(w, ": 'layer' must be an integer");
    e.name = m.value("name", e.key);
    e.layer = m.value("layer", int64_t(-1));
    if (m.contains("positions")) {
      const auto& p = m["positions"];
      if (!p.is_array() || p.empty() || !p[0].is_number_integer() || p[0].get<int64_t>() < 0)
        fail(w, ": 'positions' must be [first, end) with a non-negative first position");
      e.start = p[0].get<int64_t>();
    }
    const TensorView& t = f.get(e.key);
    if (t.shape.size() != 2) fail(path, ": trace tensor '", e.key, "' must be 2-D [tokens, width]");
    if (t.shape[1] == 0) fail(path, ": trace tensor '", e.key, "' has width 0 (expected [tokens, width >= 1])");
    e.rows = t.shape[0];
    e.cols = t.shape[1];
    e.data.resize(std::size_t(t.numel()));
    for (int64_t i = 0; i < t.numel(); ++i) e.data[std::size_t(i)] = t.at(i);
    out.push_back(std::move(e));
  }
  return out;
}

// ---------------------------------------------------------------------------
// Metrics of B against the reference A.
//
// Non-finite values: the same infinity at the same position in A and B is
// agreement (masked vocabulary rows hold -inf in some engines); a NaN, or an
// infinity the other side lacks, is counted in `nonfinite` and fails the
// tensor whatever the tolerance (NaN is never within tolerance). The sums run
// on values divided by the largest finite magnitude, so huge finite values
// cannot overflow them (nmse, cosine and calc_diff do not depend on scale).
struct DiffStats {
  double max_abs = 0, max_rel = 0, nmse = 0, cosine = 1, calc_diff = 0;
  int64_t nonfinite = 0;  // positions holding NaN, or an infinity not matched in the other trace
  // logits only (KL is NaN for a row whose maximum is not finite)
  double kl_mean = 0, kl_max = 0, top1 = 1, top5 = 1;
  bool is_logits = false;
};

inline DiffStats diff_stats(const TraceEntry& a, const TraceEntry& b) {
  DiffStats s;
  double scale = 0;
  for (std::size_t i = 0; i < a.data.size(); ++i) {
    if (std::isfinite(a.data[i])) scale = std::max(scale, std::fabs(a.data[i]));
    if (std::isfinite(b.data[i])) scale = std::max(scale, std::fabs(b.data[i]));
  }
  if (scale == 0) scale = 1;
  double sab = 0, saa = 0, sbb = 0, sdd = 0, amax = 0;
  for (std::size_t i = 0; i < a.data.size(); ++i) {
    const double x = a.data[i], y = b.data[i];
    if (!std::isfinite(x) || !std::isfinite(y)) {
      if (x != y) ++s.nonfinite;  // NaN != NaN, so every NaN lands here
      continue;
    }
    s.max_abs = std::max(s.max_abs, std::fabs(x - y));
    amax = std::max(amax, std::fabs(x));
    const double xs = x / scale, ys = y / scale, d = xs - ys;
    sab += xs * ys; saa += xs * xs; sbb += ys * ys; sdd += d * d;
  }
  s.max_rel = amax > 0 ? s.max_abs / amax : (s.max_abs > 0 ? INFINITY : 0);
  s.nmse = saa > 0 ? sdd / saa : (sdd > 0 ? INFINITY : 0);
  s.cosine = (saa > 0 && sbb > 0) ? sab / std::sqrt(saa * sbb) : (saa == sbb ? 1 : 0);
  // DeepGEMM tests' calc_diff: 1 − 2·Σxy / Σ(x² + y²)
  s.calc_diff = (saa + sbb) > 0 ? 1 - 2 * sab / (saa + sbb) : 0;
  if (s.nonfinite) s.max_abs = s.max_rel = s.nmse = INFINITY;
  if (a.name == "logits") {
    s.is_logits = true;
    double kl_sum = 0;
    int64_t agree1 = 0;
    double agree5 = 0;
    // Ranking order for top-k: NaN below everything, ties by lower id, so the
    // order is strict and weak whatever the data.
    auto rank = [](double v) { return v != v ? -INFINITY : v; };
    for (int64_t r = 0; r < a.rows; ++r) {
      const double* x = a.data.data() + r * a.cols;
      const double* y = b.data.data() + r * b.cols;
      double mx = -INFINITY, my = -INFINITY;
      for (int64_t v = 0; v < a.cols; ++v) { mx = std::max(mx, rank(x[v])); my = std::max(my, rank(y[v])); }
      double kl = NAN;  // KL(P_A || P_B); undefined unless both rows have a finite maximum
      if (std::isfinite(mx) && std::isfinite(my)) {
        double zx = 0, zy = 0;
        for (int64_t v = 0; v < a.cols; ++v) { zx += std::exp(x[v] - mx); zy += std::exp(y[v] - my); }
        kl = 0;
        for (int64_t v = 0; v < a.cols; ++v) {
          const double lp = x[v] - mx - std::log(zx), lq = y[v] - my - std::log(zy);
          if (lp == -INFINITY) continue;  // p = 0 adds nothing (0 · log 0 = 0)
          kl += std::exp(lp) * (lp - lq);
        }
      }
      kl_sum += kl;
      s.kl_max = (kl != kl || s.kl_max != s.kl_max) ? NAN : std::max(s.kl_max, kl);
      auto top = [&](const double* z, int k) {
        std::vector<int64_t> idx(static_cast<std::size_t>(a.cols));
        for (int64_t v = 0; v < a.cols; ++v) idx[std::size_t(v)] = v;
        std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int64_t p, int64_t q) {
          const double zp = rank(z[p]), zq = rank(z[q]);
          return zp > zq || (zp == zq && p < q);
        });
        idx.resize(std::size_t(k));
        return idx;
      };
      const int k = int(std::min<int64_t>(5, a.cols));
      auto tx = top(x, k), ty = top(y, k);
      agree1 += tx[0] == ty[0];
      int common = 0;
      for (auto p : tx) common += std::count(ty.begin(), ty.end(), p) > 0;
      agree5 += double(common) / k;
    }
    s.kl_mean = a.rows ? kl_sum / double(a.rows) : 0;
    s.top1 = a.rows ? double(agree1) / double(a.rows) : 1;
    s.top5 = a.rows ? agree5 / double(a.rows) : 1;
  }
  return s;
}

// Tolerance presets. Each says where its numbers come from.
struct Tolerance {
  std::string name, source;
  double nmse = 0;       // per tensor, float tensors
  double calc_diff = 1;  // per tensor, float tensors
  double top1 = 1;       // logits: fraction of positions whose argmax agrees
};

inline Tolerance tolerance_preset(const std::string& name) {
  if (name == "exact") return {name, "bitwise identity", 0.0, 0.0, 1.0};
  if (name == "f32")
    return {name,
            "NMSE <= 1e-7: llama.cpp tests/test-backend-ops.cpp default max_nmse_err; dsv3 vs HF "
            "transformers f32 on the tiny goldens is ~1e-11",
            1e-7, 1.0, 1.0};
  if (name == "bf16")
    return {name,
            "NMSE <= 1e-3: bf16 unit roundoff 2^-8 gives ~1.5e-5 NMSE per rounding, accumulated over "
            "the ~30 roundings of a layer and a few layers; top-1 >= 0.99",
            1e-3, 1.0, 0.99};
  if (name == "fp8")
    return {name,
            "calc_diff <= 1e-3: DeepGEMM tests/test_core.py bound for FP8 block-scaled GEMMs; top-1 >= 0.95",
            1.0, 1e-3, 0.95};
  fail("--tol: unknown preset '", name, "' (expected exact, f32, bf16 or fp8)");
}

}  // namespace dsv3
