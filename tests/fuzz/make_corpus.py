#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets into tests/fuzz/corpus/<target>/.
Standard library only (no numpy / safetensors). Re-run after changing it:
    python3 tests/fuzz/make_corpus.py
"""
import json, os, struct, sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, bytes)."""
    h, off, blob = {}, 0, b""
    for name, dt, shape, data in tensors:
        h[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
        blob += data
    if metadata is not None:
        h["__metadata__"] = metadata
    hs = json.dumps(h, separators=(",", ":")).encode()
    hs += b" " * ((8 - (8 + len(hs)) % 8) % 8)
    return struct.pack("<Q", len(hs)) + hs + blob


def npy(descr, shape, data, version=(1, 0), fortran=False):
    sh = "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
    h = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, "True" if fortran else "False", sh)
    lenfmt, pre = ("<H", 10) if version[0] == 1 else ("<I", 12)
    h = h + " " * ((64 - (pre + len(h) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(lenfmt, len(h)) + h.encode("latin1") + data


# -- safetensors -------------------------------------------------------------
f32 = struct.pack("<6f", 1, 2, 3, 4, 5, 6)
bf16 = struct.pack("<4H", 0x3F80, 0x4000, 0x7F80, 0xFFC1)
fp8 = bytes([0x38, 0xB8, 0x7F])
put("safetensors", "three-dtypes", safetensors(
    [("a", "F32", [2, 3], f32), ("b", "BF16", [4], bf16), ("c", "F8_E4M3", [3], fp8)], {"format": "pt"}))
put("safetensors", "empty-header", safetensors([]))
put("safetensors", "scalar-and-empty", safetensors(
    [("s", "F64", [], struct.pack("<d", 0.5)), ("z", "I32", [0, 4], b""), ("u", "U8", [2], b"\x01\x02")]))
put("safetensors", "ints", safetensors(
    [("i64", "I64", [2], struct.pack("<2q", -1, 2)), ("i16", "I16", [1], b"\x00\x80"),
     ("i8", "I8", [1], b"\xff"), ("bool", "BOOL", [2], b"\x00\x01"), ("f16", "F16", [2], b"\x00\x3c\x00\x7c")]))

# -- checkpoint index (+ NUL + shard s1) -------------------------------------
s1 = safetensors([("w", "F32", [2], struct.pack("<2f", 1, 2)), ("w_scale_inv", "F32", [1], struct.pack("<f", 3))])
put("checkpoint", "index-only", json.dumps({"metadata": {"total_size": 14}, "weight_map": {"a": "s0.safetensors", "b": "s0.safetensors"}}))
put("checkpoint", "two-shards", json.dumps({"weight_map": {"a": "s0.safetensors", "w": "s1.safetensors",
                                                           "w_scale_inv": "s1.safetensors"}}).encode() + b"\0" + s1)
put("checkpoint", "missing-shard", json.dumps({"weight_map": {"a": "s0.safetensors", "x": "s9.safetensors"}}))

# -- config.json -------------------------------------------------------------
v3 = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
    "moe_intermediate_size": 2048, "num_hidden_layers": 61, "first_k_dense_replace": 3,
    "moe_layer_freq": 1, "num_attention_heads": 128, "num_key_value_heads": 128,
    "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8,
    "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5, "norm_topk_prob": True,
    "scoring_func": "sigmoid", "topk_method": "noaux_tc", "q_lora_rank": 1536,
    "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "rope_theta": 10000,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                     "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "hidden_act": "silu",
    "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1,
    "num_nextn_predict_layers": 1, "attention_bias": False, "torch_dtype": "bfloat16",
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                            "quant_method": "fp8", "weight_block_size": [128, 128]},
}
put("config", "deepseek-v3", json.dumps(v3, indent=2))
with open(os.path.join(ROOT, "tests/golden/model/a-f32/config.json"), "rb") as f:
    put("config", "tiny-a-f32", f.read())
hf5 = dict(v3)
del hf5["rope_scaling"], hf5["quantization_config"]
hf5["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
                          "original_max_position_embeddings": 4096}
hf5["q_lora_rank"] = None
hf5["eos_token_id"] = [1, 2]
put("config", "hf5-style", json.dumps(hf5))

# -- tokenizer.json (trimmed from the vendored DeepSeek-V3 one) ---------------
with open(os.path.join(ROOT, "data/tokenizer/deepseek-v3/tokenizer.json"), encoding="utf-8") as f:
    tj = json.load(f)
vocab = tj["model"]["vocab"]
by_id = sorted(vocab.items(), key=lambda kv: kv[1])
# the 256 byte symbols (GPT-2 byte alphabet) + merges built from them
bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
cs, n = bs[:], 0
for b in range(256):
    if b not in bs:
        bs.append(b)
        cs.append(256 + n)
        n += 1
small = {chr(c): i for i, c in enumerate(cs)}
merges = []
for m in tj["model"]["merges"]:
    a, b = m.split(" ") if isinstance(m, str) else m
    if a in small and b in small and a + b not in small:
        small[a + b] = len(small)
        merges.append(a + " " + b)
    if len(merges) >= 120:
        break
added = [dict(t, id=len(small) + i) for i, t in enumerate(tj["added_tokens"][:3])]
added.append({"id": len(small) + 3, "content": "<|eot|>", "single_word": False, "lstrip": True,
              "rstrip": True, "normalized": False, "special": True})
trim = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": tj["normalizer"], "pre_tokenizer": tj["pre_tokenizer"],
        "post_processor": tj["post_processor"], "decoder": tj["decoder"],
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": small, "merges": merges}}
put("tokenizer_json", "deepseek-v3-trimmed", json.dumps(trim, ensure_ascii=False))
trim2 = json.loads(json.dumps(trim))
trim2["model"]["merges"] = [m.split(" ") for m in merges[:40]]
trim2["model"]["ignore_merges"] = True
trim2["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}
put("tokenizer_json", "pair-merges-bytelevel-only", json.dumps(trim2, ensure_ascii=False))

# -- texts for the real tokenizer --------------------------------------------
texts = {
    "english": "Hello, world! The quick brown fox jumps over the lazy dog. It's 2024-06-01, 12:34.",
    "chinese": "你好，世界！深度求索（DeepSeek）发布了新模型。日本語のテキストも。",
    "code": "def f(x):\n    return [i ** 2 for i in range(x)]  # squares\n\n\tif a != b: print('{}'.format(a))\r\n",
    "emoji-mixed": "naïve café 🤖🚀 ∑∫ Ωmega — «quotes» \u00a0nbsp\u2028ls \ufeffbom",
    "numbers": "1234567890 3.14159 1e-10 0x7fff 00001 ١٢٣ ⅷ",
    "specials": "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>Hi<｜Assistant｜>Hello<｜end▁of▁sentence｜><｜tool▁calls▁begin｜>",
    "whitespace": "   \n\n\n  \t\t  x  \r\n \u3000 ",
    "empty": "",
}
for k, v in texts.items():
    put("encode", k, v)

# -- chat: byte 0 flags (1: add_generation_prompt, 2: vendored V3 template) ---
msgs = [
    [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}],
    [{"role": "user", "content": "weather?"},
     {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
     {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "It is sunny.</think>ok"}],
    [{"role": "user", "content": "x"}, {"role": "tool", "content": "a"}, {"role": "tool", "content": "b"}],
]
for i, m in enumerate(msgs):
    put("chat", "v3-%d" % i, bytes([3 if i % 2 == 0 else 2]) + json.dumps(m, ensure_ascii=False).encode())
tmpls = [
    "{% for m in messages %}{{ m.role | upper }}: {{ m['content'] | trim }}\n{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}",
    "{%- set ns = namespace(n=0) -%}{%- for m in messages if m.role != 'system' -%}{% set ns.n = ns.n + 1 %}{{ loop.index }}/{{ loop.length }} {{ m.content ~ '!' }}{% if loop.last %}{{ ns.n }}{% endif %}{%- endfor -%}",
    "{{ bos_token }}{{ messages | length }} {{ (messages | map(attribute='role') | list) | tojson }} {{ range(3) | list }} {{ 7 // 2 }} {{ 2 ** 10 }} {{ 'ab' * 3 }} {{ messages[0].content[1:3] }} {{ 'x' if messages else 'y' }}",
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}{{ none is none }}{{ '%d' }}",
]
for i, t in enumerate(tmpls):
    put("chat", "tmpl-%d" % i, bytes([1]) + t.encode() + b"\0" + json.dumps(msgs[0]).encode())

# -- npy ---------------------------------------------------------------------
put("npy", "f4-2x3", npy("<f4", [2, 3], struct.pack("<6f", 1, 2, 3, 4, 5, 6)))
put("npy", "i8-ids", npy("<i8", [5], struct.pack("<5q", 0, 1, 128000, 2, 3)))
put("npy", "i4-v2", npy("<i4", [1, 3], struct.pack("<3i", 7, 8, 9), version=(2, 0)))
put("npy", "f8-scalar-v3", npy("<f8", [], struct.pack("<d", 2.5), version=(3, 0)))
put("npy", "f4-empty", npy("<f4", [0, 129280], b""))
put("npy", "f4-fortran-1d", npy("<f4", [1, 2], struct.pack("<2f", 1, 2), fortran=True))

# -- traces (dsv3 trace files: safetensors + __metadata__.dsv3_manifest) ------
def trace(entries):
    """entries: list of (key, name, layer, start, dtype, [rows, cols], values)."""
    tensors, man = [], []
    for key, name, layer, start, dt, shape, vals in entries:
        fmt = "<%d%s" % (len(vals), "f" if dt == "F32" else "i")
        tensors.append((key, dt, shape, struct.pack(fmt, *vals)))
        man.append({"key": key, "name": name, "layer": layer, "shape": shape,
                    "positions": [start, start + shape[0]], "dtype": dt})
    return safetensors(tensors, {"format": "dsv3-trace", "dsv3_manifest": json.dumps(man)})


put("trace", "logits-routing", trace([
    ("layers.1.topk_ids", "topk_ids", 1, 0, "I32", [2, 2], [3, 5, 1, 7]),
    ("layers.1.topk_margin", "topk_margin", 1, 0, "F32", [2, 1], [0.5, 0.01]),
    ("layers.1.hidden", "hidden", 1, 0, "F32", [2, 3], [1, -2, 3, 0.5, 0, -1]),
    ("logits", "logits", -1, 0, "F32", [2, 4], [1, 2, 3, 4, 4, 3, 2, 1]),
]))
put("trace", "decode-start", trace([("logits", "logits", -1, 5, "F32", [1, 6], [0, 0, 1, 0, 0, 0])]))
put("trace", "empty-rows", trace([("embed", "embed", -1, 0, "F32", [0, 4], [])]))

# -- json (the bounded reader of every JSON input) ------------------------------
put("json", "object", r'{"a": [1, 2.5, -3e10, true, null], "b": {"c": "\u00e9\ud83d\ude00"}, "": {}}')
put("json", "deep-ok", "[" * 128 + "]" * 128)
put("json", "deep-refused", "[" * 129 + "]" * 129)
put("json", "deep-objects", '{"a":' * 100 + "1" + "}" * 100)
put("json", "numbers", "[18446744073709551615, -9223372036854775808, 1e400, 0.1, -0]")
print("corpus written to", OUT)
