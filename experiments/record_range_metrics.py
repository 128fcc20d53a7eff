"""Mean metrics of a `mend-jax eval --per-record` results file over a range of its records (by record index), e.g.
one-step MEND and fine-tuning on the records a tuned setting was not picked on:

    .venv/bin/python experiments/record_range_metrics.py experiments/results/run7final_eval_zsre_dev_single.json 100:500
"""
from __future__ import annotations

import json
import sys

import numpy as np

KEYS = ("reliability_token", "reliability_exact", "generalization_token", "generalization_exact", "locality_token",
        "locality_whole")


def main(path: str, span: str) -> None:
    res = json.load(open(path))
    if "per_record" not in res:
        sys.exit(f"{path} has no per-record values: rerun `mend-jax eval` with --per-record")
    lo, hi = (int(x) for x in span.split(":"))
    pr = res["per_record"]
    keep = [i for i, idx in enumerate(pr["index"]) if lo <= idx < hi]
    print(f"{path}: {len(keep)} records with index in [{lo}, {hi})")
    for method in ("mend", "finetune", "unedited"):
        if method in pr:
            vals = " ".join(f"{k} {np.mean([pr[method][k][i] for i in keep]):.3f}" for k in KEYS)
            print(f"{method:9s} {vals}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
