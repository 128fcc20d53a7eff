"""Does transformers load an exported (edited) model and give our logits? Two halves, two Pythons:

    .venv/bin/python     tests/golden/check_export.py ours         EXPORTED_FOLDER logits.npz   # this package
    .venv-ref/bin/python tests/golden/check_export.py transformers EXPORTED_FOLDER logits.npz   # torch + transformers

The first writes the token ids and our logits for a few prompts (tokenised by the exported tokenizer); the second
loads the folder with ``AutoModelForCausalLM`` / ``AutoTokenizer`` and prints the largest logit difference and
whether the argmax tokens agree. The tests check export -> reload in this package; this script adds transformers.
"""
from __future__ import annotations

import sys

import numpy as np

PROMPTS = ["The Eiffel Tower is located in the city of", "The capital of France is",
           "Water boils at a temperature of"]


def ours(folder: str, out: str) -> None:
    from mend_jax.weights import load_model
    model = load_model(folder, progress=False)
    arrays = {}
    for i, p in enumerate(PROMPTS):
        ids = np.asarray(model.tokenizer(p)["input_ids"], np.int32)[None]
        logits = model.family.forward(model.params, model.config, ids, np.ones_like(ids))
        arrays[f"ids/{i}"] = ids
        arrays[f"logits/{i}"] = np.asarray(logits, np.float32)
    np.savez(out, **arrays)
    print(f"wrote {len(PROMPTS)} prompts' logits to {out}")


def transformers_side(folder: str, ref: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    data = np.load(ref)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    worst, same = 0.0, True
    for i, p in enumerate(PROMPTS):
        ids = tok(p, return_tensors="pt")["input_ids"]
        np.testing.assert_array_equal(ids.numpy(), data[f"ids/{i}"])
        with torch.no_grad():
            logits = model(ids).logits.numpy()
        worst = max(worst, float(np.abs(logits - data[f"logits/{i}"]).max()))
        same &= bool((logits.argmax(-1) == data[f"logits/{i}"].argmax(-1)).all())
    print(f"transformers vs mend-jax on the exported folder: max |logit difference| {worst:.2e}; "
          f"same argmax tokens: {same}")
    if worst > 1e-3 or not same:
        sys.exit(1)


if __name__ == "__main__":
    side, folder, path = sys.argv[1:4]
    (ours if side == "ours" else transformers_side)(folder, path)
