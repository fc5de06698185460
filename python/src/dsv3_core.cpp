// dsv3._core — the extension module behind `import dsv3` (python/dsv3/).
//
// A thin layer over the headers: numpy in, numpy out. Arrays returned to
// Python are the C++ results themselves (the xtensor the forward pass
// returned, moved to the heap), owned by a capsule that frees them when the
// last numpy view goes away: no copy of the [n, V] logits. The GIL is
// released while the model runs; one mutex per model serialises calls (the
// CPU backend reuses scratch buffers). dsv3::Error becomes dsv3.Error (a
// RuntimeError) carrying dsv3's message. The Python wrapper (dsv3/__init__.py)
// converts arguments (ids, dicts as JSON text) and documents the API.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>
#include <omp.h>

#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <dsv3/cpu/openblas.hpp>
#include <dsv3/dispatch.hpp>
#include <dsv3/model.hpp>
#include <dsv3/text/chat_template.hpp>
#include <dsv3/text/tokenizer.hpp>
#include <dsv3/tools/compare.hpp>
#include <dsv3/tools/glob.hpp>
#include <dsv3/tools/make_model.hpp>
#include <dsv3/tools/sampler.hpp>
#include <dsv3/tools/trace_file.hpp>

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using dsv3::Mat;
using F32 = nb::ndarray<nb::numpy, float, nb::ndim<2>, nb::c_contig>;
using I32 = nb::ndarray<nb::numpy, int32_t, nb::ndim<2>, nb::c_contig>;
using F64 = nb::ndarray<nb::numpy, double, nb::ndim<2>, nb::c_contig>;
using IdsIn = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using F32In = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using F64In = nb::ndarray<const double, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

// Address of the last logits buffer handed to Python (tests check that the
// array Python holds is this buffer: zero-copy).
const void* g_last_logits = nullptr;

// Hands a heap object's buffer to numpy; the capsule deletes the object.
template <class Owner, class V, class Array>
Array adopt(Owner* heap, V* data, std::size_t r, std::size_t c) {
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<Owner*>(p); });
  const std::size_t shape[2] = {r, c};
  return Array(data, 2, shape, owner);
}

F32 to_numpy(Mat<float>&& m) {
  auto* heap = new Mat<float>(std::move(m));
  g_last_logits = heap->data();
  return adopt<Mat<float>, float, F32>(heap, heap->data(), heap->shape()[0], heap->shape()[1]);
}

F32 floats_to_numpy(const std::vector<double>& d, int64_t r, int64_t c) {
  auto* heap = new std::vector<float>(d.begin(), d.end());
  return adopt<std::vector<float>, float, F32>(heap, heap->data(), std::size_t(r), std::size_t(c));
}

I32 ints_to_numpy(const std::vector<double>& d, int64_t r, int64_t c) {
  auto* heap = new std::vector<int32_t>(d.size());
  for (std::size_t i = 0; i < d.size(); ++i) (*heap)[i] = int32_t(d[i]);
  return adopt<std::vector<int32_t>, int32_t, I32>(heap, heap->data(), std::size_t(r), std::size_t(c));
}

std::vector<int32_t> ids_of(const IdsIn& a) { return std::vector<int32_t>(a.data(), a.data() + a.shape(0)); }

nlohmann::json parse_json(const std::string& text, const char* what) { return dsv3::parse_json(text, what); }

// A trace record for Python: (key, name, layer, start, array).
using PyEntry = std::tuple<std::string, std::string, int64_t, int64_t, nb::object>;

nb::object entry_array(const std::string& name, const std::vector<double>& d, int64_t r, int64_t c) {
  if (dsv3::is_index_trace(name)) return nb::cast(ints_to_numpy(d, r, c));
  return nb::cast(floats_to_numpy(d, r, c));
}

// ---------------------------------------------------------------------------
struct PyModel;

struct PyCache {
  const PyModel* owner;
  dsv3::KVCache<float> c;
  PyCache(const PyModel* o, dsv3::KVCache<float>&& k) : owner(o), c(std::move(k)) {}
  PyCache(const PyCache&) = delete;  // a latent cache is moved, never copied
  PyCache(PyCache&&) = default;
};

