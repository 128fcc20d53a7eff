"""Per-record evaluation results (``mend-jax eval --per-record``) grouped by how many editor steps each edit took
under the adaptive rule: records, mean generalization and locality per group (session 32's table, TRAINING_NOTES).

    python experiments/metrics_by_editor_steps.py experiments/results/run28_eval_zsre_dev_single.json
"""
from __future__ import annotations

import json
import sys

import numpy as np


def main(paths: list[str]) -> None:
    for path in paths:
        mend = json.load(open(path))["per_record"]["mend"]
        steps = np.asarray(mend["editor_steps"])
        print(path)
        for k in np.unique(steps):
            sel = steps == k
            means = {m: float(np.mean(np.asarray(mend[m])[sel])) for m in
                     ("reliability_token", "generalization_token", "locality_token", "locality_whole")}
            print(f"  {int(k)} steps: {int(sel.sum()):4d} records  " +
                  "  ".join(f"{m} {v:.3f}" for m, v in means.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
