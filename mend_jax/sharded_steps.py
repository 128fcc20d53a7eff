"""Editing steps compiled with ``jax.jit`` and explicit input/output shardings (``mend_jax.sharding`` layouts).

``ShardedEditing(cfg, mesh, layers, batch_size, editor)`` bundles, for one model / mesh / batch size:

- ``forward(params, input_ids, attention_mask) -> logits [B,T,V]``
- ``capture(params, batch) -> (loss, Factors)``                      (factor capture, one ``jax.vjp``)
- ``compute_edits(editor_params, editor_state, factors) -> edits``   (pseudo-factors in the kernels' shardings)
- ``edited_logits(params, edits, batch) -> logits at targets``       (low-rank edit in the forward pass)
- ``evaluate(params, batch)`` / ``evaluate_edited(params, edits, batch)`` -> ``{"nll", "token_acc", "exact"}``
- ``edit(params, editor_params, editor_state, batch) -> (loss, edits, metrics)`` (the whole edit request fused)
- ``apply_edits(params, edits)`` (materialised; ``donate_params=True`` reuses the kernels' buffers, export only)

and :func:`sharded_train_step` compiles ``training.step.make_train_step``'s meta-training step with the train state
(donated), base parameters and ``MetaBatch`` in their shardings.

Base parameters are never donated (every step reuses them). ``cfg``, ``layers`` and the editor are closed over, i.e.
static. Every editor is wrapped by :func:`constrain_editor` (see there).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from mend_jax import sharding as shd
from mend_jax.editing.batch import TokenBatch
from mend_jax.editing.edit import apply_edits, compute_edits
from mend_jax.editing.factors import capture_factors
from mend_jax.editing.losses import masked_nll, token_accuracy
from mend_jax.models import LinearHooks, family_for, layer_index


def constrain_editor(editor, mesh: Mesh):
    """The same editor, with its inputs and outputs gathered (``P()``) at the net boundary.

    A combined net sees ``concat(u, delta)`` while ``u`` and ``delta`` arrive split like the kernel's in- and
    out-dimension: no layout of the concatenation matches both. Gathering the ``[R, in + out]`` rows (edit tokens,
    small) once lets the net slice its own ``editor_width`` shard locally, and its gathered output is sliced for free
    into the pseudo-factors' ``P(None, <kernel axis>)``; without this the SPMD partitioner falls back to an
    "involuntary full rematerialization" of the same arrays with a warning."""
    if editor is None:
        return None
    rep = shd.replicated(mesh)
    inner = editor.apply

    def apply(nets, state, u, delta, layer):
        u = jax.lax.with_sharding_constraint(u, rep)
        delta = jax.lax.with_sharding_constraint(delta, rep)
        ut, dt = inner(nets, state, u, delta, layer)
        return jax.lax.with_sharding_constraint(ut, rep), jax.lax.with_sharding_constraint(dt, rep)

    inner_layers = editor.apply_layers
    if inner_layers is None:
        return dataclasses.replace(editor, apply=apply)

    def apply_layers(nets, state, u_by, d_by):
        gather = lambda tree: jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, rep), tree)  # noqa: E731
        return gather(inner_layers(nets, state, gather(u_by), gather(d_by)))
    return dataclasses.replace(editor, apply=apply, apply_layers=apply_layers)


def opt_state_shardings(opt_state_abstract: Any, params_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for an optax state: every leaf whose path ends with a parameter's path (Adam's ``mu``/``nu``)
    gets that parameter's sharding; everything else (step counts) is replicated."""
    by_path = {tuple(str(k) for k in p): s for p, s in jax.tree.leaves_with_path(params_shardings)}
    rep = shd.replicated(mesh)

    def rule(path, leaf):
        keys = tuple(str(k) for k in path)
        for i in range(len(keys)):
            s = by_path.get(keys[i:])
            if s is not None and len(s.spec) <= leaf.ndim:
                return s
        return rep
    return jax.tree.map_with_path(rule, opt_state_abstract)