struct PyModel {
  std::unique_ptr<dsv3::Model<float>> m;
  int threads = 0;  // 0: OpenMP's default
  bool record_routing = true;
  mutable std::mutex mu;
  // routing of the last forward call: per MoE layer, topk_ids and topk_weights
  dsv3::TraceCollector last_routing;

  PyModel(const std::string& dir, const std::string& variants_json, int threads_, const std::string& backend,
          bool record_routing_)
      : threads(threads_), record_routing(record_routing_) {
    const dsv3::Variants v = dsv3::Variants::from_json(parse_json(variants_json, "variants"), "variants");
    m = std::make_unique<dsv3::Model<float>>(dir, v);
    m->set_backend(dsv3::backend_named<float>(backend));
  }

  void set_threads() const {
    if (threads > 0) omp_set_num_threads(threads);  // the calling thread's setting: set before every call
  }

  void check(const PyCache& c) const {
    if (c.owner != this) dsv3::fail("cache: this cache belongs to another Model (make it with this model's new_cache())");
  }

  // The Trace every forward call runs with: routing only, or off.
  dsv3::Trace routing_trace() {
    last_routing = dsv3::TraceCollector();
    if (!record_routing) return dsv3::Trace();
    return dsv3::Trace(last_routing.sink(), [](const std::string& n) { return n == "topk_ids" || n == "topk_weights"; });
  }

  nb::tuple forward(const IdsIn& ids_in, PyCache* cache, bool all_logits, bool return_hidden) {
    std::vector<int32_t> ids = ids_of(ids_in);
    Mat<float> logits, hidden;
    {
      nb::gil_scoped_release nogil;
      std::lock_guard<std::mutex> lock(mu);
      set_threads();
      dsv3::KVCache<float> scratch;
      if (cache) check(*cache);
      else scratch = m->new_cache();
      dsv3::ForwardOptions opt;
      opt.all_logits = all_logits;
      if (return_hidden) opt.hidden = &hidden;
      logits = m->forward(ids, cache ? cache->c : scratch, opt, routing_trace());
    }
    if (return_hidden) return nb::make_tuple(to_numpy(std::move(logits)), to_numpy(std::move(hidden)));
    return nb::make_tuple(to_numpy(std::move(logits)));
  }

  F32 mtp_forward(const F32In& h, const IdsIn& next_ids, PyCache* cache, bool zero_pos0) {
    Mat<float> hm = dsv3::empty<float>(int64_t(h.shape(0)), int64_t(h.shape(1)));
    std::memcpy(hm.data(), h.data(), h.size() * sizeof(float));
    std::vector<int32_t> ids = ids_of(next_ids);
    Mat<float> out;
    {
      nb::gil_scoped_release nogil;
      std::lock_guard<std::mutex> lock(mu);
      set_threads();
      if (hm.shape()[1] != std::size_t(m->config().hidden_size))
        dsv3::fail("mtp_forward: hidden has ", hm.shape()[1], " columns, expected hidden_size = ",
                   m->config().hidden_size);
      dsv3::KVCache<float> scratch;
      if (cache) check(*cache);
      else scratch = m->new_mtp_cache();
      dsv3::MTPOptions o;
      o.zero_pos0 = zero_pos0;
      out = m->mtp_forward(hm, ids, cache ? cache->c : scratch, o);
    }
    return to_numpy(std::move(out));
  }

  std::vector<int32_t> generate(const IdsIn& ids_in, int64_t max_new_tokens, double temperature, double top_p,
                                int64_t top_k, uint64_t seed, bool bf16_cache) {
    std::vector<int32_t> ids = ids_of(ids_in), gen;
    nb::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(mu);
    set_threads();
    if (max_new_tokens < 0) dsv3::fail("generate: max_new_tokens = ", max_new_tokens, " must be >= 0");
    dsv3::Sampler sampler({temperature, top_p, top_k, seed});
    dsv3::ForwardOptions opt;
    opt.all_logits = false;
    auto cache = m->new_cache(bf16_cache);
    const int64_t V = m->config().vocab_size;
    if (max_new_tokens == 0) return gen;
    Mat<float> logits = m->forward(ids, cache, opt);
    for (int64_t step = 0; step < max_new_tokens; ++step) {  // as `dsv3 generate`
      const int32_t next = sampler.sample(logits.data(), V);
      gen.push_back(next);
      if (next == m->config().eos_token_id) break;
      if (step + 1 < max_new_tokens) logits = m->forward({next}, cache, opt);
    }
    return gen;
  }

