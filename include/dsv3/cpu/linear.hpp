// dsv3/cpu/linear.hpp — the CPU backend's linear and RMSNorm kernels.
//
// The same math as reference/ops.hpp (reference::linear, reference::rms_norm),
// made fast: decode (at most kFusedMaxRows rows) dequantises each weight row
// once and dots it with every input row in a 64-lane kernel compiled for
// AVX-512/AVX2/baseline; prefill multiplies bands of weight rows with BLAS.
// Work is split over OpenMP threads in pieces whose size depends on the
// matrix only, so results are bit-identical for every thread count.
// tests/test_backend_ops.cpp checks each path against the reference.
#pragma once

#include <cblas.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <numeric>
#include <vector>

#include "../reference/ops.hpp"
#include "parallel.hpp"
#include "quant.hpp"
#include "../tensor.hpp"
#include "../variants.hpp"
#include "../weights.hpp"

namespace dsv3::cpu {


// ---------------------------------------------------------------------------
// Threads. dsv3 parallelises with OpenMP over output rows, heads and bands
// of fixed size, and calls BLAS single-threaded from inside: the work each
// thread does never depends on the thread count, so results are
// bit-identical for any count, and OpenBLAS's own threads never compete with
// OpenMP's (OpenBLAS is only told so when it is the BLAS linked in).
extern "C" __attribute__((weak)) void openblas_set_num_threads(int);
extern "C" __attribute__((weak)) int blas_thread_shutdown_(void);  // OpenBLAS's (stops its thread pool)

inline void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// OpenBLAS maps a work buffer (128 MB in Debian's build) for each thread at
// its first GEMM. When that mmap fails, under a tight `ulimit -v`, it retries
// forever inside the GEMM: the process hangs with no message. So the buffers
// are taken up front, by a GEMM on every OpenMP thread, after checking that the
// address space has room for them; if it has not, that is one error line.
// Per thread: OpenBLAS's 128 MB buffer, glibc's 128 MB arena reservation for
// a new thread's mallocs, and slack.
constexpr std::size_t kBlasBufferBytes = std::size_t(288) << 20;

inline void warm_blas_buffers() {
  static std::atomic<int> warmed{0};
  static std::mutex mu;
  if (omp_in_parallel()) return;  // only from the top level, where a region gets all its threads
  const int want = omp_get_max_threads();
  if (warmed.load(std::memory_order_acquire) >= want) return;
  std::lock_guard<std::mutex> lock(mu);
  if (warmed.load(std::memory_order_relaxed) >= want) return;
  const std::size_t room = kBlasBufferBytes * std::size_t(want);
  // PROT_NONE: counts against `ulimit -v`, not against the commit limit
  void* p = ::mmap(nullptr, room, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    fail("not enough address space for BLAS's work buffers: ", want, " threads need about ", room >> 20,
         " MB (ulimit -v?); use fewer --threads or raise the limit");
  ::munmap(p, room);
  // Every thread's GEMM at once (after a barrier, each long enough to overlap
  // the others): OpenBLAS hands a buffer back to a shared pool when a GEMM
  // ends, so GEMMs one after another would take only one.
  constexpr int n = 512;  // large enough for OpenBLAS's buffered path (small GEMMs skip the buffer)
#pragma omp parallel num_threads(want)
  {
    std::vector<float> a(std::size_t(n) * n, 1.0f), c(std::size_t(n) * n);
#pragma omp barrier
    gemm(false, false, n, n, n, 1.0f, a.data(), n, a.data(), n, 0.0f, c.data(), n);
  }
  warmed.store(want, std::memory_order_release);
}

inline void blas_single_threaded() {
  static const bool once = [] {
    if (openblas_set_num_threads) openblas_set_num_threads(1);
    // OpenBLAS started a pool of threads when it loaded, which dsv3 never
    // uses; each polls (sched_yield) for a while before it sleeps, taking
    // time from dsv3's threads (about 0.1 s of a core, a third of a short
    // benchmark's decode on 2 cores). Stopping the pool changes no result;
    // OpenBLAS starts it again if some caller later asks for more threads.
    if (openblas_set_num_threads && blas_thread_shutdown_) blas_thread_shutdown_();
    return true;
  }();
  (void)once;
  warm_blas_buffers();
}

// BLAS: C[M,N] = alpha * op(A) op(B) + beta * C, row-major.
inline void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              int(M), int(N), int(K), alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}
inline void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                 int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              int(M), int(N), int(K), alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
}

