"""dsv3.verify: hold a running DeepSeek-V3 server against the oracle, token by token.

    python -m dsv3.verify --server http://127.0.0.1:8080 --kind mlx --model DIR --prompts prompts.jsonl \\
        [--report r.html] [--json r.json] [--thresholds exact|bf16|fp8|int4]

For each prompt the server generates greedily with per-token log-probabilities; dsv3 then runs the whole
sequence (prompt + the server's tokens) teacher-forced in one prefill and compares, position by position:
the chosen token's log-probability error, top-1 agreement, KL on the server's top-k support, and expert
agreement where the server returns routing. The same comparison against dsv3 with engine variant knobs
(mask fill 0, bf16 router, YaRN off, ...) says which engine choice explains a drift. Exit code 0: within
the thresholds; 1: not; 2: the check could not run.
"""
from __future__ import annotations

import argparse
import html
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .._files import write_file_atomic
from .servers import KINDS, TAKES_IDS, Completion, VerifyError, complete

# Threshold presets: the mean |Δ logprob| of the chosen tokens (nats), the largest single one, and the
# share of positions where dsv3's top-1 token is the server's. Each with where it comes from.
THRESHOLDS: Dict[str, Dict[str, Any]] = {
    "exact": {"mean": 1e-3, "max": 1e-2, "top1": 1.0,
              "why": "an f32 deployment of the same weights: mlx_lm.server on an f32 checkpoint matches dsv3 to "
                     "~2e-6 per token (issue 18's measurement); 1e-3 leaves room for summation order only"},
    "bf16": {"mean": 0.02, "max": 0.5, "top1": 0.97,
             "why": "bf16 weights and activations: a unit roundoff of 2^-8 on logits of size ~10 moves a "
                    "log-probability by a few 1e-2 at worst; argmax flips only at near-ties"},
    "fp8": {"mean": 0.05, "max": 1.0, "top1": 0.95,
            "why": "FP8 e4m3 weights (and activations in W8A8): 3 mantissa bits, per-block scales; DeepGEMM's "
                   "calc_diff bound of 1e-3 per GEMM accumulates over 61 layers"},
    "int4": {"mean": 0.15, "max": 2.0, "top1": 0.9,
             "why": "4-bit group quantisation (AWQ, MLX 4-bit): uniform noise of ~1/16 of each group's range "
                    "on every weight; published 4-bit models keep most top-1 choices"},
}

