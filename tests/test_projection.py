"""Projection of the editor's pseudo-inputs off unrelated inputs' directions (editing/projection.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mend_jax.editing import EditorConfig, EditorSpec, capture_factors, compute_edits, mend_editor
from mend_jax.editing.batch import encode_examples
from mend_jax.editing.projection import (input_second_moments, project_inputs, projection_bases,
                                         scaled_step_sizes, whiten_inputs, whitening_maps)
from mend_jax.errors import MendJaxError

PROMPTS = ["nq question: who wrote the origin of species", "The mother tongue of Danielle Darrieux is",
           "nq question: when did the titanic sink", "Toko Yasuda, the"]
ANSWERS = ["Charles Darwin", "French", "1912", "guitar"]


def test_input_second_moments_equal_those_of_the_captured_inputs(tiny_lm):
    layers = tiny_lm.family.default_edit_layers(tiny_lm.config, n_blocks=2)
    got = input_second_moments(tiny_lm, layers, PROMPTS, ANSWERS, batch_size=3)  # a padded last batch
    b = jax.tree.map(jnp.asarray, encode_examples(tiny_lm.tokenizer, PROMPTS, ANSWERS, max_length=128))
    _, f = capture_factors(tiny_lm.params, tiny_lm.config, b, layers)
    m = np.asarray(b.attention_mask, np.float64)
    for n in layers:
        u = np.asarray(f.u[n], np.float64).reshape(-1, f.u[n].shape[-1]) * m.reshape(-1, 1)
        np.testing.assert_allclose(got[n], u.T @ u / m.sum(), rtol=2e-4, atol=1e-6)


def test_a_projected_edit_leaves_inputs_in_the_removed_directions_alone(tiny_lm):
    """For every edited layer, ``x Delta W = 0`` for x in the span of the removed directions, the pseudo-inputs are
    the plain editor's minus their component in that span, and ``delta~`` is untouched."""
    cfg = tiny_lm.config
    fam = tiny_lm.family
    layers = fam.default_edit_layers(cfg, n_blocks=2)
    spec = EditorSpec.from_model(fam.linear_layers(cfg), layers)
    editor = mend_editor(spec, EditorConfig(rank=8))
    params, state = editor.init(jax.random.key(0))
    keys = iter(jax.random.split(jax.random.key(1), 64))
    params = {**params, "nets": jax.tree.map(lambda x: x + 0.2 * jax.random.normal(next(keys), x.shape),
                                             params["nets"])}
    batch = jax.tree.map(jnp.asarray, encode_examples(tiny_lm.tokenizer, PROMPTS[:2], ANSWERS[:2], max_length=128))
    _, f = capture_factors(tiny_lm.params, cfg, batch, layers)
    rows = {n: f.u[n].reshape(-1, f.u[n].shape[-1]) for n in layers}
    drows = {n: f.delta[n].reshape(-1, f.delta[n].shape[-1]) for n in layers}
    state = editor.update_state(state, rows, drows, {n: f.mask[n].reshape(-1) for n in layers})
    bases = projection_bases(input_second_moments(tiny_lm, layers, PROMPTS, ANSWERS), rank=3)
    plain = compute_edits(editor, params, state, f)
    proj = compute_edits(project_inputs(editor, bases), params, state, f)
    for n in layers:
        u = np.asarray(bases[n], np.float64)
        np.testing.assert_allclose(u.T @ u, np.eye(3), atol=1e-5)
        a = np.asarray(plain[n].a, np.float64)
        np.testing.assert_allclose(np.asarray(proj[n].a), a - (a @ u) @ u.T, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(proj[n].b), np.asarray(plain[n].b), rtol=1e-6)
        moved_plain = np.abs(u.T @ np.asarray(plain[n].dense(), np.float64)).max()
        moved_proj = np.abs(u.T @ np.asarray(proj[n].dense(), np.float64)).max()
        assert moved_plain > 1e-3 and moved_proj < 1e-5 * max(1.0, moved_plain), (n, moved_plain, moved_proj)


