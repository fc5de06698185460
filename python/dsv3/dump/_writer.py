"""The trace file every dumper writes (docs/trace-names.md), in plain Python and numpy.

A safetensors file: per-layer tensors "layers.{L}.{name}", global ones "{name}", each [tokens, width]
F32 (I32 for expert/group ids); `__metadata__` holds "format": "dsv3-trace" and "dsv3_manifest", a JSON
list in forward order of {key, name, layer, shape, positions, dtype}. Written deterministically, byte for
byte: the header lists `__metadata__` first and then the tensors in forward order, space-padded to a
multiple of 8 bytes as the format allows (safetensors' own writer orders `__metadata__` entries
differently from run to run). Nothing here uses dsv3's C++ code: a dumper's output stays independent.
"""
import fnmatch
import json
import struct
from collections import OrderedDict

import numpy as np

from .._files import write_file_atomic

# Forward order of the per-layer names (the order of dsv3's emits in model.hpp, mla.hpp, moe.hpp).
LAYER_NAMES = [
    "attn_norm", "q_a", "q_a_norm", "q_nope", "q_pe", "q_pe_rope", "c_kv", "k_pe", "k_pe_rope",
    "attn_out", "attn_o_proj", "resid_attn", "ffn_norm",
    "router_logits", "router_scores", "router_biased", "group_scores", "topk_groups", "topk_ids",
    "topk_weights", "topk_margin", "routed_out", "shared_out", "ffn_out", "resid_ffn",
]
INDEX_NAMES = {"topk_ids", "topk_groups"}


def make_filter(globs):
    """'resid_*,logits' -> a predicate on names (every name when empty)."""
    pats = [g.strip() for g in (globs or "").split(",") if g.strip()]
    if not pats:
        return lambda name: True
    return lambda name: any(fnmatch.fnmatchcase(name, p) for p in pats)


def parse_ids(text):
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--ids: {text!r} is not a comma-separated list of integers") from None
    if not ids:
        raise SystemExit("--ids: no token ids given")
    return ids


def save_safetensors(path, tensors, metadata):
    """Writes {key: F32/I32 array} in the given order; complete or not at all (a unique temporary file
    in the target directory, flushed and synced, then renamed over `path`)."""
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for key, arr in tensors.items():
        dt = {"float32": "F32", "int32": "I32"}[str(arr.dtype)]
        b = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[key] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    write_file_atomic(path, [struct.pack("<Q", len(h)), h, *blobs])


def write_trace(rec, n_layers, out, meta_extra):
    """rec: {(name, layer): array [tokens, width]} (layer -1: global), positions from 0. Writes them in
    forward order and returns how many; every captured name must have a place in that order."""
    order = [("embed", -1)] + [(n, L) for L in range(n_layers) for n in LAYER_NAMES]
    order += [("final_norm", -1), ("logits", -1)]
    rec = dict(rec)
    tensors, manifest = OrderedDict(), []
    for name, L in order:
        if (name, L) not in rec:
            continue
        dt = "I32" if name in INDEX_NAMES else "F32"
        arr = np.asarray(rec.pop((name, L)), dtype=np.int32 if dt == "I32" else np.float32)
        key = name if L < 0 else f"layers.{L}.{name}"
        tensors[key] = arr
        manifest.append({"key": key, "name": name, "layer": L, "shape": list(arr.shape),
                         "positions": [0, int(arr.shape[0])], "dtype": dt})
    if rec:
        raise AssertionError(f"captured but not in the forward order: {list(rec)}")
    meta = {"format": "dsv3-trace", "dsv3_manifest": json.dumps(manifest, separators=(",", ":"))}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in meta_extra.items()})
    save_safetensors(out, tensors, meta)
    return len(tensors)
