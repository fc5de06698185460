"""dsv3: the DeepSeek-V3 reference implementation as an oracle for Python test suites.

numpy in, numpy out. The arrays a Model returns are dsv3's own result buffers
(no copy), kept alive by the array. Errors are raised as :class:`dsv3.Error`
carrying dsv3's message (the file, tensor or field at fault).

    import dsv3
    m = dsv3.Model("path/to/checkpoint")           # HF layout: config.json + safetensors
    logits = m.forward([0, 23, 221])                 # [3, vocab] float32
    routing = m.routing()                            # {layer: (expert ids [3, k], weights [3, k])}
    t = m.trace([0, 23, 221], names=["resid_*", "logits"])
    dsv3.compare(t, "hf.safetensors", tol="f32")     # same metrics as `dsv3 compare`
"""
from __future__ import annotations

import json as _json
import os as _os
import subprocess as _subprocess
import sys as _sys
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as _np


def _choose_openblas_core() -> None:
    # OpenBLAS picks its kernels once, when it loads, from OPENBLAS_CORETYPE;
    # dsv3's CLI sets it where OpenBLAS would fall back to generic kernels
    # (include/dsv3/cpu/openblas.hpp). A child process asks the same question of
    # the same library, so this process runs the CLI's GEMM kernels and its
    # logits are the CLI's byte for byte.
    if "OPENBLAS_CORETYPE" in _os.environ or "DSV3_KEEP_BLAS_CORE" in _os.environ:
        return
    env = dict(_os.environ, DSV3_BLAS_PROBE="1")
    try:
        r = _subprocess.run(
            [_sys.executable, "-c", "import dsv3._core as c; print(c.openblas_preferred_core())"],
            env=env, capture_output=True, text=True, timeout=60)
    except (OSError, _subprocess.SubprocessError):
        return
    core = r.stdout.strip() if r.returncode == 0 else ""
    if core:
        _os.environ["OPENBLAS_CORETYPE"] = core


if not _os.environ.get("DSV3_BLAS_PROBE"):
    _choose_openblas_core()

from . import _core  # noqa: E402  (after OPENBLAS_CORETYPE is settled)
from ._core import Cache, Error  # noqa: E402,F401

__all__ = ["Model", "Tokenizer", "Cache", "Error", "Trace", "compare", "read_trace", "write_trace", "make_model"]
__version__ = "0.1.0"

IdsLike = Union[Sequence[int], _np.ndarray]
PathLike = Union[str, "_os.PathLike[str]"]


def _ids(ids: IdsLike, what: str = "ids") -> _np.ndarray:
    a = _np.asarray(ids)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D sequence of token ids, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{what}: no token ids given")
    if a.dtype.kind not in "iu":
        if a.dtype.kind == "f" and _np.all(_np.isfinite(a)) and _np.all(a == _np.round(a)):
            a = a.astype(_np.int64)
        else:
            raise ValueError(f"{what}: token ids must be integers, got dtype {a.dtype}")
    if a.min() < -(2**31) or a.max() >= 2**31:
        raise ValueError(f"{what}: token id {int(a.max()) if a.max() >= 2**31 else int(a.min())} does not fit int32")
    return _np.ascontiguousarray(a, dtype=_np.int32)


def _json_text(obj: Any, what: str) -> str:
    try:
        return _json.dumps(obj if obj is not None else {})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: not JSON-serialisable: {e}") from None


