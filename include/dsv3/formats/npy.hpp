// dsv3/formats/npy.hpp — a strict reader of NumPy .npy files (inputs to the CLI: token
// ids, reference logits to compare against).
//
// Accepted: format versions 1.0, 2.0 and 3.0; dtype '<f4', '<f8', '<i4', '<i8'
// (little-endian float32 / float64 / int32 / int64; '|' and '=' are not
// written by NumPy for these); C order (fortran_order True is accepted only
// when the layout is the same, i.e. at most one dimension is > 1); the data
// must be exactly prod(shape) * itemsize bytes — no more, no less.
// Everything else is a dsv3::Error naming the file and what was expected.
//
// Why not xtensor's xt::load_npy (xtensor/xnpy.hpp): on hostile input it is
// neither strict nor safe — `header.back()` on an empty header is undefined
// behaviour, the 2-byte/4-byte header length is assembled from *signed* chars
// (a length byte >= 0x80 sign-extends into a huge length), short reads of the
// header and of the data are not detected (a truncated file yields garbage,
// not an error), dims are parsed with `ss >> size_t` without any check (a
// negative or absurd dim, or an overflowing product, becomes a huge
// allocation), trailing bytes are ignored, keys must be in one order, and
// version 3.0 is rejected. So this file has its own small parser of the header
// (a Python dict literal with exactly the keys descr, fortran_order, shape).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "checked.hpp"
#include "dtype.hpp"
#include "../error.hpp"

namespace dsv3 {

struct NpyArray {
  std::string file;               // where it came from (for messages)
  DType dtype = DType::F32;       // F32, F64, I32 or I64
  std::vector<int64_t> shape;     // () for a scalar
  std::vector<uint8_t> bytes;     // prod(shape) * itemsize little-endian bytes

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  std::size_t ndim() const { return shape.size(); }
  bool is_float() const { return dtype == DType::F32 || dtype == DType::F64; }

  // Float arrays only (f4 / f8); an f8 array is rounded to float.
  std::vector<float> to_f32() const {
    if (!is_float()) fail(file, ": expected a float32/float64 array, got ", dtype_name(dtype));
    std::vector<float> out(static_cast<std::size_t>(numel()));
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = float(load_as_double(bytes.data() + i * dtype_size(dtype), dtype));
    return out;
  }
  std::vector<double> to_f64() const {
    if (!is_float()) fail(file, ": expected a float32/float64 array, got ", dtype_name(dtype));
    std::vector<double> out(static_cast<std::size_t>(numel()));
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = load_as_double(bytes.data() + i * dtype_size(dtype), dtype);
    return out;
  }
  // Integer arrays only (i4 / i8), exactly.
  std::vector<int64_t> to_i64() const {
    std::vector<int64_t> out(static_cast<std::size_t>(numel()));
    if (dtype == DType::I64) {
      if (!out.empty()) std::memcpy(out.data(), bytes.data(), out.size() * 8);
    } else if (dtype == DType::I32) {
      for (std::size_t i = 0; i < out.size(); ++i) {
        int32_t v;
        std::memcpy(&v, bytes.data() + 4 * i, 4);
        out[i] = v;
      }
    } else {
      fail(file, ": expected an int32/int64 array, got ", dtype_name(dtype));
    }
    return out;
  }
};

namespace npy_detail {

constexpr std::size_t kMaxHeader = std::size_t(1) << 20;  // NumPy itself refuses > 10000 bytes by default
constexpr std::size_t kMaxDims = 32;                      // NPY_MAXDIMS (NumPy < 2)
constexpr int64_t kMaxDim = int64_t(1) << 48;             // any single dimension beyond this is absurd

inline std::string shape_text(const std::vector<int64_t>& s) {
  std::string r = "(";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() == 1 ? ",)" : ")");
}

// A cursor over the header dict literal, e.g.
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
class HeaderParser {
 public:
  HeaderParser(std::string_view s, const std::string& file) : s_(s), file_(file) {}

