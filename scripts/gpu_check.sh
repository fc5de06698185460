#!/usr/bin/env bash
# The CUDA backend on a GPU machine, in one run (issue 16; docs/backends.md):
#   1. build with -DDSV3_CUDA=ON (or use a build-cuda/ carried from a machine
#      with the toolchain; gpu-libs/, if present, goes on LD_LIBRARY_PATH);
#   2. the CUDA test suites (every op against the reference in 8 formats, and
#      determinism; then every golden on --backend cuda);
#   3. two `--backend cuda` forward passes compared byte for byte;
#   4. mid model in F32 / BF16 / FP8: prefill 512 tokens and 64 decode steps,
#      CPU backend and CUDA backend in the same run;
#   5. full-dims FP8 checkpoint with 4 layers: decode time per token and the
#      device memory used, with the extrapolation to 61 layers on 8 GPUs.
# Results: $OUT (the device tool's output folder) or gpu-results/: summary.txt,
# tests-*.txt, bench.json. About 6-8 minutes on one H200 with 16 cores. On a
# machine without compilers, carry what scripts/gpu_pack.sh prepares.
#
#   bash scripts/gpu_check.sh [--skip-full-dims]
set -uo pipefail
cd "$(dirname "$0")/.."
SKIP_FULL=0
[ "${1:-}" = "--skip-full-dims" ] && SKIP_FULL=1
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
: >"$OUT/summary.txt"
log() { echo "$*" | tee -a "$OUT/summary.txt"; }
B=${DSV3_CUDA_BUILD:-build-cuda}
[ -d gpu-libs ] && export LD_LIBRARY_PATH="$PWD/gpu-libs:${LD_LIBRARY_PATH:-}"
T0=$SECONDS

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || { log "gpu_check: nvidia-smi failed: no GPU here"; exit 2; }
log "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"

runnable() { [ -x "$1" ] && ! ldd "$1" 2>/dev/null | grep -q "not found"; }
if ! runnable "$B/dsv3" || ! runnable "$B/tests/dsv3_tests"; then
  log "build: cmake -DDSV3_CUDA=ON in $B"
  cmake -S . -B "$B" -DDSV3_CUDA=ON -DCMAKE_BUILD_TYPE=Release >"$OUT/build.txt" 2>&1 &&
    cmake --build "$B" -j"$(nproc)" >>"$OUT/build.txt" 2>&1 || { log "build failed: see build.txt"; tail -30 "$OUT/build.txt"; exit 1; }
fi
DSV3=$B/dsv3
log "build ready after $((SECONDS - T0)) s"

# -- 2. tests (what ctest's backend_ops_cuda and unit_cuda run; exit 77: skipped) --
export DSV3_SOURCE_DIR=$PWD  # goldens from this tree, wherever the binary was built
for spec in "backend_ops_cuda --test-suite=backend_ops_cuda" "unit_cuda --test-suite-exclude=backend_ops*"; do
  set -- $spec
  DSV3_TEST_BACKEND=cuda "$B/tests/dsv3_tests" "$2" >"$OUT/tests-$1.txt" 2>&1
  rc=$?
  grep -E "cases passed|worst err|test cases:|assertions:|SKIPPED|ERROR" "$OUT/tests-$1.txt" | head -40 | tee -a "$OUT/summary.txt"
  case $rc in 0) log "$1: PASS" ;; 77) log "$1: SKIPPED (no device)" ;; *) log "$1: FAIL (exit $rc)" ;; esac
done

# -- 3. run to run ----------------------------------------------------------------
IDS=$(python3 -c "import json; print(','.join(map(str, json.load(open('tests/golden/model/a-fp8/meta.json'))['ids'])))")
for i in 1 2; do "$DSV3" --backend cuda forward --model tests/golden/model/a-fp8 --ids "$IDS" --out "$OUT/run$i.npy" 2>>"$OUT/summary.txt"; done
cmp -s "$OUT/run1.npy" "$OUT/run2.npy" && log "two runs: identical logits" || log "two runs: DIFFERENT logits"

# -- 4. mid model, CPU vs CUDA ------------------------------------------------------
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
P512=$(python3 -c "import random; random.seed(3); print(','.join(str(random.randrange(1, 32000)) for _ in range(512)))")
echo "[" >"$OUT/bench.json"
log ""
log "| mid model | backend | prefill 512 tok/s | decode tok/s |"
log "|---|---|---|---|"
first=1
for dt in f32 bf16 fp8; do
  "$DSV3" make-model --preset mid --dtype $dt --seed 7 --out "$W/mid-$dt" 2>/dev/null || { log "make-model mid $dt failed"; continue; }
  for be in cpu cuda; do
    j=$("$DSV3" --backend $be generate --model "$W/mid-$dt" --ids "$P512" --max-new-tokens 65 --json 2>>"$OUT/summary.txt") || { log "| $dt | $be | failed | |"; continue; }
    [ $first -eq 1 ] || echo "," >>"$OUT/bench.json"
    first=0
    echo "{\"model\": \"mid-$dt\", \"backend\": \"$be\", \"result\": $j}" >>"$OUT/bench.json"
    log "$(python3 -c "import json,sys; t=json.loads(sys.argv[1])['timing']; print(f\"| {sys.argv[2]} | {sys.argv[3]} | {t['prefill_tokens_per_s']:.1f} | {t['decode_tokens_per_s']:.2f} |\")" "$j" $dt $be)"
  done
  rm -rf "$W/mid-$dt"
done

# -- 5. full-dims FP8, 4 layers -------------------------------------------------------
if [ "$SKIP_FULL" -eq 0 ]; then
  "$DSV3" make-model --preset full-dims --dtype fp8 --layers 4 --seed 7 --out "$W/full" 2>/dev/null || log "make-model full-dims failed"
  (while sleep 0.5; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; done) >"$OUT/mem.txt" 2>/dev/null &
  mon=$!
  j=$("$DSV3" --backend cuda generate --model "$W/full" --ids 0,1,2,3,4,5,6,7 --max-new-tokens 17 --json 2>>"$OUT/summary.txt")
  kill $mon 2>/dev/null
  if [ -n "$j" ]; then
    echo ", {\"model\": \"full-dims-fp8-4-layers\", \"backend\": \"cuda\", \"result\": $j}" >>"$OUT/bench.json"
    python3 - "$j" "$OUT/mem.txt" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
t = json.loads(sys.argv[1])["timing"]
mem = [int(x) for x in open(sys.argv[2]).read().split() if x.strip().isdigit()]
ms = 1000 / t["decode_tokens_per_s"] if t["decode_tokens_per_s"] else float("nan")
print(f"full-dims FP8, 4 layers (1 dense + 3 MoE), --backend cuda: {ms:.1f} ms per decode token; "
      f"device memory peak {max(mem) if mem else 0} MiB")
# 61 layers (3 dense + 58 MoE): the 3 MoE layers here stand for 58, over 8 GPUs by expert parallelism
print(f"extrapolated to 61 layers: about {ms / 4 * 61:.0f} ms per token on one GPU's compute; the 671B FP8 "
      f"weights (about 671 GB) take about 84 GB per GPU across 8")
PY
  fi
fi
echo "]" >>"$OUT/bench.json"
log "gpu_check: done in $((SECONDS - T0)) s"
