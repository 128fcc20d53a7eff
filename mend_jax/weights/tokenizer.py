"""Tokenizers: built from a GGUF vocabulary with the ``tokenizers`` library (transformers' own GGUF tokenizer path
imports torch), then wrapped and saved as a standard transformers tokenizer folder."""
from __future__ import annotations

from typing import Mapping

from mend_jax.errors import UnsupportedModelError


def tokenizer_from_gguf_fields(fields: Mapping[str, object]):
    """A ``transformers.PreTrainedTokenizerFast`` from GGUF ``tokenizer.ggml.*`` fields (BPE / gpt2 style only)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    kind = fields.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedModelError(f"GGUF tokenizer model {kind!r} is not supported (supported: gpt2 byte-level BPE)")
    tokens = list(fields["tokenizer.ggml.tokens"])
    types = list(fields.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(mg.split(" ", 1)) for mg in fields["tokenizer.ggml.merges"]]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    add_prefix = bool(fields.get("tokenizer.ggml.add_space_prefix", False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix, use_regex=True)
    pre = fields.get("tokenizer.ggml.pre", "default")
    if pre in ("smollm", "starcoder", "refact"):
        # SmolLM2/StarCoder split every digit on its own before the GPT-2 regex (as their tokenizer.json does).
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tk.pre_tokenizer = byte_level
    tk.decoder = decoders.ByteLevel()
    specials = [tokens[i] for i, t in enumerate(types) if t in (3, 4)]  # CONTROL, USER_DEFINED
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])

    def tok_at(key):
        idx = fields.get(key)
        return tokens[int(idx)] if idx is not None and 0 <= int(idx) < len(tokens) else None

    bos, eos, unk, pad = (tok_at(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding"))
    add_bos = bool(fields.get("tokenizer.ggml.add_bos_token", False))
    if add_bos and bos is not None:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])])
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    out = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token=eos, unk_token=unk,
                                  pad_token=pad or eos, padding_side="right", add_bos_token=add_bos)
    template = fields.get("tokenizer.chat_template")
    if template:
        out.chat_template = template
    return out


def load_tokenizer(folder) -> object:
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok
