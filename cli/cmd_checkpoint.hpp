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
  std::printf("%-64s %-8s %-18s %12s  %-22s %s\n", "tensor", "dtype", "shape", "bytes", "format", "status");
  uint64_t bytes = 0, missing = 0;
  std::set<std::string> expected;
  // One stored tensor; `want` empty: a packed part whose shape binding checks.
  auto row = [&](const std::string& name, const std::vector<int64_t>& want, const std::string& format) {
    expected.insert(name);
    if (!ck.has(name)) {
      std::printf("%-64s %-8s %-18s %12s  %-22s MISSING\n", name.c_str(), "-", shape_str(want).c_str(), "-",
                  format.c_str());
      ++missing;
      return;
    }
    const TensorView& t = ck.get(name);
    const bool ok = want.empty() || t.shape == want;
    std::printf("%-64s %-8s %-18s %12zu  %-22s %s\n", name.c_str(), dtype_name(t.dtype), shape_str(t.shape).c_str(),
                t.nbytes(), format.c_str(), ok ? "ok" : ("WRONG SHAPE, expected " + shape_str(want)).c_str());
    bytes += t.nbytes();
    if (!ok) ++missing;
  };
  const QuantParams qp = quant_params(c.raw);
  // How a module is stored: FP8 blocks, AWQ, MLX (plain, stacked experts,
  // split kv_b), or a plain float tensor.
  auto module = [&](const TensorSpec& s) {
    const std::string& m = s.name;
    const bool is_linear = s.kind == TensorSpec::Linear;
    const std::string base = is_linear ? m : m.substr(0, m.size() - 7);  // strip ".weight"
    auto mlx_of = [&](const std::string& b) {
      const MlxModuleQuant mq = mlx_module_quant(qp, b, true);
      return mlx_label(mq.bits, mq.group_size);
    };
    if (ck.has(base + ".qweight")) {
      const std::string f = awq_label(qp.group_size);
      for (const char* part : {".qweight", ".qzeros", ".scales"}) row(base + part, {}, f);
    } else if (qp.format == QuantFormat::Mlx && s.expert >= 0 &&
               ck.has(base.substr(0, base.find(".mlp.experts.")) + ".mlp.switch_mlp.gate_proj.weight")) {
      if (s.expert == 0) {
        const std::string b = base.substr(0, base.find(".mlp.experts.")) + ".mlp.switch_mlp" + base.substr(base.rfind('.'));
        for (const char* part : {".weight", ".scales", ".biases"}) row(b + part, {}, mlx_of(b) + " stacked");
      }
    } else if (qp.format == QuantFormat::Mlx && !ck.has(base + ".weight") &&
               ck.has(base.substr(0, base.size() - 9) + "embed_q.weight")) {
      for (const char* split : {"embed_q", "unembed_out"}) {
        const std::string b = base.substr(0, base.size() - 9) + split;
        for (const char* part : {".weight", ".scales", ".biases"}) row(b + part, {}, mlx_of(b) + " per head");
      }
    } else if (qp.format == QuantFormat::Mlx && ck.has(base + ".scales")) {
      for (const char* part : {".weight", ".scales", ".biases"}) row(base + part, {}, mlx_of(base));
    } else if (is_linear && ck.has(m + ".weight") && ck.get(m + ".weight").dtype == DType::F8_E4M3) {
      const int64_t br = c.quantization_config ? c.quantization_config->block_rows : 128;  // weight_block_size
      const int64_t bc = c.quantization_config ? c.quantization_config->block_cols : 128;
      row(m + ".weight", s.shape, "FP8 e4m3 " + std::to_string(br) + "x" + std::to_string(bc));
      row(m + ".weight_scale_inv", {(s.shape[0] + br - 1) / br, (s.shape[1] + bc - 1) / bc}, "FP8 block scales");
    } else {
      const std::string t = is_linear ? m + ".weight" : m;
      row(t, s.shape, ck.has(t) ? dtype_name(ck.get(t).dtype) : "-");
    }
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
