// Every backend, op by op, against the reference (in the manner of llama.cpp's
// test-backend-ops): each op of the seam × each stored format × the shape
// classes that take different paths in a fast backend, run on the backend under
// test and on ReferenceBackend (the definition of correct) with the same
// inputs, and compared. A backend that does not support a case says so
// (Backend::supports) and the case is reported as "not supported" — never
// counted as passed. ctest runs this suite as `backend_ops`.
//
// Backends under test: `backends_under_test()` below (the CPU backend today;
// CUDA and MPI register there). Formats: the `tiny` preset written by
// make-model as F32, BF16 (its AWQ variant has F16 embedding/head), FP8 e4m3
// with 128×128 blocks (160/96/320-wide matrices: edge blocks in both
// directions), AWQ int4 and MLX 4/5/8-bit (whose kv_b_proj is split into
// embed_q/unembed_out).
//
// The cases and their tolerances, each with its reason, are in
// include/dsv3/tools/backend_check.hpp (BackendCheck), which research code
// can run on a backend of its own.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <dsv3/cpu/backend.hpp>
#include <dsv3/cpu/quant.hpp>
#include <dsv3/dispatch.hpp>
#include <dsv3/tools/make_model.hpp>
#include <dsv3/model.hpp>
#include <dsv3/reference/backend.hpp>
#include <dsv3/tools/backend_check.hpp>

#include "test_util.hpp"

using namespace dsv3;
using namespace dsv3::check;

namespace {

template <class T>
struct NamedBackend {
  std::string name;
  std::shared_ptr<const Backend<T>> be;
};

// The backends this suite holds against the reference.
template <class T>
std::vector<NamedBackend<T>> backends_under_test() {
  return {{"cpu", std::make_shared<CpuBackend<T>>()}};
}

// mlx4-g64: MLX 4-bit at group 64, which does not divide the tiny model's
// widths 160, 96 and 32: those modules stay BF16 as mlx-lm leaves them (the
// embedding, routed experts as an unquantized stack, embed_q beside a
// quantized unembed_out).
const char* kFormats[] = {"f32", "bf16", "fp8", "awq", "mlx4", "mlx5", "mlx8", "mlx4-g64"};

// One tiny model per format, written once for the whole suite.
const std::string& model_dir(const std::string& fmt) {
  static test::TempDir root;
  static std::map<std::string, std::string> made;
  auto it = made.find(fmt);
  if (it != made.end()) return it->second;
  ModelSpec s;
  s.config = preset_config("tiny");
  s.dtype = fmt.substr(0, fmt.find('-'));
  if (fmt.find("-g") != std::string::npos) s.group_size = std::stoll(fmt.substr(fmt.find("-g") + 2));
  s.seed = 11;
  s.bias_mean = -0.2;  // some negative biased scores: the −inf group mask matters
  const std::string dir = root.path + "/" + fmt;
  make_model(dir, s);
  return made.emplace(fmt, dir).first->second;
}

template <class T>
Tally run_suite(const NamedBackend<T>& nb, bool quick) {
  Tally tally;
  tally.backend = nb.name + (std::is_same_v<T, double> ? " (f64)" : " (f32)");
  BackendCheck<T> s{*nb.be, {}, tally, {}};
  for (const char* fmt : kFormats) {
    Model<T> m(model_dir(fmt));
    s.run(fmt, m, quick);
  }
  return tally;
}

}  // namespace

namespace {
template <class T>
void every_backend_matches(bool quick) {
  for (const auto& nb : backends_under_test<T>()) {
    const Tally t = run_suite(nb, quick);
    MESSAGE(t.report());
    CHECK_MESSAGE(t.failed == 0, t.backend, ": ", t.failed, " case(s) past tolerance");
    CHECK_MESSAGE(t.passed > 0, t.backend, ": no case ran");
  }
}
}  // namespace

namespace {
// The kinds of CPU kernel for the quantized formats that this CPU can run:
// AVX-512 (with the AWQ decode kernel this CPU prefers, and with the other:
// cpu::awq_gathers_preferred), AVX-512 beside the AVX2 kernels that stream the
// weights (what Zen 4 runs: cpu::avx512_preferred), AVX2 (its MLX kernel
// reading codes as subnormals where the CPU allows it, and converting them),
// and the plain loops, which every CPU runs. `awq_only`: the kind differs from
// the one before only in AWQ's kernel. `own`: the kind this CPU runs unless
// told otherwise (the suite above).
struct KernelKind {
  const char* name;
  bool avx512, avx2, subnormal, awq_gathers = false, awq_only = false, preferred = true, own = false;
};
std::vector<KernelKind> kernel_kinds() {
  static const bool has512 = cpu::avx512_kernels(), has2 = cpu::avx2_kernels(), sub = cpu::avx2_subnormal_codes();
  static const bool gathers = cpu::awq_gathers_preferred(), pref = cpu::avx512_preferred();
  std::vector<KernelKind> k;
  if (has512) {
    k.push_back({"avx512", true, has2, sub, gathers, false, true, pref});
    k.push_back({gathers ? "avx512 (AWQ transposes)" : "avx512 (AWQ gathers)", true, has2, sub, !gathers, true});
    if (has2) k.push_back({"avx512 with AVX2 streams", true, true, sub, gathers, false, false, !pref});
  }
  if (has2 && sub) k.push_back({"avx2 (subnormal codes)", false, true, true, false, false, true, !has512});
  if (has2) k.push_back({"avx2", false, true, false, false, false, true, !has512 && !sub});
  k.push_back({"plain", false, false, false, false, false, true, !has512 && !has2});
  return k;
}
// Chooses a kind for its lifetime.
struct UseKernels {
  bool a = cpu::avx512_kernels(), b = cpu::avx2_kernels(), c = cpu::avx2_subnormal_codes(), d = cpu::awq_gathers_preferred();
  bool e = cpu::avx512_preferred();
  explicit UseKernels(const KernelKind& k) {
    cpu::avx512_kernels() = k.avx512, cpu::avx2_kernels() = k.avx2, cpu::avx2_subnormal_codes() = k.subnormal;
    cpu::awq_gathers_preferred() = k.awq_gathers;
    cpu::avx512_preferred() = k.preferred;
  }
  ~UseKernels() {
    cpu::avx512_kernels() = a, cpu::avx2_kernels() = b, cpu::avx2_subnormal_codes() = c, cpu::awq_gathers_preferred() = d;
    cpu::avx512_preferred() = e;
  }
};
std::string kernel_kind_names() {
  std::string s;
  for (const KernelKind& k : kernel_kinds()) s += (s.empty() ? "" : ", ") + std::string(k.name);
  return s;
}
}  // namespace

TEST_SUITE("backend_ops") {
TEST_CASE("every backend matches the reference op by op (f32)") { every_backend_matches<float>(false); }
TEST_CASE("every backend matches the reference op by op (f64)") { every_backend_matches<double>(true); }

// Every format with every other kind of kernel this CPU has (the suite
// above runs the CPU's own choice): the linears, and AWQ's and MLX's
// per-head products in MLA.
TEST_CASE("the CPU backend's other kernel kinds match the reference op by op (f32, quick)") {
  const std::vector<KernelKind> kinds = kernel_kinds();
  for (std::size_t i = 0; i < kinds.size(); ++i) {
    if (kinds[i].own) continue;
    UseKernels use(kinds[i]);
    CpuBackend<float> cpu;
    Tally t;
    t.backend = std::string("cpu ") + kinds[i].name + " (f32)";
    BackendCheck<float> s{cpu, {}, t, {}};
    for (const char* fmt : {"awq", "mlx4", "mlx5", "mlx8", "fp8", "bf16", "f32"}) {
      if (kinds[i].awq_only && std::string(fmt) != "awq") continue;
      Model<float> m(model_dir(fmt));
      s.run(fmt, m, true);
    }
    MESSAGE(t.report());
    CHECK_MESSAGE(t.failed == 0, t.backend, ": ", t.failed, " case(s) past tolerance");
    CHECK(t.passed > 0);
  }
}

// The suite can fail: a CPU backend with one deliberately broken kernel (the
// last FP8 column block's scale ignored, i.e. the edge block mis-scaled) is
// caught, and a backend that declines FP8 is reported as not supported.
namespace {
struct EdgeBlockBroken : CpuBackend<float> {
  std::string name() const override { return "broken"; }
  Act<float> linear(const Act<float>& xa, const Linear& w, const Variants& v) const override {
    Act<float> ya = CpuBackend<float>::linear(xa, w, v);
    if (!w.is_fp8() || w.in() % w.fp8()->block_cols == 0) return ya;
    const Mat<float>& x = xa.host();
    Mat<float>& y = ya.host_mut();
    // subtract the edge block's contribution once: as if its scale were 0
    std::vector<float> row(static_cast<std::size_t>(w.in()));
    for (int64_t o = 0; o < w.out(); ++o) {
      w.decode_rows(o, o + 1, row.data());
      for (int64_t i = 0; i < rows(x); ++i)
        for (int64_t k = w.in() / w.fp8()->block_cols * w.fp8()->block_cols; k < w.in(); ++k) y(i, o) -= x(i, k) * row[std::size_t(k)];
    }
    return ya;
  }
};
struct NoFp8 : CpuBackend<float> {
  std::string name() const override { return "no-fp8"; }
  bool supports(const OpQuery& q) const override { return q.dtype() != DType::F8_E4M3; }
};
}  // namespace

TEST_CASE("the suite catches a broken kernel and reports unsupported cases") {
  Tally broken, declined;
  broken.backend = "broken";
  declined.backend = "no-fp8";
  Model<float> m(model_dir("fp8"));
  EdgeBlockBroken eb;
  BackendCheck<float> s{eb, {}, broken, {}};
  const Linear& q_a = *m.weights().layers[0].self_attn.q_a_proj;  // FP8 [96, 160]: column blocks 128 + 32
  s.linear_case("fp8", q_a, 3, {}, "");
  s.linear_case("fp8", q_a, 40, {}, "");
  CHECK(broken.failed == 2);
  NoFp8 nf;
  BackendCheck<float> s2{nf, {}, declined, {}};
  s2.linear_case("fp8", q_a, 3, {}, "");
  s2.mlp_case("fp8", m, *m.weights().layers[0].mlp, 2, "dense", {});
  CHECK(declined.unsupported == 2);
  CHECK(declined.passed == 0);
}

// The quantized formats' kernels (cpu/quant.hpp, cpu/quant_avx512.hpp) at
// shapes the model presets do not reach: FP8 edge blocks that end in a
// partial 32-code run, BF16 block scales; AWQ bands of fewer than 16 words,
// one group over the whole input (group_size −1), f16 scales large enough that
// (q − z)·s rounds and small enough to be f16-subnormal; MLX 4/5/8-bit at
// group 32/64/128 (the AVX-512 kernel takes groups of 64 and more, the plain
// loops the rest), 5-bit rows with and without a whole run of 16 units,
// F16/BF16/F32 scales, a slice of stacked experts; F16 and BF16 dense rows with a tail.
// Each at 1–4 rows (fused decode) and 5, 64 rows (prefill bands), with the
// AVX-512 kernels and with the plain loops, against the reference.
namespace {
// The bytes of one synthetic tensor, viewed as a checkpoint would. Every
// other tensor starts at an odd address, as safetensors files give no
// alignment (mlx's own writer leaves BF16 scales at odd offsets): the kernels
// must read them without assuming any (UBSan checks it in CI).
struct Blob {
  std::vector<uint8_t> store;
  uint8_t* bytes;
  std::size_t offset;
  TensorView view;
  Blob(const std::string& name, DType dt, std::vector<int64_t> shape, std::size_t odd) : offset(odd) {
    view.name = name;
    view.dtype = dt;
    view.shape = std::move(shape);
    store.resize(view.nbytes() + 1);
    bytes = store.data() + offset;
  }
  std::size_t size() const { return view.nbytes(); }
  void done() { view.data = bytes; }
};

struct SyntheticLinears {
  std::vector<std::unique_ptr<Blob>> blobs;
  std::vector<std::pair<std::string, Linear>> linears;
  std::mt19937_64 g{2025};

  Blob& blob(const std::string& name, DType dt, std::vector<int64_t> shape, int odd = -1) {
    blobs.push_back(std::make_unique<Blob>(name, dt, std::move(shape), odd >= 0 ? std::size_t(odd) : blobs.size() % 2));
    return *blobs.back();
  }
  Blob& random_words(const std::string& name, DType dt, std::vector<int64_t> shape) {
    Blob& b = blob(name, dt, std::move(shape));
    for (std::size_t i = 0; i < b.size(); ++i) b.bytes[i] = uint8_t(g());
    b.done();
    return b;
  }
  // scales (or biases) drawn as log-uniform magnitudes in [lo, hi], sign +
  Blob& scales(const std::string& name, DType dt, std::vector<int64_t> shape, double lo, double hi, bool sign = false,
               int odd = -1) {
    Blob& b = blob(name, dt, std::move(shape), odd);
    std::uniform_real_distribution<double> u(std::log(lo), std::log(hi));
    for (int64_t i = 0; i < b.view.numel(); ++i) {
      const float v = float(std::exp(u(g))) * (sign && (g() & 1) ? -1.0f : 1.0f);
      if (dt == DType::F32) std::memcpy(&b.bytes[std::size_t(4 * i)], &v, 4);
      const uint16_t h = dt == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
      if (dt != DType::F32) std::memcpy(&b.bytes[std::size_t(2 * i)], &h, 2);
    }
    b.done();
    return b;
  }

  void fp8(int64_t out, int64_t in, DType sdt, int64_t br = 128) {
    const std::string n = "fp8." + std::to_string(out) + "x" + std::to_string(in) + "." + dtype_name(sdt) +
                          (br != 128 ? ".br" + std::to_string(br) : "");
    Blob& w = random_words(n, DType::F8_E4M3, {out, in});
    for (std::size_t i = 0; i < w.size(); ++i)
      if ((w.bytes[i] & 0x7f) == 0x7f) w.bytes[i] = 0x3c;  // no NaN codes (a case of its own below)
    Linear l;
    l.weight = w.view;
    l.storage = Linear::Fp8Blocks{scales(n + ".s", sdt, {(out + br - 1) / br, (in + 127) / 128}, 1e-4, 1e-2).view, br, 128};
    linears.emplace_back(n, l);
  }
  void awq(int64_t out, int64_t in, int64_t group, double slo, double shi) {
    const std::string n = "awq." + std::to_string(out) + "x" + std::to_string(in) + ".g" + std::to_string(group);
    const int64_t G = group < 0 ? in : group;
    auto q = std::make_shared<AwqWeight>(AwqWeight::bind(random_words(n + ".qweight", DType::I32, {in, out / 8}).view,
                                                         random_words(n + ".qzeros", DType::I32, {in / G, out / 8}).view,
                                                         scales(n + ".scales", DType::F16, {in / G, out}, slo, shi).view,
                                                         4, group, out, in));
    Linear l;
    l.weight = q->qweight;
    l.storage = Linear::Awq{q};
    l.rows_ = out;
    l.cols_ = in;
    linears.emplace_back(n + (shi > 100 ? " large-scales" : slo < 1e-4 ? " subnormal-scales" : ""), l);
  }
  void mlx(int64_t bits, int64_t group, int64_t out, int64_t in, DType sdt, int64_t experts = 0) {
    const std::string n = "mlx" + std::to_string(bits) + ".g" + std::to_string(group) + "." + std::to_string(out) + "x" +
                          std::to_string(in) + "." + dtype_name(sdt) + (experts ? ".stacked" : "");
    std::vector<int64_t> ws = {out, in * bits / 32}, ss = {out, in / group};
    if (experts) ws.insert(ws.begin(), experts), ss.insert(ss.begin(), experts);
    MlxWeight m = MlxWeight::bind(random_words(n + ".weight", DType::U32, ws).view, scales(n + ".scales", sdt, ss, 1e-3, 1e-1).view,
                                  scales(n + ".biases", sdt, ss, 1e-2, 1.0, true).view, bits, group);
    m.round_to_storage = false;  // as the model binds it: mlx's quantized_matmul
    auto q = std::make_shared<MlxWeight>(experts ? m.slice(experts - 1) : m);
    Linear l;
    l.weight = q->weight;
    l.storage = Linear::Mlx{q};
    l.rows_ = out;
    l.cols_ = in;
    linears.emplace_back(n, l);
  }
  // (odd: at an odd address, which the one-pass F16 / BF16 kernels leave to the general path)
  void half(DType dt, int64_t out, int64_t in, int odd = 0) {
    const std::string n = std::string(dt == DType::F16 ? "f16." : dt == DType::F32 ? "f32." : "bf16.") + std::to_string(out) + "x" + std::to_string(in) +
                          (odd ? ".odd" : "");
    Linear l;
    l.weight = scales(n, dt, {out, in}, 1e-3, 1.0, true, odd).view;
    linears.emplace_back(n, l);
  }

  SyntheticLinears() {
    fp8(200, 300, DType::F32);   // blocks 128 + 72 rows, 128 + 128 + 44 columns (44 = 32 + 12 one at a time)
    fp8(64, 1100, DType::BF16);
    fp8(203, 256, DType::F32, 126);  // 203 rows (4 a call and 3 one at a time); blocks of 126 rows split 4s (AVX2)
    awq(200, 256, 128, 1e-3, 1e-1);  // 25 words: a band of 16 and one of 9
    awq(64, 192, 64, 50, 3000);      // (q − z)·s rounds in f16
    awq(128, 128, -1, 1e-7, 1e-5);   // one group; f16-subnormal scales
    awq(136, 1088, 64, 1e-3, 1e-1);  // 17 groups: units of 4 groups and one of 1; a band of 16 words and one of 1
    awq(40, 1040, 40, 1e-3, 1e-1);   // 26 groups of 40 rows: 2·16 + 8 a group through the tables one row at a time
    awq(2048, 192, 64, 1e-3, 1e-1);  // 1 KB rows, 4 of L1's sets: the AVX-512 kernel's wide form
    awq(2048, 120, 40, 1e-3, 1e-1);  // the wide form with groups of 2·16 + 8 rows
    for (int64_t bits : {4, 5, 8}) {
      mlx(bits, 64, 37, 1536, DType::BF16);  // 5-bit: 48 units = 3 runs of 16
      mlx(bits, 32, 21, 320, DType::F16);    // plain loops (group < 64); 5-bit: 10 units, all tail
      mlx(bits, 128, 19, 384, DType::F32);
      mlx(bits, 64, 16, 512, DType::BF16, 3);
    }
    half(DType::F16, 70, 100);   // 64 + 36
    half(DType::F16, 70, 100, 1);
    half(DType::BF16, 70, 100);  // 64 + 32 + 4: every loop of the BF16 kernel
    half(DType::BF16, 9, 30);    // shorter than one run of 32
    half(DType::BF16, 9, 30, 1);
    half(DType::F32, 70, 100);   // the dense rows too (Zen 4 runs them one at a time in AVX2: avx512_preferred)
    half(DType::F32, 9, 30, 1);
  }
};
}  // namespace

TEST_CASE("the quantized-format kernels match the reference at awkward shapes, with every kind of kernel") {
  SyntheticLinears s;
  CpuBackend<float> cpu;
  for (const KernelKind& kind : kernel_kinds()) {
    UseKernels use(kind);
    Tally t;
    t.backend = std::string("cpu ") + kind.name;
    BackendCheck<float> check{cpu, {}, t, {}};
    for (const auto& [name, W] : s.linears)
      for (int64_t n : {1, 2, 3, 4, 5, 64}) check.linear_case(name, W, n, {}, "");
    MESSAGE(t.report());
    CHECK_MESSAGE(t.failed == 0, t.backend, ": ", t.failed, " case(s) past tolerance");
    CHECK(t.passed == int64_t(s.linears.size()) * 6);
  }
  MESSAGE("kernel kinds on this CPU: ", kernel_kind_names());
}

// The AVX2 MLX and FP8 kernels' subnormal-code routes (quant_avx2.hpp) read
// x scaled by a power of two chosen from its largest |x|: they give the
// conversion routes' bits for x of every magnitude, including those where
// they decline (|x| ≥ 2^20, < 2^-20, not finite), and under MXCSR's
// denormals-are-zero (a -ffast-math program), where they must not run.
#ifdef DSV3_HAVE_AVX2_KERNELS
TEST_CASE("the AVX2 kernels' subnormal-code routes give the conversion routes' bits") {
  if (!cpu::avx2_kernels()) {
    MESSAGE("no AVX2 on this CPU: nothing to compare");
    return;
  }
  SyntheticLinears s;
  const KernelKind conv{"avx2", false, true, false}, sub{"avx2 (subnormal codes)", false, true, true};
  int compared = 0;
  for (const auto& [name, W] : s.linears) {
    if (!W.mlx() && !W.fp8()) continue;
    for (float mag : {1.0f, 0x1p19f, 0x1p21f, 0x1p-19f, 0x1p-21f, 0.0f, 2.0f})
      for (bool daz : {false, true}) {
        Mat<float> x = random_rows<float>(3, W.in(), 5);
        for (float& v : x) v *= mag;
        if (mag == 0x1p19f) x(1, 2) = std::numeric_limits<float>::infinity();  // not finite: the conversion route
        if (mag == 2.0f) x(2, W.in() - 1) = std::numeric_limits<float>::quiet_NaN();  // (the last value looked at)
        Mat<float> a, b;
        {
          UseKernels use(conv);
          a = cpu::linear(x, W);
        }
        {
          UseKernels use(sub);
          const unsigned csr = _mm_getcsr();
          if (daz) _mm_setcsr(csr | 0x40);
          b = cpu::linear(x, W);
          _mm_setcsr(csr);
        }
        CHECK_MESSAGE(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0, name, " |x| ~ ", mag, daz ? " DAZ" : "");
        ++compared;
        // x prepared for the subnormal route, then denormals-are-zero set where the kernel
        // runs (a thread of its own MXCSR): the kernel's fallback reads the same scaled x
        // (5-bit MLX: its codes in place) by conversion, and gives the same bits
        if (daz || !std::isfinite(x(1, 2)) || !std::isfinite(x(2, W.in() - 1))) continue;
        UseKernels use(sub);
        cpu::FusedInput in;
        cpu::fused_prepare(W, x.data(), 3, in);
        if (mag == 1.0f) CHECK_MESSAGE(in.xexp != 0, name);
        std::vector<float> scratch, y(std::size_t(3 * W.out()));
        const unsigned csr = _mm_getcsr();
        _mm_setcsr(csr | 0x40);
        cpu::fused_rows(W, x.data(), 3, in, 0, W.out(), scratch, y.data(), W.out());
        _mm_setcsr(csr);
        CHECK_MESSAGE(std::memcmp(a.data(), y.data(), a.size() * sizeof(float)) == 0, name, " |x| ~ ", mag,
                      " DAZ after prepare");
      }
  }
  CHECK(compared > 0);
}
#endif

// AWQ's AVX-512 table kernels (cpu/quant_avx512.hpp): round_f16_normal, the
// three-operation rounding their tables take where a group's scales allow
// (awq_scales_normal), against the reference's conversion for every product
// (q − z)·s with such a scale, of either sign; and the two ways of bringing
// the words into lanes (gathers, transposes), which add the same products in
// the same order, giving the same bits at every shape of the awkward-shapes
// case above, including groups of 40 rows (one row at a time past each
// block of 16), the wide form and f16-subnormal scales.
#ifdef DSV3_HAVE_AVX512_KERNELS
namespace {
DSV3_AVX512 void round_f16_normal_16(const float* v, float* out) {
  _mm512_storeu_ps(out, cpu::avx512::round_f16_normal(_mm512_loadu_ps(v)));
}
}  // namespace
TEST_CASE("the AVX-512 AWQ tables: round_f16_normal is the reference's f16 rounding; gathers and transposes give the same bits") {
  if (!cpu::avx512_kernels()) {
    MESSAGE("no AVX-512 on this CPU: nothing to compare");
    return;
  }
  int64_t checked = 0, bad = 0;
  std::vector<float> v, got(16);
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float s = f16_to_f32(uint16_t(h)), as = std::fabs(s);
    float row[128];
    std::fill(row, row + 128, s);
    const bool normal = as == 0 || (as >= 0x1p-14f && as <= 4366.0f);
    if (std::isfinite(s)) CHECK_MESSAGE(cpu::avx512::awq_scales_normal(row) == normal, "scale ", s);
    if (!normal) continue;
    for (int d = -15; d <= 15; ++d) v.push_back(float(d) * s);
  }
  for (std::size_t e = 0; e < v.size(); e += 16) {
    float in[16] = {};
    std::copy(v.begin() + std::ptrdiff_t(e), v.begin() + std::ptrdiff_t(std::min(v.size(), e + 16)), in);
    round_f16_normal_16(in, got.data());
    for (int l = 0; l < 16; ++l, ++checked)
      bad += cpu::qk::as_u32(got[std::size_t(l)]) != cpu::qk::as_u32(f16_to_f32(f32_to_f16(in[l])));
  }
  CHECK(bad == 0);
  CHECK(checked > 1000000);
  {  // one scale out of range in a group: the tables take the conversions
    float row[128];
    std::fill(row, row + 128, 0.01f);
    row[77] = 0x1p-15f;
    CHECK_FALSE(cpu::avx512::awq_scales_normal(row));
    row[77] = std::numeric_limits<float>::quiet_NaN();
    CHECK_FALSE(cpu::avx512::awq_scales_normal(row));
  }

  SyntheticLinears s;
  const KernelKind gathers{"avx512 (AWQ gathers)", true, cpu::avx2_kernels(), false, true};
  const KernelKind transposes{"avx512 (AWQ transposes)", true, cpu::avx2_kernels(), false, false};
  int compared = 0;
  for (const auto& [name, W] : s.linears) {
    if (!W.awq()) continue;
    for (int64_t n : {1, 2, 3, 4}) {
      const Mat<float> x = random_rows<float>(n, W.in(), 9);
      Mat<float> a, b;
      {
        UseKernels use(gathers);
        a = cpu::linear(x, W);
      }
      {
        UseKernels use(transposes);
        b = cpu::linear(x, W);
      }
      CHECK_MESSAGE(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0, name, " n = ", n);
      ++compared;
    }
  }
  CHECK(compared == 7 * 4);
  // MLA's absorbed queries (awq_rows_dot, a head's W_UK read along its rows):
  // the same two ways, on slices of words as heads take them (a whole band,
  // a few words from the middle), groups whose rows end in fewer than 16
  int rows_compared = 0;
  for (const auto& [name, W] : s.linears) {
    if (!W.awq()) continue;
    const AwqWeight& A = *W.awq();
    const int64_t words = A.qweight.shape[1], in = A.in();
    for (const auto& [w0, nw] : {std::pair<int64_t, int64_t>{0, std::min<int64_t>(words, 16)},
                                 std::pair<int64_t, int64_t>{words / 3, std::min<int64_t>(words - words / 3, 5)}})
      for (int64_t n : {1, 2, 4}) {
        const Mat<float> x = random_rows<float>(n, 8 * nw, 11);
        std::vector<float> a(std::size_t(n * in)), b(a.size()), scratch;
        {
          UseKernels use(gathers);
          cpu::awq_rows_dot(A, x.data(), 8 * nw, n, w0, nw, scratch, a.data(), in);
        }
        {
          UseKernels use(transposes);
          cpu::awq_rows_dot(A, x.data(), 8 * nw, n, w0, nw, scratch, b.data(), in);
        }
        CHECK_MESSAGE(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0, name, " words ", w0, "+", nw, " n = ", n);
        ++rows_compared;
      }
  }
  CHECK(rows_compared == 7 * 2 * 3);
}
#endif

