// Hostile inputs: non-finite weights, malformed .npy files, unreadable and
// empty files, absurd config values, hostile chat-template arithmetic. Every
// rejection must be a clean exception whose message names the culprit.
// (Malformed safetensors headers are in test_formats.cpp; the fuzz targets in
// tests/fuzz/ cover the rest of the input space.)
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <new>
#include <sstream>
#include <string>
#include <vector>

#include <dsv3/text/chat_template.hpp>
#include <dsv3/tools/check.hpp>
#include <dsv3/config.hpp>
#include <dsv3/cpu/parallel.hpp>
#include <dsv3/formats/file.hpp>
#include <dsv3/formats/json.hpp>
#include <dsv3/formats/io.hpp>
#include <dsv3/formats/npy.hpp>
#include <dsv3/formats/safetensors.hpp>
#include <dsv3/text/tokenizer.hpp>

#include "test_util.hpp"

using namespace dsv3;

namespace {

// Runs f, which must throw a std::exception whose message holds every needle.
void expect_throw(const std::function<void()>& f, const std::vector<std::string>& needles) {
  try {
    f();
    FAIL("accepted, expected an error containing '", needles.front(), "'");
  } catch (const std::exception& e) {
    const std::string m = e.what();
    for (const auto& n : needles) CHECK_MESSAGE(m.find(n) != std::string::npos, "'", n, "' not in: ", m);
  }
}

std::string npy_bytes(const std::string& descr, const std::string& shape, const std::string& data,
                      int major = 1, const std::string& fortran = "False") {
  std::string h = "{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': " + shape + ", }";
  const std::size_t pre = major == 1 ? 10 : 12;
  while ((pre + h.size() + 1) % 64 != 0) h += ' ';
  h += '\n';
  std::string out = "\x93NUMPY";
  out += char(major);
  out += '\0';
  for (std::size_t i = 0; i < pre - 8; ++i) out += char((h.size() >> (8 * i)) & 0xff);
  return out + h + data;
}

template <class T>
std::string raw(std::initializer_list<T> v) {
  std::string s(v.size() * sizeof(T), '\0');
  std::memcpy(s.data(), std::data(v), s.size());
  return s;
}

// chmod 000 blocks reads only for non-root users; CI runs as root.
bool running_as_root() { return ::geteuid() == 0; }

}  // namespace

TEST_CASE("check_weights: NaN/Inf found per tensor with name, file, count and first index") {
  test::TempDir tmp;
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  std::vector<TensorToWrite> s1 = {
      {"clean.f32", DType::F32, {2, 2}, [](uint8_t* o) { float v[4] = {1, -2, 3e38f, 1e-45f}; std::memcpy(o, v, 16); }},
      {"bad.f32", DType::F32, {2, 4}, [&](uint8_t* o) {
         float v[8] = {0, 1, 2, nan, 4, -inf, 6, nan};
         std::memcpy(o, v, 32);
       }},
      {"bad.bf16", DType::BF16, {3}, [](uint8_t* o) { uint16_t h[3] = {0x3f80, 0xff80, 0x7fc0}; std::memcpy(o, h, 6); }},
      // 0x7f800000 as an int is not a float: integers are skipped
      {"ints.i32", DType::I32, {2}, [](uint8_t* o) { uint32_t u[2] = {0x7f800000u, 0xffffffffu}; std::memcpy(o, u, 8); }},
  };
  std::vector<TensorToWrite> s2 = {
      // e4m3fn: 0x7e = 448 and 0xfe = -448 are finite; 0x7f / 0xff are NaN
      {"w.fp8", DType::F8_E4M3, {2, 3}, [](uint8_t* o) { uint8_t b[6] = {0x7e, 0xfe, 0x00, 0x80, 0xff, 0x7f}; std::memcpy(o, b, 6); }},
      {"ok.fp8", DType::F8_E4M3, {2}, [](uint8_t* o) { o[0] = 0x7e; o[1] = 0xfe; }},
      {"bad.f16", DType::F16, {2}, [](uint8_t* o) { uint16_t h[2] = {0x7bff, 0x7c00}; std::memcpy(o, h, 4); }},
      {"bad.f64", DType::F64, {1}, [](uint8_t* o) { double d = -std::numeric_limits<double>::infinity(); std::memcpy(o, &d, 8); }},
  };
  write_safetensors(tmp.path + "/a.safetensors", s1);
  write_safetensors(tmp.path + "/b.safetensors", s2);
  nlohmann::json wm;
  for (const auto& t : s1) wm[t.name] = "a.safetensors";
  for (const auto& t : s2) wm[t.name] = "b.safetensors";
  test::write_file(tmp.path + "/model.safetensors.index.json", nlohmann::json{{"weight_map", wm}}.dump());
  Checkpoint ck(tmp.path);
  const auto bad = check_weights(ck);
  REQUIRE(bad.size() == 5);  // name order
  CHECK(bad[0].name == "bad.bf16");
  CHECK(bad[0].count == 2);
  CHECK(bad[0].inf == 1);
  CHECK(bad[0].nan == 1);
  CHECK(bad[0].first_index == 1);
  CHECK(bad[0].file == tmp.path + "/a.safetensors");
  CHECK(bad[1].name == "bad.f16");
  CHECK(bad[1].count == 1);
  CHECK(bad[1].first_index == 1);
  CHECK(bad[2].name == "bad.f32");
  CHECK(bad[2].count == 3);
  CHECK(bad[2].nan == 2);
  CHECK(bad[2].inf == 1);
  CHECK(bad[2].first_index == 3);
  CHECK(bad[3].name == "bad.f64");
  CHECK(bad[3].count == 1);
  CHECK(bad[3].first_index == 0);
  CHECK(bad[4].name == "w.fp8");
  CHECK(bad[4].count == 2);
  CHECK(bad[4].nan == 2);
  CHECK(bad[4].first_index == 4);
  CHECK(bad[4].file == tmp.path + "/b.safetensors");
  const std::string line = describe(bad[2]);
  CHECK_MESSAGE(line.find("tensor 'bad.f32'") != std::string::npos, line);
  CHECK_MESSAGE(line.find("a.safetensors") != std::string::npos, line);
  CHECK_MESSAGE(line.find("3 non-finite values (2 NaN, 1 Inf), first at flat index 3") != std::string::npos, line);

  // A clean checkpoint reports nothing.
  test::TempDir clean;
  write_safetensors(clean.path + "/model.safetensors", {s1[0], s1[3], s2[1]});
  CHECK(check_weights(Checkpoint(clean.path)).empty());
}

