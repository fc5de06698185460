#!/usr/bin/env bash
# The Python side of the README's test command: builds the package from this
# checkout into .venv/test (pip install ".[test,mlx]": nanobind, scikit-build-core,
# numpy and pytest from PyPI; never torch) and runs python/tests, which hold
# the binding to the CLI in build/ (DSV3_CLI overrides) and to the goldens.
# The [mlx] group (mlx[cpu], mlx-lm; no torch) is installed too: the live
# dsv3.verify tests start mlx_lm.server.
# Extra arguments go to pytest. Skips are listed (-rs), never hidden.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
dir=.venv/test
if ! "$PY" -c "import venv, ensurepip" 2>/dev/null; then
  bash scripts/deps.sh python3-venv python3-dev
fi
[ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
# build requirements first, then the package without isolation, so that
# build/python-test keeps the compiled extension between runs
"$dir/bin/pip" install -q --disable-pip-version-check "scikit-build-core>=0.10" "nanobind>=2.4"
"$dir/bin/pip" install -q --disable-pip-version-check --no-build-isolation ".[test,mlx]" -Cbuild-dir=build/python-test
export DSV3_CLI=${DSV3_CLI:-$PWD/build/dsv3}
cd python/tests  # import the installed package, not the source tree
"../../$dir/bin/python" -m pytest -q -rs -p no:cacheprovider "$@"
