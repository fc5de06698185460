#!/usr/bin/env bash
# Creates (or completes) one of the project's Python environments under
# .venv/NAME in the repository (git ignores .venv/): dsv3's own package built
# from this checkout plus the optional dependency group NAME that
# pyproject.toml declares, with the pins the golden scripts and benchmarks
# were run with. Prints the environment's python. CI uses only "test"
# (scripts/pytest.sh); torch is never installed there.
#
#   bash scripts/venv.sh golden   # torch + transformers: model/MTP goldens, python -m dsv3.dump hf, bench_hf.py
#   bash scripts/venv.sh quant    # golden + mlx/mlx-lm + AutoAWQ's packer: make_quant_goldens.py
#   bash scripts/venv.sh mlx      # mlx[cpu] + mlx-lm: python -m dsv3.dump mlx
#   bash scripts/venv.sh tok      # tokenizers + transformers 4.x + jinja2: tokenizer goldens, bench_tokenizer.py
#   bash scripts/venv.sh test     # pytest: python/tests
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:-}"
case "$name" in
  golden|quant|mlx|tok|test) ;;
  *) echo "usage: bash scripts/venv.sh golden|quant|mlx|tok|test" >&2; exit 2 ;;
esac
dir=".venv/$name"
[ -x "$dir/bin/python" ] || python3 -m venv "$dir"
"$dir/bin/pip" install -q --disable-pip-version-check ".[$name]" >&2
if [ "$name" = quant ]; then
  # AutoAWQ 0.2.9's own pins conflict with torch 2.15: its pure-Python packer alone, without deps
  "$dir/bin/pip" install -q --no-deps --target "$dir/awq-pkg" autoawq==0.2.9 >&2
fi
echo "$dir/bin/python"
