"""Plain model use: tokenising, greedy generation and perplexity, on fixed (bucketed) shapes so nothing recompiles
between calls of the same bucket."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from mend_jax.editing.batch import bucket as _bucket
from mend_jax.errors import InputTooLongError
from mend_jax.models import family_for


def bucket(n: int, minimum: int = 16) -> int:
    """Padded length used for jit shapes (the same buckets as edit batches)."""
    return _bucket(n, minimum)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _logits_at(params, cfg, ids, mask, pos):
    return family_for(cfg).forward(params, cfg, ids, mask, logits_at=pos)[:, 0]


def greedy_generate(model, prompt: str, max_new_tokens: int = 20) -> str:
    """Greedy continuation of ``prompt`` (no sampling)."""
    cfg = model.config
    ids = model.tokenizer(prompt)["input_ids"]
    if not ids:
        raise InputTooLongError("the prompt is empty: give some text to continue")
    total = len(ids) + max_new_tokens
    if total > cfg.max_position_embeddings:
        raise InputTooLongError(
            f"prompt ({len(ids)} tokens) + {max_new_tokens} new tokens exceeds the model's context of "
            f"{cfg.max_position_embeddings} tokens; shorten the prompt or lower --max-new-tokens")
    length = min(bucket(total), cfg.max_position_embeddings)
    buf = np.zeros((1, length), np.int32)
    buf[0, : len(ids)] = ids
    mask = np.zeros((1, length), np.int32)
    mask[0, : len(ids)] = 1
    cur = len(ids)
    eos = model.tokenizer.eos_token_id
    new = []
    for _ in range(max_new_tokens):
        logits = _logits_at(model.params, cfg, jnp.asarray(buf), jnp.asarray(mask), jnp.asarray([[cur - 1]]))
        nxt = int(jnp.argmax(logits[0]))
        new.append(nxt)
        if nxt == eos:
            break
        buf[0, cur] = nxt
        mask[0, cur] = 1
        cur += 1
    return model.tokenizer.decode(new, skip_special_tokens=True)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _window_nll(params, cfg, ids):
    logits = family_for(cfg).forward(params, cfg, ids)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]


def perplexity(model, token_ids: np.ndarray, window: int = 1024) -> dict:
    """Mean NLL over non-overlapping windows of ``window`` tokens, each scored independently from position 0
    (the first token of each window is context only). Returns tokens, predicted, nll, ppl."""
    cfg = model.config
    if window > cfg.max_position_embeddings:
        raise InputTooLongError(f"window {window} exceeds the model's context of {cfg.max_position_embeddings}")
    token_ids = np.asarray(token_ids, np.int32)
    total, count = 0.0, 0
    for start in range(0, len(token_ids), window):
        chunk = token_ids[start:start + window]
        if len(chunk) < 2:
            break
        nll = np.asarray(_window_nll(model.params, cfg, jnp.asarray(chunk[None])), np.float64)
        total += float(nll.sum())
        count += nll.size
    mean = total / count
    return {"tokens": int(len(token_ids)), "predicted": count, "nll": mean, "ppl": math.exp(mean)}
