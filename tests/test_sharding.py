"""Sharded == unsharded on 8 fake CPU devices (conftest), and the layouts the rules promise.

Every step runs on meshes (8,1,1), (1,4,2), (2,2,2) and on a 1-device mesh; values must agree to ``rtol = 1e-5``
and ``atol = 1e-5 * max(1, max|reference|)`` (float32, ``jax_default_matmul_precision=highest``), i.e. to 1e-5 of
each array's own scale. They are not bitwise equal: a sharded contraction sums per-device partial products and then
all-reduces them, and even a data-only split changes the shapes XLA's CPU matmuls are tiled for; both change the
order of float additions. Observed: <= 2e-6 of scale everywhere (pseudo-factors of magnitude ~20 differ by ~3e-5).
Compiles use ``xla_backend_optimization_level=0`` (same numbers, half the compile time on 2 cores).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import tiny_llama_config
from mend_jax import sharding as shd
from mend_jax.editing import EditorConfig, EditorSpec, TokenBatch, mend_editor
from mend_jax.editing.edit import edit_rows
from mend_jax.models import family_for
from mend_jax.sharded_steps import (ShardedEditing, meta_batch_shardings, place_train_state, sharded_train_step,
                                    train_state_shardings)

MESHES = [(8, 1, 1), (1, 4, 2), (2, 2, 2)]
RTOL = 1e-5
FAST = {"xla_backend_optimization_level": 0}
CFG = tiny_llama_config(hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2, head_dim=8,
                        vocab_size=128, num_layers=2)
FAM = family_for(CFG)
LAYERS = FAM.default_edit_layers(CFG, n_blocks=1)  # gate/up (32x64) + down (64x32): two shared nets
B, T, K = 8, 12, 3


def close(actual, ref, err_msg=""):
    """Equal to 1e-5 relative, and to 1e-5 of the reference array's largest magnitude (module docstring)."""
    ref = np.asarray(ref)
    scale = max(1.0, float(np.abs(ref).max())) if ref.size else 1.0
    np.testing.assert_allclose(np.asarray(actual), ref, rtol=RTOL, atol=RTOL * scale, err_msg=err_msg)


def run(jitted, *args):
    return jitted.lower(*args).compile(compiler_options=FAST)(*args)


def make_batch(seed, b=B, t=T, k=K):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, CFG.vocab_size, (b, t)).astype(np.int32)
    mask = np.zeros((b, t), np.int32)
    tpos = np.zeros((b, k), np.int32)
    tids = np.zeros((b, k), np.int32)
    tmask = np.zeros((b, k), np.float32)
    for i in range(b):
        length = t - (i % 4)
        n = 1 + i % k
        mask[i, :length] = 1
        ids[i, length:] = 0
        p = length - n
        tpos[i, :n] = np.arange(p - 1, p - 1 + n)
        tids[i, :n] = ids[i, p:p + n]
        tmask[i, :n] = 1
    return TokenBatch(*(jnp.asarray(x) for x in (ids, mask, tpos, tids, tmask)))


def numpy_params(cfg, seed=0):
    """Like ``conftest.random_params`` (std 0.3 matrices, norms ~1 +- 0.1) but drawn with numpy: instant, where
    jax's RNG costs seconds of compilation or eager dispatch on 2 cores."""
    rng = np.random.default_rng(seed)
    shapes = family_for(cfg).param_shapes(cfg)
    return jax.tree.map(lambda s: jnp.asarray((1.0 + 0.1 * rng.standard_normal(s.shape)) if len(s.shape) == 1
                                              else 0.3 * rng.standard_normal(s.shape), jnp.float32), shapes)


def make_editor():
    spec = EditorSpec.from_model(FAM.linear_layers(CFG), LAYERS)
    return mend_editor(spec, EditorConfig(rank=8))


