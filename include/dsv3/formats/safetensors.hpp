// dsv3/formats/safetensors.hpp — memory-mapped safetensors reader (single file or
// sharded with model.safetensors.index.json) and a streaming writer.
//
// Format: 8-byte little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
// then the data; offsets are relative to the end of the header.
// The reader validates everything it is given: header length, JSON, dtype,
// shape x dtype = byte size, offsets inside the file and non-overlapping. Every
// error names the file (and the tensor).
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "checked.hpp"
#include "dtype.hpp"
#include "../error.hpp"
#include "file.hpp"
#include "io.hpp"
#include "json.hpp"

namespace dsv3 {

// A read-only view of one stored tensor: bytes in the mapping, stored dtype.
struct TensorView {
  std::string name;
  std::string file;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  std::size_t nbytes() const { return std::size_t(numel()) * dtype_size(dtype); }
  int64_t dim(std::size_t i) const { return shape.at(i); }
  double at(int64_t i) const { return load_as_double(data + std::size_t(i) * dtype_size(dtype), dtype); }
};

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// ---------------------------------------------------------------------------
// One mapped .safetensors file.
class SafetensorsFile {
 public:
  static constexpr uint64_t kMaxHeader = uint64_t(100) << 20;  // 100 MB of JSON is already absurd

  explicit SafetensorsFile(const std::string& path) : path_(path) {
    try {
      open_and_parse(path);
    } catch (...) {
      release();  // a throwing constructor runs no destructor: do not leak the fd / mapping
      throw;
    }
  }
  ~SafetensorsFile() { release(); }
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

