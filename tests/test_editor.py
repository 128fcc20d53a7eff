"""The MEND editor network: identity at init, masked running statistics, variants, and that it can learn."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mend_jax.editing.editor import (EditorConfig, EditorSpec, custom_editor, init_stats, merge_stats, mend_editor,
                                     normalize, stats_initialised, stats_std)

SPEC = EditorSpec(layers=("l.0.up", "l.0.down", "l.1.up", "l.1.down"), shapes=((6, 10), (10, 6), (6, 10), (10, 6)))


def rows(seed, r, d):
    return jax.random.normal(jax.random.key(seed), (r, d)) * 3 + 1


def test_sharing_and_modes():
    assert SPEC.net_keys == ("6x10", "10x6")
    assert [SPEC.mode(i) for i in range(4)] == [0, 0, 1, 1]
    assert SPEC.n_modes("6x10") == 2
    unshared = EditorSpec(SPEC.layers, SPEC.shapes, shared=False)
    assert unshared.net_keys == ("layer0", "layer1", "layer2", "layer3")


@pytest.mark.parametrize("kw", [dict(), dict(combine=False), dict(combine=False, x_only=True),
                                dict(combine=False, delta_only=True), dict(combine=False, one_sided=True),
                                dict(n_hidden=2, rank=3), dict(shared=False)])
def test_identity_at_init_without_norm(kw):
    ed = mend_editor(SPEC, EditorConfig(norm=False, **kw))
    params, state = ed.init(jax.random.key(0))
    u, d = rows(1, 7, 6), rows(2, 7, 10)
    ut, dt = ed.apply(params["nets"], state, u, d, 0)
    np.testing.assert_allclose(ut, u, rtol=1e-6)
    np.testing.assert_allclose(dt, d, rtol=1e-6)


def test_with_norm_the_output_is_the_normalised_input_at_init():
    ed = mend_editor(SPEC, EditorConfig())
    params, state = ed.init(jax.random.key(0))
    u, d = rows(1, 9, 6), rows(2, 9, 10)
    mask = jnp.ones(9)
    state = ed.update_state(state, {n: (u if i % 2 == 0 else d) for i, n in enumerate(SPEC.layers)},
                            {n: (d if i % 2 == 0 else u) for i, n in enumerate(SPEC.layers)},
                            {n: mask for n in SPEC.layers})
    ut, dt = ed.apply(params["nets"], state, u, d, 0)
    np.testing.assert_allclose(ut, normalize(state["6x10"]["u"], u), rtol=1e-5, atol=1e-6)
    # pooled over the two layers of the same shape: 18 rows
    assert float(state["6x10"]["u"]["count"]) == 18


def test_masked_chan_merge_equals_sequential_welford_over_kept_rows():
    x = np.asarray(rows(3, 40, 5))
    mask = (np.arange(40) % 3 != 0).astype(np.float32)
    st = init_stats(5)
    for chunk in range(0, 40, 7):  # several merges, as several training steps
        st = merge_stats(st, jnp.asarray(x[chunk:chunk + 7]), jnp.asarray(mask[chunk:chunk + 7]))
    kept = x[mask > 0]
    np.testing.assert_allclose(st["mean"], kept.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats_std(st), kept.std(0, ddof=1), rtol=1e-4)
    assert float(st["count"]) == len(kept)


def test_uninitialised_statistics_are_reported():
    ed = mend_editor(SPEC, EditorConfig())
    _, state = ed.init(jax.random.key(0))
    assert not stats_initialised(state)


def test_the_editor_has_a_gradient_at_identity_init():
    """U = 0 makes every pre-activation exactly 0: the ReLU must pass gradient there (as torch.clamp does),
    or the editor never leaves the identity."""
    ed = mend_editor(SPEC, EditorConfig(norm=False, rank=4))
    params, state = ed.init(jax.random.key(0))
    u, d = rows(1, 5, 6), rows(2, 5, 10)
    target = jnp.ones((6, 10))

    def loss(nets):
        ut, dt = ed.apply(nets, state, u, d, 2)  # "l.1.up": net 6x10, mode 1
        return jnp.sum((ut.T @ dt - target) ** 2)

    g = jax.grad(loss)(params["nets"])
    up_grad = g["6x10"]["joint"][0]["up"]
    assert float(jnp.abs(up_grad).max()) > 0
    assert float(jnp.abs(g["6x10"]["joint"][0]["mode_shift"][1]).max()) > 0  # its own mode only ...
    assert float(jnp.abs(g["6x10"]["joint"][0]["mode_shift"][0]).max()) == 0  # ... not the other layer's


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="combine"):
        EditorConfig(combine=True, x_only=True)
    with pytest.raises(ValueError, match="at most one"):
        EditorConfig(combine=False, x_only=True, delta_only=True)
    with pytest.raises(KeyError, match="not linear layers"):
        EditorSpec.from_model({"a": (1, 2)}, ["b"])
    from mend_jax.errors import MendJaxError
    with pytest.raises(MendJaxError, match=r"use names like \['a'\]"):
        EditorSpec.from_model({"a": (1, 2)}, ["b"])


def test_custom_transformation_plugs_in():
    def halve_delta(nets, state, u, delta, layer):
        return u, delta * 0.5
    ed = custom_editor(SPEC, halve_delta, edit_lr=0.3)
    params, state = ed.init(jax.random.key(0))
    assert float(params["edit_lrs"][0]) == pytest.approx(0.3)
    u, d = rows(1, 3, 6), rows(2, 3, 10)
    np.testing.assert_allclose(ed.apply(params["nets"], state, u, d, 0)[1], d * 0.5)


def test_layers_sharing_a_net_in_one_pass_equal_one_layer_at_a_time():
    """``Editor.apply_all`` (MEND: the rows of every layer sharing a net concatenated, one mode per row) gives what
    ``apply`` gives layer by layer, after training has moved the per-mode scales and shifts apart."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from mend_jax.editing import EditorConfig, EditorSpec, mend_editor
    spec = EditorSpec(("a", "b", "c"), ((6, 10), (10, 6), (6, 10)))
    ed = mend_editor(spec, EditorConfig(rank=4))
    params, state = ed.init(jax.random.key(0))
    keys = iter(jax.random.split(jax.random.key(1), 64))
    params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape), params)
    u = {n: jax.random.normal(next(keys), (5, spec.shapes[i][0])) for i, n in enumerate(spec.layers)}
    d = {n: jax.random.normal(next(keys), (5, spec.shapes[i][1])) for i, n in enumerate(spec.layers)}
    state = ed.update_state(state, u, d, {n: jnp.ones(5) for n in spec.layers})
    together = ed.apply_all(params["nets"], state, u, d)
    for i, n in enumerate(spec.layers):
        ut, dt = ed.apply(params["nets"], state, u[n], d[n], i)
        np.testing.assert_allclose(together[n][0], ut, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(together[n][1], dt, rtol=1e-5, atol=1e-6)
    # the modes of "a" and "c" differ, so the test would see a mix-up
    assert float(jnp.abs(together["a"][0] - ed.apply(params["nets"], state, u["a"], d["a"], 2)[0]).max()) > 1e-3
