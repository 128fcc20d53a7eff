"""From factors to weight changes, and the two equivalent ways to apply them.

**Sign convention** (the paper's, [P] §3.1): ``W~ = W - alpha_l * sum_r u~_r^T delta~_r`` with a learned step size
``alpha_l`` per edited layer, initialised positive, so an untrained identity editor makes a gradient-*descent* step.
The original code adds (``W + lr * update`` with ``lr`` initialised at +1e-4, which first *ascends*); an original
checkpoint's ``edit_lrs`` therefore converts as ``alpha = -edit_lrs``. ``LowRankEdit.scale`` holds ``-alpha``.

Kernels are stored ``[in, out]`` for every family here (GPT-2's Conv1D natively, LLaMA's transposed at load), so the
update is ``einsum("ri,ro->io", u~, delta~)`` for all of them.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Mapping

import jax
import jax.numpy as jnp

from mend_jax.editing.batch import TokenBatch
from mend_jax.editing.editor import Editor, step_sizes
from mend_jax.editing.factors import Factors, capture_factors
from mend_jax.editing.losses import argmax_margin
from mend_jax.errors import MendJaxError
from mend_jax.models import LowRankEdit, get_module, replace_module


def edit_rows(factors: Factors, name: str):
    """All rows of a layer's factors, flattened over examples, batch and positions: (u [R,in], delta [R,out], mask [R])."""
    u = factors.u[name]
    d = factors.delta[name]
    return u.reshape(-1, u.shape[-1]), d.reshape(-1, d.shape[-1]), factors.mask[name].reshape(-1)


def gather_real_rows(mask: jax.Array, rows: int):
    """Indices of the first ``rows`` rows where the flat ``mask`` [R] is set (in order, padded with 0), which of
    them are real, and whether the mask has more real rows than ``rows`` (callers make that edit NaN: loud)."""
    n_real = jnp.sum(mask > 0)
    (idx,) = jnp.nonzero(mask > 0, size=rows, fill_value=0)
    return idx, jnp.arange(rows) < n_real, n_real > rows


def n_edits(mask: jax.Array) -> jax.Array:
    """How many edit examples a factor mask [..., T] holds in all (those with at least one real row): a scalar,
    the k of k edits applied at once (:func:`compute_edits` sums the rows of every leading axis into one edit)."""
    return jnp.sum(jnp.any(mask > 0, axis=-1))


def compute_edits(editor: Editor, params: Mapping, state: Mapping, factors: Factors,
                  rows: int | None = None) -> dict[str, LowRankEdit]:
    """Per edited layer, the low-rank update ``-alpha_l * sum_r u~_r^T delta~_r`` (rows of every example summed:
    k edits at once is simply more rows). Masked rows are zeroed *after* the editor (its bias and residual would
    otherwise turn padding into garbage outer products).

    ``rows`` (static): run the editor only on the first ``rows`` unmasked rows of each layer, gathered into a
    fixed-size buffer, instead of on every padded position (see :func:`mend_jax.editing.batch.edit_row_bucket`
    for a bound that is always large enough). The result is the same; the editor's cost follows the real tokens.
    The step sizes are those of the number of edits in ``factors`` (:func:`mend_jax.editing.editor.step_sizes`)."""
    us, ds, ms, scales = {}, {}, {}, {}
    alpha = step_sizes(params, n_edits(factors.mask[editor.spec.layers[0]]))
    for i, name in enumerate(editor.spec.layers):
        u, d, m = edit_rows(factors, name)
        if rows is not None and rows < m.shape[0]:
            idx, valid, overflow = gather_real_rows(m, rows)
            u, d, m = u[idx], d[idx], jnp.where(valid, m[idx], 0.0)
            # a bound too small would silently drop rows: make that edit NaN (loud) instead
            scales[name] = jnp.where(overflow, jnp.nan, -alpha[i])
        else:
            scales[name] = -alpha[i]
        us[name], ds[name], ms[name] = u, d, m
    out = editor.apply_all(params["nets"], state, us, ds)  # layers sharing a net go through it together
    return {name: LowRankEdit(a=out[name][0] * ms[name][:, None], b=out[name][1] * ms[name][:, None],
                              scale=scales[name]) for name in editor.spec.layers}