  std::vector<PyEntry> trace(const IdsIn& ids_in, const std::vector<std::string>& names, const std::string& mode,
                             int64_t prefill_len, int64_t chunk) {
    std::vector<int32_t> ids = ids_of(ids_in);
    dsv3::TraceCollector col;
    {
      nb::gil_scoped_release nogil;
      std::lock_guard<std::mutex> lock(mu);
      set_threads();
      dsv3::Schedule s = dsv3::Schedule::prefill;
      if (mode == "decode") s = dsv3::Schedule::decode;
      else if (mode != "prefill") dsv3::fail("trace: mode '", mode, "' is not prefill or decode");
      dsv3::Trace t(col.sink(), [&](const std::string& n) { return dsv3::matches_any(names, n); });
      auto cache = m->new_cache();
      dsv3::run_schedule(*m, ids, s, s == dsv3::Schedule::prefill ? int64_t(ids.size()) : prefill_len, chunk,
                         dsv3::ForwardOptions(), cache, t, [](const Mat<float>&, int64_t) {});
    }
    return entries(col);
  }

  static std::vector<PyEntry> entries(const dsv3::TraceCollector& col) { return entries(col.entries()); }
  static std::vector<PyEntry> entries(const std::vector<dsv3::TraceRecord>& records) {
    std::vector<PyEntry> out;
    for (const dsv3::TraceRecord& r : records)
      out.emplace_back(dsv3::trace_key(r.name, r.layer), r.name, r.layer, r.start_pos,
                       entry_array(r.name, r.data, r.shape[0], r.shape[1]));
    return out;
  }
};

// ---------------------------------------------------------------------------
// Traces: files, Python entries, comparison.
dsv3::TraceEntry to_entry(const PyEntry& e) {
  dsv3::TraceEntry t;
  t.key = std::get<0>(e);
  t.name = std::get<1>(e);
  t.layer = std::get<2>(e);
  t.start = std::get<3>(e);
  const F64In a = nb::cast<F64In>(std::get<4>(e));
  t.rows = int64_t(a.shape(0));
  t.cols = int64_t(a.shape(1));
  t.data.assign(a.data(), a.data() + a.size());
  return t;
}

std::vector<dsv3::TraceEntry> to_entries(const std::vector<PyEntry>& v) {
  std::vector<dsv3::TraceEntry> out;
  for (const auto& e : v) out.push_back(to_entry(e));
  return out;
}

std::vector<PyEntry> read_trace(const std::string& path) {
  std::vector<dsv3::TraceEntry> es;
  {
    nb::gil_scoped_release nogil;
    es = dsv3::read_trace(path);
  }
  std::vector<PyEntry> out;
  for (const auto& e : es)
    out.emplace_back(e.key, e.name, e.layer, e.start, entry_array(e.name, e.data, e.rows, e.cols));
  return out;
}

// The trace file's __metadata__ (engine, ids, versions...) as JSON text.
std::string trace_metadata(const std::string& path) {
  nb::gil_scoped_release nogil;
  dsv3::SafetensorsFile f(path);
  return f.metadata().is_object() ? f.metadata().dump() : std::string("{}");
}

void write_trace(const std::string& path, const std::vector<PyEntry>& v, const std::string& meta_json) {
  dsv3::TraceCollector col;
  auto sink = col.sink();
  for (const auto& e : v) {
    dsv3::TraceEntry t = to_entry(e);
    if (dsv3::trace_key(t.name, t.layer) != t.key)
      dsv3::fail("write_trace: key '", t.key, "' does not match name '", t.name, "' and layer ", t.layer,
                 " (expected '", dsv3::trace_key(t.name, t.layer), "')");
    dsv3::TraceRecord r;
    r.name = t.name;
    r.layer = t.layer;
    r.start_pos = t.start;
    r.shape = {t.rows, t.cols};
    r.data = std::move(t.data);
    sink(std::move(r));
  }
  const nlohmann::json meta = parse_json(meta_json, "write_trace: metadata");
  nb::gil_scoped_release nogil;
  col.write(path, meta);
}

