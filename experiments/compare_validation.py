"""Validation of two training runs at equal steps, side by side (from their JSONL logs).

    .venv/bin/python experiments/compare_validation.py runs/run14/log.jsonl \
        experiments/results/training_run8_2steps_log.jsonl

Each cell is ``first / second``: single-edit rephrase and prompt accuracy, locality (argmax kept), edit and locality
losses, then the 10-at-once rephrase accuracy and locality, and the mean dev loss that early stopping reads.
"""
from __future__ import annotations

import argparse
import json

KEYS = ["val/edit_acc", "val/prompt_acc", "val/loc_same", "val/loss/edit", "val/loss/loc", "val_k10/edit_acc",
        "val_k10/loc_same", "val/loss_all"]


def validation_rows(path: str) -> dict[int, dict]:
    rows = {}
    with open(path) as fh:
        for line in fh:
            r = json.loads(line)
            if any(k.startswith("val") for k in r):
                rows[r["step"]] = r
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("first")
    ap.add_argument("second")
    args = ap.parse_args()
    a, b = validation_rows(args.first), validation_rows(args.second)
    print("step " + " ".join(k.replace("val", "") for k in KEYS))
    for step in sorted(set(a) & set(b)):
        print(step, " ".join(f"{a[step].get(k, float('nan')):.3f}/{b[step].get(k, float('nan')):.3f}" for k in KEYS))


if __name__ == "__main__":
    main()
