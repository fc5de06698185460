#!/usr/bin/env python3
"""Golden generator for the DeepSeek-V3 MTP (multi-token prediction) module.

transformers has no MTP implementation (it ignores model.layers.61.*), so the MTP forward is composed
here from transformers' own modules: ``DeepseekV3RMSNorm`` (enorm, hnorm, shared_head.norm),
``DeepseekV3DecoderLayer`` (the MLA + MoE block, built with layer_idx = num_hidden_layers, so it is a
MoE layer), ``DeepseekV3RotaryEmbedding`` (the main model's own) and ``create_causal_mask``, plus plain
``torch.nn.Linear`` for eh_proj and shared_head.head and ``torch.nn.Embedding`` for embed_tokens. The
main model is transformers' ``DeepseekV3ForCausalLM`` loaded with ``from_pretrained`` from the files
written here. No number comes from dsv3.

Semantics (vLLM vllm/model_executor/models/deepseek_mtp.py DeepSeekMultiTokenPredictorLayer.forward;
SGLang python/sglang/srt/models/deepseek_nextn.py DeepseekModelNextN.forward), MTP row i in [0, L-1):
    h_i  = main-model hidden state at position i AFTER the final model.norm
    e    = mtp.embed_tokens(t_{i+1});  rule "vllm": e = 0 where position == 0 (row 0)
    u    = eh_proj(cat(enorm(e), hnorm(h_i)))          # embedding FIRST, hidden second
    g    = DecoderBlock(u) at RoPE position i, causal attention over MTP rows 0..i (own KV cache)
    logits_i = shared_head.head(shared_head.norm(g))    # predicts t_{i+2}

Usage (environment: see tests/golden/README.md; `bash scripts/venv.sh golden` makes it):
    .venv/golden/bin/python tests/golden/make_mtp_goldens.py [--out tests/golden/mtp] [--cases mtp-f32,...]
"""

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn

import safetensors
import safetensors.torch
from safetensors import safe_open
import transformers
from transformers import DeepseekV3ForCausalLM
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf_ds3

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_model_goldens as mmg  # noqa: E402  (config A/B, weight init, FP8 quantisation, helpers)

HERE = os.path.dirname(os.path.abspath(__file__))
SEQ_LEN = mmg.SEQ_LEN  # 48
SPEC_PROMPT = 8
SPEC_NEW = 24

# tiny config for the agreement case (low-entropy "next token = current token + 1" model)
CONFIG_T = OrderedDict(mmg.CONFIG_A)
CONFIG_T.update(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    moe_intermediate_size=32,
    num_hidden_layers=2,
    first_k_dense_replace=1,
    num_attention_heads=2,
    num_key_value_heads=2,
    n_routed_experts=8,
    n_group=4,
    topk_group=2,
    num_experts_per_tok=2,
    n_shared_experts=1,
    routed_scaling_factor=2.0,
    q_lora_rank=48,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
)


def with_mtp(cfg):
    c = OrderedDict(cfg)
    c["num_nextn_predict_layers"] = 1
    return c


# case -> spec. link: the main-model tensors are the main goldens' checkpoint (symlinked shards,
# verified tensor by tensor); full: everything written here.
CASES = OrderedDict(
    [
        ("mtp-f32", dict(config=mmg.CONFIG_A, wseed=1234, mtpseed=6165, idseed=11, storage="f32",
                         link="a-f32", kind="random")),
        ("mtp-fp8", dict(config=mmg.CONFIG_A, wseed=1234, mtpseed=6165, idseed=11, storage="fp8",
                         link="a-fp8", kind="random")),
        ("mtp-agree-f32", dict(config=CONFIG_T, wseed=777, mtpseed=778, idseed=44, storage="f32",
                               link=None, kind="agree")),
        ("mtp-heldout-f32", dict(config=mmg.CONFIG_B, wseed=2468, mtpseed=1357, idseed=55, storage="f32",
                                 link=None, kind="random")),
    ]
)

# agree-case construction knobs (see agree_weights)
AGREE_BETA = 1.0          # lm_head[v] = BETA * E[v-1] / sqrt(H)
AGREE_LAMBDA = 1.5        # scale of every residual-branch output projection (o_proj, down_proj)
AGREE_EH_H = 0.5          # scale of the hidden half of eh_proj (embedding half = identity)


