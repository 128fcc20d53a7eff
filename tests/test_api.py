"""Edit journal, exact revert, export -> reload, on a tiny random model with SmolLM2's tokenizer."""
import dataclasses

import jax
import numpy as np
import pytest

from mend_jax.api import EditSession
from mend_jax.editing import EditorSpec, apply_edits, identity_editor
from mend_jax.errors import CheckpointError, InvalidEditError
from mend_jax.models import get_module
from mend_jax.weights import load_model

pytestmark = pytest.mark.smollm2


def session_for(model, lr=0.5, edit_steps=1):
    fam = model.family
    spec = EditorSpec.from_model(fam.linear_layers(model.config), fam.default_edit_layers(model.config, 2))
    editor = identity_editor(spec, edit_lr=lr)
    params, stats = editor.init(jax.random.key(0))
    return EditSession(model, editor, params, stats, editor_id="identity", edit_steps=edit_steps)


def kernels(params, layers):
    return {n: np.asarray(get_module(params, n)["kernel"]) for n in layers}


def test_edit_revert_is_exact(tiny_lm):
    s = session_for(tiny_lm)
    layers = s.editor.spec.layers
    base = kernels(s.base_params, layers)
    r1 = s.edit(["The capital of France is"], ["Rome"])
    after1 = kernels(s.params, layers)
    assert any(not np.array_equal(after1[n], base[n]) for n in layers)
    r2 = s.edit(["Water boils at"], ["fifty degrees"])
    s.revert(r1.id)
    expected = kernels(apply_edits(tiny_lm.params, r2.edits), layers)
    for n in layers:
        np.testing.assert_array_equal(kernels(s.params, layers)[n], expected[n])
    s.revert(r2.id)
    for n in layers:
        np.testing.assert_array_equal(kernels(s.params, layers)[n], base[n])
    with pytest.raises(InvalidEditError, match="no edit"):
        s.revert("nope")


def test_journal_round_trip_rebuilds_the_same_weights(tiny_lm, tmp_path):
    s = session_for(tiny_lm)
    s.edit(["The capital of France is"], ["Rome"])
    s.edit(["Water boils at", "The sky is"], ["fifty degrees", "green"])  # 2 at once
    s.journal_to(tmp_path / "journal")
    files = sorted(p.name for p in (tmp_path / "journal").iterdir())
    assert "journal.json" in files and len(files) == 3
    size = sum(p.stat().st_size for p in (tmp_path / "journal").iterdir())
    param_bytes = sum(x.size * 4 for x in jax.tree.leaves(tiny_lm.params))
    assert size < param_bytes / 10  # factors, not weight copies
    s2 = session_for(tiny_lm)
    s2.load_journal(tmp_path / "journal")
    layers = s.editor.spec.layers
    for n in layers:
        np.testing.assert_array_equal(kernels(s2.params, layers)[n], kernels(s.params, layers)[n])


def test_journal_of_another_model_is_refused(tiny_lm, tmp_path):
    s = session_for(tiny_lm)
    s.edit(["The capital of France is"], ["Rome"])
    s.journal_to(tmp_path / "j")
    other = dataclasses.replace(tiny_lm, params=jax.tree.map(lambda x: x * 1.01, tiny_lm.params))
    with pytest.raises(CheckpointError, match="edited_weights_sha256"):
        session_for(other).load_journal(tmp_path / "j")


def test_export_reload_gives_identical_logits(tiny_lm, tmp_path):
    s = session_for(tiny_lm)
    s.edit(["The capital of France is"], ["Rome"])
    folder = s.export(tmp_path / "edited")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    back = load_model(str(folder), progress=False)
    ids = np.asarray(tiny_lm.tokenizer(["The capital of France is a"])["input_ids"], np.int32)
    fam = tiny_lm.family
    np.testing.assert_array_equal(fam.forward(back.params, back.config, ids), fam.forward(s.params, tiny_lm.config, ids))
    assert back.tokenizer("The capital")["input_ids"] == tiny_lm.tokenizer("The capital")["input_ids"]


@pytest.mark.parametrize("prompt,target,match", [("The sky is", "   ", "empty target"),
                                                  ("", "blue", "empty prompt"),
                                                  ("word " * 200, "blue", "context")])
def test_bad_edits_are_refused_with_a_clear_message(tiny_lm, prompt, target, match):
    s = session_for(tiny_lm)
    with pytest.raises(Exception, match=match):
        s.edit([prompt], [target])
    assert s.journal == []


def test_journal_remove_then_replay_equals_the_other_edits(tiny_lm, tmp_path):
    from mend_jax.api import journal_remove
    s = session_for(tiny_lm)
    r1 = s.edit(["The capital of France is"], ["Rome"])
    r2 = s.edit(["Water boils at"], ["fifty degrees"])
    s.journal_to(tmp_path / "j")
    journal_remove(tmp_path / "j", r1.id)
    s2 = session_for(tiny_lm)
    s2.load_journal(tmp_path / "j")
    s.revert(r1.id)
    assert [r.id for r in s2.journal] == [r2.id]
    layers = s.editor.spec.layers
    for n in layers:
        np.testing.assert_array_equal(kernels(s2.params, layers)[n], kernels(s.params, layers)[n])
    with pytest.raises(InvalidEditError):
        journal_remove(tmp_path / "j", r1.id)


def test_an_edit_of_two_editor_steps_is_journaled_whole_and_reverts_exactly(tiny_lm):
    """``edit_steps=2``: the session's edit is the first step's rows plus the second's (taken at the weights the
    first left), stored and applied as one journal entry; reverting it restores the base weights bit for bit."""
    one, two = session_for(tiny_lm, lr=0.05), session_for(tiny_lm, lr=0.05, edit_steps=2)
    layers = one.editor.spec.layers
    base = kernels(two.base_params, layers)
    r1 = one.edit(["The capital of France is"], ["Rome"])
    r2 = two.edit(["The capital of France is"], ["Rome"])
    for n in layers:
        assert r2.edits[n].a.shape[0] == 2 * r1.edits[n].a.shape[0]  # both steps' rows
        np.testing.assert_allclose(r2.edits[n].a[:r1.edits[n].a.shape[0]], r1.edits[n].a, rtol=1e-6)
    np.testing.assert_array_equal(kernels(two.params, layers)[layers[0]],
                                  kernels(apply_edits(tiny_lm.params, r2.edits), layers)[layers[0]])
    two.revert(r2.id)
    for n in layers:
        np.testing.assert_array_equal(kernels(two.params, layers)[n], base[n])
    with pytest.raises(InvalidEditError, match="edit_steps must be >= 1"):
        session_for(tiny_lm, edit_steps=0)