// y[n, r0:r1] = x[n, K] @ W[r0:r1, K]^T, W given row-major with K columns.
template <class T>
inline void matmul_wt(const T* x, int64_t n, int64_t K, const T* W, int64_t r, T* y, int64_t ldy) {
  gemm(false, true, n, r, K, T(1), x, K, W, K, T(0), y, ldy);
}


// Rows [r0, r1) of W decoded to T: quant.hpp's vectorised decoders at
// T = float, else the reference's Linear::decode_rows.
template <class T>
inline void decode_band(const Linear& W, int64_t r0, int64_t r1, T* dst) {
  if constexpr (std::is_same_v<T, float>)
    decode_rows_fast(W, r0, r1, dst);
  else
    W.decode_rows(r0, r1, dst);
}

// F32 weights used at T = float are read where the mapping has them (no copy).
template <class T>
inline const T* in_place(const Linear& W) {
  if constexpr (std::is_same_v<T, float>)
    if (W.weight.dtype == DType::F32 && W.is_dense() && reinterpret_cast<uintptr_t>(W.weight.data) % alignof(float) == 0)
      return reinterpret_cast<const float*>(W.weight.data);
  return nullptr;
}

// out[i] = x[i, :] · w for i < n, with w a row of K weights stored as F32 or
// BF16 (BF16 is widened in the same pass): kLanes partial sums, combined in
// a fixed order. Compiled for AVX-512, AVX2 and baseline x86-64; the loader
// picks one per machine, so results are identical for every thread count on
// a given machine. Enough independent sums that the adds never wait on each
// other: these kernels run at memory speed.
constexpr int kLanes = 64;
constexpr int kPrefetchBytes = 4096;