# --------------------------------------------------------------------------------------------
# MTP tensor names and weights
# --------------------------------------------------------------------------------------------


def mtp_prefix(cfg):
    return f"model.layers.{cfg['num_hidden_layers']}."


def mtp_shapes(cfg):
    """(name, shape, kind) for the MTP layer, in the order drawn. kind 'copy:<name>' = copy of a main tensor."""
    N, H, V = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]
    P = mtp_prefix(cfg)
    c = OrderedDict(cfg)
    c["num_hidden_layers"] = N + 1
    block = [s for s in mmg.linear_shapes(c) if s[0].startswith(P)]
    assert any(".mlp.experts.0." in s[0] for s in block), "MTP block must be a MoE layer"
    out = [(P + "embed_tokens.weight", (V, H), "copy:model.embed_tokens.weight"),
           (P + "enorm.weight", (H,), "norm"),
           (P + "hnorm.weight", (H,), "norm"),
           (P + "eh_proj.weight", (H, 2 * H), "linear")]
    out += block
    out += [(P + "shared_head.norm.weight", (H,), "norm"),
            (P + "shared_head.head.weight", (V, H), "copy:lm_head.weight")]
    return out


def random_mtp_weights(cfg, seed, main_sd):
    """Same init rules as make_model_goldens.random_weights (router bias 'pos'), own generator."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for name, shape, kind in mtp_shapes(cfg):
        if kind.startswith("copy:"):
            sd[name] = main_sd[kind[5:]].clone()
            continue
        n = torch.randn(shape, generator=g, dtype=torch.float32)
        if kind == "norm":
            w = 1.0 + 0.1 * n
        elif kind in ("linear", "router"):
            w = n / math.sqrt(shape[1])
        elif kind == "bias":
            w = 0.5 + 0.1 * n
        else:
            raise AssertionError(kind)
        sd[name] = w.contiguous()
    return sd


def is_output_proj(name):
    return name.endswith("self_attn.o_proj.weight") or name.endswith("down_proj.weight")


def agree_weights(cfg, wseed, mtpseed):
    """Low-entropy model: main predicts t+1 from token t (lm_head rows = shifted embedding rows);
    the MTP gets the embedding of t_{i+1} through an identity half of eh_proj and shares the head,
    so it predicts t_{i+1}+1 = the main model's next-next token. All residual-branch outputs are
    scaled by AGREE_LAMBDA, and they are what makes main and MTP disagree sometimes."""
    sd = mmg.random_weights(cfg, wseed, "pos")
    H = cfg["hidden_size"]
    E = sd["model.embed_tokens.weight"]
    sd["lm_head.weight"] = (AGREE_BETA * torch.roll(E, 1, dims=0) / math.sqrt(H)).contiguous()
    for k in sd:
        if is_output_proj(k):
            sd[k] = (sd[k] * AGREE_LAMBDA).contiguous()
    mtp = random_mtp_weights(cfg, mtpseed, sd)
    P = mtp_prefix(cfg)
    eh = mtp[P + "eh_proj.weight"]
    eh[:, :H] = torch.eye(H)
    eh[:, H:] *= AGREE_EH_H
    for k in mtp:
        if is_output_proj(k):
            mtp[k] = (mtp[k] * AGREE_LAMBDA).contiguous()
    return sd, mtp


def mtp_storage(mtp_f32, storage):
    out = OrderedDict()
    for name, w in mtp_f32.items():
        if storage == "f32" or "e_score_correction_bias" in name:
            out[name] = w.clone()
        elif storage == "fp8":
            # eh_proj is a plain unquantised nn.Linear in vLLM and SGLang -> BF16, no scale
            if mmg.is_fp8_weight(name) and not name.endswith("eh_proj.weight"):
                q, s = mmg.fp8_quantize(w)
                out[name] = q
                out[name + "_scale_inv"] = s
            else:
                out[name] = w.to(torch.bfloat16)
        else:
            raise AssertionError(storage)
    return out


# --------------------------------------------------------------------------------------------
# Checkpoint writing / reading
# --------------------------------------------------------------------------------------------


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checkpoint(path):
    idx = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        files = sorted(set(wm.values()))
    else:
        wm, files = None, ["model.safetensors"]
    out = OrderedDict()
    for fn in files:
        with safe_open(os.path.join(path, fn), framework="pt") as f:
            for k in f.keys():
                assert wm is None or wm[k] == fn, (k, fn)
                assert k not in out, k
                out[k] = f.get_tensor(k)
    assert wm is None or set(wm) == set(out)
    return out


def link_main_shards(path, link_case, main_stored):
    """Symlink the main goldens' checkpoint files (tests/golden/model/<link_case>/) as the first shards,
    after checking that they hold exactly the main tensors this script regenerates."""
    src = os.path.join(HERE, "model", link_case)
    idx = os.path.join(src, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        srcfiles = sorted(set(wm.values()))
    else:
        srcfiles = ["model.safetensors"]
    n = len(srcfiles) + 1
    seen = OrderedDict()
    links = OrderedDict()
    for i, fn in enumerate(srcfiles):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        with safe_open(os.path.join(src, fn), framework="pt") as f:
            for k in f.keys():
                t = f.get_tensor(k)
                assert k in main_stored, f"{link_case}/{fn}: unexpected {k}"
                assert t.dtype == main_stored[k].dtype and torch.equal(t, main_stored[k]), f"{link_case}: {k} differs"
                seen[k] = name
        rel = os.path.relpath(os.path.join(src, fn), path)
        os.symlink(rel, os.path.join(path, name))
        links[name] = dict(target=rel, sha256=sha256(os.path.join(src, fn)))
    assert set(seen) == set(main_stored), "linked main checkpoint lacks tensors"
    return seen, links, f"model-{n:05d}-of-{n:05d}.safetensors"


def write_case_checkpoint(path, spec, main_stored, mtp_stored):
    meta = {"format": "pt"}
    allt = OrderedDict(list(main_stored.items()) + list(mtp_stored.items()))
    if spec["link"] is None:
        safetensors.torch.save_file(allt, os.path.join(path, "model.safetensors"), metadata=meta)
        return {"model.safetensors": "all tensors (main model + MTP layer)"}, None
    wm, links, mtp_file = link_main_shards(path, spec["link"], main_stored)
    safetensors.torch.save_file(mtp_stored, os.path.join(path, mtp_file), metadata=meta)
    for k in mtp_stored:
        wm[k] = mtp_file
    total = sum(mmg.nbytes(t) for t in allt.values())
    index = {"metadata": {"total_size": total}, "weight_map": OrderedDict(sorted(wm.items()))}
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    shards = OrderedDict((k, f"symlink -> {v['target']} (main model, sha256 {v['sha256']})") for k, v in links.items())
    shards[mtp_file] = "MTP layer (all model.layers.N.* tensors), written here"
    return shards, links


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def load_main(path, n_layers):
    """DeepseekV3ForCausalLM.from_pretrained; the only unexpected keys allowed are the MTP layer's."""
    model, info = DeepseekV3ForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager",
        output_loading_info=True,
    )
    P = f"model.layers.{n_layers}."
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    unexp = list(info["unexpected_keys"])
    assert all(k.startswith(P) for k in unexp), unexp[:5]
    model.eval()
    return model, len(unexp)


