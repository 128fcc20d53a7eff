"""Getting real weights into parameter pytrees: GGUF, transformers folders (single or sharded safetensors), the hub,
a local cache in transformers format, and a short registry of model names."""
from mend_jax.weights.loader import LoadedModel, load_model, resolve_source
from mend_jax.weights.registry import DEFAULT_MODEL, MODELS, ModelSpec

__all__ = ["DEFAULT_MODEL", "LoadedModel", "MODELS", "ModelSpec", "load_model", "resolve_source"]
