#!/usr/bin/env python3
"""dsv3 in every stored format beside llama.cpp at the same bits, in one run of interleaved rounds.

    python3 benchmarks/bench_formats.py --llama-bench LLAMA/build/bin/llama-bench --gguf-py LLAMA/gguf-py \\
        [--rounds 3] [--threads 2] [--models-dir build/bench/formats] [--tag mid]

What runs, on the `mid` preset (`dsv3 make-model --preset mid --seed 7`, hidden 1024, 8 layers,
64 experts top-6, vocab 32000):
  * dsv3 in f32, bf16, fp8 (e4m3, 128x128 blocks), awq (int4 g128, F16 embedding and head),
    mlx4, mlx5, mlx8 (MLX affine g64, the embedding and head quantized too) — each checkpoint made
    by make-model from the same seed;
  * llama.cpp (built by you, outside this repository) on the same f32 weights, converted with
    `gguf_from_hf.py` (llama.cpp's gguf-py) and quantized with its own `llama-quantize --pure` to
    F32, BF16, Q8_0 and Q4_0 (pure: every matrix in that type, the head included, as in the MLX
    checkpoints). Q4_0 stores 4.5 bits per weight like MLX 4-bit at group 64; Q8_0 8.5, like FP8's one
    byte plus block scales. dsv3's fp8 and awq checkpoints keep the embedding and the head in 16 bits
    (BF16 as DeepSeek's FP8 release; F16 as AutoAWQ): on the mid model the head is a third of the weights
    one token reads, so they are also set beside `Q8_0+BF16` and `Q4_0+F16`, the same quantization with
    the embedding and head in BF16 / F16 (`--token-embedding-type`, `--output-tensor-type`): the same
    bytes per token as the dsv3 file within the scales' share.
Each round measures every engine/format once, in an order that rotates by one each round:
  * prefill: tokens/s of one call on `--prompt-len` (512) tokens — dsv3 `generate --max-new-tokens 1
    --warmup 1` (`prefill_tokens_per_s`); llama.cpp `llama-bench -p 512 -n 0 -r 1` (its own warm-up
    run first);
  * decode: tokens/s of `--new-tokens` (64) one-token calls after a context of `--decode-prompt-len`
    (32) tokens — dsv3 `generate` after a prompt of that length (`decode_tokens_per_s`); llama.cpp
    `llama-bench -p 0 -n 64 -d 32 -r 1` (its context filled to that depth first, untimed). A long
    context (`--decode-prompt-len 2048`) measures attention over the cache as well as the weights;
  * peak RSS of the decode process (`/usr/bin/time -v`).
The figure is the median over rounds; each ratio (dsv3 / llama.cpp, a format's GB/s over bf16's) is
also taken round by round and given as its median with the lowest and highest round, which shows how
far a host's drift between rounds moves it; the last line gives the same ratios from each side's best
round (load from other processes only slows a round down). **Effective GB/s** = stored bytes one decoded token reads x
decode tokens/s, the bytes counted from the files' headers: the embedding's one row (bytes/vocab),
every attention, norm, dense-MLP, router, shared-expert and lm_head tensor whole, routed experts at
k/E of their bytes (k = 6, E = 64), scales, zero points and biases included; the same rule on the
GGUF tensors (token_embd / vocab, `*_exps` at k/E).

The header names the OpenBLAS kernels dsv3's prefill GEMMs ran on (`generate --json`'s `timing.blas_core`) and
whether `OPENBLAS_CORETYPE` in the environment chose them: dsv3 keeps a user's setting, and an environment
that pins `Haswell` on an AVX-512 machine slows its prefill (Zen 5 EPYC, mid bf16: 1.4x against OpenBLAS's
own choice there, Cooperlake).
It also names dsv3's decode kernels (`timing.decode_kernels`): `avx512`, `avx2`, `plain`, or `avx2 (avx512
not preferred)` on a CPU that has AVX-512 but runs it as two 256-bit halves (AMD Zen 4: cpu::avx512_preferred),
and AWQ's int4 kernel, which is chosen apart (`timing.awq_decode_kernel`: AVX-512 transposes on Zen 4).

Needs: the Python standard library; for the conversion, a Python with numpy (`--python`, default
`.venv/golden/bin/python` of `bash scripts/venv.sh golden` if present, else this one) and the
`--gguf-py` directory. Without `--llama-bench`, only dsv3 runs.

Writes benchmarks/results/formats-TAG-DATE.{md,json}. `--render FILE.json` measures nothing and writes the
.md beside a saved results JSON again, in the current tables.
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from bench_model import Quiet, ids_arg, log, make_ids, run_timed, touched_bytes_per_token, write_results  # noqa: E402

DSV3_FORMATS = ["f32", "bf16", "fp8", "awq", "mlx4", "mlx5", "mlx8"]
LLAMA_TYPES = ["F32", "BF16", "Q8_0", "Q4_0", "Q8_0+BF16", "Q4_0+F16"]
# the comparisons the issue asks for: dsv3 format -> llama.cpp type at the same bits; then the same for the
# checkpoints whose embedding and head stay in 16 bits (fp8 BF16, as DeepSeek's own; awq F16), beside a
# llama.cpp file laid out the same way ("TYPE+HEAD": below)
PAIRS = [("f32", "F32"), ("bf16", "BF16"), ("fp8", "Q8_0"), ("mlx8", "Q8_0"), ("mlx4", "Q4_0"), ("awq", "Q4_0"),
         ("fp8", "Q8_0+BF16"), ("awq", "Q4_0+F16")]


def quantize_args(t):
    """(options, type) for llama-quantize from a type of --llama-types: "TYPE" (every matrix in it, the
    embedding and head included: --pure alone) or "TYPE+HEAD" (every matrix but the embedding and the head
    in TYPE, those two in HEAD: --token-embedding-type / --output-tensor-type as well)."""
    base, _, head = t.partition("+")
    extra = ["--token-embedding-type", head.lower(), "--output-tensor-type", head.lower()] if head else []
    return extra, base

GGUF_BYTES = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from gguf import GGUFReader
r = GGUFReader(sys.argv[2])
print(json.dumps({t.name: int(t.n_bytes) for t in r.tensors}))
"""


