"""The one place that declares how arrays are laid out on a device mesh.

Mesh
----
Three named axes, always in this order: ``("data", "fsdp", "tensor")``.

- ``data``   — independent replicas of the whole computation; only the batch is split over it.
- ``fsdp``   — the *second* weight axis: every large matrix has its ``embed`` dimension split over it.
- ``tensor`` — the *first* weight axis: ``mlp`` / ``heads`` / ``kv_heads`` / ``qkv`` / ``vocab`` dimensions.

The axes are created with ``AxisType.Auto`` (set explicitly: ``jax.make_mesh`` defaults to ``Explicit`` since jax
0.9, where a plain ``x @ W`` over a sharded contracting dimension raises ``ShardingTypeError``). In Auto mode the
shardings below are *constraints at the jit boundary*; XLA's SPMD partitioner picks the collectives in between.

Why weights are stationary and 2-D sharded (and the batch is only on ``data``)
-----------------------------------------------------------------------------
MEND's batches are tiny: an edit step sees ~1-50 sequences of <=128 tokens (a few thousand tokens across the whole
mesh). FSDP (weights sharded, batch sharded over the same axis) all-gathers every weight matrix at every layer; it
only pays off when each device holds thousands of tokens. For editing, moving the *activations* is far cheaper than
moving the weights. So every large matrix is split over ``fsdp`` x ``tensor`` (2-D weight-stationary: the weights
never move, and a model's weights take ``1 / (fsdp * tensor)`` of their size per device) and the batch is split over
``data`` only, replicated across ``fsdp``/``tensor``. The ``fsdp`` axis keeps its name because the same mesh can run
a real FSDP layout by mapping ``batch`` to ``("data", "fsdp")`` in a custom rules table (pass ``rules=``).

Why factors / pseudo-factors / editors are laid out the way they are
--------------------------------------------------------------------
For an edited kernel ``W [in, out]`` sharded ``P(a_in, a_out)``:

- factors ``u [B, T, in]`` and ``delta [B, T, out]`` (``Factors``) are ``P(batch, None, a_in)`` and
  ``P(batch, None, a_out)``: their feature dimension is split exactly like the kernel's matching dimension, so the
  low-rank forward ``x @ u~^T`` and the outer products ``u^T delta`` read only local slices;
- pseudo-factors (the editor's outputs ``u~ [R, in]``, ``delta~ [R, out]``, stored in ``LowRankEdit.a`` / ``.b``)
  are ``P(None, a_in)`` / ``P(None, a_out)``: the row axis ``R`` (edit tokens) is *replicated* (it is small), so the
  update ``einsum("ri,ro->io", u~, delta~)`` contracts a replicated axis and lands directly in ``P(a_in, a_out)``,
  the weight's own sharding, with no communication at all and without ever gathering ``W``;
- editor networks act on the combined width ``D = in + out``. Their matrices ``down [D, r]`` / ``up [r, D]`` are
  split on ``D`` over *both* model axes (``editor_width -> ("fsdp", "tensor")``) and replicated on the rank ``r``:
  ``x @ down`` then needs one all-reduce of an ``[R, r]`` block (tiny) and ``@ up`` is local. Splitting on ``D``
  keeps the editor (plus its two Adam moments) at ``1 / (fsdp * tensor)`` per device, which matters at 405B where
  one rank-1920 editor for a 16384x53248 matrix is 0.27 B parameters. The rank axis is replicated: sharding it
  instead would all-reduce the ``[R, D]`` output, ``D / r`` (~36x at 405B) more traffic.
- running statistics (editor state) of ``u`` / ``delta`` are split like the kernel's in / out dimension.

Non-divisible dimensions
------------------------
:func:`logical_to_spec` with a ``shape`` *drops* a mesh axis from a dimension it does not divide (and mesh axes of
size 1), rather than failing: the dimension is then replicated over that axis. This keeps odd vocabularies (e.g.
49152 / 128256 / 50400) and small KV projections working on any mesh; the cost is memory (a replicated slice) and it
shows up in the planner's numbers, not as a crash.

Multi-host
----------
:func:`initialize_distributed` (call it first, before anything touches ``jax.devices()``), :func:`is_main_process`,
:func:`log0` (print on process 0 only), :func:`process_batch_slice` / :func:`global_batch_from_process_rows` (each
host loads only its own rows) and :func:`place_from_callback` (each host reads only the slices of a weight its
devices hold). Orbax saves and restores are collective: call them on *every* process, not only on process 0.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES: tuple[str, str, str] = ("data", "fsdp", "tensor")

MeshAxes = str | tuple[str, ...] | None

#: Logical axis name -> mesh axis (or tuple of mesh axes, or None = replicated). See the module docstring for why.
LOGICAL_RULES: dict[str, MeshAxes] = {
    # ---- base-model parameters (names from ``models.*.param_axes``)
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "qkv": "tensor",
    "vocab": "tensor",
    "norm": None,
    "position": None,
    # ---- activations and batches
    "batch": "data",          # weight-stationary editing: the batch is split over data only (module docstring)
    "length": None,
    "targets": None,          # the K target positions of a TokenBatch
    "act_embed": None,        # hidden states are replicated over the model axes between layers
    "act_vocab": "tensor",    # logits keep the lm_head's vocab split
    # ---- editing
    "edit_rows": None,        # rows (edit tokens) of pseudo-factors: replicated so u~^T delta~ needs no reduction
    "editor_width": ("fsdp", "tensor"),  # the combined width D = in + out of an editor net
    "editor_rank": None,
    "edit_modes": None,
    "edit_layers": None,
}


# ------------------------------------------------------------------------------------------------------ mesh
def parse_mesh_shape(shape: str | Sequence[int]) -> tuple[int, int, int]:
    """``"1x4x2"`` / ``(1, 4, 2)`` -> ``(1, 4, 2)``; one entry may be ``-1`` (filled in by :func:`make_mesh`)."""
    if isinstance(shape, str):
        parts = shape.lower().replace("*", "x").split("x")
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"mesh shape {shape!r}: expected three integers like '1x4x2' (data x fsdp x tensor)") \
                from None
    else:
        dims = tuple(int(d) for d in shape)
    if len(dims) != 3:
        raise ValueError(f"mesh shape {shape!r}: expected 3 sizes (data, fsdp, tensor), got {len(dims)}")
    if sum(d == -1 for d in dims) > 1 or any(d == 0 or d < -1 for d in dims):
        raise ValueError(f"mesh shape {shape!r}: sizes must be positive (at most one -1 to fill in)")
    return dims  # type: ignore[return-value]


def make_mesh(shape: str | Sequence[int], devices: Sequence[Any] | None = None) -> Mesh:
    """A ``("data", "fsdp", "tensor")`` mesh with Auto axis types.

    ``shape``: ``(data, fsdp, tensor)`` or ``"1x4x2"``; one size may be -1 (the rest of the devices). ``devices``:
    default all devices; when the shape needs fewer, the first ``prod(shape)`` devices are used (tests use this for
    1-device baselines). On TPU ``jax.make_mesh`` orders devices to follow the physical torus.
    """
    dims = list(parse_mesh_shape(shape))
    devs = list(devices) if devices is not None else jax.devices()
    if -1 in dims:
        rest = int(np.prod([d for d in dims if d != -1]))
        if len(devs) % rest:
            raise ValueError(f"mesh shape {shape!r}: {len(devs)} devices are not divisible by {rest}")
        dims[dims.index(-1)] = len(devs) // rest
    n = int(np.prod(dims))
    if n > len(devs):
        raise ValueError(f"mesh shape {tuple(dims)} needs {n} devices but only {len(devs)} are available")
    return jax.make_mesh(tuple(dims), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devs[:n])


def auto_mesh_shape(n_devices: int, max_tensor: int = 8) -> tuple[int, int, int]:
    """The layout :func:`make_mesh` users get from a plain device count: ``(1, n / t, t)`` with ``t`` the largest
    power of two <= ``max_tensor`` that divides ``n``. All devices hold weights (2-D weight-stationary, memory first);
    ``tensor`` is capped because tensor-parallel collectives sit on every layer's critical path and want the fast
    nearest-neighbour links (8 chips is a ring on v5e/v5p). Use an explicit shape to add data parallelism."""
    if n_devices < 1:
        raise ValueError("need at least one device")
    t = 1
    while t * 2 <= max_tensor and n_devices % (t * 2) == 0:
        t *= 2
    return (1, n_devices // t, t)


# --------------------------------------------------------------------------------------------------- rules
def _as_tuple(x: MeshAxes) -> tuple[str, ...]:
    if x is None:
        return ()
    return (x,) if isinstance(x, str) else tuple(x)


def _is_axes_leaf(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(s, str) or s is None for s in x)


def logical_to_spec(axes: Sequence[str | None] | str, rules: Mapping[str, MeshAxes] | None = None, *,
                    mesh: Mesh | None = None, shape: Sequence[int] | None = None) -> P:
    """Logical axis names (one per array dimension; None = replicated) -> ``PartitionSpec``.

    Raises ``KeyError`` for a name the rules do not know and ``ValueError`` when two dimensions would use the same
    mesh axis. With ``mesh``, mesh axes of size 1 are left out. With ``mesh`` and ``shape``, a mesh axis that does
    not divide its dimension (after the axes before it in the same dimension) is dropped: that dimension is then
    replicated over it instead of failing.
    """
    rules = LOGICAL_RULES if rules is None else rules
    if isinstance(axes, str):
        axes = (axes,)
    if shape is not None and len(shape) != len(axes):
        raise ValueError(f"{len(axes)} logical axes {tuple(axes)} for an array of shape {tuple(shape)}")
    used: dict[str, str] = {}
    out: list[MeshAxes] = []
    for dim, name in enumerate(axes):
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no sharding rule (known: {', '.join(sorted(rules))})")
        kept: list[str] = []
        for ax in _as_tuple(rules[name]):
            if ax in used:
                raise ValueError(f"mesh axis {ax!r} is used by both {used[ax]!r} and {name!r} in {tuple(axes)}")
            used[ax] = name
            if mesh is not None:
                if ax not in mesh.shape:
                    raise KeyError(f"rule {name!r} -> {ax!r}: the mesh has no axis {ax!r} ({mesh.axis_names})")
                size = mesh.shape[ax]
                if size == 1:
                    continue
                if shape is not None and shape[dim] % (size * int(np.prod([mesh.shape[k] for k in kept]))):
                    continue
            kept.append(ax)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    while out and out[-1] is None:
        out.pop()
    return P(*out)


def named(mesh: Mesh, axes: Sequence[str | None] | str, shape: Sequence[int] | None = None,
          rules: Mapping[str, MeshAxes] | None = None) -> NamedSharding:
    """``NamedSharding`` for one array from its logical axes (see :func:`logical_to_spec`)."""
    return NamedSharding(mesh, logical_to_spec(axes, rules, mesh=mesh, shape=shape))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _family(cfg):
    from mend_jax.models import family_for
    return family_for(cfg)


def param_shardings(cfg_or_axes: Any, mesh: Mesh, rules: Mapping[str, MeshAxes] | None = None,
                    shapes: Any = None) -> Any:
    """``NamedSharding`` tree for a model's parameters.

    ``cfg_or_axes``: a model config (its family's ``param_axes`` / ``param_shapes`` are used, so non-divisible
    dimensions are detected) or a tree of logical-axes tuples (then pass ``shapes``, a matching tree of arrays or
    ``ShapeDtypeStruct``s, to get the same divisibility handling).
    """
    if hasattr(cfg_or_axes, "family"):
        fam = _family(cfg_or_axes)
        axes, shapes = fam.param_axes(cfg_or_axes), fam.param_shapes(cfg_or_axes)
    else:
        axes = cfg_or_axes
    if shapes is None:
        return jax.tree.map(lambda a: named(mesh, a, rules=rules), axes, is_leaf=_is_axes_leaf)
    return jax.tree.map(lambda a, s: named(mesh, a, tuple(s.shape), rules), axes, shapes, is_leaf=_is_axes_leaf)


def abstract_params(cfg, mesh: Mesh, dtype=jnp.bfloat16, rules: Mapping[str, MeshAxes] | None = None) -> Any:
    """``ShapeDtypeStruct`` tree with shardings: the base model without weights (planning, AOT compilation)."""
    shapes = _family(cfg).param_shapes(cfg, dtype)
    sh = param_shardings(cfg, mesh, rules)
    return jax.tree.map(lambda s, n: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=n), shapes, sh)


def shard_params(params: Any, shardings: Any) -> Any:
    """Place a parameter tree into its shardings (``jax.device_put`` leaf by leaf; only the shards move)."""
    return jax.tree.map(jax.device_put, params, shardings)


def loader_shardings(mesh: Mesh, rules: Mapping[str, MeshAxes] | None = None) -> Callable:
    """The ``shardings=`` callable for ``weights.load_model``: ``cfg -> param_shardings(cfg, mesh)``."""
    return lambda cfg: param_shardings(cfg, mesh, rules)


def kernel_axes(cfg, name: str) -> tuple[str, str]:
    """Logical ``(in, out)`` axes of the kernel of linear layer ``name`` (e.g. ``("embed", "mlp")``)."""
    from mend_jax.models import get_module
    return tuple(get_module(_family(cfg).param_axes(cfg), name)["kernel"])  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ batches/factors
def batch_sharding(mesh: Mesh, batch_size: int | None = None, ndim: int = 2,
                   rules: Mapping[str, MeshAxes] | None = None) -> NamedSharding:
    """Sharding of a ``[B, ...]`` batch array: ``B`` over the ``batch`` rule (``data``), the rest replicated.
    With ``batch_size``, a mesh axis that does not divide it is dropped."""
    axes = ("batch",) + (None,) * (ndim - 1)
    shape = None if batch_size is None else (batch_size,) + (1,) * (ndim - 1)
    return named(mesh, axes, shape, rules)


def token_batch_shardings(mesh: Mesh, batch_size: int | None = None,
                          rules: Mapping[str, MeshAxes] | None = None):
    """A ``TokenBatch`` whose fields are the shardings of a batch's fields (all ``[B, .]``)."""
    from mend_jax.editing.batch import TokenBatch
    s = batch_sharding(mesh, batch_size, 2, rules)
    return TokenBatch(s, s, s, s, s)


