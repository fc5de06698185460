#!/usr/bin/env python3
"""Expert parallelism on one machine: N = 1, 2, 3 ranks of `build-mpi/dsv3` (DSV3_MPI=ON) on one checkpoint.

    python3 benchmarks/bench_mpi.py --model build/bench/mid-fp8 [--ranks 1,2,3] [--prompt-len 32] [--new-tokens 32]

Per N: decode tokens/s (greedy, `generate --json`; the ranks share this machine's cores, oversubscribed
past 2, so this is not a scaling figure), and per rank from `--mpi-stats` (the page tables after the run):
peak RSS, routed-expert bytes owned and touched, other ranks' expert bytes touched, shared bytes touched,
and bytes sent per generated token. Every N must give the same tokens as N = 1 (checked). Writes
benchmarks/results/mpi-<tag>-<date>.{json,md}.
"""
import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run(n, a, ids, stats):
    cmd = ["mpirun", "--oversubscribe", "-np", str(n)]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    cmd += [a.dsv3, "--threads", str(a.threads), "--prefault", "off", "--mpi-stats", stats, "generate",
            "--model", a.model, "--ids", ",".join(map(str, ids)), "--max-new-tokens", str(a.new_tokens), "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"N={n}: {r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return out, json.load(open(stats))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="build/bench/mid-fp8")
    ap.add_argument("--dsv3", default=os.path.join(ROOT, "build-mpi", "dsv3"))
    ap.add_argument("--ranks", default="1,2,3")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="threads per rank")
    ap.add_argument("--tag", default="mid-fp8")
    a = ap.parse_args()
    random.seed(1)
    ids = [0] + [random.randrange(1, 1000) for _ in range(a.prompt_len - 1)]
    rows, ref = [], None
    with tempfile.TemporaryDirectory() as td:
        for n in [int(x) for x in a.ranks.split(",")]:
            out, st = run(n, a, ids, os.path.join(td, f"s{n}.json"))
            if ref is None:
                ref = out["generated_ids"]
            same = out["generated_ids"] == ref
            gen = max(1, len(out["generated_ids"]))
            for r in st["per_rank"]:
                own, other = r["experts_owned_bytes"], r["experts_other_bytes"]
                rows.append({"N": n, "rank": r["rank"], "decode_tok_s": out["timing"]["decode_tokens_per_s"],
                             "same_tokens_as_N1": same, "peak_rss_MB": r["peak_rss_bytes"] / 1e6,
                             "experts_owned_MB": own / 1e6, "experts_owned_touched_MB": r["experts_owned_touched_bytes"] / 1e6,
                             "experts_other_touched_MB": r["experts_other_touched_bytes"] / 1e6,
                             "shared_touched_MB": r["shared_touched_bytes"] / 1e6,
                             "sent_KB_per_token": r["bytes_sent"] / 1e3 / (a.prompt_len + gen)})
    date = datetime.date.today().isoformat()
    base = os.path.join(HERE, "results", f"mpi-{a.tag}-{date}")
    meta = {"model": os.path.relpath(os.path.abspath(a.model), ROOT), "prompt_len": a.prompt_len,
            "new_tokens": a.new_tokens, "threads_per_rank": a.threads, "machine": f"{os.cpu_count()} cores"}
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    cols = list(rows[0])
    md = [f"# Expert parallelism, {a.tag} ({date})", "", f"{meta}", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        md.append("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    with open(base + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