// few_rows.hpp's products (MLA's per-head products in decode) against sums in
// double, at lengths that leave every kind of tail (K and width not multiples
// of 16, rows of b not a multiple of 4), with AVX-512 and without. Bound: a
// sum of K products in f32, in any order, is within K·2^-24·Σ|a·b| of the
// exact sum (the standard bound γ_K; the products are rounded too, hence K + 1).
TEST_CASE("few_rows products match sums in double, with every kind of kernel; BF16 b read in place gives the same bits") {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  // |got − Σ_t a(t)·b(t)| within (len + 1)·2^-24·Σ|a·b|, the sum taken in double
  auto check_sum = [](float got, int64_t len, const std::function<double(int64_t)>& a, const std::function<double(int64_t)>& b) {
    double exact = 0, mag = 0;
    for (int64_t t = 0; t < len; ++t) exact += a(t) * b(t), mag += std::fabs(a(t) * b(t));
    CHECK(std::fabs(got - exact) <= double(len + 1) * 0x1p-24 * mag);
  };
  for (const KernelKind& kind : kernel_kinds()) {
    UseKernels use(kind);
    for (int64_t n : {1, 3, 4, 6, 9})
      for (int64_t K : {5, 16, 160, 173})
        for (int64_t m : {1, 6, 9}) {
          const int64_t lda = K + 3, ldb = K + 7, lds = m + 2;
          std::vector<float> a(std::size_t(n * lda)), b(std::size_t(m * ldb)), s(std::size_t(n * lds), -1.0f);
          for (float& v : a) v = nd(rng);
          for (float& v : b) v = nd(rng);
          cpu::rows_dot_rows(a.data(), lda, n, K, b.data(), ldb, m, s.data(), lds);
          for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < m; ++j)
              check_sum(s[i * lds + j], K, [&](int64_t k) { return a[i * lda + k]; }, [&](int64_t k) { return b[j * ldb + k]; });
          for (int64_t i = 0; i < n; ++i) CHECK(s[i * lds + m] == -1.0f);  // nothing past m written
          // p·b over the same b: m rows mixed, `width` = K columns of each
          const int64_t ldp = m + 1, ldo = K + 5;
          std::vector<float> p(std::size_t(n * ldp)), o(std::size_t(n * ldo), -1.0f);
          for (float& v : p) v = nd(rng);
          cpu::rows_mix_rows(p.data(), ldp, n, m, b.data(), ldb, K, o.data(), ldo);
          for (int64_t i = 0; i < n; ++i) {
            for (int64_t c = 0; c < K; ++c)
              check_sum(o[i * ldo + c], m, [&](int64_t j) { return p[i * ldp + j]; }, [&](int64_t j) { return b[j * ldb + c]; });
            CHECK(o[i * ldo + K] == -1.0f);
          }
          // a row's sums do not depend on the rows beside it (MLA's decode puts four heads'
          // queries in one call): each row alone gives the same bits
          for (int64_t i = 0; i < n; ++i) {
            std::vector<float> s1(static_cast<std::size_t>(m)), o1(static_cast<std::size_t>(K));
            cpu::rows_dot_rows(a.data() + i * lda, lda, 1, K, b.data(), ldb, m, s1.data(), m);
            cpu::rows_mix_rows(p.data() + i * ldp, ldp, 1, m, b.data(), ldb, K, o1.data(), K);
            CHECK(std::memcmp(s1.data(), s.data() + i * lds, std::size_t(m) * sizeof(float)) == 0);
            CHECK(std::memcmp(o1.data(), o.data() + i * ldo, std::size_t(K) * sizeof(float)) == 0);
          }
          // b as stored BF16 (a BF16 kv_b_proj read in place): the same bits as over b widened first
          std::vector<cpu::Bf16> b16(b.size());
          std::vector<float> bw(b.size());
          for (std::size_t e = 0; e < b.size(); ++e) b16[e].bits = f32_to_bf16(b[e]), bw[e] = bf16_to_f32(b16[e].bits);
          std::vector<float> s16(s.size(), -1.0f), sw(s.size(), -1.0f), o16(o.size(), -1.0f), ow(o.size(), -1.0f);
          cpu::rows_dot_rows(a.data(), lda, n, K, b16.data(), ldb, m, s16.data(), lds);
          cpu::rows_dot_rows(a.data(), lda, n, K, bw.data(), ldb, m, sw.data(), lds);
          cpu::rows_mix_rows(p.data(), ldp, n, m, b16.data(), ldb, K, o16.data(), ldo);
          cpu::rows_mix_rows(p.data(), ldp, n, m, bw.data(), ldb, K, ow.data(), ldo);
          CHECK(std::memcmp(s16.data(), sw.data(), s.size() * sizeof(float)) == 0);
          CHECK(std::memcmp(o16.data(), ow.data(), o.size() * sizeof(float)) == 0);
        }
  }
}

