"""From factors to weight changes, and the two equivalent ways to apply them.

**Sign convention** (the paper's, [P] §3.1): ``W~ = W - alpha_l * sum_r u~_r^T delta~_r`` with a learned step size
``alpha_l`` per edited layer, initialised positive, so an untrained identity editor makes a gradient-*descent* step.
The original code adds (``W + lr * update`` with ``lr`` initialised at +1e-4, which first *ascends*); an original
checkpoint's ``edit_lrs`` therefore converts as ``alpha = -edit_lrs``. ``LowRankEdit.scale`` holds ``-alpha``.

Kernels are stored ``[in, out]`` for every family here (GPT-2's Conv1D natively, LLaMA's transposed at load), so the
update is ``einsum("ri,ro->io", u~, delta~)`` for all of them.
"""
from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp

from mend_jax.editing.editor import Editor
from mend_jax.editing.factors import Factors
from mend_jax.models import LowRankEdit, get_module, replace_module


def edit_rows(factors: Factors, name: str):
    """All rows of a layer's factors, flattened over examples, batch and positions: (u [R,in], delta [R,out], mask [R])."""
    u = factors.u[name]
    d = factors.delta[name]
    return u.reshape(-1, u.shape[-1]), d.reshape(-1, d.shape[-1]), factors.mask[name].reshape(-1)


def compute_edits(editor: Editor, params: Mapping, state: Mapping, factors: Factors) -> dict[str, LowRankEdit]:
    """Per edited layer, the low-rank update ``-alpha_l * sum_r u~_r^T delta~_r`` (rows of every example summed:
    k edits at once is simply more rows). Masked rows are zeroed *after* the editor (its bias and residual would
    otherwise turn padding into garbage outer products)."""
    edits = {}
    for i, name in enumerate(editor.spec.layers):
        u, d, m = edit_rows(factors, name)
        ut, dt = editor.apply(params["nets"], state, u, d, i)
        edits[name] = LowRankEdit(a=ut * m[:, None], b=dt * m[:, None], scale=-params["edit_lrs"][i])
    return edits


def apply_edits(base_params: Mapping, edits: Mapping[str, LowRankEdit]) -> dict:
    """Materialised edit: a new parameter pytree with ``kernel + Delta W`` for each edited layer (the input tree
    is untouched; unedited arrays are shared, not copied)."""
    out = base_params
    for name, e in edits.items():
        mod = get_module(out, name)
        k = mod["kernel"]
        new = dict(mod)
        new["kernel"] = (k.astype(jnp.float32) + e.dense()).astype(k.dtype)
        out = replace_module(out, name, new)
    return out


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
