#!/usr/bin/env python3
"""Regenerates the tokenizer / chat-template goldens from HuggingFace.

Run by hand (not by the test suite), from the repo root:

    bash scripts/venv.sh tok     # .venv/tok: tokenizers, "transformers>=4.45,<5", jinja2
    .venv/tok/bin/python tests/golden/make_tokenizer_goldens.py

transformers is pinned below 5: transformers v5 loads this tokenizer as a
LlamaTokenizer with a forced Metaspace pre-tokenizer (huggingface/transformers
#45488), which gives wrong ids. The script checks that the BOS variant is
exactly [bos] + ids and fails loudly otherwise.

Writes, under tests/golden/tokenizer/:
  corpus.jsonl   >= 1000 texts (seed 1234)   {"text","ids","ids_bos","decoded","decoded_skip"}
  heldout.jsonl  a second corpus (seed 98765) built the same way
  chats.jsonl    rendered chats for both templates
                 {"template","messages","add_generation_prompt","rendered"}
  jinja_cases.jsonl  small templates exercising the Jinja features dsv3
                 implements, rendered by HF's jinja environment
                 {"template","vars","rendered"}
  added_token_flags.jsonl  first line {"edits": {id: {flag: value}}}, then
                 {"text","ids"} encoded with those lstrip/rstrip/single_word edits
Everything is deterministic (seeded RNG, no time/locale input).

UNICODE_NOTE: dsv3 runs the pre-tokenizer regexes with the system Oniguruma
(Debian 12: libonig 6.9.8, Unicode 14.0 tables); HF tokenizers bundles a newer
Oniguruma (Unicode 16 tables). Characters assigned after Unicode 14.0 (e.g.
U+1FA77, U+135E0) are \p{Cn} for dsv3 but \p{L}/\p{S} for HF and may split
differently. The random mixes therefore draw only code points assigned in
Unicode 14.0, using Python's unicodedata, which must be version 14.0.0
(Python 3.11) for the corpus to be reproducible; the script checks this.
"""
import json
import os
import random
import sys
import unicodedata

from tokenizers import Tokenizer
from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKDIR = os.path.join(ROOT, "data", "tokenizer", "deepseek-v3")
OUTDIR = os.path.join(ROOT, "tests", "golden", "tokenizer")

# --------------------------------------------------------------------------- corpus
SCRIPTS = {
    "latin": "The quick brown fox jumps over the lazy dog. Grüße aus Köln, ça va? Español: ¿Dónde está? naïve façade",
    "cjk": "我们今天去公园散步吧。深度求索是一家人工智能公司，它发布了大型语言模型。龥龦𠀀𪚥",
    "kana": "ひらがなとカタカナ、これはテストです。コンピューター゠ヿゟ",
    "hangul": "안녕하세요, 세계! 한국어 텍스트를 토큰화합니다.",
    "arabic": "مرحبا بالعالم، هذا نص عربي للاختبار. ١٢٣٤٥",
    "hebrew": "שלום עולם, זה טקסט בעברית.",
    "devanagari": "नमस्ते दुनिया, यह हिंदी पाठ है। १२३४",
    "cyrillic": "Привет, мир! Съешь же ещё этих мягких французских булок.",
    "greek": "Γειά σου Κόσμε, ελληνικό κείμενο.",
    "thai": "สวัสดีชาวโลก นี่คือข้อความภาษาไทย",
    "emoji": "I ❤️ emoji 😀🎉👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵 ✌🏿",
    "combining": "e\u0301 a\u0308 n\u0303 Z\u0351\u0352\u0353a\u036f\u0350l\u0357g\u0358o \u1100\u1161\u11a8",
    "math": "∑_{i=1}^{n} x_i² ≤ ∞ ∀x∈ℝ: √(x²) = |x| ≠ −x ± 0.5 ≈ π",
    "digits": "0 12 345 6789 1234567890 3.14159 1,000,000 ٣٤٥ ۱۲۳ ४५६ ①②③ Ⅻ",
}

