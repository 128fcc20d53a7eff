"""MEND's editor network as pure functions, and the :class:`Editor` bundle any edit transformation plugs into.

An editor maps the factors of one edited layer, ``u`` [R, in] and ``delta`` [R, out], to pseudo-factors
``(u~, delta~)``; the edit of that layer is ``-alpha_l * sum_r u~_r^T delta~_r`` (see ``editing/edit.py`` for the
sign convention). ``Editor.apply(net_params, state, u, delta, layer)`` is the whole interface: write any pure
function with that signature and wrap it with :func:`custom_editor`.

MEND (``mend_editor``) follows the original code (``../shared/reference/mend_spec.md`` §1):
- running mean/std of ``u`` and ``delta`` (separately), pooled over the layers that share a net, updated only while
  training (Chan's parallel merge of masked rows == sequential Welford), unbiased std, ``(x - mean) / (std + 1e-7)``;
- ``combine``: one net on ``concat(u, delta)`` whose output is split back; ``x_only`` / ``delta_only`` /
  ``one_sided`` / split variants;
- the net: ``n_hidden + 1`` low-rank residual layers ``h + relu(s_mode * (h V U + b) + o_mode)``, rank
  ``min(rank, D)``, U = 0 at init so the editor starts as the identity (``init="id"``), ReLU in every layer;
- ``shared``: one net per distinct ``(in, out)`` shape, with per-layer ("mode") scale and shift.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

NORM_EPS = 1e-7


@dataclasses.dataclass(frozen=True)
class EditorConfig:
    rank: int = 1920
    n_hidden: int = 1
    init: str = "id"  # "id" (identity at init, residual) | "xavier" (the paper's "no ID init" ablation)
    norm: bool = True
    combine: bool = True
    x_only: bool = False
    delta_only: bool = False
    one_sided: bool = False
    shared: bool = True
    edit_lr_init: float = 1e-4  # alpha_0 > 0: the first edits descend the edit loss (W~ = W - alpha * grad~)
    # learn per layer an exponent p_l so that k edits applied at once take the step alpha_l * k**p_l (p = 0 at
    # init: the paper's one step size for every k); only problems of k > 1 edits move it
    edit_lr_k_power: bool = False
    # which token rows of an edit's factors the editor sees: "all" (MEND) or "target" (only the positions whose
    # logits predict a target token; editing.factors.capture_factors)
    factor_positions: str = "all"

    def __post_init__(self):
        if self.factor_positions not in ("all", "target"):
            raise ValueError(f"factor_positions must be 'all' or 'target', not {self.factor_positions!r}")
        flags = [self.x_only, self.delta_only, self.one_sided]
        if sum(flags) > 1:
            raise ValueError("choose at most one of x_only, delta_only, one_sided")
        if self.combine and any(flags):
            raise ValueError("combine=True transforms u and delta jointly; it cannot be used with "
                             "x_only/delta_only/one_sided (set combine=False)")
        if self.init not in ("id", "xavier"):
            raise ValueError(f"init must be 'id' or 'xavier', not {self.init!r}")
        if self.rank < 1 or self.n_hidden < 0:
            raise ValueError("rank must be >= 1 and n_hidden >= 0")


@dataclasses.dataclass(frozen=True)
class EditorSpec:
    """Static layout: which layers are edited (in order), their ``(in, out)`` shapes, which net and mode each uses."""
    layers: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]
    shared: bool = True

    def __post_init__(self):
        if len(self.layers) != len(self.shapes):
            raise ValueError("one (in, out) shape per edited layer")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"edited layers repeat: {self.layers}")

    def net_key(self, i: int) -> str:
        din, dout = self.shapes[i]
        return f"{din}x{dout}" if self.shared else f"layer{i}"

    def mode(self, i: int) -> int:
        key = self.net_key(i)
        return [j for j in range(len(self.layers)) if self.net_key(j) == key].index(i)

    @property
    def net_keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.net_key(i) for i in range(len(self.layers))))

    def n_modes(self, key: str) -> int:
        return sum(self.net_key(i) == key for i in range(len(self.layers)))

    def key_shape(self, key: str) -> tuple[int, int]:
        return self.shapes[[self.net_key(i) for i in range(len(self.layers))].index(key)]

    def index(self, name: str) -> int:
        return self.layers.index(name)

    @classmethod
    def from_model(cls, layer_shapes: Mapping[str, tuple[int, int]], layers: Sequence[str], shared: bool = True):
        missing = [n for n in layers if n not in layer_shapes]
        if missing:
            from mend_jax.errors import unknown_layers
            raise unknown_layers(missing, layer_shapes)
        return cls(tuple(layers), tuple(tuple(layer_shapes[n]) for n in layers), shared)


# ------------------------------------------------------------------------------------------ running statistics
def init_stats(dim: int) -> dict:
    return {"count": jnp.zeros((), jnp.float32), "mean": jnp.zeros((dim,), jnp.float32),
            "m2": jnp.zeros((dim,), jnp.float32)}


def merge_stats(stats: Mapping, x: jax.Array, mask: jax.Array) -> dict:
    """Chan's parallel update of (count, mean, M2) with the rows of ``x`` [R, D] where ``mask`` [R] is 1."""
    m = mask.astype(jnp.float32)
    n_b = m.sum()
    mean_b = (x * m[:, None]).sum(0) / jnp.maximum(n_b, 1.0)
    m2_b = (jnp.square(x - mean_b) * m[:, None]).sum(0)
    n_a = stats["count"]
    n = n_a + n_b
    d = mean_b - stats["mean"]
    safe_n = jnp.maximum(n, 1.0)
    mean = stats["mean"] + d * n_b / safe_n
    m2 = stats["m2"] + m2_b + jnp.square(d) * n_a * n_b / safe_n
    return {"count": n, "mean": mean, "m2": m2}


