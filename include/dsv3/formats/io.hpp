// dsv3/formats/io.hpp — machine outputs: float32 little-endian .npy and JSON, written
// under a temporary name and renamed when complete (no partial files).
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <xtensor/xadapt.hpp>
#include <xtensor/xnpy.hpp>

#include "../error.hpp"

namespace dsv3 {

inline void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail(path, ": cannot create: ", std::strerror(errno));
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  if (std::fclose(f) != 0 || !ok) {
    std::remove(tmp.c_str());
    fail(path, ": write failed: ", std::strerror(errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    fail(path, ": rename failed: ", std::strerror(errno));
  }
}

// A [rows, cols] float32 .npy (xtensor's own npy writer).
inline void write_npy_f32(const std::string& path, const std::vector<float>& data, std::size_t rows,
                          std::size_t cols) {
  auto a = xt::adapt(data, std::vector<std::size_t>{rows, cols});
  write_file_atomic(path, xt::dump_npy(a));
}

}  // namespace dsv3
