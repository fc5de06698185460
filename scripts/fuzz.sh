#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan, build dir build-fuzz/) and
# runs each for a bounded time, starting from the committed seed corpus in
# tests/fuzz/corpus/<target>/. Fails on any crash, sanitizer report, leak,
# timeout (> 10 s for one input) or out-of-memory (> 2 GB).
#
#   scripts/fuzz.sh [seconds-per-target (default 60)] [target ...]
#
# Targets: safetensors checkpoint config tokenizer_json encode chat npy trace json.
# DSV3_FUZZ_JOBS targets run at once (default: nproc; each uses one core).
# Inputs found during a run go to build-fuzz/corpus/<target>/ (kept between
# runs); a failing input is saved as build-fuzz/artifacts/<target>/crash-* etc.
# and can be replayed with: build-fuzz/tests/fuzz/fuzz_<target> <file>
# (add it to tests/fuzz/corpus/<target>/ once fixed, as a regression seed).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
shift || true
ALL="safetensors checkpoint config tokenizer_json encode chat npy trace json"
TARGETS=${*:-$ALL}
BUILD=${DSV3_FUZZ_BUILD:-build-fuzz}
JOBS=${DSV3_JOBS:-$(nproc)}

CXX=${DSV3_FUZZ_CXX:-}
if [ -z "$CXX" ]; then
  for c in clang++ clang++-14; do command -v "$c" >/dev/null && { CXX=$c; break; }; done
fi
[ -n "$CXX" ] || { echo "fuzz.sh: clang++ not found (run scripts/deps-dev.sh)" >&2; exit 2; }

t0=$(date +%s)
cmake -S . -B "$BUILD" -DCMAKE_CXX_COMPILER="$CXX" -DCMAKE_BUILD_TYPE=None \
  -DCMAKE_CXX_FLAGS="-O1 -g" -DDSV3_BUILD_FUZZERS=ON -DDSV3_BUILD_CLI=OFF -DDSV3_BUILD_TESTS=OFF >/dev/null
cmake --build "$BUILD" -j"$JOBS" --target $(for t in $TARGETS; do echo "fuzz_$t"; done)
echo "fuzz.sh: build took $(( $(date +%s) - t0 )) s"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
PAR=${DSV3_FUZZ_JOBS:-$JOBS}  # targets fuzzed at once (each is single-threaded)
run_one() {
  local t=$1 seeds=tests/fuzz/corpus/$1 work=$BUILD/corpus/$1 art=$BUILD/artifacts/$1 log=$BUILD/fuzz-$1.log
  local extra=() rc=0  # tests/fuzz/<target>.dict (libFuzzer dictionary), tests/fuzz/<target>.options (flags)
  mkdir -p "$work" "$art"
  [ -f "tests/fuzz/$t.dict" ] && extra+=(-dict="tests/fuzz/$t.dict")
  [ -f "tests/fuzz/$t.options" ] && extra+=($(grep -v '^#' "tests/fuzz/$t.options"))
  "$BUILD/tests/fuzz/fuzz_$t" -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$art/" "${extra[@]}" "$work" "$seeds" >"$log" 2>&1 || rc=$?
  echo "$rc" >"$BUILD/fuzz-$t.rc"
}
for t in $TARGETS; do
  [ -d "tests/fuzz/corpus/$t" ] || { echo "fuzz.sh: no seed corpus tests/fuzz/corpus/$t" >&2; exit 2; }
done
echo "fuzz.sh: fuzzing $(echo $TARGETS | wc -w) targets for ${SECS}s each, $PAR at a time"
running=0
for t in $TARGETS; do
  rm -f "$BUILD/fuzz-$t.rc"
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$PAR" ]; then wait -n || true; running=$((running - 1)); fi
done
wait || true
failed=""
summary=""
for t in $TARGETS; do
  log=$BUILD/fuzz-$t.log
  rc=$(cat "$BUILD/fuzz-$t.rc" 2>/dev/null || echo 99)
  execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
  speed=$(awk '/stat::average_exec_per_sec/ {print $2}' "$log" | tail -1)
  ncorp=$(find "$BUILD/corpus/$t" -type f | wc -l)
  if [ "$rc" -ne 0 ] || grep -qE "ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|==fuzz== ERROR" "$log"; then
    failed="$failed $t"
    status="FAIL (exit $rc)"
    echo "---- fuzz_$t FAILED; from $log:"
    grep -E "ERROR|runtime error|SUMMARY|Test unit written|==fuzz==" "$log" | head -20 || true
    tail -40 "$log"
  else
    status=ok
  fi
  summary="$summary$(printf '%-16s %12s execs %8s exec/s %6s corpus  %s' "$t" "${execs:-?}" "${speed:-?}" "$ncorp" "$status")\n"
done
printf "fuzz.sh: %ss per target, total %s s\n%b" "$SECS" "$(( $(date +%s) - t0 ))" "$summary"
if [ -n "$failed" ]; then
  echo "fuzz.sh: FAILED:$failed (inputs in $BUILD/artifacts/)" >&2
  exit 1
fi