def stats_std(stats: Mapping) -> jax.Array:
    """Unbiased std; 1 while fewer than two rows were seen (callers must check :func:`stats_initialised`)."""
    var = stats["m2"] / jnp.maximum(stats["count"] - 1.0, 1.0)
    return jnp.where(stats["count"] >= 2, jnp.sqrt(var), 1.0)


def normalize(stats: Mapping, x: jax.Array) -> jax.Array:
    return (x - stats["mean"]) / (stats_std(stats) + NORM_EPS)


def stats_initialised(state: Mapping) -> bool:
    """True when every running statistic has seen >= 2 rows (host-side check before editing in eval mode)."""
    counts = [float(s["count"]) for net in state.values() for s in net.values()]
    return bool(counts) and min(counts) >= 2


# ------------------------------------------------------------------------------------------------- the net
def _init_lr_linear(key, dim: int, rank: int, n_modes: int, init: str) -> dict:
    r = min(rank, dim)
    k1, k2 = jax.random.split(key)
    if init == "id":
        down = jax.random.normal(k1, (dim, r), jnp.float32)
        up = jnp.zeros((r, dim), jnp.float32)
    else:
        lim_d = math.sqrt(6.0 / (dim + r))
        lim_u = math.sqrt(2.0) * math.sqrt(6.0 / (dim + r))
        down = jax.random.uniform(k1, (dim, r), jnp.float32, -lim_d, lim_d)
        up = jax.random.uniform(k2, (r, dim), jnp.float32, -lim_u, lim_u)
    return {"down": down, "up": up, "bias": jnp.zeros((dim,), jnp.float32),
            "mode_scale": jnp.ones((n_modes, dim), jnp.float32), "mode_shift": jnp.zeros((n_modes, dim), jnp.float32)}


def init_mlp(key, dim: int, cfg: EditorConfig, n_modes: int) -> list:
    keys = jax.random.split(key, cfg.n_hidden + 1)
    return [_init_lr_linear(k, dim, cfg.rank, n_modes, cfg.init) for k in keys]


def clamp_min0(x: jax.Array) -> jax.Array:
    """ReLU whose derivative at 0 is 1, like ``torch.clamp(min=0)`` in the original.

    This matters: at identity init every pre-activation is exactly 0 (U = 0, b = 0), and ``jax.nn.relu``'s
    derivative there is 0, which would leave the editor with a zero gradient forever."""
    return jnp.where(x >= 0, x, jnp.zeros_like(x))


