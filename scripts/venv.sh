#!/usr/bin/env bash
# Creates (or completes) one of the project's Python environments under
# .venv/NAME in the repository (git ignores .venv/), with the pinned packages
# the golden scripts and benchmarks were run with, and prints its python.
# Never used by CI for the C++ tests; torch is never installed there.
#
#   bash scripts/venv.sh golden   # torch + transformers: model/MTP goldens, HF traces, bench_hf.py
#   bash scripts/venv.sh quant    # golden + mlx/mlx-lm + autoawq (no deps): make_quant_goldens.py
#   bash scripts/venv.sh mlx      # mlx[cpu] + mlx-lm: dump_mlx_trace.py
#   bash scripts/venv.sh tok      # tokenizers + transformers 4.x + jinja2: tokenizer goldens, bench_tokenizer.py
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:-}"
golden=(torch==2.15.0 transformers==5.24.0 "huggingface-hub>=1.31,<3" safetensors==0.8.0 numpy==2.4.6 accelerate==1.15.0)
mlx=("mlx[cpu]==0.32.4" mlx-lm==0.32.2)
case "$name" in
  golden) pkgs=("${golden[@]}") ;;
  quant)  pkgs=("${golden[@]}" "${mlx[@]}") ;;
  mlx)    pkgs=("${mlx[@]}") ;;
  tok)    pkgs=(tokenizers "transformers>=4.45,<5" jinja2) ;;
  *) echo "usage: bash scripts/venv.sh golden|quant|mlx|tok" >&2; exit 2 ;;
esac
dir=".venv/$name"
[ -x "$dir/bin/python" ] || python3 -m venv "$dir"
"$dir/bin/pip" install -q "${pkgs[@]}" >&2
if [ "$name" = quant ]; then
  # AutoAWQ 0.2.9's own pins conflict with torch 2.15: its pure-Python packer alone, without deps
  "$dir/bin/pip" install -q --no-deps --target "$dir/awq-pkg" autoawq==0.2.9 >&2
fi
echo "$dir/bin/python"