CODE = [
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "#include <stdio.h>\nint main(void) {\n\tprintf(\"hello, %s\\n\", \"world\");\n\treturn 0;\n}\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
    "const f = async (x) => { await fetch(`/api/${x}`); return x ?? null; };",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
    "<html><body><div class=\"a\">&lt;p&gt; hi &amp; bye</div></body></html>",
    "{\"key\": [1, 2.5, true, null], \"nested\": {\"a\": \"b\"}}",
    "$ ls -la | grep '^d' && echo \"done\" > /dev/null 2>&1",
    "x = [i**2 for i in range(100) if i % 3 == 0]  # comment\r\nprint(x)\r\n",
    "template<typename T> struct S { static constexpr T v = T{}; };",
    "    indented\n\tTabbed\n  \t mixed   \n\n\n",
    "public static void main(String[] args) { System.out.println(\"Hi\"); }",
]

SPECIAL_IN_TEXT = [
    "<｜User｜>hi<｜end▁of▁sentence｜>",
    "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>What is 2+2?<｜Assistant｜>4<｜end▁of▁sentence｜>",
    "a<｜place▁holder▁no▁17｜>b<｜place▁holder▁no▁799｜>",
    "<｜fim▁begin｜>def f():<｜fim▁hole｜>\n<｜fim▁end｜>",
    "<|EOT|> and <|EOT|><|EOT|>",
    " <｜User｜> spaced <｜Assistant｜> ",
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>22C<｜tool▁output▁end｜><｜tool▁outputs▁end｜>",
    "<｜User｜<｜User｜>>",  # partial then full
    "<｜begin▁of▁sentence",  # partial only
    "<｜▁pad▁｜><｜▁pad▁｜>x",
    "<｜place▁holder▁no▁8000｜>",  # not a token
    "<|User|> ascii pipes are not the marker",
]

WS = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r", " \n ", "\u00a0", "\u3000", "\u2009", "\u200b", "\f", "\v"]


def rand_unicode(rng, n):
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            cp = rng.randint(0x20, 0x7E)
        elif r < 0.5:
            cp = rng.randint(0xA0, 0x24F)
        elif r < 0.65:
            cp = rng.randint(0x4E00, 0x9FFF)
        elif r < 0.72:
            cp = rng.randint(0x3040, 0x30FF)
        elif r < 0.78:
            cp = rng.randint(0x1F300, 0x1FAFF)
        elif r < 0.82:
            cp = rng.choice([0x0A, 0x0D, 0x09, 0x20, 0x20, 0x3000, 0x200D, 0xFE0F])
        elif r < 0.9:
            cp = rng.randint(0x0300, 0x06FF)
        else:
            cp = rng.randint(0x20, 0x2FFFF)
        # Only code points assigned in Unicode 14.0 (see UNICODE_NOTE).
        if 0xD800 <= cp <= 0xDFFF or unicodedata.category(chr(cp)) == "Cn":
            cp = 0x20
        out.append(chr(cp))
    return "".join(out)