# Engine choices dsv3 can reproduce (docs/variants.md), tried when the server drifts.
def variant_set(cfg: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    orig = int(((cfg.get("rope_scaling") or {}).get("original_max_position_embeddings")) or 4096)
    return [
        ("dropped expert groups masked with 0 instead of -inf", {"group_mask_fill": "0"}),
        ("router in bf16 (bias not kept in fp32)", {"router_precision": "bf16"}),
        ("activations rounded to bf16", {"bf16_activations": True}),
        ("RMSNorm rounded to bf16 before the weight (HF)", {"rmsnorm_rounding": "hf"}),
        ("YaRN off (rope_scaling ignored: no frequency interpolation, no softmax mscale)",
         {"yarn": "official", "max_seq_len": orig}),
    ]


@dataclass
class PromptResult:
    index: int
    prompt_len: int
    ids: List[int]                         # prompt + generated (as the server ran them)
    gen_err: List[float]                   # |server logprob − dsv3 logprob| per generated token
    gen_top1: List[bool]                   # dsv3's argmax == the server's token
    gen_kl: List[Optional[float]]          # KL(dsv3 ‖ server) on the server's top-k support
    prompt_err: List[Optional[float]] = field(default_factory=list)
    routing_agree: Optional[float] = None
    notes: List[str] = field(default_factory=list)

    @property
    def positions(self) -> List[int]:       # the position each generated token sits at
        return list(range(self.prompt_len, self.prompt_len + len(self.gen_err)))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def read_prompts(path: str, tok) -> List[Dict[str, Any]]:
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    p = json.loads(line)
                except ValueError as e:
                    raise VerifyError(f"{path}:{n}: not a JSON object ({e})") from None
                if not isinstance(p, dict) or not (isinstance(p.get("prompt"), str) or isinstance(p.get("ids"), list)):
                    raise VerifyError(f'{path}:{n}: expected {{"prompt": "..."}} or {{"ids": [...]}}')
                if "max_tokens" in p and (not isinstance(p["max_tokens"], int) or p["max_tokens"] < 1):
                    raise VerifyError(f"{path}:{n}: max_tokens must be a positive integer")
                out.append(p)
    except OSError as e:
        raise VerifyError(f"{path}: cannot read prompts ({e.strerror})") from None
    if not out:
        raise VerifyError(f"{path}: no prompts")
    return out


def reference(model, c: Completion, prompt_ids: List[int], index: int) -> PromptResult:
    """Teacher-forces prompt + the server's tokens through dsv3 and compares position by position."""
    ids = list(prompt_ids) + list(c.gen_ids)
    P = len(prompt_ids)
    if P == 0:
        raise VerifyError(f"prompt {index}: empty prompt")
    if len(c.gen_ids) != len(c.gen_logprobs):
        raise VerifyError(f"prompt {index}: the server gave {len(c.gen_ids)} tokens but {len(c.gen_logprobs)} logprobs")
    V = model.vocab_size
    for t in c.gen_ids:
        if not 0 <= t < V:
            raise VerifyError(f"prompt {index}: server token id {t} is outside the checkpoint's vocabulary [0, {V}) "
                              "(is the server running this checkpoint?)")
    if not c.gen_ids:
        return PromptResult(index, P, ids, [], [], [], notes=["the server generated no tokens"])
    rows = ids[:-1] if len(ids) > 1 else ids
    lp = _log_softmax(model.forward(rows))        # row i predicts token i+1
    err, top1, kl = [], [], []
    for j, (t, slp) in enumerate(zip(c.gen_ids, c.gen_logprobs)):
        row = lp[P - 1 + j]
        err.append(abs(float(slp) - float(row[t])) if math.isfinite(slp) else math.inf)
        top1.append(int(np.argmax(row)) == t)
        if c.top and j < len(c.top) and c.top[j]:
            sup = [i for i in c.top[j] if 0 <= i < V]
            p = np.exp(row[sup] - np.logaddexp.reduce(row[sup]))
            qs = np.array([c.top[j][i] for i in sup], dtype=np.float64)
            q = np.exp(qs - np.logaddexp.reduce(qs))
            kl.append(float(np.sum(p * (np.log(np.maximum(p, 1e-300)) - np.log(np.maximum(q, 1e-300))))))
        else:
            kl.append(None)
    perr: List[Optional[float]] = []
    if c.prompt_logprobs:
        for i, v in enumerate(c.prompt_logprobs[:P]):
            perr.append(None if (v is None or i == 0) else abs(float(v) - float(lp[i - 1][ids[i]])))
    res = PromptResult(index, P, ids, err, top1, kl, perr, notes=list(c.notes))
    if c.routed_experts is not None:
        res.routing_agree = routing_agreement(model, c.routed_experts)
    return res


def routing_agreement(model, routed) -> Optional[float]:
    """Share of (position, layer) whose expert set equals dsv3's, from the teacher-forced pass just run."""
    try:
        r = np.asarray(routed)
    except ValueError:
        return None
    ours = model.routing()
    if r.ndim != 3 or not ours:
        return None
    layers = sorted(ours)
    agree = total = 0
    for li, L in enumerate(layers):
        if li >= r.shape[1]:
            break
        mine = ours[L][0]
        for t in range(min(len(mine), r.shape[0])):
            total += 1
            agree += sorted(map(int, mine[t])) == sorted(map(int, r[t, li]))
    return agree / total if total else None


def diagnose(results: List[PromptResult], original: int, variant_errs: Dict[str, float], base_err: float) -> List[str]:
    """Names the symptom: an engine choice that reproduces the server, error growing with position, or
    uniform noise.

    The positional test rests on one fact: at position 0 attention has a single key, so its output is
    that key's value whatever RoPE, YaRN or the softmax scale do, and at positions 1-2 they can move it
    only a little. A RoPE/YaRN fault therefore leaves the first positions nearly exact and grows after;
    weight or activation noise (quantisation) is as large at the first positions as anywhere.
    """
    out = []
    best = min(variant_errs.items(), key=lambda kv: kv[1]) if variant_errs else None
    explained = bool(best and base_err > 0 and best[1] < base_err / 10)
    if explained:
        out.append(f"dsv3 with '{best[0]}' reproduces the server ({best[1]:.2e} mean |Δ logprob| against "
                   f"{base_err:.2e} for the official semantics): the server most likely makes that choice")
    pairs = sorted((p, e) for r in results for p, e in zip(r.positions, r.gen_err) if math.isfinite(e))
    if len(pairs) >= 6:
        pos = np.array([p for p, _ in pairs], dtype=np.float64)
        err = np.array([e for _, e in pairs], dtype=np.float64)
        first = pos <= 2
        if first.sum() >= 2 and (~first).sum() >= 2:
            early, late, where = float(err[first].mean()), float(err[~first].mean()), "positions 0-2"
        else:
            third = max(1, len(err) // 3)
            early, late, where = float(err[:third].mean()), float(err[-third:].mean()), "the first third of positions"
        rho = _spearman(pos, err)
        if late > 3 * max(early, 1e-9):
            out.append(f"error grows with position (mean |Δ logprob| {early:.2e} at {where}, {late:.2e} after; rank "
                       f"correlation {rho:.2f}): the signature of a RoPE/YaRN or attention-scale problem"
                       + (f" (original_max_position_embeddings = {original})" if original else ""))
        elif not explained and late > 0:
            out.append(f"error as large at {where} ({early:.2e}) as after ({late:.2e}; rank correlation {rho:.2f}): "
                       "uniform noise on weights or activations, such as quantisation, not a positional bug")
    return out


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3:
        return 0.0
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    if np.std(rx) == 0 or np.std(ry) == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def summarise(results: List[PromptResult]) -> Dict[str, Any]:
    err = [e for r in results for e in r.gen_err]
    top1 = [t for r in results for t in r.gen_top1]
    kl = [k for r in results for k in r.gen_kl if k is not None]
    perr = [e for r in results for e in r.prompt_err if e is not None]
    fe = [e for e in err if math.isfinite(e)]
    s = {"tokens": len(err), "mean_abs_logprob_err": float(np.mean(fe)) if fe else (math.inf if err else 0.0),
         "max_abs_logprob_err": float(max(err)) if err else 0.0,
         "top1_agreement": float(np.mean(top1)) if top1 else 1.0,
         "kl_mean": float(np.mean(kl)) if kl else None, "kl_max": float(max(kl)) if kl else None,
         "prompt_tokens_checked": len(perr), "prompt_mean_abs_logprob_err": float(np.mean(perr)) if perr else None}
    ra = [r.routing_agree for r in results if r.routing_agree is not None]
    s["routing_agreement"] = float(np.mean(ra)) if ra else None
    return s


def first_divergence(results: List[PromptResult], th: Dict[str, Any], tok) -> Optional[Dict[str, Any]]:
    for r in results:
        for j, (e, t1) in enumerate(zip(r.gen_err, r.gen_top1)):
            if not t1 or not e <= th["max"]:
                p = r.prompt_len + j
                ctx = r.ids[max(0, p - 12):p]
                d = {"prompt": r.index, "position": p, "token": r.ids[p], "abs_logprob_err": e, "top1_agree": t1}
                if tok is not None:
                    d["context"] = tok.decode(ctx)
                    d["token_text"] = tok.decode([r.ids[p]])
                return d
    return None


def by_position(results: List[PromptResult], buckets: int = 24) -> List[Dict[str, Any]]:
    pairs = sorted((p, e) for r in results for p, e in zip(r.positions, r.gen_err) if math.isfinite(e))
    if not pairs:
        return []
    lo, hi = pairs[0][0], pairs[-1][0] + 1
    w = max(1, math.ceil((hi - lo) / buckets))
    out: Dict[int, List[float]] = {}
    for p, e in pairs:
        out.setdefault(lo + (p - lo) // w * w, []).append(e)
    return [{"from": b, "to": b + w, "mean": float(np.mean(v)), "max": float(max(v)), "n": len(v)} for b, v in sorted(out.items())]


# ---------------------------------------------------------------------------------------------------------

def write_atomic(path: str, text: str) -> None:
    write_file_atomic(path, [text.encode("utf-8")])


def svg_plot(buckets: List[Dict[str, Any]], original: int, tol: float) -> str:
    if not buckets:
        return "<p>(no generated tokens)</p>"
    W, H, L, B = 720, 260, 60, 30
    x0, x1 = buckets[0]["from"], buckets[-1]["to"]
    xs = lambda p: L + (W - L - 20) * (p - x0) / max(1, x1 - x0)  # noqa: E731
    def ys(v):
        lv = max(-8.0, min(1.0, math.log10(max(v, 1e-8))))
        return 10 + (H - B - 10) * (1.0 - lv) / 9.0
    o = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}'>",
         f"<rect width='{W}' height='{H}' fill='white' stroke='#ccc'/>"]
    for e in range(1, -9, -2):
        o.append(f"<line x1='{L}' x2='{W - 20}' y1='{ys(10.0 ** e):.1f}' y2='{ys(10.0 ** e):.1f}' stroke='#eee'/>"
                 f"<text x='4' y='{ys(10.0 ** e) + 4:.1f}' font-size='11'>1e{e}</text>")
    o.append(f"<line x1='{L}' x2='{W - 20}' y1='{ys(tol):.1f}' y2='{ys(tol):.1f}' stroke='orange' stroke-dasharray='4'/>")
    if original and x0 <= original <= x1:
        o.append(f"<line x1='{xs(original):.1f}' x2='{xs(original):.1f}' y1='10' y2='{H - B}' stroke='#c66' "
                 f"stroke-dasharray='3'/><text x='{xs(original) + 3:.1f}' y='22' font-size='11' fill='#c66'>"
                 f"original_max_position_embeddings</text>")
    pts = " ".join(f"{xs((b['from'] + b['to']) / 2):.1f},{ys(b['mean']):.1f}" for b in buckets)
    o.append(f"<polyline fill='none' stroke='steelblue' stroke-width='2' points='{pts}'/>")
    for b in buckets:
        o.append(f"<circle cx='{xs((b['from'] + b['to']) / 2):.1f}' cy='{ys(b['mean']):.1f}' r='3' fill='steelblue'>"
                 f"<title>positions {b['from']}-{b['to'] - 1}: mean {b['mean']:.2e}, max {b['max']:.2e}</title></circle>")
    o.append(f"<text x='{W / 2 - 60}' y='{H - 6}' font-size='11'>position (mean |Δ logprob| per bucket)</text></svg>")
    return "".join(o)


def html_report(rep: Dict[str, Any]) -> str:
    e = html.escape
    s = rep["summary"]
    rows = "".join(f"<tr><td>{e(k)}</td><td>{e(str(v))}</td></tr>" for k, v in s.items())
    var = "".join(f"<tr><td>{e(k)}</td><td>{v:.3e}</td></tr>" for k, v in rep.get("variants", {}).items())
    diag = "".join(f"<li>{e(d)}</li>" for d in rep["diagnosis"])
    fd = rep.get("first_divergence")
    fdh = (f"<p><b>First divergence</b>: prompt {fd['prompt']}, position {fd['position']}, token {fd['token']}"
           f" {e(repr(fd.get('token_text', '')))} after {e(repr(fd.get('context', '')))}; |Δ logprob| "
           f"{fd['abs_logprob_err']:.3e}, top-1 {'agrees' if fd['top1_agree'] else 'differs'}</p>") if fd else ""
    th = rep["thresholds"]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>dsv3 verify</title><style>"
            "body{font-family:sans-serif;margin:2em}td{padding:2px 8px;font-family:monospace;font-size:12px}"
            "</style></head><body>"
            f"<h1>dsv3 verify: {'PASS' if rep['pass'] else 'FAIL'}</h1><p>{e(rep['verdict'])}</p>"
            f"<p>server {e(rep['server'])} ({e(rep['kind'])}), reference {e(rep['model'])}; thresholds "
            f"<b>{e(th['name'])}</b>: mean ≤ {th['mean']:g}, max ≤ {th['max']:g}, top-1 ≥ {th['top1']:g} "
            f"({e(th['why'])})</p>{fdh}<h2>Diagnosis</h2><ul>{diag or '<li>none</li>'}</ul>"
            f"<h2>Error by position</h2>{svg_plot(rep['by_position'], rep.get('original_max_position_embeddings') or 0, th['mean'])}"
            f"<h2>Summary</h2><table>{rows}</table>"
            + (f"<h2>dsv3 variants (mean |Δ logprob| against the server)</h2><table>{var}</table>" if var else "")
            + "</body></html>\n")