def test_projection_and_scale_errors_name_the_problem(tiny_lm):
    layers = tiny_lm.family.default_edit_layers(tiny_lm.config, n_blocks=1)
    spec = EditorSpec.from_model(tiny_lm.family.linear_layers(tiny_lm.config), layers)
    editor = mend_editor(spec, EditorConfig(rank=4))
    moments = input_second_moments(tiny_lm, layers, PROMPTS, ANSWERS)
    with pytest.raises(MendJaxError, match="rank must be >= 1"):
        projection_bases(moments, 0)
    with pytest.raises(MendJaxError, match="exceeds the input size"):
        projection_bases(moments, 10_000)
    with pytest.raises(MendJaxError, match="does not edit"):
        project_inputs(editor, {"model.layers.0.mlp.up_proj": jnp.zeros((32, 2))})
    with pytest.raises(MendJaxError, match="input size"):
        project_inputs(editor, {layers[0]: jnp.zeros((7, 2))})
    with pytest.raises(MendJaxError, match="one answer per unrelated prompt"):
        input_second_moments(tiny_lm, layers, PROMPTS, ANSWERS[:2])
    params, _ = editor.init(jax.random.key(0))
    np.testing.assert_allclose(scaled_step_sizes(params, 2.0)["edit_lrs"], params["edit_lrs"] * 2.0)
    with pytest.raises(MendJaxError, match="edit_scale must be > 0"):
        scaled_step_sizes(params, 0.0)
    # per-layer factors by fnmatch pattern over the edited layers (the tiny editor's gate, up and down of block 0)
    scaled = scaled_step_sizes(params, 2.0, layers=spec.layers,
                               layer_scales={"*.down_proj": 0.0, "*.up_proj": 0.5, "*.*_proj": 3.0})
    factor = np.array([{"down_proj": 0.0, "up_proj": 1.5}.get(n.rsplit(".", 1)[1], 3.0) for n in spec.layers])
    np.testing.assert_allclose(scaled["edit_lrs"], params["edit_lrs"] * 2.0 * factor, rtol=1e-6)
    with pytest.raises(MendJaxError, match="matches none of the edited layers"):
        scaled_step_sizes(params, layers=spec.layers, layer_scales={"model.layers.9.*": 0.0})
    with pytest.raises(MendJaxError, match="finite and >= 0"):
        scaled_step_sizes(params, layers=spec.layers, layer_scales={"*": -1.0})
    with pytest.raises(MendJaxError, match="leave no layer edited"):
        scaled_step_sizes(params, layers=spec.layers, layer_scales={"*": 0.0})
    with pytest.raises(MendJaxError, match="layers=editor.spec.layers"):
        scaled_step_sizes(params, layer_scales={"*": 0.5})


def test_whitening_goes_from_the_identity_to_rome_and_moves_unrelated_inputs_less(tiny_lm):
    """``whitening_maps``: strength 0 is the identity, a large strength tends to ``m C^-1``; for a fixed change on
    the edit's own input, a whitened rank-1 edit moves unrelated inputs (mean square under ``C``) less, and at
    ROME's limit least of all; ``whiten_inputs`` multiplies the editor's pseudo-inputs by the map, nothing else."""
    rng = np.random.default_rng(0)
    d = 12
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    lam = np.geomspace(50.0, 0.01, d)  # a few dominant directions, as in real MLP inputs
    c = (q * lam) @ q.T
    maps = {w: np.asarray(whitening_maps({"l": c}, w)["l"], np.float64) for w in (0.0, 1.0, 8.0, 1e7)}
    np.testing.assert_allclose(maps[0.0], np.eye(d), atol=1e-5)
    np.testing.assert_allclose(maps[1.0], maps[1.0].T, atol=1e-5)
    m = np.median(lam)
    np.testing.assert_allclose(maps[1e7], m * np.linalg.inv(c), rtol=1e-3, atol=1e-4)

    def interference(ut, u):  # E_x[(x . u~)^2] per unit change (u . u~)^2 on the edit input
        return (ut @ c @ ut) / (u @ ut) ** 2

    for _ in range(5):
        u = rng.normal(size=d) * np.sqrt(lam[::-1])  # an edit input that leans on the rare directions
        plain, mid, strong, rome = (interference(u @ maps[w], u) for w in (0.0, 1.0, 8.0, 1e7))
        assert rome <= strong <= mid <= plain and rome < 0.5 * plain, (plain, mid, strong, rome)

    layers = tiny_lm.family.default_edit_layers(tiny_lm.config, n_blocks=1)
    spec = EditorSpec.from_model(tiny_lm.family.linear_layers(tiny_lm.config), layers)
    editor = mend_editor(spec, EditorConfig(rank=4))
    params, state = editor.init(jax.random.key(0))
    moments = input_second_moments(tiny_lm, layers, PROMPTS, ANSWERS)
    wmaps = whitening_maps(moments, 4.0)
    batch = jax.tree.map(jnp.asarray, encode_examples(tiny_lm.tokenizer, PROMPTS[:2], ANSWERS[:2], max_length=128))
    _, f = capture_factors(tiny_lm.params, tiny_lm.config, batch, layers)
    plain = compute_edits(editor, params, state, f)
    white = compute_edits(whiten_inputs(editor, wmaps), params, state, f)
    for n in layers:
        np.testing.assert_allclose(np.asarray(white[n].a), np.asarray(plain[n].a) @ np.asarray(wmaps[n]),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(white[n].b), np.asarray(plain[n].b), rtol=1e-6)
    with pytest.raises(MendJaxError, match="whitening strength must be >= 0"):
        whitening_maps(moments, -1.0)
    with pytest.raises(MendJaxError, match="median eigenvalue 0"):
        whitening_maps({"l": np.diag([1.0, 0.0, 0.0])}, 1.0)
    with pytest.raises(MendJaxError, match="whitening maps of .* input size"):
        whiten_inputs(editor, {layers[0]: jnp.zeros((7, 7))})


