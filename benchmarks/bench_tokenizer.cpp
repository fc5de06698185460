// Encode throughput of dsv3::Tokenizer on JSON-Lines corpora ({"text": ...}
// per line, e.g. tests/golden/tokenizer/corpus.jsonl). Single thread.
// Usage: bench_tokenizer TOKENIZER_DIR CORPUS.jsonl [MORE.jsonl...] [--reps N]
// Prints one JSON object: load time, first pass (cold word cache) and the best
// of N further passes (warm cache), in MB/s of UTF-8 input and tokens/s.
#include <dsv3/text/tokenizer.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  try {
    if (argc < 3) {
      std::cerr << "usage: bench_tokenizer TOKENIZER_DIR CORPUS.jsonl [MORE.jsonl...] [--reps N]\n";
      return 2;
    }
    int reps = 10;
    std::vector<std::string> files;
    for (int i = 2; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--reps" && i + 1 < argc) reps = std::stoi(argv[++i]);
      else files.push_back(a);
    }
    std::vector<std::string> texts;
    size_t bytes = 0;
    for (const auto& f : files) {
      std::ifstream in(f);
      if (!in) throw std::runtime_error("cannot open " + f);
      std::string line;
      while (std::getline(in, line)) {
        if (line.empty()) continue;
        texts.push_back(nlohmann::json::parse(line).at("text").get<std::string>());
        bytes += texts.back().size();
      }
    }
    using clk = std::chrono::steady_clock;
    auto t0 = clk::now();
    auto tok = dsv3::Tokenizer::from_dir(argv[1]);
    double load_ms = std::chrono::duration<double, std::milli>(clk::now() - t0).count();
    auto pass = [&](size_t& ntok) {
      ntok = 0;
      auto a = clk::now();
      for (const auto& t : texts) ntok += tok.encode(t).size();
      return std::chrono::duration<double>(clk::now() - a).count();
    };
    size_t ntok = 0;
    double cold = pass(ntok);
    double best = 1e30;
    for (int r = 0; r < reps; ++r) best = std::min(best, pass(ntok));
    std::printf(
        "{\"impl\": \"dsv3\", \"texts\": %zu, \"bytes\": %zu, \"tokens\": %zu, \"load_ms\": %.1f, "
        "\"cold_s\": %.6f, \"warm_s\": %.6f, \"cold_mb_per_s\": %.3f, \"warm_mb_per_s\": %.3f, "
        "\"warm_tokens_per_s\": %.0f}\n",
        texts.size(), bytes, ntok, load_ms, cold, best, bytes / cold / 1e6, bytes / best / 1e6, ntok / best);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "bench_tokenizer: error: " << e.what() << "\n";
    return 1;
  }
}