TEST_CASE("FP8 rows mixed from their codes give the bits of the rows decoded, then mixed; a NaN code declines") {
  // avx2::fp8_mix_rows (MLA's q_nope·W_UK with an FP8 kv_b_proj) against the
  // reference's values q·s and rows_mix_rows over them, with every kind of
  // kernel that runs it (the CPU's AVX2 ones: AVX-512 machines have them too)
  std::mt19937 rng(17);
  std::normal_distribution<float> nd;
  std::uniform_int_distribution<int> code(0, 255);
  int ran = 0;
  for (const KernelKind& kind : kernel_kinds()) {
    UseKernels use(kind);
    if (!cpu::avx2_kernels()) continue;  // (mla.hpp decodes the rows there)
    ++ran;
    for (int64_t bc : {32, 128})
      for (int64_t width : {16, 100, 128, 200})
        for (int64_t m : {1, 5, 64})
          for (int64_t n : {1, 3, 4}) {
            const int64_t ldw = width + 9, ldp = m + 2, ldo = width + 3, sc = (width + bc - 1) / bc;
            std::vector<uint8_t> w(std::size_t(m * ldw));
            for (uint8_t& b : w) {
              b = uint8_t(code(rng));
              if ((b & 0x7f) == 0x7f) b = 0x3c;  // NaN codes: below
            }
            std::vector<float> s(static_cast<std::size_t>(sc)), p(static_cast<std::size_t>(n * ldp)),
                dec(static_cast<std::size_t>(m * width));
            for (float& v : s) v = std::ldexp(1.0f + 0.37f * float(code(rng)) / 255.0f, -int(code(rng) % 12));
            for (float& v : p) v = nd(rng);
            for (int64_t j = 0; j < m; ++j)
              for (int64_t c = 0; c < width; ++c)
                dec[std::size_t(j * width + c)] = fp8_e4m3_to_f32_bits(w[std::size_t(j * ldw + c)]) * s[std::size_t(c / bc)];
            std::vector<float> want(std::size_t(n * ldo), -1.0f), got(want.size(), -1.0f);
            cpu::rows_mix_rows(p.data(), ldp, n, m, dec.data(), width, width, want.data(), ldo);
            REQUIRE(cpu::avx2::fp8_mix_rows(p.data(), ldp, n, m, w.data(), ldw, s.data(), bc, width, got.data(), ldo,
                                            fp8_e4m3_to_f32_bits));
            CHECK(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0);
            // a NaN code in a column of the vector steps: declined; in the last width mod 16: NaN there
            std::vector<uint8_t> wn = w;
            wn[std::size_t((m - 1) * ldw + 3)] = 0xff;
            CHECK_FALSE(cpu::avx2::fp8_mix_rows(p.data(), ldp, n, m, wn.data(), ldw, s.data(), bc, width, got.data(),
                                                ldo, fp8_e4m3_to_f32_bits));
            if (width % 16 != 0) {
              wn = w;
              wn[std::size_t(width - 1)] = 0x7f;
              CHECK(cpu::avx2::fp8_mix_rows(p.data(), ldp, n, m, wn.data(), ldw, s.data(), bc, width, got.data(), ldo,
                                            fp8_e4m3_to_f32_bits));
              for (int64_t i = 0; i < n; ++i) CHECK(std::isnan(got[std::size_t(i * ldo + width - 1)]));
            }
          }
  }
  // a scale whose 2^8 multiple would not be exact: declined
  std::vector<uint8_t> w(16, 0x38);
  std::vector<float> s{0x1p120f}, p{1.0f}, o(16);
  if (cpu::avx2_kernels())
    CHECK_FALSE(cpu::avx2::fp8_mix_rows(p.data(), 1, 1, 1, w.data(), 16, s.data(), 128, 16, o.data(), 16,
                                        fp8_e4m3_to_f32_bits));
  int want = 0;  // every kind with the AVX2 kernels ran the checks above (none where the CPU lacks them)
  for (const KernelKind& kind : kernel_kinds()) want += kind.avx2 ? 1 : 0;
  CHECK(ran == want);
  CHECK((want > 0) == cpu::avx2_kernels());
}

