// Fuzzes tokenizer.json loading (Tokenizer::from_json_text). A tokenizer that
// loads must then encode and decode a few texts without crashing.
#include <dsv3/text/tokenizer.hpp>

#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::accepts([&] {
    dsv3::Tokenizer t = dsv3::Tokenizer::from_json_text(text);
    for (const char* s : {"Hello, world! 123 4567", "  \n\t x", "\xe4\xbd\xa0\xe5\xa5\xbd <|eot|> ab"}) {
      std::vector<int32_t> ids = t.encode(s);
      (void)t.decode(ids);
      (void)t.decode(ids, true);
    }
  });
  return 0;
}
