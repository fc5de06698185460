#!/usr/bin/env bash
# CLI end-to-end checks: make-model -> inspect -> forward in every mode, and
# malformed inputs -> one-line error naming the culprit + non-zero exit code.
# Usage: cli_test.sh path/to/dsv3 repo_root
set -u
DSV3=$1
ROOT=$2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

# expect_error NEEDLE CMD... : exit code 1, exactly one stderr line, "dsv3: error:" + NEEDLE
expect_error() {
  local needle=$1; shift
  "$@" >"$T/out" 2>"$T/err"
  local rc=$?
  local lines; lines=$(wc -l <"$T/err")
  if [ "$rc" -ne 1 ]; then bad "exit $rc (want 1): $*"; cat "$T/err"; return; fi
  if [ "$lines" -ne 1 ]; then bad "$lines stderr lines (want 1): $*"; cat "$T/err"; return; fi
  if ! grep -q "^dsv3: error: " "$T/err"; then bad "no 'dsv3: error:' prefix: $(cat "$T/err")"; return; fi
  if ! grep -qF -- "$needle" "$T/err"; then bad "message lacks '$needle': $(cat "$T/err")"; return; fi
  ok
}

# npy_shape FILE -> the shape tuple in its header
npy_shape() { head -c 128 "$1" | tr -d '\0' | grep -ao "'shape': ([0-9, ]*)" ; }

# -- a tiny model in each dtype; forward in each mode -------------------------
for dt in f32 bf16 fp8; do
  M=$T/tiny-$dt
  "$DSV3" make-model --out "$M" --preset tiny --dtype $dt --seed 3 2>/dev/null || bad "make-model $dt"
  "$DSV3" inspect --model "$M" >"$T/insp" || bad "inspect $dt"
  grep -q "missing/wrong: 0" "$T/insp" && ok || bad "inspect $dt reports missing tensors"
  IDS=0,5,17,42,99,511,3,8,13,21,34,55,89,144,233,377,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24
  "$DSV3" forward --model "$M" --ids $IDS --out "$T/p.npy" && ok || bad "forward prefill $dt"
  [ "$(npy_shape "$T/p.npy")" = "'shape': (40, 512)" ] && ok || bad "prefill shape $(npy_shape "$T/p.npy")"
  "$DSV3" forward --model "$M" --ids $IDS --out "$T/d.npy" --mode decode --prefill-len 10 --attn naive && ok || bad "forward decode $dt"
  [ "$(npy_shape "$T/d.npy")" = "'shape': (31, 512)" ] && ok || bad "decode shape $(npy_shape "$T/d.npy")"
  "$DSV3" forward --model "$M" --ids $IDS --out "$T/c.npy" --chunk 7 --precision f64 && ok || bad "forward chunked $dt"
  # bit-identical for every thread count (prefill: banded gemm; decode: fused kernel; attention: per head)
  for th in 1 3; do
    "$DSV3" --threads $th forward --model "$M" --ids $IDS --out "$T/p$th.npy" && cmp -s "$T/p.npy" "$T/p$th.npy" && ok || bad "prefill $dt differs with --threads $th"
    "$DSV3" --threads $th forward --model "$M" --ids $IDS --out "$T/d$th.npy" --mode decode --prefill-len 10 --attn naive && cmp -s "$T/d.npy" "$T/d$th.npy" && ok || bad "decode $dt differs with --threads $th"
  done
done
"$DSV3" generate --model "$T/tiny-f32" --ids 0,5,17 --max-new-tokens 5 --json >"$T/g.json" && ok || bad generate
grep -q '"generated_ids":\[' "$T/g.json" && ok || bad "generate --json output: $(cat "$T/g.json")"
# the timing names the kernels (README: decode_kernels, awq_decode_kernel)
python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['timing']; sys.exit(0 if t['decode_kernels'] in ('avx512', 'avx2', 'avx2 (avx512 not preferred)', 'plain') and t['awq_decode_kernel'] in ('avx512 gathers', 'avx512 transposes', 'avx2', 'plain') else 1)" "$T/g.json" \
  && ok || bad "generate --json timing kernels: $(cat "$T/g.json")"
"$DSV3" generate --model "$T/tiny-f32" --ids 0,5,17 --max-new-tokens 5 --json --temperature 0.8 --top-p 0.9 --seed 7 >"$T/s1.json"
"$DSV3" generate --model "$T/tiny-f32" --ids 0,5,17 --max-new-tokens 5 --json --temperature 0.8 --top-p 0.9 --seed 7 >"$T/s2.json"
python3 -c "import json,sys; a,b=(json.load(open(f))['generated_ids'] for f in sys.argv[1:]); sys.exit(a!=b)" "$T/s1.json" "$T/s2.json" \
  && ok || bad "sampling with a seed is not reproducible"