namespace {
// The fp8 200x300 linear of s with two NaN codes: 0x7f in row 5's edge
// block (column 250), 0xff in row 130 within a full run of 16 (column 17).
Linear fp8_with_nan_codes(SyntheticLinears& s) {
  Linear W = s.linears[0].second;
  Blob& nanw = s.blob("fp8.nan", DType::F8_E4M3, W.weight.shape);
  std::copy_n(W.weight.data, W.weight.nbytes(), nanw.bytes);
  nanw.bytes[5 * 300 + 250] = 0x7f;
  nanw.bytes[130 * 300 + 17] = 0xff;
  nanw.done();
  W.weight = nanw.view;
  return W;
}
}  // namespace

TEST_CASE("an FP8 NaN code gives NaN in the fused kernel, as in the reference") {
  SyntheticLinears s;
  const Linear W = fp8_with_nan_codes(s);
  for (const KernelKind& kind : kernel_kinds()) {
    UseKernels use(kind);
    const Mat<float> x = random_rows<float>(2, 300, 7);
    const Mat<float> y = cpu::linear(x, W), r = reference::linear(x, W);
    CHECK(std::isnan(y(0, 5)));
    CHECK(std::isnan(r(0, 5)));
    CHECK(std::isfinite(y(1, 4)));
  }
}

