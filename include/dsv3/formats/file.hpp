// dsv3/formats/file.hpp — reading a whole input file, bounded.
//
// Every file dsv3 reads whole (the shard index, tokenizer.json and
// tokenizer_config.json, `--ids @FILE`, `--template`) goes through here: it
// must be a regular file (a FIFO, a device or /dev/zero would be read
// forever) no larger than a limit far above any legitimate one, checked on
// the opened descriptor, so a file swapped in between cannot slip past.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>

#include "../error.hpp"

namespace dsv3 {

constexpr uint64_t kMaxIndexBytes = uint64_t(256) << 20;      // DeepSeek-V3's shard index: 9 MB
constexpr uint64_t kMaxTokenizerBytes = uint64_t(256) << 20;  // DeepSeek-V3's tokenizer.json: 7.8 MB
constexpr uint64_t kMaxTextInputBytes = uint64_t(64) << 20;   // ids files, templates (163,840 ids: ~1 MB)

// The bytes of `path`; `what` says what it should be, for the errors.
inline std::string read_file_bounded(const std::string& path, uint64_t max_bytes, const std::string& what) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) fail(path, ": cannot open (expected ", what, "): ", std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail(path, ": cannot stat: ", std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail(path, ": not a regular file (expected ", what, ")");
  if (uint64_t(st.st_size) > max_bytes)
    fail(path, ": ", uint64_t(st.st_size), " bytes, more than the ", max_bytes, "-byte limit for ", what);
  std::string out(std::size_t(st.st_size), '\0');
  std::size_t got = 0;
  while (got < out.size()) {
    const ssize_t r = ::read(fd, out.data() + got, out.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail(path, ": read error: ", std::strerror(errno));
    if (r == 0) break;
    got += std::size_t(r);
  }
  out.resize(got);  // a file that shrank while read: what was there
  return out;
}

// One line of a stream (without its '\n'), at most `max_bytes` long; false at
// the end of input. std::getline treats a read error as the end of input, and
// a line too long to allocate too (the stream swallows the bad_alloc and sets
// badbit), so a caller looping on it would exit 0 having dropped the rest.
// Here both are errors naming `where`, and so is a line past the bound.
inline bool read_line_bounded(std::istream& in, std::string& line, uint64_t max_bytes, const std::string& where) {
  line.clear();
  char buf[1 << 16];
  bool any = false;
  for (;;) {
    in.get(buf, sizeof buf, '\n');  // stops before '\n'; failbit when it extracts nothing
    const auto n = std::size_t(in.gcount());
    any |= n > 0;
    if (in.bad() || (&in == &std::cin && std::ferror(stdin))) fail(where, ": read error");
    if (line.size() + n > max_bytes) fail(where, ": a line longer than the ", max_bytes, "-byte limit");
    line.append(buf, n);
    if (in.eof()) return any;
    if (in.fail()) in.clear();  // the next character is the '\n'
    if (in.peek() == '\n') {
      in.ignore();
      return true;
    }
  }
}

}  // namespace dsv3
