"""Our LLaMA / GPT-2 against transformers (golden files written by tests/golden/make_golden.py under torch)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import GOLDEN
from mend_jax.editing.losses import masked_nll
from mend_jax.models import get_module, replace_module
from mend_jax.weights import load_model

TINY = ["tiny_llama", "tiny_llama_bias_tied", "tiny_gpt2"]
GRAD_LAYERS = {"tiny_llama": ["model.layers.2.mlp.down_proj", "model.layers.2.mlp.up_proj",
                              "model.layers.1.mlp.gate_proj"],
               "tiny_llama_bias_tied": ["model.layers.2.mlp.down_proj", "model.layers.2.mlp.up_proj",
                                        "model.layers.1.mlp.gate_proj"],
               "tiny_gpt2": ["transformer.h.2.mlp.c_fc", "transformer.h.2.mlp.c_proj", "transformer.h.1.mlp.c_fc"]}


@pytest.mark.parametrize("name", TINY)
def test_tiny_logits_and_mlp_gradients_match_transformers(name):
    model = load_model(str(GOLDEN / name), progress=False, with_tokenizer=False)
    gold = np.load(GOLDEN / f"{name}.npz")
    ids, mask = jnp.asarray(gold["input_ids"]), jnp.asarray(gold["attention_mask"])
    fam = model.family
    logits = fam.forward(model.params, model.config, ids, mask)
    valid = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(logits)[valid], gold["logits"][valid], atol=1e-3, rtol=0)
    assert np.abs(gold["logits"]).max() > 2  # a meaningful comparison, not near-zero logits

    # next-token NLL over valid targets == transformers' causal LM loss, and its MLP gradients
    b, t = ids.shape
    tpos = jnp.tile(jnp.arange(t - 1)[None], (b, 1))
    tids = ids[:, 1:]
    tmask = (mask[:, 1:] > 0).astype(jnp.float32)
    layers = GRAD_LAYERS[name]

    def loss_fn(kernels):
        p = model.params
        for n in layers:
            p = replace_module(p, n, {**get_module(p, n), "kernel": kernels[n]})
        return masked_nll(fam.forward(p, model.config, ids, mask, logits_at=tpos), tids, tmask)

    kernels = {n: get_module(model.params, n)["kernel"] for n in layers}
    loss, grads = jax.value_and_grad(loss_fn)(kernels)
    np.testing.assert_allclose(float(loss), float(gold["loss"]), rtol=1e-5)
    for n in layers:
        ref = gold[f"grad/{n}.weight"]
        ours = np.asarray(grads[n])
        if model.config.family == "llama":
            ours = ours.T  # our kernels are [in, out]; nn.Linear stores [out, in]
        np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


@pytest.mark.smollm2
def test_smollm2_tokenizer_matches_transformers(smollm2):
    gold = json.loads((GOLDEN / "smollm2.json").read_text())
    for s in gold["strings"]:
        assert smollm2.tokenizer(s["text"])["input_ids"] == s["ids"], s["text"]
        assert smollm2.tokenizer.decode(s["ids"]) == s["decoded"]


@pytest.mark.smollm2
def test_smollm2_wikitext_tokens_match_transformers(smollm2):
    """The CLI's perplexity tokens are transformers' tokens (so its ppl is comparable to the golden value)."""
    from conftest import SHARED_DATA
    path = SHARED_DATA / "wikitext" / "wiki.test.raw"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    text = path.read_bytes().decode("utf-8")
    ids = smollm2.tokenizer(text[:60000])["input_ids"][:4096]
    np.testing.assert_array_equal(ids, np.load(GOLDEN / "smollm2.npz")["wikitext_ids"])


@pytest.mark.smollm2
def test_smollm2_digits_are_split(smollm2):
    # SmolLM2's own tokenizer.json (and llama.cpp's "smollm" pre-tokenizer) split digits off before the GPT-2
    # regex; transformers' GGUF converter does not (it only matters for whitespace right before a digit).
    ids = smollm2.tokenizer("a\r\n 1")["input_ids"]
    pieces = [smollm2.tokenizer.decode([i]) for i in ids]
    assert pieces[-1] == "1" and pieces[-2].endswith(" ")


@pytest.mark.smollm2
def test_smollm2_logits_match_transformers(smollm2):
    gold = json.loads((GOLDEN / "smollm2.json").read_text())
    arr = np.load(GOLDEN / "smollm2.npz")
    sub = arr["vocab_subset"]
    fam = smollm2.family
    for p in gold["prompts"]:
        i = p["index"]
        ids = jnp.asarray([p["ids"]], jnp.int32)
        logits = np.asarray(fam.forward(smollm2.params, smollm2.config, ids))[0]
        np.testing.assert_allclose(logits[-1], arr[f"logits_last/{i}"], atol=1e-3, rtol=0)
        np.testing.assert_allclose(logits[:, sub], arr[f"logits_sub/{i}"], atol=1e-3, rtol=0)
        np.testing.assert_array_equal(logits.argmax(-1), arr[f"argmax/{i}"])


@pytest.mark.smollm2
def test_smollm2_greedy_generation_matches_transformers(smollm2):
    from mend_jax.inference import greedy_generate
    gold = json.loads((GOLDEN / "smollm2.json").read_text())["generation"]
    assert greedy_generate(smollm2, gold["prompt"], gold["max_new_tokens"]) == gold["continuation"]


@pytest.mark.smollm2
def test_smollm2_perplexity_on_transformers_tokens(smollm2):
    from mend_jax.inference import perplexity
    gold = json.loads((GOLDEN / "smollm2.json").read_text())["perplexity"]
    ids = np.load(GOLDEN / "smollm2.npz")["wikitext_ids"]
    res = perplexity(smollm2, ids, window=gold["window"])
    assert res["predicted"] == gold["predicted_tokens"]
    assert abs(res["ppl"] / gold["ppl"] - 1) < 1e-3
