"""Plot the training curves of a `mend-jax train` run (its log.jsonl) to a PNG.

    .venv/bin/python experiments/plot_training.py runs/zsre_cf experiments/results/training_zsre_cf.png
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def smooth(x, k=20):
    x = np.asarray(x, float)
    if len(x) < k:
        return x
    return np.convolve(x, np.ones(k) / k, mode="valid")


def main(run: str, out: str) -> None:
    rows = [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines() if line.strip()]
    steps = np.array([r["step"] for r in rows])
    val = [r for r in rows if "val/loss" in r]
    fig, ax = plt.subplots(2, 2, figsize=(11, 7))
    for key, a in (("loss/edit", ax[0, 0]), ("loss/loc", ax[0, 1])):
        y = smooth([r[key] for r in rows])
        a.plot(steps[len(steps) - len(y):], y, label=f"train {key} (20-step mean)")
        a.plot([r["step"] for r in val], [r[f"val/{key}"] for r in val], "o-", label=f"dev {key}")
        a.set_yscale("log")
        a.set_xlabel("step")
        a.legend()
    a = ax[1, 0]
    for key in ("edit_acc", "loc_same"):
        y = smooth([r[key] for r in rows])
        a.plot(steps[len(steps) - len(y):], y, label=f"train {key}")
        a.plot([r["step"] for r in val], [r[f"val/{key}"] for r in val], "o-", label=f"dev {key}")
    a.set_xlabel("step")
    a.legend()
    a = ax[1, 1]
    a.plot(steps, [r["edit_lr_mean"] for r in rows], label="mean step size alpha")
    a.set_xlabel("step")
    a.legend()
    fig.suptitle(f"MEND meta-training: {run}")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