class MTPLayer(nn.Module):
    """DeepSeek-V3 MTP layer from transformers modules (see the module docstring)."""

    def __init__(self, config, rotary_emb):
        super().__init__()
        H, V, eps = config.hidden_size, config.vocab_size, config.rms_norm_eps
        self.config = config
        self.embed_tokens = nn.Embedding(V, H)
        self.enorm = hf_ds3.DeepseekV3RMSNorm(H, eps=eps)
        self.hnorm = hf_ds3.DeepseekV3RMSNorm(H, eps=eps)
        self.eh_proj = nn.Linear(2 * H, H, bias=False)
        self.block = hf_ds3.DeepseekV3DecoderLayer(config, layer_idx=config.num_hidden_layers)
        assert isinstance(self.block.mlp, hf_ds3.DeepseekV3MoE)
        # the MTP block has its own one-layer KV cache (a separate DynamicCache), so it is slot 0 there
        self.block.self_attn.layer_idx = 0
        self.shared_head = nn.Module()
        self.shared_head.norm = hf_ds3.DeepseekV3RMSNorm(H, eps=eps)
        self.shared_head.head = nn.Linear(H, V, bias=False)
        self._rotary = [rotary_emb]  # the main model's own module, not a parameter of this one

    def load_checkpoint_tensors(self, mtp_f32, cfg):
        P = mtp_prefix(cfg)
        E = cfg["n_routed_experts"]
        sd = OrderedDict()
        for name, w in mtp_f32.items():
            short = name[len(P):]
            if ".mlp.experts." in name or short.startswith("mlp.experts."):
                continue
            if short.split(".")[0] in ("embed_tokens", "enorm", "hnorm", "eh_proj", "shared_head"):
                sd[short] = w
            else:
                sd["block." + short] = w
        ex = P + "mlp.experts."
        sd["block.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([mtp_f32[ex + f"{e}.gate_proj.weight"], mtp_f32[ex + f"{e}.up_proj.weight"]], 0)
             for e in range(E)])
        sd["block.mlp.experts.down_proj"] = torch.stack([mtp_f32[ex + f"{e}.down_proj.weight"] for e in range(E)])
        self.load_state_dict(sd, strict=True)
        for k, v in self.state_dict().items():
            assert torch.equal(v, sd[k]), k
        return self

    @torch.no_grad()
    def forward(self, h_post, next_ids, positions, rule, cache=None):
        """h_post [T,H] main hidden after model.norm; next_ids [T] = t_{p+1}; positions [T] = p."""
        e = self.embed_tokens(next_ids)
        if rule == "vllm":
            e = e.masked_fill((positions == 0).unsqueeze(-1), 0.0)  # vLLM: inputs_embeds[positions == 0] = 0
        else:
            assert rule == "sglang"
        u = self.eh_proj(torch.cat([self.enorm(e), self.hnorm(h_post)], dim=-1)).unsqueeze(0)
        pos = positions.unsqueeze(0)
        pe = self._rotary[0](u, pos)
        mask = create_causal_mask(config=self.config, inputs_embeds=u, attention_mask=None, cache=cache,
                                  position_ids=pos)
        if u.shape[1] > 1:
            assert mask is not None
        g = self.block(u, attention_mask=mask, position_ids=pos, cache=cache, use_cache=cache is not None,
                       position_embeddings=pe)
        return self.shared_head.head(self.shared_head.norm(g))[0]