"$DSV3" make-model --out "$T/sharded" --preset tiny --dtype fp8 --shard-gb 0.0005 2>/dev/null
[ -f "$T/sharded/model.safetensors.index.json" ] && ok || bad "make-model did not shard"
"$DSV3" forward --model "$T/sharded" --ids 0,1,2 --out "$T/sh.npy" && ok || bad "forward on shards"

# -- inspect on a config alone: the report's parameter counts for DeepSeek-V3
"$DSV3" inspect --model "$ROOT/tests/data/deepseek-v3" >"$T/v3.txt" && ok || bad "inspect on a config-only directory"
grep -q "total 671026419200 (671.026B), active per token 37552297472 (37.552B)" "$T/v3.txt" && ok || bad "V3 parameter counts: $(cat "$T/v3.txt")"
grep -q "MTP module: 1 layer(s), 13463426304 parameters" "$T/v3.txt" && ok || bad "V3 MTP parameter count: $(cat "$T/v3.txt")"

# -- quantized formats: make-model --dtype awq|mlx4|mlx5|mlx8, inspect, forward --
for q in awq mlx4 mlx5 mlx8; do
  "$DSV3" make-model --out "$T/$q" --preset tiny --dtype $q 2>/dev/null || bad "make-model --dtype $q"
  "$DSV3" inspect --model "$T/$q" >"$T/insp" && grep -q "missing/wrong: 0   extra: 0" "$T/insp" && ok || bad "inspect $q: $(tail -3 "$T/insp")"
  "$DSV3" forward --model "$T/$q" --ids 0,5,17,42 --out "$T/q.npy" && ok || bad "forward $q"
done
grep -q "mlp.switch_mlp.gate_proj.weight .*U32 .*MLX 8-bit g32 stacked" "$T/insp" && ok || bad "inspect does not show MLX stacked experts"
grep -q "AWQ int4 g32" <("$DSV3" inspect --model "$T/awq") && ok || bad "inspect does not show AWQ"

# -- MTP: make-model --mtp, forward --mtp-out, speculative generation ---------
"$DSV3" make-model --out "$T/mtp" --preset tiny --dtype fp8 --mtp 2>/dev/null || bad "make-model --mtp"
"$DSV3" inspect --model "$T/mtp" >"$T/insp" && grep -q "model.layers.3.eh_proj.weight .*BF16" "$T/insp" && ok || bad "inspect does not list the BF16 MTP eh_proj"
grep -q "MTP module: 1 layer" "$T/insp" && ok || bad "inspect MTP summary"
"$DSV3" forward --model "$T/mtp" --ids 0,5,17,42,99 --out "$T/m.npy" --mtp-out "$T/mtp.npy" && ok || bad "forward --mtp-out"
[ "$(npy_shape "$T/mtp.npy")" = "'shape': (4, 512)" ] && ok || bad "mtp shape $(npy_shape "$T/mtp.npy")"
"$DSV3" generate --model "$T/mtp" --ids 0,5,17 --max-new-tokens 9 --json >"$T/plain.json"
"$DSV3" generate --model "$T/mtp" --ids 0,5,17 --max-new-tokens 9 --json --speculative mtp >"$T/spec.json"
python3 -c "import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); sys.exit(0 if a['generated_ids']==b['generated_ids'] and b['mtp_drafted']>0 and 'mtp_accepted' in b else 1)" "$T/plain.json" "$T/spec.json" \
  && ok || bad "speculative != plain greedy: $(cat "$T/plain.json") $(cat "$T/spec.json")"
expect_error "no MTP layer" "$DSV3" forward --model "$T/tiny-f32" --ids 0,1,2 --out "$T/x.npy" --mtp-out "$T/y.npy"
expect_error "--speculative mtp is exact greedy decoding" "$DSV3" generate --model "$T/mtp" --ids 0,1 --speculative mtp --temperature 0.5

