"""mend_jax: MEND (Mitchell et al., "Fast Model Editing at Scale", ICLR 2022) in JAX.

Layout: ``models/`` (LLaMA and GPT-2 as pure functions), ``weights/`` (GGUF / safetensors / hub loading, registry),
``editing/`` (gradient factors, the editor network, applying edits), ``training/`` (meta-training), ``data/``
(zsRE, CounterFact), ``evaluation.py``, ``checkpoints.py``, ``sharding.py``, ``cli.py``.
"""
import os as _os

_os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no "PyTorch was not found" banner: we never need torch

__version__ = "0.1.0"
