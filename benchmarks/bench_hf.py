#!/usr/bin/env python3
"""Throughput of HF transformers' DeepseekV3ForCausalLM on CPU: the baseline for dsv3.

    .venv/golden/bin/python benchmarks/bench_hf.py --model build/bench/mid-f32 \
        --prompt-len 128,512 --new-tokens 64 --threads 2 [--dtype float32|bfloat16]

Prints one JSON line:
  {prefill: {P: {tokens_per_s, s, runs_s}}, prefill_tokens_per_s: {P: ...},
   decode_tokens_per_s, decode_calls, decode_step_s, generated_ids, peak_rss_bytes, ...}

What is measured (matching `dsv3 generate --json`'s timing):
  prefill  one forward of P tokens, no cache, logits for the last position only
           (logits_to_keep=1, as dsv3 generate and HF generate do), after one warm-up
           forward of the same shape; best of --repeats.
  decode   greedy: a 32-token prompt (--decode-prompt-len) with a DynamicCache, then
           --new-tokens - 1 one-token forwards, each followed by argmax (dsv3 counts the same
           decode_calls). A manual loop: model.generate does the same work plus
           logits processors/stopping-criteria bookkeeping, so the loop is the faster,
           fairer baseline (--decode-method generate measures generate instead).
           One warm-up pass of 4 tokens first; best of --repeats by total decode time.
  peak_rss_bytes  resource.getrusage(RUSAGE_SELF).ru_maxrss after everything (includes the
           checkpoint load: from_pretrained copies the weights into torch tensors).

Implementations (CPU; see benchmarks/README.md for the measurements behind the defaults):
  --attn eager (default; sdpa also works)   --experts grouped_mm (HF's default) | batched_mm | eager
--check-npy F: compare HF's all-position logits for make_ids(rows of F) against dsv3's
`forward` output F (same ids) and report max |diff| - so a faster implementation is only
used if it is still correct.

Token ids are deterministic (make_ids below; bench_model.py imports it): the same ids go to
dsv3 and HF.
"""
import argparse
import json
import os
import resource
import sys
import time


def make_ids(n, vocab, offset=0):
    """n deterministic token ids in [2, vocab) (never BOS=0 / EOS=1)."""
    return [2 + ((i + offset) * 7919 + 13) % (vocab - 2) for i in range(n)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-len", default="128,512", help="comma-separated prefill lengths (0 or '' = none)")
    ap.add_argument("--new-tokens", type=int, default=64, help="greedy tokens to generate (0 = no decode)")
    ap.add_argument("--decode-prompt-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--attn", default="eager", choices=["eager", "sdpa"])
    ap.add_argument("--experts", default="grouped_mm", choices=["eager", "batched_mm", "grouped_mm"])
    ap.add_argument("--decode-method", default="loop", choices=["loop", "generate"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--check-npy", help="dsv3 forward logits [N, vocab] of make_ids(N)")
    a = ap.parse_args()

    import numpy as np
    import torch
    import transformers
    from transformers import DeepseekV3ForCausalLM
    from transformers.cache_utils import DynamicCache

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    dtype = getattr(torch, a.dtype)
    t0 = time.perf_counter()
    model = DeepseekV3ForCausalLM.from_pretrained(
        a.model, dtype=dtype, attn_implementation=a.attn, experts_implementation=a.experts
    )
    model.eval()
    load_s = time.perf_counter() - t0
    V = model.config.vocab_size
    res = dict(
        impl="hf",
        model=os.path.abspath(a.model),
        dtype=a.dtype,
        threads=a.threads,
        attn_implementation=a.attn,
        experts_implementation=a.experts,
        decode_method=a.decode_method,
        transformers_version=transformers.__version__,
        torch_version=torch.__version__,
        load_s=load_s,
    )

    prompt_lens = [int(x) for x in str(a.prompt_len).split(",") if x.strip() and int(x) > 0]
    res["prefill"] = {}
    with torch.inference_mode():
        if a.check_npy:
            ref = np.load(a.check_npy)
            full = model(input_ids=torch.tensor([make_ids(ref.shape[0], V)]), use_cache=False).logits[0]
            full = full.float().numpy()
            d = np.abs(full - ref)
            res["check"] = dict(
                npy=a.check_npy,
                tokens=int(ref.shape[0]),
                max_abs_diff=float(d.max()),
                max_abs_ref=float(np.abs(ref).max()),
                argmax_agree=float((full.argmax(-1) == ref.argmax(-1)).mean()),
            )
        for P in prompt_lens:
            x = torch.tensor([make_ids(P, V)])
            model(input_ids=x, use_cache=False, logits_to_keep=1)  # warm-up
            runs = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                model(input_ids=x, use_cache=False, logits_to_keep=1)
                runs.append(time.perf_counter() - t)
            res["prefill"][str(P)] = dict(tokens_per_s=P / min(runs), s=min(runs), runs_s=runs)
        res["prefill_tokens_per_s"] = {k: v["tokens_per_s"] for k, v in res["prefill"].items()}

        def decode_loop(prompt, n_new):
            cache = DynamicCache(config=model.config)
            t = time.perf_counter()
            out = model(input_ids=torch.tensor([prompt]), cache=cache, use_cache=True, logits_to_keep=1)
            t_prefill = time.perf_counter() - t
            nxt = int(out.logits[0, -1].argmax())
            gen, steps = [nxt], []
            for _ in range(n_new - 1):
                t = time.perf_counter()
                out = model(input_ids=torch.tensor([[nxt]]), cache=cache, use_cache=True, logits_to_keep=1)
                nxt = int(out.logits[0, -1].argmax())
                steps.append(time.perf_counter() - t)
                gen.append(nxt)
            return gen, t_prefill, steps

        def decode_generate(prompt, n_new):
            x = torch.tensor([prompt])
            t = time.perf_counter()
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n_new,
                                 min_new_tokens=n_new, eos_token_id=None, pad_token_id=0, num_beams=1)
            total = time.perf_counter() - t
            # generate has no per-step timing: report the mean step, prefill folded in
            return out[0, len(prompt):].tolist(), 0.0, [total / max(1, n_new - 1)] * (n_new - 1)

        if a.new_tokens > 0:
            fn = decode_loop if a.decode_method == "loop" else decode_generate
            prompt = make_ids(a.decode_prompt_len, V)
            fn(prompt, min(4, a.new_tokens))  # warm-up
            best = None
            for _ in range(a.repeats):
                gen, t_pre, steps = fn(prompt, a.new_tokens)
                if best is None or sum(steps) < sum(best[2]):
                    best = (gen, t_pre, steps)
            gen, t_pre, steps = best
            res.update(
                decode_prompt_len=a.decode_prompt_len,
                decode_calls=len(steps),
                decode_s=sum(steps),
                decode_tokens_per_s=len(steps) / sum(steps) if steps else 0.0,
                decode_step_s=dict(
                    min=min(steps), median=sorted(steps)[len(steps) // 2], max=max(steps)
                ) if steps else {},
                decode_prompt_prefill_s=t_pre,
                generated_ids=gen,
            )
    res["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(res))


if __name__ == "__main__":
    sys.exit(main())
