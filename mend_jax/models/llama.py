"""The LLaMA family (LLaMA 2/3, SmolLM2, Qwen2-style q/k/v biases, Mistral without sliding windows) as pure functions.

Parameters are a nested dict that mirrors transformers' module names, so ``model.layers.27.mlp.down_proj`` is
``params["model"]["layers"][27]["mlp"]["down_proj"]``. Linear kernels are stored ``[in, out]`` (the transpose of
torch's ``nn.Linear.weight``); conversion lives in :func:`from_hf_state` / :func:`to_hf_state`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mend_jax.models.layers import (LinearHooks, apply_rope, causal_attention, edited_blocks, gather_positions,
                                    positions_from_mask, rms_norm, rope_inv_freq)

FAMILY = "llama"
HF_MODEL_TYPES = ("llama", "qwen2", "mistral")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # hashable form of the scaling dict
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    hf_model_type: str = "llama"
    family: str = FAMILY

    @property
    def rope_scaling_dict(self) -> dict | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "LlamaConfig":
        model_type = d.get("model_type", "llama")
        heads = int(d["num_attention_heads"])
        hidden = int(d["hidden_size"])
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        theta = d.get("rope_theta") or rope.get("rope_theta") or 10000.0
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        if scaling.get("rope_type", scaling.get("type", "default")) in ("default", None):
            scaling = None
        elif "type" in scaling and "rope_type" not in scaling:
            scaling["rope_type"] = scaling.pop("type")
        if model_type == "qwen2":
            qkv_bias, o_bias = True, False
        else:
            qkv_bias = o_bias = bool(d.get("attention_bias", False))
        return cls(
            vocab_size=int(d["vocab_size"]), hidden_size=hidden, intermediate_size=int(d["intermediate_size"]),
            num_layers=int(d["num_hidden_layers"]), num_heads=heads,
            num_kv_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or hidden // heads),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)), rope_theta=float(theta),
            rope_scaling=tuple(sorted(scaling.items())) if scaling else None,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias, o_bias=o_bias, mlp_bias=bool(d.get("mlp_bias", False)),
            hf_model_type=model_type,
        )

    def to_hf(self) -> dict:
        rope_parameters = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope_parameters.update(dict(self.rope_scaling))
        d = {
            "architectures": ["Qwen2ForCausalLM" if self.hf_model_type == "qwen2" else "LlamaForCausalLM"],
            "model_type": self.hf_model_type if self.hf_model_type in ("llama", "qwen2") else "llama",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim, "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta, "rope_parameters": rope_parameters,
            "tie_word_embeddings": self.tie_word_embeddings, "hidden_act": "silu", "mlp_bias": self.mlp_bias,
        }
        if d["model_type"] == "llama":
            d["attention_bias"] = self.qkv_bias
        return d


def _linear_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, int, bool]]:
    """Per-block linear layers: suffix -> (in, out, has_bias)."""
    q_out = cfg.num_heads * cfg.head_dim
    kv_out = cfg.num_kv_heads * cfg.head_dim
    return {
        "self_attn.q_proj": (cfg.hidden_size, q_out, cfg.qkv_bias),
        "self_attn.k_proj": (cfg.hidden_size, kv_out, cfg.qkv_bias),
        "self_attn.v_proj": (cfg.hidden_size, kv_out, cfg.qkv_bias),
        "self_attn.o_proj": (q_out, cfg.hidden_size, cfg.o_bias),
        "mlp.gate_proj": (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias),
        "mlp.up_proj": (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias),
        "mlp.down_proj": (cfg.intermediate_size, cfg.hidden_size, cfg.mlp_bias),
    }


_AXES = {
    "self_attn.q_proj": ("embed", "heads"), "self_attn.k_proj": ("embed", "kv_heads"),
    "self_attn.v_proj": ("embed", "kv_heads"), "self_attn.o_proj": ("heads", "embed"),
    "mlp.gate_proj": ("embed", "mlp"), "mlp.up_proj": ("embed", "mlp"), "mlp.down_proj": ("mlp", "embed"),
}


def linear_layers(cfg: LlamaConfig) -> dict[str, tuple[int, int]]:
    """Every linear layer MEND could edit: transformers module name -> (in, out)."""
    out = {}
    for i in range(cfg.num_layers):
        for suffix, (din, dout, _) in _linear_shapes(cfg).items():
            out[f"model.layers.{i}.{suffix}"] = (din, dout)
    return out


def default_edit_layers(cfg: LlamaConfig, n_blocks: int = 3, first: int | None = None) -> tuple[str, ...]:
    """MEND's convention for decoder LMs: the MLP matrices of the last ``n_blocks`` blocks (or, with ``first``,
    of blocks ``first .. first + n_blocks - 1``)."""
    return tuple(f"model.layers.{i}.mlp.{m}" for i in edited_blocks(cfg.num_layers, n_blocks, first)
                 for m in ("gate_proj", "up_proj", "down_proj"))


def _set(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def _map_layers(cfg: LlamaConfig, fn_linear, fn_norm) -> dict:
    layers = []
    for _ in range(cfg.num_layers):
        layer: dict = {}
        for suffix, (din, dout, bias) in _linear_shapes(cfg).items():
            _set(layer, suffix, fn_linear(suffix, din, dout, bias))
        layer["input_layernorm"] = fn_norm()
        layer["post_attention_layernorm"] = fn_norm()
        layers.append(layer)
    return layers


def param_axes(cfg: LlamaConfig) -> dict:
    """Logical axis names for every parameter (same tree structure as the params)."""
    def lin(suffix, din, dout, bias):
        d = {"kernel": _AXES[suffix]}
        if bias:
            d["bias"] = (_AXES[suffix][1],)
        return d
    tree = {"model": {"embed_tokens": {"embedding": ("vocab", "embed")},
                      "layers": _map_layers(cfg, lin, lambda: {"scale": ("norm",)}),
                      "norm": {"scale": ("norm",)}}}
    if not cfg.tie_word_embeddings:
        tree["lm_head"] = {"kernel": ("embed", "vocab")}
    return tree


def param_shapes(cfg: LlamaConfig, dtype=jnp.float32) -> dict:
    """Abstract parameters (``jax.ShapeDtypeStruct``), e.g. for planning memory without weights."""
    def lin(suffix, din, dout, bias):
        d = {"kernel": jax.ShapeDtypeStruct((din, dout), dtype)}
        if bias:
            d["bias"] = jax.ShapeDtypeStruct((dout,), dtype)
        return d
    norm = lambda: {"scale": jax.ShapeDtypeStruct((cfg.hidden_size,), dtype)}  # noqa: E731
    tree = {"model": {"embed_tokens": {"embedding": jax.ShapeDtypeStruct((cfg.vocab_size, cfg.hidden_size), dtype)},
                      "layers": _map_layers(cfg, lin, norm), "norm": norm()}}
    if not cfg.tie_word_embeddings:
        tree["lm_head"] = {"kernel": jax.ShapeDtypeStruct((cfg.hidden_size, cfg.vocab_size), dtype)}
    return tree


def init_params(cfg: LlamaConfig, key: jax.Array, dtype=jnp.float32, std: float = 0.02) -> dict:
    """Random parameters (for tests and shape studies)."""
    shapes = param_shapes(cfg, dtype)
    leaves, treedef = jax.tree.flatten(shapes)
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, s in zip(keys, leaves):
        if len(s.shape) == 1:
            out.append(jnp.ones(s.shape, s.dtype))
        else:
            out.append((std * jax.random.normal(k, s.shape, jnp.float32)).astype(s.dtype))
    return jax.tree.unflatten(treedef, out)


def forward(params: Mapping, cfg: LlamaConfig, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
            hooks: LinearHooks | None = None, logits_at: jax.Array | None = None,
            first_layer: int = 0, hidden: jax.Array | None = None) -> jax.Array:
    """Logits [B,T,V] (or [B,K,V] at ``logits_at`` [B,K]).

    ``hooks`` adds taps / low-rank edits to named linear layers and records their inputs. ``first_layer`` and
    ``hidden`` resume the forward from a cached hidden state entering block ``first_layer`` (used to skip the
    frozen lower blocks when only upper blocks change).
    """
    hooks = hooks or LinearHooks()
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    m = params["model"]
    x = hidden if hidden is not None else jnp.take(m["embed_tokens"]["embedding"], input_ids, axis=0)
    positions = positions_from_mask(attention_mask)
    inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling_dict)
    for i in range(first_layer, cfg.num_layers):
        x = block(m["layers"][i], cfg, i, x, attention_mask, positions, inv_freq, hooks)
    return head(params, cfg, x, logits_at)


def hidden_before(params: Mapping, cfg: LlamaConfig, input_ids, attention_mask, layer: int) -> jax.Array:
    """Hidden state entering block ``layer`` (no hooks)."""
    m = params["model"]
    x = jnp.take(m["embed_tokens"]["embedding"], input_ids, axis=0)
    positions = positions_from_mask(attention_mask)
    inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling_dict)
    hooks = LinearHooks()
    for i in range(layer):
        x = block(m["layers"][i], cfg, i, x, attention_mask, positions, inv_freq, hooks)
    return x


def block(p: Mapping, cfg: LlamaConfig, i: int, x, attention_mask, positions, inv_freq, hooks: LinearHooks):
    pre = f"model.layers.{i}."
    b, t, _ = x.shape
    h = rms_norm(x, p["input_layernorm"]["scale"], cfg.rms_norm_eps)
    a = p["self_attn"]
    q = hooks.linear(pre + "self_attn.q_proj", a["q_proj"], h).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = hooks.linear(pre + "self_attn.k_proj", a["k_proj"], h).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = hooks.linear(pre + "self_attn.v_proj", a["v_proj"], h).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq)
    attn = causal_attention(q, k, v, attention_mask, 1.0 / math.sqrt(cfg.head_dim))
    x = x + hooks.linear(pre + "self_attn.o_proj", a["o_proj"], attn)
    h = rms_norm(x, p["post_attention_layernorm"]["scale"], cfg.rms_norm_eps)
    mlp = p["mlp"]
    gate = hooks.linear(pre + "mlp.gate_proj", mlp["gate_proj"], h)
    up = hooks.linear(pre + "mlp.up_proj", mlp["up_proj"], h)
    return x + hooks.linear(pre + "mlp.down_proj", mlp["down_proj"], jax.nn.silu(gate) * up)


def head(params: Mapping, cfg: LlamaConfig, x: jax.Array, logits_at: jax.Array | None = None) -> jax.Array:
    x = gather_positions(x, logits_at)
    x = rms_norm(x, params["model"]["norm"]["scale"], cfg.rms_norm_eps)
    if cfg.tie_word_embeddings:
        w = params["model"]["embed_tokens"]["embedding"]
        return jnp.einsum("btd,vd->btv", x, w.astype(x.dtype)).astype(jnp.float32)
    return (x @ params["lm_head"]["kernel"].astype(x.dtype)).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------- conversion
def from_hf_state(state: Mapping[str, np.ndarray], cfg: LlamaConfig) -> dict:
    """transformers state dict (HF names and layouts) -> params tree. Raises KeyError naming a missing tensor.

    Only indexes and transposes the tensors (``.T``): numpy arrays give views, and the lazy tensors of
    ``mend_jax.weights.lazy_state`` stay lazy, so the loader reads each device's shard straight from the file."""
    def get(name):
        if name not in state:
            raise KeyError(name)
        return state[name]

    def lin(prefix, bias):
        d = {"kernel": get(prefix + ".weight").T}
        if bias:
            d["bias"] = get(prefix + ".bias")
        return d

    layers = []
    for i in range(cfg.num_layers):
        pre = f"model.layers.{i}."
        layer: dict = {}
        for suffix, (_, _, bias) in _linear_shapes(cfg).items():
            _set(layer, suffix, lin(pre + suffix, bias))
        layer["input_layernorm"] = {"scale": get(pre + "input_layernorm.weight")}
        layer["post_attention_layernorm"] = {"scale": get(pre + "post_attention_layernorm.weight")}
        layers.append(layer)
    params = {"model": {"embed_tokens": {"embedding": get("model.embed_tokens.weight")}, "layers": layers,
                        "norm": {"scale": get("model.norm.weight")}}}
    if not cfg.tie_word_embeddings:
        params["lm_head"] = {"kernel": get("lm_head.weight").T}
    return params


def to_hf_state(params: Mapping, cfg: LlamaConfig) -> dict[str, np.ndarray]:
    """params tree -> transformers state dict (numpy, HF names and layouts)."""
    out = {"model.embed_tokens.weight": np.asarray(params["model"]["embed_tokens"]["embedding"]),
           "model.norm.weight": np.asarray(params["model"]["norm"]["scale"])}
    for i, layer in enumerate(params["model"]["layers"]):
        pre = f"model.layers.{i}."
        for suffix, (_, _, bias) in _linear_shapes(cfg).items():
            group, name = suffix.split(".")
            p = layer[group][name]
            out[pre + suffix + ".weight"] = np.ascontiguousarray(np.asarray(p["kernel"]).T)
            if bias:
                out[pre + suffix + ".bias"] = np.asarray(p["bias"])
        out[pre + "input_layernorm.weight"] = np.asarray(layer["input_layernorm"]["scale"])
        out[pre + "post_attention_layernorm.weight"] = np.asarray(layer["post_attention_layernorm"]["scale"])
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = np.ascontiguousarray(np.asarray(params["lm_head"]["kernel"]).T)
    return out
