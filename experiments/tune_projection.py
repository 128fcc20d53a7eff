"""Tuning the projection of a trained editor's pseudo-inputs (``mend_jax/editing/projection.py``) on dev records:
reliability / generalization / locality for several (rank, step-size scale) pairs, MEND only, in one process (the
directions are measured once, on unrelated inputs of the editor's *training* records).

    .venv/bin/python experiments/tune_projection.py --editor runs/run6 --which latest --records 0:100 \
        --grid "0@1;16@2.5;16@4" --json experiments/results/projection_tuning.json

``--grid``: ``rank@scale`` pairs separated by ``;`` (rank 0: the editor as trained, with its trained projection if
it has one), optionally ``rank@scale@steps`` to apply the editor ``steps`` times per edit
(``mend_jax.editing.edit.iterated_mend_edits``; default: as many as the editor was trained with, 1 for MEND), and
``rank@scale@steps@whiten`` to also whiten the pseudo-inputs at that strength (``whitening_maps``; 0: off), and
``rank@scale@steps@whiten@margin`` for adaptive steps (``iterated_mend_edits(until_margin=margin)``: ``steps``
is then the most, and a further step takes only the edits that do not hold on their prompt by ``margin`` logits),
and ``rank@scale@steps@whiten@margin@layers`` to multiply single layers' step sizes further (``layers``:
``PATTERN=S`` pairs separated by ``/``, as ``mend-jax eval --layer-scale``, e.g. ``model.layers.29.*=0``), and
``rank@scale@steps@whiten@margin@layers@min`` for the first ``min`` steps taken by every edit whatever its margin
(``iterated_mend_edits(min_steps=min)``, ``mend-jax eval --edit-min-steps``; default 1; ``layers`` may be empty).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

from mend_jax.checkpoints import load_editor
from mend_jax.commands import layer_scales
from mend_jax.data import load_records
from mend_jax.editing.projection import scaled_step_sizes, transformed_editor
from mend_jax.evaluation import evaluate
from mend_jax.training.config import TrainConfig
from mend_jax.weights import load_model

DEV = {"zsre": "../shared/data/zsre/zsre_mend_eval_portability_gpt4.json",
       "counterfact": "../shared/data/counterfact/counterfact-val.json"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--editor", required=True)
    ap.add_argument("--which", default="latest")
    ap.add_argument("--data", default="zsre", choices=list(DEV))
    ap.add_argument("--records", default="0:100", help="dev records (zsRE eval 0-499 or CounterFact val)")
    ap.add_argument("--edits-at-once", type=int, default=1)
    ap.add_argument("--projection-inputs", type=int, default=1024)
    ap.add_argument("--grid", default="0@1;16@1", help="rank@scale;rank@scale;...")
    ap.add_argument("--factor-positions", choices=["all", "target"], default=None,
                    help="token rows of the edit's factors the editor is given (default: as trained)")
    ap.add_argument("--edit-max-rank", type=int, default=None,
                    help="every point: each layer's edit cut to this rank after every step (default: off)")
    ap.add_argument("--per-record", action="store_true",
                    help="every point also keeps each record's metrics (evaluate(per_record=True)), for paired "
                         "comparisons of settings on the same records")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    model = load_model("smollm2-135m")
    editor, params, stats, meta = load_editor(args.editor, model, which=args.which)
    tcfg = TrainConfig.from_json(meta["config"])
    dev = list(load_records(args.data, DEV[args.data], records=args.records))
    results = []
    editors = {}  # one transformed editor per (rank, whitening) (the moments are measured once, then cached)
    for spec in args.grid.split(";"):
        parts = spec.split("@")
        r, s = int(parts[0]), float(parts[1])
        steps = int(parts[2]) if len(parts) > 2 else tcfg.edit_steps  # default: as the editor was trained
        w = float(parts[3]) if len(parts) > 3 else 0.0
        margin = float(parts[4]) if len(parts) > 4 and parts[4] != "" else None
        scales = layer_scales(parts[5].split("/")) if len(parts) > 5 and parts[5] else {}
        min_steps = int(parts[6]) if len(parts) > 6 and parts[6] else 1
        if (r, w) not in editors:
            editors[r, w] = transformed_editor(args.editor, model, editor, tcfg, project_out=r, whiten=w,
                                               n_inputs=args.projection_inputs)
        ed = editors[r, w]
        if args.factor_positions is not None:
            ed = dataclasses.replace(ed, factor_positions=args.factor_positions)
        t0 = time.time()
        eparams = scaled_step_sizes(params, s, layer_scales=scales, layers=ed.spec.layers)
        res = evaluate(model, dev, editor=ed, eparams=eparams, stats=stats, progress=False,
                       edits_at_once=args.edits_at_once, edit_steps=steps, edit_until_margin=margin,
                       edit_max_rank=args.edit_max_rank, edit_min_steps=min_steps, per_record=args.per_record)
        row = {"rank": r, "scale": s, "edit_steps": steps, "whiten": w, "until_margin": margin, "min_steps": min_steps,
               "layer_scales": scales, "edit_max_rank": args.edit_max_rank,
               "factor_positions": ed.factor_positions, **{k: res["mend"][k] for k in (
            "reliability_token", "reliability_exact", "generalization_token", "generalization_exact",
            "locality_token", "locality_whole", "editor_steps")}}
        if args.per_record:
            row["per_record"] = {"index": res["per_record"]["index"], **res["per_record"]["mend"]}
        results.append(row)
        print(f"rank {r:4d} scale {s:5.2f} steps {steps} whiten {w:g} margin {margin} min {min_steps} layers {scales or '-'}: rel {row['reliability_token']:.3f} gen {row['generalization_token']:.3f}"
              f" loc {row['locality_token']:.3f}/{row['locality_whole']:.3f} editor steps {row['editor_steps']:.2f}"
              f"  ({time.time() - t0:.0f} s)", flush=True)
        if args.json:  # written after every point: a long grid can be stopped at any time
            with open(args.json, "w") as fh:
                json.dump({"editor": args.editor, "which": args.which, "step": int(meta["step"]), "data": args.data,
                           "records": args.records, "edits_at_once": args.edits_at_once,
                           "projection_inputs": args.projection_inputs,
                           "edit_max_rank": args.edit_max_rank,
                           "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