class Trace(dict):
    """Named tensors of a forward pass: ``{key: ndarray [tokens, width]}`` in forward order.

    Keys are ``"layers.{L}.{name}"`` for per-layer tensors and ``"{name}"`` for global ones
    (docs/trace-names.md); ``topk_ids``/``topk_groups`` are int32, the rest float32. ``start[key]``
    is the position of row 0 (a decode trace may start past 0).
    """

    def __init__(self, entries: Iterable[Tuple[str, str, int, int, _np.ndarray]] = (), **kw: Any):
        super().__init__()
        self.start: Dict[str, int] = {}
        self._names: Dict[str, Tuple[str, int]] = {}
        for key, name, layer, start, arr in entries:
            self[key] = arr
            self.start[key] = int(start)
            self._names[key] = (name, int(layer))
        self.metadata: Dict[str, Any] = dict(kw)

    def name_layer(self, key: str) -> Tuple[str, int]:
        """(name, layer) of a key; layer -1 for global tensors."""
        if key in self._names:
            return self._names[key]
        parts = key.split(".", 2)
        if len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit():
            return parts[2], int(parts[1])
        return key, -1

    def entries(self) -> List[Tuple[str, str, int, int, _np.ndarray]]:
        out = []
        for key, arr in self.items():
            a = _np.asarray(arr)
            if a.ndim == 1:
                a = a.reshape(-1, 1)
            if a.ndim != 2:
                raise ValueError(f"trace '{key}': expected a 2-D [tokens, width] array, got shape {a.shape}")
            name, layer = self.name_layer(key)
            out.append((key, name, layer, self.start.get(key, 0), _np.ascontiguousarray(a, dtype=_np.float64)))
        return out

    def save(self, path: PathLike, metadata: Optional[Mapping[str, Any]] = None) -> None:
        write_trace(path, self, metadata)


def _as_trace(t: Union[PathLike, Mapping[str, Any]]) -> Tuple[Trace, str]:
    if isinstance(t, Trace):
        return t, "<trace>"
    if isinstance(t, Mapping):
        tr = Trace()
        for k, v in t.items():
            tr[k] = v
        return tr, "<dict>"
    return read_trace(t), _os.fspath(t)


def read_trace(path: PathLike) -> Trace:
    """Reads a trace file (dsv3 trace, `python -m dsv3.dump`, or another engine's dumper); its
    ``metadata`` holds the writer's informational keys (engine, ids, versions), JSON values decoded."""
    p = _os.fspath(path)
    t = Trace(_core.read_trace(p))
    for k, v in _json.loads(_core.trace_metadata(p)).items():
        if k in ("format", "dsv3_manifest"):
            continue
        try:
            t.metadata[k] = _json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v
        except ValueError:
            t.metadata[k] = v
    return t


def write_trace(path: PathLike, trace: Mapping[str, Any], metadata: Optional[Mapping[str, Any]] = None) -> None:
    """Writes a trace file `dsv3 compare` reads (safetensors + manifest; written whole, then renamed)."""
    tr, _ = _as_trace(trace)
    meta = {"engine": "python"}
    meta.update(getattr(tr, "metadata", {}) or {})
    meta.update(metadata or {})
    meta = {k: v if isinstance(v, str) else _json.dumps(v) for k, v in meta.items()}
    _core.write_trace(_os.fspath(path), tr.entries(), _json_text(meta, "write_trace: metadata"))


def compare(a: Union[PathLike, Mapping[str, Any]], b: Union[PathLike, Mapping[str, Any]], tol: str = "f32") -> Dict[str, Any]:
    """Compares trace B (the engine) against trace A (the reference), as `dsv3 compare A B --json`.

    ``a``/``b``: a path to a trace file, a :class:`Trace`, or a plain ``{key: array}`` dict (rows from
    position 0). ``tol``: ``exact``, ``f32``, ``bf16`` or ``fp8``. Returns ``{"pass", "tensors": [{key,
    max_abs, max_rel, nmse, cosine, calc_diff, pass, ...}], "first_fail", "routing_diff", "only_in_a"}``.
    """
    ta, la = _as_trace(a)
    tb, lb = _as_trace(b)
    return _json.loads(_core.compare(ta.entries(), tb.entries(), tol, la, lb))


