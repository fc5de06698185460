"""dsv3.Model against the CLI (byte for byte) and against the independent goldens."""
import json
import threading
import time

import numpy as np
import pytest

import dsv3
from conftest import GOLDEN, cli_logits, golden_ids

# Every committed checkpoint with ids in its meta.json: f32/bf16/FP8, sharded MTP, mlx-lm 4/5/8-bit.
CASES = ["model/a-f32", "model/a-bf16", "model/a-fp8", "model/b-f32", "model/neg-bias-f32", "mtp/mtp-fp8",
         "quant/mlx-lm/lm-4bit", "quant/mlx-lm/lm-4bit-partial", "quant/mlx-lm/lm-5bit-mixed", "quant/mlx-lm/lm-8bit"]


def same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("case", CASES)
def test_prefill_logits_are_the_clis_byte_for_byte(case, cli, tmp_path):
    d = GOLDEN / case
    ids = golden_ids(d)
    got = dsv3.Model(d).forward(ids)
    assert same_bits(got, cli_logits(cli, tmp_path, d, ids))


@pytest.mark.parametrize("case", ["model/a-f32", "model/a-fp8", "quant/mlx-lm/lm-4bit"])
def test_decode_with_a_cache_is_the_clis_decode_mode(case, cli, tmp_path):
    d = GOLDEN / case
    ids = golden_ids(d)[:24]
    P = 9
    m = dsv3.Model(d)
    cache = m.new_cache()
    rows = [m.forward(ids[:P], cache, all_logits=False)]
    for t in ids[P:]:
        rows.append(m.forward([t], cache, all_logits=False))
    assert cache.length == len(ids)
    want = cli_logits(cli, tmp_path, d, ids, "--mode", "decode", "--prefill-len", P)
    assert same_bits(np.concatenate(rows), want)


def test_chunked_prefill_is_the_clis_and_threads_do_not_matter(cli, tmp_path):
    d = GOLDEN / "model/a-f32"
    ids = golden_ids(d)
    one = dsv3.Model(d, threads=1).forward(ids)
    assert same_bits(one, dsv3.Model(d, threads=2).forward(ids))
    m2 = dsv3.Model(d, threads=2)
    cache = m2.new_cache()
    chunks = np.concatenate([m2.forward(ids[i:i + 7], cache) for i in range(0, len(ids), 7)])
    assert same_bits(chunks, cli_logits(cli, tmp_path, d, ids, "--chunk", 7))
    # chunks run GEMMs of other shapes (another summation order): equal to f32 rounding, not bitwise
    dsv3.testing.assert_logits_close(chunks, one, metric="max_abs", tol=1e-5)


def test_logits_agree_with_hf_transformers_golden():
    # the independent truth: HF transformers f32 eager (tests/golden/README.md); tolerance as test_model_goldens
    d = GOLDEN / "model/a-f32"
    got = dsv3.Model(d).forward(golden_ids(d))
    dsv3.testing.assert_logits_close(got, np.load(d / "logits.npy"), metric="max_abs", tol=1e-4)


def test_logits_are_returned_without_a_copy():
    d = GOLDEN / "model/a-f32"
    lg = dsv3.Model(d).forward(golden_ids(d))
    assert not lg.flags.owndata  # owned by the capsule around dsv3's buffer, not by numpy
    assert lg.__array_interface__["data"][0] == dsv3._core._last_logits_address()
    assert lg.flags.c_contiguous and lg.dtype == np.float32


def test_routing_of_the_last_call_matches_hf():
    d = GOLDEN / "model/a-f32"
    m = dsv3.Model(d)
    m.forward(golden_ids(d))
    r = m.routing()
    topk = np.load(d / "routing_topk.npy")  # [moe layers, n, k] from HF
    first = json.loads((d / "config.json").read_text())["first_k_dense_replace"]
    ref = {first + i: topk[i] for i in range(topk.shape[0])}
    dsv3.testing.assert_routing_equal(r, ref)
    ids, w = r[first]
    assert ids.dtype == np.int32 and w.dtype == np.float32 and ids.shape == w.shape


def test_routing_recording_does_not_change_logits():
    d = GOLDEN / "model/a-fp8"
    ids = golden_ids(d)
    a = dsv3.Model(d, record_routing=True).forward(ids)
    b = dsv3.Model(d, record_routing=False)
    assert same_bits(a, b.forward(ids))
    assert b.routing() == {}


def test_generate_is_hf_greedy():
    d = GOLDEN / "model/a-f32"
    g = json.loads((d / "greedy.json").read_text())
    got = dsv3.Model(d).generate(g["prompt_ids"], max_new_tokens=len(g["generated_ids"]))
    assert got == g["generated_ids"]


