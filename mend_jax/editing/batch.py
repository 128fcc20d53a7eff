"""Tokenised edit examples on fixed, bucketed shapes.

An example is ``prompt + " " + target``; the loss is on the target tokens only. ``TokenBatch.target_pos[b, k]`` is
the position whose logits predict target token ``k`` (one before it), so the models are asked for logits only there.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from mend_jax.errors import InputTooLongError, InvalidEditError


@dataclasses.dataclass(frozen=True)
class TokenBatch:
    input_ids: jax.Array  # [B, T] int32, right padded
    attention_mask: jax.Array  # [B, T] int32
    target_pos: jax.Array  # [B, K] int32 positions whose logits predict the target tokens
    target_ids: jax.Array  # [B, K] int32
    target_mask: jax.Array  # [B, K] float32, 1 for real target tokens

    @property
    def shape(self):
        return tuple(self.input_ids.shape) + (self.target_ids.shape[1],)


jax.tree_util.register_dataclass(
    TokenBatch, data_fields=["input_ids", "attention_mask", "target_pos", "target_ids", "target_mask"],
    meta_fields=[])


def bucket(n: int, minimum: int) -> int:
    b = minimum
    while b < n:
        b *= 2
    return b


def tokenize_pair(tokenizer, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) such that prompt ids + target ids tokenises ``prompt + " " + target``."""
    if not isinstance(target, str) or not target.strip():
        raise InvalidEditError(f"empty target for prompt {prompt!r}: give the new answer as text")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidEditError("empty prompt: give the question or sentence prefix to edit")
    prompt = prompt.rstrip()
    p_ids = list(tokenizer(prompt)["input_ids"])
    full = list(tokenizer(prompt + " " + target.strip())["input_ids"])
    if full[: len(p_ids)] == p_ids:
        t_ids = full[len(p_ids):]
    else:  # the join merged across the boundary: tokenise the target on its own
        t_ids = list(tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"])
    if not t_ids:
        raise InvalidEditError(f"target {target!r} tokenizes to nothing")
    return p_ids, t_ids


def encode_examples(tokenizer, prompts: Sequence[str], targets: Sequence[str], *, max_length: int,
                    seq_len: int | None = None, target_len: int | None = None,
                    min_seq: int = 16, min_target: int = 4) -> TokenBatch:
    """Tokenise and pad to ``seq_len``/``target_len`` (default: the smallest power-of-two buckets that fit)."""
    if len(prompts) != len(targets):
        raise InvalidEditError(f"{len(prompts)} prompts but {len(targets)} targets: give one target per prompt")
    pairs = [tokenize_pair(tokenizer, p, t) for p, t in zip(prompts, targets)]
    for (p, t), prompt in zip(pairs, prompts):
        if len(p) + len(t) > max_length:
            raise InputTooLongError(f"prompt + target is {len(p) + len(t)} tokens, more than the model's context of "
                                    f"{max_length}: shorten {prompt[:60]!r}")
    T = seq_len or min(bucket(max(len(p) + len(t) for p, t in pairs), min_seq), max_length)
    K = target_len or bucket(max(len(t) for _, t in pairs), min_target)
    B = len(pairs)
    ids = np.zeros((B, T), np.int32)
    mask = np.zeros((B, T), np.int32)
    tpos = np.zeros((B, K), np.int32)
    tids = np.zeros((B, K), np.int32)
    tmask = np.zeros((B, K), np.float32)
    for b, (p, t) in enumerate(pairs):
        if len(p) + len(t) > T or len(t) > K:
            raise InputTooLongError(f"example {b} ({len(p) + len(t)} tokens, target {len(t)}) does not fit the "
                                    f"fixed shape ({T}, {K}); raise the sequence/target length")
        seq = p + t
        ids[b, : len(seq)] = seq
        mask[b, : len(seq)] = 1
        n = len(t)
        tpos[b, :n] = np.arange(len(p) - 1, len(p) - 1 + n)
        tids[b, :n] = t
        tmask[b, :n] = 1.0
    return TokenBatch(ids, mask, tpos, tids, tmask)


def factor_rows(batch: TokenBatch) -> int:
    """An upper bound on the rows that carry a gradient factor (any leading axes): in a causal model a position
    after the last predicting position gets no output-gradient, so example ``b`` contributes at most
    ``last target position + 1`` rows (padding none)."""
    tpos = np.asarray(batch.target_pos)
    tmask = np.asarray(batch.target_mask) > 0
    return int(np.sum(np.where(tmask, tpos, -1).max(axis=-1) + 1))


def edit_row_bucket(batch: TokenBatch, minimum: int = 8) -> int:
    """:func:`factor_rows` as a power-of-two bucket, a static bound for ``compute_edits(..., rows=)``."""
    return min(bucket(max(factor_rows(batch), 1), minimum), int(np.asarray(batch.input_ids).size))


def stack_batches(batches: Sequence[TokenBatch]) -> TokenBatch:
    """[N] independent batches of equal shape -> one batch with a leading axis N (for ``jax.vmap``)."""
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)
