// Fuzzes encoding with the real DeepSeek-V3 tokenizer (data/tokenizer/
// deepseek-v3, loaded once). Invalid UTF-8 must be rejected; valid UTF-8 must
// round-trip: decode(encode(x)) == x (byte-level BPE loses nothing and the
// V3 added tokens strip no whitespace), also through the StreamDecoder.
#include <cstdlib>

#include <dsv3/text/tokenizer.hpp>

#include "fuzz_util.hpp"

#ifndef DSV3_SOURCE_DIR
#error "DSV3_SOURCE_DIR must name the repository root"
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const dsv3::Tokenizer tok = dsv3::Tokenizer::from_dir(DSV3_SOURCE_DIR "/data/tokenizer/deepseek-v3");
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<int32_t> ids;
  if (!fuzz::accepts([&] { ids = tok.encode(text); })) return 0;  // invalid UTF-8
  const std::string back = tok.decode(ids);
  if (back != text) {
    std::fprintf(stderr, "==fuzz== ERROR: decode(encode(x)) != x (%zu ids, %zu vs %zu bytes)\n", ids.size(),
                 back.size(), text.size());
    std::abort();
  }
  dsv3::StreamDecoder sd(tok);
  std::string streamed;
  for (int32_t id : ids) streamed += sd.push(id);
  streamed += sd.flush();
  if (streamed != text) {
    std::fprintf(stderr, "==fuzz== ERROR: streamed decode != x\n");
    std::abort();
  }
  return 0;
}
