// backends/cuda/src/backend.cpp — the CUDA backend behind the seam
// (backend.hpp): device buffers, resident weights, and each op as a launch of
// a kernel in kernels.cu. Host C++; CUDA only through its runtime API.
#include <cuda_runtime_api.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include <dsv3/cuda/backend.hpp>

#include "kernels.hpp"

namespace dsv3::cuda {
namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("cuda: ", what, ": ", cudaGetErrorString(e));
}

// Device memory, freed with its last owner.
struct DevBuf {
  void* p = nullptr;
  std::size_t bytes = 0;
  explicit DevBuf(std::size_t n) : bytes(n) {
    if (n) check(cudaMalloc(&p, n), "cudaMalloc");
  }
  ~DevBuf() {
    if (p) cudaFree(p);
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  float* f() const { return static_cast<float*>(p); }
};

k::Elem elem_of(DType t, const std::string& what) {
  switch (t) {
    case DType::F32: return k::Elem::f32;
    case DType::BF16: return k::Elem::bf16;
    case DType::F16: return k::Elem::f16;
    case DType::F8_E4M3: return k::Elem::fp8_e4m3;
    default: fail("cuda: ", what, ": dtype ", dtype_name(t), " is not decoded on the device");
  }
}

bool decodable(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

// The knobs the device kernels implement: the defaults (f32 activations, W8A16
// FP8, f32 dequantised weights). Any other is declined, and runs on the CPU.
bool default_knobs(const Variants* v) { return !v || (!v->bf16_activations && !v->fp8_w8a8 && !v->fp8_dequant_bf16); }

class CudaBackend final : public Backend<float> {
 public:
  explicit CudaBackend(int device) : device_(device) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) fail("--backend cuda: no CUDA device is visible");
    if (device < 0 || device >= n) fail("--backend cuda: device ", device, " does not exist (", n, " visible)");
    check(cudaSetDevice(device), "cudaSetDevice");
    cudaDeviceProp p{};
    check(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
    name_ = std::string("cuda:") + std::to_string(device) + " (" + p.name + ")";
  }
  std::string name() const override { return name_; }
  bool on_host() const override { return false; }

  bool supports(const OpQuery& q) const override {
    if (!default_knobs(q.variants)) return false;
    switch (q.op) {
      case Op::embed: return q.weight && q.weight->is_dense() && decodable(q.weight->weight.dtype);
      case Op::linear: return q.weight && linear_ok(*q.weight);
      case Op::rms_norm: return q.vector && decodable(q.vector->dtype);
      case Op::rope: case Op::glue: return true;
      case Op::attention_mla: case Op::moe: case Op::mlp: return false;  // docs/backends.md: next
    }
    return false;
  }

  Act<float> upload(const Mat<float>& x) const override {
    auto b = buffer(rows(x), cols(x));
    check(cudaMemcpy(b->p, x.data(), b->bytes, cudaMemcpyHostToDevice), "upload");
    return wrap(std::move(b), rows(x), cols(x));
  }
  Mat<float> download(const Act<float>& x) const override {
    Mat<float> m = empty<float>(x.rows(), x.cols());
    check(cudaMemcpy(m.data(), dev(x), std::size_t(x.rows() * x.cols()) * sizeof(float), cudaMemcpyDeviceToHost),
          "download");
    return m;
  }
  std::unique_ptr<LayerCache> new_cache(const Config&, bool) const override {
    fail("cuda: attention runs on the CPU backend, which makes its caches");
  }

  Act<float> embed(const Linear& table, const std::vector<int32_t>& ids, const Variants&) const override {
    const int64_t n = int64_t(ids.size()), d = table.in();
    for (int32_t id : ids)
      if (id < 0 || id >= table.out()) fail("embed: token id ", id, " is outside [0, ", table.out(), ")");
    DevBuf dids(ids.size() * sizeof(int32_t));
    check(cudaMemcpy(dids.p, ids.data(), dids.bytes, cudaMemcpyHostToDevice), "upload ids");
    auto y = buffer(n, d);
    k::gather_rows(resident(table.weight), elem_of(table.weight.dtype, table.name()), d,
                   static_cast<const int32_t*>(dids.p), n, y->f());
    done("embed");
    return wrap(std::move(y), n, d);
  }

  Act<float> linear(const Act<float>& x, const Linear& w, const Variants&) const override {
    const int64_t n = x.rows(), K = w.in(), O = w.out();
    if (x.cols() != K) fail("linear '", w.name(), "': input has ", x.cols(), " columns, expected ", K);
    auto y = buffer(n, O);
    const void* scale = nullptr;
    k::Elem se = k::Elem::f32;
    int64_t br = 1, bc = 1, sc = 1;
    if (const auto* f = w.fp8()) {
      scale = resident(f->scale_inv);
      se = elem_of(f->scale_inv.dtype, f->scale_inv.name);
      br = f->block_rows, bc = f->block_cols, sc = f->scale_inv.shape[1];
    }
    k::linear(dev(x), n, K, resident(w.weight), elem_of(w.weight.dtype, w.name()), O, scale, se, br, bc, sc, y->f());
    done("linear");
    return wrap(std::move(y), n, O);
  }

  Act<float> rms_norm(const Act<float>& x, const TensorView& w, double eps, const Variants&) const override {
    if (w.numel() != x.cols()) fail("rms_norm '", w.name, "': weight has ", w.numel(), " elements, expected ", x.cols());
    auto y = buffer(x.rows(), x.cols());
    k::rms_norm(dev(x), x.rows(), x.cols(), resident(w), elem_of(w.dtype, w.name), eps, y->f());
    done("rms_norm");
    return wrap(std::move(y), x.rows(), x.cols());
  }

  void rope(Act<float>& x, int64_t col0, int64_t width, int64_t stride, const std::vector<RopeRow>& r,
            bool interleave) const override {
    const int64_t n = x.rows(), h = width / 2;
    if (int64_t(r.size()) < n) fail("rope: ", r.size(), " rows of angles for ", n, " rows");
    std::vector<float> cs(std::size_t(n * h)), sn(std::size_t(n * h));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t p = 0; p < h; ++p) cs[std::size_t(i * h + p)] = r[std::size_t(i)].cos[std::size_t(p)],
                                      sn[std::size_t(i * h + p)] = r[std::size_t(i)].sin[std::size_t(p)];
    DevBuf dc(cs.size() * sizeof(float)), ds(sn.size() * sizeof(float));
    check(cudaMemcpy(dc.p, cs.data(), dc.bytes, cudaMemcpyHostToDevice), "upload cos");
    check(cudaMemcpy(ds.p, sn.data(), ds.bytes, cudaMemcpyHostToDevice), "upload sin");
    k::rope(dev_mut(x), n, x.cols(), col0, width, stride, dc.f(), ds.f(), interleave);
    done("rope");
  }

