// Helpers shared by the test files: temp dirs, file I/O, the V3 config.
#pragma once

#include "source_dir.hpp"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <type_traits>

#include <dsv3/config.hpp>
#include <dsv3/dispatch.hpp>

namespace test {

struct TempDir {
  std::string path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "dsv3-test-XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

inline std::string read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

inline void write_file(const std::string& p, const std::string& data) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << data;
}

// The published DeepSeek-V3 config.json values (docs/semantics.md §1.1), kept in
// tests/data/deepseek-v3/config.json (also what `dsv3 inspect` counts 671B from).
inline nlohmann::json v3_config_json() {
  return nlohmann::json::parse(read_file(std::string(DSV3_SOURCE_DIR) + "/tests/data/deepseek-v3/config.json"));
}

inline dsv3::Config v3_config() { return dsv3::Config::from_json(v3_config_json()); }

// The backend the model tests run on: DSV3_TEST_BACKEND (cpu, the default, or
// reference). ctest runs the suite once per backend (tests/CMakeLists.txt), so
// every golden holds on the literal reference as on the fast default.
inline std::string test_backend() {
  const char* b = std::getenv("DSV3_TEST_BACKEND");
  return b && *b ? b : "cpu";
}
// The CUDA backend computes in f32: in the cuda pass, the f64 models run on
// the CPU backend (their tests are about f64 arithmetic, not the backend).
template <class M>
inline M& use_backend(M& m) {
  using T = typename M::Scalar;
  const std::string b = test_backend();
  m.set_backend(dsv3::backend_named<T>(b == "cuda" && !std::is_same_v<T, float> ? "cpu" : b));
  return m;
}

}  // namespace test