@torch.no_grad()
def main_run(model, ids):
    """(logits [T,V], hidden after model.norm [T,H]) of one prefill without cache."""
    inp = torch.tensor([ids])
    out = model(input_ids=inp, use_cache=False)
    hs = model.model(input_ids=inp, use_cache=False).last_hidden_state[0]
    assert torch.equal(model.lm_head(hs), out.logits[0])
    return out.logits[0], hs


@torch.no_grad()
def mtp_rows(mtp, h_post, ids, rule, cache=None, start=0):
    """MTP logits for rows start..len(ids)-2 (row p uses h_post[p] and ids[p+1])."""
    T = len(ids) - 1
    pos = torch.arange(start, T)
    return mtp(h_post[start:T], torch.tensor(ids[start + 1:T + 1]), pos, rule, cache)


@contextlib.contextmanager
def capture_router(mtp):
    rec = []
    hk = mtp.block.mlp.gate.register_forward_hook(lambda m, a, o: rec.append(tuple(t.detach().clone() for t in o)))
    try:
        yield rec
    finally:
        hk.remove()


@torch.no_grad()
def official_mtp_f64(mtp_f32, cfg, h_post, ids, rule):
    """Cross-check only (never written): the MTP in plain float64 torch. u is computed here; the block
    + shared head reuse make_model_goldens.official_f64_forward (official inference/model.py semantics:
    adjacent-pair RoPE, naive MLA, -inf group mask) on a one-layer MoE model whose embedding rows are u."""
    P = mtp_prefix(cfg)
    W = {k: v.double() for k, v in mtp_f32.items()}
    eps = cfg["rms_norm_eps"]

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    T = len(ids) - 1
    e = W[P + "embed_tokens.weight"][torch.tensor(ids[1:])]
    if rule == "vllm":
        e[0] = 0.0
    x = torch.cat([rms(e, W[P + "enorm.weight"]), rms(h_post[:T].double(), W[P + "hnorm.weight"])], -1)
    u = x @ W[P + "eh_proj.weight"].T
    sd = OrderedDict()
    sd["model.embed_tokens.weight"] = u
    for k, v in W.items():
        short = k[len(P):]
        if short.split(".")[0] not in ("embed_tokens", "enorm", "hnorm", "eh_proj", "shared_head"):
            sd["model.layers.0." + short] = v
    sd["model.norm.weight"] = W[P + "shared_head.norm.weight"]
    sd["lm_head.weight"] = W[P + "shared_head.head.weight"]
    c1 = OrderedDict(cfg)
    c1["num_hidden_layers"], c1["first_k_dense_replace"] = 1, 0
    return mmg.official_f64_forward(sd, c1, list(range(T)))


