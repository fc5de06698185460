"""Dump a dsv3 trace (docs/trace-names.md) from Hugging Face transformers' DeepseekV3ForCausalLM.

    .venv/golden/bin/python -m dsv3.dump hf --model DIR --ids 0,1,2 --out hf.safetensors \
        [--dtype float32] [--names 'resid_*,router_*,topk_*,logits']

then compare with the C++ reference:

    build/dsv3 trace --model DIR --ids 0,1,2 --out dsv3.safetensors
    build/dsv3 compare dsv3.safetensors hf.safetensors --tol f32

One prefill over all ids (positions 0..T-1, no cache), eager attention and eager experts. The values are
captured with forward hooks / forward pre-hooks on HF's own modules. Where HF has no module boundary
(the q_nope/q_pe split, the RoPE outputs, the router internals), the value is re-derived from hooked
module inputs/outputs with the same torch ops HF's modeling code uses; each such place is marked
"RE-DERIVED" below. Nothing here comes from dsv3.

Checkpoints: F32/BF16 are loaded with from_pretrained(dtype=...). FP8 block-scaled checkpoints
(config.quantization_config.quant_method == "fp8") are dequantised here, as tests/golden/README.md
explains (transformers' own FineGrainedFP8Config(dequantize=True) derives the block size from the scale
grid and fails or is wrong for dims that are not multiples of 128): W = float32(fp8) *
scale_inv[i//128, j//128], BF16 upcast exactly; the F32 state dict is loaded with from_pretrained from a
temporary directory.

Layout: with rope_interleave=True (DeepSeek-V3's default) HF rotates the adjacent pairs (x[2i], x[2i+1])
but writes the result as [rotated evens | rotated odds] ("halves" layout). q_pe_rope / k_pe_rope are
written back in the official adjacent-pair layout (out[2i] = halves[i], out[2i+1] = halves[d/2+i]), so
the names mean the same thing in every engine. q_pe / k_pe (before RoPE) are the raw checkpoint layout
in HF already.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections import OrderedDict

import numpy as np
import torch

import safetensors
import safetensors.torch
import transformers
from transformers import DeepseekV3ForCausalLM
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf_ds3

from ._writer import INDEX_NAMES, make_filter, parse_ids, write_trace

BLOCK = 128


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def read_checkpoint(path):
    """All tensors of the checkpoint in DIR (single file or index + shards)."""
    idx = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(p for p in os.listdir(path) if p.endswith(".safetensors"))
    out = OrderedDict()
    for fn in files:
        out.update(safetensors.torch.load_file(os.path.join(path, fn)))
    return out


def fp8_dequantize(q, scale_inv, block):
    """float32(fp8) * scale_inv[i // bm, j // bn], one f32 multiply per element, edge blocks cut."""
    out_f, in_f = q.shape
    s = scale_inv.to(torch.float32).repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)[:out_f, :in_f]
    return q.to(torch.float32) * s


def load_model(path, dtype):
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    qc = cfg.get("quantization_config") or {}
    kw = dict(dtype=dtype, attn_implementation="eager", experts_implementation="eager", output_loading_info=True)
    tmp = None
    src = path
    if qc.get("quant_method") == "fp8":
        block = qc.get("weight_block_size", [BLOCK, BLOCK])
        stored = read_checkpoint(path)
        sd = OrderedDict()
        for name, t in stored.items():
            if name.endswith("_scale_inv"):
                continue
            if t.dtype == torch.float8_e4m3fn:
                sd[name] = fp8_dequantize(t, stored[name + "_scale_inv"], block)
            else:
                sd[name] = t.to(torch.float32)
        tmp = tempfile.mkdtemp(prefix="dsv3_hf_trace_fp8_")
        cfg2 = dict(cfg)
        cfg2.pop("quantization_config")
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg2, f)
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(tmp, "model.safetensors"),
                                    metadata={"format": "pt"})
        src = tmp
    try:
        model, info = DeepseekV3ForCausalLM.from_pretrained(src, **kw)
    finally:
        if tmp:
            shutil.rmtree(tmp)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    # The MTP layer (model.layers.{N}.*) is dropped by transformers; anything else unexpected is an error.
    n = cfg["num_hidden_layers"]
    if "unexpected_keys" in bad:
        rest = [k for k in bad["unexpected_keys"] if not k.startswith(f"model.layers.{n}.")]
        if rest:
            bad["unexpected_keys"] = rest
        else:
            del bad["unexpected_keys"]
    if bad:
        raise RuntimeError(f"loading {path}: {bad}")
    model.eval()
    return model, ("fp8-dequantised-in-script" if tmp else "from_pretrained")


