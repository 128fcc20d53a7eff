"""Tune the fine-tuning baseline's learning rate on dev records (no editor involved).

    .venv/bin/python experiments/tune_finetune.py --data zsre \
        --file ../shared/data/zsre/zsre_mend_eval_portability_gpt4.json --records 450:500 \
        --lrs 1e-4,3e-4,1e-3 --json experiments/results/finetune_lr_zsre.json

Prints, per learning rate, reliability / generalization / locality (token level) of 5 Adam steps on the edited
matrices; pick the best reliability that keeps locality reasonable.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mend_jax.data import load_records
from mend_jax.evaluation import FineTuneConfig, evaluate
from mend_jax.weights import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", required=True)
    ap.add_argument("--file", default=None)
    ap.add_argument("--records", required=True)
    ap.add_argument("--lrs", default="1e-4,3e-4,1e-3")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    model = load_model(args.model)
    records = list(load_records(args.data, args.file, records=args.records))
    out = {"data": args.data, "file": args.file, "records": args.records, "steps": args.steps, "results": {}}
    for lr in [float(x) for x in args.lrs.split(",")]:
        res = evaluate(model, records, finetune_cfg=FineTuneConfig(lr, args.steps), progress=False)["finetune"]
        out["results"][str(lr)] = res
        print(f"lr {lr:g}: reliability {res['reliability_token']:.3f}/{res['reliability_exact']:.3f}  "
              f"generalization {res['generalization_token']:.3f}  locality {res['locality_token']:.3f}/"
              f"{res['locality_whole']:.3f}", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