# -- trace and compare ----------------------------------------------------------
NB=$ROOT/tests/golden/model/neg-bias-f32
IDS16=$(python3 -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['ids'][:16])))" "$NB/meta.json")
"$DSV3" trace --model "$NB" --ids "$IDS16" --out "$T/ta.safetensors" 2>/dev/null && ok || bad "trace"
"$DSV3" trace --model "$NB" --ids "$IDS16" --out "$T/tb.safetensors" --group-mask-fill 0 2>/dev/null
"$DSV3" compare "$T/ta.safetensors" "$T/ta.safetensors" --tol exact >/dev/null && ok || bad "a trace differs from itself"
"$DSV3" compare "$T/ta.safetensors" "$T/tb.safetensors" --report "$T/r.html" >"$T/cmp.txt"
[ $? -eq 1 ] && ok || bad "compare of mismatched knobs exited 0"
grep -q "first tensor past tolerance (forward order): layers.1.topk_ids" "$T/cmp.txt" && ok || bad "compare did not name the first divergent tensor: $(tail -5 "$T/cmp.txt")"
grep -q "routing differs first at layer 1, token position 0: A experts \[5,9,10,11\]" "$T/cmp.txt" && ok || bad "routing diff: $(grep routing "$T/cmp.txt")"
grep -q "<svg" "$T/r.html" && grep -q "Routing differs first" "$T/r.html" && ! grep -q "http://\|https://" <(grep -v "xmlns=" "$T/r.html") && ok || bad "HTML report"
A16=$ROOT/tests/golden/model/a-f32
IDSA=$(python3 -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['ids'][:16])))" "$A16/meta.json")
"$DSV3" trace --model "$A16" --ids "$IDSA" --out "$T/dsv3-a.safetensors" 2>/dev/null
"$DSV3" compare "$T/dsv3-a.safetensors" "$ROOT/tests/golden/trace/a-f32-hf.safetensors" --tol f32 >"$T/hf.txt" && ok || bad "dsv3 vs HF transformers trace fails at the f32 preset: $(tail -3 "$T/hf.txt")"
# the literal reference backend: the same HF trace, and every named tensor of the
# CPU backend's trace within the f32 preset, in every stored format
"$DSV3" --backend reference trace --model "$A16" --ids "$IDSA" --out "$T/ref-a.safetensors" 2>/dev/null
"$DSV3" compare "$T/ref-a.safetensors" "$ROOT/tests/golden/trace/a-f32-hf.safetensors" --tol f32 >"$T/hf.txt" && ok || bad "--backend reference vs HF trace: $(tail -3 "$T/hf.txt")"
for q in f32 fp8 awq mlx5; do
  M=$T/tiny-$q; [ -d "$M" ] || M=$T/$q
  "$DSV3" trace --model "$M" --ids 0,5,17,42,99,3,8,13 --mode decode --prefill-len 5 --out "$T/tc.safetensors" 2>/dev/null
  "$DSV3" --backend reference trace --model "$M" --ids 0,5,17,42,99,3,8,13 --mode decode --prefill-len 5 --out "$T/tr.safetensors" 2>/dev/null
  "$DSV3" compare "$T/tr.safetensors" "$T/tc.safetensors" --tol f32 >"$T/cr.txt" && ok || bad "cpu vs reference trace ($q): $(tail -3 "$T/cr.txt")"
done
expect_error "--backend" "$DSV3" --backend cuda forward --model "$A16" --ids 0 --out "$T/x.npy"

# -- malformed inputs ---------------------------------------------------------
M=$T/tiny-f32
ST=$M/model.safetensors
surgery() {  # surgery SRC DST PY: rewrite a safetensors header with python (stdlib only)
  python3 - "$1" "$2" "$3" <<'PY'
import json, struct, sys
src, dst, code = sys.argv[1:]
b = open(src, 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n]); data = b[8 + n:]
def replace_bytes(k, new):  # tensor k's bytes become `new`; the tensors after it move
    global data
    b0, e0 = h[k]['data_offsets']; grow = len(new) - (e0 - b0)
    data = data[:b0] + new + data[e0:]
    h[k]['data_offsets'] = [b0, b0 + len(new)]
    for t in h.values():
        if isinstance(t, dict) and 'data_offsets' in t and t['data_offsets'][0] > b0:
            t['data_offsets'] = [t['data_offsets'][0] + grow, t['data_offsets'][1] + grow]
exec(code)
hs = json.dumps(h).encode()
open(dst, 'wb').write(struct.pack('<Q', len(hs)) + hs + data)
PY
}
mk() { rm -rf "$T/bad"; mkdir -p "$T/bad"; cp "$M/config.json" "$T/bad/"; }

