"""GPT-2 as pure functions: learned positions, LayerNorm, fused qkv, GELU (tanh), tied head.

Parameters mirror transformers' names (``transformer.h.11.mlp.c_fc`` is ``params["transformer"]["h"][11]["mlp"]["c_fc"]``).
transformers' ``Conv1D`` already stores weights ``[in, out]``, which is also our kernel layout, so no transposes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mend_jax.models.layers import (LinearHooks, causal_attention, edited_blocks, gather_positions, gelu_tanh,
                                    layer_norm)

FAMILY = "gpt2"
HF_MODEL_TYPES = ("gpt2",)


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    n_inner: int
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    scale_attn_weights: bool = True
    hf_model_type: str = "gpt2"
    family: str = FAMILY

    @property
    def num_layers(self) -> int:
        return self.n_layer

    @property
    def hidden_size(self) -> int:
        return self.n_embd

    @property
    def max_position_embeddings(self) -> int:
        return self.n_positions

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "GPT2Config":
        act = d.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise NotImplementedError(f"GPT-2 activation {act!r} is not supported (supported: gelu_new)")
        if d.get("scale_attn_by_inverse_layer_idx") or d.get("reorder_and_upcast_attn"):
            raise NotImplementedError("GPT-2 options scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn "
                                      "are not supported")
        n_embd = int(d["n_embd"])
        return cls(vocab_size=int(d["vocab_size"]), n_positions=int(d["n_positions"]), n_embd=n_embd,
                   n_layer=int(d["n_layer"]), n_head=int(d["n_head"]), n_inner=int(d.get("n_inner") or 4 * n_embd),
                   layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-5)), activation_function=act,
                   scale_attn_weights=bool(d.get("scale_attn_weights", True)))

    def to_hf(self) -> dict:
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": self.vocab_size,
                "n_positions": self.n_positions, "n_ctx": self.n_positions, "n_embd": self.n_embd,
                "n_layer": self.n_layer, "n_head": self.n_head, "n_inner": self.n_inner,
                "layer_norm_epsilon": self.layer_norm_epsilon, "activation_function": self.activation_function,
                "scale_attn_weights": self.scale_attn_weights, "tie_word_embeddings": True,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def _linear_shapes(cfg: GPT2Config) -> dict[str, tuple[int, int]]:
    d = cfg.n_embd
    return {"attn.c_attn": (d, 3 * d), "attn.c_proj": (d, d), "mlp.c_fc": (d, cfg.n_inner),
            "mlp.c_proj": (cfg.n_inner, d)}


_AXES = {"attn.c_attn": ("embed", "qkv"), "attn.c_proj": ("heads", "embed"), "mlp.c_fc": ("embed", "mlp"),
         "mlp.c_proj": ("mlp", "embed")}


def linear_layers(cfg: GPT2Config) -> dict[str, tuple[int, int]]:
    return {f"transformer.h.{i}.{s}": shape for i in range(cfg.n_layer) for s, shape in _linear_shapes(cfg).items()}


def default_edit_layers(cfg: GPT2Config, n_blocks: int = 3, first: int | None = None) -> tuple[str, ...]:
    """MEND's GPT-2 convention: ``c_fc`` and ``c_proj`` of the last ``n_blocks`` blocks (or, with ``first``, of
    blocks ``first .. first + n_blocks - 1``)."""
    return tuple(f"transformer.h.{i}.mlp.{m}" for i in edited_blocks(cfg.n_layer, n_blocks, first)
                 for m in ("c_fc", "c_proj"))


def _tree(cfg: GPT2Config, lin, norm, emb) -> dict:
    layers = []
    for _ in range(cfg.n_layer):
        layer: dict = {"ln_1": norm(), "ln_2": norm(), "attn": {}, "mlp": {}}
        for suffix, (din, dout) in _linear_shapes(cfg).items():
            g, n = suffix.split(".")
            layer[g][n] = lin(suffix, din, dout)
        layers.append(layer)
    return {"transformer": {"wte": {"embedding": emb("wte")}, "wpe": {"embedding": emb("wpe")}, "h": layers,
                            "ln_f": norm()}}


def param_axes(cfg: GPT2Config) -> dict:
    return _tree(cfg, lambda s, i, o: {"kernel": _AXES[s], "bias": (_AXES[s][1],)},
                 lambda: {"scale": ("norm",), "bias": ("norm",)},
                 lambda which: ("vocab", "embed") if which == "wte" else ("position", "embed"))


def param_shapes(cfg: GPT2Config, dtype=jnp.float32) -> dict:
    S = jax.ShapeDtypeStruct
    return _tree(cfg, lambda s, i, o: {"kernel": S((i, o), dtype), "bias": S((o,), dtype)},
                 lambda: {"scale": S((cfg.n_embd,), dtype), "bias": S((cfg.n_embd,), dtype)},
                 lambda w: S((cfg.vocab_size if w == "wte" else cfg.n_positions, cfg.n_embd), dtype))


def init_params(cfg: GPT2Config, key: jax.Array, dtype=jnp.float32, std: float = 0.02) -> dict:
    shapes = param_shapes(cfg, dtype)
    leaves, treedef = jax.tree.flatten_with_path(shapes)
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, (path, s) in zip(keys, leaves):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            out.append(jnp.ones(s.shape, s.dtype))
        elif len(s.shape) == 1:
            out.append(jnp.zeros(s.shape, s.dtype))
        else:
            out.append((std * jax.random.normal(k, s.shape, jnp.float32)).astype(s.dtype))
    return jax.tree.unflatten(treedef, out)


def forward(params: Mapping, cfg: GPT2Config, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
            hooks: LinearHooks | None = None, logits_at: jax.Array | None = None,
            first_layer: int = 0, hidden: jax.Array | None = None) -> jax.Array:
    hooks = hooks or LinearHooks()
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    x = hidden if hidden is not None else hidden_before(params, cfg, input_ids, attention_mask, 0)
    for i in range(first_layer, cfg.n_layer):
        x = block(params["transformer"]["h"][i], cfg, i, x, attention_mask, hooks)
    return head(params, cfg, x, logits_at)


def hidden_before(params: Mapping, cfg: GPT2Config, input_ids, attention_mask, layer: int) -> jax.Array:
    tr = params["transformer"]
    t = input_ids.shape[1]
    x = jnp.take(tr["wte"]["embedding"], input_ids, axis=0) + tr["wpe"]["embedding"][:t][None]
    hooks = LinearHooks()
    for i in range(layer):
        x = block(tr["h"][i], cfg, i, x, attention_mask, hooks)
    return x


def block(p: Mapping, cfg: GPT2Config, i: int, x, attention_mask, hooks: LinearHooks):
    pre = f"transformer.h.{i}."
    b, t, d = x.shape
    hd = d // cfg.n_head
    h = layer_norm(x, p["ln_1"]["scale"], p["ln_1"]["bias"], cfg.layer_norm_epsilon)
    qkv = hooks.linear(pre + "attn.c_attn", p["attn"]["c_attn"], h)
    q, k, v = (z.reshape(b, t, cfg.n_head, hd) for z in jnp.split(qkv, 3, axis=-1))
    scale = 1.0 / math.sqrt(hd) if cfg.scale_attn_weights else 1.0
    attn = causal_attention(q, k, v, attention_mask, scale)
    x = x + hooks.linear(pre + "attn.c_proj", p["attn"]["c_proj"], attn)
    h = layer_norm(x, p["ln_2"]["scale"], p["ln_2"]["bias"], cfg.layer_norm_epsilon)
    h = gelu_tanh(hooks.linear(pre + "mlp.c_fc", p["mlp"]["c_fc"], h))
    return x + hooks.linear(pre + "mlp.c_proj", p["mlp"]["c_proj"], h)


def head(params: Mapping, cfg: GPT2Config, x: jax.Array, logits_at: jax.Array | None = None) -> jax.Array:
    tr = params["transformer"]
    x = gather_positions(x, logits_at)
    x = layer_norm(x, tr["ln_f"]["scale"], tr["ln_f"]["bias"], cfg.layer_norm_epsilon)
    return jnp.einsum("btd,vd->btv", x, tr["wte"]["embedding"].astype(x.dtype)).astype(jnp.float32)


def from_hf_state(state: Mapping[str, np.ndarray], cfg: GPT2Config) -> dict:
    def get(name):
        for cand in (name, name.removeprefix("transformer.")):
            if cand in state:
                return state[cand]
        raise KeyError(name)
    return {"transformer": {
        "wte": {"embedding": get("transformer.wte.weight")}, "wpe": {"embedding": get("transformer.wpe.weight")},
        "ln_f": {"scale": get("transformer.ln_f.weight"), "bias": get("transformer.ln_f.bias")},
        "h": [{"ln_1": {"scale": get(f"transformer.h.{i}.ln_1.weight"), "bias": get(f"transformer.h.{i}.ln_1.bias")},
               "ln_2": {"scale": get(f"transformer.h.{i}.ln_2.weight"), "bias": get(f"transformer.h.{i}.ln_2.bias")},
               "attn": {n: {"kernel": get(f"transformer.h.{i}.attn.{n}.weight"),
                            "bias": get(f"transformer.h.{i}.attn.{n}.bias")} for n in ("c_attn", "c_proj")},
               "mlp": {n: {"kernel": get(f"transformer.h.{i}.mlp.{n}.weight"),
                           "bias": get(f"transformer.h.{i}.mlp.{n}.bias")} for n in ("c_fc", "c_proj")}}
              for i in range(cfg.n_layer)]}}


def to_hf_state(params: Mapping, cfg: GPT2Config) -> dict[str, np.ndarray]:
    tr = params["transformer"]
    out = {"transformer.wte.weight": tr["wte"]["embedding"], "transformer.wpe.weight": tr["wpe"]["embedding"],
           "transformer.ln_f.weight": tr["ln_f"]["scale"], "transformer.ln_f.bias": tr["ln_f"]["bias"]}
    for i, layer in enumerate(tr["h"]):
        pre = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            out[pre + ln + ".weight"] = layer[ln]["scale"]
            out[pre + ln + ".bias"] = layer[ln]["bias"]
        for g in ("attn", "mlp"):
            for n, p in layer[g].items():
                out[f"{pre}{g}.{n}.weight"] = p["kernel"]
                out[f"{pre}{g}.{n}.bias"] = p["bias"]
    return {k: np.asarray(v) for k, v in out.items()}
