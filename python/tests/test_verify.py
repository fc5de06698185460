"""python -m dsv3.verify: parsers on payloads built from each server's documented format, the client's
errors against a local stub, and live runs against mlx_lm.server started by the tests."""
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import dsv3
from dsv3.verify import servers as S
from conftest import ROOT

# -- parsers: payloads built from the servers' documented response formats (not captured from live servers)

def test_parse_vllm_documented_payload():
    r = {"choices": [{"text": "ab", "token_ids": [5, 9], "prompt_token_ids": [0, 3, 4],
                      "logprobs": {"tokens": ["token_id:5", "token_id:9"], "token_logprobs": [-0.5, -1.25],
                                   "top_logprobs": [{"token_id:5": -0.5, "token_id:7": -1.0},
                                                    {"token_id:9": -1.25, "token_id:2": -2.0}]},
                      "prompt_logprobs": [None, {"3": {"logprob": -2.5, "rank": 4, "decoded_token": "x"}},
                                          {"4": {"logprob": -0.75, "rank": 1, "decoded_token": "y"}}]}],
         "usage": {"prompt_tokens": 3}}
    c = S.parse_vllm(r)
    assert c.gen_ids == [5, 9] and c.gen_logprobs == [-0.5, -1.25] and c.prompt_ids == [0, 3, 4]
    assert c.top == [{5: -0.5, 7: -1.0}, {9: -1.25, 2: -2.0}]
    assert c.prompt_logprobs == [None, -2.5, -0.75] and c.prompt_token_count == 3
    body = S.vllm_request([0, 3, 4], 2, 5, "m")
    assert body["prompt"] == [0, 3, 4] and body["temperature"] == 0 and body["return_tokens_as_token_ids"]


def test_parse_sglang_documented_payload():
    r = {"text": "ab", "meta_info": {"prompt_tokens": 2,
         "input_token_logprobs": [[None, 0, None], [-1.5, 3, None]],
         "output_token_logprobs": [[-0.25, 8, None], [-0.5, 1, None]],
         "output_top_logprobs": [[[-0.25, 8, None], [-2.0, 6, None]], [[-0.5, 1, None]]]}}
    c = S.parse_sglang(r)
    assert c.gen_ids == [8, 1] and c.gen_logprobs == [-0.25, -0.5] and c.prompt_ids == [0, 3]
    assert c.prompt_logprobs == [None, -1.5] and c.top == [{8: -0.25, 6: -2.0}, {1: -0.5}]


def test_parse_llama_server_documented_payload():
    r = {"content": "ab", "tokens": [11, 12], "tokens_evaluated": 4,
         "completion_probabilities": [{"id": 11, "token": "a", "logprob": -0.1, "bytes": [97],
                                       "top_logprobs": [{"id": 11, "token": "a", "logprob": -0.1}]},
                                      {"id": 12, "token": "b", "logprob": -0.2, "top_logprobs": []}]}
    c = S.parse_llama(r)
    assert c.gen_ids == [11, 12] and c.gen_logprobs == [-0.1, -0.2] and c.prompt_token_count == 4
    assert S.llama_request([0, 1], 3, 5, "m")["n_probs"] == 5


def test_parse_mlx_and_openai_payloads():
    first = {"choices": [{"logprobs": {"content": [{"id": 4, "logprob": -0.5}, {"id": 2, "logprob": -0.25}]}}],
             "usage": {"prompt_tokens": 3}}
    # mlx_lm.server's top entries come from an argpartition: unsorted, first entry not the chosen token
    second = {"choices": [{"logprobs": {"content": [
        {"id": 9, "logprob": -3.0, "top_logprobs": [{"id": 9, "logprob": -3.0}, {"id": 4, "logprob": -0.5}]},
        {"id": 2, "logprob": -0.25, "top_logprobs": [{"id": 2, "logprob": -0.25}, {"id": 5, "logprob": -2.0}]}]}}]}
    c = S.parse_mlx(first, second)
    assert c.gen_ids == [4, 2] and c.top == [{9: -3.0, 4: -0.5}, {2: -0.25, 5: -2.0}] and not c.notes
    o = {"choices": [{"logprobs": {"tokens": ["Hi", "!"], "token_logprobs": [-1.0, -2.0],
                                   "top_logprobs": [{"Hi": -1.0}, {"!": -2.0, "?": -3.0}]}}]}
    c = S.parse_openai(o, to_id={"Hi": 10, "!": 11, "?": 12}.get)
    assert c.gen_ids == [10, 11] and c.top[1] == {11: -2.0, 12: -3.0}
    with pytest.raises(S.VerifyError, match="does not map to a token id"):
        S.parse_openai(o, to_id=lambda t: None)