def run(a: argparse.Namespace) -> Tuple[int, Dict[str, Any]]:
    import dsv3
    if a.thresholds not in THRESHOLDS:
        raise VerifyError(f"--thresholds {a.thresholds!r}: expected one of {', '.join(THRESHOLDS)}")
    th = dict(THRESHOLDS[a.thresholds], name=a.thresholds)
    try:
        model = dsv3.Model(a.model, threads=a.threads)
    except dsv3.Error as e:
        raise VerifyError(f"--model: {e}") from None
    tok = None
    if os.path.exists(os.path.join(a.model, "tokenizer.json")):
        tok = dsv3.Tokenizer(a.model)
    prompts = read_prompts(a.prompts, tok)
    to_id = tok.token_to_id if tok else None

    jobs = []
    for i, p in enumerate(prompts):
        if "ids" in p:
            ids = [int(x) for x in p["ids"]]
            text = p.get("prompt") if isinstance(p.get("prompt"), str) else (tok.decode(ids) if tok else None)
        else:
            if tok is None:
                raise VerifyError(f"{a.model} has no tokenizer.json: give prompts as {{\"ids\": [...]}}")
            text = p["prompt"]
            # mlx_lm.server and plain OpenAI text completions encode the text without a BOS token
            ids = tok.encode(text, add_bos=TAKES_IDS[a.kind] and a.bos)
        jobs.append((i, ids, text, int(p.get("max_tokens", a.max_tokens))))

    def ask(job):
        i, ids, text, mt = job
        return complete(a.kind, a.server, ids, text, mt, a.top_k, a.served_model, to_id, a.timeout, a.retries)

    with ThreadPoolExecutor(max_workers=max(1, a.concurrency)) as ex:
        comps = list(ex.map(ask, jobs))

    results = []
    for (i, ids, text, mt), c in zip(jobs, comps):
        if c.prompt_ids is not None and list(c.prompt_ids) != list(ids):
            raise VerifyError(f"prompt {i}: the server ran other prompt tokens than dsv3's ({len(c.prompt_ids)} vs "
                              f"{len(ids)} ids; first difference at {_first_diff(c.prompt_ids, ids)})")
        if c.prompt_token_count is not None and c.prompt_token_count != len(ids):
            raise VerifyError(f"prompt {i}: the server counted {c.prompt_token_count} prompt tokens, dsv3's tokenizer "
                              f"{len(ids)} (a BOS token added or not? --bos / --no-bos)")
        results.append(reference(model, c, ids, i))

    summ = summarise(results)
    original = int(((model.config.get("rope_scaling") or {}).get("original_max_position_embeddings")) or 0)
    ok = (summ["mean_abs_logprob_err"] <= th["mean"] and summ["max_abs_logprob_err"] <= th["max"]
          and summ["top1_agreement"] >= th["top1"])
    variants: Dict[str, float] = {}
    if not ok and a.variant_check:
        for label, v in variant_set(model.config):
            vm = dsv3.Model(a.model, threads=a.threads, variants=v, prefault="off")
            vr = [reference(vm, c, ids, i) for (i, ids, _, _), c in zip(jobs, comps)]
            variants[label] = summarise(vr)["mean_abs_logprob_err"]
    diag = diagnose(results, original, variants, summ["mean_abs_logprob_err"]) if not ok else []
    verdict = (f"{'PASS' if ok else 'FAIL'}: {summ['tokens']} tokens over {len(results)} prompts, mean |Δ logprob| "
               f"{summ['mean_abs_logprob_err']:.3e} (≤ {th['mean']:g}), max {summ['max_abs_logprob_err']:.3e} "
               f"(≤ {th['max']:g}), top-1 agreement {summ['top1_agreement']:.4f} (≥ {th['top1']:g})")
    rep = {"pass": ok, "verdict": verdict, "server": a.server, "kind": a.kind, "model": a.model, "thresholds": th,
           "summary": summ, "diagnosis": diag, "variants": variants,
           "first_divergence": first_divergence(results, th, tok), "by_position": by_position(results),
           "original_max_position_embeddings": original,
           "prompts": [{"index": r.index, "prompt_len": r.prompt_len, "generated": r.ids[r.prompt_len:],
                        "abs_logprob_err": r.gen_err, "top1_agree": r.gen_top1, "kl": r.gen_kl,
                        "prompt_abs_logprob_err": r.prompt_err, "routing_agreement": r.routing_agree,
                        "notes": r.notes} for r in results]}
    return (0 if ok else 1), rep


