// What a researcher does first with dsv3's headers, in three parts:
//   1. read any intermediate tensor of a forward pass (the trace hook);
//   2. intervene in one — force a token's experts, zero an attention head,
//      patch an activation — through the edit hook, without touching the model;
//   3. plug in an op of your own behind the backend seam and hold it against
//      the reference with the same checks tests/test_backend_ops.cpp runs.
// Each part prints what it did and checks what must hold (exit code 1 if not).
// The tests build this file against an installed dsv3 and run it on a tiny model.
//
//   research MODEL_DIR        (e.g. a model from `dsv3 make-model --preset tiny`)
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <dsv3/model.hpp>
#include <dsv3/tools/backend_check.hpp>

using namespace dsv3;

namespace {

int passes = 0, failures = 0;
void expect(bool ok, const char* what) {
  std::printf("  %s %s\n", ok ? "ok:  " : "FAIL:", what);
  (ok ? passes : failures)++;
}

// max |a − b| over row i
double row_diff(const Mat<float>& a, const Mat<float>& b, int64_t i) {
  double m = 0;
  for (int64_t v = 0; v < cols(a); ++v) m = std::max(m, std::fabs(double(a(i, v)) - double(b(i, v))));
  return m;
}

// A "new kernel" for one op: y = x·Wᵀ for F32 weights with four running sums
// per output (stand-in for your SIMD or GPU code). It declines every other op
// and format, so Dispatch runs those on the CPU backend.
struct MyLinear : CpuBackend<float> {
  std::string name() const override { return "my-linear"; }
  bool supports(const OpQuery& q) const override { return q.op == Op::linear && q.dtype() == DType::F32; }
  Act<float> linear(const Act<float>& xa, const Linear& w, const Variants& v) const override {
    if (w.weight.dtype != DType::F32 || !w.is_dense()) return CpuBackend<float>::linear(xa, w, v);
    const Mat<float>& x = xa.host();
    const int64_t n = rows(x), K = w.in(), O = w.out();
    const float* W = reinterpret_cast<const float*>(w.weight.data);
    Mat<float> y = empty<float>(n, O);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t o = 0; o < O; ++o) {
        float acc[4] = {0, 0, 0, 0};
        for (int64_t k = 0; k < K; ++k) acc[k % 4] += x(i, k) * W[o * K + k];
        y(i, o) = (acc[0] + acc[1]) + (acc[2] + acc[3]);
      }
    return y;
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]);
    return 2;
  }
  try {
    Model<float> m(argv[1]);
    const Config& c = m.config();
    const std::vector<int32_t> ids = {0, 17, 42, 99, 3, 7};
    const int64_t moe_layer = c.first_k_dense_replace;  // the first MoE layer

    // -- 1. read: the routing of the first MoE layer and the attention output
    std::printf("1. reading intermediate tensors (Trace sink)\n");
    std::map<std::string, TraceRecord> seen;  // "name@layer" -> tensor
    Trace read([&](TraceRecord&& r) { seen[r.name + "@" + std::to_string(r.layer)] = std::move(r); },
               [](const std::string& name) { return name == "topk_ids" || name == "attn_out"; });
    auto cache = m.new_cache();
    const Mat<float> base = m.forward(ids, cache, {}, read);
    const TraceRecord& topk = seen.at("topk_ids@" + std::to_string(moe_layer));
    const int64_t K = topk.shape[1];
    std::printf("  layer %lld, token 2 routed to experts", (long long)moe_layer);
    for (int64_t j = 0; j < K; ++j) std::printf(" %d", int(topk.data[std::size_t(2 * K + j)]));
    std::printf("\n");
    expect(topk.shape[0] == int64_t(ids.size()), "one row of expert ids per token");

    // -- 2a. force token 2's experts at that layer to 0..K-1
    std::printf("2. intervening (Trace editor)\n");
    Trace force(nullptr, nullptr, [&](TraceRecord& r) {
      if (r.name != "topk_ids" || r.layer != moe_layer) return;
      for (int64_t j = 0; j < K; ++j) r.data[std::size_t(2 * K + j)] = double(j);
    });
    auto c2 = m.new_cache();
    const Mat<float> forced = m.forward(ids, c2, {}, force);
    std::printf("  forced experts: |Δlogits| at positions 0..5 = %.2g %.2g %.2g %.2g %.2g %.2g\n", row_diff(forced, base, 0),
                row_diff(forced, base, 1), row_diff(forced, base, 2), row_diff(forced, base, 3),
                row_diff(forced, base, 4), row_diff(forced, base, 5));
    // Earlier positions keep their values up to f32 rounding: the CPU backend runs
    // each expert once over the rows that chose it, and the edit changed those
    // batches (the reference backend, one token at a time, leaves them bit-identical).
    expect(row_diff(forced, base, 0) < 1e-5 && row_diff(forced, base, 1) < 1e-5,
           "positions before token 2 are unchanged, up to f32 rounding (causal)");
    expect(row_diff(forced, base, 2) > 0, "token 2's logits change with its experts");

    // -- 2b. zero attention head 1 of layer 0 (columns [d_v, 2·d_v) of attn_out, before o_proj)
    const int64_t d_v = c.v_head_dim;
    Trace zero_head(nullptr, nullptr, [&](TraceRecord& r) {
      if (r.name != "attn_out" || r.layer != 0) return;
      for (int64_t i = 0; i < r.shape[0]; ++i)
        for (int64_t e = d_v; e < 2 * d_v; ++e) r.data[std::size_t(i * r.shape[1] + e)] = 0.0;
    });
    auto c3 = m.new_cache();
    const Mat<float> no_head = m.forward(ids, c3, {}, zero_head);
    std::printf("  head 1 of layer 0 zeroed: |Δlogits| at the last position = %.3g\n", row_diff(no_head, base, 5));
    expect(row_diff(no_head, base, 5) > 0, "zeroing a head changes the output");

    // -- 2c. patch: add a steering vector to the residual stream after layer 0, last token only
    Trace steer(nullptr, nullptr, [&](TraceRecord& r) {
      if (r.name != "resid_ffn" || r.layer != 0) return;
      const int64_t last = r.shape[0] - 1, d = r.shape[1];
      for (int64_t e = 0; e < d; ++e) r.data[std::size_t(last * d + e)] += 0.5 * std::sin(double(e));
    });
    auto c4 = m.new_cache();
    const Mat<float> steered = m.forward(ids, c4, {}, steer);
    std::printf("  steered: |Δlogits| last = %.3g, first = %.3g\n", row_diff(steered, base, 5), row_diff(steered, base, 0));
    expect(row_diff(steered, base, 5) > 0 && row_diff(steered, base, 0) == 0, "only the patched position moves");

    // -- 3. an op of your own behind the seam, checked against the reference
    std::printf("3. a new linear kernel behind the seam\n");
    MyLinear mine;
    check::Tally tally{"my-linear"};
    check::BackendCheck<float> chk{mine, {}, tally, {}};
    chk.run(m.weights().lm_head.format(), m, /*quick=*/true);
    std::printf("  %s\n", tally.report().substr(0, tally.report().find('\n')).c_str());
    expect(tally.failed == 0 && tally.passed > 0, "every case it supports is within the reference's tolerance");
    m.set_backend(std::make_shared<MyLinear>());  // its linears, the CPU backend for the rest
    auto c5 = m.new_cache();
    const Mat<float> with_mine = m.forward(ids, c5);
    double worst = 0;
    for (int64_t i = 0; i < rows(base); ++i) worst = std::max(worst, row_diff(with_mine, base, i));
    std::printf("  whole forward pass through Dispatch(%s): max |Δlogits| = %.3g\n", m.backend().name().c_str(), worst);
    expect(worst < 1e-4, "the model's logits agree with the default backend to f32 rounding");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "research: %s\n", e.what());
    return 1;
  }
  std::printf("%d passed, %d failed\n", passes, failures);
  return failures ? 1 : 0;
}
