// Minimal use of dsv3 as a library: load a checkpoint, run three tokens,
// print the greedy next token. Usage: hello MODEL_DIR
#include <algorithm>
#include <cstdio>

#include <dsv3/model.hpp>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]);
    return 2;
  }
  try {
    dsv3::Model<float> m(argv[1]);
    auto cache = m.new_cache();
    auto logits = m.forward({0, 17, 42}, cache);  // [3, vocab]
    const float* last = &logits(2, 0);
    const long next = std::max_element(last, last + m.config().vocab_size) - last;
    std::printf("next token after [0, 17, 42]: %ld\n", next);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hello: %s\n", e.what());
    return 1;
  }
  return 0;
}