def test_missing_logprobs_say_what_to_turn_on():
    with pytest.raises(S.VerifyError, match="logprobs"):
        S.parse_vllm({"choices": [{"text": "x"}]})
    with pytest.raises(S.VerifyError, match="return_logprob"):
        S.parse_sglang({"meta_info": {}})
    with pytest.raises(S.VerifyError, match="n_probs"):
        S.parse_llama({"content": "x"})


# -- the client against a local stub server ---------------------------------------------------------------

class Stub(http.server.BaseHTTPRequestHandler):
    script = []  # (status, body bytes) per request, the last one repeated
    seen = []

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        Stub.seen.append(json.loads(self.rfile.read(n)))
        status, body = Stub.script[min(len(Stub.seen) - 1, len(Stub.script) - 1)]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def stub():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    Stub.seen = []
    yield f"http://127.0.0.1:{srv.server_address[1]}", Stub
    srv.shutdown()


def test_client_retries_5xx_then_succeeds(stub):
    url, st = stub
    st.script = [(503, b"busy"), (200, b'{"ok": 1}')]
    assert S.post_json(url + "/x", {"a": 1}, retries=2, sleep=lambda s: None) == {"ok": 1}
    assert len(st.seen) == 2


def test_client_errors_are_clear(stub):
    url, st = stub
    st.script = [(400, b'{"error": "top_logprobs must be <= 11"}')]
    with pytest.raises(S.VerifyError, match="HTTP 400 .*top_logprobs must be <= 11"):
        S.post_json(url + "/x", {}, sleep=lambda s: None)
    st.script = [(200, b'{"choices": [{"logprobs": {"con')]
    with pytest.raises(S.VerifyError, match="malformed or truncated JSON"):
        S.post_json(url + "/x", {}, sleep=lambda s: None)
    st.script = [(500, b"oops")]
    with pytest.raises(S.VerifyError, match=r"HTTP 500 .*after 3 attempts"):
        S.post_json(url + "/x", {}, retries=2, sleep=lambda s: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(S.VerifyError, match="connection refused"):
        S.post_json(f"http://127.0.0.1:{port}/x", {}, retries=1, sleep=lambda s: None)


def run_verify(*args):
    return subprocess.run([sys.executable, "-m", "dsv3.verify", *map(str, args)], capture_output=True, text=True)


def test_verify_exit_2_when_it_cannot_run(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"ids": [0, 5, 7]}\n')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_verify("--server", f"http://127.0.0.1:{port}", "--kind", "vllm", "--model",
                   ROOT / "tests/golden/model/a-f32", "--prompts", p, "--retries", 0)
    assert r.returncode == 2 and "connection refused" in r.stderr and r.stderr.count("\n") == 1
    p.write_text("not json\n")
    r = run_verify("--server", "http://127.0.0.1:1", "--kind", "vllm", "--model", ROOT / "tests/golden/model/a-f32",
                   "--prompts", p)
    assert r.returncode == 2 and "p.jsonl:1: not a JSON object" in r.stderr


def test_verify_flags_a_server_outside_the_vocabulary(stub, tmp_path):
    url, st = stub
    body = {"choices": [{"token_ids": [600], "prompt_token_ids": [0, 5],
                         "logprobs": {"tokens": ["token_id:600"], "token_logprobs": [-1.0], "top_logprobs": None}}]}
    st.script = [(200, json.dumps(body).encode())]
    p = tmp_path / "p.jsonl"
    p.write_text('{"ids": [0, 5], "max_tokens": 1}\n')
    r = run_verify("--server", url, "--kind", "vllm", "--model", ROOT / "tests/golden/model/a-f32", "--prompts", p)
    assert r.returncode == 2 and "outside the checkpoint's vocabulary" in r.stderr
    assert st.seen[0]["temperature"] == 0 and st.seen[0]["prompt"] == [0, 5]