std::string compare(const std::vector<PyEntry>& a, const std::vector<PyEntry>& b, const std::string& tol,
                    const std::string& label_a, const std::string& label_b) {
  const std::vector<dsv3::TraceEntry> A = to_entries(a), B = to_entries(b);
  nb::gil_scoped_release nogil;
  const dsv3::CompareResult res = dsv3::compare_traces(A, B, dsv3::tolerance_preset(tol));
  return dsv3::compare_json(res, label_a, label_b).dump();
}

// ---------------------------------------------------------------------------
uint64_t make_model(const std::string& out, const std::string& preset, const std::string& dtype, uint64_t seed,
                    int64_t layers, double bias_mean, int64_t group_size, bool mtp, double shard_gb,
                    const std::string& overrides_json) {
  dsv3::ModelSpec spec;
  spec.config = dsv3::preset_config(preset);
  if (layers > 0) spec.config["num_hidden_layers"] = layers;
  const nlohmann::json ov = parse_json(overrides_json, "make_model: config");
  if (!ov.is_object()) dsv3::fail("make_model: config overrides must be a dict");
  spec.config.update(ov);
  spec.dtype = dtype;
  spec.seed = seed;
  spec.bias_mean = bias_mean;
  spec.group_size = group_size;
  spec.mtp = mtp;
  if (!(shard_gb > 0) || shard_gb > 1e6) dsv3::fail("make_model: shard_gb = ", shard_gb, " must be in (0, 1e6]");
  spec.shard_bytes = uint64_t(shard_gb * double(uint64_t(1) << 30));
  nb::gil_scoped_release nogil;
  return dsv3::make_model(out, spec);
}

}  // namespace

