"""Dump a dsv3 trace (docs/trace-names.md) from mlx-lm's `deepseek_v3` model.

    .venv/mlx/bin/python -m dsv3.dump mlx --model DIR --ids 0,1,2 --out mlx.safetensors \
        [--dtype float32|native] [--names GLOBS]

then compare (mlx-lm masks the dropped expert groups with 0.0, not -inf, so reproduce that in dsv3):

    build/dsv3 trace --model DIR --ids 0,1,2 --out dsv3-zero.safetensors --group-mask-fill 0
    build/dsv3 compare dsv3-zero.safetensors mlx.safetensors --tol f32

Environment: `bash scripts/venv.sh mlx` (.venv/mlx, `pip install .[mlx]`: "mlx[cpu]==0.32.4" mlx-lm==0.32.2; the
mlx-cpu build runs on Linux; tested with mlx 0.32.4, mlx-cpu 0.32.4, mlx-lm 0.32.2). No torch needed.

Loading: DIR is an HF-layout checkpoint (config.json + model*.safetensors [+ index]). It is loaded with
mlx-lm's own `mlx_lm.utils.load_model`, which builds `mlx_lm.models.deepseek_v3.Model` and converts the
weights with `Model.sanitize` exactly as `mlx_lm.load` does: FP8 `weight_scale_inv` dequantisation (in
BF16: `from_fp8(w, bf16) * scale_inv`, cast to bf16), per-expert weights stacked into
`mlp.switch_mlp.{gate,up,down}_proj`, `kv_b_proj` split into the per-head `embed_q` (W_UK^T) and
`unembed_out` (W_UV) MultiLinear weights, MTP layer dropped. mlx-lm keeps the stored dtype; with
`--dtype float32` (default) every floating parameter is then cast to float32 (an exact upcast of BF16),
so an F32 or BF16 checkpoint runs in f32. `--dtype native` keeps mlx-lm's dtypes.

Capture: mlx has no forward hooks, so this script patches `__call__` of the classes of the modules it
taps (nn.Linear, nn.RMSNorm, nn.Embedding, the RoPE class, DeepseekV3MLP/MoE/MoEGate/DecoderLayer,
SwitchGLU) with a wrapper that runs the original `__call__` unchanged and then hands (inputs, output)
to the callbacks registered for that module instance (by id). Values are the module outputs (or
inputs) as mlx computed them. Where there is no module boundary the value is re-derived with the same
mlx ops mlx-lm uses, marked "RE-DERIVED" below:
  - q_nope / q_pe: split of q_b_proj's (q_proj's) output, as DeepseekV3Attention.__call__;
  - k_pe: split of kv_a_proj_with_mqa's output;
  - router internals: MoEGate.__call__ passes `x @ weight.T` into the mx.compile'd
    `group_expert_select`, which returns only (inds, scores). router_logits = x @ weight.T (same op,
    same input); router_scores / router_biased / group_scores / the dropped groups are recomputed with
    the ops of group_expert_select (uncompiled); the selection is checked against the gate's output.
  - routed_out: mlx-lm computes `(switch_mlp(x, inds) * scores[..., None]).sum(-2)` inline in
    DeepseekV3MoE.__call__; it is recomputed from the tapped SwitchGLU output and the gate's scores.
q_pe_rope / k_pe_rope are the outputs of the model's own RoPE module (YarnRoPE, traditional=True =
DeepSeek's adjacent-pair layout), first call = q, second call = k, so no layout conversion is needed.

Semantics to know when comparing: mlx-lm's group_expert_select fills the dropped groups with 0.0 (not
-inf, as the official code and HF do): `put_along_axis(scores, group_idx, 0.0)`. With all biased scores
> 0 the selection is the same; with negative biased scores it is not. topk_margin here is computed on
mlx's 0-filled array, exactly as `dsv3 trace --group-mask-fill 0` computes it.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
from mlx_lm.models import deepseek_v3 as mlx_ds3
from mlx_lm.models.switch_layers import SwitchGLU
from mlx_lm.utils import load_model

from ._writer import INDEX_NAMES, make_filter, parse_ids, write_trace


# --------------------------------------------------------------------------------------------
# Hooks for mlx: patch the class __call__ once, dispatch to per-instance callbacks.
# --------------------------------------------------------------------------------------------

_TAPS = {}  # id(module) -> [fn(module, args, kwargs, out)]


def _patch_class(cls):
    orig = cls.__call__
    if getattr(orig, "_dsv3_tap", False):
        return

    def call(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)  # the original computation, unchanged
        for fn in _TAPS.get(id(self), ()):
            fn(self, args, kwargs, out)
        return out

    call._dsv3_tap = True
    call._dsv3_orig = orig
    cls.__call__ = call


def tap(module, fn):
    _patch_class(type(module))
    _TAPS.setdefault(id(module), []).append(fn)


# --------------------------------------------------------------------------------------------


class Recorder:
    def __init__(self, model, keep):
        self.model = model
        self.args = model.args
        self.keep = keep
        self.rec = {}

    def put(self, name, layer, x):
        if not self.keep(name):
            return
        assert (name, layer) not in self.rec, (name, layer)
        self.rec[(name, layer)] = x.reshape(-1, x.shape[-1])  # batch 1: [1, T, W] -> [T, W]

    def install(self):
        a = self.args
        m = self.model.model
        H, dn, dr, r = a.num_attention_heads, a.qk_nope_head_dim, a.qk_rope_head_dim, a.kv_lora_rank
        dq = dn + dr
        tap(m.embed_tokens, lambda mod, args, kw, o: self.put("embed", -1, o))
        for L, layer in enumerate(m.layers):
            at = layer.self_attn
            tap(layer.input_layernorm, lambda mod, args, kw, o, L=L: self.put("attn_norm", L, o))
            if at.q_lora_rank is not None:
                tap(at.q_a_proj, lambda mod, args, kw, o, L=L: self.put("q_a", L, o))
                tap(at.q_a_layernorm, lambda mod, args, kw, o, L=L: self.put("q_a_norm", L, o))
                q_mod = at.q_b_proj
            else:
                q_mod = at.q_proj

            # RE-DERIVED: as DeepseekV3Attention.__call__: q.reshape(B, L, H, dq).transpose(0, 2, 1, 3);
            # mx.split(q, [qk_nope_head_dim], axis=-1).
            def q_hook(mod, args, kw, o, L=L):
                B, T = o.shape[:2]
                q = o.reshape(B, T, H, dq).transpose(0, 2, 1, 3)
                q_nope, q_pe = mx.split(q, [dn], axis=-1)
                self.put("q_nope", L, q_nope.transpose(0, 2, 1, 3).reshape(T, H * dn))
                self.put("q_pe", L, q_pe.transpose(0, 2, 1, 3).reshape(T, H * dr))
            tap(q_mod, q_hook)

            # RE-DERIVED: mx.split(compressed_kv, [kv_lora_rank], axis=-1) -> k_pe (before RoPE).
            tap(at.kv_a_proj_with_mqa,
                lambda mod, args, kw, o, L=L: self.put("k_pe", L, mx.split(o, [r], axis=-1)[1]))
            tap(at.kv_a_layernorm, lambda mod, args, kw, o, L=L: self.put("c_kv", L, o))

            # The attention's RoPE module is called twice per forward: q_pe first, then k_pe.
            calls = {"n": 0}

            def rope_hook(mod, args, kw, o, L=L, calls=calls):
                T = o.shape[2]  # [B, heads, T, dr]
                name = "q_pe_rope" if calls["n"] % 2 == 0 else "k_pe_rope"
                calls["n"] += 1
                self.put(name, L, o.transpose(0, 2, 1, 3).reshape(T, -1))
            tap(at.rope, rope_hook)

            tap(at.o_proj, lambda mod, args, kw, o, L=L: self.put("attn_out", L, args[0]))
            tap(at.o_proj, lambda mod, args, kw, o, L=L: self.put("attn_o_proj", L, o))
            tap(layer.post_attention_layernorm, lambda mod, args, kw, o, L=L: self.put("resid_attn", L, args[0]))
            tap(layer.post_attention_layernorm, lambda mod, args, kw, o, L=L: self.put("ffn_norm", L, o))

            if isinstance(layer.mlp, mlx_ds3.DeepseekV3MoE):
                moe = layer.mlp
                st = {}
                tap(moe.gate, lambda mod, args, kw, o, L=L, st=st: self.router(mod, args[0], o, L, st))

                # RE-DERIVED: DeepseekV3MoE.__call__: y = (switch_mlp(x, inds) * scores[..., None]).sum(-2)
                def switch_hook(mod, args, kw, y, L=L, st=st):
                    scores = st.pop("scores")
                    self.put("routed_out", L, (y * scores[..., None]).sum(axis=-2).astype(y.dtype))
                tap(moe.switch_mlp, switch_hook)
                if getattr(moe, "shared_experts", None) is not None:
                    tap(moe.shared_experts, lambda mod, args, kw, o, L=L: self.put("shared_out", L, o))
            tap(layer.mlp, lambda mod, args, kw, o, L=L: self.put("ffn_out", L, o))
            tap(layer, lambda mod, args, kw, o, L=L: self.put("resid_ffn", L, o))
        tap(m.norm, lambda mod, args, kw, o: self.put("final_norm", -1, o))
        tap(self.model.lm_head, lambda mod, args, kw, o: self.put("logits", -1, o))

    def router(self, gate, x, out, L, st):
        inds, weights = out  # group_expert_select's result: [B, T, k] unsorted ids, their weights
        st["scores"] = weights
        # RE-DERIVED: MoEGate.__call__ passes `x @ self.weight.T` to group_expert_select.
        logits = x @ gate.weight.T
        self.put("router_logits", L, logits)
        # RE-DERIVED with group_expert_select's ops (not mx.compile'd here):
        scores = mx.sigmoid(logits.astype(mx.float32))
        biased = scores + gate.e_score_correction_bias
        self.put("router_scores", L, scores)
        self.put("router_biased", L, biased)
        G, E, k = gate.n_group, gate.n_routed_experts, gate.top_k
        T = logits.shape[-2]
        if G > 1:
            grouped = mx.unflatten(biased, axis=-1, shape=(G, -1))
            group_scores = mx.topk(grouped, 2, axis=-1).sum(axis=-1, keepdims=True)  # [B, T, G, 1]
            kd = G - gate.topk_group
            dropped = mx.argpartition(group_scores, kth=kd - 1, axis=-2)[..., :kd, :]
            masked = mx.flatten(mx.put_along_axis(grouped, dropped, mx.array(0.0), axis=-2), -2, -1)
            gs = np.array(group_scores.reshape(T, G))
            drop = np.array(dropped.reshape(T, kd))
            kept = np.stack([np.setdiff1d(np.arange(G), drop[t]) for t in range(T)]).astype(np.int32)
        else:
            masked = biased
            gs = np.array(biased.max(axis=-1)).reshape(T, 1)  # not meaningful with one group
            kept = np.zeros((T, 1), np.int32)
        self.put("group_scores", L, mx.array(gs))
        self.put("topk_groups", L, mx.array(kept))
        # mlx's selection: argpartition(-masked, kth=k-1)[..., :k]; check the re-derivation matches.
        again = np.sort(np.array(mx.argpartition(-masked, kth=k - 1, axis=-1)[..., :k]).reshape(T, k), -1)
        ids = np.array(inds).reshape(T, k)
        perm = np.argsort(ids, axis=-1, kind="stable")
        ids_sorted = np.take_along_axis(ids, perm, -1)
        assert np.array_equal(again, ids_sorted), "re-derived routing differs from mlx-lm's"
        self.put("topk_ids", L, mx.array(ids_sorted.astype(np.int32)))
        self.put("topk_weights", L, mx.array(np.take_along_axis(np.array(weights).reshape(T, k), perm, -1)))
        # topk_margin: k-th minus (k+1)-th candidate of mlx's (0-filled) masked scores.
        mk = -np.sort(-np.array(masked.astype(mx.float32)).reshape(T, E), axis=-1)
        margin = mk[:, k - 1] - mk[:, k] if k < E else np.full(T, np.inf)
        self.put("topk_margin", L, mx.array(margin.astype(np.float32).reshape(T, 1)))


def main(argv=None, prog=None):
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="HF-layout checkpoint directory")
    ap.add_argument("--ids", required=True, help="comma-separated token ids")
    ap.add_argument("--out", required=True, help="output trace .safetensors")
    ap.add_argument("--dtype", default="float32", choices=["float32", "native"],
                    help="float32: cast every floating parameter to f32 after mlx-lm's load; native: keep mlx-lm's")
    ap.add_argument("--names", default="", help="comma-separated globs of trace names to keep (default: all)")
    a = ap.parse_args(argv)

    mx.set_default_device(mx.cpu)
    ids = parse_ids(a.ids)
    model, config = load_model(Path(a.model))  # mlx-lm's loader: Model.sanitize + load_weights(strict)
    if config.get("model_type") != "deepseek_v3":
        raise SystemExit(f"{a.model}: model_type {config.get('model_type')!r}, expected deepseek_v3")
    if a.dtype == "float32":
        from mlx.utils import tree_map
        model.update(tree_map(lambda p: p.astype(mx.float32) if mx.issubdtype(p.dtype, mx.floating) else p,
                              model.parameters()))
    mx.eval(model.parameters())
    rec = Recorder(model, make_filter(a.names))
    rec.install()
    logits = model(mx.array([ids]))  # one prefill, no cache (mask = causal array)
    mx.eval(logits)
    if rec.keep("logits"):
        assert np.array_equal(np.array(rec.rec[("logits", -1)]), np.array(logits[0])), "tapped lm_head != logits"
    meta = {
        "engine": "mlx-lm",
        "ids": ids,
        "model": a.model,
        "dtype": a.dtype,
        "group_mask_fill": "0",
        "load_path": "mlx_lm.utils.load_model (Model.sanitize)",
        "mlx_version": mx.__version__,
        "mlx_lm_version": mlx_lm.__version__,
    }
    arrays = {k: np.array(v.astype(mx.int32 if k[0] in INDEX_NAMES else mx.float32)) for k, v in rec.rec.items()}
    n = write_trace(arrays, model.args.num_hidden_layers, a.out, meta)
    print(f"wrote {a.out}: {n} tensors")


if __name__ == "__main__":
    sys.exit(main(prog="python -m dsv3.dump mlx"))