# -- live: mlx_lm.server serving a tiny f32 checkpoint --------------------------------------------------------

mlx_lm = pytest.importorskip("mlx_lm", reason="mlx-lm is not installed (scripts/pytest.sh installs .[test,mlx])")

PROMPTS = ["Hi", "The cat", "Once upon a time", "Numbers: 1, 2, 3, 4",
           "The history of mathematics spans thousands of years",
           "The history of mathematics spans thousands of years, from counting and measurement to abstract "
           "structures and proofs. Early"]
YARN = {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 64, "beta_fast": 32.0,
        "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The demo preset (real vocabulary and tokenizer) with YaRN from position 64, in f32; the same config
    without rope_scaling; and mlx-lm's own 4-bit re-quantisation of it."""
    d = tmp_path_factory.mktemp("verify")
    good = d / "good"
    dsv3.make_model(good, "demo", "f32", seed=3, config={"rope_scaling": YARN, "max_position_embeddings": 4096})
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "data/tokenizer/deepseek-v3" / f, good / f)
    norope = d / "norope"
    shutil.copytree(good, norope)
    cfg = json.loads((norope / "config.json").read_text())
    del cfg["rope_scaling"]
    (norope / "config.json").write_text(json.dumps(cfg))
    q4 = d / "q4"
    subprocess.run([sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(good), "--mlx-path", str(q4), "-q",
                    "--q-bits", "4", "--q-group-size", "32", "--dtype", "float32"], check=True, capture_output=True)
    prompts = d / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "max_tokens": 10}) + "\n" for p in PROMPTS))
    return {"good": good, "norope": norope, "q4": q4, "prompts": prompts}


def serve(model_dir, log):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mlx_lm.server", "--model", str(model_dir), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        if proc.poll() is not None:
            raise RuntimeError(f"mlx_lm.server exited with {proc.returncode}: see {log.name}")
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise RuntimeError("mlx_lm.server did not start within 60 s")


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    procs = {}
    logdir = tmp_path_factory.mktemp("logs")

    def get(name):
        if name not in procs:
            log = open(logdir / f"{name}.log", "w")
            procs[name] = serve(checkpoints[name], log)
        return procs[name][1]

    yield get
    for proc, _ in procs.values():
        proc.terminate()
        proc.wait(timeout=10)


def verify(server_url, checkpoints, tmp_path):
    rep = tmp_path / "r.json"
    html = tmp_path / "r.html"
    r = run_verify("--server", server_url, "--kind", "mlx", "--model", checkpoints["good"], "--prompts",
                   checkpoints["prompts"], "--json", rep, "--report", html)
    assert r.returncode in (0, 1), r.stderr
    out = json.loads(rep.read_text())
    assert "<svg" in html.read_text() and "http" not in html.read_text().split("<svg", 1)[1].replace("http://www.w3.org", "")
    return r, out


def test_live_healthy_deployment_passes(server, checkpoints, tmp_path):
    r, rep = verify(server("good"), checkpoints, tmp_path)
    assert r.returncode == 0, r.stdout
    assert rep["summary"]["tokens"] == 60 and rep["summary"]["mean_abs_logprob_err"] < 1e-4
    assert rep["summary"]["top1_agreement"] == 1.0


def test_live_rope_scaling_removed_fails_as_positional(server, checkpoints, tmp_path):
    r, rep = verify(server("norope"), checkpoints, tmp_path)
    assert r.returncode == 1
    diag = " ".join(rep["diagnosis"])
    assert "error grows with position" in diag and "YaRN off" in diag, diag
    assert "uniform noise" not in diag


def test_live_4bit_requantised_fails_as_noise(server, checkpoints, tmp_path):
    r, rep = verify(server("q4"), checkpoints, tmp_path)
    assert r.returncode == 1
    diag = " ".join(rep["diagnosis"])
    assert "uniform noise" in diag and "grows with position" not in diag and "reproduces the server" not in diag, diag
