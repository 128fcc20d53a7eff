"""Are the locality answers an edit changes the ones the unedited model barely decides?

For every record of a per-record eval file, the unedited model's smallest top-1 minus top-2 logit margin over the
locality answer's tokens (teacher forced, the positions evaluation compares), bucketed, with the whole-answer
locality failure rate of each bucket for every eval file given (the first file gives the records). A KL locality
loss hardly sees a near-tie (flipping it moves little probability), while whole-answer locality counts it in full.

    .venv/bin/python experiments/locality_margins.py experiments/results/run8final_3steps_eval_zsre_dev_single.json \
        experiments/results/run8p1_eval_zsre_dev_single.json

The margins are saved next to the first file (``*.loc_margins.json``) and read back on the next run.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mend_jax.data import load_records
from mend_jax.editing.batch import encode_examples
from mend_jax.editing.losses import argmax_margin
from mend_jax.weights import load_model

BUCKETS = ((0.0, 0.01), (0.01, 0.03), (0.03, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 1.0), (1.0, float("inf")))


def min_answer_margins(model, records) -> np.ndarray:
    """Per record: min over the loc answer tokens of (top-1 logit - top-2 logit) of the unedited model."""
    cfg, fam = model.config, model.family

    @jax.jit
    def margins(params, ids, mask, pos):
        logits = fam.forward(params, cfg, ids, mask, logits_at=pos)
        return argmax_margin(logits, jnp.argmax(logits, -1))

    out = []
    for r in records:
        b = encode_examples(model.tokenizer, [r.loc_prompt], [r.loc_answer], max_length=cfg.max_position_embeddings,
                            min_seq=16, min_target=4)
        m = np.asarray(margins(model.params, b.input_ids, b.attention_mask, b.target_pos))
        out.append(float(m[np.asarray(b.target_mask) > 0].min()))
    return np.array(out)


def main(paths: list[str]) -> None:
    results = [json.loads(open(p).read()) for p in paths]
    first = results[0]
    idx = first["per_record"]["index"]
    recs = list(load_records(first["data"], first["file"]))
    cache = Path(paths[0]).with_suffix(".loc_margins.json")  # the margins depend on the model and records only
    saved = json.loads(cache.read_text()) if cache.exists() else {}
    if saved.get("index") == idx:
        margin = np.array(saved["min_margin"])
    else:
        margin = min_answer_margins(load_model(first["model"], progress=False), [recs[i] for i in idx])
        cache.write_text(json.dumps({"model": first["model"], "file": first["file"], "index": idx,
                                     "min_margin": margin.tolist()}))
    fails = []
    for res in results:
        if res["per_record"]["index"] != idx:
            raise SystemExit("the eval files must cover the same records in the same order")
        fails.append(np.array(res["per_record"]["mend"]["locality_whole"]) < 1)
    print("min margin  records  " + "  ".join(f"fail rate [{p.rsplit('/', 1)[-1][:28]}]" for p in paths))
    for lo, hi in BUCKETS:
        s = (margin >= lo) & (margin < hi)
        if s.any():
            print(f"[{lo:4.2f},{hi:4.2f})  {s.sum():7d}  " + "  ".join(f"{f[s].mean():.3f} ({f[s].sum()})".ljust(38)
                                                               for f in fails))
    both = np.logical_and.reduce(fails)
    print(f"changed by every editor: {both.sum()}; their median min margin {np.median(margin[both]):.3f}, "
          f"all records' {np.median(margin):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
