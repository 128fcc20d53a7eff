"""Model families as pure functions over parameter pytrees.

``family_for(config)`` returns the module implementing a family (``llama`` or ``gpt2``); every family module has the
same functions: ``from_hf``-able config class, ``forward``, ``hidden_before``, ``head``, ``param_axes``,
``param_shapes``, ``init_params``, ``linear_layers``, ``default_edit_layers``, ``from_hf_state``, ``to_hf_state``.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, Mapping

from mend_jax.errors import UnsupportedModelError
from mend_jax.models import gpt2, llama
from mend_jax.models.gpt2 import GPT2Config
from mend_jax.models.layers import LinearHooks, LowRankEdit
from mend_jax.models.llama import LlamaConfig

FAMILIES: dict[str, ModuleType] = {"llama": llama, "gpt2": gpt2}
ModelConfig = LlamaConfig | GPT2Config


def family_for(cfg: ModelConfig) -> ModuleType:
    return FAMILIES[cfg.family]


def config_from_hf(d: Mapping[str, Any]) -> ModelConfig:
    """Our config from a transformers ``config.json`` dict."""
    model_type = d.get("model_type")
    for fam in FAMILIES.values():
        if model_type in fam.HF_MODEL_TYPES:
            cls = LlamaConfig if fam is llama else GPT2Config
            return cls.from_hf(d)
    supported = sorted(t for f in FAMILIES.values() for t in f.HF_MODEL_TYPES)
    archs = d.get("architectures")
    raise UnsupportedModelError(f"model_type {model_type!r} (architectures {archs}) is not supported; "
                                f"supported model types: {', '.join(supported)}")


def get_module(params: Mapping, name: str) -> dict:
    """The parameter dict of a transformers-named module, e.g. ``model.layers.27.mlp.down_proj``."""
    node: Any = params
    for part in name.split("."):
        try:
            node = node[int(part)] if isinstance(node, (list, tuple)) else node[part]
        except (KeyError, IndexError, ValueError) as e:
            raise KeyError(f"no module {name!r} in the parameters (failed at {part!r})") from e
    return node


def replace_module(params: Mapping, name: str, new: Mapping) -> dict:
    """A copy of ``params`` with one module's dict replaced (structure sharing, no array copies)."""
    parts = name.split(".")

    def rec(node, i):
        if i == len(parts):
            return dict(new)
        key = parts[i]
        if isinstance(node, (list, tuple)):
            idx = int(key)
            out = list(node)
            out[idx] = rec(node[idx], i + 1)
            return out
        out = dict(node)
        out[key] = rec(node[key], i + 1)
        return out

    return rec(params, 0)


def layer_index(name: str) -> int:
    """Block index of a module name (``model.layers.27.mlp.down_proj`` -> 27)."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    raise ValueError(f"{name!r} is not inside a numbered block")


__all__ = ["FAMILIES", "GPT2Config", "LinearHooks", "LlamaConfig", "LowRankEdit", "ModelConfig",
           "UnsupportedModelError", "config_from_hf", "family_for", "get_module", "layer_index", "replace_module"]
