"""Dumpers: the same named tensors (docs/trace-names.md) from other engines, for `dsv3.compare`.

    python -m dsv3.dump hf  --model DIR --ids 0,23,221 --out hf.safetensors    # HF transformers (torch)
    python -m dsv3.dump mlx --model DIR --ids 0,23,221 --out mlx.safetensors   # mlx-lm

Each engine runs in the environment the project declares for it (`bash scripts/venv.sh golden` / `mlx`,
i.e. `pip install .[golden]` / `.[mlx]`). The values come from the engine alone; the file is written by
plain Python (`_writer.py`).
"""
