"""Gradient factors against jax.grad, the identity transformation as a gradient step, low-rank vs materialised."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_params, tiny_gpt2_config, tiny_llama_config
from mend_jax.editing import (EditorSpec, TokenBatch, apply_edits, capture_factors, compute_edits, identity_editor,
                              masked_nll)
from mend_jax.models import LinearHooks, family_for, get_module, replace_module

CONFIGS = {"llama": tiny_llama_config(), "gpt2": tiny_gpt2_config(), "llama_bias": tiny_llama_config(
    qkv_bias=True, o_bias=True, tie_word_embeddings=True)}


def make_batch(cfg, seed=0, b=3, t=10, k=3):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, cfg.vocab_size, (b, t)).astype(np.int32)
    mask = np.ones((b, t), np.int32)
    tpos = np.zeros((b, k), np.int32)
    tids = np.zeros((b, k), np.int32)
    tmask = np.zeros((b, k), np.float32)
    for i in range(b):
        length = t - i  # right padding grows with i
        mask[i, length:] = 0
        ids[i, length:] = 0
        n = min(k, 1 + i)
        p = length - n  # prompt length
        tpos[i, :n] = np.arange(p - 1, p - 1 + n)
        tids[i, :n] = ids[i, p:p + n]
        tmask[i, :n] = 1
    return TokenBatch(*(jnp.asarray(x) for x in (ids, mask, tpos, tids, tmask)))


def edit_layers(cfg):
    fam = family_for(cfg)
    return fam.default_edit_layers(cfg, n_blocks=2)


def loss_wrt_kernels(params, cfg, batch, layers):
    fam = family_for(cfg)

    def f(kernels):
        p = params
        for n in layers:
            mod = dict(get_module(p, n))
            mod["kernel"] = kernels[n]
            p = replace_module(p, n, mod)
        logits = fam.forward(p, cfg, batch.input_ids, batch.attention_mask, logits_at=batch.target_pos)
        # the edit loss: each example's token-mean target NLL, summed over the examples
        return sum(masked_nll(logits[i:i + 1], batch.target_ids[i:i + 1], batch.target_mask[i:i + 1])
                   for i in range(logits.shape[0]))
    return f, {n: get_module(params, n)["kernel"] for n in layers}


def test_each_edit_of_a_batch_has_the_factors_it_has_alone():
    """k edits at once = the sum of the k single-edit updates ([P] §5.3): an example's factors in a batch equal
    its factors when edited alone (the original's batch-wide token mean would shrink them by ~1/k)."""
    cfg = CONFIGS["llama"]
    params = random_params(cfg)
    batch = make_batch(cfg, b=3)
    layers = edit_layers(cfg)
    _, together = capture_factors(params, cfg, batch, layers)
    for i in range(3):
        _, alone = capture_factors(params, cfg, jax.tree.map(lambda x: x[i:i + 1], batch), layers)
        for n in layers:
            np.testing.assert_allclose(together.delta[n][i], alone.delta[n][0], rtol=1e-5, atol=1e-8)
            np.testing.assert_allclose(together.u[n][i], alone.u[n][0], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_factor_outer_products_equal_jax_grad(name):
    cfg = CONFIGS[name]
    params = random_params(cfg)
    batch = make_batch(cfg)
    layers = edit_layers(cfg)
    loss, factors = jax.jit(capture_factors, static_argnums=(1, 3))(params, cfg, batch, layers)
    f, kernels = loss_wrt_kernels(params, cfg, batch, layers)
    ref_loss, grads = jax.value_and_grad(f)(kernels)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for n in layers:
        np.testing.assert_allclose(factors.gradient(n), grads[n], rtol=1e-4, atol=1e-6)
        assert float(jnp.abs(grads[n]).max()) > 1e-4  # the test is not vacuous


def test_masked_tokens_contribute_nothing():
    cfg = CONFIGS["llama"]
    params = random_params(cfg)
    batch = make_batch(cfg)
    layers = edit_layers(cfg)
    _, factors = capture_factors(params, cfg, batch, layers)
    for n in layers:
        m = np.asarray(factors.mask[n])
        # padding rows are masked; positions after the last target have delta == 0 and are masked too
        assert (m[np.asarray(batch.attention_mask) == 0] == 0).all()
        # positions after the last scored one never reach the loss (causal): delta == 0 there, so masked
        last = np.asarray(batch.target_pos).max(-1) + 1
        for b in range(m.shape[0]):
            assert (m[b, last[b]:] == 0).all()
            assert m[b, : last[b]].sum() > 0
    # changing what sits in the padding changes nothing
    padded = batch.input_ids.at[2, -1].set(77)
    _, f2 = capture_factors(params, cfg, TokenBatch(padded, batch.attention_mask, batch.target_pos,
                                                     batch.target_ids, batch.target_mask), layers)
    for n in layers:
        np.testing.assert_allclose(f2.gradient(n), factors.gradient(n), rtol=1e-6, atol=1e-8)
        mrow = np.asarray(f2.mask[n])[2, -1]
        assert mrow == 0


def test_target_positions_keep_only_the_rows_that_predict_target_tokens():
    """``positions="target"``: the factors keep the rows of the positions whose logits predict a target token and no
    other (the prompt's other positions are masked), with ``u`` and ``delta`` unchanged; their outer products are
    then the gradient of the loss with only those positions' kernels free (checked with ``jax.grad`` on the kernels
    applied at the target positions only, through the taps' sum)."""
    cfg = CONFIGS["llama"]
    params = random_params(cfg)
    batch = make_batch(cfg, b=3, t=10, k=3)
    layers = edit_layers(cfg)
    capture = jax.jit(capture_factors, static_argnums=(1, 3), static_argnames="positions")
    _, every = capture(params, cfg, batch, layers)
    _, target = capture(params, cfg, batch, layers, positions="target")
    want = np.zeros(batch.input_ids.shape, np.float32)
    for b in range(want.shape[0]):
        for p, m in zip(np.asarray(batch.target_pos[b]), np.asarray(batch.target_mask[b])):
            want[b, p] = max(want[b, p], m)
    for n in layers:
        np.testing.assert_array_equal(np.asarray(target.mask[n]), np.asarray(every.mask[n]) * want)
        np.testing.assert_allclose(target.u[n], every.u[n], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(target.delta[n], every.delta[n], rtol=1e-4, atol=1e-8)
        # never more rows than MEND's, and the gradient is their part of it
        assert np.asarray(target.mask[n]).sum() <= np.asarray(every.mask[n]).sum()
        part = jnp.einsum("bti,bto->io", every.u[n] * jnp.asarray(want)[..., None], every.delta[n])
        np.testing.assert_allclose(target.gradient(n), part, rtol=1e-4, atol=1e-6)
    # below the last block the prompt's positions reach the loss through attention: those rows are dropped
    lower = [n for n in layers if n.startswith(f"model.layers.{cfg.num_layers - 2}.")]
    assert lower and all(np.asarray(target.mask[n]).sum() < np.asarray(every.mask[n]).sum() for n in lower)
    with pytest.raises(ValueError, match="positions"):
        capture_factors(params, cfg, batch, layers, positions="prompt")


def test_an_editor_for_target_positions_edits_from_those_rows_only():
    """``Editor.factor_positions = "target"`` (``EditorConfig.factor_positions``): ``mend_edits`` computes the edit
    from the target positions' factors, i.e. the identity editor's edit is the gradient step of those rows."""
    import dataclasses

    from mend_jax.editing.edit import mend_edits
    cfg = CONFIGS["llama"]
    params = random_params(cfg)
    batch = make_batch(cfg)
    layers = edit_layers(cfg)
    fam = family_for(cfg)
    spec = EditorSpec.from_model(fam.linear_layers(cfg), layers)
    ed = dataclasses.replace(identity_editor(spec, edit_lr=0.1), factor_positions="target")
    eparams, stats = ed.init(jax.random.key(0))
    edits = mend_edits(ed, cfg, params, eparams, stats, batch)
    _, target = capture_factors(params, cfg, batch, layers, positions="target")
    for n in layers:
        np.testing.assert_allclose(edits[n].dense(), -0.1 * target.gradient(n), rtol=1e-4, atol=1e-7)
    every = mend_edits(identity_editor(spec, edit_lr=0.1), cfg, params, eparams, stats, batch)
    assert any(not np.allclose(every[n].dense(), edits[n].dense(), rtol=1e-3, atol=1e-6) for n in layers)
    from mend_jax.editing.editor import EditorConfig
    with pytest.raises(ValueError, match="factor_positions"):
        EditorConfig(factor_positions="prompt")


def test_last_layer_rows_without_labels_are_filtered():
    cfg = CONFIGS["llama"]
    params = random_params(cfg)
    batch = make_batch(cfg, b=1, t=10, k=1)
    last = f"model.layers.{cfg.num_layers - 1}.mlp.down_proj"
    _, factors = capture_factors(params, cfg, batch, (last,))
    # in the last block, only the position whose logits are scored has a non-zero output gradient
    assert int(np.asarray(factors.mask[last]).sum()) == 1


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_identity_transform_is_one_gradient_descent_step(name):
    cfg = CONFIGS[name]
    params = random_params(cfg)
    batch = make_batch(cfg)
    layers = edit_layers(cfg)
    fam = family_for(cfg)
    lr = 0.05
    editor = identity_editor(EditorSpec.from_model(fam.linear_layers(cfg), layers), edit_lr=lr)
    eparams, estate = editor.init(jax.random.key(0))
    _, factors = capture_factors(params, cfg, batch, layers)
    edited = apply_edits(params, compute_edits(editor, eparams, estate, factors))
    f, kernels = loss_wrt_kernels(params, cfg, batch, layers)
    grads = jax.grad(f)(kernels)
    for n in layers:
        np.testing.assert_allclose(get_module(edited, n)["kernel"], kernels[n] - lr * grads[n], rtol=1e-5, atol=1e-6)
    # the original tree is untouched
    for n in layers:
        np.testing.assert_array_equal(get_module(params, n)["kernel"], kernels[n])
    # and the step lowers the loss
    new_loss = f({n: get_module(edited, n)["kernel"] for n in layers})
    assert float(new_loss) < float(f(kernels))


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_low_rank_and_materialised_edits_agree(name):
    cfg = CONFIGS[name]
    params = random_params(cfg)
    batch = make_batch(cfg)
    layers = edit_layers(cfg)
    fam = family_for(cfg)
    editor = identity_editor(EditorSpec.from_model(fam.linear_layers(cfg), layers), edit_lr=0.5)
    eparams, estate = editor.init(jax.random.key(0))
    _, factors = capture_factors(params, cfg, batch, layers)
    edits = compute_edits(editor, eparams, estate, factors)
    probe = make_batch(cfg, seed=5)
    dense = fam.forward(apply_edits(params, edits), cfg, probe.input_ids, probe.attention_mask)
    low = fam.forward(params, cfg, probe.input_ids, probe.attention_mask, hooks=LinearHooks(edits=edits))
    base = fam.forward(params, cfg, probe.input_ids, probe.attention_mask)
    np.testing.assert_allclose(low, dense, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(dense - base).max()) > 1e-2  # the edit does change the outputs


def test_k_edits_at_once_sum_their_updates():
    cfg = CONFIGS["llama"]
    params = random_params(cfg)
    layers = edit_layers(cfg)
    fam = family_for(cfg)
    editor = identity_editor(EditorSpec.from_model(fam.linear_layers(cfg), layers), edit_lr=0.1)
    eparams, estate = editor.init(jax.random.key(0))
    b1, b2 = make_batch(cfg, seed=1, b=2), make_batch(cfg, seed=2, b=2)
    both = jax.tree.map(lambda x, y: jnp.stack([x, y]), b1, b2)
    f_both = jax.vmap(lambda b: capture_factors(params, cfg, b, layers)[1])(both)
    e_both = compute_edits(editor, eparams, estate, f_both)
    e1 = compute_edits(editor, eparams, estate, capture_factors(params, cfg, b1, layers)[1])
    e2 = compute_edits(editor, eparams, estate, capture_factors(params, cfg, b2, layers)[1])
    for n in layers:
        np.testing.assert_allclose(e_both[n].dense(), e1[n].dense() + e2[n].dense(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_editor_on_compacted_rows_gives_the_same_edit(name):
    """``compute_edits(rows=edit_row_bucket(batch))`` runs the editor on the real rows only: same update, and the
    bound always covers the rows that carry a factor."""
    from mend_jax.editing import EditorConfig, edit_row_bucket, mend_editor
    cfg = CONFIGS[name]
    params = random_params(cfg)
    short = make_batch(cfg, b=4, t=12)
    pad = lambda x: jnp.pad(x, ((0, 0), (0, 12)))  # noqa: E731  (bucketed shapes leave padding like this)
    batch = TokenBatch(pad(short.input_ids), pad(short.attention_mask), short.target_pos, short.target_ids,
                       short.target_mask)
    layers = edit_layers(cfg)
    fam = family_for(cfg)
    editor = mend_editor(EditorSpec.from_model(fam.linear_layers(cfg), layers), EditorConfig(rank=8, init="xavier"))
    eparams, estate = editor.init(jax.random.key(1))
    _, factors = capture_factors(params, cfg, batch, layers)
    rows = edit_row_bucket(batch, minimum=4)
    assert rows < batch.input_ids.size
    assert max(int(factors.mask[n].sum()) for n in layers) <= rows
    full = compute_edits(editor, eparams, estate, factors)
    compact = compute_edits(editor, eparams, estate, factors, rows=rows)
    for n in layers:
        np.testing.assert_allclose(compact[n].dense(), full[n].dense(), rtol=1e-5, atol=1e-7)
    too_small = compute_edits(editor, eparams, estate, factors, rows=2)
    assert all(np.isnan(np.asarray(too_small[n].dense())).all() for n in layers)


def test_edited_kernels_only_change_edited_layers():
    from mend_jax.editing import edited_kernels, with_kernels
    cfg = CONFIGS["llama"]
    params = random_params(cfg)
    batch = make_batch(cfg)
    layers = edit_layers(cfg)
    editor = identity_editor(EditorSpec.from_model(family_for(cfg).linear_layers(cfg), layers), edit_lr=0.1)
    ep, es = editor.init(jax.random.key(0))
    _, factors = capture_factors(params, cfg, batch, layers)
    edits = compute_edits(editor, ep, es, factors)
    kernels = jax.jit(edited_kernels)(params, edits)
    assert sorted(kernels) == sorted(layers)
    new = with_kernels(params, kernels)
    edited = {id(get_module(new, n)["kernel"]) for n in layers}
    for n in layers:
        assert not np.array_equal(get_module(new, n)["kernel"], get_module(params, n)["kernel"])
    old_leaves = dict(jax.tree_util.tree_leaves_with_path(params))
    for path, leaf in jax.tree_util.tree_leaves_with_path(new):
        if id(leaf) not in edited:
            assert leaf is old_leaves[path]  # shared, not copied
    assert len(jax.tree.leaves(new)) == len(old_leaves)


def test_iterated_identity_editor_is_gradient_descent_and_one_step_is_mend():
    """``iterated_mend_edits(steps=2)`` with the identity transformation at step size lr is two gradient-descent
    steps on the edit loss (the second at the weights the first left), as one merged low-rank edit; steps=1 is
    exactly ``mend_edits``; steps < 1 is refused."""
    from mend_jax.editing import edit_row_bucket, iterated_mend_edits, mend_edits
    from mend_jax.errors import MendJaxError
    cfg = CONFIGS["llama"]
    params = random_params(cfg)
    batch = make_batch(cfg)
    layers = edit_layers(cfg)
    lr = 0.05
    editor = identity_editor(EditorSpec.from_model(family_for(cfg).linear_layers(cfg), layers), edit_lr=lr)
    ep, es = editor.init(jax.random.key(0))
    rows = edit_row_bucket(batch)
    one = iterated_mend_edits(editor, cfg, params, ep, es, batch, steps=1, rows=rows)
    ref = mend_edits(editor, cfg, params, ep, es, batch, rows=rows)
    for n in layers:
        np.testing.assert_array_equal(one[n].dense(), ref[n].dense())
    f, kernels = loss_wrt_kernels(params, cfg, batch, layers)
    g1 = jax.grad(f)(kernels)
    k1 = {n: kernels[n] - lr * g1[n] for n in layers}
    g2 = jax.grad(f)(k1)
    two = iterated_mend_edits(editor, cfg, params, ep, es, batch, steps=2, rows=rows)
    edited = apply_edits(params, two)
    for n in layers:
        np.testing.assert_allclose(get_module(edited, n)["kernel"], k1[n] - lr * g2[n], rtol=1e-5, atol=1e-6)
    assert float(f({n: get_module(edited, n)["kernel"] for n in layers})) < float(f(k1)) < float(f(kernels))
    with pytest.raises(MendJaxError, match="edit steps must be >= 1"):
        iterated_mend_edits(editor, cfg, params, ep, es, batch, steps=0)


def identity_editing_setup(b=3):
    """A tiny LLaMA, ``b`` edit examples and the identity editor (step size 0.5) on two blocks, with its row bucket."""
    from mend_jax.editing import edit_row_bucket
    cfg = CONFIGS["llama"]
    batch = make_batch(cfg, b=b)
    layers = edit_layers(cfg)
    editor = identity_editor(EditorSpec.from_model(family_for(cfg).linear_layers(cfg), layers), edit_lr=0.5)
    ep, es = editor.init(jax.random.key(0))
    return cfg, random_params(cfg), batch, layers, editor, ep, es, edit_row_bucket(batch)


def test_adaptive_steps_take_rows_only_from_the_edits_that_do_not_hold_yet():
    """``iterated_mend_edits(until_margin=M)``: a margin no edit reaches is the plain iteration; a margin every
    edit reaches after step 1 stops there (= ``mend_edits``); in between, step 2 is the gradient step of the
    examples that do not hold alone (identity editor), and the held examples' rows are left out. Margins are the
    prompt's own target tokens' logit minus the best other, from the factors' forward pass."""
    from mend_jax.editing import iterated_mend_edits, mend_edits
    from mend_jax.editing.edit import target_margins, unheld_mend_edits
    from mend_jax.errors import MendJaxError
    cfg, params, batch, layers, editor, ep, es, rows = identity_editing_setup()
    dense = lambda edits: {n: np.asarray(edits[n].dense()) for n in layers}  # noqa: E731

    step1 = mend_edits(editor, cfg, params, ep, es, batch, rows=rows)
    edited = apply_edits(params, step1)
    logits = family_for(cfg).forward(edited, cfg, batch.input_ids, batch.attention_mask, logits_at=batch.target_pos)
    margins = np.asarray(target_margins(logits, batch))
    manual = np.array([min(float(logits[i, j, batch.target_ids[i, j]]) -
                           float(np.max(np.delete(np.asarray(logits[i, j]), int(batch.target_ids[i, j]))))
                           for j in range(int(batch.target_mask[i].sum()))) for i in range(3)])
    np.testing.assert_allclose(margins, manual, rtol=1e-5, atol=1e-5)
    assert len(set(np.round(margins, 4))) == 3, "the test needs three different margins"

    plain = dense(iterated_mend_edits(editor, cfg, params, ep, es, batch, steps=3, rows=rows))
    never = dense(iterated_mend_edits(editor, cfg, params, ep, es, batch, steps=3, rows=rows, until_margin=1e6))
    for n in layers:
        np.testing.assert_allclose(never[n], plain[n], rtol=1e-5, atol=1e-7)
    held = dense(iterated_mend_edits(editor, cfg, params, ep, es, batch, steps=3, rows=rows,
                                     until_margin=float(margins.min()) - 1.0))
    for n in layers:
        np.testing.assert_array_equal(held[n], np.asarray(step1[n].dense()))

    cut = float(np.sort(margins)[1:].mean())  # the example with the largest margin holds, the other two do not
    unheld_ref = margins < cut
    assert unheld_ref.sum() == 2
    two = dense(iterated_mend_edits(editor, cfg, params, ep, es, batch, steps=2, rows=rows, until_margin=cut))
    _, unheld = unheld_mend_edits(editor, cfg, edited, ep, es, batch, cut, rows=rows)
    np.testing.assert_array_equal(np.asarray(unheld), unheld_ref)
    sub = jax.tree.map(lambda x: x[np.flatnonzero(unheld_ref)], batch)
    f, _ = loss_wrt_kernels(edited, cfg, sub, layers)
    g = jax.grad(f)({n: get_module(edited, n)["kernel"] for n in layers})
    for n in layers:
        np.testing.assert_allclose(two[n], np.asarray(step1[n].dense()) - 0.5 * np.asarray(g[n]), rtol=1e-4, atol=1e-6)
    with pytest.raises(MendJaxError, match="margin must be a finite"):
        iterated_mend_edits(editor, cfg, params, ep, es, batch, steps=2, until_margin=float("nan"))


def test_min_steps_are_taken_by_every_edit_whatever_its_margin():
    """``iterated_mend_edits(min_steps=N)``: with a margin every edit holds by after step 1, the first N steps
    are still the plain iteration's (every example's rows) and the rule stops the rest; with a margin no edit
    reaches it changes nothing; N outside 1..steps is an error naming both numbers."""
    from mend_jax.editing import iterated_mend_edits
    from mend_jax.errors import MendJaxError
    cfg, params, batch, layers, editor, ep, es, rows = identity_editing_setup()
    dense = lambda edits: {n: np.asarray(edits[n].dense()) for n in layers}  # noqa: E731
    run = lambda **kw: iterated_mend_edits(editor, cfg, params, ep, es, batch, rows=rows, **kw)  # noqa: E731
    plain2, plain3 = dense(run(steps=2)), dense(run(steps=3))
    held = run(steps=3, until_margin=-1e6, min_steps=2)  # every edit holds: step 3 is skipped, step 2 is not
    assert next(iter(held.values())).a.shape[0] == 2 * rows
    for n in layers:
        np.testing.assert_allclose(dense(held)[n], plain2[n], rtol=1e-6, atol=1e-8)
    for n, d in dense(run(steps=3, until_margin=1e6, min_steps=2)).items():
        np.testing.assert_allclose(d, plain3[n], rtol=1e-5, atol=1e-7)
    for bad in (0, 4):
        with pytest.raises(MendJaxError, match=f"min_steps={bad}.*most steps \\(3\\)"):
            run(steps=3, until_margin=1.0, min_steps=bad)


def test_truncated_edits_are_the_best_low_rank_approximation_and_iterated_steps_see_them():
    """``truncated_edits(edits, k)``: each layer's update equals its rank-k SVD truncation (row count unchanged,
    rows past k zero); k at least the update's rank changes nothing; iterated steps with ``max_rank`` truncate
    after every step, so step 2's gradient is taken at the truncated step-1 edit."""
    from mend_jax.editing import iterated_mend_edits, mend_edits
    from mend_jax.editing.edit import truncated_edits
    from mend_jax.errors import MendJaxError
    cfg, params, batch, layers, editor, ep, es, rows = identity_editing_setup()
    step1 = mend_edits(editor, cfg, params, ep, es, batch, rows=rows)
    for k in (1, 2):
        cut = truncated_edits(step1, k)
        for n in layers:
            full = np.asarray(step1[n].dense(), np.float64)
            u, s, vt = np.linalg.svd(full)
            assert s[k] > 1e-3 * s[0], "the test needs updates of rank > k"
            np.testing.assert_allclose(np.asarray(cut[n].dense()), (u[:, :k] * s[:k]) @ vt[:k], rtol=1e-4,
                                       atol=1e-5 * s[0])
            assert cut[n].a.shape == step1[n].a.shape and not np.asarray(cut[n].a)[k:].any()
    whole = truncated_edits(step1, rows)
    for n in layers:
        np.testing.assert_allclose(np.asarray(whole[n].dense()), np.asarray(step1[n].dense()), rtol=1e-4, atol=1e-6)

    two = iterated_mend_edits(editor, cfg, params, ep, es, batch, steps=2, rows=rows, max_rank=1)
    first = truncated_edits(step1, 1)
    edited = apply_edits(params, first)
    f, _ = loss_wrt_kernels(edited, cfg, batch, layers)
    g = jax.grad(f)({n: get_module(edited, n)["kernel"] for n in layers})
    for n in layers:
        ref = np.asarray(first[n].dense()) - 0.5 * np.asarray(g[n], np.float64)
        u, s, vt = np.linalg.svd(ref)
        np.testing.assert_allclose(np.asarray(two[n].dense()), s[0] * np.outer(u[:, 0], vt[0]), rtol=1e-3,
                                   atol=1e-4 * s[0])
    with pytest.raises(MendJaxError, match="rank must be >= 1"):
        truncated_edits(step1, 0)
    with pytest.raises(MendJaxError, match="max_rank"):
        iterated_mend_edits(editor, cfg, params, ep, es, batch, steps=2, max_rank=0)


def test_step_sizes_scale_with_the_number_of_edits_when_the_editor_learns_their_exponent():
    """``edit_lr_k_power``: k edits at once take the step ``alpha_l * k**p_l``; without it (the paper) one step
    size for every k. An example without target tokens (bucket padding) is not an edit."""
    import dataclasses

    from mend_jax.editing import mend_edits, step_sizes
    cfg = CONFIGS["llama"]
    params = random_params(cfg)
    layers = edit_layers(cfg)
    plain = identity_editor(EditorSpec.from_model(family_for(cfg).linear_layers(cfg), layers), edit_lr=0.1)
    powered = dataclasses.replace(plain, k_power=True)
    ep, es = plain.init(jax.random.key(0))
    pp, _ = powered.init(jax.random.key(0))
    assert "edit_lr_k_power" not in ep and np.all(np.asarray(pp["edit_lr_k_power"]) == 0)
    power = jnp.linspace(-0.5, 0.5, len(layers))
    pp = {**pp, "edit_lr_k_power": power}
    np.testing.assert_allclose(step_sizes(pp, 3.0), 0.1 * 3.0 ** power, rtol=1e-6)
    np.testing.assert_allclose(step_sizes(pp, jnp.array([1.0, 4.0])), 0.1 * jnp.stack([4.0 ** (0 * power),
                                                                                          4.0 ** power]), rtol=1e-6)
    np.testing.assert_allclose(step_sizes(ep, 5.0), ep["edit_lrs"])
    batch = make_batch(cfg, b=3)
    extra = jax.tree.map(lambda x: x[:1], batch)  # a 4th example without target tokens: no edit
    extra = TokenBatch(extra.input_ids, extra.attention_mask, extra.target_pos, extra.target_ids,
                       jnp.zeros_like(extra.target_mask))
    padded = jax.tree.map(lambda x, y: jnp.concatenate([x, y]), batch, extra)
    a = mend_edits(plain, cfg, params, ep, es, batch)
    b = mend_edits(powered, cfg, params, pp, es, padded)
    for i, n in enumerate(layers):
        np.testing.assert_allclose(b[n].dense(), a[n].dense() * 3.0 ** float(power[i]), rtol=1e-5, atol=1e-7)