inline float widen(float w) { return w; }
inline float widen(uint16_t w) {
  const uint32_t u = uint32_t(w) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <class W>
inline void dot_rows(const float* x, int64_t n, int64_t K, const W* w, float* out, int64_t out_stride) {
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * K;
    float acc[kLanes] = {0};
    int64_t k = 0;
    for (; k + kLanes <= K; k += kLanes) {
      // a few KB ahead: the hardware prefetcher stops at 4 KB page boundaries
      if (i == 0)
        for (std::size_t b = 0; b < kLanes * sizeof(W); b += 64)
          __builtin_prefetch(reinterpret_cast<const char*>(w + k) + kPrefetchBytes + b);
      for (int j = 0; j < kLanes; ++j) acc[j] += xi[k + j] * widen(w[k + j]);
    }
    for (; k < K; ++k) acc[k % kLanes] += xi[k] * widen(w[k]);
    for (int h = kLanes / 2; h >= 1; h /= 2)
      for (int j = 0; j < h; ++j) acc[j] += acc[j + h];
    out[i * out_stride] = acc[0];
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DSV3_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DSV3_CLONES
#endif
DSV3_CLONES [[maybe_unused]] static void dot_rows_bf16(const float* x, int64_t n, int64_t K, const uint16_t* w, float* out,
                                      int64_t out_stride) {
  dot_rows(x, n, K, w, out, out_stride);
}
// y[e] += p[e] for e < n (AWQ's partial outputs, summed after a round).
DSV3_CLONES [[maybe_unused]] static void add_into(float* y, const float* p, std::size_t n) {
  for (std::size_t e = 0; e < n; ++e) y[e] += p[e];
}
DSV3_CLONES [[maybe_unused]] static void dot_rows_f32(const float* x, int64_t n, int64_t K, const float* w, float* out,
                                     int64_t out_stride) {
  dot_rows(x, n, K, w, out, out_stride);
}
#undef DSV3_CLONES

// ---------------------------------------------------------------------------
// Few rows (decode): fused dequantise-and-multiply. Threads split the output
// rows; each row is decoded from its stored bytes into a row buffer (read
// once, never a scratch copy of the matrix) and dotted with every input row
// in a fixed order, so the result is bit-identical for any thread count.
// Several independent linears (a decode step's experts) share one round of
// threads: their rows are one list of work.
constexpr int64_t kFusedMaxRows = 4;

template <class T>
inline void linear_fused_many(const std::vector<MatJob<T>>& jobs, const Variants& v, std::vector<Mat<T>>& ys) {
  struct Job {
    const T* direct = nullptr;
    const uint16_t* bf16 = nullptr;  // BF16 weights at T = float: the one-pass kernel above
    bool fused = false;              // FP8 / AWQ / MLX at T = float: quant.hpp's kernel
    bool round_w = false;
    FusedInput own;                  // the activations as that kernel reads them
    const FusedInput* in = &own;     // own, or an earlier job's when x and the layout are the same
    int64_t part0 = 0, part1 = 0;    // AWQ: its units' partial outputs, in group order
    // back to the defaults above, own's buffers keeping their capacity
    void reset() {
      direct = nullptr, bf16 = nullptr, fused = false, round_w = false;
      own.xp.clear(), own.xs.clear(), own.xexp = 0;
      in = &own, part0 = part1 = 0;
    }
  };
  // A unit: output rows [r0, r1) of a job; for AWQ (stored [in, out]) input
  // rows [r0, r1), one group, whose partial y goes to parts[part].
  struct Unit { std::size_t job; int64_t r0, r1, part = -1; };
  // (the calling thread's, reused: a job's prepared input keeps its
  // buffers' capacity from call to call, as the unit list below does)
  thread_local std::vector<Job> info_store;
  std::vector<Job>& info = info_store;
  if (info.size() < jobs.size()) info.resize(jobs.size());
  for (std::size_t j = 0; j < jobs.size(); ++j) info[j].reset();
  // (the unit list and the threads' buffers keep their capacity from call to
  // call: a decode step makes some 40 of these rounds)
  thread_local std::vector<Unit> unit_store;  // (the calling thread's; the region reads it through `units`)
  std::vector<Unit>& units = unit_store;
  units.clear();
  std::vector<std::vector<float>> parts;
  std::size_t buf_elems = 0;
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    const Linear& W = *jobs[j].w;
    const int64_t K = W.in(), O = W.out();
    info[j].round_w = v.fp8_dequant_bf16 && W.is_fp8();
    info[j].direct = in_place<T>(W);
    if constexpr (std::is_same_v<T, float>) {
      if (W.weight.dtype == DType::BF16 && W.is_dense() && reinterpret_cast<uintptr_t>(W.weight.data) % 2 == 0)
        info[j].bf16 = reinterpret_cast<const uint16_t*>(W.weight.data);
      info[j].fused = !info[j].round_w && has_fused_kernel<T>(W);
      if (info[j].fused) {
        // A decode step's experts all read x itself (moe.hpp), gate and up
        // the same x: an earlier job's prepared input is reused when its
        // weight reads x the same way and x is the same matrix or holds the
        // same bits.
        std::size_t same = j;
        for (std::size_t k = 0; k < j && same == j; ++k)
          if (info[k].fused && same_fused_input(*jobs[k].w, W) && jobs[k].x->shape() == jobs[j].x->shape() &&
              (jobs[k].x == jobs[j].x ||
               std::memcmp(jobs[k].x->data(), jobs[j].x->data(), jobs[j].x->size() * sizeof(T)) == 0))
            same = k;
        if (same < j) info[j].in = info[same].in;
        else fused_prepare(W, jobs[j].x->data(), rows(*jobs[j].x), info[j].own);
      }
    }
    if (info[j].fused && W.awq()) {  // a unit per run of groups of input rows, each with its partial y
      info[j].part0 = int64_t(parts.size());
      const int64_t G = W.awq()->group_size, span = G * awq_groups_per_unit(*W.awq());
      for (int64_t k0 = 0; k0 < K; k0 += span) {
        units.push_back({j, k0, std::min(K, k0 + span), int64_t(parts.size())});
        parts.emplace_back(std::size_t(rows(*jobs[j].x) * O));
      }
      info[j].part1 = int64_t(parts.size());
    } else {
      // A unit of rows read in place or by a fused kernel (no buffer) is a
      // multiple of 64 rows, about 4096·64 weights: 256 rows at K = 1024, a
      // whole 1024 × 192 expert down_proj. A thread takes a unit at a time;
      // handing one out costs as much as a few thousand weights of kernel
      // work: the mid model's expert down_proj (K = 192) in 64-row units ran
      // 17% slower, and its decode 6–10% (2 threads). A unit's size depends
      // on the matrix only, and a row's sums do not depend on the unit it is
      // in, so results stay the same for every thread count. Rows decoded to a buffer first
      // go 16 at a time; AWQ without the fused kernel (T = double) decodes
      // bands of 128 output columns, each input row's packed words read
      // once per band.
      const bool buffered = !info[j].direct && !info[j].bf16 && !info[j].fused;
      const int64_t band = W.awq() ? 128 : buffered ? 16 : 64 * std::max<int64_t>(1, (4096 + K - 1) / K);
      if (buffered) buf_elems = std::max(buf_elems, std::size_t(band * K));
      for (int64_t r0 = 0; r0 < O; r0 += band) units.push_back({j, r0, std::min(O, r0 + band)});
    }
    ys[j] = empty<T>(rows(*jobs[j].x), O);
  }
  // The round's last units, cut in quarters (multiples of 16 rows): threads
  // take units as they come free, so at the end each waits for at most the
  // unit another has just begun. With whole units of about 4096·64 weights
  // the threads stood idle 9–10% of a decode step's linear rounds, with the
  // quarters 7.5% (mid mlx4, 2 threads). Rows keep their sums whichever
  // unit they are in.
  {
    const int64_t nthreads = std::max(1, omp_get_max_threads());
    auto whole_rows = [&](const Unit& u) {  // rows read in place or by a fused kernel (not AWQ's groups, not buffered)
      const Job& J = info[u.job];
      return u.part < 0 && (J.fused || J.bf16 || J.direct);
    };
    thread_local std::vector<Unit> tail_store;
    std::vector<Unit>& tail = tail_store;  // quarters of the last 2·nthreads units, last first
    tail.clear();
    while (nthreads > 1 && !units.empty() && int64_t(tail.size()) < 8 * nthreads && whole_rows(units.back())) {
      const Unit u = units.back();
      units.pop_back();
      const int64_t q = 16 * std::max<int64_t>(1, (u.r1 - u.r0 + 63) / 64);
      for (int64_t r1 = u.r1; r1 > u.r0; r1 -= q) tail.push_back({u.job, std::max(u.r0, r1 - q), r1});
    }
    units.insert(units.end(), tail.rbegin(), tail.rend());
  }
  ThreadErrors errs;
#pragma omp parallel
  {
    thread_local std::vector<T> buf;
    thread_local std::vector<float> scratch;
    errs.run([&] { buf.resize(std::max(buf.size(), buf_elems)); });
#pragma omp for schedule(dynamic, 1) nowait
    for (std::size_t u = 0; u < units.size(); ++u) errs.run([&] {
      const Unit& un = units[u];
      const Linear& W = *jobs[un.job].w;
      const Job& J = info[un.job];
      const Mat<T>& x = *jobs[un.job].x;
      Mat<T>& y = ys[un.job];
      const int64_t n = rows(x), K = W.in(), O = W.out();
      if (J.fused) {
        if constexpr (std::is_same_v<T, float>) {
          if (un.part >= 0)
            awq_group_partial(*W.awq(), x.data(), n, K, un.r0, un.r1, scratch, parts[std::size_t(un.part)].data());
          else
            fused_rows(W, x.data(), n, *J.in, un.r0, un.r1, scratch, y.data(), O);
        }
        return;
      }
      if (J.bf16) {
        if constexpr (std::is_same_v<T, float>)
          for (int64_t o = un.r0; o < un.r1; ++o) {
            if (avx512_runs())
              avx512::half_dot_row<false>(x.data(), n, K, J.bf16 + o * K, y.data() + o, O);
            else if (avx2_streams() && !avx2_runs())  // Zen 4 (the loop below measured even on Zen 3)
              avx2::bf16_dot_row(x.data(), n, K, J.bf16 + o * K, y.data() + o, O);
            else
              dot_rows_bf16(x.data(), n, K, J.bf16 + o * K, y.data() + o, O);
          }
        return;
      }
      if (!J.direct) {
        decode_band(W, un.r0, un.r1, buf.data());
        if (J.round_w) round_bf16_if(true, buf.begin(), buf.begin() + (un.r1 - un.r0) * K);
      }
      if constexpr (std::is_same_v<T, float>)
        if (J.direct && avx2_runs()) {
          // F32 in place on AVX2: four rows at a time share each load of x, and four
          // streams of weights are in flight on a core (f32 decode +16% on the Zen 3 host)
          avx2::rows_dot_rows(x.data(), K, n, K, J.direct + un.r0 * K, K, un.r1 - un.r0, y.data() + un.r0, O);
          return;
        }
      if constexpr (std::is_same_v<T, float>)
        if (J.direct && avx2_streams()) {  // Zen 4 (avx512_preferred()): a row at a time, 1.09× the four
          for (int64_t o = un.r0; o < un.r1; ++o) avx2::f32_dot_row(x.data(), n, K, J.direct + o * K, y.data() + o, O);
          return;
        }
      for (int64_t o = un.r0; o < un.r1; ++o) {
        const T* w = J.direct ? J.direct + o * K : buf.data() + (o - un.r0) * K;
        if constexpr (std::is_same_v<T, float>) {
          dot_rows_f32(x.data(), n, K, w, y.data() + o, O);
          continue;
        }
        for (int64_t i = 0; i < n; ++i) {
          const T* xi = x.data() + i * K;
          // 8 independent partial sums, combined in a fixed order
          T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
          int64_t k = 0;
          for (; k + 8 <= K; k += 8)
            for (int j = 0; j < 8; ++j) acc[j] += xi[k + j] * w[k + j];
          for (; k < K; ++k) acc[k % 8] += xi[k] * w[k];
          y(i, o) = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        }
      }
    });
  }
  errs.rethrow();
  // AWQ: y = the sum of its groups' partial outputs, in group order
  for (std::size_t j = 0; j < jobs.size(); ++j)
    if (info[j].part1 > info[j].part0) {
      T* y = ys[j].data();
      std::copy(parts[std::size_t(info[j].part0)].begin(), parts[std::size_t(info[j].part0)].end(), y);
      for (int64_t p = info[j].part0 + 1; p < info[j].part1; ++p) {
        const std::vector<float>& pp = parts[std::size_t(p)];
        if constexpr (std::is_same_v<T, float>) add_into(y, pp.data(), pp.size());
        else for (std::size_t e = 0; e < pp.size(); ++e) y[e] += pp[e];
      }
    }
  for (auto& y : ys) round_act(v, y);
}

// Prefill (more than kFusedMaxRows rows) multiplies bands of the weight's
// rows with BLAS gemm: F32 weights at T = float in place, other stored
// formats decoded to T one band at a time (one FP8 row block, else at most
// about 4 MB), so only that band ever exists in T. A band's size depends on
// the matrix only, never on the thread count (BLAS's arithmetic may depend
// on the shape it is given). `linear` splits a matrix into about 4 bands, for
// the threads to share: fewer, larger GEMMs run faster (the activations are
// packed once per GEMM) and 4 keeps 2-4 threads busy; a job of `linear_many`
// runs whole on one thread in the fewest bands.
template <class T>
inline int64_t band_rows(const Linear& W, bool split) {
  const int64_t K = W.in(), O = W.out();
  if (W.is_fp8()) return std::min(O, W.fp8()->block_rows);
  const int64_t cap = std::max<int64_t>(16, (int64_t(4) << 20) / (K * int64_t(sizeof(T))) / 16 * 16);
  return std::min(O, split ? std::min(cap, std::max<int64_t>(16, (O + 63) / 64 * 16)) : cap);
}

// y[:, r0:r1] = x @ W[r0:r1]^T in bands of `band` rows (scratch: band * K).
template <class T>
inline void matmul_bands(const Mat<T>& x, const Linear& W, const Variants& v, int64_t r0, int64_t r1, int64_t band,
                         std::vector<T>& scratch, Mat<T>& y) {
  const int64_t n = rows(x), K = W.in(), O = W.out();
  if constexpr (std::is_same_v<T, float>)
    if (const AwqWeight* a = W.awq(); a && r0 % 8 == 0 && r1 % 8 == 0) {
      // AWQ ([in, out] storage): 128 columns at a time, decoded k-major (the
      // file's order) and multiplied x @ Wt; the GEMM's columns come out in
      // nibble order and are put back.
      scratch.resize(static_cast<std::size_t>(K * 128 + n * 128));
      float* wt = scratch.data();
      float* yt = wt + K * 128;
      for (int64_t c0 = r0; c0 < r1; c0 += 128) {
        const int64_t nw = std::min<int64_t>(16, (r1 - c0) / 8);
        awq_decode_kmajor(*a, c0 / 8, nw, wt);
        gemm(false, false, n, 128, K, 1.0f, x.data(), K, wt, 128, 0.0f, yt, 128);
        for (int64_t i = 0; i < n; ++i)
          for (int j = 0; j < 8; ++j)
            for (int64_t l = 0; l < nw; ++l) y(i, c0 + 8 * l + kAwqOrder[j]) = yt[i * 128 + 16 * j + l];
      }
      return;
    }
  const T* direct = in_place<T>(W);
  if (!direct) scratch.resize(static_cast<std::size_t>(band * K));
  for (int64_t b0 = r0; b0 < r1; b0 += band) {
    const int64_t b1 = std::min(r1, b0 + band);
    const T* w = direct ? direct + b0 * K : scratch.data();
    if (!direct) {
      decode_band(W, b0, b1, scratch.data());
      if (v.fp8_dequant_bf16 && W.is_fp8()) round_bf16_if(true, scratch.begin(), scratch.begin() + (b1 - b0) * K);
    }
    matmul_wt(x.data(), n, K, w, b1 - b0, y.data() + b0, O);
  }
}

// linear: y[n, out] = x[n, in] @ W^T (nn.Linear without bias).
// Up to kFusedMaxRows rows: the fused kernel above; more: bands (above).
template <class T>
inline Mat<T> linear(const Mat<T>& x, const Linear& W, const Variants& v = {}) {
  const int64_t n = rows(x), K = W.in(), O = W.out();
  if (cols(x) != K) fail("linear '", W.name(), "': input has ", cols(x), " columns, expected ", K);
  if (v.fp8_w8a8 && W.is_fp8()) {
    Mat<T> y = reference::linear_w8a8(x, W);
    round_act(v, y);
    return y;
  }
  blas_single_threaded();
  if (n <= kFusedMaxRows) {
    std::vector<Mat<T>> ys(1);
    linear_fused_many<T>({{&x, &W}}, v, ys);
    return std::move(ys[0]);
  }
  Mat<T> y = empty<T>(n, O);
  const int64_t band = band_rows<T>(W, true), nbands = (O + band - 1) / band;
  ThreadErrors errs;
#pragma omp parallel
  {
    std::vector<T> scratch;
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t b = 0; b < nbands; ++b)
      errs.run([&] { matmul_bands(x, W, v, b * band, std::min(O, (b + 1) * band), band, scratch, y); });
  }
  errs.rethrow();
  round_act(v, y);
  return y;
}

