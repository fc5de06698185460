// dsv3 — the command-line tool. One binary; this file wires the options of
// every subcommand, each family's code is in its own header:
//   forward, trace, generate, chat   run the model                 cmd_model.hpp
//   make-model, inspect              checkpoint directories        cmd_checkpoint.hpp
//   compare                          two trace files               cmd_compare.hpp
//   tokenize, detokenize, render-chat  tokenizer, chat template    cmd_text.hpp
//   (shared: global options, opening a model, --ids/--mode/--attn, knobs: common.hpp)
// Errors: one line `dsv3: error: ...` on stderr and exit code 1.
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

#include "cmd_checkpoint.hpp"
#include "cmd_compare.hpp"
#include "cmd_model.hpp"
#include "cmd_text.hpp"
#ifdef DSV3_CUDA
#include <dsv3/cuda/backend.hpp>
#endif


using namespace dsv3;
using namespace dsv3_cli;

static int run(int argc, char** argv);

// With DSV3_MPI, under mpirun: expert parallelism (docs/parallel.md). Rank 0
// writes every output; a rank's error ends the whole job (MPI_Abort) after
// one line naming the rank, or, when every rank knows the error (startup),
// every rank exits 1 and only one prints it.
int main(int argc, char** argv) {
  retune_openblas(argv);
#ifdef DSV3_CUDA
  dsv3::cuda::register_backend();  // --backend cuda
#endif
#ifdef DSV3_MPI
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  if (g_size > 1) {
    g_group = std::make_shared<MpiExpertGroup>();
    if (g_rank > 0 && !std::freopen("/dev/null", "w", stdout)) std::fclose(stdout);
  }
  int rc = 1;
  try {
    rc = run(argc, argv);
  } catch (const QuietExit&) {
    rc = 1;
  }
  if (rc != 0 && g_size > 1 && !g_error_known_to_all) MPI_Abort(MPI_COMM_WORLD, rc);
  g_keep_model.reset();
  MPI_Finalize();
  return rc;
#else
  const int rc = run(argc, argv);
  // After an error, leave without running exit handlers: under a tight memory
  // limit OpenBLAS's thread shutdown can block forever after the error line
  // is printed. Every output file is already complete or removed (OutputFile).
  if (rc != 0) {
    std::fflush(stdout);
    std::fflush(stderr);
    std::_Exit(rc);
  }
  return rc;
#endif
}

static int run(int argc, char** argv) {
  CLI::App app{"dsv3: a reference implementation of DeepSeek-V3 (official inference/model.py semantics).\n"
               "Machine outputs: float32 little-endian .npy (logits) and JSON."};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--prefault", g_prefault, "Map the whole checkpoint in at load: auto (when it takes at most half "
                 "of MemAvailable) | on | off (pages come in as first used)")
      ->check(CLI::IsMember({"auto", "on", "off"}))->capture_default_str();
  app.add_option("--backend", g_backend, "Backend for the model's ops: cpu (fast, the default) | reference (the "
                 "literal definition of each op, single-threaded and slow; every other backend is tested against it) | cuda "
                 "(builds with -DDSV3_CUDA=ON: F32/BF16/FP8 checkpoints on the GPU; what it declines runs on the CPU)")
      ->capture_default_str();
#ifdef DSV3_MPI
  std::string mpi_stats;
  app.add_option("--mpi-stats", mpi_stats, "Under mpirun: write per-rank expert bytes owned/touched and bytes "
                 "exchanged as JSON (rank 0 writes)");
#endif
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
                                 "With --json prints {\"prompt_ids\": [...], \"generated_ids\": [...], \"timing\": {...}}: timing has\n"
                                 "load/prefill/decode seconds and tokens/s, kv_cache_bytes, blas_core (OpenBLAS's kernels) and\n"
                                 "decode_kernels (avx512 | avx2 | avx2 (avx512 not preferred) | plain) and awq_decode_kernel\n"
                                 "(avx512 gathers | avx512 transposes | avx2 | plain: AWQ's int4 kernel, chosen apart).");
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
  mk->add_option("--dtype", mm_dtype,
                 "f32 | bf16 | fp8 (e4m3fn, 128x128 block scales) | awq (AutoAWQ GEMM int4, F16 head) | "
                 "mlx4 | mlx5 | mlx8 (MLX affine, mlx-lm layout)")->capture_default_str();
  int64_t mm_group = 0;
  mk->add_option("--group-size", mm_group,
                 "AWQ/MLX group size (default: the largest of 128, 64, 32 dividing every input width). MLX: "
                 "a module whose input width it does not divide stays BF16, as mlx-lm leaves it");
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
      if (mk->count("--layers")) {
        if (mm_layers < 1 || mm_layers > 4096) fail("make-model: --layers ", mm_layers, " must be in [1, 4096]");
        spec.config["num_hidden_layers"] = mm_layers;
      }
      if (!(mm_shard_gb > 0) || !std::isfinite(mm_shard_gb) || mm_shard_gb > 1e6)
        fail("make-model: --shard-gb ", mm_shard_gb, " must be a positive number of GB (at most 1e6)");
      if (!std::isfinite(mm_bias)) fail("make-model: --bias-mean ", mm_bias, " must be a finite number");
      spec.dtype = mm_dtype;
      spec.seed = mm_seed;
      spec.bias_mean = mm_bias;
      spec.group_size = mm_group;
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
    g_error_known_to_all = true;  // every rank parsed the same line: rank 0 says it, none aborts
    if (g_rank > 0) return e.get_exit_code();
    return app.exit(e);
  } catch (const QuietExit&) {
    throw;
  } catch (const std::exception& e) {
    // dsv3's own errors name their culprit. The standard library's and
    // nlohmann's do not ("std::bad_alloc", "vector::_M_default_append"): say
    // at least which subcommand ran, and what the message means.
    std::string what = e.what();
    const std::string cmd = app.get_subcommands().empty() ? "dsv3" : app.get_subcommands()[0]->get_name();
    if (dynamic_cast<const std::bad_alloc*>(&e))
      what = cmd + ": out of memory (" + what + "); try fewer tokens, --chunk, or a machine with more memory";
    else if (dynamic_cast<const std::length_error*>(&e))
      what = cmd + ": a size too large to allocate (" + what + ")";
    else if (dynamic_cast<const nlohmann::json::exception*>(&e))
      what = cmd + ": unexpected JSON (" + what + ")";
    const bool named = what.compare(0, 5, "rank ") == 0;
    if (g_size > 1 && !named) std::fprintf(stderr, "dsv3: error: rank %d of %d: %s\n", g_rank, g_size, what.c_str());
    else std::fprintf(stderr, "dsv3: error: %s\n", what.c_str());
    std::fflush(stderr);
    return 1;
  }
#ifdef DSV3_MPI
  if (!mpi_stats.empty()) write_mpi_stats(mpi_stats, g_n_experts);
#endif
  return 0;
}