mk; head -c 4 "$ST" >"$T/bad/model.safetensors"
expect_error "truncated" "$DSV3" forward --model "$T/bad" --ids 0,1 --out "$T/x.npy"
mk; head -c 100000 "$ST" >"$T/bad/model.safetensors"
expect_error "run past the end of the data" "$DSV3" forward --model "$T/bad" --ids 0,1 --out "$T/x.npy"
mk; surgery "$ST" "$T/bad/model.safetensors" "h['model.norm.weight']['data_offsets'][1] += 10**9"
expect_error "'model.norm.weight'" "$DSV3" forward --model "$T/bad" --ids 0,1 --out "$T/x.npy"
mk; surgery "$ST" "$T/bad/model.safetensors" "del h['model.layers.1.mlp.experts.7.up_proj.weight']"
expect_error "missing tensor 'model.layers.1.mlp.experts.7.up_proj.weight'" "$DSV3" forward --model "$T/bad" --ids 0,1 --out "$T/x.npy"
mk; surgery "$ST" "$T/bad/model.safetensors" "h['model.layers.0.self_attn.q_a_proj.weight']['shape'] = [160, 96]"
expect_error "'model.layers.0.self_attn.q_a_proj.weight' has shape [160, 96], expected [96, 160]" "$DSV3" forward --model "$T/bad" --ids 0,1 --out "$T/x.npy"
mk; surgery "$ST" "$T/bad/model.safetensors" "h['model.norm.weight']['dtype'] = 'I32'"
expect_error "'model.norm.weight' has dtype I32" "$DSV3" forward --model "$T/bad" --ids 0,1 --out "$T/x.npy"
mk; cp "$ST" "$T/bad/"; python3 -c "import json,sys; c=json.load(open(sys.argv[1])); c['n_group']=3; json.dump(c, open(sys.argv[1],'w'))" "$T/bad/config.json"
expect_error "'n_group' = 3 must divide n_routed_experts = 16" "$DSV3" forward --model "$T/bad" --ids 0,1 --out "$T/x.npy"
mk; cp "$ST" "$T/bad/"; echo '{"vocab_size": ' >"$T/bad/config.json"
expect_error "config.json: invalid JSON" "$DSV3" forward --model "$T/bad" --ids 0,1 --out "$T/x.npy"
mk; cp "$ST" "$T/bad/"; rm "$T/bad/config.json"
expect_error "config.json: cannot open" "$DSV3" forward --model "$T/bad" --ids 0,1 --out "$T/x.npy"
expect_error "token id 512 is outside the vocabulary [0, 512)" "$DSV3" forward --model "$M" --ids 0,512 --out "$T/x.npy"
expect_error "token id -1 is outside" "$DSV3" forward --model "$M" --ids 0,-1 --out "$T/x.npy"
expect_error "'x' is not an integer token id" "$DSV3" forward --model "$M" --ids 0,x --out "$T/x.npy"
LONG=$(python3 -c "print(','.join(['5']*1281))")
expect_error "exceeds max_position_embeddings = 1280" "$DSV3" forward --model "$M" --ids "$LONG" --out "$T/x.npy"
mk; surgery "$ST" "$T/bad/model.safetensors" "import struct as S; o=h['model.layers.2.mlp.experts.3.down_proj.weight']['data_offsets'][0]; data=data[:o+8]+S.pack('<f', float('nan'))+data[o+12:]"
"$DSV3" inspect --model "$T/bad" --check-weights >"$T/cw.txt" 2>"$T/cw.err"; rc=$?
[ $rc -eq 1 ] && grep -q "model.layers.2.mlp.experts.3.down_proj.weight" "$T/cw.txt" && grep -q "^dsv3: error: .*hold NaN/Inf (first: 'model.layers.2.mlp.experts.3.down_proj.weight')" "$T/cw.err" \
  && ok || bad "check-weights: rc=$rc $(cat "$T/cw.txt" "$T/cw.err")"
"$DSV3" inspect --model "$M" --check-weights | grep -q "tensors finite" && ok || bad "check-weights on a clean model"
mk; cp "$T/mlx4/model.safetensors" "$T/bad/"; python3 -c "import json,sys; c=json.load(open(sys.argv[1])); c['quantization']['bits']=3; json.dump(c, open(sys.argv[2],'w'))" "$T/mlx4/config.json" "$T/bad/config.json"
expect_error "'quantization.bits' = 3 is not supported (4, 5 or 8)" "$DSV3" forward --model "$T/bad" --ids 0,1 --out "$T/x.npy"
expect_error "unknown preset 'huge'" "$DSV3" make-model --out "$T/y" --preset huge
[ ! -e "$T/x.npy" ] && ok || bad "a failed forward left an output file behind"