def gguf_bytes_per_token(a, path, cfg):
    out = subprocess.run([a.python, "-c", GGUF_BYTES, a.gguf_py, path], capture_output=True, text=True, check=True)
    ts = json.loads(out.stdout)
    E, k, V = cfg["n_routed_experts"], cfg["num_experts_per_tok"], cfg["vocab_size"]
    total = 0.0
    for name, nb in ts.items():
        total += nb / V if name.startswith("token_embd") else nb * k / E if "_exps" in name else nb
    return dict(bytes=total, file_bytes=sum(ts.values()))


def make_models(a):
    os.makedirs(a.models_dir, exist_ok=True)
    dsv3 = {}
    for f in a.formats:
        d = os.path.join(a.models_dir, f"{a.preset}-{f}")
        if not os.path.exists(os.path.join(d, "config.json")):
            log(f"making {d}")
            subprocess.run([a.dsv3, "make-model", "--out", d, "--preset", a.preset, "--seed", str(a.seed),
                            "--dtype", f], check=True, capture_output=True)
        dsv3[f] = d
    gguf = {}
    if a.llama_bench:
        src = dsv3.get("f32") or os.path.join(a.models_dir, f"{a.preset}-f32")
        if not os.path.exists(os.path.join(src, "config.json")):
            subprocess.run([a.dsv3, "make-model", "--out", src, "--preset", a.preset, "--seed", str(a.seed),
                            "--dtype", "f32"], check=True, capture_output=True)
        f32 = os.path.join(a.models_dir, f"{a.preset}-F32.gguf")
        if not os.path.exists(f32):
            log(f"converting {src} -> {f32}")
            subprocess.run([a.python, os.path.join(HERE, "gguf_from_hf.py"), "--gguf-py", a.gguf_py, "--model", src,
                            "--out", f32, "--outtype", "f32"], check=True)
        for t in a.llama_types:
            g = os.path.join(a.models_dir, f"{a.preset}-{t}.gguf")
            if t != "F32" and not os.path.exists(g):
                extra, base = quantize_args(t)
                log(f"llama-quantize --pure {' '.join(extra)} {base}")
                tmp = g + ".part"  # (renamed into place: an interrupted run leaves no file taken as whole)
                subprocess.run([a.llama_quantize, "--pure"] + extra + [f32, tmp, base, str(a.threads)], check=True,
                               capture_output=True)
                os.replace(tmp, g)
            gguf[t] = f32 if t == "F32" else g
    return dsv3, gguf


