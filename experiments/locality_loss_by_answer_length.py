"""Whole locality answers lost by answer length, against the training shapes' limit on locality answers.

Training and validation keep a locality input only if its answer has at most ``--target-len`` tokens (or
``--loc-answer-len``) and question + answer at most ``--loc-len``; evaluation uses every record's whole NQ answer.
This counts, per per-record eval file (``mend-jax eval --per-record``), the answers lost among those that would
fit the shapes and those that would not, and by answer length; and the share of the training records whose own
locality input fits.

    .venv/bin/python experiments/locality_loss_by_answer_length.py --target-len 8 --loc-len 24 \
        --train-file ../shared/data/zsre/zsre_mend_train-1k.json \
        --file ../shared/data/zsre/zsre_mend_eval_portability_gpt4.json --records 0:500 \
        experiments/results/run17_eval_zsre_dev_single.json experiments/results/run21_eval_zsre_dev_single.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mend_jax.data import load_records
from mend_jax.editing.batch import tokenize_pair
from mend_jax.training.batches import Shapes, loc_fits
from mend_jax.weights.loader import load_model

LENGTHS = ((1, 2), (3, 5), (6, 8), (9, 15), (16, None))


def loc_lengths(tokenizer, records) -> np.ndarray:
    """[n, 2]: tokens of each record's locality question and of its answer."""
    return np.array([[len(x) for x in tokenize_pair(tokenizer, r.loc_prompt, r.loc_answer)] for r in records])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("eval_files", nargs="+")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="zsre")
    ap.add_argument("--file", required=True, help="the evaluated records' file")
    ap.add_argument("--records", default=None, help="A:B, as evaluated")
    ap.add_argument("--train-file", default=None, help="training records: how many own locality inputs fit")
    ap.add_argument("--target-len", type=int, default=8)
    ap.add_argument("--loc-len", type=int, default=24)
    ap.add_argument("--loc-answer-len", type=int, default=0, help="as train's (0: --target-len)")
    args = ap.parse_args()
    tok = load_model(args.model, progress=False).tokenizer
    ev = loc_lengths(tok, load_records(args.data, args.file, records=args.records))
    shapes = Shapes(target_len=args.target_len, loc_len=args.loc_len, loc_answer_len=args.loc_answer_len)

    def fitting(lengths: np.ndarray) -> np.ndarray:
        return np.array([loc_fits(int(q), int(a), shapes) for q, a in lengths], bool)
    fits = fitting(ev)
    print(f"evaluated answers: {len(ev)}, answer tokens median {np.median(ev[:, 1]):.0f}, 90th percentile "
          f"{np.percentile(ev[:, 1], 90):.0f}; fitting the shapes (answer <= {shapes.loc_target_len}, question + answer "
          f"<= {args.loc_len}): {fits.sum()}")
    if args.train_file:
        tr = loc_lengths(tok, load_records(args.data, args.train_file))
        tfit = fitting(tr)
        print(f"training records whose own locality input fits: {tfit.sum()} of {len(tr)} ({tfit.mean():.3f})")
    for f in args.eval_files:
        pr = json.loads(Path(f).read_text())["per_record"]
        lost = np.array(pr["mend"]["locality_whole"]) < 1
        if len(lost) != len(ev):
            raise SystemExit(f"{f} has {len(lost)} records, the file/records given {len(ev)}: give the same --records")
        print(f"{Path(f).stem}: lost {lost.sum()}; among fitting {(lost & fits).sum()} of {fits.sum()} "
              f"({(lost & fits).sum() / fits.sum():.3f}), among longer {(lost & ~fits).sum()} of {(~fits).sum()} "
              f"({(lost & ~fits).sum() / max((~fits).sum(), 1):.3f})")
        for lo, hi in LENGTHS:
            s = (ev[:, 1] >= lo) & (ev[:, 1] <= (hi or 10**9))
            print(f"    answer {lo}-{hi or ''} tokens: {s.sum():3d} answers, lost {(lost & s).sum():2d} "
                  f"({(lost & s).sum() / max(s.sum(), 1):.3f})")


if __name__ == "__main__":
    main()
