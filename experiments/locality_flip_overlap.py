"""Which whole locality answers do several editors lose, and how close were they to a tie before any edit?

Reads per-record eval files (``mend-jax eval --per-record``) of the same records and a margins file written by
``experiments/locality_margins.py`` (the unedited model's smallest top-1 minus top-2 logit over each answer), and
prints, per margin bucket, how many answers each editor loses and how many all of them lose.

    .venv/bin/python experiments/locality_flip_overlap.py \
        experiments/results/run8final_3steps_eval_zsre_dev_single.loc_margins.json \
        experiments/results/run17_eval_zsre_dev_single.json experiments/results/run18_eval_zsre_dev_single.json \
        experiments/results/run19_eval_zsre_dev_single.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

BUCKETS = ((0.0, 0.01), (0.01, 0.03), (0.03, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, float("inf")))


def lost_answers(path: str, method: str = "mend") -> set[int]:
    pr = json.loads(Path(path).read_text())["per_record"]
    return {i for i, w in zip(pr["index"], pr[method]["locality_whole"]) if w < 1}


def main(margins_file: str, *eval_files: str) -> None:
    m = json.loads(Path(margins_file).read_text())
    margin = dict(zip(m["index"], m["min_margin"]))
    lost = {Path(f).stem: lost_answers(f) for f in eval_files}
    common = set.intersection(*lost.values())
    print(f"lost whole answers: " + ", ".join(f"{k} {len(v)}" for k, v in lost.items())
          + f"; by all {len(common)}, by any {len(set.union(*lost.values()))}")
    for lo, hi in BUCKETS:
        inb = lambda s: sum(lo <= margin[i] < hi for i in s)  # noqa: E731
        print(f"margin [{lo}, {hi}): answers {inb(margin):4d}  " + "  ".join(f"{k} {inb(v):3d}" for k, v in lost.items())
              + f"  all {inb(common):3d}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("margins_file", help="experiments/locality_margins.py output for the evaluated records")
    ap.add_argument("eval_files", nargs="+", help="mend-jax eval --per-record JSON files of the same records")
    a = ap.parse_args()
    main(a.margins_file, *a.eval_files)
