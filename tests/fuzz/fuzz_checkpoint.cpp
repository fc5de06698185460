// Fuzzes the sharded-checkpoint loader (model.safetensors.index.json). The
// input is the index JSON, optionally followed by a NUL byte and the bytes of
// a shard written as "s1.safetensors". A valid shard "s0.safetensors" holding
// tensors "a" (F32 [2]) and "b" (BF16 [3]) is always present next to it.
#include <cstring>

#include <dsv3/formats/safetensors.hpp>

#include "fuzz_util.hpp"

namespace {
const std::string& dir() {
  static const std::string d = [] {
    std::string d = fuzz::scratch() + "/ckpt";
    std::filesystem::create_directories(d);
    dsv3::write_safetensors(d + "/s0.safetensors",
                            {{"a", dsv3::DType::F32, {2}, nullptr}, {"b", dsv3::DType::BF16, {3}, nullptr}},
                            {{"format", "pt"}});
    return d;
  }();
  return d;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& d = dir();
  const uint8_t* nul = static_cast<const uint8_t*>(std::memchr(data, 0, size));
  const size_t index_len = nul ? size_t(nul - data) : size;
  fuzz::write_file(d + "/model.safetensors.index.json", data, index_len);
  if (nul) fuzz::write_file(d + "/s1.safetensors", nul + 1, size - index_len - 1);
  else std::remove((d + "/s1.safetensors").c_str());
  fuzz::FdGuard fds;
  fuzz::accepts([&] {
    dsv3::Checkpoint ck(d);
    for (const auto& name : ck.names()) {
      const dsv3::TensorView& t = ck.get(name);
      fuzz::touch(t.data, t.nbytes());
    }
  });
  return 0;
}