@functools.partial(jax.jit, static_argnames=("editor", "cfg", "rows"))
def mend_edits(editor: Editor, cfg, base_params: Mapping, eparams: Mapping, stats: Mapping, batch: TokenBatch,
               rows: int | None = None) -> dict[str, LowRankEdit]:
    """Factors of the edit ``batch`` (all its examples edited at once) and the editor's low-rank updates: one
    forward+backward of the base model (down to the lowest edited block) and the editor on the real rows. Jitted
    (the editor and the model config are static); ``rows`` as in :func:`compute_edits`."""
    _, factors = capture_factors(base_params, cfg, batch, editor.spec.layers, positions=editor.factor_positions)
    return compute_edits(editor, eparams, stats, factors, rows=rows)


def target_margins(logits_at_targets: jax.Array, batch: TokenBatch) -> jax.Array:
    """Per edit example [B]: the smallest, over its real target tokens, logit of the target token minus the
    largest logit of any other token (> 0: every target token is the argmax, i.e. the edit holds exactly)."""
    m = argmax_margin(logits_at_targets.astype(jnp.float32), batch.target_ids)
    return jnp.where(batch.target_mask > 0, m, jnp.inf).min(-1)


@functools.partial(jax.jit, static_argnames=("editor", "cfg", "rows"))
def unheld_mend_edits(editor: Editor, cfg, base_params: Mapping, eparams: Mapping, stats: Mapping,
                      batch: TokenBatch, margin, rows: int | None = None):
    """:func:`mend_edits` from the rows of the examples whose edit does not hold yet at ``base_params`` (some
    target token leads the runner-up by less than ``margin`` logits, :func:`target_margins`); the other
    examples give no rows. Returns ``(edits, unheld [B] bool)``; the margins come from the same forward pass as
    the factors."""
    _, factors, logits = capture_factors(base_params, cfg, batch, editor.spec.layers,
                                         positions=editor.factor_positions, return_logits=True)
    unheld = target_margins(logits, batch) < margin
    factors = dataclasses.replace(factors, mask={n: m * unheld[:, None] for n, m in factors.mask.items()})
    return compute_edits(editor, eparams, stats, factors, rows=rows), unheld


def _check_rank(rank: int) -> None:
    if rank < 1:
        raise MendJaxError(f"the edit's rank must be >= 1 (max_rank), not {rank}")


@functools.partial(jax.jit, static_argnames=("rank",))
def truncated_edits(edits: Mapping[str, LowRankEdit], rank: int) -> dict[str, LowRankEdit]:
    """Each layer's update ``Delta W`` replaced by its best rank-``rank`` approximation (its top singular
    directions; Eckart-Young in Frobenius and spectral norm), still as a :class:`LowRankEdit` with as many rows as
    before (the rows past ``rank`` are zero) so that shapes, and the compiled functions that take them, stay the
    same. From the thin QR factors of ``a^T`` and ``b^T`` and the SVD of their small core: the dense ``[in, out]``
    update is never formed. An edit transformation beyond MEND (whose update has one row per token)."""
    _check_rank(rank)
    out = {}
    for name, e in edits.items():
        a = e.a.astype(jnp.float32)
        b = e.b.astype(jnp.float32) * e.scale
        qa, ra = jnp.linalg.qr(a.T)  # a^T = qa ra: [in, p] [p, R]
        qb, rb = jnp.linalg.qr(b.T)  # b^T = qb rb: [out, q] [q, R]
        u, s, vt = jnp.linalg.svd(ra @ rb.T)  # Delta W = a^T b = qa (u s vt) qb^T
        k = min(rank, s.shape[0])
        a_k = ((qa @ u[:, :k]) * s[:k]).T  # [k, in]
        b_k = vt[:k] @ qb.T  # [k, out]
        pad = a.shape[0] - k
        out[name] = LowRankEdit(jnp.pad(a_k, ((0, pad), (0, 0))).astype(e.a.dtype),
                                jnp.pad(b_k, ((0, pad), (0, 0))).astype(e.b.dtype), jnp.ones((), jnp.float32))
    return out