def make_corpus(seed, n_random):
    rng = random.Random(seed)
    texts = ["", " ", "a", "\n", "Hello world", "1234567890"]
    texts += list(SCRIPTS.values())
    texts += CODE
    texts += SPECIAL_IN_TEXT
    texts += WS
    # digit runs of every length 1..40
    for k in range(1, 41):
        texts.append("".join(rng.choice("0123456789") for _ in range(k)))
    # whitespace runs mixed with words
    for _ in range(60):
        parts = []
        for _ in range(rng.randint(1, 8)):
            parts.append(rng.choice(WS) * rng.randint(1, 4))
            parts.append(rng.choice(["word", "x", "Ünï", "数据", "42", "!?", "—", "end."]))
        texts.append("".join(parts))
    # long words / repetitions
    texts += ["a" * 500, "ab" * 300, "supercalifragilisticexpialidocious" * 5, "😀" * 50,
              "的" * 200, "-" * 100 + "=" * 100, " " * 300, "\n" * 50, "x\u0301" * 60]
    # slices of the per-script samples and mixtures
    keys = sorted(SCRIPTS)
    for _ in range(150):
        a, b = rng.choice(keys), rng.choice(keys)
        sa, sb = SCRIPTS[a], SCRIPTS[b]
        i, j = sorted(rng.sample(range(len(sa) + 1), 2))
        k, l = sorted(rng.sample(range(len(sb) + 1), 2))
        texts.append(sa[i:j] + rng.choice(WS + ["", "", ""]) + sb[k:l])
    # code fragments mixed with specials
    specials = ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>",
                "<|EOT|>", "<｜tool▁sep｜>", "<｜place▁holder▁no▁5｜>", "<｜fim▁hole｜>"]
    for _ in range(120):
        c = rng.choice(CODE)
        i, j = sorted(rng.sample(range(len(c) + 1), 2))
        pos = rng.randint(i, j)
        texts.append(c[i:pos] + rng.choice(specials) + c[pos:j])
    # random unicode mixes
    while len(texts) < 400 + n_random:
        texts.append(rand_unicode(rng, rng.randint(1, 80)))
    # dedupe, keep order
    seen, out = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def write_corpus(path, texts, tk, hf):
    bos = hf.bos_token_id
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for t in texts:
            ids = tk.encode(t, add_special_tokens=False).ids
            ids_bos = hf.encode(t)  # add_special_tokens=True -> add_bos_token from tokenizer_config.json
            if ids_bos != [bos] + ids:
                sys.exit(f"transformers BOS variant disagrees with tokenizers for {t!r}: {ids_bos} vs {ids}")
            rec = {
                "text": t,
                "ids": ids,
                "ids_bos": ids_bos,
                "decoded": tk.decode(ids, skip_special_tokens=False),
                "decoded_skip": tk.decode(ids_bos, skip_special_tokens=True),
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"wrote {path}: {len(texts)} texts")


# --------------------------------------------------------------------------- chats
def tc(name, args):
    return {"type": "function", "function": {"name": name, "arguments": args}}


def chats():
    S = lambda c: {"role": "system", "content": c}
    U = lambda c: {"role": "user", "content": c}
    A = lambda c: {"role": "assistant", "content": c}
    T = lambda c: {"role": "tool", "content": c}
    AT = lambda calls, content=None: {"role": "assistant", "content": content, "tool_calls": calls}
    w1 = tc("get_weather", '{"city": "Paris"}')
    w2 = tc("get_time", '{"tz": "Europe/Paris"}')
    w3 = tc("search", '{"q": "深度求索", "n": 3}')
    convs = [
        [U("Hello")],
        [U("Hello"), A("Hi there!")],
        [S("You are helpful.")],
        [S("You are helpful."), U("What is 2+2?")],
        [S("You are helpful."), U("What is 2+2?"), A("4"), U("And 3+3?")],
        [S("Sys one."), S("Sys two."), U("hi")],
        [S("A"), U("u1"), S("B"), A("a1"), S("C")],
        [U("multi\nline\n\nuser"), A("multi\nline\nanswer\n"), U("  spaced  ")],
        [U("What's the weather in Paris?"), AT([w1]), T("22C and sunny"), A("It is 22C and sunny.")],
        [U("Weather and time?"), AT([w1, w2]), T("22C"), T("14:00"), A("22C at 14:00.")],
        [U("Three calls"), AT([w1, w2, w3]), T("a"), T("b"), T("c")],
        [U("ends with tool"), AT([w1]), T("22C")],
        [U("ends with tool calls"), AT([w1, w2])],
        [S("sys"), U("q1"), AT([w1]), T("r1"), A("ans1"), U("q2"), AT([w3]), T("r2"), A("ans2")],
        [U("two tool rounds"), AT([w1]), T("r1"), AT([w2]), T("r2"), A("done")],
        [U("unicode 😀 中文 <｜User｜> inside"), A("ok ✓")],
        [U(""), A("")],
        [U("x"), A("y"), U("z"), A("w")],
    ]
    convs_0324_only = [
        [U("content with calls"), AT([w1], "Let me check."), T("22C"), A("22C.")],
        [U("content with two calls"), AT([w1, w2], "Checking both."), T("a"), T("b")],
    ]
    # The V3 template needs content None for tool-call turns; V3-0324 also accepts content.
    return convs, convs_0324_only


