"""Bad input gets one clear error naming the problem (and the CLI prints it without a traceback)."""
import json
import shutil
import subprocess
import sys

import pytest

from conftest import GOLDEN
from mend_jax.errors import InputTooLongError, ModelNotFoundError, UnsupportedModelError, WeightFileError
from mend_jax.weights import load_model


def test_unknown_model_name():
    with pytest.raises(ModelNotFoundError, match="unknown model 'no-such-model'.*smollm2-135m"):
        load_model("no-such-model")


def test_cli_prints_one_line_without_traceback():
    r = subprocess.run([sys.executable, "-m", "mend_jax.cli", "generate", "--model", "no-such-model", "--prompt", "x"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("mend-jax: error: unknown model")
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_and_corrupt_weight_files(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(GOLDEN / "tiny_llama", folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFileError, match="truncated or corrupt"):
        load_model(str(folder), progress=False, with_tokenizer=False)
    (folder / "model.safetensors").unlink()
    with pytest.raises(WeightFileError, match="no model.safetensors"):
        load_model(str(folder), progress=False, with_tokenizer=False)


def test_missing_tensor_and_wrong_shape(tmp_path):
    from safetensors.numpy import load_file, save_file
    folder = tmp_path / "m"
    shutil.copytree(GOLDEN / "tiny_llama", folder)
    state = load_file(str(folder / "model.safetensors"))
    state.pop("model.layers.1.mlp.up_proj.weight")
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(WeightFileError, match="model.layers.1.mlp.up_proj.weight"):
        load_model(str(folder), progress=False, with_tokenizer=False)
    cfg = json.loads((folder / "config.json").read_text())
    shutil.copy(GOLDEN / "tiny_llama" / "model.safetensors", folder / "model.safetensors")
    cfg["intermediate_size"] = 100
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightFileError, match="do not match config.json"):
        load_model(str(folder), progress=False, with_tokenizer=False)


def test_unsupported_architecture(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(UnsupportedModelError, match="model_type 'bert'.*supported model types: gpt2, llama"):
        load_model(str(folder), progress=False, with_tokenizer=False)


def test_corrupt_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(WeightFileError, match="not a readable GGUF"):
        load_model(str(bad), progress=False)


def test_offline_hub_id_says_what_to_do(monkeypatch):
    import huggingface_hub
    def offline(*a, **k):
        raise OSError("no network")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelNotFoundError, match="pass its local path"):
        load_model("someorg/some-model")


@pytest.mark.smollm2
def test_prompt_longer_than_the_context(tiny_lm):
    from mend_jax.inference import greedy_generate
    with pytest.raises(InputTooLongError, match="exceeds the model's context of 128"):
        greedy_generate(tiny_lm, "word " * 200, 3)