  Act<float> attention_mla(const Backend<float>&, const Config&, const AttentionWeights&, const Act<float>&,
                           LayerCache&, int64_t, const std::vector<RopeRow>&, AttnForm, const Trace&, int64_t,
                           const Variants&) const override {
    fail("cuda: attention_mla is not supported yet (supports() declines it)");
  }
  Act<float> moe(const Backend<float>&, const Config&, const MoEWeights&, const Act<float>&, const Trace&, int64_t,
                 int64_t, const Variants&) const override {
    fail("cuda: moe is not supported yet (supports() declines it)");
  }
  Act<float> mlp(const Backend<float>&, const MLPWeights&, const Act<float>&, const Variants&) const override {
    fail("cuda: mlp is not supported yet (supports() declines it)");
  }

  void add(Act<float>& h, const Act<float>& f, const Variants&) const override {
    if (h.rows() != f.rows() || h.cols() != f.cols()) fail("add: shapes differ");
    k::add(dev_mut(h), dev(f), h.rows() * h.cols());
    done("add");
  }
  Act<float> take_rows(const Act<float>& x, int64_t r0, int64_t r1) const override {
    auto y = buffer(r1 - r0, x.cols());
    check(cudaMemcpy(y->p, dev(x) + r0 * x.cols(), y->bytes, cudaMemcpyDeviceToDevice), "take_rows");
    return wrap(std::move(y), r1 - r0, x.cols());
  }
  Act<float> concat_cols(const Act<float>& a, const Act<float>& b) const override {
    auto y = buffer(a.rows(), a.cols() + b.cols());
    k::concat_cols(dev(a), a.cols(), dev(b), b.cols(), a.rows(), y->f());
    done("concat_cols");
    return wrap(std::move(y), a.rows(), a.cols() + b.cols());
  }
  void zero_rows(Act<float>& x, int64_t r0, int64_t r1) const override {
    check(cudaMemset(dev_mut(x) + r0 * x.cols(), 0, std::size_t((r1 - r0) * x.cols()) * sizeof(float)), "zero_rows");
  }

