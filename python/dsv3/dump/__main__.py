"""python -m dsv3.dump hf|mlx ARGS: dump a trace from HF transformers or mlx-lm (see dsv3.dump)."""
import importlib
import sys

USAGE = """usage: python -m dsv3.dump {hf,mlx} --model DIR --ids 0,1,2 --out FILE.safetensors [--names GLOBS] ...

  hf    HF transformers' DeepseekV3ForCausalLM (needs torch + transformers: pip install .[golden])
  mlx   mlx-lm's deepseek_v3 (needs mlx + mlx-lm: pip install .[mlx])

`python -m dsv3.dump hf --help` lists an engine's options."""


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    engine, rest = argv[0], argv[1:]
    engines = {"hf": ("hf_dump", "golden"), "mlx": ("mlx_dump", "mlx")}
    if engine not in engines:
        print(f"dsv3.dump: unknown engine {engine!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module, group = engines[engine]
    try:
        mod = importlib.import_module(f"dsv3.dump.{module}")
    except ImportError as e:
        print(f"dsv3.dump {engine}: {e} (install the engine: pip install '.[{group}]' or bash scripts/venv.sh {group})",
              file=sys.stderr)
        return 2
    return mod.main(rest, prog=f"python -m dsv3.dump {engine}")


if __name__ == "__main__":
    sys.exit(main())
