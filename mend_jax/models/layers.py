"""Building blocks shared by the model families: norms, RoPE, attention, and the editable linear layer.

Everything here is a pure function of arrays. The one stateful-looking object, :class:`LinearHooks`, only lives
for the duration of one trace: it carries the *taps* (additive zero terms on layer outputs, whose cotangents are
MEND's ``delta``), the low-rank *edits* applied in the forward pass, and collects the layer *inputs* (MEND's ``u``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import jax
import jax.numpy as jnp

from mend_jax.errors import MendJaxError

Array = jax.Array


def edited_blocks(num_layers: int, n_blocks: int, first: int | None = None) -> range:
    """The blocks whose MLPs an editor edits: the last ``n_blocks`` (MEND's convention) or, with ``first``, blocks
    ``first .. first + n_blocks - 1``."""
    start = num_layers - n_blocks if first is None else first
    if n_blocks < 1 or start < 0 or start + n_blocks > num_layers:
        raise MendJaxError(f"cannot edit {n_blocks} blocks from block {start}: the model has blocks "
                           f"0-{num_layers - 1} (choose --edit-blocks and --edit-first-block inside them)")
    return range(start, start + n_blocks)


def select_matrices(layers: tuple[str, ...], matrices: tuple[str, ...] | None) -> tuple[str, ...]:
    """The layers (dotted names) whose last name part is one of ``matrices``, in their order; None keeps all."""
    if matrices is None:
        return tuple(layers)
    known = sorted({name.rsplit(".", 1)[-1] for name in layers})
    unknown = [m for m in matrices if m not in known]
    if unknown:
        raise MendJaxError(f"--edit-matrices {','.join(unknown)}: not a matrix of the edited blocks; choose among "
                           f"{', '.join(known)}")
    return tuple(name for name in layers if name.rsplit(".", 1)[-1] in matrices)


@dataclasses.dataclass(frozen=True)
class LowRankEdit:
    """A weight change ``Delta W = scale * A^T B`` kept in factored form.

    ``a``: [R, in] pseudo-inputs (``u~``), ``b``: [R, out] pseudo-deltas (``delta~``), ``scale``: scalar step size.
    Applied in the forward pass as ``y += scale * (x @ a.T) @ b``, which equals ``x @ (W + Delta W)`` with the
    kernel stored ``[in, out]``. Rows of ``a``/``b`` that are zero contribute nothing (that is how masks apply).
    """

    a: Array
    b: Array
    scale: Array

    def dense(self) -> Array:
        """The materialised ``[in, out]`` update."""
        return self.scale * jnp.einsum("ri,ro->io", self.a.astype(jnp.float32), self.b.astype(jnp.float32))


jax.tree_util.register_dataclass(LowRankEdit, data_fields=["a", "b", "scale"], meta_fields=[])


class LinearHooks:
    """Per-trace helper used by the model forward functions (never stored in params).

    ``taps``: name -> array broadcastable to the layer output, added to it (zeros in practice); the gradient of a
    loss with respect to a tap is the layer's output gradient ``delta``.
    ``edits``: name -> :class:`LowRankEdit` (or a sequence of them), applied in the forward pass.
    ``captured``: filled with name -> the layer's input ``u`` for every tapped layer.
    """

    def __init__(self, taps: Mapping[str, Array] | None = None, edits: Mapping[str, object] | None = None,
                 capture: frozenset[str] | set[str] | None = None):
        self.taps = dict(taps or {})
        self.edits = dict(edits or {})
        self.capture = set(capture or ()) | set(self.taps)
        self.captured: dict[str, Array] = {}

    def linear(self, name: str, p: Mapping[str, Array], x: Array) -> Array:
        y = x @ p["kernel"].astype(x.dtype)
        if "bias" in p:
            y = y + p["bias"].astype(y.dtype)
        edit = self.edits.get(name)
        if edit is not None:
            for e in (edit if isinstance(edit, (list, tuple)) else (edit,)):
                proj = x.astype(jnp.float32) @ e.a.T.astype(jnp.float32)
                y = y + (e.scale * (proj @ e.b.astype(jnp.float32))).astype(y.dtype)
        if name in self.capture:
            self.captured[name] = x
        tap = self.taps.get(name)
        if tap is not None:
            y = y + tap.astype(y.dtype)
        return y


def rms_norm(x: Array, scale: Array, eps: float) -> Array:
    """LLaMA RMSNorm: normalise in float32, cast back, then multiply by the weight (transformers' order)."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * xf.astype(x.dtype)


def layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def gelu_tanh(x: Array) -> Array:
    """GPT-2's ``gelu_new``."""
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * jnp.power(x, 3.0))))


def rope_inv_freq(head_dim: int, theta: float, scaling: Mapping[str, object] | None = None) -> Array:
    """Inverse frequencies of rotate-half RoPE, with transformers' ``llama3`` and ``linear`` scalings."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    kind = (scaling or {}).get("rope_type", "default")
    if kind in (None, "default"):
        return inv_freq
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling["low_freq_factor"])
        high = float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = jnp.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
        return jnp.where(medium, smoothed, scaled)
    raise NotImplementedError(f"RoPE scaling type {kind!r} is not supported (supported: default, linear, llama3)")


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
    """Rotate-half RoPE on ``x`` [B, T, heads, hd] at integer ``positions`` [B, T]."""
    freqs = positions[..., None].astype(jnp.float32) * inv_freq  # [B,T,hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)


def positions_from_mask(attention_mask: Array) -> Array:
    """Position ids that count real tokens only (equal to ``arange`` for right-padded rows)."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def causal_attention(q: Array, k: Array, v: Array, attention_mask: Array, scale: float) -> Array:
    """Grouped-query causal attention.

    q [B,T,H,hd], k/v [B,T,KV,hd], attention_mask [B,T] (1 = real token). Softmax in float32. Fully masked rows
    (e.g. left padding) get a finite large negative fill, so they never produce NaN.
    """
    b, t, h, hd = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, h // kv, hd)
    scores = jnp.einsum("btkgd,bskd->bkgts", q.astype(jnp.float32), k.astype(jnp.float32)) * scale
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    allowed = causal[None, None, None] & (attention_mask[:, None, None, None, :] > 0)
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(jnp.float32))
    return out.reshape(b, t, h * hd).astype(v.dtype)


def gather_positions(hidden: Array, positions: Array | None) -> Array:
    """hidden [B,T,D] -> [B,K,D] at ``positions`` [B,K] (or all positions when None)."""
    if positions is None:
        return hidden
    return jnp.take_along_axis(hidden, positions[..., None].astype(jnp.int32), axis=1)