@dataclasses.dataclass
class ShardedEditing:
    """Sharded, jitted editing steps for one model config, mesh, edited layers and batch size (see module doc)."""
    cfg: Any
    mesh: Mesh
    layers: Sequence[str]
    batch_size: int
    editor: Any = None
    rules: Mapping[str, Any] | None = None
    donate_params: bool = False  # only for apply_edits (materialised export)

    def __post_init__(self):
        self.layers = tuple(self.layers)
        self.fam = family_for(self.cfg)
        m, r, b = self.mesh, self.rules, self.batch_size
        self.param_sh = shd.param_shardings(self.cfg, m, r)
        self.batch_sh = shd.token_batch_shardings(m, b, r)
        self.row_sh = shd.batch_sharding(m, b, 1, r)
        self.ids_sh = shd.batch_sharding(m, b, 2, r)
        self.logits_sh = shd.named(m, ("batch", "length", "act_vocab"), (b, 1, self.cfg.vocab_size), r)
        self.factor_sh = shd.factor_shardings(self.cfg, self.layers, m, b, r)
        self.edit_sh = shd.edit_shardings(self.cfg, self.layers, m, r)
        self.rep = shd.replicated(m)
        self.first = min(layer_index(n) for n in self.layers)
        self.sharded_editor = constrain_editor(self.editor, m)
        if self.editor is not None:
            self.eparams_sh, self.estate_sh = shd.editor_shardings(self.editor, self.cfg, m, r)

    # ------------------------------------------------------------------------------------------ pieces
    def _metrics_sh(self):
        return {"nll": self.rep, "token_acc": self.row_sh, "exact": self.row_sh}

    def _metrics(self, logits, batch: TokenBatch):
        acc, exact = token_accuracy(logits, batch.target_ids, batch.target_mask)
        return {"nll": masked_nll(logits, batch.target_ids, batch.target_mask), "token_acc": acc, "exact": exact}

    def _logits(self, params, batch: TokenBatch, edits=None, hidden=None):
        """Logits at the targets; with ``hidden`` (the state entering the lowest edited block) from there on."""
        hooks = LinearHooks(edits=edits) if edits else None
        start = {} if hidden is None else {"first_layer": self.first, "hidden": hidden}
        return self.fam.forward(params, self.cfg, batch.input_ids, batch.attention_mask, hooks=hooks,
                                logits_at=batch.target_pos, **start)

    def _compute_edits(self, eparams, estate, factors):
        factors = jax.lax.with_sharding_constraint(factors, self.factor_sh)
        edits = compute_edits(self.sharded_editor, eparams, estate, factors)
        return jax.lax.with_sharding_constraint(edits, self.edit_sh)

    def _need_editor(self):
        if self.editor is None:
            raise ValueError("this step needs an editor: ShardedEditing(..., editor=mend_editor(spec, cfg))")

    # ---------------------------------------------------------------------------------------- jitted steps
    @functools.cached_property
    def forward(self):
        f = lambda params, ids, mask: self.fam.forward(params, self.cfg, ids, mask)  # noqa: E731
        return jax.jit(f, in_shardings=(self.param_sh, self.ids_sh, self.ids_sh), out_shardings=self.logits_sh)

    @functools.cached_property
    def capture(self):
        def f(params, batch):
            pos = "all" if self.editor is None else self.editor.factor_positions
            loss, factors = capture_factors(params, self.cfg, batch, self.layers, positions=pos)
            return loss, jax.lax.with_sharding_constraint(factors, self.factor_sh)
        return jax.jit(f, in_shardings=(self.param_sh, self.batch_sh), out_shardings=(self.rep, self.factor_sh))

    @functools.cached_property
    def compute_edits(self):
        self._need_editor()
        return jax.jit(self._compute_edits, in_shardings=(self.eparams_sh, self.estate_sh, self.factor_sh),
                       out_shardings=self.edit_sh)

    @functools.cached_property
    def edited_logits(self):
        return jax.jit(lambda params, edits, batch: self._logits(params, batch, edits),
                       in_shardings=(self.param_sh, self.edit_sh, self.batch_sh), out_shardings=self.logits_sh)

    @functools.cached_property
    def evaluate(self):
        return jax.jit(lambda params, batch: self._metrics(self._logits(params, batch), batch),
                       in_shardings=(self.param_sh, self.batch_sh), out_shardings=self._metrics_sh())

    @functools.cached_property
    def evaluate_edited(self):
        return jax.jit(lambda params, edits, batch: self._metrics(self._logits(params, batch, edits), batch),
                       in_shardings=(self.param_sh, self.edit_sh, self.batch_sh), out_shardings=self._metrics_sh())

    def edit_fn(self, params, eparams, estate, batch):
        """Unjitted edit request: factors -> editor -> edits, and the edited model's metrics on the same batch."""
        self._need_editor()
        loss, factors, hidden = capture_factors(params, self.cfg, batch, self.layers, return_hidden=True)
        edits = self._compute_edits(eparams, estate, factors)
        # the edited model's metrics start from the frozen blocks' output capture_factors already computed
        return loss, edits, self._metrics(self._logits(params, batch, edits, hidden=hidden), batch)

    @functools.cached_property
    def edit(self):
        self._need_editor()
        return jax.jit(self.edit_fn, in_shardings=(self.param_sh, self.eparams_sh, self.estate_sh, self.batch_sh),
                       out_shardings=(self.rep, self.edit_sh, self._metrics_sh()))

    @functools.cached_property
    def apply_edits(self):
        return jax.jit(apply_edits, in_shardings=(self.param_sh, self.edit_sh), out_shardings=self.param_sh,
                       donate_argnums=(0,) if self.donate_params else ())