def dsv3_run(a, model, ids, new_tokens, key, blas_cores=None, kernels=None, awq_kernels=None):
    cmd = [a.dsv3, "--threads", str(a.threads), "generate", "--model", model, "--ids", ids_arg(ids),
           "--max-new-tokens", str(new_tokens), "--json"] + (["--warmup", "1"] if new_tokens == 1 else [])
    out, rss, _ = run_timed(cmd)
    timing = json.loads(out.strip().splitlines()[-1])["timing"]
    if blas_cores is not None and timing.get("blas_core"):
        blas_cores.add(timing["blas_core"])  # the OpenBLAS kernels dsv3's prefill GEMMs ran on
    if kernels is not None and timing.get("decode_kernels"):
        kernels.add(timing["decode_kernels"])  # dsv3's decode kernels (AVX-512 / AVX2 / plain)
    if awq_kernels is not None and timing.get("awq_decode_kernel"):
        awq_kernels.add(timing["awq_decode_kernel"])  # AWQ's int4 kernel, chosen apart
    return timing[key], rss


def llama_run(a, path, prompt, gen, depth=0):
    cmd = [a.llama_bench, "-m", path, "-t", str(a.threads), "-p", str(prompt), "-n", str(gen), "-r", "1", "-o", "json"]
    if depth:
        cmd += ["-d", str(depth)]
    out, rss, _ = run_timed(cmd)
    res = json.loads(out)
    a.llama_build = {k: res[0].get(k) for k in ("build_commit", "build_number", "cpu_info", "backends", "type_k",
                                                "flash_attn", "repack")}
    return res[0]["avg_ts"], rss