NB_MODULE(_core, mod) {
  mod.doc() = "dsv3's C++ core (use the wrappers in the dsv3 package)";
  nb::exception<dsv3::Error>(mod, "Error", PyExc_RuntimeError);

  mod.def("openblas_preferred_core", [] {
    const char* c = dsv3::openblas_preferred_core();
    return std::string(c ? c : "");
  }, "The OPENBLAS_CORETYPE dsv3 would set in this process's environment ('' for none).");
  mod.def("_last_logits_address", [] { return reinterpret_cast<uintptr_t>(g_last_logits); });

  nb::class_<PyCache>(mod, "Cache", "A sequence's latent cache (make it with Model.new_cache()).")
      .def_prop_ro("length", [](const PyCache& c) { return c.c.length; }, "Positions [0, length) are cached.")
      .def_prop_ro("nbytes", [](const PyCache& c) { return c.c.bytes(); }, "Bytes the cache holds.")
      .def("truncate", [](PyCache& c, int64_t len) { c.c.truncate(len); }, "length"_a,
           "Forgets positions [length, self.length) (a rejected draft).");

  nb::class_<PyModel>(mod, "Model")
      .def(nb::init<const std::string&, const std::string&, int, const std::string&, bool>(), "path"_a,
           "variants_json"_a, "threads"_a, "backend"_a, "record_routing"_a)
      .def_prop_ro("config_json", [](const PyModel& p) { return p.m->config().raw.dump(); })
      .def_prop_ro("variants_json", [](const PyModel& p) { return p.m->variants().to_json().dump(); })
      .def_prop_ro("vocab_size", [](const PyModel& p) { return p.m->config().vocab_size; })
      .def_prop_ro("hidden_size", [](const PyModel& p) { return p.m->config().hidden_size; })
      .def_prop_ro("has_mtp", [](const PyModel& p) { return p.m->has_mtp(); })
      .def_prop_ro("checkpoint_bytes", [](const PyModel& p) { return p.m->checkpoint().bytes(); })
      .def("prefault", [](PyModel& p) {
        nb::gil_scoped_release nogil;
        p.m->checkpoint().prefault();
      })
      .def("new_cache", [](const PyModel& p, bool bf16) { return PyCache{&p, p.m->new_cache(bf16)}; }, "bf16"_a = false,
           nb::keep_alive<0, 1>())
      .def("new_mtp_cache", [](const PyModel& p) { return PyCache{&p, p.m->new_mtp_cache()}; }, nb::keep_alive<0, 1>())
      .def("forward", &PyModel::forward, "ids"_a, "cache"_a.none(), "all_logits"_a, "return_hidden"_a)
      .def("mtp_forward", &PyModel::mtp_forward, "hidden"_a, "next_ids"_a, "cache"_a.none(), "zero_pos0"_a)
      .def("generate", &PyModel::generate, "ids"_a, "max_new_tokens"_a, "temperature"_a, "top_p"_a, "top_k"_a,
           "seed"_a, "bf16_cache"_a)
      .def("trace", &PyModel::trace, "ids"_a, "names"_a, "mode"_a, "prefill_len"_a, "chunk"_a)
      .def("last_routing", [](const PyModel& p) {
        // a copy under the model's lock: a forward call in another thread rewrites it
        std::vector<dsv3::TraceRecord> records;
        {
          nb::gil_scoped_release nogil;
          std::lock_guard<std::mutex> lock(p.mu);
          records = p.last_routing.entries();
        }
        return PyModel::entries(records);
      });

  nb::class_<dsv3::Tokenizer>(mod, "Tokenizer")
      .def("__init__", [](dsv3::Tokenizer* t, const std::string& dir) { new (t) dsv3::Tokenizer(dsv3::Tokenizer::from_dir(dir)); },
           "path"_a)
      .def("encode", [](const dsv3::Tokenizer& t, const std::string& text, bool add_bos) {
        nb::gil_scoped_release nogil;
        return t.encode(text, add_bos);
      }, "text"_a, "add_bos"_a)
      .def("decode", [](const dsv3::Tokenizer& t, const std::vector<int32_t>& ids, bool skip) {
        return t.decode(ids, skip);  // valid UTF-8: invalid byte runs become U+FFFD, as HF's decoder does
      }, "ids"_a, "skip_special_tokens"_a)
      .def("render_chat", [](const dsv3::Tokenizer& t, const std::string& messages_json, bool add_gen,
                             const std::optional<std::string>& tmpl) {
        const nlohmann::json msgs = parse_json(messages_json, "render_chat: messages");
        const nlohmann::json extra = {{"bos_token", t.bos_token()}, {"eos_token", t.eos_token()}};
        return dsv3::render_chat(tmpl ? *tmpl : t.chat_template(), msgs, add_gen, extra);
      }, "messages_json"_a, "add_generation_prompt"_a, "template"_a.none())
      .def("token_to_id", [](const dsv3::Tokenizer& t, const std::string& s) { return t.token_to_id(s); }, "token"_a)
      .def("id_to_token", &dsv3::Tokenizer::id_to_token, "id"_a)
      .def_prop_ro("vocab_size", &dsv3::Tokenizer::vocab_size)
      .def_prop_ro("bos_id", &dsv3::Tokenizer::bos_id)
      .def_prop_ro("eos_id", &dsv3::Tokenizer::eos_id)
      .def_prop_ro("add_bos_default", &dsv3::Tokenizer::add_bos_default)
      .def_prop_ro("bos_token", &dsv3::Tokenizer::bos_token)
      .def_prop_ro("eos_token", &dsv3::Tokenizer::eos_token)
      .def_prop_ro("chat_template", &dsv3::Tokenizer::chat_template);

  mod.def("read_trace", &read_trace, "path"_a);
  mod.def("trace_metadata", &trace_metadata, "path"_a);
  mod.def("write_trace", &write_trace, "path"_a, "entries"_a, "meta_json"_a);
  mod.def("compare", &compare, "a"_a, "b"_a, "tol"_a, "label_a"_a, "label_b"_a);
  mod.def("make_model", &make_model, "out"_a, "preset"_a, "dtype"_a, "seed"_a, "layers"_a, "bias_mean"_a,
          "group_size"_a, "mtp"_a, "shard_gb"_a, "config_json"_a);
}
