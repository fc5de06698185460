// Fuzzes the safetensors reader: the input is a whole .safetensors file
// (8-byte header length, JSON header, data). An accepted file must have every
// tensor's bytes inside the mapping.
#include <dsv3/formats/safetensors.hpp>

#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::scratch() + "/in.safetensors";
  fuzz::write_file(path, data, size);
  fuzz::FdGuard fds;
  fuzz::accepts([&] {
    dsv3::SafetensorsFile f(path);
    for (const auto& kv : f.tensors()) {
      const dsv3::TensorView& t = kv.second;
      fuzz::touch(t.data, t.nbytes());
      if (t.numel() > 0) (void)t.at(t.numel() - 1);
    }
    (void)f.metadata().dump();
  });
  return 0;
}
