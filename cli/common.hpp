// cli/common.hpp - what the model subcommands of the dsv3 CLI share: the
// global options (--prefault, --backend), opening a model, parsing --ids,
// --mode, --attn and the variant knobs, OpenBLAS core re-tuning.
#pragma once

#include <CLI/CLI.hpp>
#include <omp.h>
#include <strings.h>
#include <unistd.h>

#include <fcntl.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <iostream>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <dsv3/formats/file.hpp>
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
#ifdef DSV3_MPI
#include <climits>
#include <dsv3/mpi/expert_group.hpp>
#endif

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

// Expert parallelism (built with DSV3_MPI, run under mpirun): this process's
// rank and the number of ranks. Rank 0 writes every output.
inline int g_rank = 0, g_size = 1;
inline bool writer() { return g_rank == 0; }
inline std::shared_ptr<ExpertGroup> g_group;
// Thrown on the ranks that stay silent when another rank reports a startup
// error that every rank knows of: they exit 1 without a second message.
struct QuietExit {};
inline bool g_error_known_to_all = false;  // the error is collective: every rank exits 1, none aborts
inline int64_t g_n_experts = 0;

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

// MPI: the open model stays alive until the run's accounting is written.
inline std::shared_ptr<void> g_keep_model;
inline const Checkpoint* g_checkpoint = nullptr;

