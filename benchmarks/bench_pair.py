#!/usr/bin/env python3
"""dsv3 vs HF transformers, measured in alternating pairs: the ratio each round, then the median.

    python3 benchmarks/bench_pair.py [--rounds 5] [--prompt-len 512] [--new-tokens 64] [--dsv3-base OLD/dsv3]

On a shared machine whose memory bandwidth drifts by tens of percent from one minute to the next,
`bench_model.py`'s layout (every dsv3 configuration, then every HF one, minutes apart) can put the
two engines in different weather. Here each round runs, back to back on the same checkpoint and
thread count: dsv3 prefill, HF prefill, dsv3 decode, HF decode (dsv3: `generate --json`, its
prefill after `--warmup` untimed passes; HF: `bench_hf.py`, whose own warm-up pass comes first),
each side's best of `--best-of` measurements. The ratio of each pair is computed; the median over
rounds is the figure, min and max show the spread.

With `--dsv3-base`, each round also runs a second dsv3 binary (e.g. a build of the previous commit)
right after the first, on both measurements: the "after / before" ratio of a change's speed, taken in
the same weather as the HF pair.

HF runs in the venv of `bash scripts/venv.sh golden` (`.venv/golden/bin/python`, the default).

Writes benchmarks/results/pair-TAG-DATE.{md,json}.
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
from bench_model import ids_arg, log, make_ids, warmup_args, write_results  # noqa: E402


def dsv3(a, ids, new_tokens, key, binary=None):
    """Best of --best-of processes."""
    best = 0.0
    for _ in range(a.best_of):
        cmd = [binary or a.dsv3, "--threads", str(a.threads), "generate", "--model", a.model, "--ids", ids_arg(ids),
               "--max-new-tokens", str(new_tokens), "--json"] + warmup_args(a, new_tokens)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        best = max(best, json.loads(out.stdout.strip().splitlines()[-1])["timing"][key])
    return best


def hf(a, prompt_len, new_tokens):
    out = subprocess.run([a.hf_python, os.path.join(HERE, "bench_hf.py"), "--model", a.model, "--threads",
                          str(a.threads), "--prompt-len", str(prompt_len), "--new-tokens", str(new_tokens),
                          "--decode-prompt-len", str(a.decode_prompt_len), "--repeats", str(a.best_of)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsv3", default=os.path.join(ROOT, "build", "dsv3"))
    ap.add_argument("--dsv3-base", help="a second dsv3 binary (before a change), measured beside --dsv3 each round")
    ap.add_argument("--hf-python", default=os.path.join(ROOT, ".venv", "golden", "bin", "python"))
    ap.add_argument("--model", default="build/bench/mid-f32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--decode-prompt-len", type=int, default=32)
    ap.add_argument("--best-of", type=int, default=3,
                    help="each side's figure in a round: best of N (dsv3: N processes; HF: N timed passes)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="dsv3 prefill: untimed passes first in the same process (generate --warmup), as HF's one")
    ap.add_argument("--tag", default="mid-f32")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    a = ap.parse_args()
    vocab = json.load(open(os.path.join(a.model, "config.json")))["vocab_size"]
    pre_ids, dec_ids = make_ids(a.prompt_len, vocab), make_ids(a.decode_prompt_len, vocab)
    rounds = []
    for r in range(a.rounds):
        d_pre = dsv3(a, pre_ids, 1, "prefill_tokens_per_s")
        h_pre = hf(a, a.prompt_len, 0)["prefill_tokens_per_s"][str(a.prompt_len)]
        d_dec = dsv3(a, dec_ids, a.new_tokens, "decode_tokens_per_s")
        h_dec = hf(a, 0, a.new_tokens)["decode_tokens_per_s"]
        rounds.append(dict(dsv3_prefill=d_pre, hf_prefill=h_pre, prefill_ratio=d_pre / h_pre,
                           dsv3_decode=d_dec, hf_decode=h_dec, decode_ratio=d_dec / h_dec))
        if a.dsv3_base:
            b_pre = dsv3(a, pre_ids, 1, "prefill_tokens_per_s", a.dsv3_base)
            b_dec = dsv3(a, dec_ids, a.new_tokens, "decode_tokens_per_s", a.dsv3_base)
            rounds[-1].update(base_prefill=b_pre, base_decode=b_dec, prefill_vs_base=d_pre / b_pre,
                              decode_vs_base=d_dec / b_dec)
        log(f"  round {r + 1}/{a.rounds}: prefill {d_pre:.1f} vs {h_pre:.1f} ({d_pre / h_pre:.2f}x), "
            f"decode {d_dec:.2f} vs {h_dec:.2f} ({d_dec / h_dec:.2f}x)"
            + (f"; vs base: prefill {rounds[-1]['prefill_vs_base']:.3f}x, decode {rounds[-1]['decode_vs_base']:.3f}x"
               if a.dsv3_base else ""))
    med = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
    R = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), model=a.model, threads=a.threads,
             dsv3=os.path.abspath(a.dsv3), dsv3_base=a.dsv3_base and os.path.abspath(a.dsv3_base),
             dsv3_prefill_warmup=a.warmup, best_of=a.best_of,
             prompt_len=a.prompt_len, new_tokens=a.new_tokens, decode_prompt_len=a.decode_prompt_len,
             rounds=rounds, median=med)
    L = [f"# dsv3 vs HF transformers in alternating pairs: {a.tag} ({R['date']})\n",
         f"`{a.model}`, {a.threads} threads, {a.rounds} rounds; each round: dsv3 prefill of {a.prompt_len} tokens "
         f"(after {a.warmup} untimed pass{'es' if a.warmup != 1 else ''} in the same process), HF "
         f"prefill, dsv3 decode ({a.new_tokens} new tokens after {a.decode_prompt_len}), HF decode — back to back. "
         "tokens/s; HF = transformers' DeepseekV3ForCausalLM in float32 (bench_hf.py defaults: eager attention, "
         f"grouped_mm experts, one warm-up pass). Each side's figure in a round is its best of {a.best_of} "
         "(dsv3: processes; HF: timed passes after the warm-up), as bench_model.py does.\n",
         "| round | dsv3 prefill | HF prefill | ratio | dsv3 decode | HF decode | ratio |", "|---|---|---|---|---|---|---|"]
    for i, x in enumerate(rounds):
        L.append(f"| {i + 1} | {x['dsv3_prefill']:.1f} | {x['hf_prefill']:.1f} | {x['prefill_ratio']:.2f} | "
                 f"{x['dsv3_decode']:.2f} | {x['hf_decode']:.2f} | {x['decode_ratio']:.2f} |")
    L.append(f"| **median** | {med['dsv3_prefill']:.1f} | {med['hf_prefill']:.1f} | **{med['prefill_ratio']:.2f}** | "
             f"{med['dsv3_decode']:.2f} | {med['hf_decode']:.2f} | **{med['decode_ratio']:.2f}** |")
    pr = [x["prefill_ratio"] for x in rounds]
    dr = [x["decode_ratio"] for x in rounds]
    L.append(f"\nSpread of the ratios: prefill {min(pr):.2f}-{max(pr):.2f}, decode {min(dr):.2f}-{max(dr):.2f}.")
    if a.dsv3_base:
        L.append(f"\n`--dsv3-base {R['dsv3_base']}`, measured right after `{R['dsv3']}` each round (same settings):\n")
        L.append("| round | base prefill | prefill after/before | base decode | decode after/before |")
        L.append("|---|---|---|---|---|")
        for i, x in enumerate(rounds):
            L.append(f"| {i + 1} | {x['base_prefill']:.1f} | {x['prefill_vs_base']:.3f} | {x['base_decode']:.2f} | "
                     f"{x['decode_vs_base']:.3f} |")
        L.append(f"| **median** | {med['base_prefill']:.1f} | **{med['prefill_vs_base']:.3f}** | "
                 f"{med['base_decode']:.2f} | **{med['decode_vs_base']:.3f}** |")
    write_results(a.out_dir, f"pair-{a.tag}", R, "\n".join(L) + "\n")


if __name__ == "__main__":
    main()