  void parse(std::string& descr, bool& fortran, std::vector<int64_t>& shape) {
    bool have_descr = false, have_fortran = false, have_shape = false;
    ws();
    expect('{', "'{' opening the header dict");
    for (;;) {
      ws();
      if (peek() == '}') { ++i_; break; }
      const std::string key = str();
      ws();
      expect(':', "':' after key '" + key + "'");
      ws();
      if (key == "descr") {
        if (have_descr) bad("duplicate key 'descr'");
        if (peek() != '\'' && peek() != '"')
          bad("'descr' must be a simple type string such as '<f4' (structured dtypes are unsupported)");
        descr = str();
        have_descr = true;
      } else if (key == "fortran_order") {
        if (have_fortran) bad("duplicate key 'fortran_order'");
        if (word("True")) fortran = true;
        else if (word("False")) fortran = false;
        else bad("'fortran_order' must be True or False");
        have_fortran = true;
      } else if (key == "shape") {
        if (have_shape) bad("duplicate key 'shape'");
        tuple(shape);
        have_shape = true;
      } else {
        bad("unexpected key '" + key + "' (expected exactly 'descr', 'fortran_order', 'shape')");
      }
      ws();
      if (peek() == ',') { ++i_; continue; }
      ws();
      expect('}', "',' or '}' in the header dict");
      break;
    }
    ws();
    if (i_ != s_.size()) bad("unexpected bytes after the header dict");
    if (!have_descr || !have_fortran || !have_shape)
      bad("header dict must have the keys 'descr', 'fortran_order' and 'shape'");
  }

 private:
  [[noreturn]] void bad(const std::string& what) const {
    fail(file_, ": invalid .npy header at byte ", i_, ": ", what);
  }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  void expect(char c, const std::string& what) {
    if (peek() != c) bad("expected " + what);
    ++i_;
  }
  bool word(std::string_view w) {
    if (s_.substr(i_, w.size()) != w) return false;
    i_ += w.size();
    return true;
  }
  std::string str() {
    const char q = peek();
    if (q != '\'' && q != '"') bad("expected a quoted string");
    ++i_;
    std::string out;
    while (i_ < s_.size() && s_[i_] != q) {
      if (s_[i_] == '\\' || static_cast<unsigned char>(s_[i_]) < 0x20) bad("unsupported character in a string");
      out += s_[i_++];
    }
    if (i_ >= s_.size()) bad("unterminated string");
    ++i_;
    return out;
  }
  int64_t integer() {
    const std::size_t start = i_;
    int64_t v = 0;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') {
      v = v * 10 + (s_[i_++] - '0');
      if (v > kMaxDim) bad("dimension " + std::string(s_.substr(start, i_ - start)) + "... is absurd (limit 2^48)");
    }
    if (i_ == start) bad(peek() == '-' ? "a dimension is negative" : "expected a non-negative integer dimension");
    if (peek() == 'L') ++i_;  // Python 2 long literal, as written by old NumPy
    return v;
  }
  void tuple(std::vector<int64_t>& shape) {
    shape.clear();
    expect('(', "'(' opening the shape tuple");
    ws();
    if (peek() == ')') { ++i_; return; }  // () : a scalar
    for (;;) {
      ws();
      shape.push_back(integer());
      if (shape.size() > kMaxDims) bad("more than 32 dimensions");
      ws();
      if (peek() == ',') {
        ++i_;
        ws();
        if (peek() == ')') { ++i_; return; }
        continue;
      }
      if (shape.size() == 1 && peek() == ')') bad("a one-element shape needs a trailing comma: (n,)");
      expect(')', "',' or ')' in the shape tuple");
      return;
    }
  }

  std::string_view s_;
  const std::string& file_;
  std::size_t i_ = 0;
};

}  // namespace npy_detail

