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
    val = [r for r in rows if "val/loss" in r]
    # a --schedule run alternates step shapes: one training curve per k (edits per problem), one dev curve per k
    ks = sorted({r.get("edits_per_problem", 1) for r in rows})
    first_k = rows[0].get("edits_per_problem", 1)
    dev = {k: ("val/" if k == first_k else f"val_k{k}/") for k in ks}
    fig, ax = plt.subplots(2, 2, figsize=(11, 7))
    for key, a in (("loss/edit", ax[0, 0]), ("loss/loc", ax[0, 1])):
        for k in ks:
            rk = [r for r in rows if r.get("edits_per_problem", 1) == k]
            y = smooth([r[key] for r in rk])
            a.plot([r["step"] for r in rk][len(rk) - len(y):], y, label=f"train {key}, k={k} (20-step mean)")
            vk = [r for r in val if f"{dev[k]}{key}" in r]
            a.plot([r["step"] for r in vk], [r[f"{dev[k]}{key}"] for r in vk], "o-", label=f"dev {key}, k={k}")
        a.set_yscale("log")
        a.set_xlabel("step")
        a.legend(fontsize=7)
    a = ax[1, 0]
    for key in ("edit_acc", "loc_same") + (("prompt_acc",) if any("prompt_acc" in r for r in rows) else ()):
        for k in ks:
            vk = [r for r in val if f"{dev[k]}{key}" in r]
            a.plot([r["step"] for r in vk], [r[f"{dev[k]}{key}"] for r in vk], "o-", label=f"dev {key}, k={k}")
    a.set_xlabel("step")
    a.set_title("dev (edit_acc: rephrase, prompt_acc: edit prompt)", fontsize=9)
    a.legend(fontsize=7)
    a = ax[1, 1]
    a.plot([r["step"] for r in rows], [r["edit_lr_mean"] for r in rows], label="mean step size alpha")
    a.set_xlabel("step")
    a.legend()
    fig.suptitle(f"MEND meta-training: {run}")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