@pytest.fixture(scope="module")
def setup():
    """Base params, an editor that is *not* the identity (random ``up``), statistics fed with real factors, and a
    probe batch whose first half targets the base model's own predictions (so accuracies are not all zero)."""
    from mend_jax.editing import capture_factors
    params = numpy_params(CFG)
    editor = make_editor()

    def prepare(params, batch, probe):
        eparams, estate = editor.init(jax.random.key(1))
        leaves, tdef = jax.tree.flatten_with_path(eparams)
        keys = jax.random.split(jax.random.key(2), len(leaves))
        eparams = jax.tree.unflatten(tdef, [x + 0.05 * jax.random.normal(k, x.shape)
                                            if "up" in jax.tree_util.keystr(p) else x
                                            for k, (p, x) in zip(keys, leaves)])
        eparams["edit_lrs"] = jnp.full_like(eparams["edit_lrs"], 1e-3)  # a realistic edit size vs the weights
        _, f = capture_factors(params, CFG, batch, LAYERS)
        rows = {n: edit_rows(f, n) for n in LAYERS}
        estate = editor.update_state(estate, {n: r[0] for n, r in rows.items()},
                                     {n: r[1] for n, r in rows.items()}, {n: r[2] for n, r in rows.items()})
        logits = FAM.forward(params, CFG, probe.input_ids, probe.attention_mask, logits_at=probe.target_pos)
        pred = jnp.argmax(logits, -1)
        tids = jnp.where(jnp.arange(B)[:, None] < B // 2, pred, probe.target_ids) * (probe.target_mask > 0)
        probe = TokenBatch(probe.input_ids, probe.attention_mask, probe.target_pos, tids.astype(jnp.int32),
                           probe.target_mask)
        return eparams, estate, probe, logits

    eparams, estate, probe, base_logits = run(jax.jit(prepare), params, make_batch(7), make_batch(1))
    return params, editor, eparams, estate, probe, base_logits


def editing_outputs(mesh_shape, setup):
    params, editor, eparams, estate, probe, _ = setup
    mesh = shd.make_mesh(mesh_shape)
    se = ShardedEditing(CFG, mesh, LAYERS, B, editor)
    p = shd.shard_params(params, se.param_sh)
    batch = make_batch(0)
    logits = run(se.forward, p, batch.input_ids, batch.attention_mask)
    loss, factors = run(se.capture, p, batch)
    edits = run(se.compute_edits, eparams, estate, factors)
    edited = run(se.edited_logits, p, edits, probe)
    metrics = run(se.evaluate_edited, p, edits, probe)
    return {"logits": logits, "loss": loss, "factors": factors, "edits": edits, "edited": edited, "metrics": metrics}


@pytest.fixture(scope="module")
def baseline(setup):
    return jax.tree.map(np.asarray, editing_outputs((1, 1, 1), setup))


def _spec(mesh_shape, *dims):
    """Expected spec: mesh axes of size 1 are left out (as ``logical_to_spec`` does)."""
    size = dict(zip(shd.MESH_AXES, mesh_shape))
    out = []
    for d in dims:
        axes = tuple(a for a in ((d,) if isinstance(d, str) else (d or ())) if size[a] > 1)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    while out and out[-1] is None:
        out.pop()
    return P(*out)


@pytest.mark.parametrize("mesh_shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_editing_steps_match_one_device(mesh_shape, setup, baseline):
    out = editing_outputs(mesh_shape, setup)
    jax.tree.map(close, out, baseline)
    # the edit really does something and the metrics are not all zero, so the comparison is not vacuous
    assert float(np.abs(baseline["edited"] - np.asarray(setup[-1])).max()) > 1e-2
    assert 0 < baseline["metrics"]["token_acc"].mean() < 1

    s = lambda *d: _spec(mesh_shape, *d)  # noqa: E731
    gate, down = LAYERS[0], LAYERS[2]
    assert out["logits"].sharding.spec == s("data", None, "tensor")
    assert out["loss"].sharding.spec == P()
    f = out["factors"]
    assert f.u[gate].sharding.spec == s("data", None, "fsdp")        # embed -> fsdp, like gate's kernel in-dim
    assert f.delta[gate].sharding.spec == s("data", None, "tensor")  # mlp -> tensor, like its out-dim
    assert f.u[down].sharding.spec == s("data", None, "tensor")
    assert f.delta[down].sharding.spec == s("data", None, "fsdp")
    assert f.mask[gate].sharding.spec == s("data")
    e = out["edits"]
    assert e[gate].a.sharding.spec == s(None, "fsdp") and e[gate].b.sharding.spec == s(None, "tensor")
    assert e[down].a.sharding.spec == s(None, "tensor") and e[down].b.sharding.spec == s(None, "fsdp")
    assert e[gate].scale.sharding.spec == P()
    assert out["edited"].sharding.spec == s("data", None, "tensor")
    assert out["metrics"]["token_acc"].sharding.spec == s("data")
    assert out["metrics"]["nll"].sharding.spec == P()


def test_materialised_update_lands_in_the_kernel_sharding_without_communication(setup):
    """``u~^T delta~`` is formed where the kernel lives (no collective in the compiled step), the materialised model
    keeps the base model's shardings, and evaluating it equals evaluating the low-rank edit (both sharded)."""
    params, editor, eparams, estate, probe, _ = setup
    mesh = shd.make_mesh((2, 2, 2))
    se = ShardedEditing(CFG, mesh, LAYERS, B, editor)
    p = shd.shard_params(params, se.param_sh)
    _, factors = run(se.capture, p, make_batch(0))
    edits = run(se.compute_edits, eparams, estate, factors)
    hlo = se.apply_edits.lower(p, edits).compile(compiler_options=FAST).as_text()
    for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter"):
        assert op not in hlo, f"apply_edits communicates ({op})"
    new = se.apply_edits(p, edits)
    from mend_jax.models import get_module
    for n in LAYERS:
        assert get_module(new, n)["kernel"].sharding == get_module(se.param_sh, n)["kernel"]
        want = get_module(params, n)["kernel"] + np.asarray(edits[n].dense())
        close(get_module(new, n)["kernel"], want)
    dense_metrics = run(se.evaluate, new, probe)
    low_rank_metrics = run(se.evaluate_edited, p, edits, probe)
    jax.tree.map(close, dense_metrics, jax.tree.map(np.asarray, low_rank_metrics))
    assert dense_metrics["token_acc"].sharding.spec == P("data")


# ------------------------------------------------------------------------------------------------ training
N_PROBLEMS = 8


def meta_batch(step):
    """``N_PROBLEMS`` edit problems of one sequence each (numpy, stacked on a leading axis)."""
    from mend_jax.training.step import MetaBatch

    def stack(seed):
        rows = [make_batch(seed * 100 + j, b=1) for j in range(N_PROBLEMS)]
        return jax.tree.map(lambda *x: np.stack([np.asarray(a) for a in x]), *rows)
    return MetaBatch(stack(3 * step), stack(3 * step + 1), stack(3 * step + 2))


@pytest.fixture(scope="module")
def train_setup(setup):
    from mend_jax.training.step import init_train_state, make_optimizer
    params, editor = setup[:2]
    tx = make_optimizer(1e-3, 1e-3, 100.0)
    ts0 = jax.tree.map(np.asarray, run(jax.jit(lambda: init_train_state(editor, tx, jax.random.key(0)))))
    return params, editor, tx, ts0, [meta_batch(i) for i in range(3)]


def train_three_steps(mesh_shape, train_setup):
    params, editor, tx, ts0, batches = train_setup
    mesh = shd.make_mesh(mesh_shape)
    ts_sh = train_state_shardings(editor, CFG, tx, mesh)
    ts = place_train_state(ts0, ts_sh)
    p = shd.shard_params(params, shd.param_shardings(CFG, mesh))
    step = sharded_train_step(editor, CFG, tx, mesh, N_PROBLEMS)
    compiled = step.lower(ts, p, batches[0]).compile(compiler_options=FAST)
    metrics = []
    for b in batches:
        ts, m = compiled(ts, p, jax.device_put(b, meta_batch_shardings(mesh, N_PROBLEMS)))
        metrics.append(m)
    return ts, metrics, ts_sh


@pytest.fixture(scope="module")
def train_baseline(train_setup):
    ts, metrics, _ = train_three_steps((1, 1, 1), train_setup)
    return jax.tree.map(np.asarray, (ts, metrics))


@pytest.mark.parametrize("mesh_shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_three_training_steps_match_one_device(mesh_shape, train_setup, train_baseline):
    ts, metrics, ts_sh = train_three_steps(mesh_shape, train_setup)
    ref_ts, ref_metrics = train_baseline
    for m, r in zip(metrics, ref_metrics):
        for k in r:
            close(m[k], r[k], err_msg=k)
    jax.tree.map(close, ts, ref_ts)
    assert int(ts["step"]) == 3
    assert not np.allclose(np.asarray(ref_ts["params"]["edit_lrs"]), 1e-4)  # training moved something
    # the state comes back in the shardings it went in with (it is donated and reused)
    jax.tree.map(lambda a, s: a.sharding.is_equivalent_to(s, a.ndim) or pytest.fail(f"{a.sharding} != {s}"),
                 ts, ts_sh)
    w = shd.MESH_AXES[1:]
    net = ts["params"]["nets"]["32x64"]["joint"][0]
    expect = _spec(mesh_shape, None, w)
    assert net["up"].sharding.spec == expect and net["down"].sharding.spec == _spec(mesh_shape, w)


# ------------------------------------------------------------------------------------- rules (no compiling)
def test_rules_and_divisibility():
    mesh = shd.make_mesh((1, 4, 2))
    assert shd.logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
    assert shd.logical_to_spec(("batch", "length", "act_vocab")) == P("data", None, "tensor")
    # mesh given: size-1 axes dropped; shape given: non-divisible axes dropped (replicated), not an error
    assert shd.logical_to_spec(("batch", None), mesh=mesh) == P()
    assert shd.logical_to_spec(("vocab", "embed"), mesh=mesh, shape=(101, 32)) == P(None, "fsdp")
    assert shd.logical_to_spec(("editor_width",), mesh=mesh, shape=(96,)) == P(("fsdp", "tensor"))
    assert shd.logical_to_spec(("editor_width",), mesh=mesh, shape=(12,)) == P("fsdp")
    assert shd.logical_to_spec(("editor_width",), mesh=mesh, shape=(6,)) == P("tensor")
    with pytest.raises(KeyError, match="no sharding rule"):
        shd.logical_to_spec(("nonsense",))
    with pytest.raises(ValueError, match="used by both"):
        shd.logical_to_spec(("mlp", "vocab"))

    specs = shd.spec_tree(shd.param_shardings(CFG, mesh))
    layer = specs["model"]["layers"][0]
    assert layer["self_attn"]["q_proj"]["kernel"] == P("fsdp", "tensor")
    assert layer["self_attn"]["o_proj"]["kernel"] == P("tensor", "fsdp")
    assert layer["mlp"]["down_proj"]["kernel"] == P("tensor", "fsdp")
    assert layer["input_layernorm"]["scale"] == P()
    assert specs["model"]["embed_tokens"]["embedding"] == P("tensor", "fsdp")
    assert specs["lm_head"]["kernel"] == P("fsdp", "tensor")
    odd = tiny_llama_config(vocab_size=101)
    assert shd.spec_tree(shd.param_shardings(odd, mesh))["lm_head"]["kernel"] == P("fsdp")

    from conftest import tiny_gpt2_config
    g = shd.spec_tree(shd.param_shardings(tiny_gpt2_config(), mesh))["transformer"]
    assert g["h"][0]["attn"]["c_attn"]["kernel"] == P("fsdp", "tensor")
    assert g["h"][0]["mlp"]["c_fc"]["bias"] == P("tensor")
    assert g["wpe"]["embedding"] == P(None, "fsdp")

    p_sh, s_sh = shd.editor_shardings(make_editor(), CFG, mesh)
    net = shd.spec_tree(p_sh)["nets"]["32x64"]["joint"][0]
    assert net == {"down": P(("fsdp", "tensor")), "up": P(None, ("fsdp", "tensor")), "bias": P(("fsdp", "tensor")),
                   "mode_scale": P(None, ("fsdp", "tensor")), "mode_shift": P(None, ("fsdp", "tensor"))}
    st = shd.spec_tree(s_sh)
    assert st["32x64"]["u"]["mean"] == P("fsdp") and st["32x64"]["delta"]["m2"] == P("tensor")
    assert st["64x32"]["u"]["mean"] == P("tensor") and st["64x32"]["u"]["count"] == P()


def test_mesh_helpers():
    m = shd.make_mesh("2x-1x2")
    assert dict(m.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in m.axis_types)
    assert shd.make_mesh((1, 1, 1)).devices.size == 1
    with pytest.raises(ValueError, match="needs 16 devices"):
        shd.make_mesh("2x4x2")
    with pytest.raises(ValueError, match="three integers"):
        shd.parse_mesh_shape("2xfoo")
    with pytest.raises(ValueError, match="3 sizes"):
        shd.parse_mesh_shape((4, 2))
    assert shd.auto_mesh_shape(256) == (1, 32, 8)
    assert shd.auto_mesh_shape(12) == (1, 3, 4)
    assert shd.auto_mesh_shape(7) == (1, 7, 1)


def test_multi_host_helpers():
    from mend_jax.sharding import _launched_multi_host as multi
    assert not multi({})
    assert not multi({"TPU_WORKER_HOSTNAMES": "10.0.0.2"})
    assert multi({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"})
    assert multi({"SLURM_NTASKS": "4"}) and multi({"JAX_COORDINATOR_ADDRESS": "h:1234"})
    assert not multi({"SLURM_NTASKS": "4", "MEND_JAX_DISTRIBUTED": "0"})
    assert shd.initialize_distributed({}) is False  # single process: nothing to do
    assert shd.is_main_process()
    assert shd.process_batch_slice(8, 1, 4) == slice(2, 4)
    with pytest.raises(ValueError, match="not divisible"):
        shd.process_batch_slice(6, 0, 4)
    mesh = shd.make_mesh((2, 2, 2))
    s = shd.batch_sharding(mesh, 8)
    local = {"x": np.arange(16).reshape(8, 2)}
    g = shd.global_batch_from_process_rows(local, s, 8)
    assert g["x"].sharding == s and np.array_equal(np.asarray(g["x"]), local["x"])
    full = np.arange(64, dtype=np.float32).reshape(8, 8)
    sh = shd.named(mesh, ("embed", "mlp"), full.shape)
    arr = shd.place_from_callback(full.shape, np.float32, sh, lambda idx: full[idx])
    assert arr.sharding == sh and np.array_equal(np.asarray(arr), full)


@pytest.mark.parametrize("mesh_shape", [(1, 4, 2), (2, 2, 2)])
def test_sharded_load_reads_only_each_devices_slice(mesh_shape, monkeypatch):
    """``load_model(shardings=...)`` equals the plain load, lands in the rules' shardings, and reads every split
    tensor from the file slice by slice (never whole): the host never holds a sharded tensor."""
    from conftest import GOLDEN
    from mend_jax.weights import load_model
    from mend_jax.weights.lazy_state import LazyTensor
    folder = str(GOLDEN / "tiny_llama")
    plain = load_model(folder, progress=False, with_tokenizer=False)
    largest_read = {}
    read = LazyTensor.__getitem__

    def spy(self, index):
        out = read(self, index)
        largest_read[self.name] = max(largest_read.get(self.name, 0), out.size)
        return out
    monkeypatch.setattr(LazyTensor, "__getitem__", spy)
    mesh = shd.make_mesh(mesh_shape)
    sharded = load_model(folder, progress=False, with_tokenizer=False, shardings=shd.loader_shardings(mesh))
    want = jax.tree.leaves(shd.param_shardings(plain.config, mesh))
    split = 0
    for (path, a), b, s in zip(jax.tree.leaves_with_path(sharded.params), jax.tree.leaves(plain.params), want):
        assert a.sharding.is_equivalent_to(s, a.ndim), jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
        if not a.sharding.is_fully_replicated:
            split += 1
    assert split >= 6  # the attention and MLP kernels at least
    full_size = {k: v.size for k, v in family_for(plain.config).to_hf_state(plain.params, plain.config).items()}
    assert largest_read.keys() == full_size.keys()
    n_whole = sum(1 for name, size in largest_read.items() if size == full_size[name])
    assert n_whole == len(want) - split, "only fully replicated tensors may be read whole"