TEST_CASE("npy: reads what xtensor writes, and v2/v3 headers, int and f64 arrays") {
  test::TempDir tmp;
  const std::string p = tmp.path + "/x.npy";
  write_npy_f32(p, {1, 2, 3, 4, 5, 6}, 2, 3);
  NpyArray a = read_npy(p);
  CHECK(a.dtype == DType::F32);
  CHECK(a.shape == std::vector<int64_t>{2, 3});
  CHECK(a.to_f32() == std::vector<float>{1, 2, 3, 4, 5, 6});

  test::write_file(p, npy_bytes("<i8", "(3,)", raw<int64_t>({0, -1, 128000}), 2));
  a = read_npy(p);
  CHECK(a.to_i64() == std::vector<int64_t>{0, -1, 128000});
  test::write_file(p, npy_bytes("<i4", "(1, 2)", raw<int32_t>({7, -8}), 3));
  CHECK(read_npy(p).to_i64() == std::vector<int64_t>{7, -8});
  test::write_file(p, npy_bytes("<f8", "()", raw<double>({0.5})));
  a = read_npy(p);
  CHECK(a.shape.empty());
  CHECK(a.to_f64() == std::vector<double>{0.5});
  test::write_file(p, npy_bytes("<f4", "(0, 129280)", ""));
  CHECK(read_npy(p).numel() == 0);
  // Fortran order with one non-trivial dimension is the same layout.
  test::write_file(p, npy_bytes("<f4", "(1, 2)", raw<float>({1, 2}), 1, "True"));
  CHECK(read_npy(p).to_f32() == std::vector<float>{1, 2});
  // Keys in any order, Python-2 long dims.
  std::string h = "{'shape': (2L,), 'fortran_order': False, 'descr': '<i4'}";
  while ((10 + h.size() + 1) % 16) h += ' ';
  h += '\n';
  test::write_file(p, std::string("\x93NUMPY\x01\x00", 8) + char(h.size()) + '\0' + h + raw<int32_t>({1, 2}));
  CHECK(read_npy(p).to_i64() == std::vector<int64_t>{1, 2});
}

