"""Assertions for engine test suites: hold an engine's logits and routing against dsv3's.

    from dsv3.testing import assert_logits_close, assert_routing_equal
    ref = dsv3_reference.forward(ids)                    # the oracle
    assert_logits_close(engine_logits, ref, metric="kl", tol=1e-4)

Each metric is computed per position (row); a failure names the first position past tolerance, the
tokens the two sides rank first there, and how many positions fail. numpy only: no torch needed.

Metrics (``tol`` defaults, and why):

- ``max_abs`` — max |actual − reference| over the row's logits. Default 1e-4: independent f32 engines
  (HF transformers eager, mlx-lm on CPU) agree with dsv3 to about 5e-6 on the project's f32 goldens, and
  1e-4 stays far below any semantic error (a wrong mask fill or YaRN scale moves logits by > 1e-2).
- ``calc_diff`` — DeepGEMM's ``1 − 2·Σxy / Σ(x² + y²)`` over the row. Default 1e-3: the bound DeepGEMM's
  own tests use for FP8 block-scaled GEMMs.
- ``kl`` — KL(P_reference ‖ P_actual) of the softmaxed row, in nats. Default 1e-3: f32 engines are
  many orders below it; it admits the rounding of a bf16 deployment while flagging drift of the size
  quantisation or a semantic error produce. Measure your own engine's level and set ``tol`` from it.
- ``top_n`` — the reference's top-1 token is among the actual's top n and vice versa (the check vLLM's
  ``check_logprobs_close`` makes on sampled tokens). ``tol`` is n; default 5.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

__all__ = ["assert_logits_close", "assert_routing_equal", "logits_metric", "DEFAULT_TOL"]

DEFAULT_TOL = {"max_abs": 1e-4, "calc_diff": 1e-3, "kl": 1e-3, "top_n": 5}


def _rows(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x)
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        a = np.asarray(x.detach().float().cpu().numpy())
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim == 3 and a.shape[0] == 1:  # [1, n, V] from a batched engine
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{what}: expected logits [positions, vocab], got shape {a.shape}")
    return a.astype(np.float64)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def logits_metric(actual: Any, reference: Any, metric: str = "max_abs", top_n: int = 5) -> np.ndarray:
    """The per-position value of ``metric`` (see the module doc); for ``top_n`` 1.0 where the check
    fails and 0.0 where it holds."""
    a, r = _rows(actual, "actual"), _rows(reference, "reference")
    if a.shape != r.shape:
        raise ValueError(f"logits shapes differ: actual {a.shape}, reference {r.shape}")
    if metric == "max_abs":
        return np.abs(a - r).max(axis=1)
    if metric == "calc_diff":
        den = (a * a + r * r).sum(axis=1)
        return np.where(den > 0, 1 - 2 * (a * r).sum(axis=1) / np.where(den > 0, den, 1), 0.0)
    if metric == "kl":
        lp, lq = _log_softmax(r), _log_softmax(a)
        return (np.exp(lp) * (lp - lq)).sum(axis=1)
    if metric == "top_n":
        n = int(top_n)
        if n < 1:
            raise ValueError(f"top_n: n = {n} must be >= 1")
        ta = np.argsort(-a, axis=1, kind="stable")[:, :n]
        tr = np.argsort(-r, axis=1, kind="stable")[:, :n]
        ok = [(tr[i, 0] in ta[i]) and (ta[i, 0] in tr[i]) for i in range(a.shape[0])]
        return 1.0 - np.asarray(ok, dtype=np.float64)
    raise ValueError(f"metric {metric!r}: expected max_abs, calc_diff, kl or top_n")


def assert_logits_close(actual: Any, reference: Any, *, metric: str = "max_abs", tol: Optional[float] = None,
                        start: int = 0, token_names: Optional[Any] = None) -> None:
    """Raises AssertionError unless every position's ``metric`` is within ``tol``.

    ``actual``/``reference``: logits ``[positions, vocab]`` (numpy, lists, or a torch tensor; ``[1, n, V]``
    is accepted). ``start``: the position of row 0, for the message. ``token_names``: optional callable
    id -> str (e.g. a tokenizer's ``id_to_token``) to show tokens in the message.
    """
    if metric not in DEFAULT_TOL:
        raise ValueError(f"metric {metric!r}: expected one of {sorted(DEFAULT_TOL)}")
    t = DEFAULT_TOL[metric] if tol is None else tol
    a, r = _rows(actual, "actual"), _rows(reference, "reference")
    if a.shape != r.shape:
        raise AssertionError(f"logits shapes differ: actual {a.shape}, reference {r.shape}")
    bad_actual = ~np.isfinite(a).all(axis=1)
    if bad_actual.any():
        i = int(np.argmax(bad_actual))
        raise AssertionError(f"actual logits are not finite at position {start + i} (row {i}); "
                             f"{int(bad_actual.sum())} of {a.shape[0]} positions have NaN or inf")
    if metric == "top_n":
        vals = logits_metric(a, r, "top_n", top_n=int(t))
        fails = vals > 0
    else:
        vals = logits_metric(a, r, metric)
        fails = ~(vals <= t)
    if not fails.any():
        return
    i = int(np.argmax(fails))
    name = (lambda k: f"{k} ({token_names(int(k))!r})") if token_names else (lambda k: str(k))
    ta, tr = int(np.argmax(a[i])), int(np.argmax(r[i]))
    what = (f"top-1 tokens not within each other's top {int(t)}" if metric == "top_n"
            else f"{metric} = {vals[i]:.3e} > tol {t:.3e}")
    worst = "" if metric == "top_n" else (f"; worst {metric} {np.nanmax(vals):.3e} at position "
                                          f"{start + int(np.nanargmax(vals))}")
    raise AssertionError(
        f"logits differ first at position {start + i} (row {i}): {what}; reference top token {name(tr)} "
        f"(logit {r[i, tr]:.6g}), actual top token {name(ta)} (logit {a[i, ta]:.6g}); "
        f"{int(fails.sum())} of {a.shape[0]} positions past tolerance{worst}")


RoutingLike = Mapping[int, Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]]


def _routing(x: Any, what: str) -> Dict[int, Tuple[np.ndarray, Optional[np.ndarray]]]:
    out: Dict[int, Tuple[np.ndarray, Optional[np.ndarray]]] = {}
    if not isinstance(x, Mapping):
        raise ValueError(f"{what}: expected {{layer: expert ids [n, k]}} or {{layer: (ids, weights)}}")
    for L, v in x.items():
        ids, w = (v if isinstance(v, tuple) else (v, None))
        ids = np.asarray(ids)
        if ids.ndim == 1:
            ids = ids.reshape(1, -1)
        out[int(L)] = (ids.astype(np.int64), None if w is None else np.asarray(w, dtype=np.float64).reshape(ids.shape))
    return out


def assert_routing_equal(actual: Any, reference: Any, *, weights_atol: Optional[float] = None, start: int = 0) -> None:
    """Raises AssertionError unless every MoE layer picks the same set of experts for every token.

    Inputs: ``{layer: expert ids [n, k]}`` or ``{layer: (ids, weights)}`` (what ``dsv3.Model.routing()``
    returns). The order of the k experts does not matter (engines sort them differently); the sets must
    be equal. With ``weights_atol``, each expert's routing weight must also agree within it.
    """
    a, r = _routing(actual, "actual"), _routing(reference, "reference")
    if sorted(a) != sorted(r):
        raise AssertionError(f"routed layers differ: actual {sorted(a)}, reference {sorted(r)}")
    for L in sorted(r):
        (ia, wa), (ir, wr) = a[L], r[L]
        if ia.shape != ir.shape:
            raise AssertionError(f"layer {L}: expert ids shape {ia.shape} (actual) vs {ir.shape} (reference)")
        for t in range(ir.shape[0]):
            sa, sr = sorted(ia[t].tolist()), sorted(ir[t].tolist())
            if sa != sr:
                raise AssertionError(
                    f"routing differs first at layer {L}, position {start + t}: reference experts {sr}, actual {sa} "
                    f"(only in reference {sorted(set(sr) - set(sa))}, only in actual {sorted(set(sa) - set(sr))})")
            if weights_atol is not None and wa is not None and wr is not None:
                da = dict(zip(ia[t].tolist(), wa[t].tolist()))
                for e, w in zip(ir[t].tolist(), wr[t].tolist()):
                    if not abs(da[e] - w) <= weights_atol:
                        raise AssertionError(f"routing weight differs at layer {L}, position {start + t}, expert {e}: "
                                             f"reference {w:.6g}, actual {da[e]:.6g} (atol {weights_atol:g})")
