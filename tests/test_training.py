"""The meta-training step and the evaluation on a tiny random model with SmolLM2's tokenizer."""
import json

import jax
import numpy as np
import pytest

from mend_jax.data import load_records
from mend_jax.editing import EditorConfig, EditorSpec, capture_factors, identity_editor, mend_editor
from mend_jax.evaluation import FineTuneConfig, evaluate
from mend_jax.training.batches import DataOrder, Shapes, filter_records, training_batch
from mend_jax.training.step import StepHParams, init_train_state, make_eval_step, make_optimizer, make_train_step

pytestmark = pytest.mark.smollm2
SHAPES = Shapes(16, 4, 16)


def setup(model):
    fam = model.family
    spec = EditorSpec.from_model(fam.linear_layers(model.config), fam.default_edit_layers(model.config, 2))
    editor = mend_editor(spec, EditorConfig(rank=8, edit_lr_init=1e-3))
    records = filter_records(model.tokenizer, list(load_records("demo", records="0:40")), SHAPES, train=True)
    return editor, records


def test_train_step_updates_editor_statistics_and_never_recompiles(tiny_lm):
    editor, records = setup(tiny_lm)
    tx = make_optimizer(1e-3, 1e-4, 100.0)
    step = make_train_step(editor, tiny_lm.config, tx, StepHParams())
    ts = init_train_state(editor, tx, jax.random.key(0))
    up0 = np.asarray(ts["params"]["nets"]["32x48"]["joint"][0]["up"]).copy()
    order = DataOrder(len(records), seed=0)
    counts = []
    for s in range(3):
        batch = training_batch(tiny_lm.tokenizer, records, order, s, 2, SHAPES, 128)
        ts, metrics = step(ts, tiny_lm.params, batch)
        counts.append(float(ts["stats"]["32x48"]["u"]["count"]))
        assert all(np.isfinite(float(v)) for v in metrics.values())
    assert counts[0] > 0 and counts[0] < counts[1] < counts[2]  # statistics accumulate over training edits
    assert int(ts["step"]) == 3
    assert np.abs(np.asarray(ts["params"]["nets"]["32x48"]["joint"][0]["up"]) - up0).max() > 0  # it learns
    assert step._cache_size() == 1  # fixed shapes: one compilation for all steps


def test_validation_is_deterministic_and_does_not_touch_statistics(tiny_lm):
    editor, records = setup(tiny_lm)
    tx = make_optimizer(1e-3, 1e-4, 100.0)
    ts = init_train_state(editor, tx, jax.random.key(0))
    step = make_train_step(editor, tiny_lm.config, tx, donate=False)
    batch = training_batch(tiny_lm.tokenizer, records, DataOrder(len(records), 0), 0, 2, SHAPES, 128)
    ts, _ = step(ts, tiny_lm.params, batch)
    ev = make_eval_step(editor, tiny_lm.config)
    a = ev(ts["params"], ts["stats"], tiny_lm.params, batch)
    b = ev(ts["params"], ts["stats"], tiny_lm.params, batch)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert a[k].shape == (2,)


def test_data_order_is_a_function_of_seed_and_step(tiny_lm):
    _, records = setup(tiny_lm)
    o1, o2 = DataOrder(len(records), 3), DataOrder(len(records), 3)
    assert [o1.record(g) for g in range(100)] == [o2.record(g) for g in reversed(range(100))][::-1]
    assert sorted(o1.record(g) for g in range(len(records))) == list(range(len(records)))  # an epoch is a permutation


def test_evaluation_reports_every_method(tiny_lm):
    fam = tiny_lm.family
    spec = EditorSpec.from_model(fam.linear_layers(tiny_lm.config), fam.default_edit_layers(tiny_lm.config, 2))
    editor = identity_editor(spec, edit_lr=1.0)
    params, stats = editor.init(jax.random.key(0))
    records = list(load_records("demo", records="100:104"))
    res = evaluate(tiny_lm, records, editor=editor, eparams=params, stats=stats, edits_at_once=2,
                   finetune_cfg=FineTuneConfig(1e-2, 2), progress=False, per_record=True)
    assert res["n_records"] == 4 and res["edits_at_once"] == 2
    rows = res["per_record"]
    assert rows["index"] == [r.index for r in records]
    for m in ("unedited", "mend", "finetune"):  # the aggregates are the means of the per-record values
        for k, values in rows[m].items():
            assert len(values) == 4 and res[m][k] == pytest.approx(np.mean(values), abs=1e-12), (m, k)
    assert res["unedited"]["locality_token"] == 1.0 and res["unedited"]["drawdown_token"] == 0.0
    for m in ("mend", "finetune"):
        for k in ("reliability_token", "reliability_exact", "generalization_token", "locality_token",
                  "locality_whole", "drawdown_token"):
            assert 0.0 <= res[m][k] <= 1.0 or k.startswith("drawdown")
    # a large gradient step moves the targets up on the tiny model
    assert res["finetune"]["reliability_token"] >= res["unedited"]["reliability_token"]


def test_fine_tuning_baseline_on_chosen_layers(tiny_lm):
    """``evaluate(layers=...)`` without an editor fine-tunes the named matrices: the default layers named explicitly
    give the default's numbers exactly, the first block's MLP other numbers (its edit passes through every later
    block); unknown names, and layers other than an editor's, are errors that say what to pass."""
    from mend_jax.errors import MendJaxError
    fam, cfg = tiny_lm.family, tiny_lm.config
    records = list(load_records("demo", records="100:104"))
    ft = FineTuneConfig(1e-2, 2)
    default = evaluate(tiny_lm, records, finetune_cfg=ft, progress=False, per_record=True)
    named = evaluate(tiny_lm, records, finetune_cfg=ft, progress=False, per_record=True,
                     layers=fam.default_edit_layers(cfg))
    assert named["per_record"]["finetune"] == default["per_record"]["finetune"]
    first = tuple(n for n in fam.linear_layers(cfg) if n.startswith("model.layers.0.mlp."))
    assert first and not set(first) & set(fam.default_edit_layers(cfg))
    low = evaluate(tiny_lm, records, finetune_cfg=ft, progress=False, per_record=True, layers=first)
    assert low["edited_layers"] == list(first)
    assert low["per_record"]["unedited"] == default["per_record"]["unedited"]
    assert low["per_record"]["finetune"] != default["per_record"]["finetune"]
    assert low["finetune"]["reliability_token"] >= low["unedited"]["reliability_token"]
    with pytest.raises(MendJaxError, match="linear layers of the model"):
        evaluate(tiny_lm, records, finetune_cfg=ft, progress=False, layers=("model.layers.0.mlp.nope",))
    spec = EditorSpec.from_model(fam.linear_layers(cfg), fam.default_edit_layers(cfg, 2))
    editor = identity_editor(spec, edit_lr=1.0)
    params, stats = editor.init(jax.random.key(0))
    with pytest.raises(MendJaxError, match="layers it was trained for"):
        evaluate(tiny_lm, records, editor=editor, eparams=params, stats=stats, progress=False, layers=first)


