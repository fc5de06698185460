// cli/cmd_checkpoint.hpp - the subcommands about a checkpoint directory:
// inspect (its tensor table against its config; a config alone: parameter
// counts) and inspect --check-weights. (make-model is wired in dsv3.cpp.)
#pragma once

#include "common.hpp"

namespace dsv3_cli {

// ---------------------------------------------------------------------------
// inspect --check-weights: every floating tensor scanned for NaN/Inf.
inline void run_check_weights(const std::string& dir) {
  Checkpoint ck(dir);
  const auto bad = check_weights(ck);
  for (const auto& r : bad) std::printf("%s\n", describe(r).c_str());  // one line per bad tensor
  if (!bad.empty())
    fail(dir, ": ", bad.size(), " tensor", bad.size() == 1 ? "" : "s", " hold NaN/Inf (first: '", bad[0].name, "')");
  std::printf("all %zu tensors finite\n", ck.names().size());
}

// ---------------------------------------------------------------------------
// Parameter counts of a config (weights.hpp parameter_counts).
inline void print_parameter_counts(const Config& c, bool with_mtp) {
  const ParameterCounts p = parameter_counts(c);
  std::printf("parameters: total %llu (%.3fB), active per token %llu (%.3fB); embedding + head %.3fB of each\n",
              (unsigned long long)p.total, double(p.total) / 1e9, (unsigned long long)p.active, double(p.active) / 1e9,
              double(p.embedding) / 1e9);
  if (with_mtp)
    std::printf("MTP module: %lld layer(s), %llu parameters (%.3fB, embedding and head copies included; %.3fB "
                "active per token)\n",
                (long long)c.num_nextn_predict_layers, (unsigned long long)p.mtp, double(p.mtp) / 1e9,
                double(p.mtp_active) / 1e9);
}

inline void run_inspect(const std::string& dir) {
  const Config c = Config::from_file(dir + "/config.json");
  if (!Checkpoint::present(dir)) {  // a config alone: what it implies
    std::printf("%s: config.json only (no model.safetensors or model.safetensors.index.json)\n", dir.c_str());
    print_parameter_counts(c, c.num_nextn_predict_layers > 0);
    return;
  }
  Checkpoint ck(dir);
  std::printf("%-64s %-8s %-18s %12s  %-22s %-26s %s\n", "tensor", "dtype", "shape", "bytes", "format", "status",
              "report");
  uint64_t bytes = 0, missing = 0;
  std::set<std::string> expected;
  // One stored tensor; `want` empty: a packed part whose shape binding checks.
  auto row = [&](const std::string& name, const std::vector<int64_t>& want, const std::string& format,
                 const std::string& symbol) {
    expected.insert(name);
    if (!ck.has(name)) {
      std::printf("%-64s %-8s %-18s %12s  %-22s %-26s %s\n", name.c_str(), "-", shape_str(want).c_str(), "-",
                  format.c_str(), "MISSING", symbol.c_str());
      ++missing;
      return;
    }
    const TensorView& t = ck.get(name);
    const bool ok = want.empty() || t.shape == want;
    std::printf("%-64s %-8s %-18s %12zu  %-22s %-26s %s\n", name.c_str(), dtype_name(t.dtype), shape_str(t.shape).c_str(),
                t.nbytes(), format.c_str(), ok ? "ok" : ("WRONG SHAPE, expected " + shape_str(want)).c_str(),
                symbol.c_str());
    bytes += t.nbytes();
    if (!ok) ++missing;
  };
  const QuantParams qp = quant_params(c.raw);
  // Linear modules (and the embedding and head, which MLX quantizes) as the
  // checkpoint stores them (weights.hpp stored_module: the one decision bind
  // also uses); norms, router and bias as plain tensors.
  auto module = [&](const TensorSpec& s) {
    const bool is_module = s.kind == TensorSpec::Linear || s.kind == TensorSpec::Embed || s.kind == TensorSpec::Head;
    if (!is_module) return row(s.name, s.shape, ck.has(s.name) ? dtype_name(ck.get(s.name).dtype) : "-", s.symbol);
    const std::string prefix = s.kind == TensorSpec::Linear ? s.name : s.name.substr(0, s.name.rfind(".weight"));
    const StoredModule sm = stored_module(ck, c, qp, {prefix, s.shape[0], s.shape[1], s.expert});
    for (const auto& part : sm.parts)
      if (!expected.count(part.name)) row(part.name, part.shape, sm.label, s.symbol);  // a stack: listed once
  };
  const bool has_mtp = c.num_nextn_predict_layers > 0 && ck.has(ModelWeights::mtp_marker(c));
  for (const TensorSpec& s : expected_tensors(c, has_mtp)) module(s);
  uint64_t extra = 0;
  for (const auto& name : ck.names())
    if (!expected.count(name)) {
      const TensorView& t = ck.get(name);
      const bool mtp = name.rfind("model.layers." + std::to_string(c.num_hidden_layers) + ".", 0) == 0;
      std::printf("%-64s %-8s %-16s %14zu  extra%s\n", name.c_str(), dtype_name(t.dtype),
                  shape_str(t.shape).c_str(), t.nbytes(),
                  mtp ? " (MTP layer of an incomplete or unconfigured MTP module)" : "");
      bytes += t.nbytes();
      ++extra;
    }
  std::printf("\nfiles: %zu   tensor bytes: %llu   missing/wrong: %llu   extra: %llu\n", ck.num_files(),
              (unsigned long long)bytes, (unsigned long long)missing, (unsigned long long)extra);
  print_parameter_counts(c, has_mtp);
  if (missing) fail(dir, ": ", missing, " tensor(s) missing or with the wrong shape (see the table)");
}

}  // namespace dsv3_cli