# --------------------------------------------------------------------------------------------
# Capture
# --------------------------------------------------------------------------------------------


def interleave_from_halves(x):
    """HF's rope_interleave output [r(x0), r(x2), ..., | r(x1), r(x3), ...] -> official [r(x0), r(x1), ...]."""
    d = x.shape[-1]
    return torch.stack([x[..., : d // 2], x[..., d // 2 :]], dim=-1).reshape(*x.shape[:-1], d)


class Recorder:
    def __init__(self, model, keep):
        self.model = model
        self.cfg = model.config
        self.keep = keep
        self.rec = {}  # (name, layer) -> tensor [T, W]
        self.handles = []

    def put(self, name, layer, t):
        if not self.keep(name):
            return
        t = t.detach()
        t = t.reshape(-1, t.shape[-1]) if t.dim() != 2 else t  # batch 1: [1, T, W] -> [T, W]
        assert (name, layer) not in self.rec, (name, layer)
        self.rec[(name, layer)] = t.clone()

    def fwd(self, mod, fn):
        self.handles.append(mod.register_forward_hook(fn))

    def pre(self, mod, fn, with_kwargs=False):
        self.handles.append(mod.register_forward_pre_hook(fn, with_kwargs=with_kwargs))

    def install(self):
        c = self.cfg
        m = self.model.model
        H, dn, dr = c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim
        dq, r = dn + dr, c.kv_lora_rank

        # embed: output of model.embed_tokens
        self.fwd(m.embed_tokens, lambda mod, a, o: self.put("embed", -1, o))

        for L, layer in enumerate(m.layers):
            at = layer.self_attn
            st = {}  # per-layer scratch shared between hooks

            self.fwd(layer.input_layernorm, lambda mod, a, o, L=L: self.put("attn_norm", L, o))

            # Position embeddings (cos, sin) as passed to self_attn (computed once by model.rotary_emb).
            def attn_pre(mod, args, kwargs, st=st):
                st["cos_sin"] = kwargs["position_embeddings"]
            self.pre(at, attn_pre, with_kwargs=True)

            if at.q_lora_rank is not None:
                self.fwd(at.q_a_proj, lambda mod, a, o, L=L: self.put("q_a", L, o))
                self.fwd(at.q_a_layernorm, lambda mod, a, o, L=L: self.put("q_a_norm", L, o))
                q_mod = at.q_b_proj
            else:
                q_mod = at.q_proj

            # RE-DERIVED: q_nope / q_pe / q_pe_rope from the q_b_proj (or q_proj) output, exactly as
            # DeepseekV3Attention.forward: view(B, T, -1, qk_head_dim).transpose(1, 2), torch.split
            # [nope, rope]; RoPE with HF's own apply_rotary_pos_emb_interleave (or apply_rotary_pos_emb
            # when rope_interleave is false) on the same cos/sin; then back to [T, H*d].
            def q_hook(mod, a, o, L=L, st=st):
                B, T = o.shape[:2]
                q = o.view(B, T, -1, dq).transpose(1, 2)
                q_pass, q_rot = torch.split(q, [dn, dr], dim=-1)
                to_rows = lambda x: x.transpose(1, 2).reshape(T, -1)  # [B, H, T, d] -> [T, H*d]
                self.put("q_nope", L, to_rows(q_pass))
                self.put("q_pe", L, to_rows(q_rot))
                st["q_rot"] = q_rot
            self.fwd(q_mod, q_hook)

            # RE-DERIVED: k_pe (and the RoPE of q and k) from kv_a_proj_with_mqa's output:
            # torch.split(compressed_kv, [kv_lora_rank, qk_rope_head_dim]), view(B, 1, T, dr).
            def kv_a_hook(mod, a, o, L=L, st=st):
                B, T = o.shape[:2]
                _, k_rot = torch.split(o, [r, dr], dim=-1)
                k_rot = k_rot.view(B, 1, T, dr)
                st["k_rot"] = k_rot
            self.fwd(at.kv_a_proj_with_mqa, kv_a_hook)

            # c_kv: kv_a_layernorm output (its input is the kv_lora_rank part of kv_a_proj_with_mqa).
            # HF calls kv_a_layernorm after kv_a_proj_with_mqa, so the rope tensors are emitted here too
            # (dsv3 order: q_pe_rope, c_kv, k_pe, k_pe_rope; the manifest order is fixed at write time).
            def kv_norm_hook(mod, a, o, L=L, st=st):
                self.put("c_kv", L, o)
                k_rot = st.pop("k_rot")
                q_rot = st.pop("q_rot")
                B, _, T, _ = k_rot.shape
                self.put("k_pe", L, k_rot.reshape(T, dr))
                cos, sin = st.pop("cos_sin")
                if c.rope_interleave:
                    q_emb, k_emb = hf_ds3.apply_rotary_pos_emb_interleave(q_rot, k_rot, cos, sin)
                    q_emb, k_emb = interleave_from_halves(q_emb), interleave_from_halves(k_emb)
                else:
                    q_emb, k_emb = hf_ds3.apply_rotary_pos_emb(q_rot, k_rot, cos, sin)
                self.put("q_pe_rope", L, q_emb.transpose(1, 2).reshape(T, -1))
                self.put("k_pe_rope", L, k_emb.reshape(T, dr))
            self.fwd(at.kv_a_layernorm, kv_norm_hook)

            # attn_out: the input of o_proj (attention output per head, [T, H*v_head_dim]).
            self.pre(at.o_proj, lambda mod, a, L=L: self.put("attn_out", L, a[0]))
            self.fwd(at.o_proj, lambda mod, a, o, L=L: self.put("attn_o_proj", L, o))
            # resid_attn: the input of post_attention_layernorm (= residual + attention output).
            self.pre(layer.post_attention_layernorm, lambda mod, a, L=L: self.put("resid_attn", L, a[0]))
            self.fwd(layer.post_attention_layernorm, lambda mod, a, o, L=L: self.put("ffn_norm", L, o))

            if isinstance(layer.mlp, hf_ds3.DeepseekV3MoE):
                moe = layer.mlp
                self.fwd(moe.gate, lambda mod, a, o, L=L: self.router(mod, o, L))
                self.fwd(moe.experts, lambda mod, a, o, L=L: self.put("routed_out", L, o))
                self.fwd(moe.shared_experts, lambda mod, a, o, L=L: self.put("shared_out", L, o))
            self.fwd(layer.mlp, lambda mod, a, o, L=L: self.put("ffn_out", L, o))
            # resid_ffn: decoder-layer output (residual stream after the layer).
            self.fwd(layer, lambda mod, a, o, L=L: self.put("resid_ffn", L, o[0] if isinstance(o, tuple) else o))

        self.fwd(m.norm, lambda mod, a, o: self.put("final_norm", -1, o))
        self.fwd(self.model.lm_head, lambda mod, a, o: self.put("logits", -1, o))

    def router(self, gate, out, L):
        # HF's DeepseekV3TopkRouter returns (router_logits, topk_weights, topk_indices), indices unsorted.
        router_logits, topk_weights, topk_indices = out
        self.put("router_logits", L, router_logits)
        # RE-DERIVED with the same ops as DeepseekV3TopkRouter.forward (all in f32):
        scores = router_logits.sigmoid()
        scores_for_choice = scores + gate.e_score_correction_bias
        self.put("router_scores", L, scores)
        self.put("router_biased", L, scores_for_choice)
        G, E, k = gate.num_group, gate.num_experts, gate.top_k
        group_scores = scores_for_choice.view(-1, G, E // G).topk(2, dim=-1)[0].sum(dim=-1)
        self.put("group_scores", L, group_scores)
        group_idx = torch.topk(group_scores, k=gate.topk_group, dim=-1, sorted=False)[1]
        self.put("topk_groups", L, group_idx.sort(dim=-1)[0])
        group_mask = torch.zeros_like(group_scores)
        group_mask.scatter_(1, group_idx, 1)
        score_mask = group_mask.unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E)
        masked = scores_for_choice.masked_fill(~score_mask.bool(), float("-inf"))
        # Sanity: the re-derived selection is HF's selection.
        again = torch.topk(masked, k=k, dim=-1, sorted=False)[1]
        assert torch.equal(again.sort(-1)[0], topk_indices.sort(-1)[0]), "re-derived routing differs from HF's"
        # topk_ids sorted ascending per row; topk_weights permuted along (HF's own weights, not recomputed).
        ids_sorted, perm = topk_indices.sort(dim=-1)
        self.put("topk_ids", L, ids_sorted)
        self.put("topk_weights", L, topk_weights.gather(1, perm))
        # topk_margin: k-th minus (k+1)-th biased candidate among the kept groups (inf if none).
        if k < E:
            top = masked.topk(k + 1, dim=-1, sorted=True)[0]
            margin = top[:, k - 1] - top[:, k]
            margin = torch.where(torch.isinf(top[:, k]), torch.full_like(margin, float("inf")), margin)
        else:
            margin = torch.full((masked.shape[0],), float("inf"))
        self.put("topk_margin", L, margin[:, None])

    def remove(self):
        for h in self.handles:
            h.remove()


def main(argv=None, prog=None):
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="HF-layout checkpoint directory")
    ap.add_argument("--ids", required=True, help="comma-separated token ids")
    ap.add_argument("--out", required=True, help="output trace .safetensors")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"],
                    help="model dtype for the run (router stays f32 as in HF); the trace is always written as F32")
    ap.add_argument("--names", default="", help="comma-separated globs of trace names to keep (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)

    torch.set_num_threads(a.threads)
    ids = parse_ids(a.ids)
    dtype = getattr(torch, a.dtype)
    model, load_path = load_model(a.model, dtype)
    rec = Recorder(model, make_filter(a.names))
    rec.install()
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
    finally:
        rec.remove()
    if rec.keep("logits"):
        assert torch.equal(rec.rec[("logits", -1)], logits), "hooked lm_head output != model logits"
    meta = {
        "engine": "hf-transformers",
        "ids": ids,
        "model": a.model,
        "dtype": a.dtype,
        "load_path": load_path,
        "attn_implementation": "eager",
        "experts_implementation": "eager",
        "rope_layout": "q_pe_rope/k_pe_rope converted from HF halves to official adjacent pairs"
        if model.config.rope_interleave else "rope_interleave=false: rotate_half layout, no conversion",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    arrays = {k: (v.to(torch.int32) if k[0] in INDEX_NAMES else v.to(torch.float32)).contiguous().numpy()
              for k, v in rec.rec.items()}
    n = write_trace(arrays, model.config.num_hidden_layers, a.out, meta)
    print(f"wrote {a.out}: {n} tensors")


if __name__ == "__main__":
    sys.exit(main(prog="python -m dsv3.dump hf"))
