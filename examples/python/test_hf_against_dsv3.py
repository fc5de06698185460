"""Checking HF transformers' DeepseekV3ForCausalLM against dsv3, as an engine's own test suite would.

Run by hand in the golden environment (torch + transformers):

    bash scripts/venv.sh golden
    .venv/golden/bin/python -c "import dsv3; dsv3.make_model('build/tiny-f32', 'tiny', 'f32', seed=5)"
    .venv/golden/bin/python -m pytest examples/python --dsv3-model build/tiny-f32 -v

The `dsv3_reference` fixture comes from dsv3's pytest plugin (installed with the package); the engine
under test is HF transformers loaded from the same directory. The tiny preset has
original_max_position_embeddings = 32, so a 48-token prompt runs YaRN past it: a missing YaRN scale
shows up here as logits drifting after position 32.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from dsv3.testing import assert_logits_close  # noqa: E402

IDS = [0] + [int(i) for i in np.random.default_rng(0).integers(1, 512, 47)]


@pytest.fixture(scope="module")
def hf_model(dsv3_reference):
    torch.set_num_threads(1)
    m = transformers.DeepseekV3ForCausalLM.from_pretrained(
        dsv3_reference.path, dtype=torch.float32, attn_implementation="eager")
    return m.eval()


def hf_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].numpy()


def test_prefill_logits(hf_model, dsv3_reference):
    # f32 against f32: the two differ only in summation order (about 5e-6 on these models)
    assert_logits_close(hf_logits(hf_model, IDS), dsv3_reference.forward(IDS), metric="max_abs", tol=1e-4)


def test_decode_with_cache(hf_model, dsv3_reference):
    P = 20
    cache = dsv3_reference.new_cache()
    ref = [dsv3_reference.forward(IDS[:P], cache, all_logits=False)]
    ref += [dsv3_reference.forward([t], cache) for t in IDS[P:]]
    hf_cache = transformers.DynamicCache()
    got = []
    with torch.no_grad():
        out = hf_model(input_ids=torch.tensor([IDS[:P]]), cache=hf_cache, use_cache=True)
        got.append(out.logits[0, -1:].numpy())
        for t in IDS[P:]:
            out = hf_model(input_ids=torch.tensor([[t]]), cache=hf_cache, use_cache=True)
            got.append(out.logits[0, -1:].numpy())
    # KL between two f32 runs of the same model is ~1e-12 nats; 1e-8 still catches a stale or misplaced cache row
    assert_logits_close(np.concatenate(got), np.concatenate(ref), metric="kl", tol=1e-8, start=P - 1)


def test_greedy_tokens(hf_model, dsv3_reference):
    with torch.no_grad():
        hf = hf_model.generate(torch.tensor([IDS[:16]]), max_new_tokens=12, do_sample=False)[0, 16:].tolist()
    ours = dsv3_reference.generate(IDS[:16], max_new_tokens=12)  # stops after EOS, as HF does (HF pads after it)
    assert ours == hf[: len(ours)]
