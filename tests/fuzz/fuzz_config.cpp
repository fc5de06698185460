// Fuzzes config.json loading: Config::from_json on the parsed input, and
// Config::from_file on the same bytes. Both must agree; an accepted config's
// derived quantities must be computable without UB.
#include <cstdlib>

#include <dsv3/config.hpp>

#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  bool from_json_ok = false;
  fuzz::accepts([&] {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(data, data + size);
    } catch (const nlohmann::json::exception&) {
      return;
    }
    dsv3::Config c = dsv3::Config::from_json(j);
    from_json_ok = true;
    volatile double s = c.softmax_scale() + c.softmax_scale(false);
    volatile int64_t d = c.qk_head_dim() + c.experts_per_group() + c.shared_intermediate() +
                         c.kv_cache_width() + c.is_fp8() + c.is_moe_layer(0);
    (void)s;
    (void)d;
  });
  const std::string path = fuzz::scratch() + "/config.json";
  fuzz::write_file(path, data, size);
  fuzz::FdGuard fds;
  const bool from_file_ok = fuzz::accepts([&] { dsv3::Config::from_file(path); });
  if (from_json_ok && !from_file_ok) {
    std::fprintf(stderr, "==fuzz== ERROR: from_json accepted what from_file rejected\n");
    std::abort();
  }
  return 0;
}
