"""dsv3.testing's assertions, and the pytest plugin as an engine's own test suite would use it."""
import numpy as np
import pytest

from dsv3.testing import assert_logits_close, assert_routing_equal, logits_metric
from conftest import GOLDEN


def logits(n=6, V=50, seed=0):
    return np.random.default_rng(seed).standard_normal((n, V)).astype(np.float32)


@pytest.mark.parametrize("metric", ["max_abs", "calc_diff", "kl", "top_n"])
def test_identical_logits_pass_every_metric(metric):
    x = logits()
    assert_logits_close(x, x.copy(), metric=metric)
    assert_logits_close(x[None], x, metric=metric)  # [1, n, V] from a batched engine


def test_failure_names_the_first_position_and_tokens():
    ref = logits()
    act = ref.copy()
    act[3, 7] += 1e-2
    act[4] += 0  # unchanged
    act[5, 1] -= 1.0
    with pytest.raises(AssertionError) as e:
        assert_logits_close(act, ref, metric="max_abs", tol=1e-4, start=100)
    msg = str(e.value)
    assert "position 103 (row 3)" in msg and "2 of 6 positions" in msg and "worst max_abs 1.000e+00 at position 105" in msg
    assert f"reference top token {int(np.argmax(ref[3]))}" in msg


def test_kl_and_calc_diff_see_a_shifted_distribution():
    ref = logits(seed=1)
    act = ref.copy()
    act[2] *= 1.5  # sharper distribution at one position
    assert logits_metric(act, ref, "kl")[2] > 1e-3 and logits_metric(act, ref, "kl")[0] == 0
    with pytest.raises(AssertionError, match="position 2"):
        assert_logits_close(act, ref, metric="kl")
    assert_logits_close(ref + 3.0, ref, metric="kl")  # softmax ignores a shift of the whole row
    assert logits_metric(act, ref, "calc_diff")[2] > 0


def test_top_n_and_non_finite():
    ref = logits(seed=2)
    act = ref.copy()
    act[1] = -ref[1]  # the reference's best token is now the worst
    with pytest.raises(AssertionError, match="position 1 .*top 5"):
        assert_logits_close(act, ref, metric="top_n", tol=5)
    act = ref.copy()
    act[4, 0] = np.nan
    with pytest.raises(AssertionError, match="not finite at position 4"):
        assert_logits_close(act, ref, metric="kl")
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_logits_close(ref[:2], ref)
    with pytest.raises(ValueError, match="metric"):
        assert_logits_close(ref, ref, metric="mse")


def test_routing_sets_not_order():
    ref = {1: (np.array([[3, 1, 4], [1, 5, 9]]), np.array([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]]))}
    act = {1: (np.array([[1, 4, 3], [9, 5, 1]]), np.array([[0.3, 0.2, 0.5], [0.1, 0.3, 0.6]]))}
    assert_routing_equal(act, ref, weights_atol=1e-9)
    act[1][0][1] = [9, 5, 2]
    with pytest.raises(AssertionError, match=r"layer 1, position 1: reference experts \[1, 5, 9\], actual \[2, 5, 9\]"):
        assert_routing_equal(act, ref)
    with pytest.raises(AssertionError, match="routed layers differ"):
        assert_routing_equal({2: ref[1][0]}, ref)


ENGINE_TEST = '''
import json, pathlib
import numpy as np
import dsv3
from dsv3.testing import assert_logits_close, assert_routing_equal

CASE = pathlib.Path(r"{case}")

def engine_forward(ids):
    # the "engine": HF transformers' logits for these ids, as committed in the golden
    return np.load(CASE / "logits.npy")[: len(ids)] + {offset}

def test_engine_logits(dsv3_reference):
    ids = json.loads((CASE / "meta.json").read_text())["ids"]
    assert_logits_close(engine_forward(ids), dsv3_reference.forward(ids), metric="max_abs", tol=1e-4)

def test_engine_routing(dsv3_reference):
    ids = json.loads((CASE / "meta.json").read_text())["ids"]
    dsv3_reference.forward(ids)
    topk = np.load(CASE / "routing_topk.npy")
    assert_routing_equal({{1 + i: topk[i] for i in range(len(topk))}}, dsv3_reference.routing())
'''


def test_plugin_fixture_in_an_engine_suite(pytester):
    case = GOLDEN / "model" / "a-f32"
    pytester.makepyfile(test_engine=ENGINE_TEST.format(case=case, offset=0.0))
    r = pytester.runpytest_subprocess("--dsv3-model", str(case), "-p", "no:cacheprovider")
    r.assert_outcomes(passed=2)
    r.stdout.fnmatch_lines([f"dsv3 *: reference model {case}"])


def test_plugin_fails_a_drifting_engine(pytester):
    case = GOLDEN / "model" / "a-f32"
    pytester.makepyfile(test_engine=ENGINE_TEST.format(case=case, offset=1e-3))
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--dsv3-model={case}")
    r.assert_outcomes(passed=1, failed=1)
    r.stdout.fnmatch_lines(["*logits differ first at position 0 (row 0): max_abs = 1.00?e-03 > tol 1.000e-04*"])


def test_plugin_without_a_model_skips_visibly(pytester, monkeypatch):
    monkeypatch.delenv("DSV3_MODEL", raising=False)
    pytester.makepyfile(test_engine=ENGINE_TEST.format(case=GOLDEN / "model" / "a-f32", offset=0.0))
    r = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    r.assert_outcomes(skipped=2)
    r.stdout.fnmatch_lines(["*no model given (pass --dsv3-model DIR or set DSV3_MODEL)*"])


def test_plugin_takes_the_model_from_the_environment(pytester, monkeypatch):
    case = GOLDEN / "model" / "a-f32"
    monkeypatch.setenv("DSV3_MODEL", str(case))
    monkeypatch.setenv("DSV3_THREADS", "1")
    pytester.makepyfile(test_engine=ENGINE_TEST.format(case=case, offset=0.0))
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    r.assert_outcomes(passed=2)