// Parses an in-memory .npy file; `file` names it in errors.
inline NpyArray parse_npy(const uint8_t* p, std::size_t n, const std::string& file) {
  static const char kMagic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};
  if (n < 10 || std::memcmp(p, kMagic, 6) != 0)
    fail(file, ": not a .npy file (bad magic; expected \"\\x93NUMPY\" then a version and a header)");
  const int major = p[6], minor = p[7];
  if (!((major == 1 || major == 2 || major == 3) && minor == 0))
    fail(file, ": unsupported .npy format version ", major, ".", minor, " (expected 1.0, 2.0 or 3.0)");
  std::size_t pre = 0, hlen = 0;
  if (major == 1) {
    pre = 10;
    hlen = std::size_t(p[8]) | std::size_t(p[9]) << 8;
  } else {
    pre = 12;
    if (n < pre) fail(file, ": truncated .npy file (", n, " bytes; the version ", major, " preamble needs 12)");
    hlen = std::size_t(p[8]) | std::size_t(p[9]) << 8 | std::size_t(p[10]) << 16 | std::size_t(p[11]) << 24;
  }
  if (hlen > npy_detail::kMaxHeader)
    fail(file, ": .npy header length ", hlen, " is absurd (limit ", npy_detail::kMaxHeader, ")");
  if (hlen > n - pre)
    fail(file, ": truncated .npy file: header length ", hlen, " runs past the end of the file (", n,
         " bytes)");
  std::string descr;
  bool fortran = false;
  NpyArray a;
  a.file = file;
  npy_detail::HeaderParser(std::string_view(reinterpret_cast<const char*>(p) + pre, hlen), file)
      .parse(descr, fortran, a.shape);

  if (descr == "<f4") a.dtype = DType::F32;
  else if (descr == "<f8") a.dtype = DType::F64;
  else if (descr == "<i4") a.dtype = DType::I32;
  else if (descr == "<i8") a.dtype = DType::I64;
  else
    fail(file, ": unsupported .npy dtype '", descr,
         "' (expected little-endian float32/float64/int32/int64: '<f4', '<f8', '<i4', '<i8')");
  if (fortran) {
    int big = 0;
    for (int64_t d : a.shape) big += d > 1;
    if (big > 1)
      fail(file, ": .npy array ", npy_detail::shape_text(a.shape),
           " is in Fortran order (expected C order: save with np.ascontiguousarray)");
  }
  // prod(shape) * itemsize, with every intermediate bounded (formats/checked.hpp).
  const uint64_t data = n - pre - hlen;
  uint64_t need = 0;
  if (!checked_bytes(a.shape, dtype_size(a.dtype), need))
    fail(file, ": .npy shape ", npy_detail::shape_text(a.shape), " is absurd (its byte size overflows)");
  if (need != data)
    fail(file, ": .npy shape ", npy_detail::shape_text(a.shape), " x ", descr, " needs ", need,
         " bytes of data but the file has ", data, need > data ? " (truncated?)" : " (trailing bytes)");
  a.bytes.assign(p + pre + hlen, p + n);
  return a;
}

// Reads and validates `path` (a regular file; FIFOs, directories and devices
// are rejected without blocking).
inline NpyArray read_npy(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail(path, ": cannot open: ", std::strerror(errno));
  struct Closer { int fd; ~Closer() { ::close(fd); } } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) fail(path, ": cannot stat: ", std::strerror(errno));
  if (S_ISDIR(st.st_mode)) fail(path, ": is a directory (expected a .npy file)");
  if (!S_ISREG(st.st_mode)) fail(path, ": not a regular file (expected a .npy file)");
  std::vector<uint8_t> buf(std::size_t(st.st_size));
  std::size_t got = 0;
  while (got < buf.size()) {
    const ssize_t r = ::read(fd, buf.data() + got, buf.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail(path, ": read failed: ", std::strerror(errno));
    if (r == 0) fail(path, ": file shrank while being read");
    got += std::size_t(r);
  }
  if (buf.empty()) fail(path, ": empty file (0 bytes; expected a .npy file)");
  return parse_npy(buf.data(), buf.size(), path);
}

}  // namespace dsv3