 private:
  static bool linear_ok(const Linear& w) {
    if (w.is_dense()) return decodable(w.weight.dtype);
    if (const auto* f = w.fp8())
      return w.weight.dtype == DType::F8_E4M3 && (f->scale_inv.dtype == DType::F32 || f->scale_inv.dtype == DType::BF16);
    return false;  // AWQ, MLX: docs/backends.md
  }
  std::shared_ptr<DevBuf> buffer(int64_t r, int64_t c) const {
    return std::make_shared<DevBuf>(std::size_t(r * c) * sizeof(float));
  }
  Act<float> wrap(std::shared_ptr<DevBuf> b, int64_t r, int64_t c) const { return Act<float>(this, std::move(b), r, c); }
  const float* dev(const Act<float>& a) const {
    if (a.owner() != this) fail("cuda: an activation reached the device without being uploaded");
    return a.handle<DevBuf>()->f();
  }
  // In-place ops: an Act shares its buffer with its copies, so one still
  // shared is copied first (copy on write, as Act::host_mut does).
  float* dev_mut(Act<float>& a) const {
    const float* p = dev(a);
    Act<float> mine = wrap(buffer(a.rows(), a.cols()), a.rows(), a.cols());
    check(cudaMemcpy(mine.handle<DevBuf>()->p, p, std::size_t(a.rows() * a.cols()) * sizeof(float),
                     cudaMemcpyDeviceToDevice), "copy on write");
    a = std::move(mine);
    return a.handle<DevBuf>()->f();
  }
  // A stored tensor on the device, in its stored bytes: uploaded at first use.
  // Keyed by file and name as well as address: a model unmapped and another
  // mapped at the same address must not find the first one's weights.
  const void* resident(const TensorView& t) const {
    const WeightKey key{t.file, t.name, t.data, t.nbytes()};
    std::lock_guard<std::mutex> lock(mu_);
    auto it = weights_.find(key);
    if (it != weights_.end()) return it->second->p;
    auto b = std::make_shared<DevBuf>(t.nbytes());
    check(cudaMemcpy(b->p, t.data, t.nbytes(), cudaMemcpyHostToDevice), "upload weight");
    return weights_.emplace(key, std::move(b)).first->second->p;
  }
  void done(const char* op) const {
    if (const char* e = k::sync()) fail("cuda: ", op, ": ", e);
  }

  int device_;
  std::string name_;
  mutable std::mutex mu_;
  using WeightKey = std::tuple<std::string, std::string, const uint8_t*, std::size_t>;
  mutable std::map<WeightKey, std::shared_ptr<DevBuf>> weights_;
};

}  // namespace

int device_count() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

std::shared_ptr<const Backend<float>> make_backend(int device) { return std::make_shared<CudaBackend>(device); }

}  // namespace dsv3::cuda