def test_training_locality_modes(tiny_lm):
    from mend_jax.training.batches import own_loc_fits, problem_for
    _, records = setup(tiny_lm)
    ok = own_loc_fits(tiny_lm.tokenizer, records, SHAPES)
    assert ok
    i = sorted(ok)[0]
    own = problem_for(records, i, np.random.default_rng(0), train=True, train_loc="own", own_loc_ok=ok)
    assert (own.loc_prompt, own.loc_answer) == (records[i].loc_prompt, records[i].loc_answer)
    other = problem_for(records, i, np.random.default_rng(0), train=True, train_loc="other", own_loc_ok=ok)
    assert other.loc_prompt != records[i].prompt
    mixed = {problem_for(records, i, np.random.default_rng(s), train=True, train_loc="mix", own_loc_ok=ok).loc_prompt
             == records[i].loc_prompt for s in range(40)}
    assert mixed == {True, False}
    with pytest.raises(ValueError, match="train_loc"):
        problem_for(records, i, np.random.default_rng(0), train=True, train_loc="bogus")


def _tiny_cfg(out, steps, mesh=None):
    from mend_jax.training.config import TrainConfig
    return TrainConfig(model="tiny", data=("demo",), train_records="0:40", dev_data="demo", dev_records="100:108",
                       rank=8, edit_blocks=2, steps=steps, edits_per_step=8, lr=1e-3, lr_lr=1e-4, edit_lr_init=1e-3,
                       seq_len=16, target_len=4, loc_len=16, val_every=100, val_size=8, ckpt_every=1, out=str(out),
                       mesh=mesh)


