"""dsv3.Tokenizer against the HF tokenizers goldens; traces, compare and make_model against the CLI."""
import json

import numpy as np
import pytest

import dsv3
from conftest import GOLDEN, ROOT, cli_logits, golden_ids

TOK = ROOT / "data" / "tokenizer" / "deepseek-v3"


def jsonl(path, n=None):
    out = []
    with open(path) as f:
        for line in f:
            out.append(json.loads(line))
            if n and len(out) >= n:
                break
    return out


@pytest.fixture(scope="module")
def tok():
    return dsv3.Tokenizer(TOK)


def test_encode_decode_match_hf_tokenizers(tok):
    cases = jsonl(GOLDEN / "tokenizer" / "corpus.jsonl")
    assert len(cases) > 20
    for c in cases:
        assert tok.encode(c["text"], add_bos=False) == c["ids"], c["text"]
        assert tok.encode(c["text"], add_bos=True) == c["ids_bos"], c["text"]
        assert tok.decode(c["ids"]) == c["decoded"]
        assert tok.decode(c["ids"], skip_special_tokens=True) == c["decoded_skip"]
    assert tok.vocab_size == 128815
    assert tok.token_to_id("<｜begin▁of▁sentence｜>") == tok.bos_id == 0
    assert tok.token_to_id("no such token at all") is None


def test_render_chat_matches_transformers(tok):
    n = 0
    for c in jsonl(GOLDEN / "tokenizer" / "chats.jsonl"):
        if c.get("template") != "v3":
            continue
        assert tok.render_chat(c["messages"], add_generation_prompt=c["add_generation_prompt"]) == c["rendered"]
        n += 1
    assert n >= 4


def test_tokenizer_errors(tok, tmp_path):
    with pytest.raises(dsv3.Error, match="tokenizer.json"):
        dsv3.Tokenizer(tmp_path)
    with pytest.raises(dsv3.Error, match="role"):
        tok.render_chat([{"content": "no role"}])
    with pytest.raises(dsv3.Error):
        tok.decode([10**6])


# -- traces and compare ---------------------------------------------------------------------------------

def test_trace_equals_cli_trace_and_compare_agrees(cli, tmp_path):
    d = GOLDEN / "model/a-f32"
    ids = golden_ids(d)[:10]
    t = dsv3.Model(d).trace(ids, names=["resid_*", "topk_*", "logits"])
    assert set(t) >= {"layers.0.resid_attn", "layers.1.topk_ids", "logits"}
    assert "layers.0.attn_norm" not in t
    assert t["layers.1.topk_ids"].dtype == np.int32 and t["logits"].dtype == np.float32
    out = tmp_path / "cli.safetensors"
    cli("trace", "--model", d, "--ids", ",".join(map(str, ids)), "--out", out, "--names", "resid_*,topk_*,logits")
    res = dsv3.compare(out, t, tol="exact")
    assert res["pass"], res
    assert [r["key"] for r in res["tensors"]] == list(t)
    assert all(r["max_abs"] == 0 for r in res["tensors"])


def test_compare_against_the_committed_hf_trace(cli, tmp_path):
    # tests/golden/trace/a-f32-hf.safetensors: written by python -m dsv3.dump hf (HF transformers f32)
    hf = GOLDEN / "trace" / "a-f32-hf.safetensors"
    ref = dsv3.read_trace(hf)
    assert ref.metadata["engine"] == "hf-transformers"
    ids = ref.metadata["ids"]
    assert len(ids) == ref["logits"].shape[0]
    t = dsv3.Model(GOLDEN / "model/a-f32").trace(ids)
    res = dsv3.compare(t, hf, tol="f32")
    assert res["pass"], [r for r in res["tensors"] if not r["pass"]]
    # the CLI says the same
    out = tmp_path / "dsv3.safetensors"
    t.save(out)
    js = tmp_path / "cmp.json"
    cli("compare", out, hf, "--tol", "f32", "--json", js)
    cli_res = json.loads(js.read_text())
    assert cli_res["pass"] and [r["key"] for r in cli_res["tensors"]] == [r["key"] for r in res["tensors"]]
    for a, b in zip(cli_res["tensors"], res["tensors"]):
        assert a["nmse"] == b["nmse"] and a["max_abs"] == b["max_abs"]


def test_compare_finds_the_first_divergence(tmp_path):
    t = dsv3.Model(GOLDEN / "model/a-f32").trace(golden_ids(GOLDEN / "model/a-f32")[:8])
    bad = dsv3.Trace()
    for k, v in t.items():
        bad[k] = v.copy()
    bad.start = dict(t.start)
    bad["layers.1.resid_attn"][3] += 0.5
    ids = bad["layers.2.topk_ids"]
    ids[5, 0] = next(e for e in range(16) if e not in ids[5])
    res = dsv3.compare(t, bad, tol="f32")
    assert not res["pass"]
    assert res["first_fail"] == "layers.1.resid_attn"
    assert res["routing_diff"]["layer"] == 2 and res["routing_diff"]["token"] == 5


def test_trace_round_trips_through_a_file(tmp_path):
    t = dsv3.Model(GOLDEN / "model/a-f32").trace([0, 5, 9], names="topk_ids,logits", mode="decode", prefill_len=2)
    assert t.start["logits"] == 1  # decode mode: the last prefill row, then one row per step
    p = tmp_path / "t.safetensors"
    t.save(p, metadata={"note": "round trip"})
    back = dsv3.read_trace(p)
    assert list(back) == list(t) and back.start == t.start
    for k in t:
        assert np.array_equal(back[k], t[k]) and back[k].dtype == t[k].dtype


def test_read_trace_errors(tmp_path):
    with pytest.raises(dsv3.Error, match="not a dsv3 trace"):
        dsv3.read_trace(GOLDEN / "model/a-f32" / "model.safetensors")
    with pytest.raises(dsv3.Error, match="nowhere"):
        dsv3.read_trace(tmp_path / "nowhere.safetensors")
    with pytest.raises(dsv3.Error, match="tol"):
        dsv3.compare({"x": np.zeros((1, 2))}, {"x": np.zeros((1, 2))}, tol="loose")


# -- make_model ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp8", "mlx4"])
def test_make_model_writes_what_the_cli_writes(dtype, cli, tmp_path):
    a, b = tmp_path / "py", tmp_path / "cli"
    n = dsv3.make_model(a, "tiny", dtype, seed=3, layers=2)
    assert n > 0
    cli("make-model", "--out", b, "--preset", "tiny", "--dtype", dtype, "--seed", 3, "--layers", 2)
    for f in sorted(p.name for p in b.iterdir()):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    ids = [0, 3, 7, 11]
    assert np.array_equal(dsv3.Model(a).forward(ids), cli_logits(cli, tmp_path, b, ids))


def test_make_model_errors(tmp_path):
    with pytest.raises(dsv3.Error, match="preset"):
        dsv3.make_model(tmp_path / "m", "huge")
    with pytest.raises(ValueError, match="layers"):
        dsv3.make_model(tmp_path / "m", layers=-5)
    with pytest.raises(dsv3.Error, match="shard_gb"):
        dsv3.make_model(tmp_path / "m", shard_gb=-1)