def test_eval_with_the_projection_measures_training_inputs_once_and_reports_its_settings(tiny_lm, tmp_path):
    """``mend-jax eval --project-out R --edit-scale S`` on a trained (tiny) editor: the directions come from the
    editor's *training* records, are cached in the editor folder, and the results file records the settings."""
    import dataclasses
    import json

    from mend_jax.cli import main
    from mend_jax.training.loop import train
    from test_training import _tiny_cfg
    out = tmp_path / "run"
    train(dataclasses.replace(_tiny_cfg(out, 2), model=str(tiny_lm.folder)), model=tiny_lm, progress=False)
    args = ["eval", "--editor", str(out), "--which", "latest", "--model", str(tiny_lm.folder), "--data", "demo",
            "--records", "100:104", "--no-finetune", "--project-out", "2", "--projection-inputs", "6",
            "--edit-scale", "2"]
    assert main(args + ["--json", str(tmp_path / "a.json")]) == 0
    cached = sorted((out / "projections").glob("moments_*.npz"))
    assert len(cached) == 1
    first = cached[0].stat().st_mtime_ns
    assert main(args + ["--json", str(tmp_path / "b.json")]) == 0  # the second run reads the cache
    assert cached[0].stat().st_mtime_ns == first
    a, b = (json.loads((tmp_path / f"{x}.json").read_text()) for x in "ab")
    assert (a["project_out"], a["projection_inputs"], a["edit_scale"], a["whiten"]) == (2, 6, 2.0, 0.0)
    assert a["mend"] == b["mend"]
    assert main(args + ["--whiten", "4", "--json", str(tmp_path / "w.json")]) == 0  # the same cached moments
    assert sorted((out / "projections").glob("moments_*.npz")) == cached
    assert json.loads((tmp_path / "w.json").read_text())["whiten"] == 4.0
    from mend_jax.cli import build_parser
    from mend_jax.commands import _load, _transformed_editor, layer_scales
    parsed = build_parser().parse_args(args + ["--whiten", "4", "--json", "unused.json"])
    loaded = _load(parsed, parsed.editor)
    editor, params = _transformed_editor(parsed, *loaded[:3], loaded[4])
    assert editor.name.endswith("+projection+whitening")
    np.testing.assert_allclose(params["edit_lrs"], loaded[2]["edit_lrs"] * 2.0)
    assert editor.factor_positions == "all"  # as trained, unless --factor-positions says otherwise
    parsed = build_parser().parse_args(args + ["--factor-positions", "target", "--json", "unused.json"])
    assert _transformed_editor(parsed, *loaded[:3], loaded[4])[0].factor_positions == "target"
    down = [i for i, n in enumerate(editor.spec.layers) if n.endswith("down_proj")]
    parsed = build_parser().parse_args(args + ["--layer-scale", "*.down_proj=0", "--json", "unused.json"])
    lrs = np.asarray(_transformed_editor(parsed, *loaded[:3], loaded[4])[1]["edit_lrs"])
    assert down and not lrs[down].any() and np.all(lrs[[i for i in range(len(lrs)) if i not in down]] != 0)
    assert main(args + ["--layer-scale", "*.down_proj=0", "--edit-max-rank", "1",
                        "--json", str(tmp_path / "l.json")]) == 0
    res = json.loads((tmp_path / "l.json").read_text())
    assert (res["layer_scales"], res["edit_max_rank"]) == ({"*.down_proj": 0.0}, 1)
    with pytest.raises(MendJaxError, match="write PATTERN=S"):
        layer_scales(["*.down_proj"])
    assert main(args + ["--layer-scale", "*.down_proj", "--json", str(tmp_path / "x.json")]) == 2
    plain = tmp_path / "plain.json"
    assert main(args[:-6] + ["--json", str(plain)]) == 0
    res = json.loads(plain.read_text())
    assert (res["project_out"], res["trained_project_out"], res["factor_positions"]) == (0, 0, "all")


