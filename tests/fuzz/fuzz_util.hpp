// Shared helpers of the libFuzzer targets (tests/fuzz/fuzz_*.cpp).
//
// Contract of every target: the library may reject an input by throwing a
// std::exception (dsv3::Error, or the std::runtime_error of the tokenizer and
// the chat template) — that is a clean rejection. A crash, a sanitizer report,
// a leak (memory: LeakSanitizer; file descriptors: FdGuard below), a hang
// (-timeout) or an out-of-memory (-rss_limit_mb / -malloc_limit_mb) is a bug.
#pragma once

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>

namespace fuzz {

// A private scratch directory for the process (in /dev/shm when there is one:
// targets write their input to a file on every run), removed at exit.
inline const std::string& scratch() {
  static const std::string dir = [] {
    std::string base = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
    std::string tmpl = base + "/dsv3-fuzz-XXXXXX";
    if (!::mkdtemp(tmpl.data())) {
      std::perror("mkdtemp");
      std::abort();
    }
    static std::string keep = tmpl;
    std::atexit([] { std::error_code ec; std::filesystem::remove_all(keep, ec); });
    return tmpl;
  }();
  return dir;
}

inline void write_file(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), std::streamsize(size));
  if (!f) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
}

// Detects file descriptors leaked by one run: the lowest free descriptor
// number must be the same before and after (open() always returns the lowest).
class FdGuard {
 public:
  FdGuard() : before_(lowest_free()) {}
  ~FdGuard() noexcept(false) {
    const int after = lowest_free();
    if (after != before_) {
      std::fprintf(stderr, "==fuzz== ERROR: file descriptor leak: lowest free fd was %d, now %d\n", before_, after);
      std::abort();
    }
  }

 private:
  static int lowest_free() {
    const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      std::perror("fuzz: open /dev/null");
      std::abort();
    }
    ::close(fd);
    return fd;
  }
  int before_;
};

}  // namespace fuzz

namespace fuzz {

// Runs f(); a std::exception is a clean rejection (returns false).
template <class F>
bool accepts(F&& f) {
  try {
    f();
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

// Reads every byte of [p, p + n) so ASan checks the whole range is mapped and
// the compiler cannot drop the loop.
inline void touch(const uint8_t* p, size_t n) {
  volatile uint8_t acc = 0;
  for (size_t i = 0; i < n; ++i) acc = uint8_t(acc ^ p[i]);
  (void)acc;
}

}  // namespace fuzz
