#!/usr/bin/env bash
# The README's demo: build dsv3, make the embedded demo model (tiny layers,
# random weights, the real 129,280-token DeepSeek-V3 vocabulary) with the
# vendored real tokenizer, then generate text from a chat prompt.
# Random weights: the text is gibberish by design; the pipeline is real.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target dsv3_cli
[ -f build/demo-model/config.json ] ||
  ./build/dsv3 make-model --out build/demo-model --preset demo --dtype bf16 --seed 1 \
    --tokenizer data/tokenizer/deepseek-v3
./build/dsv3 generate --model build/demo-model --chat --prompt "${1:-Hello, who are you?}" \
  --max-new-tokens 24 --temperature 0.7 --seed 42