def apply_mlp(layers: Sequence[Mapping], x: jax.Array, mode: int, residual: bool) -> jax.Array:
    """``x`` [R, D] -> [R, D]: each layer is ``x + relu(scale[mode] * (x V U + b) + shift[mode])``; ``mode`` is
    an int or one mode per row ([R] ints)."""
    for p in layers:
        pre = (x @ p["down"]) @ p["up"] + p["bias"]
        pre = pre * p["mode_scale"][mode] + p["mode_shift"][mode]
        x = x + clamp_min0(pre) if residual else clamp_min0(pre)
    return x


# ------------------------------------------------------------------------------------------------ Editor
@dataclasses.dataclass(frozen=True)
class Editor:
    """An edit transformation: ``init(key) -> net_params`` and
    ``apply(net_params, state, u, delta, layer) -> (u~, delta~)`` with ``layer`` the index into ``spec.layers``.
    ``norm``: keep running statistics of ``u``/``delta`` in ``state`` (updated only while training).
    Hashable, so it can be a static argument of ``jax.jit``."""
    spec: EditorSpec
    init_nets: Callable[[jax.Array], Any]
    apply: Callable[..., tuple[jax.Array, jax.Array]]
    norm: bool = True
    edit_lr_init: float = 1e-4
    name: str = "custom"
    config: EditorConfig | None = None
    # optional fast path: all layers at once, ``(net_params, state, {name: u}, {name: delta}) -> {name: (u~, d~)}``,
    # equal to calling ``apply`` per layer (MEND: the layers sharing a net go through it as one batch of rows, so
    # its weights are read once per edit instead of once per layer)
    apply_layers: Callable[..., dict] | None = None
    k_power: bool = False  # params carry "edit_lr_k_power" [L] (see EditorConfig.edit_lr_k_power, step_sizes)
    # the token rows of an edit's factors it is given: "all" (MEND) or "target" (capture_factors' ``positions``);
    # any editor, a user's own transformation too, can be switched with dataclasses.replace
    factor_positions: str = "all"

    def apply_all(self, nets, state, u: Mapping[str, jax.Array], delta: Mapping[str, jax.Array]) -> dict:
        """``{layer name: (u~, delta~)}`` for every edited layer."""
        if self.apply_layers is not None:
            return self.apply_layers(nets, state, u, delta)
        return {n: self.apply(nets, state, u[n], delta[n], i) for i, n in enumerate(self.spec.layers)}

    def init(self, key: jax.Array) -> tuple[dict, dict]:
        """``(params, state)``: params = {"nets": ..., "edit_lrs": [L]} (and ``"edit_lr_k_power": [L]`` zeros with
        ``k_power``); state = running statistics per net."""
        params = {"nets": self.init_nets(key),
                  "edit_lrs": jnp.full((len(self.spec.layers),), self.edit_lr_init, jnp.float32)}
        if self.k_power:
            params["edit_lr_k_power"] = jnp.zeros((len(self.spec.layers),), jnp.float32)
        return params, self.init_state()

    def init_state(self) -> dict:
        state = {}
        for key in self.spec.net_keys:
            din, dout = self.spec.key_shape(key)
            state[key] = {"u": init_stats(din), "delta": init_stats(dout)}
        return state

    def update_state(self, state: Mapping, u_rows: Mapping[str, jax.Array], d_rows: Mapping[str, jax.Array],
                     masks: Mapping[str, jax.Array]) -> dict:
        """Merge the masked rows of every edited layer into its net's statistics (training only)."""
        if not self.norm:
            return dict(state)
        new = {k: dict(v) for k, v in state.items()}
        for i, name in enumerate(self.spec.layers):
            key = self.spec.net_key(i)
            new[key]["u"] = merge_stats(new[key]["u"], u_rows[name], masks[name])
            new[key]["delta"] = merge_stats(new[key]["delta"], d_rows[name], masks[name])
        return new


