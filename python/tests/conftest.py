"""Shared fixtures of dsv3's own pytest suite (python/tests): the committed goldens and the CLI."""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"

pytest_plugins = ["pytester"]


def golden_ids(case_dir):
    meta = json.loads((case_dir / "meta.json").read_text())
    return [int(i) for i in meta["ids"]]


@pytest.fixture(scope="session")
def cli():
    """The dsv3 CLI the binding is held to (bash tests/run.sh builds it; DSV3_CLI overrides)."""
    path = Path(os.environ.get("DSV3_CLI", ROOT / "build" / "dsv3"))
    if not path.is_file():
        pytest.fail(f"{path}: the dsv3 CLI is not built (run bash tests/run.sh first, or set DSV3_CLI)")

    def run(*args, check=True):
        r = subprocess.run([str(path), *map(str, args)], capture_output=True, text=True)
        if check and r.returncode != 0:
            raise AssertionError(f"dsv3 {' '.join(map(str, args))} failed ({r.returncode}): {r.stderr}")
        return r

    return run


def cli_logits(cli, tmp_path, model, ids, *extra):
    out = tmp_path / "cli.npy"
    cli("forward", "--model", model, "--ids", ",".join(map(str, ids)), "--out", out, *extra)
    return np.load(out)
