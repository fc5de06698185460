#!/usr/bin/env python3
"""dsv3 vs HF transformers on the `mid` preset, plus the machine's sgemv bandwidth - one run.

    python3 benchmarks/bench_model.py [--dsv3 build/dsv3] [--models-dir build/bench]
        [--hf-python .venv/golden/bin/python] [--threads 2] [--sweep-threads 1,2]
        [--repeats 3] [--long-context] [--out-dir benchmarks/results]

Needs: the dsv3 binary; the venv with torch + transformers for bench_hf.py (skip with
--skip-hf); libbenchmark-dev + libopenblas-dev for bench_sgemv.cpp (built with
`g++ -O2 benchmarks/bench_sgemv.cpp -lbenchmark -lopenblas -lpthread -o build/bench/bench_sgemv`
if --sgemv-bin is missing; skip with --skip-sgemv). /usr/bin/time for dsv3's peak RSS.

Steps (see benchmarks/README.md for the definitions):
  1. make-model --preset mid --dtype f32|bf16 into --models-dir if missing.
  2. dsv3 generate --json: prefill of 128 and 512 tokens (--max-new-tokens 1) and greedy
     decode of 64 tokens after a 32-token prompt, for f32 and bf16, at every thread count of
     --sweep-threads (the headline is --threads); best of --repeats; peak RSS from
     /usr/bin/time -v. Bit-identity across thread counts: generated_ids and the bytes of
     `dsv3 forward` logits (.npy, 128 tokens) compared by sha256.
  3. bench_hf.py: the same ids through HF's DeepseekV3ForCausalLM (f32 checkpoint in float32,
     bf16 checkpoint in bfloat16 and in float32), with a logits check against dsv3's forward.
  4. bench_sgemv: OpenBLAS sgemv bytes/s (weights streamed from DRAM, and cache-hot).
  5. Derived: effective weight GB/s per decoded token, ratios, RSS vs weights + cache.
  --long-context: the tiny preset (config override: max_position_embeddings 163840, YaRN
     original 4096 as in DeepSeek-V3) through a chunked prefill and a final one-token call,
     peak RSS, and the latent-cache size; plus the real model's cache size per token.
Writes benchmarks/results/mid-<date>.md and .json and prints the Markdown.
"""
import argparse
import array
import ast
import datetime
import hashlib
import json
import math
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from bench_hf import make_ids  # noqa: E402  (pure Python, no torch import)