// The AVX2 FP8 kernel leaves out its per-code NaN check on groups of four
// rows that Fp8NanMemo has recorded clean; the first call on a group checks
// and records. Without the check it gives the same bits; a group with a NaN
// code is recorded and still gives NaN, the first time and after; and a copy
// of a Linear given other bytes (as fp8_with_nan_codes makes: the memo is
// shared) gets no answer learnt from the first bytes.
TEST_CASE("FP8 row groups known to hold no NaN code skip the check, and only those") {
  SyntheticLinears s;
  const Linear clean = s.linears[0].second;  // fp8 200x300: 50 groups of 4 rows
  REQUIRE(clean.fp8());
  Linear checked = clean;  // no memo: every call checks every code
  std::get<Linear::Fp8Blocks>(checked.storage).nan_memo = nullptr;
  const Mat<float> x = random_rows<float>(2, 300, 11);
  for (const KernelKind& kind : kernel_kinds()) {
    UseKernels use(kind);
    const Mat<float> want = cpu::linear(x, checked), first = cpu::linear(x, clean), again = cpu::linear(x, clean);
    CHECK_MESSAGE(std::memcmp(first.data(), want.data(), want.size() * sizeof(float)) == 0, kind.name);
    CHECK_MESSAGE(std::memcmp(again.data(), want.data(), want.size() * sizeof(float)) == 0, kind.name);
  }
  auto states = [](const Linear& W) {  // how many groups the memo holds as unknown, clean, NaN
    const std::atomic<uint8_t>* f = W.fp8()->nan_memo->flags(W.weight.data, 50);
    std::array<int, 3> n{};
    if (f)
      for (int g = 0; g < 50; ++g) ++n[std::size_t(f[g].load())];
    return n;
  };
  if (cpu::avx2_kernels()) CHECK(states(clean) == std::array<int, 3>{0, 50, 0});  // every group read, all clean
  const Linear copy = fp8_with_nan_codes(s);  // the same memo, other bytes (NaN codes in rows 5 and 130)
  CHECK(copy.fp8()->nan_memo == clean.fp8()->nan_memo);
  CHECK(copy.fp8()->nan_memo->flags(copy.weight.data, 50) == nullptr);
  Linear own = copy;  // the NaN bytes with a memo of their own
  std::get<Linear::Fp8Blocks>(own.storage).nan_memo = std::make_shared<Fp8NanMemo>();
  for (const KernelKind& kind : kernel_kinds()) {
    UseKernels use(kind);
    for (const Linear* W : std::initializer_list<const Linear*>{&copy, &own, &own}) {
      const Mat<float> y = cpu::linear(x, *W);
      CHECK_MESSAGE((std::isnan(y(0, 5)) && std::isnan(y(1, 5)) && std::isnan(y(0, 130)) && std::isnan(y(1, 130))),
                    kind.name);
      CHECK_MESSAGE((std::isfinite(y(0, 4)) && std::isfinite(y(1, 131)) && std::isfinite(y(0, 128))), kind.name);
    }
  }
  if (cpu::avx2_kernels()) CHECK(states(own) == std::array<int, 3>{0, 48, 2});  // groups 1 and 32
}

// The band decoders (prefill, and MLA's per-head rows of an FP8 kv_b_proj in
// decode) give the reference's decode_rows bit for bit for FP8 (NaN codes
// and edge blocks included) and AWQ, with every kind of kernel.
TEST_CASE("the vectorised FP8 and AWQ band decoders give the reference's bits") {
  SyntheticLinears s;
  std::vector<std::pair<std::string, Linear>> ws = {{"fp8.nan", fp8_with_nan_codes(s)}};
  for (const auto& [name, W] : s.linears)
    if (W.fp8() || W.awq()) ws.emplace_back(name, W);
  for (const KernelKind& kind : kernel_kinds()) {
    UseKernels use(kind);
    for (const auto& [name, W] : ws) {
      const int64_t r0 = W.awq() ? 8 : 3, r1 = W.out();  // FP8: a band that starts inside a block row; AWQ: whole words
      std::vector<float> got(std::size_t((r1 - r0) * W.in())), want(got.size());
      cpu::decode_rows_fast(W, r0, r1, got.data());
      W.decode_rows(r0, r1, want.data());
      CHECK_MESSAGE(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0, kind.name, " ", name);
    }
  }
}

// round_f16 (the AWQ kernels' branch-free f16 rounding) equals the reference
// conversion for every product (q − z)·s of the format, and across the range.
TEST_CASE("round_f16 is f16_to_f32(f32_to_f16(x)) for every AWQ product") {
  int64_t bad = 0;
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const float s = f16_to_f32(uint16_t(h));
    for (int d = -15; d <= 15; ++d) {
      const float v = float(d) * s;
      bad += cpu::qk::as_u32(cpu::qk::round_f16(v)) != cpu::qk::as_u32(f16_to_f32(f32_to_f16(v)));
    }
  }
  std::mt19937 g(3);
  for (int i = 0; i < 1000000; ++i) {
    const float v = cpu::qk::as_f32(g());
    if (std::isnan(v)) continue;
    bad += cpu::qk::as_u32(cpu::qk::round_f16(v)) != cpu::qk::as_u32(f16_to_f32(f32_to_f16(v)));
  }
  CHECK(bad == 0);
}

// Dispatch: a primary backend that takes only F32 linears gets exactly those,
// the CPU backend runs the rest, and the logits match the CPU's.
namespace {
struct F32LinearsOnly : ReferenceBackend<float> {
  mutable int linears = 0, other = 0;
  std::string name() const override { return "f32-linears"; }
  bool supports(const OpQuery& q) const override { return q.op == Op::linear && q.dtype() == DType::F32; }
  Act<float> linear(const Act<float>& x, const Linear& w, const Variants& v) const override {
    (w.weight.dtype == DType::F32 ? linears : other)++;
    return ReferenceBackend<float>::linear(x, w, v);
  }
  Act<float> rms_norm(const Act<float>& x, const TensorView& w, double eps, const Variants& v) const override {
    other++;
    return ReferenceBackend<float>::rms_norm(x, w, eps, v);
  }
  Act<float> embed(const Linear& t, const std::vector<int32_t>& ids, const Variants& v) const override {
    other++;
    return ReferenceBackend<float>::embed(t, ids, v);
  }
};
}  // namespace

