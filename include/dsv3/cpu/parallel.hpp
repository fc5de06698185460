// dsv3/cpu/parallel.hpp — exceptions out of OpenMP regions.
//
// An exception may not leave an OpenMP structured block: the runtime calls
// std::terminate ("terminate called without an active exception"), so a
// std::bad_alloc in a thread's scratch buffer would abort the process instead
// of printing one error line. Every parallel region in dsv3 runs its
// throwing parts through ThreadErrors::run, which keeps the first exception
// (later work is skipped); after the region, rethrow() raises it on the
// calling thread, where the usual error handling sees it.
//
// Every thread still reaches every worksharing construct and barrier (an
// error never makes one thread leave a region early), so a failure cannot
// deadlock the others.
//
// A worksharing loop that ends its region is `nowait`: the region's end is a
// barrier already, and the loop's own would be a second one each region
// (mid decode runs about 70 regions a token; on a 2-core Zen 4 host the
// loop's barrier cost 0.3-0.4 us a region, and strace counted 311 futex
// calls a token instead of 370).
// Example:
//
//   ThreadErrors errs;
//   #pragma omp parallel
//   {
//     std::vector<float> scratch;
//     errs.run([&] { scratch.resize(n); });
//   #pragma omp for nowait
//     for (int64_t i = 0; i < m; ++i) errs.run([&] { work(i, scratch); });
//   }
//   errs.rethrow();
#pragma once

#include <omp.h>

#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>

namespace dsv3::cpu {

class ThreadErrors {
 public:
  template <class F>
  void run(F&& f) noexcept {
    if (failed_.load(std::memory_order_relaxed)) return;
    try {
      f();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!first_) first_ = std::current_exception();
      failed_.store(true, std::memory_order_relaxed);
    }
  }
  void rethrow() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::atomic<bool> failed_{false};
  std::mutex mu_;
  std::exception_ptr first_;
};

// body(i) for i in [0, n): over the threads (a static schedule) when
// `wide`, else a plain loop on the calling thread. A region that `if (...)`
// leaves to one thread still enters libgomp (a team, its descriptors, its
// end): about half a microsecond, and a mid-model decode step took some 130
// of them (norms, RoPE, routing, each expert's SwiGLU inside the experts'
// round, the MoE's copies and sums) beside its 70 real ones. A loop already
// inside a region (nested) runs plainly too, as the region of one thread
// OpenMP would give it.
template <class F>
inline void for_rows(int64_t n, bool wide, F&& body) {
  if (!wide || n < 2 || omp_in_parallel()) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) body(i);
}

}  // namespace dsv3::cpu