# ------------------------------------------------------------------------------------------------ training
def meta_batch_shardings(mesh: Mesh, n_problems: int | None = None, rules: Mapping[str, Any] | None = None):
    """``MetaBatch`` of shardings: every field ``[N, B, ...]`` is split over ``batch`` on the problem axis N."""
    from mend_jax.training.step import MetaBatch
    s = shd.batch_sharding(mesh, n_problems, 3, rules)
    tb = TokenBatch(s, s, s, s, s)
    return MetaBatch(tb, tb, tb)


def train_state_shardings(editor, cfg, tx, mesh: Mesh, rules: Mapping[str, Any] | None = None) -> dict:
    """Shardings of ``training.step.init_train_state``'s ``{"params", "stats", "opt_state", "step"}``."""
    from mend_jax.training.step import init_train_state
    p_sh, s_sh = shd.editor_shardings(editor, cfg, mesh, rules)
    abstract = jax.eval_shape(lambda k: init_train_state(editor, tx, k), jax.random.key(0))
    return {"params": p_sh, "stats": s_sh, "opt_state": opt_state_shardings(abstract["opt_state"], p_sh, mesh),
            "step": shd.replicated(mesh)}


def sharded_train_step(editor, cfg, tx, mesh: Mesh, n_problems: int, hp: Any = None,
                       rules: Mapping[str, Any] | None = None, donate: bool = True):
    """``training.step.make_train_step`` compiled with explicit shardings: the train state (donated) in
    :func:`train_state_shardings`, base params in ``param_shardings``, the ``MetaBatch`` split on its problem axis;
    metrics replicated. The editor is wrapped by :func:`constrain_editor`."""
    from mend_jax.training.step import StepHParams, make_train_step
    hp = StepHParams() if hp is None else hp
    step = make_train_step(constrain_editor(editor, mesh), cfg, tx, hp, jit=False)  # jitted below with shardings
    ts_sh = train_state_shardings(editor, cfg, tx, mesh, rules)
    return jax.jit(step, in_shardings=(ts_sh, shd.param_shardings(cfg, mesh, rules),
                                       meta_batch_shardings(mesh, n_problems, rules)),
                   out_shardings=(ts_sh, shd.replicated(mesh)), donate_argnums=(0,) if donate else ())


def place_train_state(train_state: dict, shardings: dict) -> dict:
    """Copy a train state into its shardings (fresh buffers: donating it never deletes the caller's arrays)."""
    return jax.jit(lambda ts: jax.tree.map(jnp.copy, ts), out_shardings=shardings)(train_state)


__all__ = ["ShardedEditing", "constrain_editor", "meta_batch_shardings", "opt_state_shardings", "place_train_state",
           "sharded_train_step", "train_state_shardings"]