def iterated_mend_edits(editor: Editor, cfg, base_params: Mapping, eparams: Mapping, stats: Mapping,
                        batch: TokenBatch, steps: int = 1, rows: int | None = None,
                        until_margin: float | None = None, max_rank: int | None = None,
                        min_steps: int = 1) -> dict[str, LowRankEdit]:
    """``steps`` editor steps on one edit batch: step 1 is MEND's edit (:func:`mend_edits`); each further step
    takes the factors of the same batch at the weights edited so far and adds the editor's update of them (the
    rows of all steps merged into one low-rank edit, each step's size folded in). ``steps=1`` is exactly
    :func:`mend_edits`. An option beyond the paper (which applies the editor once): the later steps see the
    gradient of what the first step left unfit, typically one wrong token of a multi-token target.

    ``until_margin`` (adaptive steps, also beyond the paper): a further step takes rows only from the edit
    examples whose edit does not hold yet, every target token of the example's own prompt leading the runner-up
    by at least ``until_margin`` logits at the weights edited so far (checked again before every step, so an
    example that a later step of other edits undid takes part again); the steps stop early once every edit
    holds. The editor normalises its inputs, so a further step is about as large as the first however small the
    gradient left: without this rule an edit that already holds is pushed on, which costs unrelated inputs.
    ``min_steps``: the first ``min_steps`` steps take every example's rows whatever its margin (the rule applies
    from step ``min_steps + 1`` on), e.g. the number of steps the editor was trained with (``mend-jax train
    --edit-steps``), which the rule would otherwise cut short for the edits that hold after one step.

    ``max_rank`` (beyond the paper): after every step the edit so far is cut to its best rank-``max_rank``
    approximation per layer (:func:`truncated_edits`), so the next step and the margins see the truncated edit."""
    if steps < 1:
        raise MendJaxError(f"edit steps must be >= 1, not {steps}")
    if until_margin is not None and not math.isfinite(until_margin):
        raise MendJaxError(f"the adaptive steps' margin must be a finite number of logits, not {until_margin}")
    if not 1 <= min_steps <= steps:
        raise MendJaxError(f"the editor steps taken whatever the margin (min_steps={min_steps}) must be between 1 "
                           f"and the most steps ({steps})")
    if max_rank is not None:
        _check_rank(max_rank)  # before any work, not at the first truncation
    margin = jnp.inf if until_margin is None else until_margin  # no margin: no edit ever holds, every step runs
    cut = (lambda e: e) if max_rank is None else (lambda e: truncated_edits(e, max_rank))
    edits = cut(mend_edits(editor, cfg, base_params, eparams, stats, batch, rows=rows))
    for step in range(2, steps + 1):
        edited = with_kernels(base_params, _edited_kernels_jit(base_params, edits))
        more, unheld = unheld_mend_edits(editor, cfg, edited, eparams, stats, batch,
                                         jnp.inf if step <= min_steps else margin, rows=rows)
        if not bool(jnp.any(unheld)):
            break
        edits = cut(merge_edits(edits, more))
    return edits


def edited_kernels(base_params: Mapping, edits: Mapping[str, LowRankEdit]) -> dict[str, jax.Array]:
    """``kernel + Delta W`` of each edited layer only (in the kernel's dtype; the update is computed in f32).

    Jit *this*, not :func:`apply_edits`: a jitted function returning the whole parameter tree writes a fresh copy
    of every base weight (XLA outputs are new buffers), which costs more than the edit itself."""
    out = {}
    for name, e in edits.items():
        k = get_module(base_params, name)["kernel"]
        out[name] = (k.astype(jnp.float32) + e.dense()).astype(k.dtype)
    return out


_edited_kernels_jit = jax.jit(edited_kernels)


def with_kernels(base_params: Mapping, kernels: Mapping[str, jax.Array]) -> dict:
    """A new parameter pytree with the given kernels swapped in; every other array is shared, not copied."""
    out = base_params
    for name, k in kernels.items():
        out = replace_module(out, name, {**get_module(out, name), "kernel": k})
    return out


def apply_edits(base_params: Mapping, edits: Mapping[str, LowRankEdit]) -> dict:
    """Materialised edit: a new parameter pytree with ``kernel + Delta W`` for each edited layer (the input tree
    is untouched; unedited arrays are shared, not copied)."""
    return with_kernels(base_params, edited_kernels(base_params, edits))


def merge_edits(*edit_sets: Mapping[str, LowRankEdit]) -> dict[str, LowRankEdit]:
    """Several edit sets as one (rows concatenated, each keeping its own step size folded into ``b``)."""
    merged: dict[str, list] = {}
    for es in edit_sets:
        for name, e in es.items():
            merged.setdefault(name, []).append(e)
    out = {}
    for name, es in merged.items():
        a = jnp.concatenate([e.a for e in es], 0)
        b = jnp.concatenate([e.b * e.scale for e in es], 0)
        out[name] = LowRankEdit(a, b, jnp.ones((), jnp.float32))
    return out
