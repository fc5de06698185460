// Fuzzes the trace reader and compare: the input is a whole trace file (a
// safetensors file whose __metadata__.dsv3_manifest lists its tensors). An
// accepted trace is compared with itself — every tensor within the exact
// preset, no routing difference — and with a copy whose last value is moved,
// which must not crash whatever the shapes (zero rows, one column, ...).
#include <dsv3/tools/compare.hpp>

#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::scratch() + "/in.safetensors";
  fuzz::write_file(path, data, size);
  fuzz::FdGuard fds;
  fuzz::accepts([&] {
    const std::vector<dsv3::TraceEntry> a = dsv3::read_trace(path);
    for (const auto& e : a)
      if (e.data.size() != std::size_t(e.rows * e.cols) || e.cols < 1) {
        std::fprintf(stderr, "==fuzz== ERROR: trace entry '%s' has %zu values for [%lld, %lld]\n", e.key.c_str(),
                     e.data.size(), (long long)e.rows, (long long)e.cols);
        std::abort();
      }
    const dsv3::CompareResult self = dsv3::compare_traces(a, a, dsv3::tolerance_preset("exact"));
    for (const auto& r : self.rows)
      if (!r.pass && r.note != "informational" && r.s.max_abs == r.s.max_abs) {  // NaN data may differ from itself
        bool nan = false;
        for (double x : r.a->data) nan |= x != x;
        if (!nan) {
          std::fprintf(stderr, "==fuzz== ERROR: '%s' differs from itself\n", r.a->key.c_str());
          std::abort();
        }
      }
    std::vector<dsv3::TraceEntry> b = a;
    if (!b.empty() && !b.back().data.empty()) b.back().data.back() += 1;
    const dsv3::CompareResult other = dsv3::compare_traces(a, b, dsv3::tolerance_preset("f32"));
    (void)dsv3::compare_json(other, "a", "b").dump();
  });
  return 0;
}