 private:
  void open_and_parse(const std::string& path) {
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it is then
    // rejected as "not a regular file"); no effect on regular files.
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd_ < 0) fail(path, ": cannot open: ", std::strerror(errno));
    struct stat st;
    if (::fstat(fd_, &st) != 0) fail(path, ": cannot stat: ", std::strerror(errno));
    if (!S_ISREG(st.st_mode)) fail(path, ": not a regular file");
    size_ = uint64_t(st.st_size);
    if (size_ < 8)
      fail(path, ": truncated: ", size_, " bytes, expected at least the 8-byte header length");
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
      if (p == MAP_FAILED) fail(path, ": mmap failed: ", std::strerror(errno));
      base_ = static_cast<const uint8_t*>(p);
    }
    parse_header();
  }
  void release() {
    if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
    if (fd_ >= 0) ::close(fd_);
    base_ = nullptr;
    fd_ = -1;
  }

 public:
  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  // Maps every page of the file into this process now (page-table entries
  // included), so the first forward pass does not take a page fault per few
  // KB of weights. Costs a read of the whole file: for checkpoints that fit
  // in RAM (Checkpoint::prefault).
  void prefault() const {
    if (!base_) return;
#ifdef MADV_POPULATE_READ
    if (::madvise(const_cast<uint8_t*>(base_), size_, MADV_POPULATE_READ) == 0) return;
#endif
    const uint64_t page = uint64_t(::sysconf(_SC_PAGESIZE));  // kernels before 5.14: touch each page
    volatile uint8_t sink = 0;
    for (uint64_t o = 0; o < size_; o += page) sink = sink + base_[o];
  }
  // Pages are read only where touched: no readahead, and no fault-around
  // (the kernel would otherwise map up to 64 KiB of cached neighbours on each
  // fault). For expert-parallel ranks, which must not read others' experts.
  void advise_random() const {
    if (base_) ::madvise(const_cast<uint8_t*>(base_), size_, MADV_RANDOM);
  }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const nlohmann::json& metadata() const { return metadata_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const TensorView& get(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) fail(path_, ": no tensor named '", name, "'");
    return it->second;
  }

 private:
  void parse_header() {
    uint64_t n = 0;
    for (int i = 0; i < 8; ++i) n |= uint64_t(base_[i]) << (8 * i);
    if (n > kMaxHeader) fail(path_, ": header length ", n, " is absurd (limit ", kMaxHeader, ")");
    if (n > size_ - 8)
      fail(path_, ": truncated: header length ", n, " runs past the end of the file (",
           size_, " bytes)");
    const nlohmann::json h = parse_json(base_ + 8, base_ + 8 + n, path_ + ": header");
    if (!h.is_object()) fail(path_, ": header must be a JSON object");
    const uint8_t* data = base_ + 8 + n;
    const uint64_t data_size = size_ - 8 - n;
    struct Span { uint64_t b, e; const std::string* name; };
    std::vector<Span> spans;
    for (auto it = h.begin(); it != h.end(); ++it) {
      const std::string& name = it.key();
      if (name == "__metadata__") {
        metadata_ = it.value();
        continue;
      }
      const auto& t = it.value();
      auto bad = [&](const std::string& what) { fail(path_, ": tensor '", name, "': ", what); };
      if (!t.is_object()) bad("entry must be an object");
      if (!t.contains("dtype") || !t["dtype"].is_string()) bad("missing string 'dtype'");
      TensorView v;
      v.name = name;
      v.file = path_;
      const std::string ds = t["dtype"].get<std::string>();
      if (!parse_dtype(ds, v.dtype)) bad("unknown dtype \"" + ds + "\"");
      if (!t.contains("shape") || !t["shape"].is_array()) bad("missing array 'shape'");
      for (const auto& d : t["shape"]) {
        if (!d.is_number_integer() || d.get<int64_t>() < 0) bad("shape must hold non-negative integers");
        v.shape.push_back(d.get<int64_t>());
      }
      uint64_t want = 0;  // bytes; the element count alone may pass while count x item size wraps
      if (!checked_bytes(v.shape, dtype_size(v.dtype), want))
        bad("shape " + shape_str(v.shape) + " x " + ds + " is absurd (its byte size passes 2^62)");
      if (!t.contains("data_offsets") || !t["data_offsets"].is_array() ||
          t["data_offsets"].size() != 2 || !t["data_offsets"][0].is_number_unsigned() ||
          !t["data_offsets"][1].is_number_unsigned())
        bad("'data_offsets' must be two non-negative integers");
      const uint64_t b = t["data_offsets"][0].get<uint64_t>();
      const uint64_t e = t["data_offsets"][1].get<uint64_t>();
      if (b > e) bad("data_offsets [" + std::to_string(b) + ", " + std::to_string(e) + "] are reversed");
      if (e > data_size)
        bad("data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
            "] run past the end of the data (" + std::to_string(data_size) +
            " bytes; file truncated?)");
      if (e - b != want)
        bad("shape " + shape_str(v.shape) + " x " + ds + " needs " + std::to_string(want) +
            " bytes but data_offsets span " + std::to_string(e - b));
      v.data = data + b;
      tensors_.emplace(name, std::move(v));
      spans.push_back({b, e, &tensors_.find(name)->first});
    }
    std::sort(spans.begin(), spans.end(), [](const Span& x, const Span& y) { return x.b < y.b; });
    for (std::size_t i = 1; i < spans.size(); ++i)
      if (spans[i].b < spans[i - 1].e)
        fail(path_, ": tensors '", *spans[i - 1].name, "' and '", *spans[i].name,
             "' overlap in the data section");
  }

  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  const uint8_t* base_ = nullptr;
  std::map<std::string, TensorView> tensors_;
  nlohmann::json metadata_;
};

// ---------------------------------------------------------------------------
// A checkpoint directory: model.safetensors, or shards named by
// model.safetensors.index.json. A weight and its scale may live in different
// shards; lookups go by name.
class Checkpoint {
 public:
  explicit Checkpoint(const std::string& dir) : dir_(dir) {
    const std::string index = dir + "/model.safetensors.index.json";
    const std::string single = dir + "/model.safetensors";
    if (file_exists(index)) {
      open_index(index);
    } else if (file_exists(single)) {
      files_.push_back(std::make_unique<SafetensorsFile>(single));
      for (const auto& kv : files_.back()->tensors()) where_[kv.first] = files_.back().get();
    } else {
      fail(dir, ": no model.safetensors or model.safetensors.index.json");
    }
  }

  // Does `dir` hold weights at all (model.safetensors or an index)?
  static bool present(const std::string& dir) {
    return file_exists(dir + "/model.safetensors.index.json") || file_exists(dir + "/model.safetensors");
  }