def factor_shardings(cfg, layers: Sequence[str], mesh: Mesh, batch_size: int | None = None,
                     rules: Mapping[str, MeshAxes] | None = None):
    """``Factors`` of shardings: ``u [B,T,in] -> P(batch, None, <kernel in-axis>)``,
    ``delta [B,T,out] -> P(batch, None, <kernel out-axis>)``, ``mask [B,T] -> P(batch)``."""
    from mend_jax.editing.factors import Factors
    shapes = _family(cfg).linear_layers(cfg)
    b = batch_size or 1
    u, d, m = {}, {}, {}
    for n in layers:
        a_in, a_out = kernel_axes(cfg, n)
        din, dout = shapes[n]
        bshape = (batch_size,) if batch_size else None
        u[n] = named(mesh, ("batch", "length", a_in), None if bshape is None else (b, 1, din), rules)
        d[n] = named(mesh, ("batch", "length", a_out), None if bshape is None else (b, 1, dout), rules)
        m[n] = batch_sharding(mesh, batch_size, 2, rules)
    return Factors(u, d, m)


def edit_shardings(cfg, layers: Sequence[str], mesh: Mesh, rules: Mapping[str, MeshAxes] | None = None) -> dict:
    """``{layer: LowRankEdit}`` of shardings for pseudo-factors: ``a = u~ [R, in] -> P(None, <in-axis>)``,
    ``b = delta~ [R, out] -> P(None, <out-axis>)`` (rows replicated), ``scale -> P()``. ``a^T b`` then lands in the
    kernel's own sharding without communication."""
    from mend_jax.models import LowRankEdit
    shapes = _family(cfg).linear_layers(cfg)
    out = {}
    for n in layers:
        a_in, a_out = kernel_axes(cfg, n)
        din, dout = shapes[n]
        out[n] = LowRankEdit(a=named(mesh, ("edit_rows", a_in), (1, din), rules),
                             b=named(mesh, ("edit_rows", a_out), (1, dout), rules),
                             scale=replicated(mesh))
    return out


