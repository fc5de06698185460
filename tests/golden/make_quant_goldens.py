#!/usr/bin/env python3
"""Goldens for dsv3's quantized-checkpoint decoders (include/dsv3/quant.hpp).

Every number written here comes from the quantization libraries themselves, never from dsv3:

* AWQ (the format of cognitivecomputations/DeepSeek-V3-0324-AWQ): AutoAWQ 0.2.9's own code —
  `AwqQuantizer.pseudo_quantize_tensor` (scales/zeros), `WQLinear_GEMM.from_linear` (packing,
  order map [0,2,4,6,1,3,5,7]) and `awq.utils.packing_utils.dequantize_gemm` (the dequantized
  matrix, f16). The CPU cannot run AutoAWQ's CUDA/Triton kernels, but these three functions are
  pure torch and run unchanged on the CPU.
* MLX affine (mlx-community/DeepSeek-V3-0324-{4,5,8}bit): `mx.quantize` / `mx.dequantize` of
  mlx 0.32.4 (CPU build, `mlx[cpu]`), saved with `mx.save_safetensors` like mlx-lm does.
* mlx-lm end to end: mlx-lm 0.32.2's `deepseek_v3.Model` on a tiny config, its `sanitize`
  (expert stacking, kv_b_proj -> embed_q/unembed_out), `mlx_lm.utils.quantize_model`,
  `save_model` + `save_config`, then `load_model` (the official loading path) and a forward pass.

Usage (see tests/golden/README.md, section "Quantized formats"):
  bash scripts/venv.sh quant   # .venv/quant: the golden packages + mlx[cpu] 0.32.4, mlx-lm 0.32.2,
                               # and AutoAWQ 0.2.9 without deps in .venv/quant/awq-pkg
  .venv/quant/bin/python tests/golden/make_quant_goldens.py
Set AWQ_PATH to use another AutoAWQ install (default: .venv/quant/awq-pkg in the repository).
"""

import argparse
import json
import math
import os
import shutil
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

HERE = Path(__file__).resolve().parent

# ------------------------------------------------------------------------------------------------
# AutoAWQ import (no-deps install: stub the calibration-data import that needs `datasets`)
# ------------------------------------------------------------------------------------------------


def import_awq():
    p = os.environ.get("AWQ_PATH", str(HERE.parent.parent / ".venv" / "quant" / "awq-pkg"))
    if p and p not in sys.path:
        sys.path.insert(0, p)
    if "datasets" not in sys.modules:
        stub = types.ModuleType("datasets")
        stub.load_dataset = None  # only used for calibration, which we do not run
        sys.modules["datasets"] = stub
    import awq  # noqa: F401
    from awq.models._config import AwqConfig
    from awq.modules.linear.gemm import WQLinear_GEMM
    from awq.quantize.quantizer import AwqQuantizer
    from awq.utils.packing_utils import dequantize_gemm

    return AwqConfig, WQLinear_GEMM, AwqQuantizer, dequantize_gemm


# ------------------------------------------------------------------------------------------------
# AWQ layout + dequant goldens
# ------------------------------------------------------------------------------------------------

# case -> (group_size, [(module prefix, out, in)]). AutoAWQ's from_linear sizes qweight as
# out // 32 * 4 words, so `out` must be a multiple of 32 (every DeepSeek-V3 projection is).
AWQ_CASES = OrderedDict(
    [
        (
            "g64",
            (
                64,
                [
                    ("model.layers.0.self_attn.kv_a_proj_with_mqa", 96, 128),
                    ("model.layers.0.self_attn.kv_b_proj", 224, 64),
                    ("model.layers.1.mlp.experts.5.down_proj", 160, 192),
                    ("model.layers.1.mlp.shared_experts.gate_proj", 96, 320),
                ],
            ),
        ),
        (
            "g128",
            (
                128,
                [
                    ("model.layers.0.self_attn.q_b_proj", 160, 384),
                    ("model.layers.0.mlp.down_proj", 96, 384),
                ],
            ),
        ),
    ]
)


