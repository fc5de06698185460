"""python -m dsv3.dump: its command line, and its writer read back by dsv3 (no engine needed: CI has no torch).

The engines themselves run in the project's golden environments (scripts/venv.sh golden|mlx); the
committed tests/golden/trace/a-f32-hf.safetensors is their output, compared in test_text_and_tools.py.
"""
import subprocess
import sys

import numpy as np

import dsv3
from dsv3.dump._writer import make_filter, write_trace


def run(*args):
    return subprocess.run([sys.executable, "-m", "dsv3.dump", *args], capture_output=True, text=True)


def test_usage_and_unknown_engine():
    r = run()
    assert r.returncode == 2 and "python -m dsv3.dump {hf,mlx}" in r.stdout
    r = run("vllm")
    assert r.returncode == 2 and "unknown engine 'vllm'" in r.stderr


def test_missing_engine_says_what_to_install():
    try:
        import torch  # noqa: F401
        has_torch = True
    except ImportError:
        has_torch = False
    r = run("hf", "--help")
    if has_torch:
        assert r.returncode == 0 and "--model" in r.stdout
    else:
        assert r.returncode == 2 and "pip install '.[golden]'" in r.stderr


def test_writer_output_is_a_trace_dsv3_reads(tmp_path):
    rng = np.random.default_rng(0)
    rec = {("embed", -1): rng.standard_normal((3, 8)), ("topk_ids", 1): np.array([[1, 2], [3, 4], [5, 6]]),
           ("resid_ffn", 0): rng.standard_normal((3, 8)), ("logits", -1): rng.standard_normal((3, 16))}
    out = tmp_path / "t.safetensors"
    n = write_trace(rec, 2, str(out), {"engine": "test", "ids": [0, 1, 2]})
    assert n == 4
    t = dsv3.read_trace(out)
    assert list(t) == ["embed", "layers.0.resid_ffn", "layers.1.topk_ids", "logits"]  # forward order
    assert t["layers.1.topk_ids"].dtype == np.int32
    assert np.array_equal(t["embed"], rec[("embed", -1)].astype(np.float32))
    assert dsv3.compare(t, out, tol="exact")["pass"]
    assert list(tmp_path.iterdir()) == [out]  # no temporary left behind
    assert make_filter("resid_*,logits")("resid_attn") and not make_filter("resid_*")("logits")
