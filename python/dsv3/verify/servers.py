"""Talking to inference servers: one request builder and one response parser per server kind.

Each parser turns a server's documented response into a :class:`Completion`: the prompt ids the server
ran (where it says), the generated ids with their log-probabilities, the top-k alternatives at each
generated position (``{id: logprob}``), prompt log-probabilities where offered, and routed experts where
the server returns them. Every sampling parameter is set explicitly (servers otherwise apply defaults
from the checkpoint's ``generation_config.json``): greedy, temperature 0, top_p 1, no top_k, no
penalties.

Formats (from each server's own documentation and source):

- vLLM ``POST /v1/completions``: ``prompt`` as token ids, ``logprobs: k``, ``prompt_logprobs: k``,
  ``return_token_ids: true``, ``return_tokens_as_token_ids: true`` (top-logprob keys become
  ``"token_id:N"``); ``choices[0].token_ids``, ``.prompt_token_ids``, ``.logprobs.{tokens,
  token_logprobs, top_logprobs}``, ``.prompt_logprobs`` (a list of ``None | {id: {logprob, rank,
  decoded_token}}``); ``routed_experts`` when started with ``--enable-return-routed-experts``.
- SGLang ``POST /generate``: ``input_ids``, ``sampling_params``, ``return_logprob``,
  ``logprob_start_len: 0``, ``top_logprobs_num: k``; ``meta_info.{input,output}_token_logprobs`` as
  ``[logprob, id, text]`` triples, ``meta_info.output_top_logprobs`` as lists of them.
- llama.cpp's llama-server ``POST /completion``: ``prompt`` as token ids, ``n_predict``, ``n_probs: k``,
  ``return_tokens: true``, ``cache_prompt: false``; ``tokens`` and ``completion_probabilities:
  [{id, logprob, top_logprobs: [{id, logprob}]}]``.
- mlx_lm.server ``POST /v1/completions``: text prompts only (encoded by the server without a BOS
  token), ``logprobs: true``, ``top_logprobs: k`` (k <= 11). With ``top_logprobs`` its entries are
  the unsorted output of an argpartition and the chosen token is not marked, so the chosen ids and
  their log-probabilities come from a first request with ``logprobs`` alone, the alternatives from a
  second, identical greedy request.
- generic OpenAI ``POST /v1/completions``: ``logprobs: k``; ``choices[0].logprobs.{tokens,
  token_logprobs, top_logprobs}`` with tokens as strings, mapped back to ids through the tokenizer.
"""
from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

KINDS = ("vllm", "sglang", "llama-server", "mlx", "openai")


class VerifyError(Exception):
    """The check could not run (exit code 2): the message says why and what to do."""


@dataclass
class Completion:
    prompt_ids: Optional[List[int]]          # as the server ran them (None: the server does not say)
    gen_ids: List[int]
    gen_logprobs: List[float]
    top: Optional[List[Dict[int, float]]] = None           # per generated position
    prompt_logprobs: Optional[List[Optional[float]]] = None  # per prompt position (None at 0)
    routed_experts: Optional[Any] = None     # [positions][layers][k] where the server returns it
    prompt_token_count: Optional[int] = None
    notes: List[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# HTTP

def post_json(url: str, body: Dict[str, Any], *, timeout: float = 120.0, retries: int = 3,
              backoff: float = 0.5, sleep: Callable[[float], None] = time.sleep) -> Dict[str, Any]:
    """POSTs JSON and returns the decoded JSON object. Connection failures and 5xx/429 answers are
    retried with exponential backoff; anything else becomes a VerifyError naming the URL and cause."""
    data = json.dumps(body).encode()
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            sleep(backoff * 2 ** (attempt - 1))
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace")
            last = f"HTTP {e.code} from {url}: {detail.strip() or e.reason}"
            if e.code >= 500 or e.code == 429:
                continue
            raise VerifyError(last) from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, ConnectionRefusedError):
                last = f"cannot connect to {url}: connection refused (is the server running and listening there?)"
            else:
                last = f"cannot reach {url}: {reason}"
            continue
        except (socket.timeout, TimeoutError):
            last = f"no answer from {url} within {timeout:g} s (raise --timeout for long prompts)"
            continue
        except (ConnectionError, OSError) as e:
            last = f"connection to {url} failed: {e}"
            continue
        try:
            out = json.loads(raw)
        except ValueError:
            snippet = raw[:120].decode("utf-8", "replace")
            raise VerifyError(f"{url} answered with malformed or truncated JSON ({len(raw)} bytes, "
                              f"starting {snippet!r})") from None
        if not isinstance(out, dict):
            raise VerifyError(f"{url} answered with JSON that is not an object: {str(out)[:120]}")
        if "error" in out and not out.get("choices") and "meta_info" not in out:
            raise VerifyError(f"{url} answered with an error: {str(out['error'])[:300]}")
        return out
    raise VerifyError(f"{last} (after {retries + 1} attempts)")


