"""pytest plugin (registered as the ``dsv3`` entry point of ``pytest11``): dsv3 as a reference fixture.

    pytest --dsv3-model /path/to/checkpoint          # or DSV3_MODEL=/path/to/checkpoint pytest

    def test_my_engine_matches(dsv3_reference):
        ids = [0, 23, 221, 422]
        ref = dsv3_reference.forward(ids)
        dsv3.testing.assert_logits_close(my_engine(ids), ref, metric="kl", tol=1e-4)

``dsv3_reference`` is one ``dsv3.Model`` for the whole session (weights mapped once). Without a model
path the tests that use it are reported as SKIPPED with the reason, never as passed.
Options: ``--dsv3-model DIR`` (env ``DSV3_MODEL``), ``--dsv3-threads N`` (env ``DSV3_THREADS``),
``--dsv3-variants JSON`` (env ``DSV3_VARIANTS``: a JSON object of variant knobs, docs/variants.md).
"""
import json
import os

import pytest


def pytest_addoption(parser):
    g = parser.getgroup("dsv3", "dsv3 reference model")
    g.addoption("--dsv3-model", default=None, help="checkpoint directory for the dsv3_reference fixture (env DSV3_MODEL)")
    g.addoption("--dsv3-threads", type=int, default=None, help="threads for dsv3_reference (env DSV3_THREADS)")
    g.addoption("--dsv3-variants", default=None,
                help="variant knobs for dsv3_reference as a JSON object, e.g. '{\"group_mask_fill\": \"0\"}' (env DSV3_VARIANTS)")


def _option(config, name, env):
    v = config.getoption(name)
    return v if v is not None else os.environ.get(env)


def pytest_report_header(config):
    path = _option(config, "--dsv3-model", "DSV3_MODEL")
    import dsv3
    return f"dsv3 {dsv3.__version__}: reference model {path or '(none: dsv3_reference tests will be skipped)'}"


@pytest.fixture(scope="session")
def dsv3_reference(request):
    """The dsv3 reference model (dsv3.Model) named by --dsv3-model / DSV3_MODEL, shared by the session."""
    import dsv3
    path = _option(request.config, "--dsv3-model", "DSV3_MODEL")
    if not path:
        pytest.skip("dsv3_reference: no model given (pass --dsv3-model DIR or set DSV3_MODEL)")
    threads = _option(request.config, "--dsv3-threads", "DSV3_THREADS")
    variants = _option(request.config, "--dsv3-variants", "DSV3_VARIANTS")
    try:
        v = json.loads(variants) if variants else None
    except json.JSONDecodeError as e:
        raise pytest.UsageError(f"--dsv3-variants / DSV3_VARIANTS: not valid JSON: {e}") from None
    return dsv3.Model(path, threads=int(threads) if threads else None, variants=v)


@pytest.fixture(scope="session")
def dsv3_tokenizer(request):
    """The tokenizer of the dsv3_reference checkpoint (dsv3.Tokenizer), when it has tokenizer.json."""
    import dsv3
    path = _option(request.config, "--dsv3-model", "DSV3_MODEL")
    if not path:
        pytest.skip("dsv3_tokenizer: no model given (pass --dsv3-model DIR or set DSV3_MODEL)")
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        pytest.skip(f"dsv3_tokenizer: {path} has no tokenizer.json")
    return dsv3.Tokenizer(path)
