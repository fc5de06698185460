// `dsv3 compare A B`: where and why do two traces differ?
//
// A is the reference (usually dsv3), B the engine under test. For every
// tensor present in both, in A's forward order: max abs / rel error, NMSE,
// cosine, DeepGEMM's calc_diff; for logits also KL(P_A || P_B) and top-1/top-5
// agreement. Expert ids must match exactly; the first (layer, token) whose
// expert set differs is reported with the near-tie margin between A's k-th
// and (k+1)-th candidates. Exit code 1 past tolerance (or routing differs).
#pragma once

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <dsv3/formats/io.hpp>
#include <dsv3/tools/compare.hpp>

namespace dsv3_cli {

using namespace dsv3;

inline std::string fmt(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3e", v);
  return b;
}

inline std::string html_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;"; else if (c == '>') o += "&gt;"; else if (c == '&') o += "&amp;"; else o += c;
  }
  return o;
}

// Per-layer worst NMSE as an inline SVG line plot (log10 scale).
inline std::string svg_plot(const std::vector<CompareRow>& rows, int64_t first_bad_layer, double tol_nmse) {
  std::map<int64_t, double> worst;
  for (const auto& r : rows)
    if (r.a->layer >= 0 && !is_index_trace(r.a->name)) worst[r.a->layer] = std::max(worst[r.a->layer], r.s.nmse);
  if (worst.empty()) return "<p>(no per-layer tensors)</p>";
  const double W = 720, H = 260, L = 60, B = 30;
  const int64_t nl = worst.rbegin()->first + 1;
  auto x = [&](int64_t l) { return L + (W - L - 20) * (nl > 1 ? double(l) / double(nl - 1) : 0.5); };
  auto y = [&](double v) {
    double lv = std::log10(std::max(v, 1e-20));
    lv = std::max(-20.0, std::min(2.0, lv));
    return 10 + (H - B - 10) * (2.0 - lv) / 22.0;
  };
  std::ostringstream o;
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H << "'>";
  o << "<rect x='0' y='0' width='" << W << "' height='" << H << "' fill='white' stroke='#ccc'/>";
  for (int e = 2; e >= -20; e -= 4)
    o << "<line x1='" << L << "' x2='" << W - 20 << "' y1='" << y(std::pow(10, e)) << "' y2='" << y(std::pow(10, e))
      << "' stroke='#eee'/><text x='4' y='" << y(std::pow(10, e)) + 4 << "' font-size='11'>1e" << e << "</text>";
  if (tol_nmse > 0)
    o << "<line x1='" << L << "' x2='" << W - 20 << "' y1='" << y(tol_nmse) << "' y2='" << y(tol_nmse)
      << "' stroke='orange' stroke-dasharray='4'/><text x='" << W - 150 << "' y='" << y(tol_nmse) - 4
      << "' font-size='11' fill='orange'>tolerance</text>";
  o << "<polyline fill='none' stroke='steelblue' stroke-width='2' points='";
  for (auto& [l, v] : worst) o << x(l) << "," << y(v) << " ";
  o << "'/>";
  for (auto& [l, v] : worst)
    o << "<circle cx='" << x(l) << "' cy='" << y(v) << "' r='" << (l == first_bad_layer ? 6 : 3) << "' fill='"
      << (l == first_bad_layer ? "red" : "steelblue") << "'><title>layer " << l << ": worst NMSE " << fmt(v)
      << "</title></circle><text x='" << x(l) - 4 << "' y='" << H - 10 << "' font-size='11'>" << l << "</text>";
  o << "<text x='" << W / 2 - 40 << "' y='" << H - 0 << "' font-size='11'>layer</text></svg>";
  return o.str();
}