TEST_CASE("npy: every malformed file is rejected naming the file and what was expected") {
  test::TempDir tmp;
  const std::string p = tmp.path + "/bad.npy";
  auto expect = [&](const std::string& bytes, const std::string& needle) {
    test::write_file(p, bytes);
    expect_throw([&] { read_npy(p); }, {p, needle});
  };
  const std::string f6 = raw<float>({1, 2, 3, 4, 5, 6});
  const std::string good = npy_bytes("<f4", "(2, 3)", f6);
  expect("", "empty file (0 bytes");
  expect("PK\x03\x04 this is a zip", "bad magic");
  expect(good.substr(0, 9), "bad magic");  // too short for the preamble
  std::string v4 = good;
  v4[6] = 4;
  expect(v4, "unsupported .npy format version 4.0");
  std::string longh = good;
  longh[8] = char(0xff);
  longh[9] = char(0x7f);
  expect(longh, "header length 32767 runs past the end of the file");
  std::string hugeh = npy_bytes("<f4", "(2, 3)", f6, 2);
  hugeh[11] = char(0x40);
  expect(hugeh, "is absurd");
  expect(npy_bytes("<f2", "(2, 3)", f6), "unsupported .npy dtype '<f2'");
  expect(npy_bytes(">f4", "(2, 3)", f6), "'>f4' (expected little-endian");
  expect(npy_bytes("|b1", "(6,)", "\1\0\1\0\1\0"), "unsupported .npy dtype '|b1'");
  expect(npy_bytes("<f4", "(2, 3)", f6, 1, "True"), "Fortran order");
  expect(npy_bytes("<f4", "(2, 3)", f6.substr(0, 20)), "needs 24 bytes of data but the file has 20 (truncated?)");
  expect(npy_bytes("<f4", "(2, 3)", f6 + "xx"), "needs 24 bytes of data but the file has 26 (trailing bytes)");
  expect(npy_bytes("<i8", "(2, 3)", f6), "x <i8 needs 48 bytes");
  expect(npy_bytes("<f4", "(1152921504606846976,)", f6), "is absurd");
  expect(npy_bytes("<f4", "(281474976710656, 281474976710656)", f6), "byte size overflows");
  expect(npy_bytes("<f4", "(0, 281474976710656, 281474976710656)", ""), "byte size overflows");  // found by fuzz_npy
  expect(npy_bytes("<f4", "(-6,)", f6), "negative");
  expect(npy_bytes("<f4", "(6)", f6), "trailing comma");
  expect(npy_bytes("<f4", "(2 3)", f6), "',' or ')' in the shape tuple");
  expect(npy_bytes("<f4", "[2, 3]", f6), "'(' opening the shape tuple");
  std::string many = "(";
  for (int i = 0; i < 40; ++i) many += "1, ";
  expect(npy_bytes("<f4", many + ")", ""), "more than 32 dimensions");
  std::string nokey = "{'descr': '<f4', 'shape': (1,), }\n";
  expect(std::string("\x93NUMPY\x01\x00", 8) + char(nokey.size()) + '\0' + nokey + "abcd", "must have the keys");
  std::string extra = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}\n";
  expect(std::string("\x93NUMPY\x01\x00", 8) + char(extra.size()) + '\0' + extra + "abcd", "unexpected key 'x'");
  std::string dup = "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}\n";
  expect(std::string("\x93NUMPY\x01\x00", 8) + char(dup.size()) + '\0' + dup + "abcd", "duplicate key 'descr'");
  std::string structured = "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}\n";
  expect(std::string("\x93NUMPY\x01\x00", 8) + char(structured.size()) + '\0' + structured + "abcd",
         "structured dtypes are unsupported");
  // Typed access checks the dtype.
  test::write_file(p, good);
  expect_throw([&] { read_npy(p).to_i64(); }, {p, "expected an int32/int64 array, got F32"});
  test::write_file(p, npy_bytes("<i4", "(1,)", raw<int32_t>({1})));
  expect_throw([&] { read_npy(p).to_f32(); }, {p, "expected a float32/float64 array, got I32"});
}

