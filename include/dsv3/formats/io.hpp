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

// The process's umask, read once. umask() can only be read by setting it, and
// setting it for every file raced with threads creating files meanwhile.
inline mode_t process_umask() {
  static const mode_t mask = [] {
    const mode_t m = ::umask(022);
    ::umask(m);
    return m;
  }();
  return mask;
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
    if (path.empty()) fail("output path is empty");
    std::string tmpl = path + ".XXXXXX.tmp";
    fd_ = ::mkstemps(tmpl.data(), 4);
    if (fd_ < 0) fail(path, ": cannot create a file beside it: ", std::strerror(errno));
    tmp_ = tmpl;
    slot_ = io_detail::register_temp(tmp_);
    ::fchmod(fd_, 0666 & ~io_detail::process_umask());  // mkstemps makes 0600; outputs get the usual mode
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

// A [rows, cols] float32 little-endian .npy (format 1.0), written row by row
// as the rows come: `forward` streams its logits here instead of holding
// copies of [L, V]. commit() checks that exactly `rows` rows were written.
class NpyF32Writer {
 public:
  NpyF32Writer(const std::string& path, std::size_t rows, std::size_t cols) : f_(path), path_(path), rows_(rows), cols_(cols) {
    std::string h = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                    std::to_string(cols) + "), }";
    while ((10 + h.size() + 1) % 64 != 0) h += ' ';
    h += '\n';
    const std::string pre = std::string("\x93NUMPY\x01\x00", 8) + char(h.size() & 0xff) + char(h.size() >> 8);
    f_.write(pre.data(), pre.size());
    f_.write(h.data(), h.size());
    row_.resize(cols);
  }
  template <class T>
  void write_row(const T* x) {
    if (written_ == rows_) fail(path_, ": more than the ", rows_, " rows announced");
    for (std::size_t i = 0; i < cols_; ++i) row_[i] = float(x[i]);
    f_.write(row_.data(), cols_ * sizeof(float));
    ++written_;
  }
  void commit() {
    if (written_ != rows_) fail(path_, ": ", written_, " rows written of the ", rows_, " announced");
    f_.commit();
  }

 private:
  OutputFile f_;
  std::string path_;
  std::size_t rows_, cols_, written_ = 0;
  std::vector<float> row_;
};

inline void write_npy_f32(const std::string& path, const std::vector<float>& data, std::size_t rows,
                          std::size_t cols) {
  NpyF32Writer w(path, rows, cols);
  for (std::size_t r = 0; r < rows; ++r) w.write_row(data.data() + r * cols);
  w.commit();
}

}  // namespace dsv3
