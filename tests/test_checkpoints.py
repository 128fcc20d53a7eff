"""Editor checkpoints: round trip, no base weights inside, refusal of another base model, SIGKILL + resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from mend_jax.checkpoints import EditorCheckpoints, check_fingerprint, load_editor, model_fingerprint
from mend_jax.editing import EditorConfig, EditorSpec, mend_editor
from mend_jax.errors import CheckpointError
from mend_jax.training.step import init_train_state, make_optimizer

pytestmark = pytest.mark.smollm2
ROOT = Path(__file__).resolve().parents[1]


def small_editor(model):
    fam = model.family
    spec = EditorSpec.from_model(fam.linear_layers(model.config), fam.default_edit_layers(model.config, 2))
    return mend_editor(spec, EditorConfig(rank=8))


def test_round_trip_and_size(tiny_lm, tmp_path):
    editor = small_editor(tiny_lm)
    tx = make_optimizer(1e-3, 1e-3, 1.0)
    ts = init_train_state(editor, tx, jax.random.key(3))
    ts["params"] = jax.tree.map(lambda x: x + 0.5, ts["params"])
    ck = EditorCheckpoints(tmp_path / "ck")
    meta = {"step": 7, "fingerprint": model_fingerprint(tiny_lm, editor.spec.layers)}
    ck.save(7, ts, meta, best=True)
    ck.wait()
    abstract = jax.eval_shape(lambda: init_train_state(editor, tx, jax.random.key(0)))
    back, meta2 = ck.restore(abstract)
    ck.close()
    for a, b in zip(jax.tree.leaves(ts["params"]), jax.tree.leaves(back["params"])):
        np.testing.assert_array_equal(a, b)
    assert meta2["step"] == 7
    # the base model is not in there: the folder is about the size of the editor (+ Adam state), far below the model
    size = sum(p.stat().st_size for p in (tmp_path / "ck" / "latest").rglob("*") if p.is_file())
    editor_bytes = sum(x.size * 4 for x in jax.tree.leaves(ts["params"]))
    model_bytes = sum(x.size * 4 for x in jax.tree.leaves(tiny_lm.params))
    assert size < 3 * editor_bytes + 200_000
    assert size < model_bytes / 3


def test_another_base_model_is_refused_naming_the_field(tiny_lm):
    layers = tiny_lm.family.default_edit_layers(tiny_lm.config, 2)
    fp = model_fingerprint(tiny_lm, layers)
    other = dict(fp, edited_layers=list(reversed(layers)))
    with pytest.raises(CheckpointError, match="edited_layers"):
        check_fingerprint(fp, other, "here")
    with pytest.raises(CheckpointError, match="edited_weights_sha256"):
        check_fingerprint(fp, dict(fp, edited_weights_sha256="0" * 64), "here")


def test_not_a_checkpoint_folder(tiny_lm, tmp_path):
    with pytest.raises(CheckpointError, match="not an editor folder"):
        load_editor(tmp_path, tiny_lm)


def _train_cmd(model_dir, out):
    return [sys.executable, "-m", "mend_jax.cli", "train", "--model", str(model_dir), "--data", "demo",
            "--out", str(out), "--steps", "10", "--edits-per-step", "2", "--rank", "8", "--edit-blocks", "2",
            "--seq-len", "16", "--target-len", "4", "--loc-len", "16", "--val-every", "5", "--val-size", "4",
            "--ckpt-every", "1", "--lr", "1e-3", "--edit-lr-init", "1e-3"]


def _final_params(model, out):
    editor, params, stats, meta = load_editor(out, model, which="latest")
    return meta["step"], params, stats


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_lm, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    a, b = tmp_path / "a", tmp_path / "b"
    subprocess.run(_train_cmd(tiny_lm.folder, a), check=True, env=env, capture_output=True, timeout=600)
    proc = subprocess.Popen(_train_cmd(tiny_lm.folder, b), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log = b / "log.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline:
        if log.is_file() and len(log.read_text().splitlines()) >= 6:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(log.read_text().splitlines())
    assert 6 <= killed_at < 10, "the run must be killed halfway"
    res = subprocess.run(_train_cmd(tiny_lm.folder, b), check=True, env=env, capture_output=True, text=True,
                         timeout=600)
    assert "resumed from step" in res.stdout
    step_a, pa, sa = _final_params(tiny_lm, a)
    step_b, pb, sb = _final_params(tiny_lm, b)
    assert step_a == step_b == 10
    for x, y in zip(jax.tree.leaves((pa, sa)), jax.tree.leaves((pb, sb))):
        np.testing.assert_array_equal(x, y)  # bitwise, on CPU
    rows = [json.loads(r)["step"] for r in log.read_text().splitlines()]
    assert rows == list(range(1, 11))  # the log has no duplicate or missing step


def test_editor_only_save_is_smaller_and_loads_to_the_same_editor(tiny_lm, tmp_path):
    """``mend-jax save-editor``: parameters + statistics + metadata (no Adam moments, no base weights) in a new
    folder that ``load_editor`` reads back to the same arrays; refuses to overwrite an existing editor."""
    from mend_jax.checkpoints import folder_bytes, save_editor
    editor = small_editor(tiny_lm)
    tx = make_optimizer(1e-3, 1e-3, 1.0)
    ts = init_train_state(editor, tx, jax.random.key(3))
    ts["params"] = jax.tree.map(lambda x: x + 0.25, ts["params"])
    ck = EditorCheckpoints(tmp_path / "run" / "checkpoints")
    meta = {"step": 5, "fingerprint": model_fingerprint(tiny_lm, editor.spec.layers),
            "editor_layers": list(editor.spec.layers), "editor_config": editor.config.__dict__,
            "config": {"model": "tiny", "lr": 1e-3, "lr_lr": 1e-3, "grad_clip": 1.0}}
    ck.save(5, ts, meta, best=True)
    ck.close()
    out = save_editor(tmp_path / "run", tmp_path / "small", tiny_lm)
    _, params, stats, meta2 = load_editor(out, tiny_lm)
    for a, b in zip(jax.tree.leaves((ts["params"], ts["stats"])), jax.tree.leaves((params, stats))):
        np.testing.assert_array_equal(a, b)
    assert meta2["editor_only"] and meta2["step"] == 5
    assert load_editor(out, tiny_lm, which="latest")[3]["step"] == 5  # one copy serves both
    full = folder_bytes(tmp_path / "run" / "checkpoints" / "best")
    small = folder_bytes(tmp_path / "small" / "checkpoints" / "best")
    assert small < 0.6 * full
    before = folder_bytes(out)
    with pytest.raises(CheckpointError, match="already holds an editor"):
        save_editor(tmp_path / "run", out, tiny_lm)
    assert folder_bytes(out) == before  # nothing damaged


def test_truncated_checkpoint_is_refused_and_left_alone(tiny_lm, tmp_path):
    """A step whose array files were cut short (a copy interrupted outside Orbax) fails with CheckpointError,
    not a crash or garbage; the folder is not modified."""
    editor = small_editor(tiny_lm)
    tx = make_optimizer(1e-3, 1e-3, 1.0)
    ts = init_train_state(editor, tx, jax.random.key(3))
    ck = EditorCheckpoints(tmp_path / "ck", async_save=False)
    ck.save(1, ts, {"step": 1})
    ck.close()
    files = [p for p in (tmp_path / "ck" / "latest" / "1" / "params").rglob("*") if p.is_file()
             and p.stat().st_size > 1000]
    assert files
    for p in files:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    snapshot = {p: p.stat().st_size for p in (tmp_path / "ck").rglob("*") if p.is_file()}
    ck = EditorCheckpoints(tmp_path / "ck", async_save=False)
    with pytest.raises(CheckpointError):
        ck.restore(jax.eval_shape(lambda: init_train_state(editor, tx, jax.random.key(0))))
    ck.close()
    assert snapshot == {p: p.stat().st_size for p in (tmp_path / "ck").rglob("*") if p.is_file()}