TEST_CASE("Dispatch sends each op to the primary when it supports it, else to the CPU") {
  Model<float> m(model_dir("f32"));
  auto primary = std::make_shared<F32LinearsOnly>();
  const std::vector<int32_t> ids = {3, 1, 4, 1, 5};
  auto c1 = m.new_cache();
  const Mat<float> cpu = m.forward(ids, c1);
  m.set_backend(primary);
  auto c2 = m.new_cache();
  const Mat<float> mixed = m.forward(ids, c2);
  CHECK(m.backend().name() == "f32-linears+cpu");
  // every linear of the model: 7 per layer before its FFN (q_a, q_b, kv_a,
  // o_proj, …), the router, the experts; counted, never an rms_norm or embed
  CHECK(primary->linears > 3 * m.config().num_hidden_layers);
  CHECK(primary->other == 0);
  CHECK(rel_err(mixed, cpu) <= 2e-5);
}
}  // TEST_SUITE

TEST_SUITE("backend_ops") {
// The edit hook (Trace editor) acts at the same points on every backend: a
// forced routing, a zeroed head and a patched residual give the same logits on
// the CPU backend as on the reference (to the composite tolerance), and an
// edit that names no expert is an error naming the layer and token.
TEST_CASE("trace edits act the same on every backend") {
  Model<float> m(model_dir("f32"));
  const std::vector<int32_t> ids = {3, 1, 4, 1, 5, 9};
  const int64_t L = m.config().first_k_dense_replace, K = m.config().num_experts_per_tok, dv = m.config().v_head_dim;
  Trace edits(nullptr, nullptr, [&](TraceRecord& r) {
    if (r.name == "topk_ids" && r.layer == L)
      for (int64_t j = 0; j < K; ++j) r.data[std::size_t(2 * K + j)] = double(K - 1 - j);  // token 2: experts K-1..0
    if (r.name == "attn_out" && r.layer == 0)
      for (int64_t i = 0; i < r.shape[0]; ++i) std::fill_n(r.data.begin() + i * r.shape[1], dv, 0.0);  // head 0
    if (r.name == "resid_ffn" && r.layer == 0) r.data.back() += 1.0;
  });
  std::vector<double> forced_ids;
  Trace seen([&](TraceRecord&& r) { if (r.layer == L) forced_ids = r.data; },
             [&](const std::string& n) { return n == "topk_ids"; }, edits.editor());
  auto c1 = m.new_cache();
  const Mat<float> plain = m.forward(ids, c1);
  auto c2 = m.new_cache();
  const Mat<float> cpu = m.forward(ids, c2, {}, seen);
  m.set_backend(std::make_shared<ReferenceBackend<float>>());
  auto c3 = m.new_cache();
  const Mat<float> ref = m.forward(ids, c3, {}, edits);
  CHECK(rel_err(cpu, ref) <= 2e-5);
  CHECK(rel_err(cpu, plain) > 1e-3);                                   // the edits took effect
  REQUIRE(forced_ids.size() == std::size_t(int64_t(ids.size()) * K));  // the sink sees the edited routing
  CHECK(forced_ids[std::size_t(2 * K)] == double(K - 1));
  Trace bad(nullptr, nullptr, [&](TraceRecord& r) {
    if (r.name == "topk_ids") r.data[1] = r.data[0];
  });
  auto c4 = m.new_cache();
  CHECK_THROWS_WITH_AS(m.forward(ids, c4, {}, bad), doctest::Contains("token 0: topk_ids edited to expert"), Error);
}
}  // TEST_SUITE

// -- the seam without host round trips ------------------------------------------
// A backend that keeps every activation in its own buffers (a stand-in for a
// GPU's memory: Act handles only it reads), and each layer's cache too. Its
// kernels are the reference's, run inside it. It counts what crosses the seam:
// `upload` (host -> it) and `download` (it -> host). It can be told to decline
// the MoE op and every linear, so that Dispatch falls back to the CPU backend
// for those alone.
namespace {
struct Buf {
  Mat<float> m;  // "device memory"
};
struct ResidentCache : LayerCache {
  LatentCache<float> inner;
  std::size_t bytes() const override { return inner.bytes(); }
  void truncate(int64_t len, int64_t total) override { inner.truncate(len, total); }
};
struct Resident : Backend<float> {
  bool decline_moe_and_linear = false;
  mutable int uploads = 0, downloads = 0, ops_run = 0;
  ReferenceBackend<float> kernels;  // what runs inside, on its own buffers

  std::string name() const override { return "resident"; }
  bool on_host() const override { return false; }
  bool supports(const OpQuery& q) const override {
    if (decline_moe_and_linear && (q.op == Op::moe || q.op == Op::linear)) return false;
    return q.dtype() == DType::F32;
  }
  Act<float> upload(const Mat<float>& x) const override {
    uploads++;
    return wrap(Mat<float>(x));
  }
  Mat<float> download(const Act<float>& x) const override {
    downloads++;
    return mine(x);
  }
  std::unique_ptr<LayerCache> new_cache(const Config&, bool bf16) const override {
    auto c = std::make_unique<ResidentCache>();
    c->inner.bf16 = bf16;
    return c;
  }
  Act<float> embed(const Linear& t, const std::vector<int32_t>& ids, const Variants& v) const override {
    return run(kernels.embed(t, ids, v));
  }
  Act<float> linear(const Act<float>& x, const Linear& w, const Variants& v) const override {
    return run(kernels.linear(Act<float>::view(mine(x)), w, v));
  }
  Act<float> rms_norm(const Act<float>& x, const TensorView& w, double eps, const Variants& v) const override {
    return run(kernels.rms_norm(Act<float>::view(mine(x)), w, eps, v));
  }
  void rope(Act<float>& x, int64_t col0, int64_t width, int64_t stride, const std::vector<RopeRow>& r,
            bool interleave) const override {
    ops_run++;
    reference::rope(mine(x), col0, width, stride, r, interleave);
  }
  Act<float> attention_mla(const Backend<float>&, const Config& c, const AttentionWeights& w, const Act<float>& x,
                           LayerCache& cache, int64_t start, const std::vector<RopeRow>& rope, AttnForm form,
                           const Trace& trace, int64_t layer, const Variants& v) const override {
    auto* rc = dynamic_cast<ResidentCache*>(&cache);
    REQUIRE(rc != nullptr);
    return run(kernels.attention_mla(kernels, c, w, Act<float>::view(mine(x)), rc->inner, start, rope, form, trace, layer, v));
  }
  Act<float> moe(const Backend<float>&, const Config& c, const MoEWeights& w, const Act<float>& x, const Trace& trace,
                 int64_t layer, int64_t start, const Variants& v) const override {
    return run(kernels.moe(kernels, c, w, Act<float>::view(mine(x)), trace, layer, start, v));
  }
  Act<float> mlp(const Backend<float>&, const MLPWeights& w, const Act<float>& x, const Variants& v) const override {
    return run(kernels.mlp(kernels, w, Act<float>::view(mine(x)), v));
  }
  void add(Act<float>& h, const Act<float>& f, const Variants& v) const override {
    ops_run++;
    mine(h) += mine(f);
    round_act(v, mine(h));
  }
  Act<float> take_rows(const Act<float>& x, int64_t r0, int64_t r1) const override {
    return run(Act<float>(dsv3::take_rows(mine(x), r0, r1)));
  }
  Act<float> concat_cols(const Act<float>& a, const Act<float>& b) const override {
    return run(kernels.concat_cols(Act<float>::view(mine(a)), Act<float>::view(mine(b))));
  }
  void zero_rows(Act<float>& x, int64_t r0, int64_t r1) const override {
    ops_run++;
    std::fill(mine(x).data() + r0 * x.cols(), mine(x).data() + r1 * x.cols(), 0.f);
  }