def editor_shardings(editor, cfg, mesh: Mesh, rules: Mapping[str, MeshAxes] | None = None,
                     key: jax.Array | None = None) -> tuple[Any, Any]:
    """``(params_shardings, state_shardings)`` for an ``Editor``'s ``init`` output.

    MEND nets (``{"nets": {shape_key: {side: [layer, ...]}}, "edit_lrs": [L]}``): ``down [D, r] -> (width, rank)``,
    ``up [r, D] -> (rank, width)``, ``bias [D] -> (width,)``, ``mode_scale/shift [modes, D] -> (modes, width)``,
    ``edit_lrs`` replicated. State ``{shape_key: {"u"|"delta": {count, mean, m2}}}``: mean/m2 split like the
    kernel's in-axis (``u``) or out-axis (``delta``). Leaves of unknown editors are replicated.
    """
    params_abs, state_abs = jax.eval_shape(editor.init, jax.random.key(0) if key is None else key)
    rep = replicated(mesh)

    def param_rule(path, leaf):
        names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        last = names[-1] if names else None
        if names and names[0] == "nets":
            axes = {"down": ("editor_width", "editor_rank"), "up": ("editor_rank", "editor_width"),
                    "bias": ("editor_width",), "mode_scale": ("edit_modes", "editor_width"),
                    "mode_shift": ("edit_modes", "editor_width")}.get(last)
            if axes is not None and len(axes) == leaf.ndim:
                return named(mesh, axes, leaf.shape, rules)
        return rep

    p_sh = jax.tree.map_with_path(param_rule, params_abs)
    key_axes: dict[str, tuple[str, str]] = {}
    for i, name in enumerate(editor.spec.layers):
        key_axes.setdefault(editor.spec.net_key(i), kernel_axes(cfg, name))

    def state_rule(path, leaf):
        names = [getattr(k, "key", None) for k in path]
        if len(names) == 3 and names[0] in key_axes and names[2] in ("mean", "m2") and leaf.ndim == 1:
            ax = key_axes[names[0]][0 if names[1] == "u" else 1]
            return named(mesh, (ax,), leaf.shape, rules)
        return rep

    s_sh = jax.tree.map_with_path(state_rule, state_abs)
    return p_sh, s_sh


