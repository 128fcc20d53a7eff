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


def lost_answers(source: str, method: str = "mend") -> tuple[str, set[int], set[int]]:
    """(label, records lost, records evaluated) of a per-record eval file, or of one result ``FILE.json:KEY`` of
    ``experiments/tune_finetune.py`` (its ``lost_whole_answers`` over its ``--records A:B``)."""
    path, _, key = source.partition(".json:")
    if key:
        d = json.loads(Path(path + ".json").read_text())
        a, b = (int(x) for x in d["records"].split(":"))
        return f"{Path(path).stem}:{key}", set(d["results"][key]["lost_whole_answers"]), set(range(a, b))
    pr = json.loads(Path(source).read_text())["per_record"]
    return (Path(source).stem, {i for i, w in zip(pr["index"], pr[method]["locality_whole"]) if w < 1},
            set(pr["index"]))


def main(margins_file: str, *eval_files: str) -> None:
    """Counts over the records every file evaluated (a file of records 0-499 beside one of 0-99: records 0-99)."""
    m = json.loads(Path(margins_file).read_text())
    loaded = [lost_answers(f) for f in eval_files]
    records = set.intersection(*(r for _, _, r in loaded))
    margin = {i: v for i, v in zip(m["index"], m["min_margin"]) if i in records}
    lost = {label: lo & records for label, lo, _ in loaded}
    common = set.intersection(*lost.values())
    print(f"records {len(records)}; lost whole answers: " + ", ".join(f"{k} {len(v)}" for k, v in lost.items())
          + f"; by all {len(common)}, by any {len(set.union(*lost.values()))}")
    for lo, hi in BUCKETS:
        inb = lambda s: sum(lo <= margin[i] < hi for i in s)  # noqa: E731
        print(f"margin [{lo}, {hi}): answers {inb(margin):4d}  " + "  ".join(f"{k} {inb(v):3d}" for k, v in lost.items())
              + f"  all {inb(common):3d}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("margins_file", help="experiments/locality_margins.py output for the evaluated records")
    ap.add_argument("eval_files", nargs="+", help="mend-jax eval --per-record JSON files, or tune_finetune.py "
                    "results as FILE.json:KEY (e.g. finetune_blocks_zsre_0_99.json:21-23@0.0001)")
    a = ap.parse_args()
    main(a.margins_file, *a.eval_files)
