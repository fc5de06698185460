#!/usr/bin/env python3
"""Real scale: decode on a checkpoint with DeepSeek-V3's real dimensions in one of the published
formats (a few layers of it), and the extrapolation, arithmetic shown, to the real 671B checkpoint.

    python3 benchmarks/bench_fulldims.py [--dtype fp8] [--model DIR] [--layers 4] [--new-tokens 8]

1. `dsv3 make-model --preset full-dims --dtype DTYPE --layers N` (if DIR has no config.json): layers
   0..2 dense, the rest MoE with 256 experts, real hidden/attention/vocab sizes. fp8 (the default):
   FP8 e4m3 weights with 128x128 block scales, BF16 embedding/lm_head/norms/router — the official
   checkpoint's layout; awq: AutoAWQ GEMM int4 (group 128), F16 embedding/lm_head; mlx4/5/8: mlx-lm's
   affine layout (embedding and lm_head quantized too); bf16. DIR defaults to build/bench/fulldims
   (fp8) or build/bench/fulldims-DTYPE; an existing DIR in another format is refused.
2. `dsv3 --prefault off generate` of a short prompt and N new tokens: per-token decode time and peak
   RSS (weights paged in as used), and the run's touched weights (its routing, via `dsv3 trace`).
   The checkpoint's files are read once before, when they fit in the memory available, so that the
   weights come from the page cache and not the disk; the report gives the run's major page faults.
3. Bytes one decoded token reads, per kind of layer, in the stored dtype; the real model = the same
   embedding row + lm_head + 3 dense layers + 58 MoE layers (k = 8 of 256 experts each).
   Seconds per token at a bandwidth B = bytes per token / B.

Writes benchmarks/results/fulldims-DATE.{md,json} (fp8) or fulldims-DTYPE-DATE.{md,json}.
"""
import argparse
import datetime
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from bench_model import (Quiet, ids_arg, log, make_ids, run_sgemv, run_timed, safetensors_tensors,  # noqa: E402
                         sgemv_bw, touched_bytes_of_run, write_results)

REAL_LAYERS, REAL_DENSE = 61, 3  # DeepSeek-V3: num_hidden_layers, first_k_dense_replace


def layer_bytes(model_dir, cfg):
    """Per layer: whole bytes and bytes one decoded token reads (k/E of the routed experts, which MLX
    stacks as mlp.switch_mlp.*); and the dtype(s) lm_head.weight is stored in."""
    E, k = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
    per = {}
    glob = dict(embedding=0, embedding_row=0, lm_head=0, final_norm=0)
    head_dtypes = set()
    for name, (dtype, _, nb) in safetensors_tensors(model_dir).items():
        m = re.match(r"model\.layers\.(\d+)\.", name)
        if not m:
            if name.startswith("model.embed_tokens."):
                glob["embedding"] += nb
                glob["embedding_row"] += nb / cfg["vocab_size"]
            elif name.startswith("lm_head."):
                glob["lm_head"] += nb
                if name == "lm_head.weight":
                    head_dtypes.add(dtype)
            else:
                glob["final_norm"] += nb
            continue
        L = int(m.group(1))
        if L >= cfg["num_hidden_layers"]:
            continue  # MTP
        d = per.setdefault(L, dict(whole=0, per_token=0))
        d["whole"] += nb
        routed = ".mlp.experts." in name or ".mlp.switch_mlp." in name
        d["per_token"] += nb * k / E if routed else nb
    return glob, per, "/".join(sorted(head_dtypes)) or "?"


DTYPES = ("fp8", "awq", "mlx4", "mlx5", "mlx8", "bf16")
DESCRIBE = {
    "fp8": "FP8 e4m3 weights with 128x128 block scales; BF16 embedding, lm_head, norms, router",
    "awq": "AutoAWQ GEMM int4 weights with F16 scales and int4 zero points per group; F16 embedding and lm_head",
    "mlx4": "MLX affine 4-bit weights (mlx-lm layout, BF16 scales and biases per group), embedding and lm_head too",
    "mlx5": "MLX affine 5-bit weights (mlx-lm layout, BF16 scales and biases per group), embedding and lm_head too",
    "mlx8": "MLX affine 8-bit weights (mlx-lm layout, BF16 scales and biases per group), embedding and lm_head too",
    "bf16": "BF16 weights throughout",
}