def _need(d: Any, path: str, hint: str) -> Any:
    cur = d
    for part in path.split("."):
        if isinstance(cur, list):
            try:
                cur = cur[int(part)]
                continue
            except (ValueError, IndexError):
                cur = None
        elif isinstance(cur, dict):
            cur = cur.get(part)
        else:
            cur = None
        if cur is None:
            raise VerifyError(f"server response has no '{path}' ({hint})")
    return cur


def _float(x: Any, what: str) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        raise VerifyError(f"server response: {what} = {x!r} is not a number") from None


def _token_key(key: str, to_id: Optional[Callable[[str], Optional[int]]]) -> int:
    if key.startswith("token_id:"):
        return int(key.split(":", 1)[1])
    tid = to_id(key) if to_id else None
    if tid is None:
        raise VerifyError(f"server token {key!r} does not map to a token id (vLLM: pass return_tokens_as_token_ids; "
                          "or the server's vocabulary is not the checkpoint's)")
    return tid


# ---------------------------------------------------------------------------------------------------------
# Requests and parsers, per kind. `prompt` is {"ids": [...]} or {"text": "..."}.

GREEDY = {"temperature": 0.0, "top_p": 1.0}


def vllm_request(prompt_ids: List[int], max_tokens: int, k: int, model: str) -> Dict[str, Any]:
    return {"model": model, "prompt": prompt_ids, "max_tokens": max_tokens, **GREEDY, "top_k": -1, "min_p": 0.0,
            "seed": 0, "n": 1, "logprobs": k, "prompt_logprobs": k, "return_token_ids": True,
            "return_tokens_as_token_ids": True, "repetition_penalty": 1.0, "presence_penalty": 0.0,
            "frequency_penalty": 0.0, "ignore_eos": False, "skip_special_tokens": False}


def parse_vllm(r: Dict[str, Any], to_id=None) -> Completion:
    c = _need(r, "choices.0", "vLLM /v1/completions")
    lp = _need(c, "logprobs", "start vLLM with --max-logprobs >= k and request logprobs")
    toks = _need(lp, "token_logprobs", "request logprobs")
    gen = c.get("token_ids")
    if gen is None:
        gen = [_token_key(t, to_id) for t in _need(lp, "tokens", "request logprobs")]
    top = None
    if lp.get("top_logprobs"):
        top = [{_token_key(k, to_id): _float(v, "top logprob") for k, v in (d or {}).items()} for d in lp["top_logprobs"]]
    plp = None
    if c.get("prompt_logprobs") is not None:
        pids = c.get("prompt_token_ids")
        plp = []
        for i, d in enumerate(c["prompt_logprobs"]):
            if d is None:
                plp.append(None)
                continue
            want = str(pids[i]) if pids else None
            ent = d.get(want) if want is not None else None
            if ent is None:
                ent = min(d.values(), key=lambda e: e.get("rank", 1 << 30)) if not want else None
            plp.append(_float(ent["logprob"] if isinstance(ent, dict) else ent, "prompt logprob") if ent is not None else None)
    return Completion(prompt_ids=c.get("prompt_token_ids"), gen_ids=[int(t) for t in gen],
                      gen_logprobs=[_float(x, "token logprob") for x in toks], top=top, prompt_logprobs=plp,
                      routed_experts=c.get("routed_experts"),
                      prompt_token_count=(r.get("usage") or {}).get("prompt_tokens"))


