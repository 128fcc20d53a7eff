"""Median step time of each invocation of a training run folder, from its ``log.jsonl``.

    .venv/bin/python benchmarks/step_times.py runs/run17 [--json OUT]

A resumed run appends to the same log, and each invocation's ``time`` starts again from 0, so consecutive
invocations of one run folder with different settings (an allocator, XLA flags) can be compared on the same
workload: fixed, bucketed shapes, the same schedule. Steps whose problems hold one edit and ten edits are timed
apart (``--schedule 8x1,1x10``); validation steps and the first three of each kind per invocation (warm-up) are left
out. ``--compare RUN...``: also the largest difference of the logged loss on the steps every folder has logged
(their last invocations, started from copies of one checkpoint: settings that must not change the arithmetic, like the allocator,
give 0.0).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def invocations(log: Path) -> list[list[dict]]:
    """The step rows of a log, one list per invocation. A resumed run first truncates the log to its checkpoint's
    step, so steps run on without a gap; an invocation starts where the logged ``time`` (seconds since that
    invocation's start) goes back."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "time" in r and "step" in r and "loss" in r]
    runs: list[list[dict]] = [[]]
    for r in rows:
        if runs[-1] and r["time"] < runs[-1][-1]["time"]:
            runs.append([])
        runs[-1].append(r)
    return [g for g in runs if g]


def step_times(group: list[dict], val_every: int) -> dict:
    out = {}
    pairs = [(b, b["time"] - a["time"]) for a, b in zip(group, group[1:]) if b["step"] == a["step"] + 1]
    pairs = [(b, t) for b, t in pairs if not (val_every and b["step"] % val_every == 0)]
    for k in sorted({b.get("edits_per_problem", 1) for b, _ in pairs}):
        t = [t for b, t in pairs if b.get("edits_per_problem", 1) == k][3:]
        if t:
            out[f"edits_per_problem={k}"] = {"n": len(t), "median_s": statistics.median(t), "mean_s": statistics.mean(t)}
    return out


def losses(run: Path) -> dict[int, float]:
    """step -> loss, from the folder's last invocation (the earlier ones may be a shared, copied history)."""
    return {r["step"]: r["loss"] for r in invocations(run / "log.jsonl")[-1]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--compare", type=Path, nargs="*", default=[],
                    help="other run folders: print the largest |loss difference| on the steps all of them logged")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    for run in [args.run, *args.compare]:
        if not (run / "log.jsonl").is_file() or not (run / "train_config.json").is_file():
            ap.error(f"{run} is not a training run folder (no log.jsonl / train_config.json): pass the --out "
                     "folder of `mend-jax train`")
    cfg = json.loads((args.run / "train_config.json").read_text())
    val_every = int(cfg.get("val_every", 0) or 0)
    result = []
    for g in invocations(args.run / "log.jsonl"):
        entry = {"first_step": g[0]["step"], "last_step": g[-1]["step"], **step_times(g, val_every)}
        result.append(entry)
        kinds = "  ".join(f"{k}: median {v['median_s']:.3f} s (n={v['n']})" for k, v in entry.items()
                          if k.startswith("edits"))
        print(f"steps {entry['first_step']:>6}-{entry['last_step']:<6} {kinds}")
    if args.compare:
        mine = losses(args.run)
        others = [losses(r) for r in args.compare]
        steps = sorted(set(mine).intersection(*others))
        diff = max((abs(mine[s] - o[s]) for o in others for s in steps), default=float("nan"))
        print(f"loss on {len(steps)} common steps: max |difference| {diff:.3g} against " +
              ", ".join(str(r) for r in args.compare))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
