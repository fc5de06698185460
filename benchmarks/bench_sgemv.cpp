// Achievable f32 weight bandwidth of this machine for decode-shaped matmuls:
// OpenBLAS cblas_sgemv (y = W x, W row-major [M, K] f32) with 1 and 2 threads.
//
// Build standalone (no CMake target on purpose):
//   g++ -O2 benchmarks/bench_sgemv.cpp -lbenchmark -lopenblas -lpthread -o build/bench/bench_sgemv
// Run:
//   build/bench/bench_sgemv --benchmark_format=json    (bytes_per_second = weight bytes / s)
//
// Shapes: the mid preset's largest decode matmuls
//   32000 x 1024  lm_head                      (131 MB f32)
//    2816 x 1024  dense MLP gate/up (down is 1024 x 2816, same bytes)  (11.5 MB f32)
//
// Two variants per shape:
//   hot     the same matrix every iteration. Whatever fits the last-level cache stays there
//           (on a large-L3 server even the 131 MB lm_head may), so this is an upper bound,
//           not what decode sees.
//   stream  cycles through enough distinct copies to touch >= 1 GiB between two uses of the
//           same copy, so every iteration reads the weights from DRAM - what f32 decode of a
//           model larger than the LLC has to do. This is the denominator for "effective
//           bandwidth as a % of sgemv".
// SetBytesProcessed counts the weight matrix only (x and y are negligible: K + M floats).
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cstdint>
#include <cstdlib>
#include <vector>

extern "C" void openblas_set_num_threads(int);

namespace {

constexpr std::size_t kStreamBytes = std::size_t(1) << 30;  // >= 1 GiB rotated over

struct Mats {
  int m, k;
  std::vector<std::vector<float>> w;  // copies
  std::vector<float> x, y;
  Mats(int m_, int k_, std::size_t copies) : m(m_), k(k_), w(copies), x(k_), y(m_) {
    uint32_t s = 12345u;
    auto rnd = [&s]() {
      s = s * 1664525u + 1013904223u;
      return float((s >> 8) & 0xffff) / 65536.0f - 0.5f;
    };
    for (auto& c : w) {
      c.resize(std::size_t(m) * k);
      for (auto& v : c) v = rnd();  // touch every page
    }
    for (auto& v : x) v = rnd();
  }
};

void BM_sgemv(benchmark::State& state, bool stream) {
  const int m = static_cast<int>(state.range(0));
  const int k = static_cast<int>(state.range(1));
  const int threads = static_cast<int>(state.range(2));
  const std::size_t bytes = std::size_t(m) * k * sizeof(float);
  const std::size_t copies = stream ? (kStreamBytes + bytes - 1) / bytes + 1 : 1;
  Mats mats(m, k, copies);
  openblas_set_num_threads(threads);
  std::size_t i = 0;
  for (auto _ : state) {
    const float* w = mats.w[i].data();
    i = (i + 1 == copies) ? 0 : i + 1;
    cblas_sgemv(CblasRowMajor, CblasNoTrans, m, k, 1.0f, w, k, mats.x.data(), 1, 0.0f,
                mats.y.data(), 1);
    benchmark::DoNotOptimize(mats.y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(bytes));
  state.counters["threads"] = threads;
  state.counters["copies"] = double(copies);
  state.counters["weight_MB"] = double(bytes) / 1e6;
}

void Args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"M", "K", "threads"});
  for (int t : {1, 2}) {
    b->Args({32000, 1024, t});
    b->Args({2816, 1024, t});
  }
  b->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
}

}  // namespace

BENCHMARK_CAPTURE(BM_sgemv, stream, true)->Apply(Args);
BENCHMARK_CAPTURE(BM_sgemv, hot, false)->Apply(Args);

BENCHMARK_MAIN();