template <class T>
std::shared_ptr<Model<T>> open_model(const std::string& dir, const Variants& v) {
  const double t0 = now_s();
  std::shared_ptr<Model<T>> m;
#ifdef DSV3_MPI
  if (g_size > 1) {
    // Every rank opens the model; if any fails, the lowest failing rank
    // reports its error and every rank exits 1 (no rank waits forever).
    std::string err;
    try {
      m = std::make_shared<Model<T>>(dir, v);
      m->checkpoint().advise_random();
      m->set_backend(backend_named<T>(g_backend));
      m->set_expert_group(g_group);
    } catch (const std::exception& e) {
      err = e.what();
    }
    int bad = err.empty() ? INT_MAX : g_rank, first = INT_MAX;
    MPI_Allreduce(&bad, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (first != INT_MAX) {
      g_error_known_to_all = true;
      if (first == g_rank) fail("rank ", g_rank, " of ", g_size, ": ", err);
      throw QuietExit{};
    }
    try {
      check_ranks_agree(dir);  // the same result on every rank: rank 0 reports it
    } catch (const Error&) {
      g_error_known_to_all = true;
      if (g_rank == 0) throw;
      throw QuietExit{};
    }
    g_n_experts = m->config().n_routed_experts;
    g_load.load_s = now_s() - t0;
    g_keep_model = m;
    g_checkpoint = &m->checkpoint();
    return m;  // no prefault: a rank touches only the experts it owns
  }
#endif
  m = std::make_shared<Model<T>>(dir, v);
  m->set_backend(backend_named<T>(g_backend));
#ifdef DSV3_MPI
  g_keep_model = m;  // --mpi-stats with one rank: the same accounting
  g_checkpoint = &m->checkpoint();
  g_n_experts = m->config().n_routed_experts;
#endif
  const uint64_t bytes = m->checkpoint().bytes();
  if (g_prefault == "on" || (g_prefault == "auto" && bytes <= mem_available_bytes() / 2)) {
    m->checkpoint().prefault();
    g_load.prefaulted = true;
  }
  g_load.load_s = now_s() - t0;
  return m;
}

#ifdef DSV3_MPI
// Bytes of [p, p + n) this process has in its page tables (/proc/self/pagemap
// bit 63, "present"): the checkpoint pages it touched.
inline std::size_t touched_bytes(const uint8_t* p, std::size_t n, int pagemap_fd) {
  if (n == 0 || pagemap_fd < 0) return 0;
  const std::size_t pg = std::size_t(sysconf(_SC_PAGESIZE));
  const uintptr_t first = reinterpret_cast<uintptr_t>(p) / pg, last = (reinterpret_cast<uintptr_t>(p) + n - 1) / pg;
  std::vector<uint64_t> e(last - first + 1);
  const ssize_t got = pread(pagemap_fd, e.data(), e.size() * 8, off_t(first * 8));
  if (got != ssize_t(e.size() * 8)) return 0;
  std::size_t pages = 0;
  for (uint64_t x : e) pages += (x >> 63) & 1;
  return std::min(n, pages * pg);
}

// --mpi-stats FILE: per rank, the routed-expert bytes it owns and touched,
// the other experts' bytes it touched (should be ~0), the shared weights, and
// the bytes it exchanged; gathered and written by rank 0 as JSON.
inline void write_mpi_stats(const std::string& path, int64_t n_experts) {
  double v[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // owned, owned touched, other, other touched, shared, shared touched, sent, peak RSS
  if (g_checkpoint) {
    const int fd = ::open("/proc/self/pagemap", O_RDONLY);
    for (const std::string& name : g_checkpoint->names()) {
      const TensorView& t = g_checkpoint->get(name);
      const std::size_t touched = touched_bytes(t.data, t.nbytes(), fd);
      const std::size_t at = name.find(".experts.");
      int kind = 2;  // shared
      if (at != std::string::npos && name.find("shared_experts") == std::string::npos) {
        const int64_t e = std::atoll(name.c_str() + at + 9);
        kind = !g_group || g_group->owns(e, n_experts) ? 0 : 1;
      }
      v[2 * kind] += double(t.nbytes());
      v[2 * kind + 1] += double(touched);
    }
    if (fd >= 0) ::close(fd);
  }
  v[6] = double(g_group ? g_group->bytes_sent : 0);
  {
    std::ifstream st("/proc/self/status");
    std::string key;
    for (double kb = 0; st >> key;)
      if (key == "VmHWM:" && st >> kb) { v[7] = kb * 1024; break; }
  }
  std::vector<double> all(std::size_t(8 * g_size));
  MPI_Gather(v, 8, MPI_DOUBLE, all.data(), 8, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  if (!writer()) return;
  nlohmann::json ranks = nlohmann::json::array();
  for (int r = 0; r < g_size; ++r) {
    const double* x = &all[std::size_t(8 * r)];
    ranks.push_back({{"rank", r}, {"experts_owned_bytes", x[0]}, {"experts_owned_touched_bytes", x[1]},
                     {"experts_other_bytes", x[2]}, {"experts_other_touched_bytes", x[3]},
                     {"shared_bytes", x[4]}, {"shared_touched_bytes", x[5]}, {"bytes_sent", x[6]},
                     {"peak_rss_bytes", x[7]}});
  }
  write_file_atomic(path, nlohmann::json({{"ranks", g_size}, {"per_rank", ranks}}).dump(2) + "\n");
}
#endif

// A logits row that is not finite means the checkpoint or config.json drove
// the model out of range (e.g. a rope_theta or a scaling factor inside the
// accepted ranges whose result overflows): an error naming the position,
// never a file of NaNs with exit 0.
// One pass over the bits first (an exponent of all ones: ∞ or NaN), a loop
// without an early exit that the compiler vectorises; the search that names
// the first bad id runs only when there is one. (The search alone took 21 µs
// of a 4 ms mid mlx4 token, vocab 32000, on the thread the others wait for;
// now 8.)
template <class T>
void check_finite_logits(const T* row, int64_t V, int64_t position, const char* cmd) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  static_assert(sizeof(T) == sizeof(Bits), "float or double logits");
  constexpr Bits exponent = sizeof(T) == 4 ? Bits(0x7f800000u) : Bits(0x7ff0000000000000ull);
  Bits bad = 0;
  for (int64_t v = 0; v < V; ++v) {
    Bits b;
    std::memcpy(&b, row + v, sizeof b);
    bad |= Bits((b & exponent) == exponent);
  }
  if (bad == 0) return;
  for (int64_t v = 0; v < V; ++v)
    if (!std::isfinite(row[v]))
      fail(cmd, ": the logits at position ", position, " are not finite (", double(row[v]), " for token id ", v,
           "): the checkpoint's weights or config.json values drive the model out of range");
}

// "0,17,42", or "@FILE" holding ids separated by commas or whitespace (long
// contexts do not fit on a command line).
inline std::vector<int32_t> parse_ids(const std::string& arg) {
  std::string s = arg;
  if (!arg.empty() && arg[0] == '@') {
    s = read_file_bounded(arg.substr(1), kMaxTextInputBytes, "--ids @FILE: token ids");
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
      j = parse_json(read_file_bounded(file, kMaxTextInputBytes, "a variants JSON file"), file);
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