// Independent linears, y_i = x_i @ W_i^T. All decode-sized (every x_i at
// most kFusedMaxRows rows, no W8A8): they share one round of threads, their
// rows one list of work. Otherwise (a prefill's experts): the threads take
// whole jobs, the largest first, each job one GEMM per band_rows(W, false).
template <class T>
inline std::vector<Mat<T>> linear_many(const std::vector<MatJob<T>>& jobs, const Variants& v = {}) {
  std::vector<Mat<T>> ys(jobs.size());
  bool fused = true;
  for (const auto& j : jobs) {
    if (cols(*j.x) != j.w->in()) fail("linear '", j.w->name(), "': input has ", cols(*j.x), " columns, expected ", j.w->in());
    fused = fused && rows(*j.x) <= kFusedMaxRows && !(v.fp8_w8a8 && j.w->is_fp8());
  }
  blas_single_threaded();
  if (fused) {
    linear_fused_many(jobs, v, ys);
    return ys;
  }
  std::vector<std::size_t> order(jobs.size());
  std::iota(order.begin(), order.end(), std::size_t(0));
  auto work = [&](std::size_t i) { return rows(*jobs[i].x) * jobs[i].w->out() * jobs[i].w->in(); };
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return work(a) > work(b); });
  ThreadErrors errs;