class Tokenizer:
    """The checkpoint's tokenizer (tokenizer.json, tokenizer_config.json), as HF tokenizers runs it."""

    def __init__(self, path: PathLike):
        self._t = _core.Tokenizer(_os.fspath(path))

    def encode(self, text: str, add_bos: Optional[bool] = None) -> List[int]:
        """Token ids of ``text``; ``add_bos`` defaults to tokenizer_config.json's ``add_bos_token``."""
        return self._t.encode(text, self._t.add_bos_default if add_bos is None else bool(add_bos))

    def decode(self, ids: IdsLike, skip_special_tokens: bool = False) -> str:
        return self._t.decode([int(i) for i in _np.asarray(ids).reshape(-1)], bool(skip_special_tokens))

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                    template: Optional[str] = None) -> str:
        """The chat template (tokenizer_config.json's, or ``template``) applied to ``messages``."""
        return self._t.render_chat(_json_text(list(messages), "render_chat: messages"), bool(add_generation_prompt), template)

    def token_to_id(self, token: str) -> Optional[int]:
        return self._t.token_to_id(token)

    def id_to_token(self, id: int) -> str:
        return self._t.id_to_token(int(id))

    @property
    def vocab_size(self) -> int:
        return self._t.vocab_size

    @property
    def bos_id(self) -> int:
        return self._t.bos_id

    @property
    def eos_id(self) -> int:
        return self._t.eos_id

    @property
    def chat_template(self) -> str:
        return self._t.chat_template