def awq_unpack_reference(qweight, qzeros, scales, group):
    """Independent numpy reading of the documented layout (asserted equal to AutoAWQ's dequant)."""
    rev = np.array([0, 4, 1, 5, 2, 6, 3, 7])
    qw = qweight.astype(np.int64) & 0xFFFFFFFF
    qz = qzeros.astype(np.int64) & 0xFFFFFFFF
    n_in, n_w = qw.shape
    shifts = np.tile(rev * 4, n_w)  # output column c: shift 4*rev[c % 8] in word c // 8
    words = np.repeat(np.arange(n_w), 8)
    q = (qw[:, words] >> shifts) & 0xF                    # [in, out]
    z = (qz[:, words] >> shifts) & 0xF                    # [in/group, out]
    z = np.repeat(z, group, axis=0)
    s = np.repeat(scales.astype(np.float32), group, axis=0)
    return ((q - z).astype(np.float32) * s).astype(np.float16)  # one f16 rounding


def make_awq(out_root):
    AwqConfig, WQLinear_GEMM, AwqQuantizer, dequantize_gemm = import_awq()
    from safetensors.torch import save_file

    summary = {}
    g = torch.Generator().manual_seed(4242)
    for case, (group, modules) in AWQ_CASES.items():
        d = out_root / "awq" / case
        if d.exists():
            shutil.rmtree(d)
        (d / "dequant").mkdir(parents=True)
        tensors = OrderedDict()
        meta_modules = []
        for mi, (prefix, n_out, n_in) in enumerate(modules):
            w = torch.randn(n_out, n_in, generator=g) / math.sqrt(n_in)
            # Outliers spread the per-group scales; a constant group hits AutoAWQ's
            # clamp(min=1e-5) path (f16 subnormal scale); a large group makes (q-z)*s round in f16.
            w[1, 3] = 0.9
            w[2, :group] = 0.25
            if mi == 0:
                w[3, :group] *= 3000.0
            linear = torch.nn.Linear(n_in, n_out, bias=False)
            # AutoAWQ _apply_quant: layer.half(), pseudo-quantize, then from_linear on the result.
            linear = linear.half()
            linear.weight.data = w.half()
            qz = types.SimpleNamespace(group_size=group, zero_point=True, w_bit=4)
            wq, scales, zeros = AwqQuantizer.pseudo_quantize_tensor(qz, linear.weight.data)
            linear.weight.data = wq
            ql = WQLinear_GEMM.from_linear(
                linear=linear,
                w_bit=4,
                group_size=group,
                init_only=False,
                scales=scales.t().contiguous(),
                zeros=zeros.t().contiguous(),
            )
            qweight, qzeros, sc = ql.qweight.contiguous(), ql.qzeros.contiguous(), ql.scales.contiguous()
            assert qweight.dtype == torch.int32 and qweight.shape == (n_in, n_out // 8)
            assert qzeros.dtype == torch.int32 and qzeros.shape == (n_in // group, n_out // 8)
            assert sc.dtype == torch.float16 and sc.shape == (n_in // group, n_out)
            deq = dequantize_gemm(qweight, qzeros, sc, 4, group)  # [in, out] f16, AutoAWQ's own
            assert deq.dtype == torch.float16 and deq.shape == (n_in, n_out)
            ref = awq_unpack_reference(qweight.numpy(), qzeros.numpy(), sc.numpy(), group)
            assert np.array_equal(ref.view(np.uint16), deq.numpy().view(np.uint16)), prefix
            tensors[prefix + ".qweight"] = qweight
            tensors[prefix + ".qzeros"] = qzeros
            tensors[prefix + ".scales"] = sc
            # Stored as W = [out, in] (PyTorch Linear convention), the transpose of AutoAWQ's [in, out].
            np.save(d / "dequant" / (prefix + ".npy"), deq.float().t().contiguous().numpy())
            meta_modules.append(dict(prefix=prefix, out=n_out, **{"in": n_in}))
        save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
        qc = AwqConfig(zero_point=True, q_group_size=group, w_bit=4, version="gemm").to_transformers_dict()
        (d / "config.json").write_text(json.dumps({"quantization_config": qc}, indent=2) + "\n")
        meta = dict(
            format="awq-gemm",
            group_size=group,
            bits=4,
            modules=meta_modules,
            dequant="dequant/<prefix>.npy = AutoAWQ dequantize_gemm(qweight, qzeros, scales) "
            "(f16, [in, out]) transposed to [out, in], stored as float32",
            generator="AutoAWQ " + __import__("awq").__version__,
            torch=torch.__version__,
        )
        (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        summary[case] = len(meta_modules)
    return summary


# ------------------------------------------------------------------------------------------------
# MLX layout + dequant goldens
# ------------------------------------------------------------------------------------------------

MLX_TENSORS_64 = [
    ("model.layers.0.self_attn.kv_b_proj", (112, 64)),
    ("model.layers.0.mlp.down_proj", (96, 320)),
    ("model.layers.1.mlp.switch_mlp.up_proj", (3, 40, 192)),   # stacked experts [E, out, in]
    ("model.layers.1.self_attn.embed_q", (2, 48, 64)),          # MultiLinear [heads, out, in]
    ("model.embed_tokens", (50, 128)),
]
MLX_TENSORS_32 = [
    ("model.layers.0.self_attn.kv_a_proj_with_mqa", (72, 96)),
    ("model.layers.1.mlp.switch_mlp.down_proj", (4, 24, 160)),
    ("lm_head", (40, 224)),
]
MLX_TENSORS_128 = [
    ("model.layers.0.self_attn.q_b_proj", (60, 256)),
    ("model.layers.2.mlp.switch_mlp.gate_proj", (2, 16, 384)),
]

# case -> (bits, group_size, scale dtype name, tensors)
MLX_CASES = OrderedDict(
    [
        ("b4-g64-bf16", (4, 64, "bfloat16", MLX_TENSORS_64)),
        ("b5-g64-bf16", (5, 64, "bfloat16", MLX_TENSORS_64)),
        ("b8-g64-bf16", (8, 64, "bfloat16", MLX_TENSORS_64)),
        ("b4-g32-f16", (4, 32, "float16", MLX_TENSORS_32)),
        ("b5-g32-f32", (5, 32, "float32", MLX_TENSORS_32)),
        ("b8-g128-f16", (8, 128, "float16", MLX_TENSORS_128)),
        ("b5-g128-bf16", (5, 128, "bfloat16", MLX_TENSORS_128)),
    ]
)


def make_mlx(out_root):
    import mlx.core as mx

    summary = {}
    rng = np.random.default_rng(777)
    for case, (bits, group, dtname, tlist) in MLX_CASES.items():
        dt = getattr(mx, dtname)
        d = out_root / "mlx" / case
        if d.exists():
            shutil.rmtree(d)
        (d / "dequant").mkdir(parents=True)
        tensors = {}
        meta_t = []
        for prefix, shape in tlist:
            w = rng.standard_normal(shape).astype(np.float32) / math.sqrt(shape[-1])
            w.reshape(-1, shape[-1])[1, 5] = 1.5                  # outlier -> wide group
            w.reshape(-1, shape[-1])[2, :group] = -0.125          # constant group (scale ~ 0)
            wm = mx.array(w).astype(dt)
            q, s, b = mx.quantize(wm, group_size=group, bits=bits)
            deq = mx.dequantize(q, s, b, group_size=group, bits=bits)
            mx.eval(q, s, b, deq)
            assert q.dtype == mx.uint32 and s.dtype == dt and b.dtype == dt and deq.dtype == dt
            assert q.shape == (*shape[:-1], shape[-1] * bits // 32)
            assert s.shape == b.shape == (*shape[:-1], shape[-1] // group)
            tensors[prefix + ".weight"] = q
            tensors[prefix + ".scales"] = s
            tensors[prefix + ".biases"] = b
            np.save(d / "dequant" / (prefix + ".npy"), np.array(deq.astype(mx.float32)))
            meta_t.append(dict(prefix=prefix, shape=list(shape)))
        mx.save_safetensors(str(d / "model.safetensors"), tensors, metadata={"format": "mlx"})
        qc = {"group_size": group, "bits": bits, "mode": "affine"}
        (d / "config.json").write_text(json.dumps({"quantization": qc, "quantization_config": qc}, indent=2) + "\n")
        meta = dict(
            format="mlx-affine",
            bits=bits,
            group_size=group,
            scales_dtype=dtname,
            tensors=meta_t,
            dequant="dequant/<prefix>.npy = mx.dequantize(weight, scales, biases) (dtype of scales) "
            "as float32, same shape as the unpacked weight ([out, in] or [E, out, in])",
            generator="mlx " + mx.__version__ + " (CPU)",
        )
        (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        summary[case] = len(meta_t)
    return summary


# ------------------------------------------------------------------------------------------------
# mlx-lm end to end
# ------------------------------------------------------------------------------------------------

MLX_MODEL_CONFIG = OrderedDict(
    architectures=["DeepseekV3ForCausalLM"],
    model_type="deepseek_v3",
    vocab_size=256,
    hidden_size=128,
    intermediate_size=192,
    moe_intermediate_size=64,
    num_hidden_layers=3,
    first_k_dense_replace=1,
    moe_layer_freq=1,
    num_attention_heads=4,
    num_key_value_heads=4,
    n_routed_experts=16,
    n_group=4,
    topk_group=2,
    num_experts_per_tok=4,
    n_shared_experts=2,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    scoring_func="sigmoid",
    topk_method="noaux_tc",
    q_lora_rank=64,
    kv_lora_rank=64,
    qk_nope_head_dim=64,
    qk_rope_head_dim=32,
    v_head_dim=64,
    rope_theta=10000.0,
    rope_scaling=OrderedDict(
        type="yarn",
        factor=40.0,
        original_max_position_embeddings=32,
        beta_fast=32,
        beta_slow=1,
        mscale=1.0,
        mscale_all_dim=1.0,
    ),
    max_position_embeddings=1280,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    attention_bias=False,
    hidden_act="silu",
    bos_token_id=0,
    eos_token_id=1,
    num_nextn_predict_layers=0,
    torch_dtype="bfloat16",
)

# case -> (bits, per-module override predicate name, layout)
MLX_LM_CASES = OrderedDict(
    [
        ("lm-4bit", dict(bits=4, override=None, layout="new")),
        ("lm-5bit-mixed", dict(bits=5, override="lm_head_embed_8bit", layout="new")),
        ("lm-8bit", dict(bits=8, override=None, layout="new")),
        ("lm-4bit-kvb", dict(bits=4, override=None, layout="old")),
        # Partially quantized, as mlx_lm.convert leaves a model whose widths are not all multiples
        # of the group size: qk_nope 32 leaves every embed_q unquantized (beside a quantized
        # unembed_out), moe_intermediate 96 leaves the stacked routed down_proj unquantized (the
        # shared experts' 192 is quantized). The router bias stays F32, as convert's
        # cast_predicate keeps it (deepseek_v3.Model.cast_predicate).
        (
            "lm-4bit-partial",
            dict(bits=4, override=None, layout="new", config=dict(qk_nope_head_dim=32, moe_intermediate_size=96),
                 bias_f32=True),
        ),
    ]
)


def hf_weights(cfg, seed):
    """Canonical HF-named weights (per-expert, kv_b_proj), drawn like make_model_goldens.py."""
    g = torch.Generator().manual_seed(seed)
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    qk = cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
    names = [("model.embed_tokens.weight", (cfg["vocab_size"], H), "embed")]
    for L in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{L}."
        names += [
            (p + "input_layernorm.weight", (H,), "norm"),
            (p + "self_attn.q_a_proj.weight", (cfg["q_lora_rank"], H), "linear"),
            (p + "self_attn.q_a_layernorm.weight", (cfg["q_lora_rank"],), "norm"),
            (p + "self_attn.q_b_proj.weight", (nh * qk, cfg["q_lora_rank"]), "linear"),
            (p + "self_attn.kv_a_proj_with_mqa.weight", (cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"], H), "linear"),
            (p + "self_attn.kv_a_layernorm.weight", (cfg["kv_lora_rank"],), "norm"),
            (p + "self_attn.kv_b_proj.weight", (nh * (cfg["qk_nope_head_dim"] + cfg["v_head_dim"]), cfg["kv_lora_rank"]), "linear"),
            (p + "self_attn.o_proj.weight", (H, nh * cfg["v_head_dim"]), "linear"),
            (p + "post_attention_layernorm.weight", (H,), "norm"),
        ]
        if L < cfg["first_k_dense_replace"]:
            I = cfg["intermediate_size"]
            names += [
                (p + "mlp.gate_proj.weight", (I, H), "linear"),
                (p + "mlp.up_proj.weight", (I, H), "linear"),
                (p + "mlp.down_proj.weight", (H, I), "linear"),
            ]
        else:
            E, mi = cfg["n_routed_experts"], cfg["moe_intermediate_size"]
            names += [(p + "mlp.gate.weight", (E, H), "router"), (p + "mlp.gate.e_score_correction_bias", (E,), "bias")]
            for e in range(E):
                names += [
                    (p + f"mlp.experts.{e}.gate_proj.weight", (mi, H), "linear"),
                    (p + f"mlp.experts.{e}.up_proj.weight", (mi, H), "linear"),
                    (p + f"mlp.experts.{e}.down_proj.weight", (H, mi), "linear"),
                ]
            si = mi * cfg["n_shared_experts"]
            names += [
                (p + "mlp.shared_experts.gate_proj.weight", (si, H), "linear"),
                (p + "mlp.shared_experts.up_proj.weight", (si, H), "linear"),
                (p + "mlp.shared_experts.down_proj.weight", (H, si), "linear"),
            ]
    names += [("model.norm.weight", (H,), "norm"), ("lm_head.weight", (cfg["vocab_size"], H), "head")]
    sd = OrderedDict()
    for name, shape, kind in names:
        n = torch.randn(shape, generator=g, dtype=torch.float32)
        if kind == "embed":
            w = n
        elif kind == "norm":
            w = 1.0 + 0.1 * n
        elif kind == "bias":
            w = 0.5 + 0.1 * n  # every biased score > 0: mlx-lm's 0.0 group fill == -inf (D7)
        else:
            w = n / math.sqrt(shape[1])
        sd[name] = w
    return sd


def make_mlx_lm(out_root):
    import mlx.core as mx
    from mlx.utils import tree_map

    import mlx_lm
    from mlx_lm.models import deepseek_v3
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    mx.disable_compile()  # plain (uncompiled) graphs: deterministic op-by-op evaluation
    base_cfg = dict(MLX_MODEL_CONFIG)
    ids = torch.randint(0, base_cfg["vocab_size"], (32,), generator=torch.Generator().manual_seed(99)).tolist()
    summary = {}
    for case, opt in MLX_LM_CASES.items():
        cfg = dict(base_cfg, **opt.get("config", {}))
        sd = hf_weights(cfg, seed=2468)
        d = out_root / "mlx-lm" / case
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        args = deepseek_v3.ModelArgs.from_dict(cfg)
        model = deepseek_v3.Model(args)
        # What mlx_lm.convert does: load the HF weights (bf16, like the published bf16 model),
        # model.sanitize (stack experts, split kv_b_proj), load, then quantize_model.
        keep = (lambda k: opt.get("bias_f32") and "e_score_correction_bias" in k)
        w = {k: mx.array(v.numpy()) if keep(k) else mx.array(v.numpy()).astype(mx.bfloat16) for k, v in sd.items()}
        w = model.sanitize(w)
        model.load_weights(list(w.items()), strict=True)
        mx.eval(model.parameters())

        pred = None
        if opt["override"] == "lm_head_embed_8bit":
            def pred(path, module):
                if path in ("lm_head", "model.embed_tokens"):
                    return {"group_size": 64, "bits": 8, "mode": "affine"}
                return True
        model, qcfg = quantize_model(model, dict(cfg), group_size=64, bits=opt["bits"], quant_predicate=pred)
        save_model(str(d), model)
        save_config(dict(qcfg), config_path=d / "config.json")

        if opt["layout"] == "old":
            # The layout of conversions made before mlx-lm f18526f8 (2026-02, "DSV3 MLA"): a plain
            # quantized kv_b_proj instead of embed_q/unembed_out. Built with the same mx.quantize
            # call nn.QuantizedLinear.from_linear makes, from the same bf16 kv_b_proj weight.
            st = dict(mx.load(str(d / "model.safetensors")))
            for L in range(cfg["num_hidden_layers"]):
                p = f"model.layers.{L}.self_attn."
                for k in ("embed_q", "unembed_out"):
                    for s in ("weight", "scales", "biases"):
                        st.pop(p + k + "." + s)
                kvb = mx.array(sd[p + "kv_b_proj.weight"].numpy()).astype(mx.bfloat16)
                q, s, b = mx.quantize(kvb, group_size=64, bits=opt["bits"])
                st[p + "kv_b_proj.weight"], st[p + "kv_b_proj.scales"], st[p + "kv_b_proj.biases"] = q, s, b
            os.remove(d / "model.safetensors")
            mx.save_safetensors(str(d / "model.safetensors"), st, metadata={"format": "mlx"})
            # keep save_model's index consistent with the rewritten file
            idx_path = d / "model.safetensors.index.json"
            idx = json.loads(idx_path.read_text())
            idx["weight_map"] = {k: "model.safetensors" for k in sorted(st)}
            idx_path.write_text(json.dumps(idx, indent=4))

        # The official loading path (sanitize re-splits an old-layout kv_b_proj), then every
        # floating tensor upcast to float32 (exact) so mlx-lm computes in float32.
        m2, _ = load_model(d)
        m2.update(tree_map(lambda p: p.astype(mx.float32) if mx.issubdtype(p.dtype, mx.floating) else p, m2.parameters()))
        logits = m2(mx.array(ids)[None])[0].astype(mx.float32)
        mx.eval(logits)
        logits = np.array(logits)
        assert np.isfinite(logits).all()
        np.save(d / "logits.npy", logits)
        extra = {}
        if opt["layout"] == "old":
            # mlx-lm's sanitize re-quantizes an old kv_b_proj (dequantize, split per head,
            # mx.quantize again along qk_nope / kv_lora_rank), so logits.npy carries a second
            # quantization error in K/V. logits_no_requant.npy is the same mlx-lm forward with
            # embed_q/unembed_out set to the exact float32 dequantization of the stored kv_b_proj
            # (the split sanitize makes, without re-quantizing): what a decoder that reads
            # kv_b_proj directly should reproduce.
            st = mx.load(str(d / "model.safetensors"))
            nope, vd = cfg["qk_nope_head_dim"], cfg["v_head_dim"]
            for L, layer in enumerate(m2.model.layers):
                p = f"model.layers.{L}.self_attn.kv_b_proj."
                kvb = mx.dequantize(st[p + "weight"], st[p + "scales"].astype(mx.float32),
                                    st[p + "biases"].astype(mx.float32), group_size=64, bits=opt["bits"])
                v = kvb.reshape(cfg["num_attention_heads"], nope + vd, -1)
                wk = mx.contiguous(v[:, :nope, :].swapaxes(-1, -2))
                wv = mx.contiguous(v[:, nope:, :])
                for attr, wt in (("embed_q", wk), ("unembed_out", wv)):
                    ml = deepseek_v3.MultiLinear(wt.shape[2], wt.shape[1], wt.shape[0])
                    ml.weight = wt
                    setattr(layer.self_attn, attr, ml)
            l2 = m2(mx.array(ids)[None])[0].astype(mx.float32)
            mx.eval(l2)
            l2 = np.array(l2)
            np.save(d / "logits_no_requant.npy", l2)
            extra = dict(
                logits_no_requant="logits_no_requant.npy: as logits.npy but K/V up-projections from the "
                "float32 dequantization of kv_b_proj (no re-quantization)",
                requant_max_abs_logit_change=float(np.abs(l2 - logits).max()),
            )
        names = sorted(mx.load(str(d / "model.safetensors")).keys())
        meta = dict(
            config=cfg,
            bits=opt["bits"],
            group_size=64,
            per_module_override=opt["override"],
            layout=opt["layout"],
            ids=ids,
            logits="logits.npy: float32 [32, vocab], mlx-lm Model(ids[None])[0], all positions",
            compute="mlx CPU, every floating parameter upcast to float32 after load_model "
            "(bf16 -> f32 exact), mx.disable_compile(); quantized matmuls via mx.quantized_matmul / "
            "gather_qmm in float32 (W never materialised: sum(x*q)*s + sum(x)*b)",
            semantics=[
                "router: x @ gate.weight.T in float32 (gate weight stored bf16, never quantized: "
                "MoEGate holds a plain array)",
                ("e_score_correction_bias stored F32, as mlx_lm.convert keeps it (deepseek_v3.Model.cast_predicate)"
                 if opt.get("bias_f32") else
                 "e_score_correction_bias stored bf16 (mlx_lm.convert casts every float tensor to torch_dtype)")
                + ", values 0.5+0.1N so every biased score > 0 and the 0.0 group fill "
                "(docs/semantics.md D7) selects the same experts as -inf",
                "group score: sum of top-2 per group; topk via argpartition (order of the k experts "
                "does not change the result beyond fp32 summation order)",
                "prefill (L>1) attention decompresses K/V: k = kv_latent @ embed_q, v = unembed_out(kv_latent)",
                "YaRN: mlx-lm YarnRoPE traditional (adjacent pairs), softmax scale * mscale_all_dim^2 term",
                "embedding: QuantizedEmbedding = mx.dequantize of the looked-up rows",
            ],
            versions=dict(mlx=mx.__version__, mlx_lm=mlx_lm.__version__, torch=torch.__version__),
            tensors=names,
            **extra,
        )
        (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        summary[case] = float(np.abs(logits).max())
    return summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE / "quant"))
    ap.add_argument("--only", default="awq,mlx,mlx-lm")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    only = set(a.only.split(","))
    if "awq" in only:
        print("awq", make_awq(out))
    if "mlx" in only:
        print("mlx", make_mlx(out))
    if "mlx-lm" in only:
        print("mlx-lm", make_mlx_lm(out))


if __name__ == "__main__":
    main()
