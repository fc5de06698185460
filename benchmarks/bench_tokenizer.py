#!/usr/bin/env python3
"""Encode throughput: dsv3 (C++) vs HF `tokenizers`, same corpus, one run.

    python benchmarks/bench_tokenizer.py --bin build/bench_tokenizer [--reps 10]
        [--corpus tests/golden/tokenizer/corpus.jsonl tests/golden/tokenizer/heldout.jsonl]

Needs the `tokenizers` package (e.g. .venv/tok/bin/python, made by `bash scripts/venv.sh tok`).
Both sides run single-threaded on identical texts, without BOS:
  dsv3            Tokenizer::encode per text (C++ binary, bench_tokenizer.cpp)
  hf_batch        Tokenizer.encode_batch(texts) with RAYON_NUM_THREADS=1 (Rust core,
                  no per-call Python overhead) - the reference for the ratio
  hf_loop         Tokenizer.encode(text) per text from Python (what a Python user gets)
"Cold" is the first pass (empty word caches), "warm" the best of --reps passes.
Prints a JSON line per implementation and the ratios dsv3/HF (>1 = dsv3 faster).
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="path to the bench_tokenizer binary")
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "data", "tokenizer", "deepseek-v3"))
    ap.add_argument("--corpus", nargs="+", default=[
        os.path.join(ROOT, "tests", "golden", "tokenizer", "corpus.jsonl"),
        os.path.join(ROOT, "tests", "golden", "tokenizer", "heldout.jsonl")])
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()

    os.environ["RAYON_NUM_THREADS"] = "1"  # must be set before tokenizers starts its pool
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    texts = []
    for f in a.corpus:
        with open(f, encoding="utf-8") as fh:
            texts += [json.loads(l)["text"] for l in fh if l.strip()]
    nbytes = sum(len(t.encode("utf-8")) for t in texts)

    out = subprocess.run([a.bin, a.tokenizer, *a.corpus, "--reps", str(a.reps)],
                         check=True, capture_output=True, text=True).stdout
    dsv3 = json.loads(out)
    print(json.dumps(dsv3))

    t0 = time.perf_counter()
    tk = Tokenizer.from_file(os.path.join(a.tokenizer, "tokenizer.json"))
    load_ms = (time.perf_counter() - t0) * 1e3

    def batch():
        t = time.perf_counter()
        enc = tk.encode_batch(texts, add_special_tokens=False)
        return time.perf_counter() - t, sum(len(e.ids) for e in enc)

    def loop():
        t = time.perf_counter()
        n = sum(len(tk.encode(x, add_special_tokens=False).ids) for x in texts)
        return time.perf_counter() - t, n

    results = {}
    for name, fn in (("hf_batch", batch), ("hf_loop", loop)):
        tk = Tokenizer.from_file(os.path.join(a.tokenizer, "tokenizer.json"))  # fresh caches
        cold, ntok = fn()
        warm = min(fn()[0] for _ in range(a.reps))
        r = {"impl": name, "texts": len(texts), "bytes": nbytes, "tokens": ntok, "load_ms": round(load_ms, 1),
             "cold_s": cold, "warm_s": warm, "cold_mb_per_s": nbytes / cold / 1e6,
             "warm_mb_per_s": nbytes / warm / 1e6, "warm_tokens_per_s": ntok / warm}
        results[name] = r
        print(json.dumps(r))
        if ntok != dsv3["tokens"]:
            sys.exit(f"token count differs: dsv3 {dsv3['tokens']} vs {name} {ntok}")

    for name, r in results.items():
        print(f"ratio dsv3/{name} (throughput, >1 = dsv3 faster): warm {r['warm_s'] / dsv3['warm_s']:.2f}x, "
              f"cold {r['cold_s'] / dsv3['cold_s']:.2f}x; load {dsv3['load_ms']:.0f} ms vs {r['load_ms']:.0f} ms")


if __name__ == "__main__":
    main()
