"""GGUF -> transformers-format config, state dict (HF names, HF layouts, float32) and tokenizer.

Uses the ``gguf`` package to read and dequantize. llama.cpp's converter permutes the rows of ``attn_q``/``attn_k``
within each head (from transformers' rotate-half RoPE layout to the interleaved layout); we undo that so the
weights are bit-identical to transformers' ``q_proj``/``k_proj``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mend_jax.errors import UnsupportedModelError, WeightFileError

SUPPORTED_ARCHS = ("llama", "qwen2")

_BLOCK_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight", "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_MAP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight"}


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's ``permute`` for Q/K rows (works for weights [out, in] and biases [out])."""
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def open_gguf(path: str | Path):
    from gguf import GGUFReader
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"GGUF file not found: {path}")
    try:
        return GGUFReader(str(path))
    except Exception as e:  # gguf raises assorted ValueError/struct errors on corrupt files
        raise WeightFileError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); "
                              f"re-download or reinstall it") from e


def read_gguf(path: str | Path, progress: bool = True):
    """Returns ``(hf_config: dict, state: dict[str, np.ndarray], tokenizer_fields: dict)``."""
    from gguf.quants import dequantize
    from tqdm import tqdm

    reader = open_gguf(path)
    meta = {k: f.contents() for k, f in reader.fields.items()}
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedModelError(f"GGUF architecture {arch!r} in {path} is not supported "
                                    f"(supported: {', '.join(SUPPORTED_ARCHS)})")

    def m(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    n_head = int(m("attention.head_count"))
    n_kv = int(m("attention.head_count_kv", n_head))
    hidden = int(m("embedding_length"))
    names = {t.name for t in reader.tensors}
    cfg = {
        "model_type": "llama" if arch == "llama" else "qwen2",
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        "vocab_size": int(m("vocab_size", len(meta.get("tokenizer.ggml.tokens", [])))),
        "hidden_size": hidden, "intermediate_size": int(m("feed_forward_length")),
        "num_hidden_layers": int(m("block_count")), "num_attention_heads": n_head, "num_key_value_heads": n_kv,
        "head_dim": int(m("attention.key_length", hidden // n_head)),
        "max_position_embeddings": int(m("context_length", 2048)),
        "rms_norm_eps": float(m("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(m("rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": False, "mlp_bias": False, "hidden_act": "silu",
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"), "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }
    if arch == "llama" and m("rope.scaling.type") not in (None, "none"):
        raise UnsupportedModelError(f"GGUF RoPE scaling {m('rope.scaling.type')!r} is not supported")

    state: dict[str, np.ndarray] = {}
    block_re = re.compile(r"blk\.(\d+)\.(.+)")
    for t in tqdm(reader.tensors, desc=f"dequantizing {Path(path).name}", disable=not progress, unit="tensor"):
        if t.name in _TOP_MAP:
            hf = _TOP_MAP[t.name]
        elif (mt := block_re.fullmatch(t.name)) and mt.group(2) in _BLOCK_MAP:
            hf = f"model.layers.{mt.group(1)}.{_BLOCK_MAP[mt.group(2)]}"
        else:
            continue  # e.g. rope_freqs: recomputed from the config
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)]) if w.ndim != len(t.shape) else w
        if arch == "llama" and ("attn_q." in t.name or "attn_k." in t.name):
            w = _unpermute(w, n_head if "attn_q." in t.name else n_kv)
        state[hf] = np.ascontiguousarray(w)
    if "model.layers.0.self_attn.q_proj.bias" in state:
        cfg["attention_bias"] = True
    if not np.all([np.isfinite(v).all() for v in state.values()]):
        raise WeightFileError(f"{path} holds non-finite weights after dequantization; the file is corrupt")
    tok_fields = {k: v for k, v in meta.items() if k.startswith("tokenizer.")}
    return cfg, state, tok_fields