def write_chats(path):
    from transformers import AutoTokenizer as AT

    hf = AT.from_pretrained(TOKDIR)
    t_v3 = hf.chat_template
    with open(os.path.join(TOKDIR, "chat_template.v3-0324.jinja"), encoding="utf-8") as f:
        t_0324 = f.read()
    convs, only0324 = chats()
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for name, tmpl, cs in (("v3", t_v3, convs), ("v3-0324", t_0324, convs + only0324)):
            for msgs in cs:
                for agp in (False, True):
                    r = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=agp,
                                               chat_template=tmpl)
                    rec = {"template": name, "messages": msgs, "add_generation_prompt": agp, "rendered": r}
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    n += 1
    print(f"wrote {path}: {n} chats")


JINJA_CASES = [
    # (template, variables)
    ("a\n  {% if true %}\n    x\n  {% endif %}\nb", {}),
    ("  {%- if true -%}  y  {%- endif -%}  ", {}),
    ("{% for i in xs %}\n  {{ i }}\n{% endfor %}\n", {"xs": [1, 2, 3]}),
    ("{%+ if true %} kept{% endif +%}\nnext", {}),
    ("  {{ 'var' }}  {# comment #}\n  tail", {}),
    ("line1\r\nline2\r\n{% if true %}\r\nz{% endif %}\n\n", {}),
    ("{{ 'a\\nb\\t\\x41\\u00e9' }}|{{ \"q'\" }}", {}),
    ("{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % -3 }} {{ 2 ** 10 }} {{ 7 / 2 }} {{ 1.0 }} {{ 1e20 }} {{ 0.1 + 0.2 }} {{ 1e-5 }}", {}),
    ("{{ none }} {{ true }} {{ [1, 'a', none, 2.5] }} {{ {'k': 'v'} }} {{ undefined_var }}|", {}),
    ("{% for x in xs %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.length }}/{{ loop.first }}/{{ loop.last }}/{{ loop.revindex }};{% endfor %}", {"xs": ["a", "b", "c"]}),
    ("{% for x in xs if x > 1 %}{{ x }}{% else %}empty{% endfor %}|{% for x in [] %}{% else %}none{% endfor %}", {"xs": [1, 2, 3]}),
    ("{% for x in xs %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}", {"xs": [1, 2, 3, 4, 5]}),
    ("{% set ns = namespace(n=0, s='') %}{% for x in xs %}{% set ns.n = ns.n + x %}{% set ns.s = ns.s ~ x %}{% endfor %}{{ ns.n }} {{ ns.s }}", {"xs": [1, 2, 3]}),
    ("{% set a = 1 %}{% for x in xs %}{% set a = x %}{% endfor %}{{ a }}", {"xs": [5, 6]}),
    ("{{ m['role'] }} {{ m.content }} {{ m.missing is defined }} {{ m['content'] is none }} {{ m.x is not none }}", {"m": {"role": "user", "content": None}}),
    ("{{ xs[0] }} {{ xs[-1] }} {{ xs[1:] }} {{ xs[::-1] }} {{ 'héllo'[1:3] }} {{ xs | length }} {{ 'abc' | length }}", {"xs": [1, 2, 3]}),
    ("{{ 'a' in 'cat' }} {{ 2 in xs }} {{ 'k' in d }} {{ 5 not in xs }} {{ 1 < 2 < 3 }} {{ 'b' > 'a' }} {{ 1 == 1.0 }}", {"xs": [1, 2], "d": {"k": 1}}),
    ("{{ x | tojson }} {{ x | tojson(indent=2) }} {{ 'é\"' | tojson }}", {"x": {"a": [1, 2.5, None, True], "b": "\u00e9"}}),
    ("{{ ' pad ' | trim }}|{{ 'AbC' | upper }}|{{ 'AbC' | lower }}|{{ xs | join(', ') }}|{{ xs | first }}|{{ xs | last }}|{{ u | default('dflt') }}", {"xs": [1, 2, 3]}),
    ("{{ '  s  '.strip() }}|{{ 'a,b'.split(',') }}|{{ 'abc'.startswith('ab') }}|{{ d.get('k') }}|{{ d.get('z', 'no') }}|{% for k, v in d.items() %}{{ k }}={{ v }}{% endfor %}", {"d": {"k": 1}}),
    ("{{ 'yes' if x else 'no' }} {{ x and 'a' or 'b' }} {{ not x }} {{ (1, 2) }}", {"x": 0}),
    ("{% if x is string %}s{% elif x is number %}n{% else %}o{% endif %}{{ 3 is odd }}{{ 4 is even }}{{ x is integer }}", {"x": 3}),
    ("{% generation %}gen{% endgeneration %}", {}),
]


