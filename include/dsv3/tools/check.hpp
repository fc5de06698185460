// dsv3/tools/check.hpp — scan a checkpoint for non-finite weights.
//
// check_weights() reads every floating tensor (F64, F32, F16, BF16, F8_E4M3)
// and reports, per tensor holding at least one NaN or Inf: its name, file, the
// number of non-finite values and the flat (C-order) index of the first one.
// The test is on the bits, so it is exact and cheap: an all-ones exponent for
// the IEEE formats; for float8_e4m3fn (no infinities) the NaN codes 0x7f / 0xff.
// Integer tensors are skipped. Backs `dsv3 inspect --check-weights`.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "../formats/dtype.hpp"
#include "../cpu/parallel.hpp"
#include "../formats/safetensors.hpp"

namespace dsv3 {

struct NonFiniteTensor {
  std::string name;
  std::string file;
  int64_t count = 0;        // NaN + Inf
  int64_t nan = 0;
  int64_t inf = 0;
  int64_t first_index = -1;  // flat C-order index of the first non-finite value
};

// Counts the non-finite values of one tensor (integers: none). Returns the
// result with count == 0 if all are finite.
inline NonFiniteTensor check_tensor(const TensorView& t) {
  NonFiniteTensor r;
  r.name = t.name;
  r.file = t.file;
  const int64_t n = t.numel();
  auto note = [&](int64_t i, bool is_nan) {
    if (r.count == 0) r.first_index = i;
    ++r.count;
    ++(is_nan ? r.nan : r.inf);
  };
  const uint8_t* p = t.data;
  switch (t.dtype) {
    case DType::F64:
      for (int64_t i = 0; i < n; ++i) {
        uint64_t u;
        std::memcpy(&u, p + 8 * i, 8);
        if ((u & 0x7ff0000000000000ull) == 0x7ff0000000000000ull) note(i, (u & 0x000fffffffffffffull) != 0);
      }
      break;
    case DType::F32:
      for (int64_t i = 0; i < n; ++i) {
        uint32_t u;
        std::memcpy(&u, p + 4 * i, 4);
        if ((u & 0x7f800000u) == 0x7f800000u) note(i, (u & 0x007fffffu) != 0);
      }
      break;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        if ((h & 0x7c00u) == 0x7c00u) note(i, (h & 0x03ffu) != 0);
      }
      break;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        if ((h & 0x7f80u) == 0x7f80u) note(i, (h & 0x007fu) != 0);
      }
      break;
    case DType::F8_E4M3:
      for (int64_t i = 0; i < n; ++i)
        if ((p[i] & 0x7f) == 0x7f) note(i, true);
      break;
    default:
      break;  // integers and bool cannot be non-finite
  }
  return r;
}

// Every floating tensor of the checkpoint; the tensors with non-finite values,
// in name order. Tensors are scanned in parallel (OpenMP); it reads the whole
// checkpoint once, so it runs at disk speed.
inline std::vector<NonFiniteTensor> check_weights(const Checkpoint& ck) {
  std::vector<const TensorView*> views;  // looked up first: nothing may throw inside the parallel loop
  for (const auto& name : ck.names()) views.push_back(&ck.get(name));
  std::vector<NonFiniteTensor> all(views.size());
  cpu::ThreadErrors errs;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < int64_t(views.size()); ++i)
    errs.run([&] { all[std::size_t(i)] = check_tensor(*views[std::size_t(i)]); });
  errs.rethrow();
  std::vector<NonFiniteTensor> bad;
  for (auto& r : all)
    if (r.count > 0) bad.push_back(std::move(r));
  return bad;
}

// One line per bad tensor, e.g.
//   tensor 'model.layers.0.mlp.gate.weight' (dir/model-00001.safetensors): 3 non-finite values (2 NaN, 1 Inf), first at flat index 17
inline std::string describe(const NonFiniteTensor& r) {
  return "tensor '" + r.name + "' (" + r.file + "): " + std::to_string(r.count) + " non-finite value" +
         (r.count == 1 ? "" : "s") + " (" + std::to_string(r.nan) + " NaN, " + std::to_string(r.inf) +
         " Inf), first at flat index " + std::to_string(r.first_index);
}

}  // namespace dsv3
