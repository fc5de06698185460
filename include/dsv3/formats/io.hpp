// dsv3/formats/io.hpp — machine outputs: float32 little-endian .npy and JSON, written
// under a unique temporary name and renamed when complete (no partial files).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <mutex>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <xtensor/xadapt.hpp>
#include <xtensor/xnpy.hpp>

#include "../error.hpp"

namespace dsv3 {

namespace io_detail {

// Temporary files being written, for the signal handler: fixed slots of
// fixed buffers, so removing them is async-signal-safe.
constexpr int kTempSlots = 32;
constexpr std::size_t kTempPathMax = 4096;
struct TempRegistry {
  char path[kTempSlots][kTempPathMax];
  volatile std::sig_atomic_t used[kTempSlots];
  std::mutex mu;
};
inline TempRegistry& temps() {
  static TempRegistry r{};
  return r;
}

// SIGINT/SIGTERM/SIGHUP: remove the temporaries, then die of the signal as
// the default action would. Installed only where the program left the
// default action in place.
inline void remove_temps_and_reraise(int sig) {
  TempRegistry& r = temps();
  for (int i = 0; i < kTempSlots; ++i)
    if (r.used[i]) ::unlink(r.path[i]);
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

inline int register_temp(const std::string& path) {
  static std::once_flag once;
  std::call_once(once, [] {
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
      struct sigaction old {};
      if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) {
        struct sigaction sa {};
        sa.sa_handler = remove_temps_and_reraise;
        sigemptyset(&sa.sa_mask);
        ::sigaction(sig, &sa, nullptr);
      }
    }
  });
  TempRegistry& r = temps();
  if (path.size() >= kTempPathMax) return -1;
  std::lock_guard<std::mutex> lock(r.mu);
  for (int i = 0; i < kTempSlots; ++i)
    if (!r.used[i]) {
      std::memcpy(r.path[i], path.c_str(), path.size() + 1);
      r.used[i] = 1;
      return i;
    }
  return -1;  // more than kTempSlots at once: still removed on error, not on a signal
}

inline void unregister_temp(int slot) {
  if (slot < 0) return;
  std::lock_guard<std::mutex> lock(temps().mu);
  temps().used[slot] = 0;
}

}  // namespace io_detail

// An output file written whole or not at all. The bytes go to a new file
// with a unique name beside the target (created exclusively: an existing
// file or symlink there is never followed or reused, and two runs writing the
// same output never share one), every write is checked, the data is flushed
// to disk before the rename, and the temporary is removed on any error, on
// destruction without commit(), and on SIGINT/SIGTERM/SIGHUP.
class OutputFile {
 public:
  explicit OutputFile(const std::string& path) : path_(path) {
    std::string tmpl = path + ".XXXXXX.tmp";
    fd_ = ::mkstemps(tmpl.data(), 4);
    if (fd_ < 0) fail(path, ": cannot create a file beside it: ", std::strerror(errno));
    tmp_ = tmpl;
    slot_ = io_detail::register_temp(tmp_);
    const mode_t mask = ::umask(0);  // mkstemps makes 0600; outputs get the usual 0666 & ~umask
    ::umask(mask);
    ::fchmod(fd_, 0666 & ~mask);
  }
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  ~OutputFile() { discard(); }

  void write(const void* data, std::size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        const int err = w < 0 ? errno : ENOSPC;
        discard();
        fail(path_, ": write failed: ", std::strerror(err));
      }
      p += w;
      n -= std::size_t(w);
    }
  }
  // Flushes to disk and renames over the target.
  void commit() {
    if (::fsync(fd_) != 0 || ::close(fd_) != 0) {
      const int err = errno;
      fd_ = -1;
      discard();
      fail(path_, ": write failed: ", std::strerror(err));
    }
    fd_ = -1;
    if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
      const int err = errno;
      discard();
      fail(path_, ": cannot rename the finished file into place: ", std::strerror(err));
    }
    io_detail::unregister_temp(slot_);
    slot_ = -1;
    tmp_.clear();
  }

 private:
  void discard() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (!tmp_.empty()) ::unlink(tmp_.c_str());
    tmp_.clear();
    io_detail::unregister_temp(slot_);
    slot_ = -1;
  }
  std::string path_, tmp_;
  int fd_ = -1, slot_ = -1;
};

inline void write_file_atomic(const std::string& path, const std::string& bytes) {
  if (path.empty()) fail("output path is empty");
  OutputFile f(path);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

// A [rows, cols] float32 .npy (xtensor's own npy writer).
inline void write_npy_f32(const std::string& path, const std::vector<float>& data, std::size_t rows,
                          std::size_t cols) {
  auto a = xt::adapt(data, std::vector<std::size_t>{rows, cols});
  write_file_atomic(path, xt::dump_npy(a));
}

}  // namespace dsv3
