#!/usr/bin/env bash
# Decode speed and peak memory of quantized checkpoints (AWQ int4, MLX
# 4/5/8-bit) against the same model in BF16, in one run, for the tiny and the
# mid preset. Usage: benchmarks/bench_quant.sh [build/dsv3] [models dir]
# Prints a Markdown table (decode of 64 tokens after a 32-token prompt, 2 threads).
set -euo pipefail
DSV3=${1:-build/dsv3}
DIR=${2:-build/bench/quant}
mkdir -p "$DIR"
IDS=$(python3 -c "print(','.join(str(5 + i * 37 % 400) for i in range(32)))")
echo "| preset | format | checkpoint MB | decode tok/s | peak RSS MB |"
echo "|---|---|---|---|---|"
for preset in tiny mid; do
  for fmt in bf16 awq mlx4 mlx5 mlx8; do
    M=$DIR/$preset-$fmt
    [ -f "$M/config.json" ] || "$DSV3" make-model --out "$M" --preset $preset --dtype $fmt 2>/dev/null
    size=$(du -sm "$M" | cut -f1)
    best=0 rss=0
    for r in 1 2; do
      out=$(/usr/bin/time -v "$DSV3" --threads 2 generate --model "$M" --ids "$IDS" --max-new-tokens 64 --json 2>"$DIR/time.txt")
      tps=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['timing']['decode_tokens_per_s'])" "$out")
      best=$(python3 -c "print(max($best, $tps))")
      rss=$(awk '/Maximum resident/ {print int($6/1024)}' "$DIR/time.txt")
    done
    printf "| %s | %s | %s | %.1f | %s |\n" $preset $fmt "$size" "$best" "$rss"
  done
done
