"""Per-token gradient factors ``(u, delta)`` of the edited linear layers, from one ``jax.vjp`` — no hooks, and no
gradient of any base weight is formed.

Every edited layer computes ``y = x W + tap`` with ``tap = 0``; ``jax.vjp`` with respect to the taps only gives
``delta = dL/dy`` for all edited layers in one backward pass, and the forward records ``u = x``. For a kernel stored
``[in, out]``, ``dL/dW = sum_t u_t^T delta_t``. The forward starts from the hidden state entering the lowest edited
block, so the backward pass never goes below it.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from mend_jax.editing.batch import TokenBatch
from mend_jax.editing.losses import masked_nll
from mend_jax.models import LinearHooks, family_for, layer_index


@dataclasses.dataclass(frozen=True)
class Factors:
    """Per edited layer: ``u`` [B,T,in], ``delta`` [B,T,out] (float32) and the row mask [B,T] of tokens that
    contribute (real tokens whose input and output-gradient are both non-zero, as MEND's row filter; with
    ``positions="target"`` only those among the positions whose logits predict a target token)."""
    u: Mapping[str, jax.Array]
    delta: Mapping[str, jax.Array]
    mask: Mapping[str, jax.Array]

    def gradient(self, name: str) -> jax.Array:
        """``sum_t u_t^T delta_t`` = dL/dW for the ``[in, out]`` kernel of layer ``name``."""
        m = self.mask[name][..., None]
        return jnp.einsum("bti,bto->io", self.u[name] * m, self.delta[name])


jax.tree_util.register_dataclass(Factors, data_fields=["u", "delta", "mask"], meta_fields=[])


def edit_loss_fn(params, cfg, batch: TokenBatch, hooks: LinearHooks, first_layer: int = 0, hidden=None,
                 return_logits: bool = False):
    """The loss whose gradient an edit batch's factors are: the **sum over its edit examples of each example's
    token-mean target NLL**. For one edit this is MEND's masked NLL; for k edits at once, every example's factors
    are exactly those it has when edited alone, so the batched update is the sum of the k single-edit updates
    ([P] §5.3). The original code takes one token-mean over the whole batch instead, which shrinks every edit's
    ``delta`` by about 1/k (see ``mend_spec.md`` §1.1) and makes an editor's edits k times weaker in a batch.
    ``return_logits``: ``(loss, logits at the target positions [B, K, V])``."""
    fam = family_for(cfg)
    logits = fam.forward(params, cfg, batch.input_ids, batch.attention_mask, hooks=hooks,
                         logits_at=batch.target_pos, first_layer=first_layer, hidden=hidden)
    per_edit = jax.vmap(lambda lg, t, m: masked_nll(lg[None], t[None], m[None]))(
        logits, batch.target_ids, batch.target_mask)
    return (per_edit.sum(), logits) if return_logits else per_edit.sum()


FACTOR_POSITIONS = ("all", "target")


def target_positions_mask(batch: TokenBatch) -> jax.Array:
    """[B, T] float32: 1 at the positions whose logits predict a (real) target token of the batch."""
    b, t = batch.input_ids.shape
    zeros = jnp.zeros((b, t), jnp.float32)
    return jax.vmap(lambda z, pos, m: z.at[pos].max(m))(zeros, batch.target_pos, batch.target_mask.astype(jnp.float32))


def capture_factors(params, cfg, batch: TokenBatch, layers: Sequence[str], return_hidden: bool = False,
                    hidden=None, edits=None, positions: str = "all", return_logits: bool = False):
    """``(loss, factors)``: the edit loss (per edit example the token-mean NLL of its targets, summed over the
    examples: see :func:`edit_loss_fn`) and the factors of ``layers``. Pure; jit it with ``cfg`` static.

    ``return_hidden``: also return the (gradient-stopped) hidden state entering the lowest edited block,
    ``(loss, factors, hidden)``, for callers that run the same batch through the edited model next (it does not
    depend on the edit, so they can start there instead of recomputing the frozen blocks). ``hidden``: that state,
    computed earlier (e.g. ``training.frozen_cache``), [B, T, D]; the frozen blocks are then not run at all.
    ``edits``: low-rank edits ({layer: LowRankEdit}) applied in the forward pass: the factors are then those at the
    edited weights (a further editor step, see ``editing.edit.iterated_mend_edits``); gradient-stopped.
    ``return_logits``: also return the edit batch's logits at its target positions [B, K, V] (after the hidden
    state if both are asked for), e.g. to see which edits already hold (``editing.edit.target_margins``).
    ``positions``: which token rows the factors keep: ``"all"`` (MEND: every real token, the prompt's too, whose
    ``u`` and ``delta`` are non-zero) or ``"target"`` (only the positions whose logits predict a target token: the
    prompt's other positions, whose inputs unrelated prompts share most, give no rows; an option beyond the paper,
    ``Editor.factor_positions``)."""
    if positions not in FACTOR_POSITIONS:
        raise ValueError(f"positions must be one of {FACTOR_POSITIONS}, not {positions!r}")
    fam = family_for(cfg)
    shapes = fam.linear_layers(cfg)
    missing = [n for n in layers if n not in shapes]
    if missing:
        from mend_jax.errors import unknown_layers
        raise unknown_layers(missing, shapes)
    first = min(layer_index(n) for n in layers)
    if hidden is None:
        hidden = fam.hidden_before(params, cfg, batch.input_ids, batch.attention_mask, first)
    hidden = jax.lax.stop_gradient(hidden)
    edits = None if edits is None else jax.lax.stop_gradient(edits)
    b, t = batch.input_ids.shape
    dtype = hidden.dtype
    taps = {n: jnp.zeros((b, t, shapes[n][1]), dtype) for n in layers}

    def f(taps):
        hooks = LinearHooks(taps=taps, edits=edits)
        loss, logits = edit_loss_fn(params, cfg, batch, hooks, first_layer=first, hidden=hidden, return_logits=True)
        return loss, (hooks.captured, logits)

    loss, vjp_fn, (u, logits) = jax.vjp(f, taps, has_aux=True)
    (delta,) = vjp_fn(jnp.ones_like(loss))
    u = {n: jax.lax.stop_gradient(u[n]).astype(jnp.float32) for n in layers}
    delta = {n: jax.lax.stop_gradient(delta[n]).astype(jnp.float32) for n in layers}
    real = batch.attention_mask > 0
    if positions == "target":
        real = real & (target_positions_mask(batch) > 0)
    mask = {n: (real & jnp.any(u[n] != 0, -1) & jnp.any(delta[n] != 0, -1)).astype(jnp.float32) for n in layers}
    out = (loss, Factors(u, delta, mask)) + ((hidden,) if return_hidden else ()) + \
        ((jax.lax.stop_gradient(logits),) if return_logits else ())
    return out