def test_training_with_the_projection_saves_its_bases_and_every_loader_applies_them(tiny_lm, tmp_path):
    """``mend-jax train --project-out R --whiten W``: the bases and whitening maps are measured once on training
    inputs and written beside the checkpoints; a resumed run reads them back; ``load_editor`` (and so eval/edit)
    and ``save_editor``'s folder give the projected and whitened editor, whose edits leave the removed directions
    alone; a folder without its files is refused with the fix."""
    import dataclasses

    from mend_jax.checkpoints import load_editor, save_editor
    from mend_jax.editing.projection import BASES_FILE, WHITEN_FILE
    from mend_jax.training.loop import train
    from test_training import _tiny_cfg
    out = tmp_path / "run"
    cfg = dataclasses.replace(_tiny_cfg(out, 2), project_out=2, projection_inputs=6, whiten=4.0)
    summary = train(cfg, model=tiny_lm, progress=False)
    assert summary["projection_minutes"] > 0
    bases_file, maps_file = out / BASES_FILE, out / WHITEN_FILE
    stamps = bases_file.stat().st_mtime_ns, maps_file.stat().st_mtime_ns
    train(dataclasses.replace(cfg, steps=3), model=tiny_lm, progress=False)  # resumes: reads both back
    assert (bases_file.stat().st_mtime_ns, maps_file.stat().st_mtime_ns) == stamps
    editor, params, stats, meta = load_editor(out, tiny_lm, which="latest")
    assert meta["step"] == 3 and editor.name.endswith("+projection+whitening")
    data, maps = np.load(bases_file), np.load(maps_file)
    layers = editor.spec.layers
    batch = jax.tree.map(jnp.asarray, encode_examples(tiny_lm.tokenizer, PROMPTS[:2], ANSWERS[:2], max_length=128))
    _, f = capture_factors(tiny_lm.params, tiny_lm.config, batch, layers)
    edits = compute_edits(editor, params, stats, f)
    projected_only = compute_edits(project_inputs(mend_editor(editor.spec, editor.config),
                                                  {n: data[n] for n in layers}), params, stats, f)
    for n in layers:
        u = np.asarray(data[n], np.float64)
        assert u.shape[1] == 2
        dense = np.asarray(edits[n].dense(), np.float64)
        assert np.abs(dense).max() > 0 and np.abs(u.T @ dense).max() < 1e-5 * np.abs(dense).max()
        np.testing.assert_allclose(np.asarray(edits[n].a), np.asarray(projected_only[n].a) @ maps[n],
                                   rtol=1e-4, atol=1e-6)
    saved = save_editor(out, tmp_path / "saved", tiny_lm, which="latest")
    assert (saved / BASES_FILE).is_file() and (saved / WHITEN_FILE).is_file()
    assert load_editor(saved, tiny_lm)[0].name.endswith("+projection+whitening")
    (saved / WHITEN_FILE).unlink()
    with pytest.raises(MendJaxError, match=f"trained with --whiten 4 but not its {WHITEN_FILE}"):
        load_editor(saved, tiny_lm)
    (saved / BASES_FILE).unlink()
    with pytest.raises(MendJaxError, match=f"trained with --project-out 2 but not its {BASES_FILE}"):
        load_editor(saved, tiny_lm)
    with pytest.raises(MendJaxError, match="--project-out must be >= 0"):
        dataclasses.replace(cfg, project_out=-1)
    with pytest.raises(MendJaxError, match="--whiten must be >= 0"):
        dataclasses.replace(cfg, whiten=-1.0)
