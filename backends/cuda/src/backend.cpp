// backends/cuda/src/backend.cpp — the CUDA backend behind the seam
// (backend.hpp): device buffers, resident weights, and each op as a launch of
// a kernel in kernels.cu. Host C++; CUDA only through its runtime API.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include <dsv3/cuda/backend.hpp>
#include <dsv3/reference/moe.hpp>

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
  // Stream-ordered on the default stream, where every launch and copy goes:
  // a buffer freed while a kernel that reads it is queued is freed after it.
  explicit DevBuf(std::size_t n) : bytes(n) {
    if (n) check(cudaMallocAsync(&p, n, 0), "cudaMallocAsync");
  }
  ~DevBuf() {
    if (p) cudaFreeAsync(p, 0);
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  float* f() const { return static_cast<float*>(p); }
};

// One layer's latent cache on the device: rows [0, len) of [c_kv | k_pe],
// f32 (or bf16 values kept as f32: the reference widens its bf16 rows the
// same way), grown by doubling.
struct DeviceLatentCache final : LayerCache {
  bool bf16 = false;
  int64_t width = 0, len = 0, cap = 0;
  std::shared_ptr<DevBuf> rows;
  std::size_t bytes() const override { return std::size_t(cap * width) * sizeof(float); }  // what it holds
  void truncate(int64_t keep, int64_t) override { len = std::min(len, keep); }
  void reserve(int64_t need) {
    if (need <= cap) return;
    const int64_t c = std::max<int64_t>(need, 2 * cap);
    auto b = std::make_shared<DevBuf>(std::size_t(c * width) * sizeof(float));
    if (len) check(cudaMemcpy(b->p, rows->p, std::size_t(len * width) * sizeof(float), cudaMemcpyDeviceToDevice), "cache grow");
    rows = std::move(b);
    cap = c;
  }
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
      // the gate_proj: the experts' format. A linear inside in another format
      // (mlx-lm leaves some unquantized) runs on the CPU (linear below). No
      // weight: Dispatch asking whether the MoE runs here (expert parallelism).
      case Op::mlp: case Op::moe: return !q.weight || linear_ok(*q.weight);
      case Op::attention_mla: return q.weight && linear_ok(*q.weight);        // kv_b_proj, read per head in-kernel
    }
    return false;
  }

  Act<float> upload(const Mat<float>& x) const override {
    on();
    auto b = buffer(rows(x), cols(x));
    check(cudaMemcpy(b->p, x.data(), b->bytes, cudaMemcpyHostToDevice), "upload");
    return wrap(std::move(b), rows(x), cols(x));
  }
  Mat<float> download(const Act<float>& x) const override {
    on();
    Mat<float> m = empty<float>(x.rows(), x.cols());
    check(cudaMemcpy(m.data(), dev(x), std::size_t(x.rows() * x.cols()) * sizeof(float), cudaMemcpyDeviceToHost),
          "download");
    return m;
  }
  std::unique_ptr<LayerCache> new_cache(const Config& c, bool bf16) const override {
    on();
    auto cache = std::make_unique<DeviceLatentCache>();
    cache->bf16 = bf16;
    cache->width = c.kv_lora_rank + c.qk_rope_head_dim;
    return cache;
  }

  Act<float> embed(const Linear& table, const std::vector<int32_t>& ids, const Variants&) const override {
    on();
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

  Act<float> linear(const Act<float>& x, const Linear& w, const Variants& v) const override {
    on();
    // A format the kernels do not read (AWQ, MLX), reached from a composite op
    // this backend took with itself as `ops`: the CPU backend runs it.
    if (!linear_ok(w)) return upload(home(cpu_.linear(Act<float>(download(x)), w, v)));
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
    on();
    if (w.numel() != x.cols()) fail("rms_norm '", w.name, "': weight has ", w.numel(), " elements, expected ", x.cols());
    auto y = buffer(x.rows(), x.cols());
    k::rms_norm(dev(x), x.rows(), x.cols(), resident(w), elem_of(w.dtype, w.name), eps, y->f());
    done("rms_norm");
    return wrap(std::move(y), x.rows(), x.cols());
  }

  void rope(Act<float>& x, int64_t col0, int64_t width, int64_t stride, const std::vector<RopeRow>& r,
            bool interleave) const override {
    on();
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

  // MLA (reference/mla.hpp, eqs. 1-11), every step on the device. The
  // linears, norms and RoPE go through `ops` (the dispatcher: here when this
  // backend takes them); the attention itself is the kernels of kernels.hpp.
  Act<float> attention_mla(const Backend<float>& ops, const Config& c, const AttentionWeights& w, const Act<float>& x,
                           LayerCache& cache_base, int64_t start_pos, const std::vector<RopeRow>& rope, AttnForm form,
                           const Trace& trace, int64_t layer, const Variants& v) const override {
    on();
    auto* cache = dynamic_cast<DeviceLatentCache*>(&cache_base);
    if (!cache) fail("backend '", name(), "' was given a layer cache it did not make");
    const int64_t n = x.rows(), H = c.num_attention_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim;
    const int64_t dq = dn + dr, dv = c.v_head_dim, dc = c.kv_lora_rank, dkv = dc + dr;
    const double eps = c.rms_norm_eps;
    Act<float> q;
    if (w.q_a_proj) {
      Act<float> q_a = mine(ops.linear(x, *w.q_a_proj, v));                       // eq. (6)
      edit(trace, "q_a", layer, start_pos, q_a);
      Act<float> c_q = mine(ops.rms_norm(q_a, *w.q_a_layernorm, eps, v));
      edit(trace, "q_a_norm", layer, start_pos, c_q);
      q = mine(ops.linear(c_q, *w.q_b_proj, v));                                  // eqs. (7), (8)
    } else {
      q = mine(ops.linear(x, *w.q_proj, v));
    }
    emit_heads(trace, "q_nope", layer, start_pos, q, H, dq, 0, dn);
    emit_heads(trace, "q_pe", layer, start_pos, q, H, dq, dn, dr);
    ops.rope(q, dn, dr, dq, rope, c.rope_interleave);                              // eq. (8) RoPE(q^R)
    q = mine(std::move(q));
    emit_heads(trace, "q_pe_rope", layer, start_pos, q, H, dq, dn, dr);
    const Act<float> kv = mine(ops.linear(x, w.kv_a_proj_with_mqa, v));          // eqs. (1), (3)
    Act<float> c_kv = mine(ops.rms_norm(take_cols(kv, 0, dc), w.kv_a_layernorm, eps, v));
    edit(trace, "c_kv", layer, start_pos, c_kv);
    Act<float> k_pe = take_cols(kv, dc, dr);
    edit(trace, "k_pe", layer, start_pos, k_pe);
    ops.rope(k_pe, 0, dr, dr, rope, c.rope_interleave);                            // eq. (3) k^R
    k_pe = mine(std::move(k_pe));
    edit(trace, "k_pe_rope", layer, start_pos, k_pe);
    if (cache->len != start_pos) fail("attention_mla: the cache holds ", cache->len, " positions, expected ", start_pos);
    cache->reserve(start_pos + n);
    k::cache_append(cache->rows->f(), cache->len, dev(c_kv), dc, dev(k_pe), dr, n, cache->bf16);
    cache->len += n;
    const int64_t t = cache->len;
    const float* KV = cache->rows->f();                                            // [t, dc + dr]
    const bool naive_was_auto = form == AttnForm::automatic;
    if (form == AttnForm::automatic) form = attn_form_for(c, n, start_pos);
    // automatic: the naive form expands every cached position for every head
    // ([t, H, dn + dv] floats); past 4 GiB, the absorbed form (equal algebra).
    if (form == AttnForm::naive && t * H * (dn + dv) > 4 * kChunkFloats && naive_was_auto) form = AttnForm::absorb;
    const float scale = float(c.softmax_scale(v.yarn_enabled(c.rope_scaling.original_max_position_embeddings)));
    const k::WeightRef W = weight_ref(w.kv_b_proj);
    auto o = buffer(n, H * dv);
    const float* qd = dev(q);
    // Query rows in chunks of S, so the scores [S, H, t] and the latent
    // buffers stay near kChunkFloats (1 GiB) however long the prompt.
    const int64_t S = std::max<int64_t>(1, std::min<int64_t>(n, kChunkFloats / (H * std::max(t, dc))));
    DevBuf p(std::size_t(S * H * t) * sizeof(float));
    if (form == AttnForm::absorb) {
      DevBuf q_lat(std::size_t(S * H * dc) * sizeof(float)), o_lat(std::size_t(S * H * dc) * sizeof(float));
      for (int64_t s0 = 0; s0 < n; s0 += S) {
        const int64_t m = std::min(S, n - s0);
        const float* qs = qd + s0 * H * dq;
        k::mla_q_lat(W, qs, m, H, dq, dn, dv, dc, q_lat.f());                      // W^UK_iᵀ q^C
        k::mla_scores(q_lat.f(), H * dc, dc, KV, dkv, 0, dc, qs + dn, H * dq, dq, KV + dc, dkv, dr, scale, m, H,
                      start_pos + s0, t, p.f());
        k::mla_weighted_sum(p.f(), m, H, start_pos + s0, t, KV, dkv, 0, dc, o_lat.f(), H * dc, dc);  // Σ_j p_j c_j
        k::mla_head_rows(W, o_lat.f(), H * dc, dc, m, H, dn, dv, dn, dv, dc, o->f() + s0 * H * dv, H * dv, dv);
      }
    } else {
      const int64_t kw = H * (dn + dv);
      DevBuf kvc(std::size_t(t * kw) * sizeof(float));                            // [t, H, dn + dv]
      k::mla_head_rows(W, KV, dkv, 0, t, H, dn, dv, 0, dn + dv, dc, kvc.f(), kw, dn + dv);  // eqs. (2), (5)
      for (int64_t s0 = 0; s0 < n; s0 += S) {
        const int64_t m = std::min(S, n - s0);
        const float* qs = qd + s0 * H * dq;
        k::mla_scores(qs, H * dq, dq, kvc.f(), kw, dn + dv, dn, qs + dn, H * dq, dq, KV + dc, dkv, dr, scale, m, H,
                      start_pos + s0, t, p.f());
        k::mla_weighted_sum(p.f(), m, H, start_pos + s0, t, kvc.f() + dn, kw, dn + dv, dv, o->f() + s0 * H * dv,
                            H * dv, dv);
      }
    }
    done("attention_mla");
    Act<float> oa = wrap(std::move(o), n, H * dv);
    edit(trace, "attn_out", layer, start_pos, oa);
    Act<float> u = mine(ops.linear(oa, w.o_proj, v));                              // eq. (11)
    edit(trace, "attn_o_proj", layer, start_pos, u);
    return u;
  }

  // DeepSeekMoE (reference/moe.hpp). The router's logits are a device linear;
  // the selection (sigmoid, bias for selection only, group scores, mask, top-k,
  // normalise, scale) is reference::select_experts itself, on the host, on the
  // downloaded [n, N_r] logits: the routing is the reference's exactly, and its
  // trace points with it. The experts run on the device over the rows routed to
  // each, and each token sums its terms in ascending expert id.
  Act<float> moe(const Backend<float>& ops, const Config& c, const MoEWeights& w, const Act<float>& x,
                 const Trace& trace, int64_t layer, int64_t start_pos, const Variants& v) const override {
    on();
    const int64_t n = x.rows(), d = x.cols(), K = reference::experts_per_token(c, v);
    Linear gate;
    gate.weight = w.gate.weight;
    Mat<float> logits = ops.linear(x, gate, Variants{}).to_host();  // downloaded once, wherever it ran
    round_bf16_if(v.router_precision == RouterPrecision::bf16, logits.begin(), logits.end());
    const std::vector<float> bias = reference::router_bias<float>(w.gate, c);
    std::vector<reference::TokenRoute<float>> routes;
    for (int64_t t = 0; t < n; ++t) routes.push_back(reference::select_experts(&logits(t, 0), bias.data(), c, K, v));
    const Routing r = reference::pack_routing(routes, logits, c, K, trace, layer, start_pos);
    // the rows each expert takes, experts in ascending id
    std::map<int32_t, std::vector<int32_t>> rows_of;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < K; ++j) rows_of[r.ids[std::size_t(t * K + j)]].push_back(int32_t(t));
    std::map<int32_t, Act<float>> out;
    for (const auto& [e, rows_e] : rows_of) {
      DevBuf idx(rows_e.size() * sizeof(int32_t));
      check(cudaMemcpy(idx.p, rows_e.data(), idx.bytes, cudaMemcpyHostToDevice), "upload rows");
      auto xe = buffer(int64_t(rows_e.size()), d);
      k::gather_f32_rows(dev(x), d, static_cast<const int32_t*>(idx.p), int64_t(rows_e.size()), xe->f());
      done("moe gather");
      out.emplace(e, mlp(ops, w.experts[std::size_t(e)], wrap(std::move(xe), int64_t(rows_e.size()), d), v));
    }
    // y[t] = Σ_j g_tj · FFN_{e_tj}(u_t): pointers to each term's row, in order
    std::vector<const float*> f(std::size_t(n * K));
    std::vector<float> g(std::size_t(n * K));
    std::map<int32_t, int64_t> next_row;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < K; ++j) {
        const int32_t e = r.ids[std::size_t(t * K + j)];
        f[std::size_t(t * K + j)] = dev(out.at(e)) + next_row[e]++ * d;
        g[std::size_t(t * K + j)] = float(r.weights[std::size_t(t * K + j)]);
      }
    DevBuf fd(f.size() * sizeof(float*)), gd(g.size() * sizeof(float));
    check(cudaMemcpy(fd.p, f.data(), fd.bytes, cudaMemcpyHostToDevice), "upload term rows");
    check(cudaMemcpy(gd.p, g.data(), gd.bytes, cudaMemcpyHostToDevice), "upload weights");
    auto y = buffer(n, d);
    k::moe_combine(static_cast<const float* const*>(fd.p), gd.f(), n, K, d, y->f());
    done("moe combine");
    Act<float> ya = wrap(std::move(y), n, d);
    edit(trace, "routed_out", layer, start_pos, ya);
    if (!w.shared_experts) return ya;
    Act<float> shared = mlp(ops, *w.shared_experts, x, v);
    edit(trace, "shared_out", layer, start_pos, shared);
    add(ya, shared, v);
    return ya;
  }

  // SwiGLU MLP: down(silu(gate(x)) ⊙ up(x)) (reference::mlp).
  Act<float> mlp(const Backend<float>& ops, const MLPWeights& w, const Act<float>& x, const Variants& v) const override {
    on();
    Act<float> g = mine(ops.linear(x, w.gate_proj, v));
    const Act<float> u = mine(ops.linear(x, w.up_proj, v));
    k::swiglu(dev_mut(g), dev(u), g.rows() * g.cols());
    done("swiglu");
    return mine(ops.linear(g, w.down_proj, v));
  }

  void add(Act<float>& h, const Act<float>& f, const Variants&) const override {
    on();
    if (h.rows() != f.rows() || h.cols() != f.cols()) fail("add: shapes differ");
    k::add(dev_mut(h), dev(f), h.rows() * h.cols());
    done("add");
  }
  Act<float> take_rows(const Act<float>& x, int64_t r0, int64_t r1) const override {
    on();
    auto y = buffer(r1 - r0, x.cols());
    check(cudaMemcpy(y->p, dev(x) + r0 * x.cols(), y->bytes, cudaMemcpyDeviceToDevice), "take_rows");
    return wrap(std::move(y), r1 - r0, x.cols());
  }
  Act<float> concat_cols(const Act<float>& a, const Act<float>& b) const override {
    on();
    auto y = buffer(a.rows(), a.cols() + b.cols());
    k::concat_cols(dev(a), a.cols(), dev(b), b.cols(), a.rows(), y->f());
    done("concat_cols");
    return wrap(std::move(y), a.rows(), a.cols() + b.cols());
  }
  void zero_rows(Act<float>& x, int64_t r0, int64_t r1) const override {
    on();
    check(cudaMemset(dev_mut(x) + r0 * x.cols(), 0, std::size_t((r1 - r0) * x.cols()) * sizeof(float)), "zero_rows");
  }

 private:
  k::WeightRef weight_ref(const Linear& w) const {
    k::WeightRef r;
    r.w = resident(w.weight);
    r.we = elem_of(w.weight.dtype, w.name());
    r.K = w.in();
    if (const auto* f = w.fp8()) {
      r.scale = resident(f->scale_inv);
      r.se = elem_of(f->scale_inv.dtype, f->scale_inv.name);
      r.br = f->block_rows, r.bc = f->block_cols, r.sc_cols = f->scale_inv.shape[1];
    }
    return r;
  }
  // An activation here, wherever `ops` left it.
  Act<float> mine(Act<float>&& a) const {
    if (a.owner() == this) return std::move(a);
    return upload(std::move(a).to_host());
  }
  // Columns [c0, c0 + width) of every row.
  Act<float> take_cols(const Act<float>& x, int64_t c0, int64_t width) const {
    auto y = buffer(x.rows(), width);
    check(cudaMemcpy2D(y->p, std::size_t(width) * sizeof(float), dev(x) + c0, std::size_t(x.cols()) * sizeof(float),
                       std::size_t(width) * sizeof(float), std::size_t(x.rows()), cudaMemcpyDeviceToDevice),
          "take_cols");
    return wrap(std::move(y), x.rows(), width);
  }
  // Trace points: the host sees (and an editor may change) the device value.
  void edit(const Trace& trace, const char* what, int64_t layer, int64_t start, Act<float>& a) const {
    if (!trace.enabled()) return;
    Mat<float> h = download(a);
    trace.edit(what, layer, start, a.rows(), a.cols(), h.data());
    if (trace.editor()) a = upload(h);
  }
  void emit_heads(const Trace& trace, const char* what, int64_t layer, int64_t start, const Act<float>& a, int64_t H,
                  int64_t stride, int64_t col0, int64_t width) const {
    if (!trace.enabled()) return;
    const Mat<float> h = download(a);
    trace.emit_heads(what, layer, start, a.rows(), H, stride, col0, width, h.data());
  }

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
    on();
    auto it = weights_.find(key);
    if (it != weights_.end()) return it->second->p;
    auto b = std::make_shared<DevBuf>(t.nbytes());
    check(cudaMemcpy(b->p, t.data, t.nbytes(), cudaMemcpyHostToDevice), "upload weight");
    return weights_.emplace(key, std::move(b)).first->second->p;
  }
  void on() const { check(cudaSetDevice(device_), "cudaSetDevice"); }  // the current device is per host thread
  // A launch error at once; an error while running surfaces at the next
  // synchronising call (every download), or here with DSV3_CUDA_SYNC=1.
  void done(const char* op) const {
    if (const char* e = sync_each_op_ ? k::sync() : k::launched()) fail("cuda: ", op, ": ", e);
  }
  static constexpr int64_t kChunkFloats = int64_t(1) << 28;

  CpuBackend<float> cpu_;  // formats the kernels do not read
  int device_;
  bool sync_each_op_ = std::getenv("DSV3_CUDA_SYNC") != nullptr;
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
