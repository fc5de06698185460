#!/usr/bin/env python3
"""Convert a dsv3 DeepSeek-V3 checkpoint in HF layout into a GGUF file for llama.cpp.

The output uses llama.cpp's `deepseek2` architecture (the one its own converter
writes for DeepseekV3ForCausalLM), so `llama-bench` and `llama-quantize`
accept it.  It exists so the benchmarks can run llama.cpp on the same
synthetic checkpoints that dsv3 runs.  With flash attention off and an F32 KV
cache, llama.cpp's prefill logits from an F32 file match `dsv3 forward` to
about 4e-6 (mid preset); llama.cpp's default CPU flash attention adds ~3e-3.

Input:  a directory with config.json and model.safetensors, or shards listed in
        model.safetensors.index.json.  Weights must be F32, BF16 or F16
        (quantized checkpoints -- FP8, AWQ, MLX -- are refused).
Output: one GGUF file, written to a temporary file beside it and renamed into
        place, so a failed run never leaves a half-written model behind.

What the file holds:
  * the hyperparameters that llama.cpp's deepseek2 loader reads (MLA ranks and
    head sizes, MoE counts, sigmoid gating, group-limited routing, YaRN RoPE);
  * no real tokenizer: tokenizer.ggml.model = "none" plus deepseek2.vocab_size,
    which makes llama.cpp create vocab_size dummy tokens.  Benchmarks feed token
    ids, so text in/out is not needed;
  * kv_b_proj split per head into attn_k_b (transposed) and attn_v_b, as the
    MLA "absorbed" attention in llama.cpp expects;
  * routed experts stacked into one 3-D tensor per projection and layer;
  * MTP layers (model.layers.N with N >= num_hidden_layers) are skipped.

Norm weights, the router (ffn_gate_inp) and the router bias (exp_probs_b) stay
F32 whatever --outtype says; other matrices use --outtype.  Make quantized files
afterwards with llama-quantize, e.g. `llama-quantize in.gguf out.gguf Q8_0`.

Dependencies: the Python standard library, numpy and llama.cpp's gguf-py
(pass its directory with --gguf-py).

Usage:
  python benchmarks/gguf_from_hf.py --gguf-py LLAMA_CPP/gguf-py \\
      --model MODEL_DIR --out FILE.gguf [--outtype f32|bf16|f16]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np


class ConversionError(Exception):
    """A problem with the input; the message names the file/tensor/field."""


# ---------------------------------------------------------------------------
# safetensors reading (no safetensors/torch dependency)
# ---------------------------------------------------------------------------

_ST_DTYPES = {
    # safetensors dtype -> (numpy dtype of the stored elements, bytes per element)
    "F32": (np.dtype("<f4"), 4),
    "BF16": (np.dtype("<u2"), 2),
    "F16": (np.dtype("<f2"), 2),
}


class _TensorRef:
    __slots__ = ("name", "file", "dtype", "shape", "start", "end")

    def __init__(self, name: str, file: Path, dtype: str, shape: tuple[int, ...], start: int, end: int):
        self.name = name
        self.file = file
        self.dtype = dtype
        self.shape = shape
        self.start = start  # absolute byte offsets in the file
        self.end = end


class SafetensorsCheckpoint:
    """All tensors of a checkpoint directory, read lazily through memory maps."""

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        self.tensors: dict[str, _TensorRef] = {}
        self._maps: dict[Path, np.memmap] = {}

        index_path = model_dir / "model.safetensors.index.json"
        single_path = model_dir / "model.safetensors"
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ConversionError(f"{index_path}: cannot read the shard index: {e}") from e
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConversionError(f"{index_path}: no 'weight_map' object (expected tensor name -> shard file)")
            files = sorted(set(weight_map.values()))
            for fname in files:
                path = model_dir / fname
                if not path.is_file():
                    raise ConversionError(f"{index_path}: lists shard '{fname}', but {path} does not exist")
                self._read_header(path)
            for tname, fname in weight_map.items():
                ref = self.tensors.get(tname)
                if ref is None:
                    raise ConversionError(
                        f"{index_path}: lists tensor '{tname}' in '{fname}', but that shard has no such tensor")
                if ref.file.name != Path(fname).name:
                    raise ConversionError(
                        f"{index_path}: lists tensor '{tname}' in '{fname}', but it is stored in '{ref.file.name}'")
        elif single_path.is_file():
            self._read_header(single_path)
        else:
            raise ConversionError(
                f"{model_dir}: neither model.safetensors nor model.safetensors.index.json found")

    def _read_header(self, path: Path) -> None:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ConversionError(f"{path}: too short to be a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n == 0 or 8 + n > size:
                raise ConversionError(f"{path}: header length {n} does not fit the file size {size}")
            raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ConversionError(f"{path}: safetensors header is not valid JSON: {e}") from e
        if not isinstance(header, dict):
            raise ConversionError(f"{path}: safetensors header is not a JSON object")
        data_start = 8 + n
        data_size = size - data_start
        for tname, info in header.items():
            if tname == "__metadata__":
                continue
            try:
                dtype = info["dtype"]
                shape = tuple(int(d) for d in info["shape"])
                begin, end = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as e:
                raise ConversionError(f"{path}: tensor '{tname}': malformed header entry {info!r}") from e
            if not (0 <= begin <= end <= data_size):
                raise ConversionError(
                    f"{path}: tensor '{tname}': data_offsets [{begin}, {end}] outside the data area of {data_size} bytes")
            if dtype in _ST_DTYPES:
                want = math.prod(shape) * _ST_DTYPES[dtype][1]
                if end - begin != want:
                    raise ConversionError(
                        f"{path}: tensor '{tname}': {end - begin} bytes stored, but {dtype} {list(shape)} needs {want}")
            if tname in self.tensors:
                raise ConversionError(
                    f"{path}: tensor '{tname}' is also stored in {self.tensors[tname].file}")
            self.tensors[tname] = _TensorRef(tname, path, dtype, shape, data_start + begin, data_start + end)

    def _map(self, path: Path) -> np.memmap:
        mm = self._maps.get(path)
        if mm is None:
            mm = np.memmap(path, dtype=np.uint8, mode="r")
            self._maps[path] = mm
        return mm

    def load_f32(self, name: str) -> np.ndarray:
        """The tensor as a float32 array in its stored (PyTorch) shape."""
        ref = self.tensors[name]
        if ref.dtype not in _ST_DTYPES:
            raise ConversionError(
                f"{ref.file}: tensor '{name}' has dtype {ref.dtype}; only F32, BF16 and F16 are supported")
        np_dtype, _ = _ST_DTYPES[ref.dtype]
        raw = self._map(ref.file)[ref.start:ref.end].view(np_dtype).reshape(ref.shape)
        if ref.dtype == "F32":
            return np.array(raw, dtype=np.float32, copy=True)
        if ref.dtype == "F16":
            return raw.astype(np.float32)
        # BF16: the upper half of an IEEE float32
        return (raw.astype(np.uint32) << 16).view(np.float32)


# ---------------------------------------------------------------------------
# output element types
# ---------------------------------------------------------------------------

def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = (u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) >> 16
    out = rounded.astype(np.uint16)
    if nan.any():
        out[nan] = ((u[nan] >> 16) | 0x0040).astype(np.uint16)  # quiet NaN
    return out


# ---------------------------------------------------------------------------
# config handling
# ---------------------------------------------------------------------------

class Config:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ConversionError(f"{path}: not found (the model directory needs a config.json)") from e
        except (OSError, ValueError) as e:
            raise ConversionError(f"{path}: cannot parse: {e}") from e
        if not isinstance(self.raw, dict):
            raise ConversionError(f"{path}: expected a JSON object")

    def req_int(self, key: str, minimum: int = 1) -> int:
        if key not in self.raw or self.raw[key] is None:
            raise ConversionError(f"{self.path}: missing required field '{key}'")
        v = self.raw[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConversionError(f"{self.path}: field '{key}' must be an integer >= {minimum}, got {v!r}")
        return v

    def opt_int(self, key: str, default: int | None, minimum: int = 0) -> int | None:
        if self.raw.get(key) is None:
            return default
        return self.req_int(key, minimum)

    def req_float(self, key: str) -> float:
        if key not in self.raw or self.raw[key] is None:
            raise ConversionError(f"{self.path}: missing required field '{key}'")
        return self.num(key, self.raw[key])

    def num(self, where: str, v) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConversionError(f"{self.path}: field '{where}' must be a finite number, got {v!r}")
        return float(v)


class Hparams:
    """The config fields the conversion needs, validated."""

    def __init__(self, cfg: Config):
        c = cfg.raw
        p = cfg.path
        archs = c.get("architectures") or []
        model_type = c.get("model_type")
        if model_type not in ("deepseek_v3", "deepseek_v2") and not any(
                a in ("DeepseekV3ForCausalLM", "DeepseekV2ForCausalLM") for a in archs):
            raise ConversionError(
                f"{p}: model_type {model_type!r} / architectures {archs!r} is not a DeepSeek-V3 (or V2) model")
        qc = c.get("quantization_config")
        if qc:
            method = qc.get("quant_method", "?") if isinstance(qc, dict) else "?"
            raise ConversionError(
                f"{p}: has quantization_config (quant_method={method!r}); only F32/BF16/F16 checkpoints are "
                "supported -- convert an unquantized checkpoint and use llama-quantize instead")

        self.n_layer = cfg.req_int("num_hidden_layers")
        self.n_embd = cfg.req_int("hidden_size")
        self.n_ff = cfg.req_int("intermediate_size")
        self.n_vocab = cfg.req_int("vocab_size")
        self.n_head = cfg.req_int("num_attention_heads")
        self.n_ctx = cfg.req_int("max_position_embeddings")
        self.rms_eps = cfg.num("rms_norm_eps", c.get("rms_norm_eps", 1e-6))
        self.q_lora_rank = cfg.opt_int("q_lora_rank", None, minimum=1)
        self.kv_lora_rank = cfg.req_int("kv_lora_rank")
        self.qk_nope = cfg.req_int("qk_nope_head_dim")
        self.qk_rope = cfg.req_int("qk_rope_head_dim")
        self.v_head = cfg.req_int("v_head_dim")
        self.rope_theta = cfg.num("rope_theta", c.get("rope_theta", 10000.0))
        self.tie_embeddings = bool(c.get("tie_word_embeddings", False))

        self.n_expert = cfg.req_int("n_routed_experts")
        self.n_expert_used = cfg.req_int("num_experts_per_tok")
        self.n_ff_exp = cfg.req_int("moe_intermediate_size")
        self.n_shared = cfg.opt_int("n_shared_experts", 0)
        self.first_dense = cfg.opt_int("first_k_dense_replace", 0)
        self.moe_layer_freq = cfg.opt_int("moe_layer_freq", 1, minimum=1)
        self.n_group = cfg.opt_int("n_group", None, minimum=1)
        self.topk_group = cfg.opt_int("topk_group", None, minimum=1)
        self.routed_scale = None if c.get("routed_scaling_factor") is None else cfg.num(
            "routed_scaling_factor", c["routed_scaling_factor"])
        self.norm_topk_prob = bool(c.get("norm_topk_prob", False))
        self.scoring_func = c.get("scoring_func")
        self.topk_method = c.get("topk_method")

        if self.n_expert_used > self.n_expert:
            raise ConversionError(
                f"{p}: num_experts_per_tok={self.n_expert_used} exceeds n_routed_experts={self.n_expert}")
        if self.n_shared < 1:
            raise ConversionError(
                f"{p}: n_shared_experts={self.n_shared}; llama.cpp's deepseek2 graph requires shared experts (>= 1)")
        if self.moe_layer_freq != 1:
            raise ConversionError(
                f"{p}: moe_layer_freq={self.moe_layer_freq}; llama.cpp's deepseek2 only supports "
                "leading dense layers (first_k_dense_replace) followed by MoE in every layer (moe_layer_freq=1)")
        if self.first_dense > self.n_layer:
            raise ConversionError(
                f"{p}: first_k_dense_replace={self.first_dense} exceeds num_hidden_layers={self.n_layer}")
        if self.q_lora_rank is None and not (
                self.n_layer in (26, 27) or (self.n_layer == 48 and self.n_vocab == 128256)):
            # llama.cpp reads attention.q_lora_rank as required unless the layer count
            # matches one of the known "lite" models (DeepSeek-V2-Lite and relatives).
            raise ConversionError(
                f"{p}: q_lora_rank is missing/null (plain q_proj); llama.cpp's deepseek2 loader only accepts "
                f"that for its 'lite' layer counts (26 or 27 layers), not num_hidden_layers={self.n_layer}")
        if self.scoring_func not in (None, "sigmoid", "softmax"):
            raise ConversionError(f"{p}: scoring_func {self.scoring_func!r} is not supported (sigmoid or softmax)")

        # group-limited routing (n_group / topk_group)
        self.write_groups = False
        if self.n_group is not None and self.n_group > 1:
            if self.n_expert % self.n_group != 0:
                raise ConversionError(
                    f"{p}: n_routed_experts={self.n_expert} is not divisible by n_group={self.n_group}")
            if self.n_group >= self.n_expert:
                raise ConversionError(
                    f"{p}: n_group={self.n_group} must be below n_routed_experts={self.n_expert} for llama.cpp")
            if self.topk_group is None:
                raise ConversionError(f"{p}: n_group={self.n_group} is set but topk_group is missing")
            # llama.cpp asserts topk_group < n_group; topk_group >= n_group keeps every
            # group, i.e. no group limiting at all, which is what omitting the keys means.
            self.write_groups = self.topk_group < self.n_group

        # RoPE scaling
        rs = c.get("rope_scaling") or c.get("rope_parameters") or {}
        if not isinstance(rs, dict):
            raise ConversionError(f"{p}: field 'rope_scaling' must be an object or null, got {rs!r}")
        self.rope_type = rs.get("rope_type", rs.get("type"))
        self.rope_factor = None
        self.rope_orig_ctx = None
        self.yarn_beta_fast = None
        self.yarn_beta_slow = None
        self.yarn_ext_factor = None
        self.yarn_attn_factor = None
        self.mscale_all_dim = None
        if self.rope_type in (None, "default"):
            self.rope_type = None
        elif self.rope_type == "yarn":
            if rs.get("factor") is None:
                raise ConversionError(f"{p}: rope_scaling.type is 'yarn' but rope_scaling.factor is missing")
            self.rope_factor = cfg.num("rope_scaling.factor", rs["factor"])
            if rs.get("original_max_position_embeddings") is None:
                raise ConversionError(
                    f"{p}: rope_scaling.type is 'yarn' but rope_scaling.original_max_position_embeddings is missing")
            self.rope_orig_ctx = int(cfg.num("rope_scaling.original_max_position_embeddings",
                                             rs["original_max_position_embeddings"]))
            if rs.get("beta_fast") is not None:
                self.yarn_beta_fast = cfg.num("rope_scaling.beta_fast", rs["beta_fast"])
            if rs.get("beta_slow") is not None:
                self.yarn_beta_slow = cfg.num("rope_scaling.beta_slow", rs["beta_slow"])
            if rs.get("extrapolation_factor") is not None:
                self.yarn_ext_factor = cfg.num("rope_scaling.extrapolation_factor", rs["extrapolation_factor"])
            af = rs.get("attention_factor", rs.get("attn_factor"))
            if af is not None:
                self.yarn_attn_factor = cfg.num("rope_scaling.attention_factor", af)
        elif self.rope_type == "linear":
            if rs.get("factor") is None:
                raise ConversionError(f"{p}: rope_scaling.type is 'linear' but rope_scaling.factor is missing")
            self.rope_factor = cfg.num("rope_scaling.factor", rs["factor"])
        else:
            raise ConversionError(f"{p}: rope_scaling type {self.rope_type!r} is not supported (yarn, linear or none)")
        if rs.get("mscale_all_dim") is not None:
            self.mscale_all_dim = cfg.num("rope_scaling.mscale_all_dim", rs["mscale_all_dim"])
        self.warnings: list[str] = []
        if self.rope_type == "yarn":
            ms = rs.get("mscale")
            if ms is not None and self.mscale_all_dim is not None and float(ms) != self.mscale_all_dim:
                self.warnings.append(
                    f"rope_scaling.mscale={ms} differs from mscale_all_dim={self.mscale_all_dim}; llama.cpp "
                    "has no key for the separate cos/sin scale, so results will differ from the reference")
            for key, default in (("beta_fast", 32.0), ("beta_slow", 1.0)):
                if rs.get(key) is not None and float(rs[key]) != default:
                    self.warnings.append(
                        f"rope_scaling.{key}={rs[key]}: llama.cpp's deepseek2 loader does not read the yarn beta "
                        f"keys and uses {default}; the key is written but has no effect there")

        self.q_head_dim = self.qk_nope + self.qk_rope


# ---------------------------------------------------------------------------
# the tensor plan
# ---------------------------------------------------------------------------

class PlannedTensor:
    __slots__ = ("name", "shape", "keep_f32", "produce", "source")

    def __init__(self, name: str, shape: tuple[int, ...], keep_f32: bool,
                 produce: Callable[[], np.ndarray], source: str):
        self.name = name          # GGUF tensor name
        self.shape = shape        # numpy (row-major) shape; GGUF stores it reversed
        self.keep_f32 = keep_f32  # stays F32 whatever --outtype is
        self.produce = produce    # returns a float32 array of `shape`
        self.source = source      # HF name(s), for messages


def build_plan(hp: Hparams, ckpt: SafetensorsCheckpoint) -> tuple[list[PlannedTensor], list[str]]:
    """Check every tensor against the config and list the GGUF tensors in write order.

    Returns (plan, notes).  All shape/presence errors are collected and raised together.
    """
    errors: list[str] = []
    used: set[str] = set()
    plan: list[PlannedTensor] = []
    notes: list[str] = []

    def where(name: str) -> str:
        ref = ckpt.tensors.get(name)
        return str(ref.file) if ref is not None else str(ckpt.model_dir)

    def check(name: str, shape: tuple[int, ...], why: str, required: bool = True) -> bool:
        ref = ckpt.tensors.get(name)
        if ref is None:
            if required:
                errors.append(f"{ckpt.model_dir}: missing tensor '{name}' (expected shape {list(shape)}; {why})")
            return False
        used.add(name)
        if ref.dtype not in _ST_DTYPES:
            errors.append(f"{ref.file}: tensor '{name}' has dtype {ref.dtype}; only F32, BF16 and F16 are supported")
            return False
        if tuple(ref.shape) != tuple(shape):
            errors.append(
                f"{ref.file}: tensor '{name}' has shape {list(ref.shape)}, expected {list(shape)} ({why})")
            return False
        return True

    def plain(gguf_name: str, hf_name: str, shape: tuple[int, ...], why: str,
              keep_f32: bool = False, required: bool = True) -> None:
        if check(hf_name, shape, why, required):
            plan.append(PlannedTensor(gguf_name, shape, keep_f32 or len(shape) <= 1,
                                      lambda n=hf_name: ckpt.load_f32(n), hf_name))

    H, V = hp.n_embd, hp.n_vocab
    nh = hp.n_head

    plain("token_embd.weight", "model.embed_tokens.weight", (V, H), "vocab_size x hidden_size")
    if "lm_head.weight" in ckpt.tensors or not hp.tie_embeddings:
        plain("output.weight", "lm_head.weight", (V, H), "vocab_size x hidden_size")
    else:
        notes.append("tie_word_embeddings: no output.weight written; llama.cpp reuses token_embd")
    plain("output_norm.weight", "model.norm.weight", (H,), "hidden_size", keep_f32=True)

    for i in range(hp.n_layer):
        pre = f"model.layers.{i}."
        blk = f"blk.{i}."
        plain(blk + "attn_norm.weight", pre + "input_layernorm.weight", (H,), "hidden_size", keep_f32=True)
        if hp.q_lora_rank:
            plain(blk + "attn_q_a.weight", pre + "self_attn.q_a_proj.weight", (hp.q_lora_rank, H),
                  "q_lora_rank x hidden_size")
            plain(blk + "attn_q_a_norm.weight", pre + "self_attn.q_a_layernorm.weight", (hp.q_lora_rank,),
                  "q_lora_rank", keep_f32=True)
            plain(blk + "attn_q_b.weight", pre + "self_attn.q_b_proj.weight",
                  (nh * hp.q_head_dim, hp.q_lora_rank),
                  "num_attention_heads*(qk_nope_head_dim+qk_rope_head_dim) x q_lora_rank")
        else:
            plain(blk + "attn_q.weight", pre + "self_attn.q_proj.weight", (nh * hp.q_head_dim, H),
                  "num_attention_heads*(qk_nope_head_dim+qk_rope_head_dim) x hidden_size")
        plain(blk + "attn_kv_a_mqa.weight", pre + "self_attn.kv_a_proj_with_mqa.weight",
              (hp.kv_lora_rank + hp.qk_rope, H), "(kv_lora_rank+qk_rope_head_dim) x hidden_size")
        plain(blk + "attn_kv_a_norm.weight", pre + "self_attn.kv_a_layernorm.weight", (hp.kv_lora_rank,),
              "kv_lora_rank", keep_f32=True)

        # kv_b_proj [nh*(nope+v), kv_lora] -> per head: rows [0, nope) are K, [nope, nope+v) are V.
        kvb = pre + "self_attn.kv_b_proj.weight"
        if check(kvb, (nh * (hp.qk_nope + hp.v_head), hp.kv_lora_rank),
                 "num_attention_heads*(qk_nope_head_dim+v_head_dim) x kv_lora_rank"):
            def k_b(n=kvb):
                w = ckpt.load_f32(n).reshape(nh, hp.qk_nope + hp.v_head, hp.kv_lora_rank)
                return np.ascontiguousarray(w[:, :hp.qk_nope, :].transpose(0, 2, 1))  # [nh, kv_lora, nope]

            def v_b(n=kvb):
                w = ckpt.load_f32(n).reshape(nh, hp.qk_nope + hp.v_head, hp.kv_lora_rank)
                return np.ascontiguousarray(w[:, hp.qk_nope:, :])  # [nh, v, kv_lora]

            plan.append(PlannedTensor(blk + "attn_k_b.weight", (nh, hp.kv_lora_rank, hp.qk_nope), False, k_b, kvb))
            plan.append(PlannedTensor(blk + "attn_v_b.weight", (nh, hp.v_head, hp.kv_lora_rank), False, v_b, kvb))

        plain(blk + "attn_output.weight", pre + "self_attn.o_proj.weight", (H, nh * hp.v_head),
              "hidden_size x num_attention_heads*v_head_dim")
        plain(blk + "ffn_norm.weight", pre + "post_attention_layernorm.weight", (H,), "hidden_size",
              keep_f32=True)

        if i < hp.first_dense:
            why = f"dense layer (i < first_k_dense_replace={hp.first_dense})"
            plain(blk + "ffn_gate.weight", pre + "mlp.gate_proj.weight", (hp.n_ff, H),
                  f"intermediate_size x hidden_size, {why}")
            plain(blk + "ffn_up.weight", pre + "mlp.up_proj.weight", (hp.n_ff, H),
                  f"intermediate_size x hidden_size, {why}")
            plain(blk + "ffn_down.weight", pre + "mlp.down_proj.weight", (H, hp.n_ff),
                  f"hidden_size x intermediate_size, {why}")
            continue

        E = hp.n_expert
        plain(blk + "ffn_gate_inp.weight", pre + "mlp.gate.weight", (E, H), "n_routed_experts x hidden_size",
              keep_f32=True)
        bias = pre + "mlp.gate.e_score_correction_bias"
        plain(blk + "exp_probs_b.bias", bias, (E,), "n_routed_experts; topk_method noaux_tc",
              keep_f32=True, required=(hp.topk_method == "noaux_tc"))

        # routed experts: stacked [E, out, in] per projection (GGUF order: down, gate, up, as convert does)
        for proj, shape, why in (
                ("down_proj", (H, hp.n_ff_exp), "hidden_size x moe_intermediate_size"),
                ("gate_proj", (hp.n_ff_exp, H), "moe_intermediate_size x hidden_size"),
                ("up_proj", (hp.n_ff_exp, H), "moe_intermediate_size x hidden_size")):
            names = [f"{pre}mlp.experts.{e}.{proj}.weight" for e in range(E)]
            ok = True
            for n in names:
                ok = check(n, shape, why) and ok
            if ok:
                def stacked(names=names, shape=shape):
                    out = np.empty((len(names),) + shape, dtype=np.float32)
                    for e, n in enumerate(names):
                        out[e] = ckpt.load_f32(n)
                    return out
                gname = {"down_proj": "ffn_down_exps", "gate_proj": "ffn_gate_exps", "up_proj": "ffn_up_exps"}[proj]
                plan.append(PlannedTensor(blk + gname + ".weight", (E,) + shape, False, stacked,
                                          f"{pre}mlp.experts.{{0..{E - 1}}}.{proj}.weight"))

        S = hp.n_ff_exp * hp.n_shared
        why_s = "moe_intermediate_size*n_shared_experts"
        plain(blk + "ffn_gate_shexp.weight", pre + "mlp.shared_experts.gate_proj.weight", (S, H),
              f"{why_s} x hidden_size")
        plain(blk + "ffn_up_shexp.weight", pre + "mlp.shared_experts.up_proj.weight", (S, H),
              f"{why_s} x hidden_size")
        plain(blk + "ffn_down_shexp.weight", pre + "mlp.shared_experts.down_proj.weight", (H, S),
              f"hidden_size x {why_s}")

    # anything not consumed: MTP layers are skipped on purpose, the rest is an error
    layer_re = re.compile(r"^model\.layers\.(\d+)\.")
    skipped_mtp = 0
    unknown: list[str] = []
    for name in ckpt.tensors:
        if name in used:
            continue
        m = layer_re.match(name)
        if m and int(m.group(1)) >= hp.n_layer:
            skipped_mtp += 1
            continue
        if name == "lm_head.weight" and hp.tie_embeddings:
            continue
        unknown.append(name)
    if skipped_mtp:
        notes.append(f"skipped {skipped_mtp} MTP tensors (layers >= num_hidden_layers={hp.n_layer})")
    if unknown:
        shown = ", ".join(f"'{n}'" for n in sorted(unknown)[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        errors.append(f"{ckpt.model_dir}: tensors not used by the conversion: {shown}{more} "
                      "(does config.json match the weights?)")

    if errors:
        shown = errors[:25]
        if len(errors) > 25:
            shown.append(f"... and {len(errors) - 25} more problems")
        raise ConversionError("the checkpoint does not match config.json:\n  " + "\n  ".join(shown))
    return plan, notes


# ---------------------------------------------------------------------------
# GGUF writing
# ---------------------------------------------------------------------------

def write_metadata(w, gguf, hp: Hparams, outtype: str, model_name: str) -> None:
    ftype = {"f32": gguf.LlamaFileType.ALL_F32,
             "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype]
    w.add_type("model")
    w.add_name(model_name)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_file_type(ftype)

    # generic transformer keys
    w.add_block_count(hp.n_layer)
    w.add_context_length(hp.n_ctx)
    w.add_embedding_length(hp.n_embd)
    w.add_feed_forward_length(hp.n_ff)
    w.add_head_count(hp.n_head)
    w.add_head_count_kv(1)  # MLA is stored as MQA over the compressed latent
    w.add_layer_norm_rms_eps(hp.rms_eps)
    w.add_rope_freq_base(hp.rope_theta)
    w.add_rope_dimension_count(hp.qk_rope)
    if hp.rope_type == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(hp.rope_factor)
        w.add_rope_scaling_orig_ctx_len(hp.rope_orig_ctx)
        if hp.yarn_ext_factor is not None:
            w.add_rope_scaling_yarn_ext_factor(hp.yarn_ext_factor)
        if hp.yarn_attn_factor is not None:
            w.add_rope_scaling_yarn_attn_factor(hp.yarn_attn_factor)
        if hp.yarn_beta_fast is not None:
            w.add_rope_scaling_yarn_beta_fast(hp.yarn_beta_fast)
        if hp.yarn_beta_slow is not None:
            w.add_rope_scaling_yarn_beta_slow(hp.yarn_beta_slow)
    elif hp.rope_type == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(hp.rope_factor)
    if hp.mscale_all_dim is not None:
        # llama.cpp's deepseek2 loader divides this key by 0.1 again (its converter
        # stores 0.1 * mscale_all_dim for historical reasons), so store it the same way.
        w.add_rope_scaling_yarn_log_mul(0.1 * hp.mscale_all_dim)

    # MLA
    w.add_vocab_size(hp.n_vocab)
    if hp.q_lora_rank:
        w.add_q_lora_rank(hp.q_lora_rank)
    w.add_kv_lora_rank(hp.kv_lora_rank)
    w.add_key_length(hp.kv_lora_rank + hp.qk_rope)
    w.add_value_length(hp.kv_lora_rank)
    w.add_key_length_mla(hp.qk_nope + hp.qk_rope)
    w.add_value_length_mla(hp.v_head)

    # MoE
    w.add_leading_dense_block_count(hp.first_dense)
    w.add_expert_count(hp.n_expert)
    w.add_expert_used_count(hp.n_expert_used)
    w.add_expert_feed_forward_length(hp.n_ff_exp)
    w.add_expert_shared_count(hp.n_shared)
    if hp.write_groups:
        w.add_expert_group_count(hp.n_group)
        w.add_expert_group_used_count(hp.topk_group)
    if hp.routed_scale is not None:
        w.add_expert_weights_scale(hp.routed_scale)
    if hp.norm_topk_prob:
        w.add_expert_weights_norm(True)
    if hp.scoring_func == "sigmoid":
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    elif hp.scoring_func == "softmax":
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SOFTMAX)

    # no tokenizer: llama.cpp makes vocab_size dummy tokens for model "none"
    w.add_tokenizer_model("none")


def convert(model_dir: Path, out_path: Path, outtype: str, gguf, quiet: bool = False) -> dict:
    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    cfg = Config(model_dir / "config.json")
    hp = Hparams(cfg)
    ckpt = SafetensorsCheckpoint(model_dir)
    plan, notes = build_plan(hp, ckpt)
    for n in notes:
        log(f"note: {n}")
    for wmsg in hp.warnings:
        log(f"warning: {wmsg}")
    if not hp.write_groups and hp.n_group is not None and hp.n_group > 1:
        log(f"note: topk_group={hp.topk_group} >= n_group={hp.n_group} keeps every group; "
            "group routing keys omitted (equivalent)")

    GT = gguf.GGMLQuantizationType
    main_np = {"f32": np.dtype(np.float32), "f16": np.dtype(np.float16), "bf16": np.dtype(np.uint16)}[outtype]

    def out_kind(t: PlannedTensor) -> str:
        return "f32" if t.keep_f32 else outtype

    w = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.DEEPSEEK2])
    write_metadata(w, gguf, hp, outtype, model_dir.resolve().name)
    for t in plan:
        kind = out_kind(t)
        n = math.prod(t.shape)
        if kind == "f32":
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), n * 4)
        elif kind == "f16":
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float16), n * 2)
        else:
            w.add_tensor_info(t.name, t.shape, main_np, n * 2, raw_dtype=GT.BF16)

    out_path = out_path.resolve()
    out_dir = out_path.parent
    if not out_dir.is_dir():
        raise ConversionError(f"{out_dir}: output directory does not exist")
    fd, tmp_name = tempfile.mkstemp(prefix="." + out_path.name + ".", suffix=".tmp", dir=out_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    t0 = time.time()
    total = 0
    try:
        w.write_header_to_file(path=tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for idx, t in enumerate(plan):
            a = t.produce()
            if a.shape != t.shape or a.dtype != np.float32:
                raise AssertionError(f"internal: {t.name} produced {a.dtype} {a.shape}, planned {t.shape}")
            kind = out_kind(t)
            if kind == "f32":
                data = np.ascontiguousarray(a)
            elif kind == "f16":
                with np.errstate(over="ignore"):
                    data = a.astype(np.float16)
                bad = ~np.isfinite(data) & np.isfinite(a)
                if bad.any():
                    raise ConversionError(
                        f"tensor '{t.source}' has {int(bad.sum())} values outside the F16 range "
                        f"(max |x| = {float(np.abs(a).max()):.4g}); use --outtype bf16 or f32")
            else:
                data = f32_to_bf16_bits(a)
            w.write_tensor_data(data)
            total += data.nbytes
            if not quiet and (idx % 50 == 0 or idx == len(plan) - 1):
                log(f"[{idx + 1}/{len(plan)}] {t.name} {kind} {list(reversed(t.shape))}")
        w.close()
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, out_path)
    except BaseException:
        try:
            w.close()
        except Exception:
            pass
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    info = {"out": str(out_path), "tensors": len(plan), "tensor_bytes": total,
            "file_bytes": out_path.stat().st_size, "seconds": round(time.time() - t0, 2)}
    log(f"wrote {out_path}: {len(plan)} tensors, {info['file_bytes'] / 1e6:.1f} MB, {info['seconds']} s")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Convert a dsv3 DeepSeek-V3 HF checkpoint (F32/BF16/F16 safetensors) to GGUF "
                    "(llama.cpp arch deepseek2, no tokenizer).")
    ap.add_argument("--gguf-py", required=True, type=Path,
                    help="llama.cpp's gguf-py directory (the one that contains the 'gguf' package)")
    ap.add_argument("--model", required=True, type=Path, help="model directory (config.json + safetensors)")
    ap.add_argument("--out", required=True, type=Path, help="output .gguf file")
    ap.add_argument("--outtype", choices=("f32", "bf16", "f16"), default="f32",
                    help="type of the weight matrices (norms, router and router bias stay f32); default f32")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    args = ap.parse_args(argv)

    if not (args.gguf_py / "gguf" / "__init__.py").is_file():
        print(f"error: --gguf-py {args.gguf_py}: no gguf/__init__.py there "
              "(pass llama.cpp's gguf-py directory)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(args.gguf_py.resolve()))
    try:
        import gguf  # noqa: PLC0415
    except ImportError as e:
        print(f"error: cannot import gguf from {args.gguf_py}: {e}", file=sys.stderr)
        return 2
    if not args.model.is_dir():
        print(f"error: --model {args.model}: not a directory", file=sys.stderr)
        return 2
    try:
        convert(args.model, args.out, args.outtype, gguf, quiet=args.quiet)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