def test_mtp_forward_is_the_clis(cli, tmp_path):
    d = GOLDEN / "mtp/mtp-f32"
    ids = golden_ids(d)
    m = dsv3.Model(d)
    assert m.has_mtp
    logits, hidden = m.forward(ids, return_hidden=True)
    assert hidden.shape == (len(ids), m.config["hidden_size"])
    mtp = m.mtp_forward(hidden[:-1], ids[1:])
    out = tmp_path / "mtp.npy"
    cli_logits(cli, tmp_path, d, ids, "--mtp-out", out)
    assert same_bits(mtp, np.load(out))


def test_variants_are_applied_and_reported(cli, tmp_path):
    d = GOLDEN / "model/neg-bias-f32"
    ids = golden_ids(d)
    m = dsv3.Model(d, variants={"group_mask_fill": "0"})
    assert m.variants["group_mask_fill"] in ("0", 0, 0.0)
    assert same_bits(m.forward(ids), cli_logits(cli, tmp_path, d, ids, "--group-mask-fill", "0"))
    assert not same_bits(m.forward(ids), dsv3.Model(d).forward(ids))  # this case is chosen so the fill matters


def test_reference_backend_runs_through_the_binding(cli, tmp_path):
    d = GOLDEN / "model/a-f32"
    ids = golden_ids(d)[:12]
    got = dsv3.Model(d, backend="reference").forward(ids)
    out = tmp_path / "ref.npy"
    cli("--backend", "reference", "forward", "--model", d, "--ids", ",".join(map(str, ids)), "--out", out)
    want = np.load(out)
    assert same_bits(got, want)


def test_gil_is_released_during_forward():
    d = GOLDEN / "model/a-f32"
    m = dsv3.Model(d, threads=1)
    ids = (golden_ids(d) * 20)[:900]
    ticks = 0
    done = threading.Event()

    def run():
        m.forward(ids)
        done.set()

    th = threading.Thread(target=run)
    t0 = time.perf_counter()
    th.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    th.join()
    elapsed = time.perf_counter() - t0
    # with the GIL held for the whole call the loop could not run during it
    assert elapsed < 0.05 or ticks >= 10, f"main thread ran {ticks} times in {elapsed:.3f} s"


# -- errors -------------------------------------------------------------------------------------------

def test_missing_checkpoint_is_a_dsv3_error_naming_the_file(tmp_path):
    with pytest.raises(dsv3.Error, match="config.json"):
        dsv3.Model(tmp_path / "nowhere")


def test_out_of_vocabulary_id_is_a_dsv3_error():
    m = dsv3.Model(GOLDEN / "model/a-f32")
    with pytest.raises(dsv3.Error, match=r"token id 512 is outside the vocabulary \[0, 512\)"):
        m.forward([0, 512])
    assert isinstance(dsv3.Error("x"), RuntimeError)


def test_bad_arguments_are_python_errors():
    m = dsv3.Model(GOLDEN / "model/a-f32")
    with pytest.raises(ValueError, match="integers"):
        m.forward([0.5, 1])
    with pytest.raises(ValueError, match="no token ids"):
        m.forward([])
    with pytest.raises(ValueError, match="1-D"):
        m.forward([[1, 2]])
    with pytest.raises(ValueError, match="threads"):
        dsv3.Model(GOLDEN / "model/a-f32", threads=0)
    with pytest.raises(dsv3.Error, match="variants"):
        dsv3.Model(GOLDEN / "model/a-f32", variants={"no_such_knob": 1})
    with pytest.raises(dsv3.Error, match="backend"):
        dsv3.Model(GOLDEN / "model/a-f32", backend="tpu")


def test_a_cache_belongs_to_its_model():
    a, b = dsv3.Model(GOLDEN / "model/a-f32"), dsv3.Model(GOLDEN / "model/a-f32")
    with pytest.raises(dsv3.Error, match="another Model"):
        b.forward([0, 1], a.new_cache())


def test_cache_positions_past_the_context_are_an_error():
    m = dsv3.Model(GOLDEN / "model/a-f32")
    n = m.config["max_position_embeddings"]
    c = m.new_cache()
    m.forward([1] * (n - 1), c, all_logits=False)
    with pytest.raises(dsv3.Error, match="max_position_embeddings"):
        m.forward([1, 2], c)
    assert c.length == n - 1  # a refused call leaves the cache as it was
    c.truncate(3)
    assert c.length == 3
