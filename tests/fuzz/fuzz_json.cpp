// Fuzzes the bounded JSON reader every JSON input goes through
// (formats/json.hpp): an accepted value is nested at most kMaxJsonDepth
// levels, so copying, comparing and dumping it (all recursive in nlohmann)
// cannot overflow the stack; a deeper one is refused with an error.
#include <algorithm>

#include <dsv3/formats/json.hpp>

#include "fuzz_util.hpp"

namespace {
int depth(const nlohmann::json& j) {
  int d = 0;
  if (j.is_structured())
    for (const auto& v : j) d = std::max(d, depth(v));
  return d + (j.is_structured() ? 1 : 0);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::accepts([&] {
    const nlohmann::json j = dsv3::parse_json(text, "fuzz input");
    if (depth(j) > dsv3::kMaxJsonDepth) {
      std::fprintf(stderr, "==fuzz== ERROR: accepted JSON nested %d levels\n", depth(j));
      std::abort();
    }
    const nlohmann::json copy = j;
    if (!(copy == j)) {
      std::fprintf(stderr, "==fuzz== ERROR: a copy differs from its original\n");
      std::abort();
    }
    (void)copy.dump(2);
    (void)dsv3::parse_json(j.dump(), "round trip");  // may refuse what dump wrote (e.g. an inf as null): fine
  });
  return 0;
}