TEST_CASE("unreadable inputs: a directory, a FIFO or a chmod-000 file instead of a file") {
  test::TempDir tmp;
  // A directory where a file is expected.
  const std::string d = tmp.path + "/dir.npy";
  ::mkdir(d.c_str(), 0755);
  expect_throw([&] { read_npy(d); }, {d, "is a directory"});
  expect_throw([&] { SafetensorsFile f(d); }, {d, "not a regular file"});
  expect_throw([&] { Config::from_file(d); }, {d, "not a regular file"});
  test::TempDir ck;
  ::mkdir((ck.path + "/model.safetensors").c_str(), 0755);
  expect_throw([&] { Checkpoint c(ck.path); }, {ck.path + "/model.safetensors", "not a regular file"});

  // A FIFO: must be rejected, never block. read_npy opens with O_NONBLOCK, so
  // it needs no writer; SafetensorsFile is given one (held open here) so that
  // this test cannot hang on a reader that opens blocking.
  const std::string fifo = tmp.path + "/fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  expect_throw([&] { read_npy(fifo); }, {fifo, "not a regular file"});
  expect_throw([&] { Config::from_file(fifo); }, {fifo, "not a regular file"});
  const int w = ::open(fifo.c_str(), O_RDWR | O_NONBLOCK);
  REQUIRE(w >= 0);
  expect_throw([&] { SafetensorsFile f(fifo); }, {fifo, "not a regular file"});
  ::close(w);

  // chmod 000: only meaningful when not root (root reads it anyway, as in CI;
  // the directory and FIFO cases above cover the rejection path there).
  const std::string locked = tmp.path + "/locked.npy";
  test::write_file(locked, npy_bytes("<f4", "(1,)", raw<float>({1})));
  ::chmod(locked.c_str(), 0);
  if (running_as_root()) {
    MESSAGE("running as root: chmod 000 does not block reads; checked directory and FIFO inputs instead");
    CHECK(read_npy(locked).numel() == 1);
  } else {
    expect_throw([&] { read_npy(locked); }, {locked, "cannot open", "Permission denied"});
    expect_throw([&] { SafetensorsFile f(locked); }, {locked, "cannot open", "Permission denied"});
    expect_throw([&] { Config::from_file(locked); }, {locked, "cannot open"});
  }
  // Missing files name the path.
  const std::string none = tmp.path + "/none.npy";
  expect_throw([&] { read_npy(none); }, {none, "cannot open", "No such file"});
}

TEST_CASE("zero-length files are rejected with a clear message") {
  test::TempDir tmp;
  const std::string empty = tmp.path + "/empty";
  test::write_file(empty, "");
  expect_throw([&] { read_npy(empty); }, {empty, "empty file (0 bytes"});
  expect_throw([&] { SafetensorsFile f(empty); }, {empty, "truncated: 0 bytes"});
  expect_throw([&] { Config::from_file(empty); }, {empty, "invalid JSON"});
  expect_throw([&] { Tokenizer::from_json_text("", empty); }, {empty, "not valid JSON"});
  test::TempDir ck;
  test::write_file(ck.path + "/model.safetensors.index.json", "");
  expect_throw([&] { Checkpoint c(ck.path); }, {"model.safetensors.index.json", "invalid JSON"});
  test::write_file(ck.path + "/model.safetensors.index.json", R"({"weight_map": {"w": "s.safetensors"}})");
  test::write_file(ck.path + "/s.safetensors", "");
  expect_throw([&] { Checkpoint c(ck.path); }, {"s.safetensors", "truncated: 0 bytes"});
}