ARG_MAX_STRLEN = 131072  # Linux MAX_ARG_STRLEN: one argv string, including its NUL
SGEMV_BUILD = "g++ -O2 benchmarks/bench_sgemv.cpp -lbenchmark -lopenblas -lpthread -o {out}"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# machine state
# ------------------------------------------------------------------------------------------
def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def cpu_busy(interval=1.0):
    """Fraction of all CPUs busy over `interval` seconds (from /proc/stat)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v), idle
    t0, i0 = snap()
    time.sleep(interval)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def compilers_running():
    out = subprocess.run(["pgrep", "-f", "cc1plus"], capture_output=True, text=True).stdout.split()
    return [p for p in out if p.strip()]


class Quiet:
    """Waits (bounded) before each measurement until nothing else is using the CPUs."""

    def __init__(self, max_busy, max_wait_s):
        self.max_busy, self.max_wait_s, self.waited_s, self.samples = max_busy, max_wait_s, 0.0, []

    def wait(self, what):
        t0 = time.time()
        while True:
            busy = cpu_busy(1.0)
            cc = compilers_running()
            if busy <= self.max_busy and not cc:
                break
            if time.time() - t0 > self.max_wait_s:
                log(f"  [quiet] gave up waiting after {self.max_wait_s:.0f}s (busy {busy:.2f}, cc1plus {len(cc)})")
                break
            log(f"  [quiet] waiting: CPUs {busy:.0%} busy, {len(cc)} cc1plus")
            time.sleep(5)
        self.waited_s += time.time() - t0
        s = dict(what=what, loadavg=loadavg(), busy_before=busy)
        self.samples.append(s)
        return s


# ------------------------------------------------------------------------------------------
# checkpoints and the weights one decoded token reads
# ------------------------------------------------------------------------------------------
def safetensors_tensors(model_dir):
    """{name: (dtype, shape, nbytes)} from the safetensors header(s)."""
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    out = {}
    for fn in files:
        with open(os.path.join(model_dir, fn), "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            hdr = json.loads(f.read(n))
        for k, v in hdr.items():
            if k == "__metadata__":
                continue
            a, b = v["data_offsets"]
            out[k] = (v["dtype"], v["shape"], b - a)
    return out


def touched_bytes_per_token(model_dir):
    """Bytes of stored weights one decoded token reads (stored dtype, from the headers).

    embedding: one row (nbytes / vocab); every norm, attention projection, dense MLP,
    router (+ bias), shared expert and lm_head: whole tensor; routed experts: k of the
    n_routed_experts per MoE layer (k = num_experts_per_tok), i.e. k/E of their bytes.
    (FP8 block scales, if any, count with their weights' fraction.)
    """
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    E, k = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
    ts = safetensors_tensors(model_dir)
    parts = dict(embedding_row=0, attention=0, norms=0, dense_mlp=0, router=0, shared_expert=0,
                 routed_experts=0, lm_head=0)
    total = 0
    L = cfg["num_hidden_layers"]
    for name, (_, _, nb) in ts.items():
        m = re.match(r"model\.layers\.(\d+)\.", name)
        if m and int(m.group(1)) >= L:
            continue  # MTP layer: not part of the main model's decode
        total += nb
        if name.startswith("model.embed_tokens."):
            parts["embedding_row"] += nb / cfg["vocab_size"]
        elif name.startswith("lm_head."):
            parts["lm_head"] += nb
        elif ".mlp.experts." in name or ".mlp.switch_mlp." in name:  # (MLX stacks them)
            parts["routed_experts"] += nb * k / E
        elif ".mlp.shared_experts." in name:
            parts["shared_expert"] += nb
        elif ".mlp.gate." in name:
            parts["router"] += nb
        elif ".mlp." in name:
            parts["dense_mlp"] += nb
        elif ".self_attn." in name and "layernorm" not in name:
            parts["attention"] += nb
        else:
            parts["norms"] += nb
    return dict(bytes=sum(parts.values()), parts=parts, file_bytes=total,
                dtypes=sorted({d for d, _, _ in ts.values()}))


def read_i32_tensor(path, name):
    """(shape, flat list) of one I32 tensor of a safetensors file (no numpy needed)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        hdr = json.loads(f.read(n))
        t = hdr[name]
        if t["dtype"] != "I32":
            raise ValueError(f"{path}: {name} is {t['dtype']}, expected I32")
        a, b = t["data_offsets"]
        f.seek(8 + n + a)
        raw = f.read(b - a)
    return t["shape"], list(struct.unpack(f"<{len(raw) // 4}i", raw))


def touched_bytes_of_run(a, model_dir, ids):
    """Bytes of stored weights a run over `ids` reads at least once: the embedding rows of the
    distinct ids, every other tensor except the routed experts, plus, per MoE layer, the
    experts that some position chose (the union of
    `dsv3 trace` topk_ids over all positions; the same routing as the decode run's up to
    float rounding, which no top-k margin of these runs is near)."""
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    ts = safetensors_tensors(model_dir)
    tr = os.path.join(tempfile.gettempdir(), "dsv3-bench-topk.safetensors")
    subprocess.run([a.dsv3, "--prefault", "off", "trace", "--model", model_dir, "--ids", ids_arg(ids), "--out", tr,
                    "--names", "topk_ids"], check=True, capture_output=True)
    used = {}
    for L in range(cfg["first_k_dense_replace"], cfg["num_hidden_layers"]):
        _, v = read_i32_tensor(tr, f"layers.{L}.topk_ids")
        used[L] = set(v)
    os.unlink(tr)
    expert_bytes = {}
    rest = 0
    for name, (_, shape, nb) in ts.items():
        if name == "model.embed_tokens.weight":  # only the rows of the ids seen
            rest += nb // shape[0] * len(set(ids))
            continue
        m = re.match(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.", name)
        if m:
            key = (int(m.group(1)), int(m.group(2)))
            expert_bytes[key] = expert_bytes.get(key, 0) + nb
            continue
        m = re.match(r"model\.layers\.(\d+)\.", name)
        if m and int(m.group(1)) >= cfg["num_hidden_layers"]:
            continue  # MTP layer
        rest += nb
    routed = sum(nb for (L, e), nb in expert_bytes.items() if e in used.get(L, ()))
    return dict(bytes=rest + routed, non_expert_bytes=rest, routed_expert_bytes=routed,
                experts_used={str(L): len(u) for L, u in used.items()}, n_routed_experts=cfg["n_routed_experts"])


def dsv3_bounded(a, quiet, model, threads, ids, new_tokens, what):
    """Decode with pages faulted in only as used (--prefault off): peak RSS vs the weights the
    run touched plus its latent cache."""
    quiet.wait(what)
    out, peak, _ = run_timed([a.dsv3, "--threads", str(threads), "--prefault", "off", "generate", "--model", model,
                              "--ids", ids_arg(ids), "--max-new-tokens", str(new_tokens), "--json"])
    j = json.loads(out.strip().splitlines()[-1])
    seen = ids + j["generated_ids"][:-1]  # every position the run computed
    t = touched_bytes_of_run(a, model, seen)
    cache = j["timing"]["kv_cache_bytes"]
    log(f"  {what}: peak RSS {peak / 1e6:.0f} MB, touched {t['bytes'] / 1e6:.0f} MB + cache {cache / 1e6:.2f} MB")
    return dict(peak_rss_bytes=peak, touched=t, kv_cache_bytes=cache, positions=len(seen),
                decode_tokens_per_s=j["timing"]["decode_tokens_per_s"],
                ratio=peak / (t["bytes"] + cache))


def ensure_model(dsv3, path, preset, dtype):
    if os.path.exists(os.path.join(path, "config.json")):
        return False
    log(f"making {path} ({preset}, {dtype})")
    subprocess.run([dsv3, "make-model", "--out", path, "--preset", preset, "--dtype", dtype], check=True)
    return True


# ------------------------------------------------------------------------------------------
# dsv3 runs
# ------------------------------------------------------------------------------------------
def run_timed(cmd, stats=None):
    """Runs cmd under /usr/bin/time -v; returns (stdout, peak_rss_bytes, wall_s). A dict `stats` also gets
    the run's major page faults (`major_faults`: pages read from disk, as a mapped checkpoint's are when
    the page cache does not hold them)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        t = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-v", "-o", tf.name] + cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        tv = open(tf.name).read()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({p.returncode}): {p.stderr[-2000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", tv)
    if stats is not None:
        f = re.search(r"Major \(requiring I/O\) page faults: (\d+)", tv)
        stats["major_faults"] = int(f.group(1)) if f else None
    return p.stdout, int(m.group(1)) * 1024 if m else None, wall


def ids_arg(ids):
    s = ",".join(map(str, ids))
    if len(s) + 1 > ARG_MAX_STRLEN:
        raise OSError(f"--ids of {len(ids)} ids is {len(s)} bytes: over Linux's {ARG_MAX_STRLEN}-byte "
                      "limit for one command-line argument (MAX_ARG_STRLEN)")
    return s


def warmup_args(a, new_tokens):
    """`generate --warmup N` for a prefill measurement (HF's script warms up too); nothing for decode."""
    return ["--warmup", str(a.warmup)] if new_tokens == 1 and a.warmup else []


def dsv3_generate(a, quiet, model, threads, ids, new_tokens, what):
    best = None
    rss = 0
    for r in range(a.repeats):
        q = quiet.wait(what)
        out, peak, _ = run_timed([a.dsv3, "--threads", str(threads), "generate", "--model", model,
                                  "--ids", ids_arg(ids), "--max-new-tokens", str(new_tokens), "--json"]
                                 + warmup_args(a, new_tokens))
        j = json.loads(out.strip().splitlines()[-1])
        j["load"] = q
        rss = max(rss, peak or 0)
        key = "decode_tokens_per_s" if new_tokens > 1 else "prefill_tokens_per_s"
        if best is not None and j["generated_ids"] != best["generated_ids"]:
            raise RuntimeError(f"{what}: generated_ids differ between repeats")
        j["runs"] = (best["runs"] if best else []) + [j["timing"][key]]
        if best is None or j["timing"][key] > best["timing"][key]:
            best = j
        else:
            best["runs"] = j["runs"]
        log(f"  {what} [{r + 1}/{a.repeats}] {key} {j['timing'][key]:.2f}  (load {q['loadavg'][0]:.2f})")
    best["peak_rss_bytes"] = rss
    best.pop("prompt_ids", None)
    return best


def dsv3_forward_sha(a, quiet, model, threads, ids, out):
    quiet.wait(f"forward t{threads}")
    _, rss, wall = run_timed([a.dsv3, "--threads", str(threads), "forward", "--model", model,
                              "--ids", ids_arg(ids), "--out", out])
    return dict(sha256=hashlib.sha256(open(out, "rb").read()).hexdigest(), npy=out, peak_rss_bytes=rss, wall_s=wall)


# ------------------------------------------------------------------------------------------
# HF and sgemv
# ------------------------------------------------------------------------------------------
def run_hf(a, quiet, model, dtype, check_npy, what):
    quiet.wait(what)
    cmd = [a.hf_python, os.path.join(HERE, "bench_hf.py"), "--model", model, "--prompt-len",
           ",".join(map(str, a.prompt_lens)), "--new-tokens", str(a.new_tokens), "--decode-prompt-len",
           str(a.decode_prompt_len), "--threads", str(a.threads), "--dtype", dtype, "--experts", a.hf_experts,
           "--attn", a.hf_attn, "--repeats", str(a.hf_repeats)]
    if check_npy:
        cmd += ["--check-npy", check_npy]
    env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(a.threads))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"bench_hf failed: {p.stderr[-3000:]}")
    j = json.loads(p.stdout.strip().splitlines()[-1])
    log(f"  {what}: prefill {j['prefill_tokens_per_s']}, decode {j.get('decode_tokens_per_s', 0):.2f}")
    return j


def run_sgemv(a, quiet):
    if not os.path.exists(a.sgemv_bin):
        cmd = SGEMV_BUILD.format(out=a.sgemv_bin)
        log(f"building: {cmd}")
        subprocess.run(cmd, shell=True, check=True, cwd=ROOT)
    quiet.wait("sgemv")
    p = subprocess.run([a.sgemv_bin, "--benchmark_format=json"], capture_output=True, text=True, check=True,
                       env=dict(os.environ, OPENBLAS_NUM_THREADS=str(max(a.sweep_threads + [a.threads]))))
    j = json.loads(p.stdout)
    rows = []
    for b in j["benchmarks"]:
        m = re.match(r"BM_sgemv/(\w+)/M:(\d+)/K:(\d+)/threads:(\d+)", b["name"])
        if not m:
            continue
        rows.append(dict(variant=m.group(1), M=int(m.group(2)), K=int(m.group(3)), threads=int(m.group(4)),
                         bytes_per_second=b["bytes_per_second"], ms=b["real_time"], copies=b.get("copies")))
    return dict(context=j["context"], rows=rows)


def sgemv_bw(sg, variant, threads, M=32000):
    for r in sg["rows"]:
        if r["variant"] == variant and r["threads"] == threads and r["M"] == M:
            return r["bytes_per_second"]
    return None


# ------------------------------------------------------------------------------------------
# long context
# ------------------------------------------------------------------------------------------
def npy_last_row(path):
    """(shape, last row as floats) of a little-endian float32 C-order .npy, without numpy."""
    with open(path, "rb") as f:
        magic = f.read(8)
        assert magic[:6] == b"\x93NUMPY", path
        hl = struct.unpack("<H" if magic[6] == 1 else "<I", f.read(2 if magic[6] == 1 else 4))[0]
        hdr = ast.literal_eval(f.read(hl).decode("latin1"))
        assert hdr["descr"] == "<f4" and not hdr["fortran_order"], hdr
        shape = hdr["shape"]
        f.seek(-4 * shape[-1], os.SEEK_END)
        row = array.array("f")
        row.frombytes(f.read(4 * shape[-1]))
    return shape, list(row)


def long_context(a, quiet):
    res = {}
    # The real model's latent cache: per layer, kv_lora_rank + qk_rope_head_dim values per token.
    real = dict(layers=61, values_per_layer=512 + 64)
    for name, b in (("f32", 4), ("bf16", 2)):
        per = real["layers"] * real["values_per_layer"] * b
        real[name] = dict(bytes_per_token=per, bytes_at_163840=per * 163840)
    res["deepseek_v3_latent_cache"] = real

    # Preferred: the demo preset (max_position_embeddings 163840, YaRN original 4096 as in
    # DeepSeek-V3), `forward --ids @FILE --mode decode --prefill-len P --chunk C`: a chunked
    # prefill of P tokens, then one-token decode calls at positions P, P+1, ...
    # Older binaries (no @FILE / no chunked decode-mode prefill): the tiny preset with a config
    # override and `--mode prefill --chunk C` on m*C+1 ids given on the command line.
    P, D, C = a.long_positions, a.long_decode_tokens, a.long_chunk
    demo = os.path.join(a.models_dir, "demo-f32")
    ensure_model(a.dsv3, demo, "demo", "f32")
    cfg = json.load(open(os.path.join(demo, "config.json")))
    per_tok = cfg["num_hidden_layers"] * (cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]) * 4
    short = make_ids(100, cfg["vocab_size"])
    g = json.loads(subprocess.run([a.dsv3, "generate", "--model", demo, "--ids", ids_arg(short),
                                   "--max-new-tokens", "3", "--json"], capture_output=True, text=True,
                                  check=True).stdout)
    res["kv_bytes_formula_check"] = dict(reported=g["timing"]["kv_cache_bytes"], formula=per_tok * 102)
    out = os.path.join(tempfile.gettempdir(), "dsv3-long.npy")
    idfile = os.path.join(tempfile.gettempdir(), "dsv3-long-ids.txt")
    L = P + D
    with open(idfile, "w") as f:
        f.write(",".join(map(str, make_ids(L, cfg["vocab_size"]))))
    cmd = [a.dsv3, "--threads", str(a.threads), "forward", "--model", demo, "--ids", "@" + idfile, "--out", out,
           "--mode", "decode", "--prefill-len", str(P), "--chunk", str(C)]
    # probe: does this binary take @FILE and chunk decode mode? (tiny run, same flags)
    with open(idfile + ".probe", "w") as f:
        f.write(",".join(map(str, make_ids(12, cfg["vocab_size"]))))
    probe = subprocess.run(cmd[:7] + ["@" + idfile + ".probe", "--out", out, "--mode", "decode", "--prefill-len", "10",
                                      "--chunk", "4"], capture_output=True, text=True)
    os.unlink(idfile + ".probe")
    if probe.returncode == 0:
        quiet.wait("long-context")
        log(f"  long context: demo preset, chunked prefill of {P} (chunk {C}), {D} decode calls at {P}..{L - 1}")
        _, rss, wall = run_timed(cmd)
        shape, last = npy_last_row(out)
        res["run"] = dict(
            how=f"demo preset; forward --ids @FILE --mode decode --prefill-len {P} --chunk {C}",
            prefill_tokens=P, chunk=C, decode_calls=D, decode_positions=[P, L - 1], ids=L,
            wall_s=wall, peak_rss_bytes=rss, kv_cache_bytes=per_tok * L, kv_bytes_per_token=per_tok,
            logits_shape=list(shape), last_row_finite=all(math.isfinite(x) for x in last),
            kv_cache_bytes_at_163840=per_tok * 163840)
        os.unlink(out)
        os.unlink(idfile)
        return res
    res["probe_error"] = probe.stderr.strip()[-300:]
    os.unlink(idfile)

    path = os.path.join(a.models_dir, "tiny-long-f32")
    ensure_model(a.dsv3, path, "tiny", "f32")
    cfgp = os.path.join(path, "config.json")
    cfg = json.load(open(cfgp))
    if cfg["max_position_embeddings"] != 163840:
        cfg["max_position_embeddings"] = 163840
        cfg["rope_scaling"]["original_max_position_embeddings"] = 4096
        json.dump(cfg, open(cfgp, "w"), indent=2)
    per_tok = cfg["num_hidden_layers"] * (cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]) * 4
    res["tiny_config_override"] = "max_position_embeddings=163840, rope_scaling.original_max_position_embeddings=4096"
    attempts = []
    want_L = (P // C) * C + 1  # m*C+1 ids: m chunks, then a one-token call at position m*C
    while want_L <= P:
        want_L += C

    def ids_for(n):  # single-digit tokens (2..9) keep the argument as short as possible
        return [2 + (i * 7) % 8 for i in range(n)]
    L = want_L
    while True:
        quiet.wait("long-context")
        log(f"  long context: {L} ids, chunk {C} (last call: one token at position {L - 1})")
        s_ids = ",".join(map(str, ids_for(L)))
        try:
            _, rss, wall = run_timed([a.dsv3, "--threads", str(a.threads), "forward", "--model", path,
                                      "--ids", s_ids, "--out", out, "--mode", "prefill", "--chunk", str(C)])
            break
        except OSError as e:  # E2BIG: one argv string is limited to MAX_ARG_STRLEN
            attempts.append(dict(L=L, ids_arg_bytes=len(s_ids), error=f"{e} (one argv string is limited to "
                                 f"{ARG_MAX_STRLEN} bytes; --ids is {len(s_ids)})"))
            log(f"  {attempts[-1]['error']}")
            if L <= C + 1:
                raise
            L = ((ARG_MAX_STRLEN // 2 - 1) // C) * C + 1  # largest m*C+1 single-digit ids that fit
    shape, last = npy_last_row(out)
    res["tiny_run"] = dict(
        requested_positions=want_L, attempts=attempts, ids=L, chunk=C, last_position=L - 1,
        wall_s=wall, peak_rss_bytes=rss, kv_cache_bytes=per_tok * L, kv_bytes_per_token=per_tok,
        logits_shape=list(shape), last_row_finite=all(math.isfinite(x) for x in last),
        last_row_argmax=max(range(len(last)), key=last.__getitem__),
        kv_cache_bytes_at_163840=per_tok * 163840)
    os.unlink(out)
    return res


# ------------------------------------------------------------------------------------------
def fmt_gb(b):
    return f"{b / 1e9:.3f}" if b else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsv3", default=os.path.join(ROOT, "build", "dsv3"))
    ap.add_argument("--models-dir", default="build/bench")
    ap.add_argument("--hf-python", default=os.path.join(ROOT, ".venv", "golden", "bin", "python"))
    ap.add_argument("--sgemv-bin", default="build/bench/bench_sgemv")
    ap.add_argument("--threads", type=int, default=2, help="headline thread count (dsv3 and HF)")
    ap.add_argument("--sweep-threads", default="1,2", help="dsv3 thread counts for scaling + bit-identity")
    ap.add_argument("--prompt-lens", default="128,512")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--decode-prompt-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="dsv3: best of N runs")
    ap.add_argument("--warmup", type=int, default=1,
                    help="dsv3 prefill: untimed passes first in the same process (generate --warmup), as HF's one")
    ap.add_argument("--hf-repeats", type=int, default=2)
    ap.add_argument("--hf-experts", default="grouped_mm")
    ap.add_argument("--hf-attn", default="eager")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--hf-impl-sweep", action="store_true",
                    help="also time HF's attn (eager, sdpa) x experts (grouped_mm, batched_mm, eager) implementations")
    ap.add_argument("--skip-sgemv", action="store_true")
    ap.add_argument("--long-context", action="store_true")
    ap.add_argument("--long-context-only", action="store_true")
    ap.add_argument("--long-positions", type=int, default=160000)
    ap.add_argument("--long-chunk", type=int, default=4000,
                    help="prefill chunk (old-binary fallback: 160001 = 40 x 4000 + 1 ids, last call at 160000)")
    ap.add_argument("--long-decode-tokens", type=int, default=4, help="decode calls after the long prefill")
    ap.add_argument("--max-busy", type=float, default=0.25, help="wait while other work keeps CPUs this busy")
    ap.add_argument("--max-wait", type=float, default=600, help="seconds to wait for a quiet machine, per step")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--tag", default="mid")
    ap.add_argument("--rerender", metavar="JSON", help="only rewrite the .md next to a results .json")
    a = ap.parse_args()
    if a.rerender:
        R = json.load(open(a.rerender))
        md = report(argparse.Namespace(**R["args"]), R)
        R.pop("_summary", None)
        with open(os.path.splitext(a.rerender)[0] + ".md", "w") as f:
            f.write(md)
        print(md)
        return
    a.dsv3 = os.path.abspath(a.dsv3)
    # Run a private copy: the source binary may be rebuilt while the benchmark runs.
    src_sha = hashlib.sha256(open(a.dsv3, "rb").read()).hexdigest()
    src_mtime = datetime.datetime.fromtimestamp(os.path.getmtime(a.dsv3)).isoformat(timespec="seconds")
    src_path = a.dsv3
    a.dsv3 = os.path.join(tempfile.gettempdir(), f"dsv3-bench-{src_sha[:12]}")
    shutil.copy2(src_path, a.dsv3)
    a.prompt_lens = [int(x) for x in a.prompt_lens.split(",") if x]
    a.sweep_threads = sorted({int(x) for x in a.sweep_threads.split(",") if x} | {a.threads})
    quiet = Quiet(a.max_busy, a.max_wait)

    git = lambda *c: subprocess.run(["git", "-C", ROOT, *c], capture_output=True, text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    R = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        machine=dict(cpu=cpu, nproc=os.cpu_count(), kernel=platform.release(),
                     mem_total_kb=int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")))),
        git=dict(head=git("rev-parse", "HEAD"), dirty_files=git("status", "--porcelain", "--untracked-files=no").splitlines()),
        dsv3_binary=dict(path=src_path, mtime=src_mtime, sha256=src_sha, ran_copy=a.dsv3),
        args={k: v for k, v in vars(a).items()},
        load_at_start=loadavg(),
    )
    t_start = time.time()

    if not a.long_context_only:
        models = {}
        for dt in ("f32", "bf16"):
            p = os.path.join(a.models_dir, f"mid-{dt}")
            ensure_model(a.dsv3, p, "mid", dt)
            models[dt] = p
        vocab = json.load(open(os.path.join(models["f32"], "config.json")))["vocab_size"]
        R["weights"] = {dt: touched_bytes_per_token(p) for dt, p in models.items()}

        # ---- dsv3
        D = R["dsv3"] = {}
        ident = R["thread_identity"] = {}
        for dt, mp in models.items():
            for th in a.sweep_threads:
                r = D[f"{dt}/t{th}"] = {}
                for P in a.prompt_lens:
                    r[f"prefill{P}"] = dsv3_generate(a, quiet, mp, th, make_ids(P, vocab), 1, f"dsv3 {dt} t{th} prefill{P}")
                r["decode"] = dsv3_generate(a, quiet, mp, th, make_ids(a.decode_prompt_len, vocab), a.new_tokens,
                                            f"dsv3 {dt} t{th} decode{a.new_tokens}")
                r["forward128"] = dsv3_forward_sha(a, quiet, mp, th, make_ids(128, vocab),
                                                   os.path.join(tempfile.gettempdir(), f"dsv3-fwd128-{dt}-t{th}.npy"))
            R.setdefault("bounded", {})[dt] = dsv3_bounded(a, quiet, mp, a.threads, make_ids(a.decode_prompt_len, vocab),
                                                           a.new_tokens, f"dsv3 {dt} bounded decode")
            runs = [D[f"{dt}/t{th}"] for th in a.sweep_threads]
            ident[dt] = dict(
                generated_ids_identical=all(r["decode"]["generated_ids"] == runs[0]["decode"]["generated_ids"] for r in runs),
                forward_npy_identical=len({r["forward128"]["sha256"] for r in runs}) == 1,
                forward_sha256={f"t{th}": D[f"{dt}/t{th}"]["forward128"]["sha256"] for th in a.sweep_threads},
            )

        # ---- HF
        H = R["hf"] = {}
        if a.hf_impl_sweep and not a.skip_hf:
            sw = R["hf_impl_sweep"] = []
            npy = D[f"f32/t{a.threads}"]["forward128"]["npy"]
            for attn in ("eager", "sdpa"):
                for ex in ("grouped_mm", "batched_mm", "eager"):
                    b = argparse.Namespace(**vars(a))
                    b.hf_attn, b.hf_experts, b.prompt_lens, b.new_tokens, b.hf_repeats = attn, ex, [128], 16, 1
                    try:
                        j = run_hf(b, quiet, models["f32"], "float32", npy, f"hf sweep attn={attn} experts={ex}")
                        sw.append(dict(attn=attn, experts=ex, prefill128=j["prefill_tokens_per_s"]["128"],
                                       decode=j["decode_tokens_per_s"], max_abs_diff=j["check"]["max_abs_diff"],
                                       argmax_agree=j["check"]["argmax_agree"], peak_rss_bytes=j["peak_rss_bytes"]))
                    except RuntimeError as e:
                        sw.append(dict(attn=attn, experts=ex, error=str(e)[-300:]))
        if not a.skip_hf:
            main_t = f"t{a.threads}"
            H["f32/float32"] = run_hf(a, quiet, models["f32"], "float32", D[f"f32/{main_t}"]["forward128"]["npy"], "hf f32 ckpt float32")
            H["bf16/bfloat16"] = run_hf(a, quiet, models["bf16"], "bfloat16", D[f"bf16/{main_t}"]["forward128"]["npy"], "hf bf16 ckpt bfloat16")
            H["bf16/float32"] = run_hf(a, quiet, models["bf16"], "float32", D[f"bf16/{main_t}"]["forward128"]["npy"], "hf bf16 ckpt float32")

        # ---- sgemv
        R["sgemv"] = None if a.skip_sgemv else run_sgemv(a, quiet)

    if a.long_context or a.long_context_only:
        R["long_context"] = long_context(a, quiet)

    R["load_samples"] = quiet.samples
    R["quiet_wait_s"] = quiet.waited_s
    R["load_at_end"] = loadavg()
    R["elapsed_s"] = time.time() - t_start
    md = report(a, R)
    R["summary"] = R.pop("_summary", None)
    write_results(a.out_dir, a.tag, R, md)


def repo_relative(x):
    """Paths inside the repository, recorded relative to it (results name no machine's paths)."""
    if isinstance(x, dict):
        return {k: repo_relative(v) for k, v in x.items()}
    if isinstance(x, list):
        return [repo_relative(v) for v in x]
    if isinstance(x, str) and x.startswith(ROOT + os.sep):
        return os.path.relpath(x, ROOT)
    return x


def write_results(out_dir, name, R, md):
    """results/<name>-<date>.json and .md; the report also goes to stdout."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{name}-{datetime.date.today().isoformat()}")
    with open(stem + ".json", "w") as f:
        json.dump(repo_relative(R), f, indent=1)
        f.write("\n")
    with open(stem + ".md", "w") as f:
        f.write(md.replace(ROOT + os.sep, ""))
    print(md)
    log(f"wrote {stem}.md and {stem}.json")


def report(a, R):
    L = []
    w = L.append
    w(f"# dsv3 benchmark: {getattr(a, 'tag', 'mid')} ({R['date']})\n")
    m = R["machine"]
    w(f"Machine: {m['cpu']}, {m['nproc']} CPUs, {m['mem_total_kb'] / 1e6:.1f} GB RAM, Linux {m['kernel']}. "
      f"dsv3 `{os.path.relpath(R['dsv3_binary']['path'], ROOT)}` built {R['dsv3_binary']['mtime']}, "
      f"HEAD {R['git']['head'][:10]}{' + uncommitted changes' if R['git']['dirty_files'] else ''}.")
    loads = [s["loadavg"][0] for s in R["load_samples"]]
    busy = [s["busy_before"] for s in R["load_samples"]]
    if loads:
        w(f"Load average (1 min) before each measurement: {min(loads):.2f}-{max(loads):.2f} "
          f"(our own previous run counts in it); CPUs busy in the 1 s before each: max {max(busy):.0%}; "
          f"waited {R['quiet_wait_s']:.0f} s for a quiet machine. Total {R['elapsed_s'] / 60:.1f} min.\n")
    S = {}
    if "dsv3" in R:
        T = a.threads
        W = R["weights"]
        D, H = R["dsv3"], R["hf"]
        sg = R["sgemv"]
        P1, P2 = a.prompt_lens[0], a.prompt_lens[-1]

        def dsv3_row(dt, th):
            r = D[f"{dt}/t{th}"]
            dec = r["decode"]["timing"]["decode_tokens_per_s"]
            return dict(name=f"dsv3 {dt} ckpt, f32 compute", threads=th,
                        pre={P: r[f"prefill{P}"]["timing"]["prefill_tokens_per_s"] for P in a.prompt_lens},
                        dec=dec, gbs=dec * W[dt]["bytes"] / 1e9,
                        rss_dec=r["decode"]["peak_rss_bytes"], rss_pre=r[f"prefill{P2}"]["peak_rss_bytes"],
                        kv=r["decode"]["timing"]["kv_cache_bytes"])

        rows = []
        for dt in ("f32", "bf16"):
            for th in a.sweep_threads:
                rows.append(dsv3_row(dt, th))
        for key, label, wdt in (("f32/float32", "HF f32 ckpt, float32", "f32"),
                                ("bf16/bfloat16", "HF bf16 ckpt, bfloat16", "bf16"),
                                ("bf16/float32", "HF bf16 ckpt, float32", "f32")):
            if key in H:
                h = H[key]
                rows.append(dict(name=label, threads=h["threads"],
                                 pre={P: h["prefill_tokens_per_s"][str(P)] for P in a.prompt_lens},
                                 dec=h["decode_tokens_per_s"], gbs=h["decode_tokens_per_s"] * W[wdt]["bytes"] / 1e9,
                                 rss_dec=h["peak_rss_bytes"], rss_pre=None, kv=None))
        w("## Throughput\n")
        w(f"Prefill: one call on P prompt tokens (tokens/s). Decode: greedy, {a.new_tokens} new tokens after a "
          f"{a.decode_prompt_len}-token prompt = {a.new_tokens - 1} one-token calls (tokens/s). dsv3: best of "
          f"{a.repeats} processes (prefill after {a.warmup} untimed pass(es) in the process, `generate --warmup`); "
          f"HF: best of {a.hf_repeats} after a warm-up, experts_implementation="
          f"`{a.hf_experts}`, attn_implementation=`{a.hf_attn}`. GB/s = decode tokens/s x weight bytes one "
          f"token reads in the *stored* dtype (HF rows: in the dtype it computes in). Peak RSS in GB.\n")
        hdr = "| engine | threads | " + " | ".join(f"prefill {P} tok/s" for P in a.prompt_lens) + \
              " | decode tok/s | eff. weight GB/s | peak RSS decode | peak RSS prefill " + str(P2) + " |"
        w(hdr)
        w("|" + "---|" * (hdr.count("|") - 1))
        for r in rows:
            w(f"| {r['name']} | {r['threads']} | " + " | ".join(f"{r['pre'][P]:.1f}" for P in a.prompt_lens) +
              f" | {r['dec']:.2f} | {r['gbs']:.2f} | {fmt_gb(r['rss_dec'])} | {fmt_gb(r['rss_pre'])} |")
        w("")

        f32, bf = dsv3_row("f32", T), dsv3_row("bf16", T)
        w("## Targets (issue \"Fast and bounded\"), at --threads " + str(T) + "\n")
        w("| target | measured | |")
        w("|---|---|---|")
        tg = []
        if "f32/float32" in H:
            hf = H["f32/float32"]
            r = f32["dec"] / hf["decode_tokens_per_s"]
            tg.append(("dsv3 f32 decode >= 2x HF f32 decode", f"{r:.2f}x ({f32['dec']:.2f} vs {hf['decode_tokens_per_s']:.2f} tok/s)", r >= 2))
            r = f32["pre"][P2] / hf["prefill_tokens_per_s"][str(P2)]
            tg.append((f"dsv3 f32 prefill {P2} >= 1.2x HF", f"{r:.2f}x ({f32['pre'][P2]:.1f} vs {hf['prefill_tokens_per_s'][str(P2)]:.1f} tok/s)", r >= 1.2))
        if sg:
            bw = sgemv_bw(sg, "stream", T)
            if bw:
                r = f32["gbs"] * 1e9 / bw
                tg.append(("dsv3 f32 effective bandwidth >= 70% of sgemv (stream, lm_head shape)",
                           f"{r:.0%} ({f32['gbs']:.2f} of {bw / 1e9:.2f} GB/s)", r >= 0.7))
        r = bf["dec"] / f32["dec"]
        tg.append(("dsv3 bf16 decode >= 1.3x dsv3 f32 decode", f"{r:.2f}x ({bf['dec']:.2f} vs {f32['dec']:.2f} tok/s)", r >= 1.3))
        for dt, b in sorted(R.get("bounded", {}).items()):
            tg.append((f"dsv3 {dt} decode peak RSS within 10% of weights touched + cache (--prefault off)",
                       f"{b['ratio']:.3f}x ({b['peak_rss_bytes'] / 1e6:.0f} MB vs {b['touched']['bytes'] / 1e6:.0f} + "
                       f"{b['kv_cache_bytes'] / 1e6:.2f} MB)", b["ratio"] <= 1.10))
        for t_, mv, ok in tg:
            w(f"| {t_} | {mv} | {'met' if ok else '**not met**'} |")
        w("")
        bw = sgemv_bw(sg, "stream", T) if sg else None
        if bw:
            w(f"Decode ceiling if every weight byte came from DRAM at the sgemv stream rate ({bw / 1e9:.2f} GB/s, "
              f"{T} threads): f32 {bw / W['f32']['bytes']:.1f} tok/s, bf16 {bw / W['bf16']['bytes']:.1f} tok/s"
              + (f"; 2x HF f32 decode needs {2 * H['f32/float32']['decode_tokens_per_s']:.1f} tok/s"
                 if "f32/float32" in H else "") + ".\n")
        S["targets"] = [dict(target=t_, measured=mv, met=ok) for t_, mv, ok in tg]

        w("## Ratios\n")
        w("| ratio | " + " | ".join(f"prefill {P}" for P in a.prompt_lens) + " | decode |")
        w("|---|" + "---|" * (len(a.prompt_lens) + 1))
        for key, label, d in (("f32/float32", "dsv3 f32 / HF f32-ckpt float32", f32),
                              ("bf16/bfloat16", "dsv3 bf16 / HF bf16-ckpt bfloat16", bf),
                              ("bf16/float32", "dsv3 bf16 / HF bf16-ckpt float32", bf)):
            if key in H:
                h = H[key]
                w(f"| {label} | " + " | ".join(f"{d['pre'][P] / h['prefill_tokens_per_s'][str(P)]:.2f}" for P in a.prompt_lens)
                  + f" | {d['dec'] / h['decode_tokens_per_s']:.2f} |")
        w(f"| dsv3 bf16 / dsv3 f32 | " + " | ".join(f"{bf['pre'][P] / f32['pre'][P]:.2f}" for P in a.prompt_lens)
          + f" | {bf['dec'] / f32['dec']:.2f} |")
        if len(a.sweep_threads) > 1:
            t0, t1 = a.sweep_threads[0], a.sweep_threads[-1]
            for dt in ("f32", "bf16"):
                x, y = dsv3_row(dt, t0), dsv3_row(dt, t1)
                w(f"| dsv3 {dt}: {t1} threads / {t0} | " + " | ".join(f"{y['pre'][P] / x['pre'][P]:.2f}" for P in a.prompt_lens)
                  + f" | {y['dec'] / x['dec']:.2f} |")
        w("")

        w("## Bit-identity across thread counts (" + ",".join(map(str, a.sweep_threads)) + ")\n")
        for dt, v in R["thread_identity"].items():
            w(f"- dsv3 {dt}: generated_ids identical: **{v['generated_ids_identical']}**; "
              f"`forward` logits .npy (128 tokens) byte-identical: **{v['forward_npy_identical']}** "
              f"(sha256 {list(v['forward_sha256'].values())[0][:16]}...)")
        for key, h in H.items():
            if "check" in h:
                c = h["check"]
                ours = D[f"{key.split('/')[0]}/t{T}"]["decode"]["generated_ids"]
                same = sum(x == y for x, y in zip(ours, h["generated_ids"]))
                w(f"- HF {key} vs dsv3 logits (128-token prefill): max |diff| {c['max_abs_diff']:.3g} "
                  f"(max |logit| {c['max_abs_ref']:.3g}), argmax agreement {c['argmax_agree']:.1%}; "
                  f"greedy decode: first {next((i for i, (x, y) in enumerate(zip(ours, h['generated_ids'])) if x != y), len(ours))} "
                  f"of {len(ours)} ids agree ({same} equal overall)")
        w("")

        if R.get("hf_impl_sweep"):
            w("## HF implementation sweep (f32 checkpoint, float32, prefill 128, decode 16 new tokens, 1 run)\n")
            w("| attn_implementation | experts_implementation | prefill 128 tok/s | decode tok/s | max abs diff vs dsv3 logits | argmax agree |")
            w("|---|---|---|---|---|---|")
            for x in R["hf_impl_sweep"]:
                if "error" in x:
                    w(f"| {x['attn']} | {x['experts']} | error: {x['error'][-120:]} | | | |")
                else:
                    w(f"| {x['attn']} | {x['experts']} | {x['prefill128']:.1f} | {x['decode']:.2f} | {x['max_abs_diff']:.3g} | {x['argmax_agree']:.0%} |")
            w("")

        w("## Weights read per decoded token\n")
        w("bytes = embedding row (embed bytes / vocab) + every attention projection and norm + dense MLPs + "
          "router (weight, bias) + shared expert + k/E x routed-expert bytes of each MoE layer (k = "
          "num_experts_per_tok = 6, E = 64) + final norm + lm_head, each in its stored dtype (from the "
          "safetensors headers).\n")
        w("| checkpoint | per token (MB) | embedding row | attention | dense MLP | router | shared expert | routed (k/E) | lm_head | norms | whole file (MB) |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")
        for dt, v in W.items():
            p = v["parts"]
            w(f"| mid-{dt} ({'/'.join(v['dtypes'])}) | {v['bytes'] / 1e6:.1f} | " + " | ".join(
                f"{p[k] / 1e6:.3f}" for k in ("embedding_row", "attention", "dense_mlp", "router", "shared_expert",
                                              "routed_experts", "lm_head", "norms")) + f" | {v['file_bytes'] / 1e6:.1f} |")
        w("")

        w("## Peak RSS vs weights + cache\n")
        w("dsv3 mmaps the checkpoint; with the default `--prefault auto` (these runs: the file fits in half of "
          "the available memory) it maps every page in at load, so its RSS is the whole file plus activations "
          "and the latent cache (with `--prefault off`, only the pages it touches: next section). "
          "HF copies every weight into torch tensors at load (its RSS includes the load).\n")
        w("| run | peak RSS (MB) | weights/token (MB) | whole file (MB) | KV cache (MB) | RSS - file - cache (MB) |")
        w("|---|---|---|---|---|---|")
        for dt in ("f32", "bf16"):
            r = D[f"{dt}/t{T}"]
            for k in [f"prefill{P}" for P in a.prompt_lens] + ["decode"]:
                x = r[k]
                kv = x["timing"]["kv_cache_bytes"]
                w(f"| dsv3 {dt} {k} | {x['peak_rss_bytes'] / 1e6:.0f} | {W[dt]['bytes'] / 1e6:.1f} | "
                  f"{W[dt]['file_bytes'] / 1e6:.0f} | {kv / 1e6:.2f} | {(x['peak_rss_bytes'] - W[dt]['file_bytes'] - kv) / 1e6:.0f} |")
        for key, h in H.items():
            wdt = "bf16" if key.endswith("bfloat16") else "f32"
            mem_file = W["f32"]["file_bytes"] if wdt == "f32" else W["bf16"]["file_bytes"]
            w(f"| HF {key} (whole process) | {h['peak_rss_bytes'] / 1e6:.0f} | {W[wdt]['bytes'] / 1e6:.1f} | "
              f"{mem_file / 1e6:.0f} (in {h['dtype']}) | - | {(h['peak_rss_bytes'] - mem_file) / 1e6:.0f} |")
        w("")

        if R.get("bounded"):
            w("## Bounded decode: peak RSS vs the weights the run touched\n")
            w("The same decode (prompt and new tokens as above) with `--prefault off`, so weight pages come in "
              "only when first read. Weights touched = the embedding rows of the distinct ids, every other tensor but the "
              "routed experts, plus each MoE "
              "layer's experts that some position of the run chose (union of `dsv3 trace` topk_ids over all "
              "positions). The headline runs above use the default `--prefault auto`, which maps the whole "
              "file at load when it fits in half of the available memory.\n")
            w("| checkpoint | positions | experts used per MoE layer | weights touched (MB) | latent cache (MB) | "
              "peak RSS (MB) | RSS / (touched + cache) | decode tok/s |")
            w("|---|---|---|---|---|---|---|---|")
            for dt, b in sorted(R["bounded"].items()):
                t = b["touched"]
                used = sorted(t["experts_used"].values())
                w(f"| {dt} | {b['positions']} | {used[0]}-{used[-1]} of {t['n_routed_experts']} | "
                  f"{t['bytes'] / 1e6:.0f} | {b['kv_cache_bytes'] / 1e6:.2f} | {b['peak_rss_bytes'] / 1e6:.0f} | "
                  f"{b['ratio']:.3f} | {b['decode_tokens_per_s']:.2f} |")
            w("")

        if sg:
            w("## sgemv (OpenBLAS, f32, y = W x) - the achievable weight bandwidth\n")
            w("`stream`: cycles through >= 1 GiB of copies so W comes from DRAM (what decode does: the mid f32 "
              "model is bigger than the LLC); `hot`: the same W every call (fits a large L3: an upper bound).\n")
            w("| variant | M x K | threads | GB/s | ms/call |")
            w("|---|---|---|---|---|")
            for r in sg["rows"]:
                w(f"| {r['variant']} | {r['M']}x{r['K']} | {r['threads']} | {r['bytes_per_second'] / 1e9:.2f} | {r['ms']:.3f} |")
            w("")
            w("dsv3 effective weight bandwidth as % of sgemv stream (lm_head shape, same threads):\n")
            for th in a.sweep_threads:
                bw = sgemv_bw(sg, "stream", th)
                for dt in ("f32", "bf16"):
                    r = dsv3_row(dt, th)
                    if bw:
                        w(f"- {dt} t{th}: {r['gbs']:.2f} GB/s = {r['gbs'] * 1e9 / bw:.0%} of {bw / 1e9:.2f} GB/s"
                          + (" (bf16 reads half the bytes per weight)" if dt == "bf16" else ""))
            w("")

    if "long_context" in R:
        lc = R["long_context"]
        w("## Long context\n")
        real = lc["deepseek_v3_latent_cache"]
        w(f"DeepSeek-V3 latent cache (61 layers x (kv_lora_rank 512 + qk_rope 64) = 576 values/token/layer): "
          f"f32 {real['f32']['bytes_per_token']:,} B/token = {real['f32']['bytes_at_163840'] / 2**30:.2f} GiB at 163,840 tokens; "
          f"bf16 {real['bf16']['bytes_per_token']:,} B/token = {real['bf16']['bytes_at_163840'] / 2**30:.2f} GiB.\n")
        if "run" in lc:
            t = lc["run"]
            w(f"- {t['how']}: {t['prefill_tokens']} prompt tokens in chunks of {t['chunk']}, then "
              f"{t['decode_calls']} one-token decode calls at positions {t['decode_positions'][0]}-"
              f"{t['decode_positions'][1]}; {t['wall_s']:.0f} s, peak RSS {t['peak_rss_bytes'] / 1e6:.0f} MB, "
              f"latent cache {t['kv_cache_bytes'] / 1e6:.1f} MB ({t['kv_bytes_per_token']} B/token; formula checked "
              f"against generate's kv_cache_bytes: {lc['kv_bytes_formula_check']}; at 163,840 tokens: "
              f"{t['kv_cache_bytes_at_163840'] / 1e6:.1f} MB). Logits {t['logits_shape']}, last row finite: "
              f"{t['last_row_finite']}.")
            w("")
    if "long_context" in R and "tiny_run" in R["long_context"]:
        lc = R["long_context"]
        t = lc["tiny_run"]
        for at in t["attempts"]:
            w(f"- Wanted {at['L']} ids (last call at position {at['L'] - 1}): **not possible through the CLI**: {at['error']}.")
        w(f"- Ran: tiny preset ({lc['tiny_config_override']}), `forward --mode prefill --chunk {t['chunk']}` on "
          f"{t['ids']} ids: {t['ids'] // t['chunk']} chunks of {t['chunk']} then a one-token call at position "
          f"{t['last_position']}; {t['wall_s']:.0f} s, peak RSS {t['peak_rss_bytes'] / 1e6:.0f} MB "
          f"(includes the [L, vocab] logits the command writes: {t['logits_shape']}), latent cache "
          f"{t['kv_cache_bytes'] / 1e6:.1f} MB ({t['kv_bytes_per_token']} B/token; formula checked against "
          f"generate's kv_cache_bytes: {lc['kv_bytes_formula_check']}); at 163,840 tokens: "
          f"{t['kv_cache_bytes_at_163840'] / 1e6:.1f} MB. Last row finite: {t['last_row_finite']}.")
        w("")
    R["_summary"] = S
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
