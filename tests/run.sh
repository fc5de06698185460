#!/usr/bin/env bash
# The README's test command: install deps (if missing), build, run ctest,
# then the Python package's pytest suite (scripts/pytest.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
ctest --test-dir build --output-on-failure
bash scripts/pytest.sh