def sglang_request(prompt_ids: List[int], max_tokens: int, k: int, model: str) -> Dict[str, Any]:
    return {"input_ids": prompt_ids, "return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": k,
            "return_text_in_logprobs": False, "return_routed_experts": True,
            "sampling_params": {"max_new_tokens": max_tokens, **GREEDY, "top_k": -1, "min_p": 0.0,
                                "repetition_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
                                "skip_special_tokens": False}}


def parse_sglang(r: Dict[str, Any], to_id=None) -> Completion:
    mi = _need(r, "meta_info", "SGLang /generate")
    out = _need(mi, "output_token_logprobs", "request return_logprob")
    gen = [int(t[1]) for t in out]
    lps = [_float(t[0], "output logprob") for t in out]
    top = None
    if mi.get("output_top_logprobs"):
        top = [{int(e[1]): _float(e[0], "top logprob") for e in (pos or [])} for pos in mi["output_top_logprobs"]]
    plp, pids = None, None
    if mi.get("input_token_logprobs"):
        plp = [None if t[0] is None else _float(t[0], "input logprob") for t in mi["input_token_logprobs"]]
        pids = [int(t[1]) for t in mi["input_token_logprobs"]]
    return Completion(prompt_ids=pids, gen_ids=gen, gen_logprobs=lps, top=top, prompt_logprobs=plp,
                      routed_experts=mi.get("routed_experts"), prompt_token_count=mi.get("prompt_tokens"))


def llama_request(prompt_ids: List[int], max_tokens: int, k: int, model: str) -> Dict[str, Any]:
    return {"prompt": prompt_ids, "n_predict": max_tokens, "temperature": 0.0, "top_k": 0, "top_p": 1.0,
            "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0, "presence_penalty": 0.0,
            "frequency_penalty": 0.0, "dry_multiplier": 0.0, "xtc_probability": 0.0, "mirostat": 0, "seed": 0,
            "n_probs": k, "post_sampling_probs": False, "return_tokens": True, "cache_prompt": False}


def parse_llama(r: Dict[str, Any], to_id=None) -> Completion:
    probs = _need(r, "completion_probabilities", "request n_probs > 0")
    gen, lps, top = [], [], []
    for p in probs:
        gen.append(int(_need(p, "id", "llama-server completion_probabilities")))
        lps.append(_float(_need(p, "logprob", "llama-server >= b4500 (logprob fields)"), "logprob"))
        top.append({int(e["id"]): _float(e["logprob"], "top logprob") for e in p.get("top_logprobs") or []})
    if r.get("tokens") and list(map(int, r["tokens"])) != gen:
        raise VerifyError("llama-server: 'tokens' and completion_probabilities disagree")
    return Completion(prompt_ids=None, gen_ids=gen, gen_logprobs=lps, top=top or None,
                      prompt_token_count=(r.get("timings") or {}).get("prompt_n") or r.get("tokens_evaluated"))


def mlx_request(text: str, max_tokens: int, k: int, model: str) -> Dict[str, Any]:
    body = {"model": model, "prompt": text, "max_tokens": max_tokens, **GREEDY, "top_k": 0, "min_p": 0.0,
            "repetition_penalty": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "xtc_probability": 0.0,
            "logprobs": True, "stream": False}
    if k > 0:
        body["top_logprobs"] = min(k, 11)
    return body