inline int run_compare(const std::string& pa, const std::string& pb, const std::string& preset,
                       const std::string& report, const std::string& json_out) {
  const Tolerance tol = tolerance_preset(preset);
  const auto A = read_trace(pa), B = read_trace(pb);
  const CompareResult res = compare_traces(A, B, tol);
  const std::vector<CompareRow>& rows = res.rows;
  const std::vector<std::string>& only_a = res.only_a;
  const RoutingDiff& rd = res.routing;
  const CompareRow* first_bad = res.first_bad;
  const bool ok = res.ok;

  // terminal summary
  std::printf("dsv3 compare  A=%s  B=%s  tolerance=%s\n  (%s)\n", pa.c_str(), pb.c_str(), tol.name.c_str(),
              tol.source.c_str());
  std::printf("%-36s %10s %10s %10s %10s %10s  %s\n", "tensor", "max_abs", "max_rel", "nmse", "cosine", "calc_diff", "");
  for (const auto& r : rows) {
    std::printf("%-36s %10s %10s %10s %10s %10s  %s%s\n", r.a->key.c_str(), fmt(r.s.max_abs).c_str(),
                fmt(r.s.max_rel).c_str(), fmt(r.s.nmse).c_str(), fmt(r.s.cosine).c_str(), fmt(r.s.calc_diff).c_str(),
                r.pass ? "ok" : "FAIL", r.note.empty() ? "" : (" (" + r.note + ")").c_str());
    if (r.s.is_logits)
      std::printf("%-36s KL mean %s max %s   top-1 %.4f   top-5 %.4f\n", "", fmt(r.s.kl_mean).c_str(),
                  fmt(r.s.kl_max).c_str(), r.s.top1, r.s.top5);
  }
  for (const auto& k : only_a) std::printf("%-36s only in A\n", k.c_str());
  if (first_bad)
    std::printf("\nfirst tensor past tolerance (forward order): %s (layer %lld)\n", first_bad->a->key.c_str(),
                (long long)first_bad->a->layer);
  if (rd.found) {
    std::printf("routing differs first at layer %lld, token position %lld: A experts [", (long long)rd.layer,
                (long long)rd.token);
    for (std::size_t i = 0; i < rd.ids_a.size(); ++i) std::printf("%s%d", i ? "," : "", rd.ids_a[i]);
    std::printf("] vs B [");
    for (std::size_t i = 0; i < rd.ids_b.size(); ++i) std::printf("%s%d", i ? "," : "", rd.ids_b[i]);
    std::printf("]; A's margin between its k-th and (k+1)-th biased score: %s\n", fmt(rd.margin).c_str());
  }
  std::printf("%s\n", ok ? "PASS" : "FAIL");

  const nlohmann::json j = compare_json(res, pa, pb);
  if (!json_out.empty()) write_file_atomic(json_out, j.dump(2) + "\n");

  if (!report.empty()) {
    std::ostringstream h;
    h << "<!doctype html><html><head><meta charset='utf-8'><title>dsv3 compare</title><style>"
         "body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;font-family:monospace;font-size:12px}"
         ".fail{background:#fdd}.ok{background:#efe}</style></head><body>";
    h << "<h1>dsv3 compare: " << (ok ? "PASS" : "FAIL") << "</h1><p>A (reference): " << html_escape(pa)
      << "<br>B: " << html_escape(pb) << "<br>tolerance <b>" << tol.name << "</b>: " << html_escape(tol.source) << "</p>";
    if (first_bad)
      h << "<p><b>First tensor past tolerance:</b> " << html_escape(first_bad->a->key) << "</p>";
    if (rd.found) {
      h << "<p><b>Routing differs first</b> at layer " << rd.layer << ", token position " << rd.token << ": A [";
      for (std::size_t i = 0; i < rd.ids_a.size(); ++i) h << (i ? "," : "") << rd.ids_a[i];
      h << "] vs B [";
      for (std::size_t i = 0; i < rd.ids_b.size(); ++i) h << (i ? "," : "") << rd.ids_b[i];
      h << "], A's near-tie margin " << fmt(rd.margin) << "</p>";
    }
    h << "<h2>Worst NMSE per layer</h2>" << svg_plot(rows, first_bad ? first_bad->a->layer : -1, tol.nmse);
    h << "<h2>Tensors (forward order)</h2><table><tr><th>tensor</th><th>max_abs</th><th>max_rel</th><th>nmse</th>"
         "<th>cosine</th><th>calc_diff</th><th></th></tr>";
    for (const auto& r : rows)
      h << "<tr class='" << (r.pass ? "ok" : "fail") << "'><td>" << html_escape(r.a->key) << "</td><td>" << fmt(r.s.max_abs)
        << "</td><td>" << fmt(r.s.max_rel) << "</td><td>" << fmt(r.s.nmse) << "</td><td>" << fmt(r.s.cosine) << "</td><td>"
        << fmt(r.s.calc_diff) << "</td><td>" << (r.pass ? "ok" : "FAIL " + html_escape(r.note)) << "</td></tr>";
    h << "</table></body></html>\n";
    write_file_atomic(report, h.str());
  }
  return ok ? 0 : 1;
}

}  // namespace dsv3_cli
