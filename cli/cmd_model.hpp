// cli/cmd_model.hpp - the subcommands that run the model: forward, trace,
// generate and chat.
#pragma once

#include "common.hpp"

namespace dsv3_cli {

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
  // Logits rows go to the file as they come (one copy of [L, V], the model's).
  const int64_t out_rows = mode == Schedule::decode ? L - a.prefill_len + 1 : L;
  std::unique_ptr<NpyF32Writer> out;
  if (writer()) out = std::make_unique<NpyF32Writer>(a.out, std::size_t(out_rows), std::size_t(V));
  run_schedule(m, ids, mode, a.prefill_len, a.chunk, popt, cache, Trace(), [&](const Mat<T>& lg, int64_t start) {
    for (int64_t r = 0; r < rows(lg); ++r) {  // decode mode: the prefill's last row is position P-1
      check_finite_logits(&lg(r, 0), V, mode == Schedule::decode && start < a.prefill_len ? a.prefill_len - 1 : start + r,
                          "forward");
      if (out) out->write_row(&lg(r, 0));
    }
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
    if (writer()) {  // rows straight from the model's matrix, as the main logits
      NpyF32Writer mtp(a.mtp_out, std::size_t(L - 1), std::size_t(V));
      for (int64_t r = 0; r < L - 1; ++r) mtp.write_row(&ml(r, 0));
      mtp.commit();
    }
  }
  if (out) out->commit();
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

inline std::string read_text_file(const std::string& path) {
  return read_file_bounded(path, kMaxTextInputBytes, "a chat template");
}

inline nlohmann::json chat_extra(const Tokenizer& tok) {
  return {{"bos_token", tok.bos_token()}, {"eos_token", tok.eos_token()}};
}


// The prompt as ids: --ids as given, or --prompt through the tokenizer
// (with --chat: rendered with the chat template and a generation prompt).
inline std::vector<int32_t> prompt_ids(const GenerateArgs& a, const Tokenizer* tok) {
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
    tok->set_model_vocab_size(m.config().vocab_size);  // ids past the tokenizer decode to nothing, as HF
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
    check_finite_logits(logits.data(), V, cache.length - 1, "generate");
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
    // which OpenBLAS kernels ran the GEMMs (prefill): benchmark records name it
    if (openblas_get_corename) j["timing"]["blas_core"] = openblas_get_corename();
    // which kernels streamed the weights through decode (cpu::avx512_preferred: not AVX-512 on Zen 4)
    j["timing"]["decode_kernels"] = dsv3::cpu::avx512_runs()  ? "avx512"
                                    : dsv3::cpu::avx2_streams() ? (dsv3::cpu::avx512_kernels() ? "avx2 (avx512 not preferred)" : "avx2")
                                                                : "plain";
    // AWQ's int4 kernel is chosen apart (cpu::awq_gather_kernel, awq_transpose_kernel): AVX-512 on Zen 4 too
    j["timing"]["awq_decode_kernel"] = dsv3::cpu::awq_gather_kernel()      ? "avx512 gathers"
                                       : dsv3::cpu::awq_transpose_kernel() ? "avx512 transposes"
                                       : dsv3::cpu::avx2_kernels()         ? "avx2"
                                                                           : "plain";
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
  tok.set_model_vocab_size(m.config().vocab_size);
  const std::string tmpl = a.template_file.empty() ? tok.chat_template() : read_text_file(a.template_file);
  Sampler sampler(a.sampling);
  ForwardOptions opt;
  opt.attn = parse_attn(a.attn);
  opt.all_logits = false;
  nlohmann::json msgs = nlohmann::json::array();
  if (!a.system.empty()) msgs.push_back({{"role", "system"}, {"content", a.system}});
  std::string line;
  std::cerr << "dsv3 chat: type a message, an empty line or Ctrl-D ends\n";
  while (std::cout << "> " << std::flush, read_line_bounded(std::cin, line, kMaxTextInputBytes, "chat: stdin") && !line.empty()) {
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
template <class T>
void run_trace(const ForwardArgs& a) {
  auto mp = open_model<T>(a.model, a.variants.get());
  Model<T>& m = *mp;
  const auto ids = parse_ids(a.ids);
  const std::vector<std::string> globs = split_globs(a.names);
  TraceCollector col;
  // --names matches the bare name ("q_pe*") or the key ("layers.3.*")
  Trace trace(col.sink(), [&](const std::string& name) { return matches_any(globs, name); });
  ForwardOptionsT<T> opt;
  opt.attn = parse_attn(a.attn);
  auto cache = m.new_cache(bf16_cache(a.cache_dtype));
  const int64_t L = int64_t(ids.size());
  const Schedule mode = parse_mode(a.mode, a.prefill_len, L);
  run_schedule(m, ids, mode, a.prefill_len, a.chunk, opt, cache, trace, [](const Mat<T>&, int64_t) {});
  nlohmann::json meta = {{"engine", "dsv3"}, {"model", a.model}, {"ids", ids}, {"precision", a.precision},
                         {"attn", a.attn}, {"variants", m.variants().to_json()}};
  if (!writer()) return;
  col.write(a.out, meta);
  std::fprintf(stderr, "wrote %s: %zu tensors\n", a.out.c_str(), col.entries().size());
}

}  // namespace dsv3_cli
