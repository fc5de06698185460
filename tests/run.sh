#!/usr/bin/env bash
# The README's test command: install deps (if missing), build, run ctest,
# then the Python package's pytest suite (scripts/pytest.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
# The CUDA backend is compiled (and its tests listed, skipped without a GPU)
# wherever a CUDA toolkit is installed; docs/backends.md.
CUDA=OFF
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
  CUDA=ON
  command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
else
  echo "tests/run.sh: no CUDA toolkit (nvcc): the CUDA backend is not built, its tests not listed"
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DDSV3_CUDA=$CUDA >/dev/null
cmake --build build -j"$(nproc)"
ctest --test-dir build --output-on-failure
bash scripts/pytest.sh