def model_dtype(cfg):
    """The format make-model wrote, from config.json: fp8 | awq | mlxN | bf16 (None if not one of those)."""
    q = cfg.get("quantization_config") or {}
    if q.get("quant_method") == "fp8":
        return "fp8"
    if q.get("quant_method") == "awq":
        return "awq"
    m = cfg.get("quantization") or q
    if "bits" in m and "group_size" in m:
        return f"mlx{m['bits']}"
    return "bf16" if cfg.get("torch_dtype") == "bfloat16" else None


def warm_page_cache(model):
    """Reads the checkpoint's files once, so that decode (--prefault off) pages its weights in from the page
    cache and measures memory, not the disk: a checkpoint other runs have pushed out of the cache would
    otherwise be read from disk expert by expert (seen here: full-dims mlx4 decode 0.206 s a token after
    the AWQ checkpoint had been read, 0.101 s with its pages cached). Skipped, with a note, when the files
    are larger than nine tenths of the memory available; the report's major page faults tell either way."""
    files = [os.path.join(model, f) for f in sorted(os.listdir(model)) if f.endswith(".safetensors")]
    size = sum(os.path.getsize(f) for f in files)
    avail = None
    with open("/proc/meminfo") as m:
        for line in m:
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    if avail is not None and size > 0.9 * avail:
        log(f"page cache: {size / 1e9:.1f} GB of weights, {avail / 1e9:.1f} GB available: not read ahead "
            "(decode will read some weights from disk)")
        return False
    log(f"page cache: reading {size / 1e9:.1f} GB of weights once")
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.read(16 << 20):
                pass
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsv3", default=os.path.join(ROOT, "build", "dsv3"))
    ap.add_argument("--dtype", default="fp8", choices=DTYPES, help="the checkpoint's format (make-model --dtype)")
    ap.add_argument("--model", help="checkpoint directory (default build/bench/fulldims, or fulldims-DTYPE)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--bandwidths", default="20,50,100,200,400",
                    help="GB/s to extrapolate at (besides the one measured here)")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--sgemv-bin", default="build/bench/bench_sgemv",
                    help="benchmarks/bench_sgemv.cpp, built here if missing: the machine's stream bandwidth")
    ap.add_argument("--skip-sgemv", action="store_true")
    a = ap.parse_args()
    a.sweep_threads = []

    name = "fulldims" + ("" if a.dtype == "fp8" else f"-{a.dtype}")  # the checkpoint's directory and the results'
    a.model = a.model or os.path.join("build", "bench", name)
    if not os.path.exists(os.path.join(a.model, "config.json")):
        log(f"make-model full-dims {a.dtype} --layers {a.layers} -> {a.model}")
        run_timed([a.dsv3, "make-model", "--preset", "full-dims", "--dtype", a.dtype, "--layers", str(a.layers),
                   "--out", a.model])
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    found = model_dtype(cfg)
    if found != a.dtype:
        sys.exit(f"{a.model}/config.json: a {found or 'other'} checkpoint, not {a.dtype} "
                 f"(--dtype {a.dtype} wants one of its own: another --model, or an empty directory)")
    glob, per, head_dtype = layer_bytes(a.model, cfg)
    dense = [L for L in per if L < cfg["first_k_dense_replace"]]
    moe = [L for L in per if L >= cfg["first_k_dense_replace"]]
    if not dense or not moe:
        sys.exit("need at least one dense and one MoE layer (--layers > first_k_dense_replace)")
    dense_tok, moe_tok = per[dense[0]]["per_token"], per[moe[0]]["per_token"]
    dense_whole, moe_whole = per[dense[0]]["whole"], per[moe[0]]["whole"]
    here_tok = glob["embedding_row"] + glob["lm_head"] + glob["final_norm"] + sum(p["per_token"] for p in per.values())

    ids = make_ids(a.prompt_len, cfg["vocab_size"])
    cached = warm_page_cache(a.model)
    log(f"decode: {a.prompt_len}-token prompt, {a.new_tokens} new tokens, --prefault off, {a.threads} threads")
    run_stats = {}
    out, rss, wall = run_timed([a.dsv3, "--threads", str(a.threads), "--prefault", "off", "generate", "--model",
                                a.model, "--ids", ids_arg(ids), "--max-new-tokens", str(a.new_tokens), "--json"],
                               run_stats)
    j = json.loads(out.strip().splitlines()[-1])
    t = j["timing"]
    s_per_tok = t["decode_s"] / t["decode_calls"]
    log("touched weights of the run (dsv3 trace topk_ids)")
    touched = touched_bytes_of_run(argparse.Namespace(dsv3=a.dsv3), a.model, ids + j["generated_ids"][:-1])
    eff = here_tok / s_per_tok
    stream = None
    if not a.skip_sgemv:  # OpenBLAS sgemv over >= 1 GiB of weight copies, same thread count
        log("sgemv stream bandwidth")
        stream = sgemv_bw(run_sgemv(a, Quiet(0.25, 60)), "stream", a.threads)

    real_tok = glob["embedding_row"] + glob["lm_head"] + glob["final_norm"] + REAL_DENSE * dense_tok + \
        (REAL_LAYERS - REAL_DENSE) * moe_tok
    real_whole = glob["embedding"] + glob["lm_head"] + glob["final_norm"] + REAL_DENSE * dense_whole + \
        (REAL_LAYERS - REAL_DENSE) * moe_whole
    bws = [(f"measured here (dsv3 decode, {a.dtype})", eff)] + [(f"{b} GB/s", float(b) * 1e9) for b in a.bandwidths.split(",")]

    R = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), model=a.model, dtype=a.dtype,
             config_layers=cfg["num_hidden_layers"],
             threads=a.threads, timing=t, wall_s=wall, peak_rss_bytes=rss, touched=touched,
             bytes=dict(global_=glob, dense_layer=dict(whole=dense_whole, per_token=dense_tok),
                        moe_layer=dict(whole=moe_whole, per_token=moe_tok), here_per_token=here_tok,
                        real_per_token=real_tok, real_whole=real_whole),
             effective_bytes_per_s=eff, seconds_per_token=s_per_tok, sgemv_stream_bytes_per_s=stream,
             page_cache_warmed=cached, major_faults=run_stats.get("major_faults"))
    G = 1e9
    L = []
    w = L.append
    w(f"# dsv3 at real scale: full-dims {a.dtype}, {cfg['num_hidden_layers']} layers ({R['date']})\n")
    w(f"Checkpoint `{a.model}`: `dsv3 make-model --preset full-dims --dtype {a.dtype} --layers {cfg['num_hidden_layers']}` — "
      f"DeepSeek-V3's dimensions, stored as {DESCRIBE[a.dtype]}, layers 0..{len(dense) - 1} dense, {len(moe)} MoE "
      f"layer(s) of {cfg['n_routed_experts']} experts; "
      f"{sum(p['whole'] for p in per.values()) / G + (glob['embedding'] + glob['lm_head']) / G:.2f} GB.\n")
    w(f"Run: `dsv3 --threads {a.threads} --prefault off generate --ids <{a.prompt_len} ids> --max-new-tokens "
      f"{a.new_tokens} --json` (weights paged in from the mapping as first used).\n")
    w("| measure | value |")
    w("|---|---|")
    w(f"| prefill of {t['prefill_tokens']} tokens | {t['prefill_s']:.2f} s (includes first-touch page faults) |")
    w(f"| decode | {t['decode_calls']} one-token calls, {s_per_tok:.3f} s per token ({1 / s_per_tok:.2f} tok/s) |")
    w(f"| bytes one decoded token reads (stored dtype) | {here_tok / G:.3f} GB |")
    w(f"| effective weight bandwidth in decode | {eff / G:.2f} GB/s |")
    if stream:
        w(f"| the machine's stream bandwidth (OpenBLAS sgemv over >= 1 GiB, {a.threads} threads) | {stream / G:.2f} GB/s: "
          f"decode reads at {eff / stream:.0%} of it |")
    w(f"| peak RSS | {rss / G:.2f} GB |")
    mf = run_stats.get("major_faults")
    if mf is not None:
        # a major fault on a mapped file reads up to the readahead window (128 KB by default): faults that
        # could have read more than 1% of the weights the run touched mean the disk is in the figures
        disk = mf * (128 << 10) > 0.01 * touched["bytes"]
        w(f"| major page faults (reads from disk: the program, its libraries, weights) | {mf}"
          + ((f" ({'the checkpoint did not fit in the page cache' if not cached else 'pages were evicted'}): "
              "part of the decode time may be the disk's, not memory bandwidth |") if disk else
             ": at most 1% of the weights touched, the rest came from the page cache |"))
    w(f"| weights the run touched (all but routed experts + experts chosen: "
      f"{', '.join(f'layer {k}: {v}' for k, v in touched['experts_used'].items())} of {touched['n_routed_experts']}) | "
      f"{touched['bytes'] / G:.2f} GB |")
    w(f"| peak RSS / touched | {rss / touched['bytes']:.3f} |")
    w("")
    w("## Extrapolation to DeepSeek-V3-0324 (61 layers: 3 dense + 58 MoE, 8 of 256 experts per token)\n")
    w("Decode streams each weight it uses once per token, so seconds per token = bytes per token / memory "
      "bandwidth (the latent cache adds 61 x 576 values per cached position; small next to the weights below "
      "a few thousand positions).\n")
    w("| part | bytes per token | × count | total |")
    w("|---|---|---|---|")
    w(f"| embedding row | {glob['embedding_row'] / 1e3:.1f} KB | 1 | {glob['embedding_row'] / 1e6:.3f} MB |")
    w(f"| dense layer (attention + MLP, as stored: weights, scales, zero points or biases) | {dense_tok / 1e6:.1f} MB | "
      f"{REAL_DENSE} | {REAL_DENSE * dense_tok / G:.3f} GB |")
    w(f"| MoE layer (attention, router, shared expert, 8/256 of the routed experts) | {moe_tok / 1e6:.1f} MB | "
      f"{REAL_LAYERS - REAL_DENSE} | {(REAL_LAYERS - REAL_DENSE) * moe_tok / G:.3f} GB |")
    w(f"| lm_head ({head_dtype}) + final norm | {(glob['lm_head'] + glob['final_norm']) / 1e6:.1f} MB | 1 | "
      f"{(glob['lm_head'] + glob['final_norm']) / G:.3f} GB |")
    w(f"| **per decoded token** | | | **{real_tok / G:.2f} GB** |")
    w(f"| whole checkpoint (same arithmetic with every expert) | | | {real_whole / G:.0f} GB |")
    w("")
    w("| memory bandwidth | seconds per token | tokens/s |")
    w("|---|---|---|")
    for label, bw in bws:
        w(f"| {label}: {bw / G:.1f} GB/s | {real_tok / bw:.2f} | {bw / real_tok:.2f} |")
    w("")
    w(f"RAM: the weights stay mapped in their stored dtype, so a machine with more than {real_whole / G:.0f} GB of "
      f"RAM holds the whole checkpoint in its page cache. With less, the pages of experts not in memory come "
      f"from disk as they are chosen: at most {(REAL_LAYERS - REAL_DENSE) * moe_tok / G:.1f} GB of MoE-layer "
      f"weights per token, e.g. {(REAL_LAYERS - REAL_DENSE) * moe_tok / 7e9:.1f} s per token from a 7 GB/s NVMe "
      f"drive if none were cached; the weights every token reads (attention, dense layers, shared experts, "
      f"routers, lm_head) stay in the page cache once read.")
    write_results(a.out_dir, name, R, "\n".join(L) + "\n")


if __name__ == "__main__":
    main()
