"""Whole-answer locality failures of a per-record eval file, by the locality answer's length in tokens.

    .venv/bin/python experiments/locality_by_answer_length.py experiments/results/run8p1_eval_zsre_dev_single.json
"""
from __future__ import annotations

import json
import sys

import numpy as np

from mend_jax.data import load_records
from mend_jax.training.batches import tokenize_pair
from mend_jax.weights import load_model


def main(path: str) -> None:
    res = json.loads(open(path).read())
    idx = res["per_record"]["index"]
    recs = list(load_records(res["data"], res["file"]))
    tok = load_model(res["model"], progress=False).tokenizer
    n = np.array([len(tokenize_pair(tok, recs[i].loc_prompt, recs[i].loc_answer)[1]) for i in idx])
    whole = np.array(res["per_record"]["mend"]["locality_whole"])
    print(f"{(whole < 1).sum()} of {len(whole)} locality answers changed")
    for lo, hi in ((1, 1), (2, 3), (4, 5), (6, 99)):
        s = (n >= lo) & (n <= hi)
        if s.any():
            print(f"answer tokens {lo}-{hi}: {s.sum()} records, failure rate {1 - whole[s].mean():.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
