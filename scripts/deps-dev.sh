#!/usr/bin/env bash
# Extra packages for scripts/fuzz.sh (clang + libFuzzer runtime) on top of
# scripts/deps.sh. Idempotent: does nothing when everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh clang-14 libclang-rt-14-dev