TEST_CASE("config: absurd dimensions are rejected naming the field") {
  const auto j = test::v3_config_json();
  auto expect = [&](const char* key, nlohmann::json v, const std::string& needle) {
    auto b = j;
    b[key] = v;
    expect_throw([&] { Config::from_json(b); }, {"config.json", needle});
  };
  expect("vocab_size", int64_t(1) << 62, "'vocab_size' = 4611686018427387904 must be in [1, 16777216]");
  expect("vocab_size", 18446744073709551615ull, "'vocab_size' = -1 must be in");  // wraps: still rejected
  expect("num_hidden_layers", -1, "'num_hidden_layers' = -1 must be in [1, 4096]");
  expect("num_hidden_layers", 1000000, "'num_hidden_layers' = 1000000");
  expect("max_position_embeddings", int64_t(1) << 40, "'max_position_embeddings' = 1099511627776");
  expect("num_attention_heads", 0, "'num_attention_heads' = 0");
  expect("n_routed_experts", 1 << 20, "'n_routed_experts' = 1048576");
  expect("moe_intermediate_size", 3.5, "'moe_intermediate_size' must be an integer, got 3.5");
  expect("hidden_size", nullptr, "'hidden_size' must be an integer, got null");
  expect("rms_norm_eps", -1e-6, "'rms_norm_eps'");
  expect("rope_theta", 0, "'rope_theta' = 0 must be in [1, 1e+12]");
  // inside the old "positive, finite" ranges, and NaN logits (issue 19 class 5)
  expect("rope_theta", 1e-300, "'rope_theta' = 1e-300 must be in [1, 1e+12]");
  expect("routed_scaling_factor", 1e308, "'routed_scaling_factor' = 1e+308 must be in (0, 1000]");
  expect("rms_norm_eps", 1e300, "'rms_norm_eps' = 1e+300 must be in (0, 1]");
  expect("first_k_dense_replace", 62, "'first_k_dense_replace' = 62 must be in [0, num_hidden_layers = 61]");
  expect("num_nextn_predict_layers", 1 << 30, "'num_nextn_predict_layers' = 1073741824");
  {
    auto b = j;
    b["quantization_config"]["weight_block_size"] = {0, 128};
    expect_throw([&] { Config::from_json(b); }, {"weight_block_size must be two integers in [1, 65536]"});
    // (out + block - 1) / block overflowed and gave a zero-row scale tensor
    b["quantization_config"]["weight_block_size"] = {INT64_MAX, 128};
    expect_throw([&] { Config::from_json(b); }, {"weight_block_size must be two integers in [1, 65536], got [9223372036854775807,128]"});
  }
  {
    auto b = j;
    b["rope_scaling"]["mscale_all_dim"] = 1e300;
    expect_throw([&] { Config::from_json(b); }, {"'rope_scaling.mscale_all_dim' = 1e+300 must be in [0, 100]"});
  }
  {
    auto b = j;
    b["rope_scaling"]["factor"] = 1e308 * 10;  // inf is not JSON; nlohmann stores it, validation rejects it
    expect_throw([&] { Config::from_json(b); }, {"rope_scaling.factor"});
  }
  {
    auto b = j;
    b["rope_scaling"]["original_max_position_embeddings"] = -4096;
    expect_throw([&] { Config::from_json(b); }, {"'rope_scaling.original_max_position_embeddings' = -4096 must be in [1, 2147483648]"});
  }
  expect_throw([&] { Config::from_json(nlohmann::json::array({1, 2})); }, {"expected a JSON object at top level"});
}

TEST_CASE("chat template: hostile integer arithmetic is an error, not UB or a hang") {
  const nlohmann::json msgs = nlohmann::json::parse(R"([{"role": "user", "content": "x"}])");
  auto render = [&](const std::string& t) { return render_chat(t, msgs, false); };
  expect_throw([&] { render("{{ 9223372036854775807 + 1 }}"); }, {"integer overflow in '+'"});
  expect_throw([&] { render("{{ -9223372036854775807 - 2 }}"); }, {"integer overflow in '-'"});
  expect_throw([&] { render("{{ 3037000500 * 3037000500 }}"); }, {"integer overflow in '*'"});
  expect_throw([&] { render("{{ (-9223372036854775807 - 1) // -1 }}"); }, {"integer overflow in '//'"});
  expect_throw([&] { render("{{ -(-9223372036854775807 - 1) }}"); }, {"integer overflow in unary '-'"});
  expect_throw([&] { render("{{ 2 ** 63 }}"); }, {"integer overflow in '**'"});
  expect_throw([&] { render("{{ range(1000000) | length }}"); }, {"range() too big"});
  expect_throw([&] { render("{{ 'ab' * 100000000000 }}"); }, {"repetition result is too long"});
  // Edge cases that must still work (and stay fast).
  CHECK(render("{{ 2 ** 62 }}") == "4611686018427387904");
  CHECK(render("{{ (-1) ** 9000000000000000001 }} {{ 1 ** 9000000000000000000 }} {{ 0 ** 0 }} {{ 0 ** 5 }}") ==
        "-1 1 1 0");
  CHECK(render("{{ 'abc'[1::9223372036854775807] }}|{{ 'abc'[::-9223372036854775807] }}") == "b|c");
  CHECK(render("{{ range(9223372036854775800, 9223372036854775807, 5) | list }}") ==
        "[9223372036854775800, 9223372036854775805]");
  CHECK(render("{{ range(100000) | length }}") == "100000");
  // An empty sequence repeated a huge number of times is empty, at once (the
  // fuzzer's timeout: a loop of 9e9 appends of nothing).
  CHECK(render("{{ ((-1) * '2ole') * 9000000002 }}|{{ [] * 9000000002 }}|{{ '' * 9223372036854775807 }}") == "|[]|");
}

