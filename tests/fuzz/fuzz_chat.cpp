// Fuzzes chat rendering (render_chat): arbitrary templates and message JSON.
// Input: byte 0 holds flags (bit 0: add_generation_prompt; bit 1: use the
// vendored DeepSeek-V3 template, the rest of the input is the messages JSON).
// Without bit 1 the rest is "<template>\0<messages JSON>".
#include <cstring>

#include <dsv3/text/chat_template.hpp>

#include "fuzz_util.hpp"

#ifndef DSV3_SOURCE_DIR
#error "DSV3_SOURCE_DIR must name the repository root"
#endif

namespace {
std::string read_all(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string v3 = read_all(DSV3_SOURCE_DIR "/data/tokenizer/deepseek-v3/chat_template.v3-0324.jinja");
  static const nlohmann::json extra = {{"bos_token", "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"},
                                       {"eos_token", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"}};
  if (size == 0) return 0;
  const bool gen = data[0] & 1, use_v3 = data[0] & 2;
  const char* p = reinterpret_cast<const char*>(data + 1);
  const size_t n = size - 1;
  std::string tmpl, msgs;
  if (use_v3) {
    tmpl = v3;
    msgs.assign(p, n);
  } else {
    const char* nul = static_cast<const char*>(std::memchr(p, 0, n));
    if (!nul) return 0;
    tmpl.assign(p, size_t(nul - p));
    msgs.assign(nul + 1, n - size_t(nul - p) - 1);
  }
  nlohmann::json messages;
  try {
    messages = nlohmann::json::parse(msgs);
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  fuzz::accepts([&] { (void)dsv3::render_chat(tmpl, messages, gen, extra); });
  return 0;
}