def top2_gap(logits):
    s = logits.double().sort(dim=-1, descending=True)[0]
    return float((s[:, 0] - s[:, 1]).min())


# --------------------------------------------------------------------------------------------
# Speculative decoding (greedy, one MTP draft per step), full recomputation each step
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def plain_greedy(model, prompt, n_new):
    seq = list(prompt)
    for _ in range(n_new):
        seq.append(int(main_run(model, seq)[0][-1].argmax()))
    return seq[len(prompt):]


@torch.no_grad()
def speculative(model, mtp, prompt, n_new, rule):
    seq = list(prompt)
    lg, _ = main_run(model, seq)
    seq.append(int(lg[-1].argmax()))  # first new token: main model prefill, no draft
    steps, gaps = [], []
    while len(seq) - len(prompt) < n_new:
        n = len(seq)
        _, hs = main_run(model, seq)            # h_p for p <= n-2 depends only on seq[:p+1]
        ml = mtp_rows(mtp, hs, seq, rule)       # MTP rows 0..n-2; row n-2 uses (h_{n-2}, t_{n-1})
        d = int(ml[-1].argmax())                # draft for position n
        gaps.append(top2_gap(ml[-1:]))
        lg2, _ = main_run(model, seq + [d])     # verify: main over [..., t_{n-1}, d]
        a = int(lg2[n - 1].argmax())            # main's token for position n
        gaps.append(top2_gap(lg2[n - 1:n]))
        if a == d:
            b = int(lg2[n].argmax())            # bonus token for position n+1
            gaps.append(top2_gap(lg2[n:n + 1]))
            seq += [d, b]
            steps.append({"position": n, "draft": d, "accepted": True, "main_token": a, "emitted": [d, b]})
        else:
            seq += [a]
            steps.append({"position": n, "draft": d, "accepted": False, "main_token": a, "emitted": [a]})
    gen = seq[len(prompt):][:n_new]
    return gen, steps, min(gaps)


# --------------------------------------------------------------------------------------------


def maxdiff(a, b):
    return mmg.maxdiff(a, b)