def write_jinja_cases(path):
    from transformers.utils.chat_template_utils import _compile_jinja_template

    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for tmpl, variables in JINJA_CASES:
            r = _compile_jinja_template(tmpl).render(**variables)
            f.write(json.dumps({"template": tmpl, "vars": variables, "rendered": r}, ensure_ascii=False) + "\n")
    print(f"wrote {path}: {len(JINJA_CASES)} jinja cases")


# Added-token flags are all false in this tokenizer.json except `normalized`;
# to pin HF's lstrip / rstrip / single_word handling, some flags are switched on
# in a modified copy (the C++ test applies the same FLAG_EDITS).
FLAG_EDITS = {128803: {"lstrip": True, "rstrip": True}, 128804: {"single_word": True}, 128805: {"lstrip": True}}
FLAG_TEXTS = ["a  <｜User｜>  b", "x<｜User｜>y", "\u3000\t<｜User｜>\n\nz", "<｜User｜><｜User｜>", "  <｜User｜>",
              "word<｜Assistant｜>", "word <｜Assistant｜> x", "<｜Assistant｜>", "é<｜Assistant｜>", "_<｜Assistant｜>",
              "1<｜Assistant｜>", " <｜Assistant｜>!", "ab  <|EOT|>  cd", "<|EOT|> <|EOT|>", "中<｜Assistant｜>",
              "<｜User｜>  <|EOT|>"]


def write_flags(path):
    with open(os.path.join(TOKDIR, "tokenizer.json"), encoding="utf-8") as f:
        d = json.load(f)
    for a in d["added_tokens"]:
        a.update(FLAG_EDITS.get(a["id"], {}))
    tk = Tokenizer.from_str(json.dumps(d))
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps({"edits": {str(k): v for k, v in FLAG_EDITS.items()}}) + "\n")
        for t in FLAG_TEXTS:
            f.write(json.dumps({"text": t, "ids": tk.encode(t, add_special_tokens=False).ids}, ensure_ascii=False) + "\n")
    print(f"wrote {path}: {len(FLAG_TEXTS)} texts")


def main():
    if unicodedata.unidata_version != "14.0.0":
        sys.exit(f"need Python with Unicode 14.0.0 data (Python 3.11), have {unicodedata.unidata_version}")
    os.makedirs(OUTDIR, exist_ok=True)
    tk = Tokenizer.from_file(os.path.join(TOKDIR, "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(TOKDIR)
    write_corpus(os.path.join(OUTDIR, "corpus.jsonl"), make_corpus(1234, 700), tk, hf)
    write_corpus(os.path.join(OUTDIR, "heldout.jsonl"), make_corpus(98765, 400), tk, hf)
    write_chats(os.path.join(OUTDIR, "chats.jsonl"))
    write_jinja_cases(os.path.join(OUTDIR, "jinja_cases.jsonl"))
    write_flags(os.path.join(OUTDIR, "added_token_flags.jsonl"))


if __name__ == "__main__":
    main()