#pragma omp parallel
  {
    std::vector<T> scratch;
#pragma omp for schedule(dynamic, 1) nowait
    for (std::size_t t = 0; t < order.size(); ++t) errs.run([&] {
      const MatJob<T>& j = jobs[order[t]];
      Mat<T>& y = ys[order[t]];
      if (rows(*j.x) <= kFusedMaxRows || (v.fp8_w8a8 && j.w->is_fp8())) {
        y = linear(*j.x, *j.w, v);  // runs on this thread: a nested parallel region is one thread
        return;
      }
      y = empty<T>(rows(*j.x), j.w->out());
      matmul_bands(*j.x, *j.w, v, 0, j.w->out(), band_rows<T>(*j.w, false), scratch, y);
      round_act(v, y);
    });
  }
  errs.rethrow();
  return ys;
}

// ---------------------------------------------------------------------------
// RMSNorm: reference::rms_norm_row on every row, rows over threads.
template <class T>
inline Mat<T> rms_norm(const Mat<T>& x, const TensorView& weight, double eps, const Variants& v = {}) {
  const int64_t n = rows(x), d = cols(x);
  const std::vector<T> w = reference::rms_norm_weight<T>(weight, d);
  Mat<T> y = empty<T>(n, d);
  for_rows(n, n > kFusedMaxRows, [&](int64_t i) { reference::rms_norm_row(&x(i, 0), w.data(), d, eps, v, &y(i, 0)); });
  round_act(v, y);
  return y;
}

}  // namespace dsv3::cpu
