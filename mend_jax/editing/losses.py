"""Losses and metrics on :class:`TokenBatch` targets (float32 throughout)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def target_logprobs(logits_at_targets: jax.Array, target_ids: jax.Array) -> jax.Array:
    """log p(target) [B,K] from logits [B,K,V] taken at the target positions."""
    logp = jax.nn.log_softmax(logits_at_targets.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, target_ids[..., None], axis=-1)[..., 0]


def masked_nll(logits_at_targets, target_ids, target_mask) -> jax.Array:
    """Token-mean NLL over all unmasked target tokens of the batch (MEND's ``masked_log_probs``)."""
    lp = target_logprobs(logits_at_targets, target_ids)
    return -(lp * target_mask).sum() / jnp.maximum(target_mask.sum(), 1.0)


def kl_pre_post(pre_logits, post_logits, mask) -> jax.Array:
    """Masked mean over positions of KL(p_pre || p_post)."""
    pre = jax.nn.log_softmax(pre_logits.astype(jnp.float32), -1)
    post = jax.nn.log_softmax(post_logits.astype(jnp.float32), -1)
    kl = (jnp.exp(pre) * (pre - post)).sum(-1)
    return (kl * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def argmax_margin(logits: jax.Array, ids: jax.Array) -> jax.Array:
    """Per position, the logit of token ``ids`` minus the largest logit of any other token (> 0: ``ids`` is the
    argmax; at ``ids = argmax`` it is the top-1 minus top-2 logit)."""
    z = jnp.take_along_axis(logits, ids[..., None], -1)[..., 0]
    others = jnp.where(jax.nn.one_hot(ids, logits.shape[-1], dtype=bool), -jnp.inf, logits).max(-1)
    return z - others


def argmax_margin_hinge(pre_logits, post_logits, mask, keep: float = 0.5) -> jax.Array:
    """Masked mean over positions of ``relu(keep * m_pre - m_post)``: ``m_pre`` is the pre-edit top-1 minus top-2
    logit, ``m_post`` the post-edit logit of the pre-edit argmax minus the largest other post-edit logit
    (:func:`argmax_margin`). Zero while every position keeps at least ``keep`` of its margin; above that it grows
    linearly (in logits) as the edit moves the argmax towards another token and past it. Where evaluation counts
    changed argmaxes this sees what a KL does not: a near-tie (margin 0.01) flips for a tiny KL. ``pre_logits``
    carry no gradient."""
    pre = jax.lax.stop_gradient(pre_logits.astype(jnp.float32))
    a = jnp.argmax(pre, -1)
    hinge = jax.nn.relu(keep * argmax_margin(pre, a) - argmax_margin(post_logits.astype(jnp.float32), a))
    return (hinge * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def token_accuracy(logits_at_targets, target_ids, target_mask):
    """Per example: fraction of target tokens that are the argmax (EasyEdit's token-level accuracy) and
    whether all of them are (exact match). Returns ``(token_acc [B], exact [B])``."""
    hit = (jnp.argmax(logits_at_targets, -1) == target_ids).astype(jnp.float32)
    n = jnp.maximum(target_mask.sum(-1), 1.0)
    tok = (hit * target_mask).sum(-1) / n
    exact = ((hit * target_mask).sum(-1) == target_mask.sum(-1)).astype(jnp.float32)
    return tok, exact