def parse_mlx(r: Dict[str, Any], r_top: Optional[Dict[str, Any]] = None, to_id=None) -> Completion:
    content = _need(r, "choices.0.logprobs.content", "mlx_lm.server: request logprobs: true")
    gen = [int(_need(e, "id", "mlx_lm.server logprobs entry")) for e in content]
    lps = [_float(e.get("logprob"), "logprob") for e in content]
    top, notes = None, []
    if r_top is not None:
        tc = _need(r_top, "choices.0.logprobs.content", "mlx_lm.server: request top_logprobs")
        top = [{int(e["id"]): _float(e["logprob"], "top logprob") for e in (d.get("top_logprobs") or [])} for d in tc]
        # greedy: the chosen token is the best of its alternatives, whatever order they come in
        alt = [max(d, key=d.get) if d else None for d in top]
        if alt[: len(gen)] != gen[: len(alt)]:
            notes.append("the second (top_logprobs) request generated other tokens; alternatives not used")
            top = None
    return Completion(prompt_ids=None, gen_ids=gen, gen_logprobs=lps, top=top,
                      prompt_token_count=(r.get("usage") or {}).get("prompt_tokens"), notes=notes)


def openai_request(prompt: Any, max_tokens: int, k: int, model: str) -> Dict[str, Any]:
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, **GREEDY, "n": 1, "seed": 0,
            "presence_penalty": 0.0, "frequency_penalty": 0.0, "logprobs": min(k, 5) if k else 1}


def parse_openai(r: Dict[str, Any], to_id=None) -> Completion:
    c = _need(r, "choices.0", "/v1/completions")
    lp = _need(c, "logprobs", "request logprobs")
    toks = _need(lp, "tokens", "request logprobs")
    gen = [_token_key(t, to_id) for t in toks]
    top = None
    if lp.get("top_logprobs"):
        top = [{_token_key(k, to_id): _float(v, "top logprob") for k, v in (d or {}).items()} for d in lp["top_logprobs"]]
    return Completion(prompt_ids=None, gen_ids=gen,
                      gen_logprobs=[_float(x, "token logprob") for x in _need(lp, "token_logprobs", "request logprobs")],
                      top=top, prompt_token_count=(r.get("usage") or {}).get("prompt_tokens"))


ENDPOINT = {"vllm": "/v1/completions", "sglang": "/generate", "llama-server": "/completion",
            "mlx": "/v1/completions", "openai": "/v1/completions"}
TAKES_IDS = {"vllm": True, "sglang": True, "llama-server": True, "mlx": False, "openai": False}


def complete(kind: str, base_url: str, prompt_ids: List[int], text: Optional[str], max_tokens: int, k: int,
             model: str, to_id, timeout: float, retries: int) -> Completion:
    """One greedy completion with log-probabilities from a server of `kind`."""
    url = base_url.rstrip("/") + ENDPOINT[kind]
    post = lambda body: post_json(url, body, timeout=timeout, retries=retries)  # noqa: E731
    if kind == "vllm":
        return parse_vllm(post(vllm_request(prompt_ids, max_tokens, k, model)), to_id)
    if kind == "sglang":
        return parse_sglang(post(sglang_request(prompt_ids, max_tokens, k, model)), to_id)
    if kind == "llama-server":
        return parse_llama(post(llama_request(prompt_ids, max_tokens, k, model)), to_id)
    if text is None:
        raise VerifyError(f"--kind {kind} takes text prompts: give {{\"prompt\": ...}} lines, or a server that takes ids")
    if kind == "mlx":
        first = post(mlx_request(text, max_tokens, 0, model))
        second = post(mlx_request(text, max_tokens, k, model)) if k > 0 else None
        return parse_mlx(first, second, to_id)
    return parse_openai(post(openai_request(text, max_tokens, k, model)), to_id)