# -- hostile inputs and environments, round two (issue 19) ---------------------
# JSON nested past 128 levels is refused where it is read, not later by a stack overflow
python3 -c "print('{\"a\":' + '[' * 300000 + ']' * 300000 + '}')" >"$T/deep.json"
mk; cp "$ST" "$T/bad/"; cp "$T/deep.json" "$T/bad/config.json"
expect_error "config.json: JSON nested deeper than 128 levels" "$DSV3" forward --model "$T/bad" --ids 0,1 --out "$T/x.npy"
expect_error "JSON nested deeper than 128 levels" "$DSV3" forward --model "$M" --ids 0,1 --out "$T/x.npy" --variants "$T/deep.json"
expect_error "render-chat: stdin: JSON nested deeper" sh -c "\"$DSV3\" render-chat --tokenizer \"$ROOT/data/tokenizer/deepseek-v3\" <\"$T/deep.json\""
# whole-file inputs must be regular files under a size bound: no endless reads, no hang on a FIFO
mkfifo "$T/fifo"
expect_error "/dev/zero: not a regular file (expected --ids @FILE: token ids)" "$DSV3" forward --model "$M" --ids @/dev/zero --out "$T/x.npy"
expect_error "fifo: not a regular file" "$DSV3" forward --model "$M" --ids "@$T/fifo" --out "$T/x.npy"
expect_error "not a regular file (expected a chat template)" sh -c "echo '{\"messages\": []}' | \"$DSV3\" render-chat --tokenizer \"$ROOT/data/tokenizer/deepseek-v3\" --template /dev/zero"
mkdir -p "$T/tokfifo"; cp "$ROOT/data/tokenizer/deepseek-v3/tokenizer_config.json" "$T/tokfifo/"; mkfifo "$T/tokfifo/tokenizer.json"
expect_error "tokenizer.json: not a regular file (expected a tokenizer JSON file)" sh -c "echo hi | \"$DSV3\" tokenize --tokenizer \"$T/tokfifo\""
mkdir -p "$T/tokfifo2"; cp "$ROOT/data/tokenizer/deepseek-v3/tokenizer.json" "$T/tokfifo2/"; mkfifo "$T/tokfifo2/tokenizer_config.json"
expect_error "tokenizer_config.json: not a regular file" sh -c "echo hi | timeout 20 \"$DSV3\" tokenize --tokenizer \"$T/tokfifo2\""
mk; cp "$ST" "$T/bad/"; mkfifo "$T/bad/model.safetensors.index.json"
expect_error "model.safetensors.index.json: not a regular file" "$DSV3" forward --model "$T/bad" --ids 0,1 --out "$T/x.npy"
# config values that used to pass validation and give NaN logits: refused at load, naming the field
setcfg() {  # setcfg SRC_DIR KEY JSON_VALUE: config.json of SRC_DIR with one (dotted) key set, into $T/bad
  python3 -c "import json,sys; c=json.load(open(sys.argv[1])); ks=sys.argv[2].split('.'); d=c
for k in ks[:-1]: d=d[k]
d[ks[-1]]=json.loads(sys.argv[3]); json.dump(c, open(sys.argv[4],'w'))" "$1/config.json" "$2" "$3" "$T/bad/config.json"
}
mk; cp "$ST" "$T/bad/"; setcfg "$M" rope_theta 1e-300
expect_error "'rope_theta' = 1e-300 must be in [1, 1e+12]" "$DSV3" forward --model "$T/bad" --ids 0,1,2 --out "$T/x.npy"
mk; cp "$ST" "$T/bad/"; setcfg "$M" routed_scaling_factor 1e308
expect_error "'routed_scaling_factor' = 1e+308 must be in (0, 1000]" "$DSV3" generate --model "$T/bad" --ids 0,1 --max-new-tokens 4
mk; cp "$ST" "$T/bad/"; setcfg "$M" rope_scaling.mscale_all_dim 1e300
expect_error "'rope_scaling.mscale_all_dim' = 1e+300 must be in [0, 100]" "$DSV3" forward --model "$T/bad" --ids 0,1,2 --out "$T/x.npy"
# weights whose result is not finite (a final norm of 3e38): an error naming the first bad position
mk; cp "$M/config.json" "$T/bad/"; surgery "$ST" "$T/bad/model.safetensors" "
import struct
b0, e0 = h['model.norm.weight']['data_offsets']
data = data[:b0] + struct.pack('<f', 3e38) * ((e0 - b0) // 4) + data[e0:]"
expect_error "forward: the logits at position 0 are not finite" "$DSV3" forward --model "$T/bad" --ids 0,1,2 --out "$T/x.npy"
[ -e "$T/x.npy" ] && bad "non-finite logits: $T/x.npy written" || ok
expect_error "generate: the logits at position 1 are not finite" "$DSV3" generate --model "$T/bad" --ids 0,1 --max-new-tokens 4
# size arithmetic: 2^31 x 2^31 F32 passes an element cap, but its byte count wraps to 0
# and matched an empty span; inspect --check-weights then read past the mapping
mk; surgery "$ST" "$T/bad/model.safetensors" "
e = len(data); h['zz'] = {'dtype': 'F32', 'shape': [2**31, 2**31], 'data_offsets': [e, e]}"
expect_error "tensor 'zz': shape [2147483648, 2147483648] x F32 is absurd" "$DSV3" inspect --model "$T/bad" --check-weights
# a huge weight_block_size overflowed (out + block - 1) / block into a zero-row scale tensor
F8=$T/tiny-fp8
mk; cp "$F8/model.safetensors" "$T/bad/"; setcfg "$F8" quantization_config.weight_block_size "[9223372036854775807, 128]"
expect_error "weight_block_size must be two integers in [1, 65536], got [9223372036854775807,128]" "$DSV3" forward --model "$T/bad" --ids 0,1 --out "$T/x.npy"
mk; cp "$F8/model.safetensors" "$T/bad/"; setcfg "$F8" quantization_config.weight_block_size "[65536, 65536]"
expect_error "expected [1, 1] (65536x65536 blocks of" "$DSV3" forward --model "$T/bad" --ids 0,1 --out "$T/x.npy"
# traces: a zero-width tensor crashed compare; a key listed twice was read twice
surgery "$T/ta.safetensors" "$T/tz.safetensors" "
import json as J
m = J.loads(h['__metadata__']['dsv3_manifest']); k = m[-1]['key']
h[k]['shape'] = [h[k]['shape'][0], 0]; replace_bytes(k, b'')"
expect_error "has width 0 (expected [tokens, width >= 1])" "$DSV3" compare "$T/ta.safetensors" "$T/tz.safetensors"
surgery "$T/ta.safetensors" "$T/tdup.safetensors" "
import json as J
m = J.loads(h['__metadata__']['dsv3_manifest']); h['__metadata__']['dsv3_manifest'] = J.dumps(m + [m[0]] * 1000)"
expect_error "dsv3_manifest entry '$(python3 -c "import json,struct,sys; b=open(sys.argv[1],'rb').read(); n=struct.unpack('<Q',b[:8])[0]; print(json.loads(json.loads(b[8:8+n])['__metadata__']['dsv3_manifest'])[0]['key'])" "$T/ta.safetensors")' is listed twice" "$DSV3" compare "$T/ta.safetensors" "$T/tdup.safetensors"
surgery "$T/ta.safetensors" "$T/tnm.safetensors" "
import json as J
m = J.loads(h['__metadata__']['dsv3_manifest']); m[0]['positions'] = ['x']; h['__metadata__']['dsv3_manifest'] = J.dumps(m)"
expect_error "'positions' must be [first, end)" "$DSV3" compare "$T/tnm.safetensors" "$T/ta.safetensors"
# non-finite values: an infinity in A and B at the same place is agreement (masked
# vocabulary); a NaN or a one-sided infinity fails; values whose squares overflow a
# double (an F64 trace tensor holding 1e300) made the self-comparison fail
setval() {  # setval SRC DST KEY VALUE: the first value of tensor KEY (F32)
  surgery "$1" "$2" "
k = '$3'; o = h[k]['data_offsets'][0]
data = data[:o] + struct.pack('<f', float('$4')) + data[o + 4:]"
}
setval "$T/ta.safetensors" "$T/tinf.safetensors" logits -inf
"$DSV3" compare "$T/tinf.safetensors" "$T/tinf.safetensors" --tol exact >"$T/inf.txt" && ok || bad "a trace with -inf logits differs from itself: $(grep FAIL "$T/inf.txt")"
surgery "$T/ta.safetensors" "$T/tbig.safetensors" "
k = 'layers.0.attn_out'; b0, e0 = h[k]['data_offsets']
v = list(struct.unpack('<%df' % ((e0 - b0) // 4), data[b0:e0])); v[0] = 1e300
h[k]['dtype'] = 'F64'; replace_bytes(k, struct.pack('<%dd' % len(v), *v))"
"$DSV3" compare "$T/tbig.safetensors" "$T/tbig.safetensors" --tol exact >"$T/big.txt" && ok || bad "an F64 trace holding 1e300 differs from itself: $(grep FAIL "$T/big.txt")"
setval "$T/ta.safetensors" "$T/tnan.safetensors" logits nan
"$DSV3" compare "$T/ta.safetensors" "$T/tnan.safetensors" --tol f32 >"$T/nan.txt"
[ $? -eq 1 ] && grep -q "^logits .*FAIL (1 NaN or unmatched Inf)" "$T/nan.txt" && ok || bad "a NaN in B's logits was not named: $(grep logits "$T/nan.txt")"
"$DSV3" compare "$T/ta.safetensors" "$T/tinf.safetensors" --tol f32 >"$T/inf2.txt"
[ $? -eq 1 ] && grep -q "^logits .*FAIL (1 NaN or unmatched Inf)" "$T/inf2.txt" && ok || bad "an -inf only in B's logits passed: $(grep logits "$T/inf2.txt")"
# a tokenizer regex with catastrophic backtracking (about 4e9 steps on 3,000 letters: minutes)
# gives up after 64 steps per byte, naming the pattern; the real regexes on 2 MB of text do not
TOK=$ROOT/data/tokenizer/deepseek-v3
mkdir -p "$T/tokre"; python3 -c "import json,sys; t=json.load(open(sys.argv[1])); t['pre_tokenizer']['pretokenizers'][0]['pattern']['Regex']=r'\w*\w*\W\W'; json.dump(t, open(sys.argv[2],'w'))" "$TOK/tokenizer.json" "$T/tokre/tokenizer.json"
expect_error 'regex /\w*\w*\W\W/ gave up at byte 0 of a 3002-byte piece' sh -c "python3 -c \"import json; print(json.dumps('a' * 3000 + '!x'))\" | timeout 20 \"$DSV3\" tokenize --tokenizer \"$T/tokre\""
python3 -c "import json; print(json.dumps(('The 3 quick brown foxes, 1234567 times; 東京 — ok!? ' * 40000)))" >"$T/big.jsonl"
"$DSV3" tokenize --tokenizer "$TOK" <"$T/big.jsonl" >"$T/big.ids" && [ "$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))))" "$T/big.ids")" -gt 400000 ] \
  && ok || bad "tokenize of 2 MB of text: $(head -c 300 "$T/big.ids")"
# stdin that fails mid-way is an error, not the end of input; so is a line past 64 MiB
expect_error "tokenize: stdin line 1: read error" sh -c "\"$DSV3\" tokenize --tokenizer \"$TOK\" <\"$T\""
expect_error "detokenize: stdin line 1: read error" sh -c "\"$DSV3\" detokenize --tokenizer \"$TOK\" <\"$T\""
expect_error "tokenize: stdin line 2: a line longer than the 67108864-byte limit" sh -c "{ echo '\"a\"'; head -c 70000000 /dev/zero | tr '\\0' a; } | \"$DSV3\" tokenize --tokenizer \"$TOK\""
# ids between the tokenizer's 128,815 tokens and the model's 129,280 rows decode to nothing, as HF
# tokenizers do (generate and chat set this from config.json; detokenize with --vocab-size)
[ "$(echo '[19923, 129000, 2058]' | "$DSV3" detokenize --tokenizer "$TOK" --vocab-size 129280)" = "$(echo '[19923, 2058]' | "$DSV3" detokenize --tokenizer "$TOK")" ] \
  && ok || bad "detokenize --vocab-size does not drop an id past the tokenizer"
expect_error "token id 129000 is outside the vocabulary" sh -c "echo '[19923, 129000]' | \"$DSV3\" detokenize --tokenizer \"$TOK\""
expect_error "token id 129280 is outside the vocabulary" sh -c "echo '[129280]' | \"$DSV3\" detokenize --tokenizer \"$TOK\" --vocab-size 129280"
# make-model options out of range
expect_error "--layers -5 must be in [1, 4096]" "$DSV3" make-model --out "$T/mm" --preset tiny --layers -5
expect_error "--shard-gb -1 must be a positive number" "$DSV3" make-model --out "$T/mm" --preset tiny --shard-gb -1
expect_error "--bias-mean nan must be a finite number" "$DSV3" make-model --out "$T/mm" --preset tiny --bias-mean nan
[ -e "$T/mm" ] && bad "make-model wrote $T/mm after a bad option" || ok
# under a tight address-space limit: one error line and exit 1, never a hang in BLAS's
# buffer allocation (it retried mmap forever) or an abort from an OpenMP thread (6000 tokens:
# at 700000 and 2 threads libgomp could not start its second thread and ended the process with
# its own message, before the address-space check had run)
"$DSV3" make-model --out "$T/mid2" --preset mid --layers 2 2>/dev/null
LONGIDS=$(python3 -c "print(','.join(str(i % 1000) for i in range(6000)))")
if [ -n "${ASAN_OPTIONS:-}" ]; then
  echo "cli_test: SKIPPED (not counted): the ulimit -v checks; an ASan build reserves terabytes of address space"
else for spec in "2 700000" "2 1000000" "1 900000" "1 1000000"; do
  set -- $spec; th=$1 lim=$2
  (ulimit -v $lim; timeout 60 "$DSV3" --threads $th forward --model "$T/mid2" --ids "$LONGIDS" --out "$T/lim.npy" >/dev/null 2>"$T/err"); rc=$?
  [ $rc -eq 1 ] && [ "$(wc -l <"$T/err")" -eq 1 ] && grep -q "^dsv3: error: .*\(out of memory\|address space\)" "$T/err" && [ ! -e "$T/lim.npy" ] \
    && ok || bad "forward under ulimit -v $lim, $th threads: rc=$rc $(cat "$T/err")"
done; fi
# formats mixed up: an AWQ checkpoint carrying MLX-named tensors (one module, the stacked experts),
# or an AWQ checkpoint whose config also says MLX: an error naming a tensor, never a crash
mix() {  # mix NAME PY: $T/mix-NAME from the AWQ tensors A and the MLX tensors M, through PY
  rm -rf "$T/mix-$1"; mkdir -p "$T/mix-$1"; cp "$T/awq/config.json" "$T/mix-$1/"
  python3 - "$T/awq/model.safetensors" "$T/mlx4/model.safetensors" "$T/mix-$1/model.safetensors" "$2" <<'PY'
import json, struct, sys
def load(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n]); d = b[8 + n:]
    return {k: (v['dtype'], v['shape'], d[v['data_offsets'][0]:v['data_offsets'][1]]) for k, v in h.items() if k != '__metadata__'}
A, M = load(sys.argv[1]), load(sys.argv[2])
out = eval(sys.argv[4])
h, off, blob = {}, 0, b''
for k, (dt, sh, by) in out.items():
    h[k] = {'dtype': dt, 'shape': sh, 'data_offsets': [off, off + len(by)]}; off += len(by); blob += by
hs = json.dumps(h).encode(); open(sys.argv[3], 'wb').write(struct.pack('<Q', len(hs)) + hs + blob)
PY
}
mix one "{**{k: v for k, v in A.items() if 'layers.0.self_attn.o_proj' not in k}, **{k: v for k, v in M.items() if 'layers.0.self_attn.o_proj' in k}}"
expect_error "tensor 'model.layers.0.self_attn.o_proj.weight' has shape [160, 12], expected [160, 96]" "$DSV3" forward --model "$T/mix-one" --ids 0,1 --out "$T/x.npy"
mix stacked "{**{k: v for k, v in A.items() if '.experts.' not in k}, **{k: v for k, v in M.items() if 'switch_mlp' in k}}"
expect_error "missing tensor 'model.layers.1.mlp.experts.0.gate_proj.weight'" "$DSV3" forward --model "$T/mix-stacked" --ids 0,1 --out "$T/x.npy"
mix both "A"; python3 -c "import json,sys; c=json.load(open(sys.argv[1])); c['quantization']={'bits': 4, 'group_size': 32}; json.dump(c, open(sys.argv[1],'w'))" "$T/mix-both/config.json"
expect_error "(MLX 4-bit g32 module 'model.layers.0.self_attn.q_a_proj')" "$DSV3" forward --model "$T/mix-both" --ids 0,1 --out "$T/x.npy"
# outputs: a planted symlink at the old fixed temporary name is never followed
echo "precious" >"$T/victim"
ln -sf "$T/victim" "$T/out.npy.tmp"
"$DSV3" forward --model "$M" --ids 0,1 --out "$T/out.npy" 2>/dev/null && [ "$(cat "$T/victim")" = precious ] && [ "$(npy_shape "$T/out.npy")" = "'shape': (2, 512)" ] \
  && ok || bad "forward followed a symlink at its temporary name"
rm -f "$T/out.npy.tmp"
# two runs writing the same output: each output is one run's whole file, no temporaries left
"$DSV3" forward --model "$M" --ids 0,1,2 --out "$T/same.npy" 2>/dev/null & p1=$!
"$DSV3" forward --model "$M" --ids 5,6,7,8 --out "$T/same.npy" 2>/dev/null & p2=$!
wait $p1; wait $p2
case "$(npy_shape "$T/same.npy")" in "'shape': (3, 512)"|"'shape': (4, 512)") ok ;; *) bad "concurrent writers: $(npy_shape "$T/same.npy")" ;; esac
ls "$T" | grep -q '\.tmp$' && bad "temporary files left behind: $(ls "$T" | grep '\.tmp$')" || ok
# a full disk (file size limit): exit 1 naming the file, no config.json, no temporaries
(trap '' XFSZ; ulimit -f 256; "$DSV3" make-model --out "$T/full" --preset tiny >"$T/out" 2>"$T/err"); rc=$?
[ $rc -eq 1 ] && grep -q "^dsv3: error: .*write failed" "$T/err" && [ ! -e "$T/full/config.json" ] && ! ls "$T/full" | grep -q tmp \
  && ok || bad "make-model on a full disk: rc=$rc $(cat "$T/err"; ls "$T/full")"
# a model written over an earlier sharded one replaces it: no stale index or shards take precedence
"$DSV3" make-model --out "$T/over" --preset tiny --seed 1 --shard-gb 0.0005 2>/dev/null
"$DSV3" make-model --out "$T/over" --preset tiny --seed 2 2>/dev/null
"$DSV3" make-model --out "$T/fresh" --preset tiny --seed 2 2>/dev/null
"$DSV3" forward --model "$T/over" --ids 0,1 --out "$T/o1.npy" 2>/dev/null
"$DSV3" forward --model "$T/fresh" --ids 0,1 --out "$T/o2.npy" 2>/dev/null
cmp -s "$T/o1.npy" "$T/o2.npy" && [ "$(ls "$T/over" | tr '\n' ' ')" = "config.json model.safetensors " ] && ok || bad "stale shards: $(ls "$T/over")"
# SIGTERM (or SIGINT, handled alike; a background job of a script ignores SIGINT) while
# writing: the process dies of the signal and leaves no temporary file
"$DSV3" make-model --out "$T/intr" --preset mid 2>/dev/null & pid=$!
for _ in $(seq 100); do ls "$T/intr" 2>/dev/null | grep -q '\.tmp$' && break; sleep 0.05; done
kill -TERM $pid; wait $pid; rc=$?
[ $rc -eq 143 ] && ! ls "$T/intr" 2>/dev/null | grep -q '\.tmp$' && ok || bad "SIGTERM: rc=$rc, left $(ls "$T/intr" 2>/dev/null)"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
