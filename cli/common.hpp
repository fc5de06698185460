// cli/common.hpp - what the model subcommands of the dsv3 CLI share: the
// global options (--prefault, --backend), opening a model, parsing --ids,
// --mode, --attn and the variant knobs, OpenBLAS core re-tuning.
#pragma once

#include <CLI/CLI.hpp>
#include <omp.h>
#include <strings.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <dsv3/formats/io.hpp>
#include <dsv3/tools/make_model.hpp>
#include <dsv3/model.hpp>
#include <dsv3/tools/sampler.hpp>
#include <dsv3/tools/speculative.hpp>
#include <dsv3/text/tokenizer.hpp>
#include <dsv3/tools/trace_file.hpp>
#include <dsv3/variants.hpp>

#include <dsv3/text/chat_template.hpp>
#include <dsv3/tools/check.hpp>
#include <dsv3/tools/glob.hpp>
#include <dsv3/cpu/openblas.hpp>

namespace dsv3_cli {

using namespace dsv3;

// Re-executes the CLI once with OPENBLAS_CORETYPE set where OpenBLAS would
// otherwise run its generic kernels (cpu/openblas.hpp).
inline void retune_openblas(char** argv) {
  const char* better = openblas_preferred_core();
  if (!better) return;
  setenv("OPENBLAS_CORETYPE", better, 1);
  execv("/proc/self/exe", argv);  // returns only on failure: carry on with OpenBLAS's choice
}

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// --prefault: map the whole checkpoint in at load (auto: when it takes at
// most half of the memory available), so the first forward pass does not
// pay a page fault per few KB of weights.
inline std::string g_prefault = "auto";
// --backend: which backend runs the model's ops (dispatch.hpp backend_named).
inline std::string g_backend = "cpu";
struct LoadInfo {
  double load_s = 0;
  bool prefaulted = false;
};
inline LoadInfo g_load;

inline uint64_t mem_available_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  while (f >> key >> kb) {
    if (key == "MemAvailable:") return kb * 1024;
    f.ignore(256, '\n');
  }
  return 0;  // unknown: never prefault in auto mode
}

template <class T>
std::unique_ptr<Model<T>> open_model(const std::string& dir, const Variants& v) {
  const double t0 = now_s();
  auto m = std::make_unique<Model<T>>(dir, v);
  m->set_backend(backend_named<T>(g_backend));
  const uint64_t bytes = m->checkpoint().bytes();
  if (g_prefault == "on" || (g_prefault == "auto" && bytes <= mem_available_bytes() / 2)) {
    m->checkpoint().prefault();
    g_load.prefaulted = true;
  }
  g_load.load_s = now_s() - t0;
  return m;
}

// "0,17,42", or "@FILE" holding ids separated by commas or whitespace (long
// contexts do not fit on a command line).
inline std::vector<int32_t> parse_ids(const std::string& arg) {
  std::string s = arg;
  if (!arg.empty() && arg[0] == '@') {
    std::ifstream f(arg.substr(1));
    if (!f) fail("--ids: cannot open '", arg.substr(1), "'");
    s.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    for (char& ch : s)
      if (ch == ' ' || ch == '\n' || ch == '\t' || ch == '\r') ch = ',';
  }
  std::vector<int32_t> ids;
  std::stringstream ss(s);
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    if (tok.empty()) continue;
    std::size_t pos = 0;
    long long v = 0;
    try {
      v = std::stoll(tok, &pos);
    } catch (...) {
      pos = 0;
    }
    if (pos != tok.size() || v < INT32_MIN || v > INT32_MAX)
      fail("--ids: '", tok, "' is not an integer token id (expected e.g. --ids 0,17,42)");
    ids.push_back(int32_t(v));
  }
  if (ids.empty()) fail("--ids: no token ids given (expected e.g. --ids 0,17,42)");
  return ids;
}

inline bool bf16_cache(const std::string& s) {
  if (s == "f32" || s == "compute") return false;
  if (s == "bf16") return true;
  fail("--cache-dtype: '", s, "' is not compute or bf16");
}

// --mode, with decode mode's --prefill-len checked against the L ids.
inline Schedule parse_mode(const std::string& s, int64_t prefill_len, int64_t L) {
  if (s == "prefill") return Schedule::prefill;
  if (s != "decode") fail("--mode: '", s, "' is not prefill or decode");
  if (prefill_len < 1 || prefill_len > L)
    fail("--prefill-len ", prefill_len, " must be in [1, ", L, "] (the number of ids)");
  return Schedule::decode;
}

inline AttnForm parse_attn(const std::string& s) {
  if (s == "absorb") return AttnForm::absorb;
  if (s == "naive") return AttnForm::naive;
  if (s == "auto") return AttnForm::automatic;
  fail("--attn: '", s, "' is not auto, absorb or naive");
}

// ---------------------------------------------------------------------------
// Variant knobs on the command line: --variants FILE.json and one flag each.
struct VariantArgs {
  std::string file;
  nlohmann::json flags = nlohmann::json::object();
  std::string mask_fill, router, rmsnorm, yarn;
  bool bf16 = false, w8a8 = false, dq_bf16 = false;
  int64_t max_seq_len = -1, experts = -1;

  void add(CLI::App* s) {
    s->add_option("--variants", file, "JSON file of variant knobs (see docs/variants.md)");
    s->add_option("--group-mask-fill", mask_fill, "-inf (official) | 0 (mlx-lm, HF before #45441)");
    s->add_option("--router-precision", router, "fp32 (HF/vLLM) | bf16 (official Gate)");
    s->add_flag("--bf16-activations", bf16, "Round activations to bf16 where the official code holds bf16");
    s->add_option("--rmsnorm-rounding", rmsnorm, "single | hf (bf16 before the weight multiply)");
    s->add_flag("--fp8-w8a8", w8a8, "Official gemm_impl=fp8: act_quant 1x128 + per-block fp32 accumulation");
    s->add_flag("--fp8-dequant-bf16", dq_bf16, "Round dequantised FP8 weights to bf16 (official weight_dequant, mlx-lm)");
    s->add_option("--yarn", yarn, "always (HF/MLX) | official (only if max_seq_len > original)");
    s->add_option("--max-seq-len", max_seq_len, "Official max_seq_len for --yarn official (default 16384)");
    s->add_option("--experts-per-tok", experts, "Override num_experts_per_tok (llama.cpp expert_used_count)");
  }
  Variants get() const {
    nlohmann::json j = nlohmann::json::object();
    if (!file.empty()) {
      std::ifstream f(file);
      if (!f) fail(file, ": cannot open");
      try {
        f >> j;
      } catch (const nlohmann::json::exception& e) {
        fail(file, ": invalid JSON: ", e.what());
      }
    }
    if (!mask_fill.empty()) j["group_mask_fill"] = mask_fill;
    if (!router.empty()) j["router_precision"] = router;
    if (bf16) j["bf16_activations"] = true;
    if (!rmsnorm.empty()) j["rmsnorm_rounding"] = rmsnorm;
    if (w8a8) j["fp8_w8a8"] = true;
    if (dq_bf16) j["fp8_dequant_bf16"] = true;
    if (!yarn.empty()) j["yarn"] = yarn;
    if (max_seq_len >= 0) j["max_seq_len"] = max_seq_len;
    if (experts >= 0) j["experts_per_tok"] = experts;
    return Variants::from_json(j, file.empty() ? "variant flags" : file);
  }
};

}  // namespace dsv3_cli