  const std::string& dir() const { return dir_; }
  bool has(const std::string& name) const { return where_.count(name) != 0; }
  const TensorView& get(const std::string& name) const {
    auto it = where_.find(name);
    if (it == where_.end()) fail(dir_, ": missing tensor '", name, "'");
    return it->second->get(name);
  }
  std::vector<std::string> names() const {
    std::vector<std::string> r;
    for (const auto& kv : where_) r.push_back(kv.first);
    return r;
  }
  std::size_t num_files() const { return files_.size(); }
  uint64_t bytes() const {
    uint64_t b = 0;
    for (const auto& f : files_) b += f->size();
    return b;
  }
  // Faults every file in now (SafetensorsFile::prefault). Worth it when the
  // checkpoint fits comfortably in RAM (llama.cpp populates its mapping the
  // same way); for checkpoints bigger than RAM, leave pages to be faulted in
  // as the experts that are used are touched.
  void prefault() const {
    for (const auto& f : files_) f->prefault();
  }
  void advise_random() const {
    for (const auto& f : files_) f->advise_random();
  }

  static bool file_exists(const std::string& p) {
    struct stat st;
    return ::stat(p.c_str(), &st) == 0;
  }

 private:
  void open_index(const std::string& index) {
    nlohmann::json j = parse_json(read_file_bounded(index, kMaxIndexBytes, "a shard index JSON"), index);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      fail(index, ": expected an object with a 'weight_map' object");
    std::map<std::string, SafetensorsFile*> by_file;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string()) fail(index, ": weight_map['", it.key(), "'] must be a file name");
      const std::string shard = it.value().get<std::string>();
      if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..")
        fail(index, ": weight_map['", it.key(), "'] = \"", shard, "\" is not a plain file name");
      auto f = by_file.find(shard);
      if (f == by_file.end()) {
        const std::string path = dir_ + "/" + shard;
        if (!file_exists(path))
          fail(index, ": shard '", shard, "' (holding '", it.key(), "') is missing");
        files_.push_back(std::make_unique<SafetensorsFile>(path));
        f = by_file.emplace(shard, files_.back().get()).first;
      }
      if (!f->second->has(it.key()))
        fail(index, ": tensor '", it.key(), "' is mapped to '", shard, "' which does not hold it");
      where_[it.key()] = f->second;
    }
  }

  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, SafetensorsFile*> where_;
};

// ---------------------------------------------------------------------------
// Writer. Tensors are declared up front (name, dtype, shape, a function that
// fills the bytes) and streamed one by one, so a multi-GB checkpoint never sits
// in memory. The file is written under a temporary name and renamed when
// complete: an interrupted run leaves no truncated output.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::function<void(uint8_t* out)> fill;  // writes numel * dtype_size bytes

  std::size_t nbytes() const {
    std::size_t n = dtype_size(dtype);
    for (int64_t d : shape) n *= std::size_t(d);
    return n;
  }
};

// Writes `path` whole or not at all (OutputFile). Returns the data bytes written.
inline std::size_t write_safetensors(const std::string& path, const std::vector<TensorToWrite>& ts,
                                     const nlohmann::json& metadata = nlohmann::json()) {
  nlohmann::json h = nlohmann::json::object();
  uint64_t off = 0;
  for (const auto& t : ts) {
    const uint64_t n = t.nbytes();
    h[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + n}}};
    off += n;
  }
  if (!metadata.is_null()) h["__metadata__"] = metadata;
  std::string hs = h.dump();
  while ((8 + hs.size()) % 8 != 0) hs.push_back(' ');  // keep the data 8-byte aligned
  OutputFile f(path);  // unique temporary, checked writes, fsync, rename (io.hpp)
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(hs.size()) >> (8 * i));
  f.write(len, 8);
  f.write(hs.data(), hs.size());
  std::vector<uint8_t> buf;
  for (const auto& t : ts) {
    buf.assign(t.nbytes(), 0);
    if (t.fill) t.fill(buf.data());
    f.write(buf.data(), buf.size());
  }
  f.commit();
  return off;
}

}  // namespace dsv3