def run_case(name, spec, outdir, report):
    cfg = with_mtp(spec["config"])
    N = cfg["num_hidden_layers"]
    path = os.path.join(outdir, name)
    if os.path.lexists(path):
        shutil.rmtree(path)
    os.makedirs(path)
    print(f"== {name}", flush=True)

    if spec["kind"] == "agree":
        main_f32_gen, mtp_f32_gen = agree_weights(cfg, spec["wseed"], spec["mtpseed"])
    else:
        main_f32_gen = mmg.random_weights(cfg, spec["wseed"], "pos")
        mtp_f32_gen = random_mtp_weights(cfg, spec["mtpseed"], main_f32_gen)
    main_stored = mmg.storage_state_dict(main_f32_gen, spec["storage"])
    mtp_stored = mtp_storage(mtp_f32_gen, spec["storage"])
    mmg.write_config(cfg, path, spec["storage"])
    shards, links = write_case_checkpoint(path, spec, main_stored, mtp_stored)

    # --- read everything back from the files; the reference uses only what was read
    stored = read_checkpoint(path)
    assert set(stored) == set(main_stored) | set(mtp_stored)
    for k, v in list(main_stored.items()) + list(mtp_stored.items()):
        assert stored[k].dtype == v.dtype and torch.equal(stored[k], v), k
    P = mtp_prefix(cfg)
    ref = mmg.dequantized_f32(stored)
    main_f32 = OrderedDict((k, v) for k, v in ref.items() if not k.startswith(P))
    mtp_f32 = OrderedDict((k, v) for k, v in ref.items() if k.startswith(P))
    assert torch.equal(mtp_f32[P + "embed_tokens.weight"], main_f32["model.embed_tokens.weight"])
    assert torch.equal(mtp_f32[P + "shared_head.head.weight"], main_f32["lm_head.weight"])

    tmp = None
    if spec["storage"] == "fp8":
        tmp = tempfile.mkdtemp(prefix="dsv3_mtpfp8_")
        mmg.write_config(spec["config"], tmp, "f32")
        mmg.write_checkpoint(main_f32, tmp, 1)
        model, n_unexp = load_main(tmp, N)
        load_note = ("main model: script-side dequantisation exactly as make_model_goldens.py (float32(fp8) * "
                     "scale_inv[i//128, j//128], BF16 upcast), loaded with from_pretrained(dtype=float32)")
    else:
        model, n_unexp = load_main(path, N)
        assert n_unexp > 0
        load_note = (f"main model: from_pretrained of this directory; HF reports the {n_unexp} MTP tensors as "
                     "unexpected keys and ignores them (asserted: no other unexpected/missing key)")
    mmg.check_loaded_weights(model, spec["config"], main_f32)
    assert model.config._experts_implementation == "eager" and model.config._attn_implementation == "eager"

    mtp = MTPLayer(model.config, model.model.rotary_emb).load_checkpoint_tensors(mtp_f32, cfg).eval()

    g = torch.Generator().manual_seed(spec["idseed"])
    ids = [0] + torch.randint(2, cfg["vocab_size"], (SEQ_LEN - 1,), generator=g).tolist()

    main_logits, hs = main_run(model, ids)
    with capture_router(mtp) as rec:
        lg_s = mtp_rows(mtp, hs, ids, "sglang")
    assert len(rec) == 1
    rlog, rw, ridx = rec[0]
    topk = ridx.sort(dim=-1)[0].to(torch.int32)
    lg_v = mtp_rows(mtp, hs, ids, "vllm")
    assert lg_s.shape == (SEQ_LEN - 1, cfg["vocab_size"])

    # --- self-checks
    lg_s2 = mtp_rows(mtp, hs, ids, "sglang")
    deterministic = bool(torch.equal(lg_s, lg_s2))
    # fresh module + fresh main model reloaded from the files
    stored2 = read_checkpoint(path)
    ref2 = mmg.dequantized_f32(stored2)
    if tmp:
        m2, _ = load_main(tmp, N)
    else:
        m2, _ = load_main(path, N)
    mtp2 = MTPLayer(m2.config, m2.model.rotary_emb).load_checkpoint_tensors(
        OrderedDict((k, v) for k, v in ref2.items() if k.startswith(P)), cfg).eval()
    ml2, hs2 = main_run(m2, ids)
    reload_diff = max(maxdiff(ml2, main_logits), maxdiff(mtp_rows(mtp2, hs2, ids, "sglang"), lg_s),
                      maxdiff(mtp_rows(mtp2, hs2, ids, "vllm"), lg_v))
    del m2, mtp2
    # cached MTP decode (own DynamicCache): prefill rows 0..19, then one row per call
    dec_diff = {}
    for rule, full in (("sglang", lg_s), ("vllm", lg_v)):
        cache = DynamicCache()
        rows = [mtp(hs[:20], torch.tensor(ids[1:21]), torch.arange(20), rule, cache)]
        for p in range(20, SEQ_LEN - 1):
            rows.append(mtp(hs[p:p + 1], torch.tensor([ids[p + 1]]), torch.tensor([p]), rule, cache))
        assert cache.get_seq_length() == SEQ_LEN - 1
        dec_diff[rule] = maxdiff(torch.cat(rows), full)
    # independent plain-torch float64 MTP (official block semantics) from the same f32 main hidden states
    official_diff = {r: maxdiff(official_mtp_f64(mtp_f32, cfg, hs, ids, r), full)
                     for r, full in (("sglang", lg_s), ("vllm", lg_v))}
    # main model: this file vs the main goldens
    main_vs_linked = None
    if spec["link"]:
        ref_npy = np.load(os.path.join(HERE, "model", spec["link"], "logits.npy"))
        main_vs_linked = maxdiff(main_logits, ref_npy)
    # routing margins of the MTP block (sglang rule)
    gm, em = mmg.routing_margins(rlog, mtp_f32[P + "mlp.gate.e_score_correction_bias"], cfg)
    off = mmg.official_topk(rlog, mtp_f32[P + "mlp.gate.e_score_correction_bias"], cfg, float("-inf"))
    assert torch.equal(off.to(torch.int32), topk)
    # sglang vs vllm
    d = (lg_s.double() - lg_v.double()).abs()
    row0 = float(d[0].max())
    rest = d[1:].max(dim=-1)[0]
    # teacher-forced agreement: MTP greedy at row i vs main greedy at position i+1 (its token for i+2)
    mtp_am = lg_s.argmax(-1)
    main_next = main_logits[1:].argmax(-1)
    agree = int((mtp_am == main_next).sum())

    stats = OrderedDict(
        max_abs_sglang_vs_vllm_row0=row0,
        max_abs_sglang_vs_vllm_rows_1_on=float(rest.max()),
        max_abs_sglang_vs_vllm_per_row=[float(x) for x in d.max(dim=-1)[0]],
        max_abs_mtp_cached_decode_vs_prefill=dec_diff,
        max_abs_vs_plain_torch_official_f64_mtp=official_diff,
        mtp_deterministic_rerun_bit_equal=deterministic,
        max_abs_reload_from_files=reload_diff,
        max_abs_main_logits_vs_linked_golden=main_vs_linked,
        mtp_logits_abs_max=float(lg_s.abs().max()),
        mtp_logits_std=float(lg_s.std()),
        mtp_min_top1_top2_gap_sglang=top2_gap(lg_s),
        mtp_min_group_margin=gm,
        mtp_min_expert_margin=em,
        mtp_routing_equals_minus_inf_rule=True,
        teacher_forced_agreement=f"{agree}/{SEQ_LEN - 1}",
        teacher_forced_agreement_rate=agree / (SEQ_LEN - 1),
    )

    spec_out = None
    if spec["kind"] == "agree":
        prompt = ids[:SPEC_PROMPT]
        plain = plain_greedy(model, prompt, SPEC_NEW)
        hfgen = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, SPEC_PROMPT, dtype=torch.long),
                               do_sample=False, max_new_tokens=SPEC_NEW, min_new_tokens=0, eos_token_id=None,
                               pad_token_id=0, num_beams=1)[0, SPEC_PROMPT:].tolist()
        assert hfgen == plain, (hfgen, plain)
        spec_out = {}
        for rule in ("sglang", "vllm"):
            gen, steps, gap = speculative(model, mtp, prompt, SPEC_NEW, rule)
            assert gen == plain, (rule, gen, plain)
            acc = sum(s["accepted"] for s in steps)
            spec_out[rule] = OrderedDict(
                rule=rule,
                prompt_ids=prompt,
                generated_ids=gen,
                plain_greedy_ids=plain,
                mtp_drafted=len(steps),
                mtp_accepted=acc,
                acceptance_rate=acc / len(steps),
                min_top1_top2_gap=gap,
                per_step=steps,
            )
            stats[f"speculative_{rule}"] = f"{acc}/{len(steps)} drafts accepted"
        stats["speculative_min_top1_top2_gap"] = min(v["min_top1_top2_gap"] for v in spec_out.values())

    if tmp:
        shutil.rmtree(tmp)

    # --- outputs
    mmg.save_npy(path, "main_logits.npy", main_logits.float().numpy())
    mmg.save_npy(path, "mtp_logits_sglang.npy", lg_s.float().numpy())
    mmg.save_npy(path, "mtp_logits_vllm.npy", lg_v.float().numpy())
    mmg.save_npy(path, "mtp_routing_topk.npy", topk.numpy())
    if spec_out:
        for rule, fn in (("sglang", "speculative.json"), ("vllm", "speculative_vllm.json")):
            text = json.dumps(spec_out[rule], indent=1)
            with open(os.path.join(path, fn), "w") as f:
                f.write(text + "\n")

    notes = [load_note]
    if spec["storage"] == "fp8":
        notes.append("MTP layer: decoder-block attention/expert/shared-expert projections FP8 e4m3fn 128x128 + "
                     "weight_scale_inv (F32); eh_proj, enorm, hnorm, shared_head.*, embed_tokens and the router "
                     "weight in BF16; router bias F32. The MTP reference dequantises them the same way.")
    if spec["link"]:
        notes.append(f"The main-model shards are symlinks to tests/golden/model/{spec['link']}/ (checked tensor by "
                     "tensor against the weights regenerated here, sha256 recorded in 'linked_shards'); main_logits.npy "
                     f"equals tests/golden/model/{spec['link']}/logits.npy (max_abs_main_logits_vs_linked_golden).")
    if spec["kind"] == "agree":
        notes.append(
            f"Agreement construction: main weights from make_model_goldens.random_weights(seed {spec['wseed']}) then "
            f"lm_head[v] = {AGREE_BETA} * embed[(v-1) mod V] / sqrt(H) (main predicts t+1 from token t); every "
            f"o_proj and down_proj (dense, experts, shared) of main and MTP scaled by {AGREE_LAMBDA}; MTP weights "
            f"random (seed {spec['mtpseed']}) except eh_proj[:, :H] = I and eh_proj[:, H:] scaled by {AGREE_EH_H}; "
            "embed_tokens/shared_head.head are copies of the main ones.")
    meta = OrderedDict(
        case=name,
        ids=ids,
        config=("A" if spec["config"] is mmg.CONFIG_A else "B" if spec["config"] is mmg.CONFIG_B else "T (tiny)"),
        mtp_layer_index=N,
        mtp_prefix=P,
        storage=spec["storage"],
        weight_seed=spec["wseed"],
        mtp_weight_seed=spec["mtpseed"],
        ids_seed=spec["idseed"],
        shards=shards,
        linked_shards=links,
        transformers_version=transformers.__version__,
        torch_version=torch.__version__,
        safetensors_version=safetensors.__version__,
        numpy_version=np.__version__,
        reference_dtype="float32",
        attn_implementation="eager",
        experts_implementation="eager",
        semantics=OrderedDict(
            h="main-model hidden state at position p AFTER the final model.norm (= lm_head input)",
            e="mtp embed_tokens(t_{p+1}) (model.layers.N.embed_tokens.weight, a copy of model.embed_tokens.weight)",
            u="eh_proj(cat(enorm(e), hnorm(h)))  -- embedding first, hidden second",
            block="DeepseekV3DecoderLayer (MLA + MoE) at RoPE position p, causal over MTP rows 0..p, own KV cache",
            logits="shared_head.head(shared_head.norm(g)), predicts t_{p+2}",
        ),
        files=OrderedDict([
            ("main_logits.npy", "f32 [48, V]: main model prefill on ids (no cache)"),
            ("mtp_logits_sglang.npy", "f32 [47, V]: row i from h_i and ids[i+1], rule sglang (no special case)"),
            ("mtp_logits_vllm.npy", "f32 [47, V]: the same with the embedding zeroed at position 0 (vLLM)"),
            ("mtp_routing_topk.npy", "int32 [47, k]: experts selected by the MTP block's router (sglang rule), "
                                     "sorted ascending per row"),
        ]),
        rules=OrderedDict(
            sglang="paper / SGLang DeepseekModelNextN.forward: no special case at position 0",
            vllm="vLLM DeepSeekMultiTokenPredictorLayer.forward: inputs_embeds[positions == 0] = 0 before enorm "
                 "(enorm(0) = 0); row 0's MTP KV entry changes, so later rows change through attention",
        ),
        stats=stats,
        notes=notes,
    )
    if spec_out:
        meta["speculative_note"] = ("speculative.json (rule sglang) / speculative_vllm.json (rule vllm); procedure "
                                    "in tests/golden/README.md, section MTP")
    text = json.dumps(meta, indent=2)
    text = text.replace(json.dumps(ids, indent=2).replace("\n", "\n  "), json.dumps(ids), 1)
    per_row = json.dumps(stats["max_abs_sglang_vs_vllm_per_row"], indent=2).replace("\n", "\n    ")
    text = text.replace(per_row, json.dumps(stats["max_abs_sglang_vs_vllm_per_row"]), 1)
    with open(os.path.join(path, "meta.json"), "w") as f:
        f.write(text + "\n")
    short = {k: v for k, v in stats.items() if k != "max_abs_sglang_vs_vllm_per_row"}
    print("  ", json.dumps(short), flush=True)
    report[name] = short
    del model, mtp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "mtp"))
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()  # the load report lists the (expected) MTP keys as unexpected
    transformers.utils.logging.disable_progress_bar()
    mmg.HF_MASK_FILL_VALUE = mmg.detect_mask_fill()[1]
    os.makedirs(args.out, exist_ok=True)
    report = OrderedDict()
    for name in args.cases.split(","):
        run_case(name, CASES[name], args.out, report)
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