def _finite(x):
    """JSON has no inf/NaN: they become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _first_diff(a, b) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dsv3.verify", description=__doc__.split("\n")[0])
    ap.add_argument("--server", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    ap.add_argument("--kind", required=True, choices=KINDS)
    ap.add_argument("--model", required=True, help="the checkpoint directory the server was started from")
    ap.add_argument("--prompts", required=True, help='JSONL: {"prompt": "..."} or {"ids": [...]}, optional max_tokens')
    ap.add_argument("--report", help="write an HTML report (inline SVG, no network assets)")
    ap.add_argument("--json", dest="json_out", help="write the full result as JSON")
    ap.add_argument("--thresholds", default="exact", help="exact | bf16 | fp8 | int4 (python -m dsv3.verify --list)")
    ap.add_argument("--max-tokens", type=int, default=16, help="tokens to generate per prompt (default 16)")
    ap.add_argument("--top-k", type=int, default=5, help="alternatives per position to request (KL on them)")
    ap.add_argument("--served-model", default="default_model", help="the 'model' field of the requests")
    ap.add_argument("--bos", action=argparse.BooleanOptionalAction, default=True,
                    help="add BOS when encoding text prompts for servers that take ids (default on)")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--retries", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="dsv3 threads")
    ap.add_argument("--variant-check", action=argparse.BooleanOptionalAction, default=True,
                    help="on failure, try dsv3's engine variants to explain the drift (default on)")
    a = ap.parse_args(argv)
    try:
        code, rep = run(a)
    except VerifyError as e:
        print(f"dsv3 verify: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a dsv3.Error from the reference, or a bug: never a silent pass
        print(f"dsv3 verify: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(rep["verdict"])
    for d in rep["diagnosis"]:
        print("  - " + d)
    fd = rep["first_divergence"]
    if fd:
        print(f"  first divergence: prompt {fd['prompt']}, position {fd['position']}, token {fd['token']}"
              + (f" {fd.get('token_text')!r} after {fd.get('context')!r}" if "context" in fd else ""))
    if a.json_out:
        write_atomic(a.json_out, json.dumps(_finite(rep), indent=1, allow_nan=False) + "\n")
    if a.report:
        write_atomic(a.report, html_report(rep))
    return code