TEST_CASE("threads: an exception in an OpenMP region reaches the caller instead of std::terminate") {
  // std::terminate ("terminate called without an active exception") was the
  // result of a bad_alloc in a thread's scratch buffer.
  cpu::ThreadErrors errs;
  std::atomic<int> ran{0};
#pragma omp parallel num_threads(2)
  {
    std::vector<char> scratch;
    errs.run([&] { scratch.resize(16); });
#pragma omp for schedule(dynamic, 1)
    for (int i = 0; i < 64; ++i)
      errs.run([&] {
        ran.fetch_add(1);
        if (i == 3) throw std::bad_alloc();
      });
  }
  CHECK_THROWS_AS(errs.rethrow(), std::bad_alloc);
  CHECK(ran.load() >= 1);
  bool called = false;
  errs.run([&] { called = true; });  // work after a failure is skipped
  CHECK_FALSE(called);
  cpu::ThreadErrors none;
#pragma omp parallel for num_threads(2)
  for (int i = 0; i < 8; ++i) none.run([] {});
  CHECK_NOTHROW(none.rethrow());
}

TEST_CASE("read_line_bounded: lines, a missing final newline, the bound, and a failing stream") {
  std::istringstream in("ab\n\ncd");
  std::string line;
  CHECK(read_line_bounded(in, line, 10, "t"));
  CHECK(line == "ab");
  CHECK(read_line_bounded(in, line, 10, "t"));
  CHECK(line.empty());
  CHECK(read_line_bounded(in, line, 10, "t"));
  CHECK(line == "cd");
  CHECK_FALSE(read_line_bounded(in, line, 10, "t"));
  std::istringstream lng(std::string(200000, 'x') + "\nok\n");
  CHECK(read_line_bounded(lng, line, 200000, "t"));  // longer than one 64 KiB chunk
  CHECK(line.size() == 200000);
  std::istringstream over(std::string(100, 'x'));
  expect_throw([&] { read_line_bounded(over, line, 99, "tokenize: stdin line 7"); },
               {"tokenize: stdin line 7: a line longer than the 99-byte limit"});
  std::istringstream broken("abc");
  broken.setstate(std::ios::badbit);  // what a swallowed bad_alloc or a read error leaves
  expect_throw([&] { read_line_bounded(broken, line, 99, "stdin"); }, {"stdin: read error"});
}

TEST_CASE("tokenizer: ids between the tokenizer and the embedding decode as HF does, once told the model's size") {
  auto tok = Tokenizer::from_dir(std::string(DSV3_SOURCE_DIR) + "/data/tokenizer/deepseek-v3");
  REQUIRE(tok.vocab_size() == 128815);
  const std::vector<int32_t> with = {19923, 128815, 129279, 2058}, without = {19923, 2058};
  expect_throw([&] { tok.decode(with); }, {"token id 128815 is outside the vocabulary"});
  tok.set_model_vocab_size(129280);
  CHECK(tok.decode(with) == tok.decode(without));
  StreamDecoder sd(tok);
  std::string streamed;
  for (int32_t id : with) streamed += sd.push(id);
  streamed += sd.flush();
  CHECK(streamed == tok.decode(without));
  expect_throw([&] { tok.decode({129280}); }, {"token id 129280 is outside the vocabulary"});
  expect_throw([&] { tok.decode({-1}); }, {"token id -1"});
}

TEST_CASE("JSON nesting: 128 levels are read, 129 are refused (arrays and objects alike)") {
  CHECK_NOTHROW(parse_json(std::string(128, '[') + std::string(128, ']'), "t"));
  CHECK_NOTHROW(parse_json(std::string(127, '[') + "{\"a\": 1}" + std::string(127, ']'), "t"));
  expect_throw([] { parse_json(std::string(129, '[') + std::string(129, ']'), "t"); }, {"t: JSON nested deeper than 128 levels"});
  std::string objs;
  for (int i = 0; i < 129; ++i) objs += "{\"a\":";
  objs += "1" + std::string(129, '}');
  expect_throw([&] { parse_json(objs, "t"); }, {"nested deeper than 128"});
  // brackets in strings are text, and an escaped quote does not end a string
  const std::string text = "[\"\\\"" + std::string(200, '[') + std::string(200, '{') + "\"]";  // ["\"[[…{{…"]
  CHECK(parse_json(text, "t")[0].get<std::string>() == "\"" + std::string(200, '[') + std::string(200, '{'));
  CHECK(json_depth(text.begin(), text.end()) == 1);
  const std::string three = "[[[\"]]]\\\"{{\"]]]";  // [[["]]]\"{{"]]]
  CHECK(json_depth(three.begin(), three.end()) == 3);
  CHECK_NOTHROW(parse_json(three, "t"));
}
