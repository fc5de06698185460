#!/usr/bin/env bash
# The whole test suite (doctest binary + CLI tests) under AddressSanitizer +
# UndefinedBehaviorSanitizer, in its own build dir (build-asan/). Any sanitizer
# report aborts the test that triggered it, so ctest fails.
# OpenBLAS and libgomp are not instrumented (system libraries); that is fine.
#   scripts/sanitize.sh            # g++ (default), or DSV3_SAN_CXX=clang++
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${DSV3_SAN_BUILD:-build-asan}
CXX=${DSV3_SAN_CXX:-g++}
JOBS=${DSV3_JOBS:-$(nproc)}
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
t0=$(date +%s)
# -O1 -g, asserts on (no NDEBUG): nlohmann's JSON_ASSERT checks stay active.
cmake -S . -B "$BUILD" -DCMAKE_CXX_COMPILER="$CXX" -DCMAKE_BUILD_TYPE=None \
  -DCMAKE_CXX_FLAGS="-O1 -g $SAN" -DCMAKE_EXE_LINKER_FLAGS="$SAN" \
  -DDSV3_BUILD_TESTS=ON -DDSV3_BUILD_CLI=ON >/dev/null
cmake --build "$BUILD" -j"$JOBS" --target dsv3_tests dsv3_cli
t1=$(date +%s)
echo "sanitize.sh: build took $((t1 - t0)) s"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --test-dir "$BUILD" --output-on-failure
echo "sanitize.sh: tests took $(( $(date +%s) - t1 )) s"
