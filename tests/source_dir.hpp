// tests/source_dir.hpp — where the tests read goldens and data from: the
// repository root the binary was built from, or DSV3_SOURCE_DIR from the
// environment when the binary runs elsewhere (scripts/gpu_check.sh on a GPU
// machine the build was carried to).
#pragma once

#include <cstdlib>

inline const char* dsv3_test_source_dir() {
  const char* e = std::getenv("DSV3_SOURCE_DIR");
  return e && *e ? e : DSV3_SOURCE_DIR_BUILT;
}
#define DSV3_SOURCE_DIR dsv3_test_source_dir()