def cpu_model():
    """The CPU's name as /proc/cpuinfo gives it, with its family and model (results differ by host: AMD EPYC
    Zen 4 and Zen 5 and Intel Xeon hosts all serve this project's machines, and a VM may name them all
    'AMD EPYC')."""
    fields = {}
    try:
        for line in open("/proc/cpuinfo"):
            if ":" in line:
                k, v = (x.strip() for x in line.split(":", 1))
                fields.setdefault(k, v)
    except OSError:
        pass
    name = fields.get("model name", "unknown")
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsv3", default=os.path.join(ROOT, "build", "dsv3"))
    ap.add_argument("--llama-bench", help="llama.cpp's llama-bench (built outside this repository)")
    ap.add_argument("--llama-quantize", help="default: llama-quantize beside --llama-bench")
    ap.add_argument("--gguf-py", help="llama.cpp's gguf-py directory (for the conversion)")
    golden = os.path.join(ROOT, ".venv", "golden", "bin", "python")
    ap.add_argument("--python", default=golden if os.path.exists(golden) else sys.executable,
                    help="a Python with numpy, for gguf_from_hf.py")
    ap.add_argument("--models-dir", default="build/bench/formats")
    ap.add_argument("--preset", default="mid")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--formats", default=",".join(DSV3_FORMATS))
    ap.add_argument("--llama-types", default=",".join(LLAMA_TYPES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--decode-prompt-len", type=int, default=32)
    ap.add_argument("--max-busy", type=float, default=0.25)
    ap.add_argument("--max-wait", type=float, default=120)
    ap.add_argument("--tag", default="mid")
    ap.add_argument("--llama-build-note", default="",
                    help="how llama.cpp was built (flags, what was turned off and why): written into the results")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--render", metavar="JSON",
                    help="measure nothing: write the .md beside a results JSON of this script again, in today's tables")
    a = ap.parse_args()
    if a.render:
        R = json.load(open(a.render))
        R.setdefault("tag", os.path.basename(a.render).removeprefix("formats-").rsplit("-", 3)[0])
        md = render(R).replace(ROOT + os.sep, "")  # (as write_results writes it)
        with open(os.path.splitext(a.render)[0] + ".md", "w") as f:
            f.write(md)
        print(md)
        return
    a.formats = [f for f in a.formats.split(",") if f]
    a.llama_types = [t for t in a.llama_types.split(",") if t] if a.llama_bench else []
    if a.llama_bench:
        if not a.gguf_py:
            ap.error("--llama-bench needs --gguf-py (llama.cpp's gguf-py directory, for the conversion)")
        a.llama_quantize = a.llama_quantize or os.path.join(os.path.dirname(a.llama_bench), "llama-quantize")
        for p in (a.llama_bench, a.llama_quantize):
            if not os.access(p, os.X_OK):
                ap.error(f"{p}: not an executable")

    dsv3_models, gguf_models = make_models(a)
    cfg = json.load(open(os.path.join(next(iter(dsv3_models.values())), "config.json")))
    vocab = cfg["vocab_size"]
    pre_ids, dec_ids = make_ids(a.prompt_len, vocab), make_ids(a.decode_prompt_len, vocab)
    entries = [("dsv3", f, dsv3_models[f]) for f in a.formats] + [("llama.cpp", t, gguf_models[t]) for t in a.llama_types]
    bytes_tok = {}
    for eng, name, path in entries:
        bytes_tok[(eng, name)] = (touched_bytes_per_token(path) if eng == "dsv3" else
                                  gguf_bytes_per_token(a, path, cfg))
    quiet = Quiet(a.max_busy, a.max_wait)
    rounds, blas_cores, kernels, awq_kernels = [], set(), set(), set()
    for r in range(a.rounds):
        res = {}
        order = entries[r % len(entries):] + entries[:r % len(entries)]
        for eng, name, path in order:
            quiet.wait(f"{eng} {name}")
            if eng == "dsv3":
                pre, _ = dsv3_run(a, path, pre_ids, 1, "prefill_tokens_per_s", blas_cores)
                dec, rss = dsv3_run(a, path, dec_ids, a.new_tokens, "decode_tokens_per_s", kernels=kernels,
                                    awq_kernels=awq_kernels if name == "awq" else None)
            else:
                pre, _ = llama_run(a, path, a.prompt_len, 0)
                dec, rss = llama_run(a, path, 0, a.new_tokens, a.decode_prompt_len)
            res[f"{eng}:{name}"] = dict(prefill=pre, decode=dec, rss=rss)
            log(f"  round {r + 1}/{a.rounds} {eng:9s} {name:5s} prefill {pre:8.1f}  decode {dec:7.1f} tok/s")
        rounds.append(res)

    med = {}
    for eng, name, _ in entries:
        key = f"{eng}:{name}"
        b = bytes_tok[(eng, name)]["bytes"]
        dec = statistics.median(x[key]["decode"] for x in rounds)
        med[key] = dict(engine=eng, format=name, prefill=statistics.median(x[key]["prefill"] for x in rounds),
                        decode=dec, bytes_per_token=b, file_bytes=bytes_tok[(eng, name)]["file_bytes"],
                        gb_s=b * dec / 1e9, peak_rss=max(x[key]["rss"] or 0 for x in rounds),
                        decode_rounds=[x[key]["decode"] for x in rounds],
                        prefill_rounds=[x[key]["prefill"] for x in rounds])
    R = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), tag=a.tag, preset=a.preset, seed=a.seed,
             threads=a.threads, rounds=a.rounds, prompt_len=a.prompt_len, new_tokens=a.new_tokens,
             decode_prompt_len=a.decode_prompt_len, dsv3=a.dsv3, llama_cpp=getattr(a, "llama_build", None), median=med,
             raw=rounds, quiet_waited_s=quiet.waited_s, cpu=cpu_model(), llama_build_note=a.llama_build_note,
             blas_core=", ".join(sorted(blas_cores)), openblas_coretype_env=os.environ.get("OPENBLAS_CORETYPE"),
             decode_kernels=", ".join(sorted(kernels)), awq_decode_kernel=", ".join(sorted(awq_kernels)))
    write_results(a.out_dir, f"formats-{a.tag}", R, render(R))