def test_training_on_a_mesh_matches_one_device_and_resumes_onto_another_mesh(tiny_lm, tmp_path):
    """``mend-jax train --mesh``: a run on a 2x2x2 mesh of (fake) devices, checkpointed and resumed on a 1x4x2
    mesh (Orbax restores straight into the new shardings), ends where the one-device run does. Tolerance 1e-4
    relative for the statistics (sharded reductions sum in another order, f32). The editor parameters get the same
    check on 98% of their elements; the rest may differ by up to 2 * lr per step, because Adam turns a gradient at
    rounding level into a full +-lr step whose sign the summation order decides."""
    from mend_jax.checkpoints import load_editor
    from mend_jax.training.loop import train
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices")
    train(_tiny_cfg(tmp_path / "one", 4), model=tiny_lm, progress=False)
    train(_tiny_cfg(tmp_path / "moved", 2, mesh="2,2,2"), model=tiny_lm, progress=False)
    summary = train(_tiny_cfg(tmp_path / "moved", 4, mesh="1,4,2"), model=tiny_lm, progress=False)
    assert summary["steps"] == 4
    _, ref, ref_stats, _ = load_editor(tmp_path / "one", tiny_lm, which="latest")
    _, p, st, meta = load_editor(tmp_path / "moved", tiny_lm, which="latest")
    assert meta["step"] == 4
    for a, b in zip(jax.tree.leaves(ref_stats), jax.tree.leaves(st)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(ref)])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(p)])
    close = np.isclose(b, a, rtol=1e-4, atol=1e-6)
    assert close.mean() > 0.98, f"{(~close).sum()} of {close.size} editor parameters differ"
    assert np.abs(b - a).max() <= 2 * 1e-3 * 4
    rows = [json.loads(r)["step"] for r in (tmp_path / "moved" / "log.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4]


def test_problems_of_several_edits_at_once(tiny_lm):
    """``edits_per_problem=k``: each problem applies k edits at once (one summed update) and is trained on their k
    rephrases and k locality inputs; the data order is the one-edit order read k at a time."""
    editor, records = setup(tiny_lm)
    tx = make_optimizer(1e-3, 1e-4, 100.0)
    step = make_train_step(editor, tiny_lm.config, tx, donate=False)
    ts = init_train_state(editor, tx, jax.random.key(0))
    order = DataOrder(len(records), seed=0)
    batch = training_batch(tiny_lm.tokenizer, records, order, 1, 2, SHAPES, 128, edits_per_problem=3)
    assert batch.edit.input_ids.shape == (2, 3, SHAPES.seq_len)
    single = training_batch(tiny_lm.tokenizer, records, order, 0, 12, SHAPES, 128)
    np.testing.assert_array_equal(batch.edit.input_ids.reshape(6, -1), single.edit.input_ids[6:12, 0])
    ts2, metrics = step(ts, tiny_lm.params, batch)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    # the stats saw the rows of all 2 x 3 edits
    _, f1 = jax.vmap(lambda b: capture_factors(tiny_lm.params, tiny_lm.config, b, editor.spec.layers))(batch.edit)
    name = editor.spec.layers[0]
    assert float(ts2["stats"][editor.spec.net_key(0)]["u"]["count"]) >= float(f1.mask[name].sum())


def test_step_layout_reads_the_data_order_once_whatever_the_shapes():
    """``--schedule 2x1,1x3``: steps alternate shapes and together read examples 0, 1, 2, ... exactly once."""
    from mend_jax.training.batches import step_layout
    shapes = ((2, 1), (1, 3))
    seen = []
    for s in range(6):
        n, k, start = step_layout(shapes, s)
        assert (n, k) == shapes[s % 2]
        seen += list(range(start, start + n * k))
    assert seen == list(range(len(seen)))
    assert [step_layout(((8, 1),), s)[2] for s in range(3)] == [0, 8, 16]  # one shape: the old order


def test_prompt_edit_loss_is_the_mean_of_rephrase_and_prompt_nll(tiny_lm):
    """``edit_loss_on="both"``: L_edit = (NLL on the rephrase + NLL on the edit prompt) / 2, both under the edited
    model; with the rephrase equal to the prompt the two losses coincide."""
    import dataclasses
    editor, records = setup(tiny_lm)
    tx = make_optimizer(1e-3, 1e-4, 100.0)
    ts = init_train_state(editor, tx, jax.random.key(0))
    batch = training_batch(tiny_lm.tokenizer, records, DataOrder(len(records), 0), 0, 2, SHAPES, 128)
    same = dataclasses.replace(batch, equiv=batch.edit)
    equiv_only = make_eval_step(editor, tiny_lm.config, StepHParams())
    both = make_eval_step(editor, tiny_lm.config, StepHParams(edit_on_prompt=True))
    a = equiv_only(ts["params"], ts["stats"], tiny_lm.params, same)
    b = both(ts["params"], ts["stats"], tiny_lm.params, same)
    np.testing.assert_allclose(b["loss/edit"], a["loss/edit"], rtol=1e-5)
    np.testing.assert_allclose(b["prompt_acc"], a["edit_acc"], rtol=1e-6)
    c = both(ts["params"], ts["stats"], tiny_lm.params, batch)
    p = equiv_only(ts["params"], ts["stats"], tiny_lm.params, dataclasses.replace(batch, equiv=batch.edit))
    np.testing.assert_allclose(c["loss/edit"], 0.5 * (equiv_only(ts["params"], ts["stats"], tiny_lm.params, batch)
                                                      ["loss/edit"] + p["loss/edit"]), rtol=1e-5)


def test_training_with_a_schedule_of_shapes_resumes_exactly(tiny_lm, tmp_path):
    """A run alternating 2 single edits with one 3-edit problem (and the prompt in the edit loss) compiles one step
    per shape, validates both shapes, and a run stopped after 3 steps and resumed ends where an uninterrupted one
    does."""
    import dataclasses
    from mend_jax.checkpoints import load_editor
    from mend_jax.training.loop import train
    cfg = lambda out, steps: dataclasses.replace(_tiny_cfg(out, steps), schedule="2x1,1x3", edit_loss_on="both",  # noqa
                                                 val_every=2, val_size=6)
    train(cfg(tmp_path / "whole", 5), model=tiny_lm, progress=False)
    train(cfg(tmp_path / "split", 3), model=tiny_lm, progress=False)
    train(cfg(tmp_path / "split", 5), model=tiny_lm, progress=False)
    _, a, sa, _ = load_editor(tmp_path / "whole", tiny_lm, which="latest")
    _, b, sb, _ = load_editor(tmp_path / "split", tiny_lm, which="latest")
    for x, y in zip(jax.tree.leaves((a, sa)), jax.tree.leaves((b, sb))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    rows = [json.loads(r) for r in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert [r["edits_per_problem"] for r in rows] == [1, 3, 1, 3, 1]
    assert "val_k3/loss" in rows[1] and "val/loss_all" in rows[1] and "train/prompt_acc" not in rows[1]
    assert "prompt_acc" in rows[0]


def test_batched_problems_take_their_own_locality_weight(tiny_lm, tmp_path):
    """``--c-loc-batched``: in a schedule the problems of several edits at once are trained and validated with their
    own locality weight (here 0: edit loss only), the single edits with ``--c-loc``."""
    import dataclasses
    from mend_jax.errors import MendJaxError
    from mend_jax.training.config import TrainConfig
    from mend_jax.training.loop import train
    cfg = dataclasses.replace(_tiny_cfg(tmp_path, 4), schedule="2x1,1x3", c_loc=5.0, c_loc_batched=0.0,
                              val_every=2, val_size=6)
    train(cfg, model=tiny_lm, progress=False)
    rows = [json.loads(r) for r in (tmp_path / "log.jsonl").read_text().splitlines()]
    for r in rows:
        c_loc = 5.0 if r["edits_per_problem"] == 1 else 0.0
        assert r["loss/loc"] > 0
        np.testing.assert_allclose(r["loss"], cfg.c_edit * r["loss/edit"] + c_loc * r["loss/loc"], rtol=1e-5)
    v = rows[1]
    assert v["val_k3/loss/loc"] > 0 and v["val/loss/loc"] > 0
    np.testing.assert_allclose(v["val_k3/loss"], cfg.c_edit * v["val_k3/loss/edit"], rtol=1e-5)
    np.testing.assert_allclose(v["val/loss"], cfg.c_edit * v["val/loss/edit"] + 5.0 * v["val/loss/loc"], rtol=1e-5)
    assert TrainConfig(c_loc=8.0).c_loc_for(10) == 8.0
    assert TrainConfig.from_json(dataclasses.asdict(cfg)).c_loc_for(3) == 0.0
    with pytest.raises(MendJaxError, match="c-loc-batched"):
        TrainConfig(c_loc_batched=-1.0)


def test_bad_schedule_or_edit_loss_is_refused_before_any_model_loads():
    from mend_jax.errors import MendJaxError
    from mend_jax.training.config import TrainConfig
    with pytest.raises(MendJaxError, match="PROBLEMSxEDITS"):
        TrainConfig(schedule="8x1,ten")
    with pytest.raises(MendJaxError, match="edit_loss_on"):
        TrainConfig(edit_loss_on="prompt")
    assert TrainConfig(schedule="8x1,1x10").step_shapes() == ((8, 1), (1, 10))


def test_step_on_compacted_rows_equals_the_step_on_every_position(tiny_lm):
    """``StepHParams.rows``: the editor runs once on the real rows of all problems (gathered), each problem takes
    its rows back; loss, metrics, gradients and the updated editor equal the step over every padded position. A
    budget below the batch's rows makes the step non-finite (skipped), never silently drops rows."""
    import dataclasses
    from mend_jax.editing.batch import factor_rows
    from mend_jax.training.batches import row_budget
    editor, records = setup(tiny_lm)
    tx = make_optimizer(1e-3, 1e-4, 100.0)
    ts = init_train_state(editor, tx, jax.random.key(0))
    k = 2  # 3 problems of 2 edits: rows of several examples per problem, several problems per buffer
    batch = training_batch(tiny_lm.tokenizer, records, DataOrder(len(records), 0), 0, 3, SHAPES, 128,
                           edits_per_problem=k, train_loc="own")
    need = factor_rows(batch.edit)
    padded = batch.edit.input_ids.size
    assert 0 < need < padded
    budget = row_budget(tiny_lm.tokenizer, records, 3 * k, SHAPES)
    assert need <= budget <= padded
    hp = StepHParams(edit_on_prompt=True)
    full = make_train_step(editor, tiny_lm.config, tx, hp, donate=False)
    ts_full, m_full = full(ts, tiny_lm.params, batch)
    for rows in sorted({need, budget}):
        compact = make_train_step(editor, tiny_lm.config, tx, dataclasses.replace(hp, rows=rows), donate=False)
        ts_c, m_c = compact(ts, tiny_lm.params, batch)
        for key in m_full:
            np.testing.assert_allclose(m_c[key], m_full[key], rtol=2e-4, atol=1e-6, err_msg=key)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-7),
                     ts_c["params"], ts_full["params"])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                     ts_c["stats"], ts_full["stats"])
    # the real rows are counted exactly by the factor mask (the bound is tight for these prompts)
    _, f = jax.vmap(lambda b: capture_factors(tiny_lm.params, tiny_lm.config, b, editor.spec.layers))(batch.edit)
    assert int(f.mask[editor.spec.layers[0]].sum()) <= need
    short = make_train_step(editor, tiny_lm.config, tx, dataclasses.replace(hp, rows=need - 1), donate=False)
    ts_s, m_s = short(ts, tiny_lm.params, batch)
    assert float(m_s["finite"]) == 0.0  # too small a budget: the update is skipped, loudly non-finite
    jax.tree.map(np.testing.assert_array_equal, ts_s["params"], ts["params"])


def test_a_batch_over_the_row_budget_takes_the_full_step(tiny_lm, tmp_path, monkeypatch):
    """The loop compacts the editor's rows to a budget from the data; a batch with more real rows than the budget
    must run the step over every position (finite, same loss), not a step that drops rows (non-finite, skipped)."""
    import mend_jax.training.loop as loop
    loop.train(_tiny_cfg(tmp_path / "budget", 3), model=tiny_lm, progress=False)
    monkeypatch.setattr(loop, "row_budget", lambda *a, **k: 8)  # far fewer than 8 problems' real rows
    loop.train(_tiny_cfg(tmp_path / "over", 3), model=tiny_lm, progress=False)
    logs = [[json.loads(r) for r in (tmp_path / d / "log.jsonl").read_text().splitlines()] for d in ("budget", "over")]
    assert [r["finite"] for r in logs[1]] == [1.0, 1.0, 1.0]
    for key in ("loss", "loss/edit", "loss/loc", "edit_acc"):
        np.testing.assert_allclose(logs[1][0][key], logs[0][0][key], rtol=1e-5, err_msg=key)


def test_step_on_cached_hidden_states_equals_the_step_that_runs_the_frozen_blocks(tiny_lm, tmp_path):
    """``training.frozen_cache``: the frozen blocks run once per distinct training input; a step handed those hidden
    states (``hidden=``) gives the loss, metrics and updated editor of the step that runs the frozen blocks itself,
    and so does a training run (the loop's default) against one with ``hidden_cache=False``."""
    import dataclasses
    from mend_jax.models import layer_index
    from mend_jax.training.batches import own_loc_fits
    from mend_jax.training.frozen_cache import FrozenHiddenCache, training_inputs
    from mend_jax.training.loop import train
    editor, records = setup(tiny_lm)
    first = min(layer_index(n) for n in editor.spec.layers)
    assert first > 0  # the tiny model has frozen blocks below the edited ones
    tx = make_optimizer(1e-3, 1e-4, 100.0)
    ts = init_train_state(editor, tx, jax.random.key(0))
    batch = training_batch(tiny_lm.tokenizer, records, DataOrder(len(records), 0), 0, 3, SHAPES, 128,
                           edits_per_problem=2, train_loc="mix")
    cache = FrozenHiddenCache(tiny_lm, first, chunk=4)
    own = own_loc_fits(tiny_lm.tokenizer, records, SHAPES)
    added = cache.add(training_inputs(tiny_lm.tokenizer, records, "mix", own, SHAPES.seq_len))
    assert added == len(cache) > 0 and cache.nbytes > 0
    assert cache.add(training_inputs(tiny_lm.tokenizer, records, "mix", own, SHAPES.seq_len)) == 0  # kept
    hidden = cache.for_batch(batch)
    assert cache.misses == 0  # every input a problem can hold was announced
    fam = tiny_lm.family
    ref = jax.vmap(lambda b: fam.hidden_before(tiny_lm.params, tiny_lm.config, b.input_ids, b.attention_mask,
                                               first))(batch.loc)
    real = np.asarray(batch.loc.attention_mask)[..., None]
    np.testing.assert_allclose(np.asarray(hidden.loc) * real, np.asarray(ref) * real, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(hidden.loc)[np.broadcast_to(real == 0, hidden.loc.shape)] == 0)

    step = make_train_step(editor, tiny_lm.config, tx, StepHParams(edit_on_prompt=True), donate=False)
    ts_a, m_a = step(ts, tiny_lm.params, batch)
    ts_b, m_b = step(ts, tiny_lm.params, batch, hidden)
    for key in m_a:
        np.testing.assert_allclose(m_b[key], m_a[key], rtol=1e-4, atol=1e-6, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-7), ts_b["params"], ts_a["params"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ts_b["stats"], ts_a["stats"])

    # an input nobody announced is computed on first use (and counted), with the same values
    late = FrozenHiddenCache(tiny_lm, first)
    with pytest.warns(UserWarning, match="not announced"):
        h2 = late.for_batch(batch)
    assert late.misses > 0
    np.testing.assert_allclose(np.asarray(h2.equiv), np.asarray(hidden.equiv), rtol=1e-5, atol=1e-5)

    runs = {c: train(dataclasses.replace(_tiny_cfg(tmp_path / str(c), 2), hidden_cache=c), model=tiny_lm,
                     progress=False) for c in (True, False)}
    assert runs[True]["hidden_cache_minutes"] > 0 and runs[False]["hidden_cache_minutes"] == 0
    logs = {c: [json.loads(r) for r in (tmp_path / str(c) / "log.jsonl").read_text().splitlines()] for c in runs}
    for key in ("loss", "loss/edit", "loss/loc", "edit_acc", "grad_norm"):
        np.testing.assert_allclose([r[key] for r in logs[True]], [r[key] for r in logs[False]], rtol=1e-4,
                                   err_msg=key)


def test_the_hidden_cache_is_kept_in_the_run_folder_and_read_back_on_resumption(tiny_lm, tmp_path):
    """A run with the hidden cache writes it to ``<out>/hidden_cache``; the resumed run reads it back (nothing
    recomputed) and continues exactly as an uninterrupted run; a cache of other base weights is not read."""
    import dataclasses
    from mend_jax.models import layer_index
    from mend_jax.editing.batch import TokenBatch
    from mend_jax.training.frozen_cache import FrozenHiddenCache, frozen_weights_digest
    from mend_jax.training.loop import train
    cfg = lambda out, steps: dataclasses.replace(_tiny_cfg(out, steps), hidden_cache=True)  # noqa: E731
    train(cfg(tmp_path / "once", 3), model=tiny_lm, progress=False)
    train(cfg(tmp_path / "twice", 2), model=tiny_lm, progress=False)
    folder = tmp_path / "twice" / "hidden_cache"
    stamp = (folder / "hidden.npy").stat().st_mtime_ns
    train(cfg(tmp_path / "twice", 3), model=tiny_lm, progress=False)
    assert (folder / "hidden.npy").stat().st_mtime_ns == stamp  # read back, not rebuilt
    rows = {name: [json.loads(r) for r in (tmp_path / name / "log.jsonl").read_text().splitlines()]
            for name in ("once", "twice")}
    assert [r["step"] for r in rows["twice"]] == [1, 2, 3]
    for key in ("loss", "loss/edit", "loss/loc", "grad_norm"):
        assert [r[key] for r in rows["twice"]] == [r[key] for r in rows["once"]], key

    editor, _ = setup(tiny_lm)
    first = min(layer_index(n) for n in editor.spec.layers)
    digest = frozen_weights_digest(tiny_lm, first)
    back = FrozenHiddenCache(tiny_lm, first)
    assert back.load(folder, digest) and len(back) > 0
    seq = np.frombuffer(next(iter(back._index)), np.int32)
    ref = tiny_lm.family.hidden_before(tiny_lm.params, tiny_lm.config, seq[None], np.ones((1, seq.size), np.int32),
                                       first)
    np.testing.assert_allclose(back.batch_hidden(TokenBatch(
        input_ids=seq[None], attention_mask=np.ones((1, seq.size), np.int32), target_ids=np.zeros((1, 1), np.int32),
        target_pos=np.zeros((1, 1), np.int32), target_mask=np.zeros((1, 1), np.float32)))[0],
        np.asarray(ref)[0], rtol=1e-5, atol=1e-5)
    other = dataclasses.replace(tiny_lm, params=jax.tree.map(lambda x: x * 1.01, tiny_lm.params))
    assert frozen_weights_digest(other, first) != digest
    assert not FrozenHiddenCache(other, first).load(folder, frozen_weights_digest(other, first))
    assert not FrozenHiddenCache(tiny_lm, first - 1).load(folder, frozen_weights_digest(tiny_lm, first - 1))


def test_a_moved_run_folder_resumes_and_another_configuration_is_refused(tiny_lm, tmp_path):
    """The resume check compares what the run computes, not where it lives: a run folder moved elsewhere (or
    resumed with the hidden cache switched) continues from its checkpoint; a changed learning rate is refused."""
    import dataclasses
    import shutil
    from mend_jax.errors import CheckpointError
    from mend_jax.training.loop import train
    train(_tiny_cfg(tmp_path / "a", 2), model=tiny_lm, progress=False)
    shutil.move(tmp_path / "a", tmp_path / "b")
    out = train(dataclasses.replace(_tiny_cfg(tmp_path / "b", 3), hidden_cache=True), model=tiny_lm, progress=False)
    assert out["steps"] == 3
    steps = [json.loads(r)["step"] for r in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # continued from step 2, not restarted
    with pytest.raises(CheckpointError, match="lr"):
        train(dataclasses.replace(_tiny_cfg(tmp_path / "b", 4), lr=5e-4), model=tiny_lm, progress=False)


def test_the_exponent_of_the_step_sizes_in_k_is_trained_by_batched_problems_only(tiny_lm, tmp_path):
    """``edit_lr_k_power=True`` with a schedule of single and 3-edit problems: single-edit steps leave the exponent
    at exactly 0 (k**p has no gradient in p at k = 1), the 3-edit step moves it; it is saved, resumed and loaded
    with the editor; a run without the option has no such parameter."""
    import dataclasses
    from mend_jax.checkpoints import load_editor
    from mend_jax.training.loop import train
    cfg = lambda out, steps, **kw: dataclasses.replace(_tiny_cfg(out, steps), schedule="2x1,1x3", **kw)  # noqa
    train(cfg(tmp_path / "one", 1, edit_lr_k_power=True), model=tiny_lm, progress=False)
    _, p1, _, _ = load_editor(tmp_path / "one", tiny_lm, which="latest")
    np.testing.assert_array_equal(np.asarray(p1["edit_lr_k_power"]), 0.0)
    assert not np.allclose(np.asarray(p1["edit_lrs"]), 1e-3)  # the step sizes themselves did move
    train(cfg(tmp_path / "one", 2, edit_lr_k_power=True), model=tiny_lm, progress=False)  # resumes: a 3-edit step
    editor, p2, _, meta = load_editor(tmp_path / "one", tiny_lm, which="latest")
    assert meta["step"] == 2 and editor.k_power
    assert np.all(np.abs(np.asarray(p2["edit_lr_k_power"])) > 0)
    rows = [json.loads(r) for r in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    assert rows[0]["edit_lr_k_power_mean"] == 0.0 and rows[1]["edit_lr_k_power_mean"] != 0.0
    train(cfg(tmp_path / "plain", 1), model=tiny_lm, progress=False)
    editor, p, _, _ = load_editor(tmp_path / "plain", tiny_lm, which="latest")
    assert "edit_lr_k_power" not in p and not editor.k_power


def _after_one_step(model):
    """An editor after one training step (statistics initialised) and a batch of 2 problems with own locality."""
    editor, records = setup(model)
    tx = make_optimizer(1e-3, 1e-4, 100.0)
    ts = init_train_state(editor, tx, jax.random.key(0))
    batch = training_batch(model.tokenizer, records, DataOrder(len(records), 0), 0, 2, SHAPES, 128,
                           train_loc="own")
    ts, _ = make_train_step(editor, model.config, tx, donate=False)(ts, model.params, batch)
    return editor, model.config, model.family, tx, ts, batch


def test_two_editor_steps_in_training_are_the_iterated_edit_of_evaluation(tiny_lm):
    """``StepHParams.edit_steps=2`` (``mend-jax train --edit-steps 2``): the losses of each problem are those of the
    model edited by ``iterated_mend_edits(steps=2)``, the edit that evaluation and the API apply (the second step
    on the factors at the weights the first left, materialised there, low-rank here); it trains the editor too."""
    import dataclasses
    from mend_jax.editing.edit import apply_edits, iterated_mend_edits
    from mend_jax.editing.losses import kl_pre_post, masked_nll
    editor, cfg, fam, tx, ts, batch = _after_one_step(tiny_lm)
    hp = StepHParams(edit_steps=2)
    per = make_eval_step(editor, cfg, hp)(ts["params"], ts["stats"], tiny_lm.params, batch)
    one = make_eval_step(editor, cfg)(ts["params"], ts["stats"], tiny_lm.params, batch)
    take = lambda tb, i: jax.tree.map(lambda x: x[i], tb)  # noqa: E731
    for i in range(2):
        edit, equiv, loc = take(batch.edit, i), take(batch.equiv, i), take(batch.loc, i)
        edits = iterated_mend_edits(editor, cfg, tiny_lm.params, ts["params"], ts["stats"], edit, steps=2)
        edited = apply_edits(tiny_lm.params, edits)
        logits = fam.forward(edited, cfg, equiv.input_ids, equiv.attention_mask, logits_at=equiv.target_pos)
        np.testing.assert_allclose(per["loss/edit"][i], masked_nll(logits, equiv.target_ids, equiv.target_mask),
                                   rtol=2e-4)
        pre = fam.forward(tiny_lm.params, cfg, loc.input_ids, loc.attention_mask)
        post = fam.forward(edited, cfg, loc.input_ids, loc.attention_mask)
        np.testing.assert_allclose(per["loss/loc"][i], kl_pre_post(pre, post, loc.attention_mask.astype(np.float32)),
                                   rtol=2e-3, atol=1e-7)
    assert not np.allclose(per["loss/edit"], one["loss/edit"])  # the second step changes the edit
    step2 = make_train_step(editor, cfg, tx, hp, donate=False)
    ts2, m = step2(ts, tiny_lm.params, batch)
    assert float(m["finite"]) == 1.0
    assert np.abs(np.asarray(ts2["params"]["edit_lrs"]) - np.asarray(ts["params"]["edit_lrs"])).max() > 0
    with pytest.raises(Exception, match="edit-steps"):
        from mend_jax.training.config import TrainConfig
        TrainConfig(edit_steps=0)
    assert dataclasses.replace(hp, edit_steps=1) == StepHParams()


def test_an_editor_trained_for_two_steps_is_applied_twice_by_default(tiny_lm, tmp_path):
    """``mend-jax train --edit-steps 2``: the run's config keeps it; ``mend-jax eval`` and
    ``EditSession.from_pretrained`` then apply the editor twice unless told otherwise (``--edit-steps 1``), and
    the results file says how many steps were applied (and the adaptive steps' margin, ``--edit-until-margin``,
    and the steps taken whatever the margin, ``--edit-min-steps``)."""
    import dataclasses

    from mend_jax.api import EditSession
    from mend_jax.cli import main
    from mend_jax.errors import InvalidEditError
    from mend_jax.training.loop import train
    out = tmp_path / "two"
    cfg = dataclasses.replace(_tiny_cfg(out, 2), model=str(tiny_lm.folder), edit_steps=2)
    train(cfg, model=tiny_lm, progress=False)
    log = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in log)
    args = ["eval", "--editor", str(out), "--which", "latest", "--model", str(tiny_lm.folder), "--data", "demo",
            "--records", "100:104", "--no-finetune"]
    assert main(args + ["--json", str(tmp_path / "a.json")]) == 0
    assert main(args + ["--edit-steps", "1", "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f"{x}.json").read_text()) for x in "ab")
    assert (a["edit_steps"], b["edit_steps"]) == (2, 1)
    assert a["mend"] != b["mend"]
    # adaptive steps with a margin every edit already has after the first step: the second step is skipped
    assert main(args + ["--edit-until-margin", "-1000", "--json", str(tmp_path / "c.json")]) == 0
    c = json.loads((tmp_path / "c.json").read_text())
    assert (c["edit_steps"], c["edit_until_margin"], b["edit_until_margin"]) == (2, -1000.0, None)
    assert c["mend"] == b["mend"]
    assert (a["mend"]["editor_steps"], c["mend"]["editor_steps"]) == (2.0, 1.0)
    # ... unless the first steps are taken whatever the margin (--edit-min-steps): then it is the plain 2 steps
    assert main(args + ["--edit-until-margin", "-1000", "--edit-min-steps", "2",
                        "--json", str(tmp_path / "d.json")]) == 0
    d = json.loads((tmp_path / "d.json").read_text())
    assert (d["edit_min_steps"], c["edit_min_steps"], d["mend"]["editor_steps"]) == (2, 1, 2.0)
    assert d["mend"] == a["mend"]
    assert EditSession.from_pretrained(str(out), model=str(tiny_lm.folder), which="latest").edit_steps == 2
    assert EditSession.from_pretrained(str(out), model=str(tiny_lm.folder), which="latest",
                                       edit_steps=1).edit_steps == 1
    with pytest.raises(InvalidEditError, match="edit_min_steps must be between 1 and edit_steps \\(2\\), not 3"):
        EditSession.from_pretrained(str(out), model=str(tiny_lm.folder), which="latest", edit_min_steps=3)


def test_warm_start_takes_the_chosen_checkpoint_of_the_source_run(tiny_lm, tmp_path):
    """``--init-from RUN --init-which latest|best``: a new run starts from that checkpoint's editor (parameters and
    statistics), step 0 and a fresh optimizer. The source run has best = step 2 (its last validation) and latest =
    step 3 (a time-limit stop); a warm-started run with learning rates 0 ends with the chosen checkpoint's
    parameters (its statistics go on updating in the step, so they are not compared)."""
    import dataclasses

    from mend_jax.checkpoints import checkpoints_dir, load_editor, read_meta
    from mend_jax.errors import MendJaxError
    from mend_jax.training.config import TrainConfig
    from mend_jax.training.loop import train
    src = tmp_path / "src"
    cfg = dataclasses.replace(_tiny_cfg(src, 2), model=str(tiny_lm.folder))
    train(cfg, model=tiny_lm, progress=False)
    train(dataclasses.replace(cfg, steps=5, max_minutes=1e-9), model=tiny_lm, progress=False)
    assert [read_meta(checkpoints_dir(src), w)[0] for w in ("best", "latest")] == [2, 3]
    ckpt = {w: load_editor(src, tiny_lm, w)[1] for w in ("best", "latest")}
    assert not all(np.allclose(a, b) for a, b in zip(*(jax.tree.leaves(ckpt[w]) for w in ("best", "latest"))))
    for which in ("latest", "best"):
        out = tmp_path / which
        warm = dataclasses.replace(_tiny_cfg(out, 1), model=str(tiny_lm.folder), lr=0.0, lr_lr=0.0,
                                   init_from=str(src), init_which=which)
        summary = train(warm, model=tiny_lm, progress=False)
        assert summary["steps"] == 1  # step 0 + one step: the optimizer and step count start afresh
        got = load_editor(out, tiny_lm, "latest")[1]
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, ckpt[which])
    with pytest.raises(MendJaxError, match="--init-which"):
        TrainConfig(init_which="last")


def test_warm_start_with_the_optimizer_state_and_an_editor_for_target_positions(tiny_lm, tmp_path):
    """``--init-optimizer``: the warm-started run's first step uses the source's Adam moments (so with learning rates
    0 its saved optimizer state is the source's, moved on by one step's moments); ``--factor-positions target``
    is saved with the editor and given back by every loader. A run without a source is refused with the fix."""
    import dataclasses
    from pathlib import Path

    from mend_jax.checkpoints import EditorCheckpoints, checkpoints_dir, load_editor
    from mend_jax.errors import CheckpointError, MendJaxError
    from mend_jax.training.config import TrainConfig
    from mend_jax.training.loop import train
    src = tmp_path / "src"
    cfg = dataclasses.replace(_tiny_cfg(src, 2), model=str(tiny_lm.folder))
    train(cfg, model=tiny_lm, progress=False)

    def opt_state(run):
        editor = load_editor(run, tiny_lm, "latest")[0]
        from mend_jax.training.step import init_train_state, make_optimizer
        tcfg = TrainConfig.from_json(json.loads((Path(run) / "train_config.json").read_text()))
        tx = make_optimizer(tcfg.lr, tcfg.lr_lr, tcfg.grad_clip)
        ck = EditorCheckpoints(checkpoints_dir(run), async_save=False)
        try:
            ts, _ = ck.restore(init_train_state(editor, tx, jax.random.key(0)), which="latest")
        finally:
            ck.close()
        return ts["opt_state"]

    counts = {}
    for carry in (False, True):
        out = tmp_path / f"carry_{carry}"
        warm = dataclasses.replace(_tiny_cfg(out, 1), model=str(tiny_lm.folder), init_from=str(src),
                                   init_which="latest", init_optimizer=carry, factor_positions="target")
        train(warm, model=tiny_lm, progress=False)
        counts[carry] = [int(x) for x in jax.tree.leaves(opt_state(out)) if np.ndim(x) == 0 and
                         np.issubdtype(np.asarray(x).dtype, np.integer)]
        assert load_editor(out, tiny_lm, "latest")[0].factor_positions == "target"
    src_counts = [int(x) for x in jax.tree.leaves(opt_state(src)) if np.ndim(x) == 0 and
                  np.issubdtype(np.asarray(x).dtype, np.integer)]
    assert max(src_counts) >= 2
    # Adam's step count goes on from the source's with --init-optimizer, and starts afresh without it
    assert max(counts[True]) == max(src_counts) + max(counts[False])
    assert load_editor(src, tiny_lm, "latest")[0].factor_positions == "all"
    with pytest.raises(MendJaxError, match="--init-from"):
        TrainConfig(init_optimizer=True)
    with pytest.raises(MendJaxError, match="--factor-positions"):
        TrainConfig(factor_positions="prompt")
    # an editor-only folder (save-editor) has no optimizer state to carry
    from mend_jax.checkpoints import save_editor
    only = tmp_path / "editor_only"
    save_editor(src, only, tiny_lm, which="latest")
    with pytest.raises(CheckpointError, match="--init-optimizer"):
        train(dataclasses.replace(_tiny_cfg(tmp_path / "x", 1), model=str(tiny_lm.folder), init_from=str(only),
                                  init_optimizer=True), model=tiny_lm, progress=False)


def _loc_answer_logits_of_materialised_edits(tiny_lm, editor, ts, batch):
    """Per problem of ``batch``: the logits at its locality answer before and after its edit, materialised into new
    weights (one editor step), and the answer mask: the reference for the step's locality losses."""
    from mend_jax.editing.edit import apply_edits, compute_edits
    cfg, fam = tiny_lm.config, tiny_lm.family
    out = []
    for i in range(batch.edit.input_ids.shape[0]):
        edit, loc = (jax.tree.map(lambda x: x[i], tb) for tb in (batch.edit, batch.loc))
        _, f = capture_factors(tiny_lm.params, cfg, edit, editor.spec.layers)
        edited = apply_edits(tiny_lm.params, compute_edits(editor, ts["params"], ts["stats"], f))
        pre = fam.forward(tiny_lm.params, cfg, loc.input_ids, loc.attention_mask, logits_at=loc.target_pos)
        post = fam.forward(edited, cfg, loc.input_ids, loc.attention_mask, logits_at=loc.target_pos)
        out.append((pre, post, loc.target_mask.astype(np.float32)))
    return out


def test_locality_loss_on_the_answer_tokens_only(tiny_lm):
    """``--loc-loss-on answer``: the locality KL (and ``loc_same``) over each locality input's answer tokens, where
    evaluation compares the argmax before and after; the edit loss is unchanged, and the step trains."""
    from mend_jax.editing.losses import kl_pre_post
    from mend_jax.training.config import TrainConfig
    editor, cfg, fam, tx, ts, batch = _after_one_step(tiny_lm)
    ans = make_eval_step(editor, cfg, StepHParams(loc_on_answer=True))(ts["params"], ts["stats"], tiny_lm.params,
                                                                      batch)
    every = make_eval_step(editor, cfg)(ts["params"], ts["stats"], tiny_lm.params, batch)
    np.testing.assert_allclose(ans["loss/edit"], every["loss/edit"], rtol=1e-6)
    for i, (pre, post, mask) in enumerate(_loc_answer_logits_of_materialised_edits(tiny_lm, editor, ts, batch)):
        np.testing.assert_allclose(ans["loss/loc"][i], kl_pre_post(pre, post, mask), rtol=2e-3, atol=1e-7)
    assert not np.allclose(ans["loss/loc"], every["loss/loc"])
    step = make_train_step(editor, cfg, tx, StepHParams(loc_on_answer=True), donate=False)
    _, m = step(ts, tiny_lm.params, batch)
    assert float(m["finite"]) == 1.0
    from mend_jax.errors import MendJaxError
    with pytest.raises(MendJaxError, match="loc_loss_on"):
        TrainConfig(loc_loss_on="question")


def test_locality_answers_may_be_longer_than_the_edit_targets(tiny_lm):
    """``--loc-answer-len``: a locality input whose answer is longer than ``--target-len`` is kept (own locality in
    training, and the validation records) with an answer length of its own, instead of being swapped for another
    record's; the step's locality KL over those answer tokens is that of the materialised edit."""
    import dataclasses
    from mend_jax.editing.batch import tokenize_pair
    from mend_jax.editing.losses import kl_pre_post
    from mend_jax.errors import MendJaxError
    from mend_jax.training.batches import own_loc_fits
    from mend_jax.training.config import TrainConfig
    editor, records = setup(tiny_lm)
    tok = tiny_lm.tokenizer
    long = "the long river that flows through the old town to the sea"
    recs = [dataclasses.replace(r, loc_answer=long) if i % 2 == 0 else r for i, r in enumerate(records)]
    n_answer = len(tokenize_pair(tok, recs[0].loc_prompt, long)[1])
    assert 4 < n_answer <= 12
    short_shapes, long_shapes = Shapes(16, 4, 32), Shapes(16, 4, 32, loc_answer_len=12)
    assert long_shapes.loc_target_len == 12 and short_shapes.loc_target_len == 4
    ok_short, ok_long = own_loc_fits(tok, recs, short_shapes), own_loc_fits(tok, recs, long_shapes)
    assert not any(i % 2 == 0 for i in ok_short)
    assert ok_short < ok_long and {i for i in range(len(recs)) if i % 2 == 0} <= ok_long
    batch = training_batch(tok, recs, DataOrder(len(recs), 0), 0, 4, long_shapes, 128, train_loc="own",
                           own_loc_ok=ok_long)
    assert batch.edit.target_ids.shape[-1] == 4 and batch.loc.target_ids.shape[-1] == 12
    assert np.asarray(batch.loc.target_mask).sum(-1).max() == n_answer  # a long answer is in the batch, whole
    tx = make_optimizer(1e-3, 1e-4, 100.0)
    ts = init_train_state(editor, tx, jax.random.key(0))
    ts, m = make_train_step(editor, tiny_lm.config, tx, StepHParams(loc_on_answer=True), donate=False)(
        ts, tiny_lm.params, batch)
    assert float(m["finite"]) == 1.0
    ans = make_eval_step(editor, tiny_lm.config, StepHParams(loc_on_answer=True))(ts["params"], ts["stats"],
                                                                                  tiny_lm.params, batch)
    for i, (pre, post, mask) in enumerate(_loc_answer_logits_of_materialised_edits(tiny_lm, editor, ts, batch)):
        np.testing.assert_allclose(ans["loss/loc"][i], kl_pre_post(pre, post, mask), rtol=2e-3, atol=1e-7)
    assert TrainConfig.from_json({k: v for k, v in dataclasses.asdict(TrainConfig()).items()
                                  if k != "loc_answer_len"}).loc_answer_len == 0  # runs saved before the option
    with pytest.raises(MendJaxError, match="loc-answer-len"):
        TrainConfig(loc_len=24, loc_answer_len=32)


def test_argmax_margin_hinge_counts_flips_and_spares_kept_margins():
    """The hinge is zero without an edit and while each position keeps half its margin, and grows with the logit
    distance by which a near-tie is flipped, where the KL of that flip is tiny."""
    import jax.numpy as jnp
    from mend_jax.editing.losses import argmax_margin_hinge, kl_pre_post
    pre = jnp.array([[[2.00, 1.99, -1.0], [5.0, 1.0, 0.0]]])  # a near-tie (margin 0.01) and a clear answer (4)
    mask = jnp.ones((1, 2))
    assert float(argmax_margin_hinge(pre, pre, mask)) == 0.0
    kept = pre + jnp.array([0.0, 0.0, 0.0, -1.9, 0.0, 0.0]).reshape(1, 2, 3)  # the clear one keeps 2.1 of 4
    assert float(argmax_margin_hinge(pre, kept, mask)) == 0.0
    flipped = pre + jnp.array([0.0, 0.05, 0.0, 0.0, 0.0, 0.0]).reshape(1, 2, 3)  # near-tie flipped by 0.04
    np.testing.assert_allclose(argmax_margin_hinge(pre, flipped, mask), (0.005 + 0.04) / 2, rtol=1e-4)
    assert float(kl_pre_post(pre, flipped, mask)) < 1e-3
    g = jax.grad(lambda p: argmax_margin_hinge(pre, p, mask))(flipped)
    assert float(g[0, 0, 0]) < 0 < float(g[0, 0, 1])  # raise the old argmax, lower the new one


def test_flip_loss_in_training_is_the_hinge_of_the_materialised_edit(tiny_lm):
    """``--c-flip``: each problem's ``loss/flip`` is the argmax-margin hinge of the materialised edit on its
    locality answer, the loss adds ``c_flip`` times it, and the step trains."""
    from mend_jax.editing.losses import argmax_margin_hinge
    from mend_jax.errors import MendJaxError
    from mend_jax.training.config import TrainConfig
    editor, cfg, fam, tx, ts, batch = _after_one_step(tiny_lm)
    hp = StepHParams(loc_on_answer=True, c_flip=3.0)
    flip = make_eval_step(editor, cfg, hp)(ts["params"], ts["stats"], tiny_lm.params, batch)
    plain = make_eval_step(editor, cfg, StepHParams(loc_on_answer=True))(ts["params"], ts["stats"], tiny_lm.params,
                                                                         batch)
    np.testing.assert_allclose(flip["loss"], plain["loss"] + 3.0 * flip["loss/flip"], rtol=1e-5, atol=1e-7)
    for i, (pre, post, mask) in enumerate(_loc_answer_logits_of_materialised_edits(tiny_lm, editor, ts, batch)):
        np.testing.assert_allclose(flip["loss/flip"][i], argmax_margin_hinge(pre, post, mask), rtol=2e-3, atol=1e-6)
    _, m = make_train_step(editor, cfg, tx, hp, donate=False)(ts, tiny_lm.params, batch)
    assert float(m["finite"]) == 1.0 and "loss/flip" in m
    with pytest.raises(MendJaxError, match="c-flip"):
        TrainConfig(c_flip=-1.0)


def test_learning_rate_cool_down_scales_each_update_and_ends_at_zero(tiny_lm):
    """--lr-decay-steps: step s's update is the constant-rate update times min(1, (total - s) / decay), for the
    editor nets and the step sizes alike; Adam's moments are the same as without the cool-down."""
    import dataclasses
    editor, records = setup(tiny_lm)
    tx = make_optimizer(1e-3, 1e-4, 100.0)
    ts0 = init_train_state(editor, tx, jax.random.key(0))
    batch = training_batch(tiny_lm.tokenizer, records, DataOrder(len(records), 0), 0, 2, SHAPES, 128)
    hp = StepHParams()
    const = make_train_step(editor, tiny_lm.config, tx, hp, donate=False)
    cool = make_train_step(editor, tiny_lm.config, tx, dataclasses.replace(hp, decay_steps=8, total_steps=10),
                           donate=False)
    for s, factor in [(0, 1.0), (2, 1.0), (4, 0.75), (9, 0.125), (10, 0.0), (12, 0.0)]:
        at = dict(ts0, step=jax.numpy.asarray(s, jax.numpy.int32))
        a, ma = const(at, tiny_lm.params, batch)
        b, mb = cool(at, tiny_lm.params, batch)
        assert float(ma["lr_multiplier"]) == 1.0 and float(mb["lr_multiplier"]) == pytest.approx(factor)
        moved = jax.tree.map(lambda x, y: np.asarray(y) - np.asarray(x), ts0["params"], a["params"])
        moved_cool = jax.tree.map(lambda x, y: np.asarray(y) - np.asarray(x), ts0["params"], b["params"])
        for name in ("nets", "edit_lrs"):
            for d, dc in zip(jax.tree.leaves(moved[name]), jax.tree.leaves(moved_cool[name])):
                np.testing.assert_allclose(dc, factor * d, rtol=1e-4, atol=1e-9)
        assert max(np.abs(d).max() for d in jax.tree.leaves(moved)) > 0  # the constant step does move
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                     a["opt_state"], b["opt_state"])


def test_bad_learning_rate_decay_is_refused():
    from mend_jax.errors import MendJaxError
    from mend_jax.training.config import TrainConfig
    with pytest.raises(MendJaxError, match="--lr-decay-steps"):
        TrainConfig(lr_decay_steps=-1)


def test_the_summary_adds_up_the_minutes_of_every_invocation_of_a_run_folder(tiny_lm, tmp_path):
    """A run split over invocations (or killed and resumed) reports its minutes in all in ``minutes_total``: the
    earlier invocations' minutes up to the checkpoint resumed from, plus this one's."""
    from mend_jax.checkpoints import read_meta
    from mend_jax.training.loop import train
    first = train(_tiny_cfg(tmp_path / "run", 2), model=tiny_lm, progress=False)
    assert first["minutes_total"] == pytest.approx(first["minutes"])
    step, meta = read_meta(tmp_path / "run" / "checkpoints", "latest")
    saved = meta["minutes_total"]
    assert step == 2
    assert 0 < saved <= first["minutes"]
    second = train(_tiny_cfg(tmp_path / "run", 3), model=tiny_lm, progress=False)
    assert second["minutes_total"] == pytest.approx(saved + second["minutes"])


def test_time_limit_stops_before_the_step_that_would_pass_it(tiny_lm, tmp_path, monkeypatch):
    """``--max-minutes``: before each step the loop asks whether that step (its last measured time, its validation
    if one is due, the time-limit checkpoint) would end past the limit, and stops first where it would, saving a
    checkpoint at the step it reached. The clock is the machine's, so the decision is replaced by one that says
    "would pass" at its third question (before step 4) and the wiring is checked: measured times passed in, the
    validation's only where one is due (steps 2 and 4 with ``val_every=2``)."""
    import dataclasses

    from mend_jax.checkpoints import checkpoints_dir, read_meta
    from mend_jax.training import loop
    calls = []

    def passes(minutes_now, max_minutes, step_s, val_s=0.0, save_s=0.0):
        calls.append((minutes_now, max_minutes, step_s, val_s, save_s))
        return len(calls) == 3
    monkeypatch.setattr(loop, "next_step_passes_limit", passes)
    out = tmp_path / "run"
    cfg = dataclasses.replace(_tiny_cfg(out, 6), model=str(tiny_lm.folder), val_every=2, ckpt_every=100,
                              max_minutes=1e6)
    summary = loop.train(cfg, model=tiny_lm, progress=False)
    assert (summary["steps"], summary["stopped"]) == (3, "time limit")
    assert read_meta(checkpoints_dir(out), "latest")[0] == 3
    assert len(calls) == 3 and all(c[1] == 1e6 and c[2] > 0 for c in calls)
    assert calls[0][3] == 0.0  # before step 2: a validation is due but none has been timed yet
    assert calls[1][3] == 0.0  # before step 3: none due
    assert calls[2][3] > 0 and calls[2][4] > 0  # before step 4: step 2's validation and save, timed
    assert calls[0][0] < calls[1][0] < calls[2][0]


def test_next_step_passes_limit_adds_the_step_validation_and_save():
    from mend_jax.training.loop import next_step_passes_limit
    assert not next_step_passes_limit(10.0, 10.5, step_s=20.0)  # ends at 10.33 minutes
    assert next_step_passes_limit(10.0, 10.5, step_s=20.0, val_s=10.0, save_s=5.0)  # ends at 10.58
    assert next_step_passes_limit(10.6, 10.5, step_s=0.0)  # already past


def test_training_edits_the_blocks_chosen_by_edit_first_block(tiny_lm, tmp_path):
    """``--edit-first-block 1 --edit-blocks 2``: the editor edits the MLPs of blocks 1-2 instead of the last two
    (2-3), its checkpoint names those layers and loads with them; blocks outside the model are an error that names
    the model's blocks, from the config and from the model family."""
    import dataclasses

    from mend_jax.checkpoints import load_editor
    from mend_jax.errors import MendJaxError
    from mend_jax.training.config import TrainConfig
    from mend_jax.training.loop import train
    out = tmp_path / "mid"
    cfg = dataclasses.replace(_tiny_cfg(out, 2), model=str(tiny_lm.folder), edit_first_block=1)
    summary = train(cfg, model=tiny_lm, progress=False)
    assert summary["steps"] == 2
    editor = load_editor(out, tiny_lm, "latest")[0]
    fam = tiny_lm.family
    assert editor.spec.layers == fam.default_edit_layers(tiny_lm.config, 2, first=1)
    assert {n.split(".")[2] for n in editor.spec.layers} == {"1", "2"}
    assert fam.default_edit_layers(tiny_lm.config, 2) != editor.spec.layers  # the default: blocks 2-3
    with pytest.raises(MendJaxError, match="blocks 0-3"):
        fam.default_edit_layers(tiny_lm.config, 2, first=3)
    with pytest.raises(MendJaxError, match="--edit-first-block"):
        TrainConfig(edit_first_block=-1)
    with pytest.raises(MendJaxError, match="blocks 0-3"):
        train(dataclasses.replace(cfg, edit_first_block=3, out=str(tmp_path / "bad")), model=tiny_lm, progress=False)


def test_training_edits_only_the_matrices_chosen_by_edit_matrices(tiny_lm, tmp_path):
    """``--edit-matrices down_proj`` over blocks 1-3: the editor edits the MLP output matrices of those blocks only
    (its checkpoint names them and loads with them); a name that is not an MLP matrix is
    an error that lists the ones there are, and an empty list is refused before any model is loaded."""
    import dataclasses

    from mend_jax.checkpoints import load_editor
    from mend_jax.errors import MendJaxError
    from mend_jax.models.layers import select_matrices
    from mend_jax.training.config import TrainConfig
    from mend_jax.training.loop import build_editor, train
    out = tmp_path / "down"
    cfg = dataclasses.replace(_tiny_cfg(out, 2), model=str(tiny_lm.folder), edit_first_block=1, edit_blocks=3,
                              edit_matrices=("down_proj",))
    summary = train(cfg, model=tiny_lm, progress=False)
    assert summary["steps"] == 2
    editor = load_editor(out, tiny_lm, "latest")[0]
    assert editor.spec.layers == tuple(f"model.layers.{i}.mlp.down_proj" for i in (1, 2, 3))
    assert build_editor(tiny_lm, dataclasses.replace(cfg, edit_matrices=None))[0].spec.layers == \
        tiny_lm.family.default_edit_layers(tiny_lm.config, 3, first=1)
    with pytest.raises(MendJaxError, match="choose among down_proj, gate_proj, up_proj"):
        select_matrices(tiny_lm.family.default_edit_layers(tiny_lm.config, 2), ("o_proj",))
    with pytest.raises(MendJaxError, match="--edit-matrices names no matrix"):
        TrainConfig(edit_matrices=())