def spec_tree(shardings: Any) -> Any:
    """The ``PartitionSpec`` of every sharding in a tree (handy in tests and printouts)."""
    return jax.tree.map(lambda s: s.spec, shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))


# ------------------------------------------------------------------------------------------------ multi-host
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")


def _launched_multi_host(env: Mapping[str, str]) -> bool:
    if env.get("MEND_JAX_DISTRIBUTED", "").lower() in ("1", "true", "yes"):
        return True
    if env.get("MEND_JAX_DISTRIBUTED", "").lower() in ("0", "false", "no"):
        return False
    if any(env.get(k) for k in _DISTRIBUTED_ENV):
        return True
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1:  # set on every worker of a multi-host Cloud TPU slice
        return True
    for k in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "WORLD_SIZE"):
        try:
            if int(env.get(k, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def initialize_distributed(env: Mapping[str, str] | None = None, **kwargs) -> bool:
    """Call ``jax.distributed.initialize()`` when this process is one of several hosts; return whether it did.

    Detection: ``MEND_JAX_DISTRIBUTED=1`` (force; ``0`` disables; ``tpu_scripts/run.sh`` sets it on every worker,
    because a Cloud TPU VM's worker list lives in its metadata server, not always in the environment), a coordinator
    address in the environment, ``TPU_WORKER_HOSTNAMES`` listing >1 host, or a launcher world size > 1 (Slurm / MPI /
    torchrun-style ``WORLD_SIZE``). On Cloud TPU and Slurm ``initialize()`` needs no arguments (and is also correct on
    a single host); ``kwargs`` are passed through otherwise. Must run before anything calls ``jax.devices()`` or
    computes (jax's multi-process docs).
    """
    env = os.environ if env is None else env
    if jax.distributed.is_initialized():
        return True
    if not _launched_multi_host(env):
        return False
    jax.distributed.initialize(**kwargs)
    return True


def is_main_process() -> bool:
    """True on process 0 (the one that logs and writes non-collective outputs)."""
    return jax.process_index() == 0


def log0(*args, **kwargs) -> None:
    """``print`` on process 0 only."""
    if is_main_process():
        print(*args, **kwargs)


def process_batch_slice(global_batch_size: int, process_index: int | None = None,
                        process_count: int | None = None) -> slice:
    """The rows of a global batch that this process loads (contiguous, equal blocks; process order matches the
    device order of ``jax.make_mesh``'s ``data`` axis, so :func:`global_batch_from_process_rows` can assemble them)."""
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if global_batch_size % pc:
        raise ValueError(f"global batch {global_batch_size} is not divisible by {pc} processes; pad the batch")
    n = global_batch_size // pc
    return slice(pi * n, (pi + 1) * n)


def global_batch_from_process_rows(local: Any, sharding: Any, global_batch_size: int) -> Any:
    """Assemble global arrays from the rows each process loaded (:func:`process_batch_slice`).

    ``local``: a pytree of host arrays ``[B / process_count, ...]``; ``sharding``: one ``Sharding`` or a matching
    tree. Single-process this is ``device_put``."""
    def one(x, s):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(s, x, (global_batch_size,) + x.shape[1:])
    if isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda x: one(x, sharding), local)
    return jax.tree.map(one, local, sharding)


def place_from_callback(shape: Sequence[int], dtype, sharding: jax.sharding.Sharding,
                        read: Callable[[tuple[slice, ...]], np.ndarray]) -> jax.Array:
    """A global array built from per-shard reads: ``read(index)`` returns the numpy block at ``index`` (a tuple of
    slices), e.g. ``safetensors.safe_open(...).get_slice(name)[index]``. Each process reads only the blocks of its
    own devices, so a 405B checkpoint never has to fit in one host's memory."""
    return jax.make_array_from_callback(tuple(shape), sharding,
                                        lambda idx: np.asarray(read(idx), dtype=dtype))


__all__ = ["LOGICAL_RULES", "MESH_AXES", "abstract_params", "auto_mesh_shape", "batch_sharding", "edit_shardings",
           "editor_shardings", "factor_shardings", "global_batch_from_process_rows", "initialize_distributed",
           "is_main_process", "kernel_axes", "loader_shardings", "log0", "logical_to_spec", "make_mesh", "named",
           "param_shardings", "parse_mesh_shape", "place_from_callback", "process_batch_slice", "replicated",
           "shard_params", "spec_tree", "token_batch_shardings"]