def spread(values):
    """'median (min–max)' of per-round values."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def render(R):
    """The results' markdown, from the results dict alone (so that `--render` can redo it for a saved JSON).
    Besides the medians, each ratio is also taken round by round (both sides measured in the same round,
    minutes apart at most) and given as its median with the smallest and largest round: on a host whose
    speed drifts between rounds this is the steadier figure, and the range shows how far one run can be
    trusted."""
    med, rounds, lb = R["median"], R["raw"], R.get("llama_cpp")
    ref = med.get("dsv3:bf16")

    def per_round(k1, k2, field, scale=1.0):
        return [scale * x[k1][field] / x[k2][field] for x in rounds if x[k2][field]]

    L = [f"# dsv3 formats beside llama.cpp: {R.get('tag', '')} ({R['date']})\n",
         f"`{R['preset']}` preset (seed {R['seed']}), {R['threads']} threads, {R['rounds']} interleaved rounds, medians. "
         f"Prefill: one call on {R['prompt_len']} tokens. Decode: {R['new_tokens']} one-token calls after "
         f"{R['decode_prompt_len']} tokens of context (dsv3: a prompt of that length; llama-bench: `-d "
         f"{R['decode_prompt_len']}`). GB/s: stored bytes one decoded token reads x decode tokens/s (scales, zero points, biases included; routed experts at k/E; the latent cache not counted). "
         "`vs bf16`: that GB/s over dsv3 bf16's in the same run. "
         f"CPU: {R['cpu']}."
         + (f" dsv3's prefill GEMMs: OpenBLAS's {R['blas_core']} kernels"
            + (f" (OPENBLAS_CORETYPE={R['openblas_coretype_env']} set in the environment)." if R.get("openblas_coretype_env")
               else " (its own choice for this CPU).") if R.get("blas_core") else "")
         + (f" dsv3's decode kernels: {R['decode_kernels']}" + (f" (AWQ's int4 kernel: {R['awq_decode_kernel']})"
            if R.get("awq_decode_kernel") else "") + "." if R.get("decode_kernels") else "")
         + (f" llama.cpp: commit {lb['build_commit']}, {lb['backends']} backend, "
            "llama-bench defaults (KV cache f16, flash attention auto, weight repacking on)."
            + (f" Build: {R['llama_build_note']}" if R.get("llama_build_note") else "") if lb else "") + "\n",
         "| engine | format | file MB | MB read / token | prefill tok/s | decode tok/s | GB/s | vs bf16 | peak RSS MB |",
         "|---|---|---|---|---|---|---|---|---|"]
    for key, m in med.items():
        vs = f"{m['gb_s'] / ref['gb_s']:.2f}" if ref and m["engine"] == "dsv3" else "-"
        L.append(f"| {m['engine']} | {m['format']} | {m['file_bytes'] / 1e6:.0f} | {m['bytes_per_token'] / 1e6:.1f} | "
                 f"{m['prefill']:.1f} | {m['decode']:.1f} | {m['gb_s']:.1f} | {vs} | {m['peak_rss'] / 1e6:.0f} |")
    if ref:
        L += ["", "`vs bf16` round by round (each format's GB/s over dsv3 bf16's in the same round), median (lowest–highest "
              "round): " + ", ".join(
                  f"{m['format']} " + spread(per_round(k, "dsv3:bf16", "decode", m["bytes_per_token"] / ref["bytes_per_token"]))
                  for k, m in med.items() if m["engine"] == "dsv3" and k != "dsv3:bf16")]
    pairs = [(d, l) for d, l in PAIRS if f"dsv3:{d}" in med and f"llama.cpp:{l}" in med]
    if pairs:
        L += ["", "Same bits, dsv3 / llama.cpp: the ratio of the medians, and the ratio round by round (median, lowest–highest):", "",
              "| dsv3 | llama.cpp | decode ratio | decode, round by round | prefill ratio | prefill, round by round |",
              "|---|---|---|---|---|---|"]
        for d, l in pairs:
            kd, kl = f"dsv3:{d}", f"llama.cpp:{l}"
            x, y = med[kd], med[kl]
            L.append(f"| {d} | {l} | {x['decode'] / y['decode']:.2f} | {spread(per_round(kd, kl, 'decode'))} | "
                     f"{x['prefill'] / y['prefill']:.2f} | {spread(per_round(kd, kl, 'prefill'))} |")
    if ref:
        L += ["", "Prefill of each format over dsv3 bf16's: " +
              ", ".join(f"{m['format']} {m['prefill'] / ref['prefill']:.2f}" for m in med.values() if m["engine"] == "dsv3")]
    L += ["", "Per round (decode tok/s): " + "; ".join(
        f"{k} " + "/".join(f"{v:.0f}" for v in m["decode_rounds"]) for k, m in med.items())]
    # A neighbour's load on a shared host only ever slows a round down, so each side's best round is
    # the steadiest estimate of what it can do (both sides get the same number of tries).
    best = {k: max(m["decode_rounds"]) for k, m in med.items()}
    parts = []
    if ref:
        parts.append("GB/s over dsv3 bf16's: " + ", ".join(
            f"{m['format']} {best[k] * m['bytes_per_token'] / (best['dsv3:bf16'] * ref['bytes_per_token']):.2f}"
            for k, m in med.items() if m["engine"] == "dsv3" and k != "dsv3:bf16"))
    if pairs:
        parts.append("dsv3 / llama.cpp decode: " + ", ".join(
            f"{d}/{l} {best[f'dsv3:{d}'] / best[f'llama.cpp:{l}']:.2f}" for d, l in pairs))
    if parts and R["rounds"] > 1:
        L += ["", f"Best round of each ({R['rounds']} rounds; another process's load only slows a round): "
              + "; ".join(parts)]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