class Model:
    """A DeepSeek-V3 checkpoint (HF layout) run by dsv3, weights memory-mapped in their stored dtype.

    ``threads``: OpenMP threads for this model's calls (None: OMP_NUM_THREADS or every core; logits
    are bit-identical for any count). ``variants``: other engines' semantic choices as a dict
    (docs/variants.md, e.g. ``{"group_mask_fill": "0"}``); default the official semantics.
    ``backend``: ``"cpu"`` or ``"reference"`` (the plain reference ops). ``prefault``: map the whole
    checkpoint in at load (``"auto"``: when it takes at most half of the available memory).
    ``record_routing``: keep the routing of the last call for :meth:`routing`.
    """

    def __init__(self, path: PathLike, *, threads: Optional[int] = None, variants: Optional[Mapping[str, Any]] = None,
                 backend: str = "cpu", prefault: str = "auto", record_routing: bool = True):
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads = {threads!r}: expected a positive int or None")
        if prefault not in ("auto", "on", "off"):
            raise ValueError(f"prefault = {prefault!r}: expected 'auto', 'on' or 'off'")
        self.path = _os.fspath(path)
        self._m = _core.Model(self.path, _json_text(dict(variants or {}), "variants"), threads or 0, backend,
                              bool(record_routing))
        if prefault == "on" or (prefault == "auto" and self._m.checkpoint_bytes <= _available_bytes() // 2):
            self._m.prefault()
        self.config: Dict[str, Any] = _json.loads(self._m.config_json)
        self.variants: Dict[str, Any] = _json.loads(self._m.variants_json)

    @property
    def vocab_size(self) -> int:
        return self._m.vocab_size

    @property
    def has_mtp(self) -> bool:
        return self._m.has_mtp

    def new_cache(self, bf16: bool = False) -> Cache:
        """An empty latent cache for a sequence (``bf16``: stored as bf16, half the memory)."""
        return self._m.new_cache(bool(bf16))

    def forward(self, ids: IdsLike, cache: Optional[Cache] = None, all_logits: bool = True,
                return_hidden: bool = False):
        """Logits ``[n, V]`` float32 for ``ids`` at positions ``[cache.length, cache.length + n)``.

        ``cache``: continue a sequence (the cache advances by n); None: a fresh sequence from position 0.
        ``all_logits=False``: only the last row ``[1, V]``. ``return_hidden``: also return the final-normed
        hidden states ``[n, D]`` (the MTP layer's input) as ``(logits, hidden)``.
        """
        r = self._m.forward(_ids(ids), cache, bool(all_logits), bool(return_hidden))
        return r if return_hidden else r[0]

    __call__ = forward

    def routing(self) -> Dict[int, Tuple[_np.ndarray, _np.ndarray]]:
        """The routing of the last forward call: ``{layer: (expert ids [n, k] int32, weights [n, k] float32)}``
        per MoE layer, rows in the call's token order, ids in the router's top-k order."""
        ids: Dict[int, _np.ndarray] = {}
        w: Dict[int, _np.ndarray] = {}
        for _key, name, layer, _start, arr in self._m.last_routing():
            (ids if name == "topk_ids" else w)[layer] = arr
        return {L: (ids[L], w[L]) for L in sorted(ids)}

    def generate(self, ids: IdsLike, max_new_tokens: int = 32, *, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int = 0, bf16_cache: bool = False) -> List[int]:
        """Generated ids after the prompt ``ids`` (greedy at temperature 0), as `dsv3 generate`: stops after
        ``max_new_tokens`` or after emitting the EOS id (which is included)."""
        return self._m.generate(_ids(ids), int(max_new_tokens), float(temperature), float(top_p), int(top_k),
                                int(seed), bool(bf16_cache))

    def new_mtp_cache(self) -> Cache:
        return self._m.new_mtp_cache()

    def mtp_forward(self, hidden: _np.ndarray, next_ids: IdsLike, cache: Optional[Cache] = None,
                    zero_pos0: bool = False) -> _np.ndarray:
        """MTP logits ``[n, V]``: row i from ``hidden[i]`` (forward(..., return_hidden=True)) and
        ``next_ids[i]`` (the token after position i); predicts the token after that."""
        h = _np.ascontiguousarray(hidden, dtype=_np.float32)
        if h.ndim != 2:
            raise ValueError(f"mtp_forward: hidden must be [n, hidden_size], got shape {h.shape}")
        return self._m.mtp_forward(h, _ids(next_ids, "next_ids"), cache, bool(zero_pos0))

    def trace(self, ids: IdsLike, names: Optional[Union[str, Sequence[str]]] = None, mode: str = "prefill",
              prefill_len: int = 1, chunk: int = 0) -> Trace:
        """Named intermediate tensors of a forward pass over ``ids`` (docs/trace-names.md), as `dsv3 trace`.

        ``names``: globs of names to keep (``"resid_*"``, ``"logits"``; a comma-separated string or a list;
        None: all). ``mode``: ``prefill`` (calls of ``chunk`` tokens, 0: one call) or ``decode`` (the first
        ``prefill_len`` tokens, then one token per call).
        """
        if isinstance(names, str):
            names = [g for g in names.split(",") if g]
        tr = Trace(self._m.trace(_ids(ids), list(names or []), mode, int(prefill_len), int(chunk)))
        tr.metadata = {"engine": "dsv3", "model": self.path, "ids": [int(i) for i in _ids(ids)],
                       "variants": self.variants}
        return tr


def make_model(out: PathLike, preset: str = "tiny", dtype: str = "f32", *, seed: int = 0, layers: Optional[int] = None,
               bias_mean: float = 0.5, group_size: int = 0, mtp: bool = False, shard_gb: float = 2.0,
               config: Optional[Mapping[str, Any]] = None) -> int:
    """Writes a synthetic checkpoint (as `dsv3 make-model`); returns the bytes of tensors written.

    ``preset``: tiny | demo | mid | full-dims; ``dtype``: f32 | bf16 | fp8 | awq | mlx4 | mlx5 | mlx8;
    ``config``: config.json fields to override.
    """
    if layers is not None and (not isinstance(layers, int) or layers < 1):
        raise ValueError(f"layers = {layers!r}: expected a positive int")
    return _core.make_model(_os.fspath(out), preset, dtype, int(seed), int(layers or 0), float(bias_mean),
                            int(group_size), bool(mtp), float(shard_gb), _json_text(dict(config or {}), "config"))


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