def step_sizes(params: Mapping, n_edits) -> jax.Array:
    """The step size ``alpha_l`` of every edited layer [L] for a group of ``n_edits`` edits applied at once (a
    scalar; or [N] for N groups -> [N, L]): ``edit_lrs``, times ``n_edits ** edit_lr_k_power`` when the editor
    learns that exponent (``EditorConfig.edit_lr_k_power``). Fewer than one edit counts as one."""
    lrs = params["edit_lrs"]
    if "edit_lr_k_power" not in params:
        return jnp.broadcast_to(lrs, jnp.shape(n_edits) + lrs.shape)
    k = jnp.maximum(jnp.asarray(n_edits, jnp.float32), 1.0)[..., None]
    return lrs * k ** params["edit_lr_k_power"]


def mend_editor(spec: EditorSpec, cfg: EditorConfig = EditorConfig()) -> Editor:
    """The MEND gradient transformation (see the module docstring)."""
    if spec.shared != cfg.shared:
        spec = dataclasses.replace(spec, shared=cfg.shared)
    residual = cfg.init == "id"

    def sides(key):
        din, dout = spec.key_shape(key)
        if cfg.combine:
            return {"joint": din + dout}
        if cfg.x_only:
            return {"u": din}
        if cfg.delta_only:
            return {"delta": dout}
        if cfg.one_sided:
            return {"delta": dout} if din > dout else {"u": din}
        return {"u": din, "delta": dout}

    def init_nets(rng):
        nets = {}
        for j, key in enumerate(spec.net_keys):
            k = jax.random.fold_in(rng, j)
            nets[key] = {side: init_mlp(jax.random.fold_in(k, s), dim, cfg, spec.n_modes(key))
                         for s, (side, dim) in enumerate(sides(key).items())}
        return nets

    def apply(nets, state, u, delta, layer: int, mode=None):
        key = spec.net_key(layer)
        mode = spec.mode(layer) if mode is None else mode  # an int, or one mode per row [R]
        if cfg.norm:
            u = normalize(state[key]["u"], u)
            delta = normalize(state[key]["delta"], delta)
        net = nets[key]
        if "joint" in net:
            z = apply_mlp(net["joint"], jnp.concatenate([u, delta], -1), mode, residual)
            return z[:, : u.shape[-1]], z[:, u.shape[-1]:]
        if "u" in net:
            u = apply_mlp(net["u"], u, mode, residual)
        if "delta" in net:
            delta = apply_mlp(net["delta"], delta, mode, residual)
        return u, delta

    def apply_layers(nets, state, u_by, d_by):
        """Every layer sharing a net in one pass: rows concatenated, each row with its layer's mode."""
        out = {}
        for key in spec.net_keys:
            idx = [i for i in range(len(spec.layers)) if spec.net_key(i) == key]
            names = [spec.layers[i] for i in idx]
            u = jnp.concatenate([u_by[n] for n in names], 0)
            d = jnp.concatenate([d_by[n] for n in names], 0)
            modes = jnp.concatenate([jnp.full((u_by[n].shape[0],), spec.mode(i), jnp.int32)
                                     for i, n in zip(idx, names)])
            ut, dt = apply(nets, state, u, d, idx[0], mode=modes)
            start = 0
            for n in names:
                r = u_by[n].shape[0]
                out[n] = (ut[start:start + r], dt[start:start + r])
                start += r
        return out

    return Editor(spec, init_nets, apply, norm=cfg.norm, edit_lr_init=cfg.edit_lr_init, name="mend", config=cfg,
                  apply_layers=apply_layers, k_power=cfg.edit_lr_k_power, factor_positions=cfg.factor_positions)


def identity_editor(spec: EditorSpec, edit_lr: float = 1e-4) -> Editor:
    """``(u, delta) -> (u, delta)``: with step size ``lr`` the edit is exactly one gradient-descent step."""
    return Editor(spec, lambda key: {}, lambda nets, state, u, delta, layer: (u, delta), norm=False,
                  edit_lr_init=edit_lr, name="identity")


def custom_editor(spec: EditorSpec, apply: Callable, init_nets: Callable[[jax.Array], Any] = lambda key: {},
                  *, norm: bool = False, edit_lr: float = 1e-4, name: str = "custom") -> Editor:
    """Plug in your own transformation ``apply(net_params, state, u, delta, layer) -> (u~, delta~)``.

    With ``norm=True`` the running statistics are kept in ``state`` (use :func:`normalize` on them)."""
    return Editor(spec, init_nets, apply, norm=norm, edit_lr_init=edit_lr, name=name)