 private:
  // Its own buffer behind an Act it holds (anything else reaching it is a bug
  // of the seam: an activation that was not moved to it first).
  Mat<float>& mine(const Act<float>& a) const {
    REQUIRE_MESSAGE(a.owner() == this, "an activation reached the resident backend without being uploaded");
    return a.handle<Buf>()->m;
  }
  Act<float> wrap(Mat<float>&& m) const {
    const int64_t r = rows(m), c = cols(m);
    return Act<float>(this, std::make_shared<Buf>(Buf{std::move(m)}), r, c);
  }
  // A result computed inside: kept in its own buffer (no seam crossing).
  Act<float> run(Act<float>&& host_result) const {
    ops_run++;
    return wrap(home(std::move(host_result)));
  }
};
}  // namespace

TEST_SUITE("backend_ops") {
TEST_CASE("a backend holding its own activations runs a whole forward pass with no host copy between its ops") {
  Model<float> m(model_dir("f32"));
  const std::vector<int32_t> ids = {3, 1, 4, 1, 5, 9, 2, 6};
  auto c0 = m.new_cache();
  const Mat<float> cpu = m.forward(ids, c0);  // the CPU backend alone

  auto r = std::make_shared<Resident>();
  m.set_backend(r);
  auto c1 = m.new_cache();
  CHECK(dynamic_cast<ResidentCache*>(c1.layers[0].get()) != nullptr);  // caches are the resident backend's
  Mat<float> all = m.forward(ids, c1);
  MESSAGE("resident: ", r->ops_run, " ops, ", r->uploads, " uploads, ", r->downloads, " downloads");
  // per layer: rms_norm, attention, add, rms_norm, MoE/MLP, add; then embed, final norm, lm_head
  CHECK(r->ops_run == 6 * m.config().num_hidden_layers + 3);
  CHECK(r->uploads == 0);
  CHECK(r->downloads == 1);  // the logits, once, at the end
  CHECK(rel_err(all, cpu) <= 2e-5);
  // decode steps through the same seam: one download (the step's logits) each
  const int before = r->downloads;
  for (int32_t id : {7, 8}) m.forward({id}, c1);
  CHECK(r->downloads == before + 2);
  CHECK(r->uploads == 0);

  // Per-op fallback: declining MoE and every linear sends exactly those to the
  // CPU backend; the activation crosses the seam only around them.
  auto d = std::make_shared<Resident>();
  d->decline_moe_and_linear = true;
  m.set_backend(d);
  auto c2 = m.new_cache();
  const Mat<float> mixed = m.forward(ids, c2);
  const int moe_layers = int(m.config().num_hidden_layers - m.config().first_k_dense_replace);
  MESSAGE("resident without moe/linear: ", d->ops_run, " ops, ", d->uploads, " uploads, ", d->downloads, " downloads");
  CHECK(d->ops_run == 6 * m.config().num_hidden_layers + 3 - moe_layers - 1);
  CHECK(d->downloads == moe_layers + 1);  // each MoE input, and the final norm for the CPU's lm_head
  CHECK(d->uploads == moe_layers);        // each MoE output, back into the resident residual stream
  CHECK(rel_err(mixed, cpu) <= 2e-5);
}
}  // TEST_SUITE

TEST_SUITE("backend_ops") {
// The same op-by-op suite on a backend that is not on the host: inputs are
// uploaded to it, results downloaded (BackendCheck::in / home).
TEST_CASE("the op suite runs on a backend holding its own activations") {
  const Tally t = run_suite(NamedBackend<float>{"resident", std::make_shared<Resident>()}, true);
  MESSAGE(t.report().substr(0, t.report().find('\n')));
  CHECK(t.failed == 0);
  CHECK(t.passed > 0);
  CHECK(t.unsupported > 0);  // it declines the quantized formats: reported, not passed
}
}  // TEST_SUITE

// -- the CUDA backend (backends/cuda, -DDSV3_CUDA=ON) ---------------------------
// ctest runs this suite as backend_ops_cuda, which exits 77 (skipped) before
// it gets here when no device is visible (tests/main.cpp).
#ifdef DSV3_CUDA
#include <dsv3/cuda/backend.hpp>

TEST_SUITE("backend_ops_cuda") {
TEST_CASE("CUDA: every op it claims matches the reference, in every stored format") {
  REQUIRE_MESSAGE(cuda::device_count() > 0, "no CUDA device is visible");
  const Tally t = run_suite(NamedBackend<float>{"cuda", cuda::make_backend()}, false);
  MESSAGE(t.report());
  CHECK_MESSAGE(t.failed == 0, t.backend, ": ", t.failed, " case(s) past tolerance");
  CHECK_MESSAGE(t.passed > 0, t.backend, ": no case ran");
}

TEST_CASE("CUDA: deterministic: identical logits run to run, and a row's result independent of its batch") {
  REQUIRE_MESSAGE(cuda::device_count() > 0, "no CUDA device is visible");
  const auto be = cuda::make_backend();
  const std::vector<int32_t> ids = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3};
  for (const char* fmt : {"f32", "bf16", "fp8"}) {
    Model<float> m(model_dir(fmt));
    m.set_backend(be);
    auto c1 = m.new_cache(), c2 = m.new_cache();
    const Mat<float> a = m.forward(ids, c1), b = m.forward(ids, c2);
    CHECK_MESSAGE(std::equal(a.begin(), a.end(), b.begin()), fmt, ": two runs differ");
    // a prefill split 5 + 11 gives the same bits as one call, in either form
    // (every kernel computes a row from that row and the cache alone)
    for (AttnForm form : {AttnForm::absorb, AttnForm::naive}) {
      ForwardOptions opt;
      opt.attn = form;
      auto cw = m.new_cache(), cs = m.new_cache();
      const Mat<float> whole = m.forward(ids, cw, opt);
      const Mat<float> p1 = m.forward({ids.begin(), ids.begin() + 5}, cs, opt);
      const Mat<float> p2 = m.forward({ids.begin() + 5, ids.end()}, cs, opt);
      CHECK_MESSAGE((std::equal(p1.begin(), p1.end(), whole.begin()) && std::equal(p2.begin(), p2.end(), &whole(5, 0))),
                    fmt, ": a prefill in two chunks differs from one call (", form == AttnForm::absorb ? "absorb" : "naive", ")");
    }
    // the lm_head over 16 rows at once, and row 11 alone: the same bits
    const Linear& head = m.weights().lm_head;
    const Mat<float> x = check::random_rows<float>(16, head.in(), 5);
    const Mat<float> all = be->download(be->linear(be->upload(x), head, {}));
    const Mat<float> one = be->download(be->linear(be->upload(take_rows(x, 11, 12)), head, {}));
    CHECK_MESSAGE(std::equal(one.begin(), one.end(), &all(11, 0)), fmt, ": a row's logits depend on its batch");
  }
}
}  // TEST_SUITE
#endif
