// dsv3/tools/compare.hpp — where and why do two traces differ?
//
// A is the reference (usually dsv3), B the engine under test. For every
// tensor present in both, in A's forward order: max abs / rel error, NMSE,
// cosine, DeepGEMM's calc_diff; for logits also KL(P_A || P_B) and top-1/top-5
// agreement (trace_file.hpp diff_stats). Expert ids must match exactly; the
// first (layer, token) whose expert set differs is reported with the near-tie
// margin between A's k-th and (k+1)-th candidates. `dsv3 compare` prints and
// reports this result; the Python binding returns its JSON.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "trace_file.hpp"

namespace dsv3 {

struct CompareRow {
  const TraceEntry* a;
  const TraceEntry* b;
  DiffStats s;
  bool pass = true;
  std::string note;
};

struct RoutingDiff {
  bool found = false;
  int64_t layer = -1, token = -1;
  std::vector<int32_t> ids_a, ids_b;
  double margin = NAN;  // A's biased score of k-th minus (k+1)-th candidate
};

// Points into the two traces it was computed from: keep them alive.
struct CompareResult {
  Tolerance tol;
  std::vector<CompareRow> rows;     // A's forward order, tensors present in both
  std::vector<std::string> only_a;  // keys of A missing from B (each a failure)
  RoutingDiff routing;
  const CompareRow* first_bad = nullptr;
  bool ok = false;
};

inline CompareResult compare_traces(const std::vector<TraceEntry>& A, const std::vector<TraceEntry>& B,
                                    const Tolerance& tol) {
  CompareResult res;
  res.tol = tol;
  std::map<std::string, const TraceEntry*> amap, bmap;
  for (const auto& e : A) amap[e.key] = &e;
  for (const auto& e : B) bmap[e.key] = &e;
  for (const auto& a : A) {
    auto it = bmap.find(a.key);
    if (it == bmap.end()) { res.only_a.push_back(a.key); continue; }
    const TraceEntry& b = *it->second;
    CompareRow r{&a, &b, {}, true, ""};
    // Compare the common positions only (a decode trace may start later).
    if (a.cols != b.cols) {
      r.pass = false;
      r.note = "width " + std::to_string(a.cols) + " vs " + std::to_string(b.cols);
    } else if (a.start != b.start || a.rows != b.rows) {
      r.pass = false;
      r.note = "positions differ";
    } else {
      r.s = diff_stats(a, b);
      if (r.s.nonfinite) {
        r.pass = false;
        r.note = std::to_string(r.s.nonfinite) + " NaN or unmatched Inf";
      } else if (is_index_trace(a.name)) {
        r.pass = r.s.max_abs == 0;
        if (!r.pass) r.note = "different ids";
      } else if (a.name == "topk_margin") {
        // A difference of two close scores: its relative error is large by
        // nature. Reported, never judged (the ids themselves are).
        r.note = "informational";
      } else {
        r.pass = r.s.nmse <= tol.nmse && r.s.calc_diff <= tol.calc_diff && (!r.s.is_logits || r.s.top1 >= tol.top1);
      }
    }
    res.rows.push_back(r);
  }

  // Routing: first layer (forward order), then first token, whose expert set differs.
  RoutingDiff& rd = res.routing;
  for (const auto& r : res.rows) {
    if (r.a->name != "topk_ids" || r.pass || r.note != "different ids") continue;
    const int64_t k = r.a->cols;
    for (int64_t t = 0; t < r.a->rows && !rd.found; ++t) {
      std::vector<int32_t> x, y;
      for (int64_t j = 0; j < k; ++j) {
        x.push_back(int32_t(r.a->data[std::size_t(t * k + j)]));
        y.push_back(int32_t(r.b->data[std::size_t(t * k + j)]));
      }
      std::sort(x.begin(), x.end());
      std::sort(y.begin(), y.end());
      if (x == y) continue;
      rd = {true, r.a->layer, r.a->start + t, x, y, NAN};
      auto margin = amap.find(trace_key("topk_margin", r.a->layer));
      if (margin != amap.end() && margin->second->rows == r.a->rows) rd.margin = margin->second->data[std::size_t(t)];
    }
    if (rd.found) break;
  }
  for (const auto& r : res.rows)
    if (!r.pass) { res.first_bad = &r; break; }
  res.ok = !res.first_bad && res.only_a.empty() && !rd.found;
  return res;
}

// The machine-readable result (`dsv3 compare --json`, Python `dsv3.compare`).
inline nlohmann::json compare_json(const CompareResult& res, const std::string& a, const std::string& b) {
  nlohmann::json j = {{"a", a}, {"b", b}, {"tolerance", res.tol.name}, {"pass", res.ok},
                      {"tensors", nlohmann::json::array()}, {"only_in_a", res.only_a}};
  for (const auto& r : res.rows) {
    nlohmann::json t = {{"key", r.a->key}, {"layer", r.a->layer}, {"max_abs", r.s.max_abs}, {"max_rel", r.s.max_rel},
                        {"nmse", r.s.nmse}, {"cosine", r.s.cosine}, {"calc_diff", r.s.calc_diff},
                        {"nonfinite", r.s.nonfinite}, {"pass", r.pass}};
    if (!r.note.empty()) t["note"] = r.note;
    if (r.s.is_logits)
      t.update({{"kl_mean", r.s.kl_mean}, {"kl_max", r.s.kl_max}, {"top1", r.s.top1}, {"top5", r.s.top5}});
    j["tensors"].push_back(t);
  }
  if (res.first_bad) j["first_fail"] = res.first_bad->a->key;
  const RoutingDiff& rd = res.routing;
  if (rd.found)
    j["routing_diff"] = {{"layer", rd.layer}, {"token", rd.token}, {"a", rd.ids_a}, {"b", rd.ids_b},
                         {"margin", std::isnan(rd.margin) ? nlohmann::json() : nlohmann::json(rd.margin)}};
  return j;
}

}  // namespace dsv3
