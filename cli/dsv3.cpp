// dsv3 — the command-line tool. One binary, subcommands:
//   forward      logits for a token sequence (prefill, decode, chunked) -> .npy
//   generate     greedy or sampled continuation of ids or of a text prompt
//   chat         an interactive chat loop with the model's chat template
//   make-model   a synthetic checkpoint in the HF layout (presets, dtypes)
//   inspect      the tensor table of a checkpoint against its config
//   tokenize / detokenize / render-chat   the tokenizer and chat template
// Errors: one line `dsv3: error: ...` on stderr and exit code 1.
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

#include "cmd_compare.hpp"
#include "cmd_text.hpp"

// OpenBLAS's core detection (weak: absent with another BLAS).
extern "C" __attribute__((weak)) char* openblas_get_corename(void);

namespace {

using namespace dsv3;

// OpenBLAS 0.3.21 (Debian 12) does not recognise some virtualised Xeons and
// falls back to its generic "Prescott" SSE3 kernels, 2.5x slower in prefill
// than the kernels the CPU supports. The core can only be chosen before the
// library initialises, so the CLI re-executes itself once with
// OPENBLAS_CORETYPE set. A user's own OPENBLAS_CORETYPE is always kept;
// DSV3_KEEP_BLAS_CORE=1 disables this.
void retune_openblas(char** argv) {
  if (!openblas_get_corename || std::getenv("OPENBLAS_CORETYPE") || std::getenv("DSV3_KEEP_BLAS_CORE")) return;
  const char* core = openblas_get_corename();
  if (!core || strcasecmp(core, "prescott") != 0) return;
  __builtin_cpu_init();
  const char* better = __builtin_cpu_supports("avx512f") ? "SkylakeX"
                       : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? "Haswell"
                                                                                            : nullptr;
  if (!better) return;
  setenv("OPENBLAS_CORETYPE", better, 1);
  execv("/proc/self/exe", argv);  // returns only on failure: carry on with Prescott
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// --prefault: map the whole checkpoint in at load (auto: when it takes at
// most half of the memory available), so the first forward pass does not
// pay a page fault per few KB of weights.
std::string g_prefault = "auto";
// --backend: which backend runs the model's ops (dispatch.hpp backend_named).
std::string g_backend = "cpu";
struct LoadInfo {
  double load_s = 0;
  bool prefaulted = false;
};
LoadInfo g_load;

uint64_t mem_available_bytes() {
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
std::vector<int32_t> parse_ids(const std::string& arg) {
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

bool bf16_cache(const std::string& s) {
  if (s == "f32" || s == "compute") return false;
  if (s == "bf16") return true;
  fail("--cache-dtype: '", s, "' is not compute or bf16");
}

// --mode, with decode mode's --prefill-len checked against the L ids.
Schedule parse_mode(const std::string& s, int64_t prefill_len, int64_t L) {
  if (s == "prefill") return Schedule::prefill;
  if (s != "decode") fail("--mode: '", s, "' is not prefill or decode");
  if (prefill_len < 1 || prefill_len > L)
    fail("--prefill-len ", prefill_len, " must be in [1, ", L, "] (the number of ids)");
  return Schedule::decode;
}

AttnForm parse_attn(const std::string& s) {
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

// ---------------------------------------------------------------------------
struct ForwardArgs {
  std::string model, ids, out, mode = "prefill", attn = "auto", precision = "f32";
  int64_t prefill_len = 1, chunk = 0;
  VariantArgs variants;
  std::string names;  // trace only: comma-separated globs
  std::string mtp_out;
  bool mtp_zero_pos0 = false;
  std::string cache_dtype = "compute";
};

template <class T>
void run_forward(const ForwardArgs& a) {
  auto mp = open_model<T>(a.model, a.variants.get());
  Model<T>& m = *mp;
  const auto ids = parse_ids(a.ids);
  const int64_t V = m.config().vocab_size, L = int64_t(ids.size());
  auto cache = m.new_cache(bf16_cache(a.cache_dtype));
  const Schedule mode = parse_mode(a.mode, a.prefill_len, L);
  if (!a.mtp_out.empty() && mode != Schedule::prefill) fail("--mtp-out needs --mode prefill");
  ForwardOptionsT<T> popt;
  popt.attn = parse_attn(a.attn);
  Mat<T> h_all = empty<T>(a.mtp_out.empty() ? 0 : L, m.config().hidden_size), h;
  if (!a.mtp_out.empty()) popt.hidden = &h;
  std::vector<float> out;
  run_schedule(m, ids, mode, a.prefill_len, a.chunk, popt, cache, Trace(), [&](const Mat<T>& lg, int64_t start) {
    out.insert(out.end(), lg.begin(), lg.end());
    if (popt.hidden) std::copy(h.begin(), h.end(), h_all.begin() + start * m.config().hidden_size);
  });
  if (!a.mtp_out.empty()) {
    // MTP logits [L-1, V]: row i from h_i and ids[i+1] (predicts ids[i+2])
    if (L < 2) fail("--mtp-out needs at least 2 ids");
    MTPOptions mo;
    mo.zero_pos0 = a.mtp_zero_pos0;
    mo.attn = popt.attn;
    auto mcache = m.new_mtp_cache();
    Mat<T> ml = m.mtp_forward(take_rows(h_all, 0, L - 1), std::vector<int32_t>(ids.begin() + 1, ids.end()), mcache, mo);
    write_npy_f32(a.mtp_out, std::vector<float>(ml.begin(), ml.end()), std::size_t(L - 1), std::size_t(V));
  }
  write_npy_f32(a.out, out, out.size() / std::size_t(V), std::size_t(V));
}

// ---------------------------------------------------------------------------
struct GenerateArgs {
  std::string model, ids, prompt, system, tokenizer, template_file, precision = "f32", attn = "auto";
  int64_t max_new_tokens = 32, warmup = 0;
  bool json = false, chat = false, mtp_zero_pos0 = false;
  std::string speculative;
  std::string cache_dtype = "compute";
  SamplerOptions sampling;
  VariantArgs variants;
};

Tokenizer load_tokenizer(const std::string& dir) { return Tokenizer::from_dir(dir); }

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, ": cannot open");
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

nlohmann::json chat_extra(const Tokenizer& tok) {
  return {{"bos_token", tok.bos_token()}, {"eos_token", tok.eos_token()}};
}


// The prompt as ids: --ids as given, or --prompt through the tokenizer
// (with --chat: rendered with the chat template and a generation prompt).
std::vector<int32_t> prompt_ids(const GenerateArgs& a, const Tokenizer* tok) {
  if (!a.ids.empty()) return parse_ids(a.ids);
  if (!tok) fail("generate: give --ids or --prompt");
  if (!a.chat) return tok->encode(a.prompt, tok->add_bos_default());
  nlohmann::json msgs = nlohmann::json::array();
  if (!a.system.empty()) msgs.push_back({{"role", "system"}, {"content", a.system}});
  msgs.push_back({{"role", "user"}, {"content", a.prompt}});
  const std::string tmpl = a.template_file.empty() ? tok->chat_template() : read_text_file(a.template_file);
  const std::string text = render_chat(tmpl, msgs, true, chat_extra(*tok));
  return tok->encode(text, false);  // the template writes BOS itself
}

template <class T>
void run_generate(const GenerateArgs& a) {
  auto mp = open_model<T>(a.model, a.variants.get());
  Model<T>& m = *mp;
  std::unique_ptr<Tokenizer> tok;
  if (a.ids.empty()) {
    if (a.prompt.empty()) fail("generate: give --ids or --prompt");
    tok = std::make_unique<Tokenizer>(load_tokenizer(a.tokenizer.empty() ? a.model : a.tokenizer));
  }
  const auto ids = prompt_ids(a, tok.get());
  Sampler sampler(a.sampling);
  ForwardOptions opt;
  opt.attn = parse_attn(a.attn);
  opt.all_logits = false;
  auto cache = m.new_cache(bf16_cache(a.cache_dtype));
  const int64_t V = m.config().vocab_size;
  std::vector<int32_t> gen;
  std::unique_ptr<StreamDecoder> stream;
  if (tok && !a.json) stream = std::make_unique<StreamDecoder>(*tok);
  if (!a.speculative.empty()) {
    if (a.speculative != "mtp") fail("--speculative: '", a.speculative, "' is not mtp");
    if (a.sampling.temperature != 0) fail("--speculative mtp is exact greedy decoding: use --temperature 0");
    MTPOptions mo;
    mo.zero_pos0 = a.mtp_zero_pos0;
    const double t0 = now_s();
    const SpecResult r = generate_speculative_mtp(m, ids, a.max_new_tokens, mo, opt.attn, [&](int32_t t) {
      if (stream && t != m.config().eos_token_id) std::cout << stream->push(t) << std::flush;
    });
    const double t1 = now_s();
    if (stream) std::cout << stream->flush() << std::endl;
    if (a.json) {
      nlohmann::json steps = nlohmann::json::array();
      for (const auto& st : r.steps)
        steps.push_back({{"position", st.position}, {"draft", st.draft}, {"accepted", st.accepted},
                         {"main_token", st.main_token}, {"emitted", st.emitted}});
      nlohmann::json j = {{"prompt_ids", ids}, {"generated_ids", r.generated}, {"mtp_drafted", r.drafted},
                          {"mtp_accepted", r.accepted},
                          {"mtp_acceptance_rate", r.drafted ? double(r.accepted) / double(r.drafted) : 0.0},
                          {"mtp_steps", steps},
                          {"timing", {{"total_s", t1 - t0},
                                      {"tokens_per_s", double(r.generated.size()) / (t1 - t0)}}}};
      if (tok) j["text"] = tok->decode(r.generated, true);
      std::cout << j.dump() << std::endl;
    } else if (!tok) {
      for (std::size_t i = 0; i < r.generated.size(); ++i) std::cout << (i ? "," : "") << r.generated[i];
      std::cout << std::endl;
      std::fprintf(stderr, "mtp: %lld of %lld drafts accepted\n", (long long)r.accepted, (long long)r.drafted);
    }
    return;
  }
  for (int64_t w = 0; w < a.warmup; ++w) {  // benchmarks: untimed prefills on a scratch cache
    auto scratch = m.new_cache(bf16_cache(a.cache_dtype));
    m.forward(ids, scratch, opt);
  }
  const double t0 = now_s();
  Mat<T> logits = m.forward(ids, cache, opt);
  const double t1 = now_s();
  int64_t decode_calls = 0;
  for (int64_t step = 0; step < a.max_new_tokens; ++step) {
    const int32_t next = sampler.sample(logits.data(), V);
    gen.push_back(next);
    if (next == m.config().eos_token_id) break;
    if (stream) {
      std::cout << stream->push(next) << std::flush;
    }
    if (step + 1 < a.max_new_tokens) {
      logits = m.forward({next}, cache, opt);
      ++decode_calls;
    }
  }
  const double t2 = now_s();
  if (stream) std::cout << stream->flush() << std::endl;
  if (a.json) {
    nlohmann::json j = {{"prompt_ids", ids}, {"generated_ids", gen}};
    if (tok) j["text"] = tok->decode(gen, true);
    j["timing"] = {{"load_s", g_load.load_s}, {"prefaulted", g_load.prefaulted},
                   {"prefill_s", t1 - t0}, {"prefill_tokens", ids.size()},
                   {"prefill_tokens_per_s", double(ids.size()) / (t1 - t0)},
                   {"decode_s", t2 - t1}, {"decode_calls", decode_calls},
                   {"decode_tokens_per_s", decode_calls ? double(decode_calls) / (t2 - t1) : 0.0},
                   {"kv_cache_bytes", cache.bytes()}};
    std::cout << j.dump() << std::endl;
  } else if (!tok) {
    for (std::size_t i = 0; i < gen.size(); ++i) std::cout << (i ? "," : "") << gen[i];
    std::cout << std::endl;
  }
}

// ---------------------------------------------------------------------------
template <class T>
void run_chat(const GenerateArgs& a) {
  auto mp = open_model<T>(a.model, a.variants.get());
  Model<T>& m = *mp;
  Tokenizer tok = load_tokenizer(a.tokenizer.empty() ? a.model : a.tokenizer);
  const std::string tmpl = a.template_file.empty() ? tok.chat_template() : read_text_file(a.template_file);
  Sampler sampler(a.sampling);
  ForwardOptions opt;
  opt.attn = parse_attn(a.attn);
  opt.all_logits = false;
  nlohmann::json msgs = nlohmann::json::array();
  if (!a.system.empty()) msgs.push_back({{"role", "system"}, {"content", a.system}});
  std::string line;
  std::cerr << "dsv3 chat: type a message, an empty line or Ctrl-D ends\n";
  while (std::cout << "> " << std::flush, std::getline(std::cin, line) && !line.empty()) {
    msgs.push_back({{"role", "user"}, {"content", line}});
    // Re-run the whole rendered chat: simple, and exact by construction.
    const auto ids = tok.encode(render_chat(tmpl, msgs, true, chat_extra(tok)), false);
    auto cache = m.new_cache(bf16_cache(a.cache_dtype));
    Mat<T> logits = m.forward(ids, cache, opt);
    StreamDecoder stream(tok);
    std::vector<int32_t> gen;
    for (int64_t step = 0; step < a.max_new_tokens; ++step) {
      const int32_t next = sampler.sample(logits.data(), m.config().vocab_size);
      if (next == m.config().eos_token_id) break;
      gen.push_back(next);
      std::cout << stream.push(next) << std::flush;
      if (cache.length + 1 > m.config().max_position_embeddings) break;
      logits = m.forward({next}, cache, opt);
    }
    std::cout << stream.flush() << std::endl;
    msgs.push_back({{"role", "assistant"}, {"content", tok.decode(gen, true)}});
  }
}

// ---------------------------------------------------------------------------
// fnmatch-style glob: '*' any run, '?' one character.
bool glob_match(const char* p, const char* s) {
  if (!*p) return !*s;
  if (*p == '*') return glob_match(p + 1, s) || (*s && glob_match(p, s + 1));
  return *s && (*p == '?' || *p == *s) && glob_match(p + 1, s + 1);
}

template <class T>
void run_trace(const ForwardArgs& a) {
  auto mp = open_model<T>(a.model, a.variants.get());
  Model<T>& m = *mp;
  const auto ids = parse_ids(a.ids);
  std::vector<std::string> globs;
  std::stringstream ss(a.names);
  for (std::string g; std::getline(ss, g, ',');)
    if (!g.empty()) globs.push_back(g);
  TraceCollector col;
  // --names matches the bare name ("q_pe*") or the key ("layers.3.*")
  Trace trace(col.sink(), [&](const std::string& name) {
    if (globs.empty()) return true;
    for (const auto& g : globs)
      if (glob_match(g.c_str(), name.c_str())) return true;
    return false;
  });
  ForwardOptionsT<T> opt;
  opt.attn = parse_attn(a.attn);
  auto cache = m.new_cache(bf16_cache(a.cache_dtype));
  const int64_t L = int64_t(ids.size());
  const Schedule mode = parse_mode(a.mode, a.prefill_len, L);
  run_schedule(m, ids, mode, a.prefill_len, a.chunk, opt, cache, trace, [](const Mat<T>&, int64_t) {});
  nlohmann::json meta = {{"engine", "dsv3"}, {"model", a.model}, {"ids", ids}, {"precision", a.precision},
                         {"attn", a.attn}, {"variants", m.variants().to_json()}};
  col.write(a.out, meta);
  std::fprintf(stderr, "wrote %s: %zu tensors\n", a.out.c_str(), col.entries().size());
}

// ---------------------------------------------------------------------------
// inspect --check-weights: every floating tensor scanned for NaN/Inf.
void run_check_weights(const std::string& dir) {
  Checkpoint ck(dir);
  const auto bad = check_weights(ck);
  for (const auto& r : bad) std::printf("%s\n", describe(r).c_str());  // one line per bad tensor
  if (!bad.empty())
    fail(dir, ": ", bad.size(), " tensor", bad.size() == 1 ? "" : "s", " hold NaN/Inf (first: '", bad[0].name, "')");
  std::printf("all %zu tensors finite\n", ck.names().size());
}

// ---------------------------------------------------------------------------
// Parameter counts of a config (weights.hpp parameter_counts).
void print_parameter_counts(const Config& c, bool with_mtp) {
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

void run_inspect(const std::string& dir) {
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

}  // namespace

int main(int argc, char** argv) {
  retune_openblas(argv);
  CLI::App app{"dsv3: a reference implementation of DeepSeek-V3 (official inference/model.py semantics).\n"
               "Machine outputs: float32 little-endian .npy (logits) and JSON."};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--prefault", g_prefault, "Map the whole checkpoint in at load: auto (when it takes at most half "
                 "of MemAvailable) | on | off (pages come in as first used)")
      ->check(CLI::IsMember({"auto", "on", "off"}))->capture_default_str();
  app.add_option("--backend", g_backend, "Backend for the model's ops: cpu (fast, the default) | reference (the "
                 "literal definition of each op, single-threaded and slow; every other backend is tested against it)")
      ->capture_default_str();
  app.add_option("--threads", threads, "Threads for BLAS and dsv3's kernels (0 = library default); results are "
                 "bit-identical for every count")->check(CLI::Range(0, 1024));

  ForwardArgs fa;
  auto* fwd = app.add_subcommand("forward", "Logits for a token sequence, written as float32 .npy.\n"
                                 "prefill: [L, vocab], one row per position. decode: ids[:P] in one call, then one "
                                 "token per call; [L-P+1, vocab], row 0 = last position of the first call.");
  fwd->add_option("--model", fa.model, "Model directory (HF layout)")->required();
  fwd->add_option("--ids", fa.ids, "Comma-separated token ids, e.g. 0,17,42, or @FILE")->required();
  fwd->add_option("--out", fa.out, "Output .npy file")->required();
  fwd->add_option("--mode", fa.mode, "prefill | decode")->capture_default_str();
  fwd->add_option("--prefill-len", fa.prefill_len, "Decode mode: tokens in the first call")->capture_default_str();
  fwd->add_option("--attn", fa.attn, "auto (per call, the form with fewer multiply-adds) | absorb (the official code's form) | naive (HF's form)")->capture_default_str();
  fwd->add_option("--precision", fa.precision, "Compute scalar: f32 | f64")->capture_default_str();
  fwd->add_option("--chunk", fa.chunk, "Run the prompt (prefill mode) or its first P tokens (decode mode) in chunks "
                 "of N tokens (0 = one call)");
  fwd->add_option("--cache-dtype", fa.cache_dtype, "Latent cache storage: compute (the compute scalar) | bf16")
      ->capture_default_str();
  fwd->add_option("--mtp-out", fa.mtp_out, "Also write the MTP module's logits [L-1, vocab]: row i from h_i and ids[i+1]");
  fwd->add_flag("--mtp-zero-pos0", fa.mtp_zero_pos0, "MTP: zero the embedding at position 0 (vLLM's rule)");
  fa.variants.add(fwd);

  ForwardArgs ta;
  auto* trc = app.add_subcommand("trace", "Run the forward pass and write its named intermediate tensors to a "
                                 "safetensors trace (manifest in __metadata__.dsv3_manifest; names: docs/trace-names.md).");
  trc->add_option("--model", ta.model, "Model directory (HF layout)")->required();
  trc->add_option("--ids", ta.ids, "Comma-separated token ids")->required();
  trc->add_option("--out", ta.out, "Output trace .safetensors")->required();
  trc->add_option("--names", ta.names, "Comma-separated globs of trace names to keep (default: all)");
  trc->add_option("--mode", ta.mode, "prefill | decode")->capture_default_str();
  trc->add_option("--prefill-len", ta.prefill_len, "Decode mode: tokens in the first call")->capture_default_str();
  trc->add_option("--chunk", ta.chunk, "Run the prompt (prefill mode) or its first P tokens (decode mode) in chunks of N tokens, as forward does");
  trc->add_option("--attn", ta.attn, "auto | absorb | naive")->capture_default_str();
  trc->add_option("--precision", ta.precision, "f32 | f64")->capture_default_str();
  trc->add_option("--cache-dtype", ta.cache_dtype, "Latent cache storage: compute | bf16")->capture_default_str();
  ta.variants.add(trc);

  std::string cmp_a, cmp_b, cmp_tol = "f32", cmp_report, cmp_json;
  auto* cmp = app.add_subcommand("compare", "Compare two traces tensor by tensor (A = reference). Exit code 1 "
                                 "past tolerance. Tolerance presets: exact, f32, bf16, fp8.");
  cmp->add_option("A", cmp_a, "Reference trace (.safetensors)")->required();
  cmp->add_option("B", cmp_b, "Trace under test")->required();
  cmp->add_option("--tol", cmp_tol, "exact | f32 | bf16 | fp8")->capture_default_str();
  cmp->add_option("--report", cmp_report, "Write an HTML report (inline SVG, no network assets)");
  cmp->add_option("--json", cmp_json, "Write the per-tensor metrics as JSON");

  GenerateArgs ga;
  auto add_gen_opts = [&](CLI::App* s) {
    s->add_option("--model", ga.model, "Model directory (HF layout)")->required();
    s->add_option("--tokenizer", ga.tokenizer, "Tokenizer directory (default: the model directory)");
    s->add_option("--template", ga.template_file, "Chat template file (default: tokenizer_config.json's)");
    s->add_option("--system", ga.system, "System prompt (with --chat / chat)");
    s->add_option("--max-new-tokens", ga.max_new_tokens, "Tokens to generate at most")->capture_default_str();
    s->add_option("--temperature", ga.sampling.temperature, "0 = greedy")->capture_default_str();
    s->add_option("--top-p", ga.sampling.top_p, "Nucleus sampling mass")->capture_default_str();
    s->add_option("--top-k", ga.sampling.top_k, "Keep the k most likely tokens (0 = all)")->capture_default_str();
    s->add_option("--seed", ga.sampling.seed, "Sampling seed (reproducible across runs)")->capture_default_str();
    s->add_option("--precision", ga.precision, "Compute scalar: f32 | f64")->capture_default_str();
    s->add_option("--attn", ga.attn, "auto | absorb | naive")->capture_default_str();
    s->add_option("--cache-dtype", ga.cache_dtype, "Latent cache storage: compute | bf16")->capture_default_str();
    ga.variants.add(s);
  };
  auto* gen = app.add_subcommand("generate", "Generate tokens from --ids or a text --prompt; stops at EOS.\n"
                                 "With --json prints {\"prompt_ids\": [...], \"generated_ids\": [...]}.");
  add_gen_opts(gen);
  gen->add_option("--ids", ga.ids, "Prompt token ids");
  gen->add_option("--prompt", ga.prompt, "Prompt text (needs a tokenizer)");
  gen->add_flag("--chat", ga.chat, "Wrap --prompt in the chat template with a generation prompt");
  gen->add_flag("--json", ga.json, "Print one JSON object instead of streaming text");
  gen->add_option("--speculative", ga.speculative, "mtp: draft one token per step with the MTP layer, verify with "
                  "the main model (greedy; output identical to plain greedy; --json adds mtp_drafted/mtp_accepted)");
  gen->add_option("--warmup", ga.warmup, "Run the prompt's prefill N times, untimed, on a scratch cache first "
                  "(benchmarks: as the HF script warms up; the output is unchanged)")->capture_default_str();
  gen->add_flag("--mtp-zero-pos0", ga.mtp_zero_pos0, "MTP: zero the embedding at position 0 (vLLM's rule)");
  auto* chat = app.add_subcommand("chat", "Interactive chat with the model (chat template, streaming).");
  add_gen_opts(chat);

  std::string mm_out, mm_preset = "tiny", mm_dtype = "f32";
  int64_t mm_layers = 0;
  uint64_t mm_seed = 0;
  double mm_bias = 0.5, mm_shard_gb = 2.0;
  std::string mm_tokenizer;
  auto* mk = app.add_subcommand("make-model", "Write a synthetic checkpoint in the exact HF layout "
                                "(config.json, safetensors, shards + index when large), deterministic from --seed.\n"
                                "Presets: tiny (tests), demo (tiny, real 129280 vocab), mid (benchmarks), "
                                "full-dims (DeepSeek-V3's real dimensions; pick --layers).");
  mk->add_option("--out", mm_out, "Output directory")->required();
  mk->add_option("--preset", mm_preset, "tiny | demo | mid | full-dims")->capture_default_str();
  mk->add_option("--dtype", mm_dtype, "f32 | bf16 | fp8 (e4m3fn, 128x128 block scales)")->capture_default_str();
  mk->add_option("--seed", mm_seed, "Seed")->capture_default_str();
  mk->add_option("--layers", mm_layers, "Override num_hidden_layers");
  mk->add_option("--bias-mean", mm_bias, "Mean of e_score_correction_bias")->capture_default_str();
  mk->add_option("--shard-gb", mm_shard_gb, "Shard size in GB")->capture_default_str();
  mk->add_option("--tokenizer", mm_tokenizer, "Copy tokenizer.json / tokenizer_config.json from this directory");
  bool mm_mtp = false;
  mk->add_flag("--mtp", mm_mtp, "Also write an MTP layer (model.layers.{num_hidden_layers}.*)");

  std::string insp_model;
  auto* insp = app.add_subcommand("inspect", "Tensor table (name, dtype, shape, bytes, present/missing against "
                                  "the config) and total/active parameter counts.");
  insp->add_option("--model", insp_model, "Model directory")->required();
  bool insp_check = false;
  insp->add_flag("--check-weights", insp_check,
                 "Scan every floating tensor for NaN/Inf (reads the whole checkpoint); exit 1 if any");

  add_text_commands(app);

  try {
    app.parse(argc, argv);  // the text subcommands run in their callbacks
    if (threads > 0) omp_set_num_threads(threads);  // BLAS runs single-threaded inside (cpu/linear.hpp)
    backend_named<float>(g_backend);  // an unknown --backend is an error for every subcommand
    if (*fwd) {
      if (fa.precision == "f32") run_forward<float>(fa);
      else if (fa.precision == "f64") run_forward<double>(fa);
      else fail("--precision: '", fa.precision, "' is not f32 or f64");
    } else if (*trc) {
      if (ta.precision == "f32") run_trace<float>(ta);
      else if (ta.precision == "f64") run_trace<double>(ta);
      else fail("--precision: '", ta.precision, "' is not f32 or f64");
    } else if (*cmp) {
      return dsv3_cli::run_compare(cmp_a, cmp_b, cmp_tol, cmp_report, cmp_json);
    } else if (*gen || *chat) {
      auto run = *gen ? (ga.precision == "f64" ? run_generate<double> : run_generate<float>)
                      : (ga.precision == "f64" ? run_chat<double> : run_chat<float>);
      if (ga.precision != "f32" && ga.precision != "f64") fail("--precision: '", ga.precision, "' is not f32 or f64");
      run(ga);
    } else if (*mk) {
      ModelSpec spec;
      spec.config = preset_config(mm_preset);
      if (mm_layers > 0) spec.config["num_hidden_layers"] = mm_layers;
      spec.dtype = mm_dtype;
      spec.seed = mm_seed;
      spec.bias_mean = mm_bias;
      spec.shard_bytes = uint64_t(mm_shard_gb * double(uint64_t(1) << 30));
      spec.mtp = mm_mtp;
      const uint64_t bytes = make_model(mm_out, spec);
      if (!mm_tokenizer.empty())
        for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
          if (Checkpoint::file_exists(mm_tokenizer + "/" + f))
            std::filesystem::copy_file(mm_tokenizer + "/" + f, mm_out + "/" + f,
                                       std::filesystem::copy_options::overwrite_existing);
      std::fprintf(stderr, "wrote %s: preset %s, %s, %.3f GB of tensors\n", mm_out.c_str(), mm_preset.c_str(),
                   mm_dtype.c_str(), double(bytes) / 1e9);
    } else if (*insp) {
      if (insp_check) run_check_weights(insp_model);
      else run_inspect(insp_model);
    }
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsv3: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
