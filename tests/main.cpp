// The doctest main. DSV3_TEST_BACKEND=cuda (ctest's unit_cuda and
// backend_ops_cuda) needs the CUDA backend and a device; without either the
// run exits 77, which ctest reports as skipped (SKIP_RETURN_CODE), never as
// passed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#ifdef DSV3_CUDA
#include <dsv3/cuda/backend.hpp>
#endif

int main(int argc, char** argv) {
#ifdef DSV3_CUDA
  dsv3::cuda::register_backend();
#endif
  const char* b = std::getenv("DSV3_TEST_BACKEND");
  if (b && std::string(b) == "cuda") {
#ifdef DSV3_CUDA
    if (dsv3::cuda::device_count() == 0) {
      std::puts("SKIPPED: DSV3_TEST_BACKEND=cuda, and no CUDA device is visible (the backend was built, not run)");
      return 77;
    }
#else
    std::puts("SKIPPED: DSV3_TEST_BACKEND=cuda, and this build has no CUDA backend (-DDSV3_CUDA=ON)");
    return 77;
#endif
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
