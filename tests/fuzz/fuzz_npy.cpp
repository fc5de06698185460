// Fuzzes the strict .npy reader (dsv3/npy.hpp). An accepted array must hold
// exactly numel * itemsize bytes and convert without reading past them.
#include <cstdlib>

#include <dsv3/formats/npy.hpp>

#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::accepts([&] {
    dsv3::NpyArray a = dsv3::parse_npy(data, size, "fuzz.npy");
    if (a.bytes.size() != size_t(a.numel()) * dsv3::dtype_size(a.dtype)) {
      std::fprintf(stderr, "==fuzz== ERROR: accepted .npy with inconsistent size\n");
      std::abort();
    }
    if (a.is_float()) (void)a.to_f32(), (void)a.to_f64();
    else (void)a.to_i64();
  });
  return 0;
}
