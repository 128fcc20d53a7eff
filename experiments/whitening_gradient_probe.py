"""Does whitening the pseudo-inputs move the reliability / locality frontier of a plain gradient step?

The identity transformation with step size ``lr`` is one gradient-descent step on the edit loss
(``identity_editor``); composed with ``whiten_inputs`` it becomes a ROME-style preconditioned step whose input side
is ``u P`` (``whitening_maps``: damps the directions unrelated inputs use most). No editor is trained, so this
measures the transformation alone, on the 9 MLP matrices a trained editor edits, on dev records, for a sweep of step
sizes per whitening strength (compare locality at equal reliability).

The moments come from the unrelated inputs of a training run's records and are cached in that run's folder (the same
cache ``mend-jax eval --whiten`` and ``tune_projection.py`` read for that run's editor):

    .venv/bin/python experiments/whitening_gradient_probe.py --run runs/run13 --records 0:40 \
        --grid "0@3;0@10;8@3;8@10" --json experiments/results/whitening_gradient_probe.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax

from mend_jax.data import load_records
from mend_jax.editing import EditorSpec, identity_editor
from mend_jax.editing.projection import editor_input_moments, whiten_inputs, whitening_maps
from mend_jax.evaluation import evaluate
from mend_jax.training.config import TrainConfig
from mend_jax.weights import load_model

DEV = {"zsre": "../shared/data/zsre/zsre_mend_eval_portability_gpt4.json",
       "counterfact": "../shared/data/counterfact/counterfact-val.json"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="a `mend-jax train --out` folder: its training records give the "
                                                 "unrelated inputs, its folder caches their moments")
    ap.add_argument("--data", default="zsre", choices=list(DEV))
    ap.add_argument("--records", default="0:40", help="dev records")
    ap.add_argument("--projection-inputs", type=int, default=1024)
    ap.add_argument("--grid", default="0@3;0@10;8@3;8@10", help="whiten@lr;whiten@lr;... (whiten 0: plain step)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    tcfg = TrainConfig.from_json(json.loads((Path(args.run) / "train_config.json").read_text()))
    model = load_model(tcfg.model)
    fam = model.family
    spec = EditorSpec.from_model(fam.linear_layers(model.config),
                                 fam.default_edit_layers(model.config, tcfg.edit_blocks))
    moments = editor_input_moments(args.run, model, identity_editor(spec), tcfg, args.projection_inputs,
                                   seed=tcfg.seed)
    dev = list(load_records(args.data, DEV[args.data], records=args.records))
    results = []
    for point in args.grid.split(";"):
        w, lr = (float(x) for x in point.split("@"))
        editor = identity_editor(spec, edit_lr=lr)
        if w:
            editor = whiten_inputs(editor, whitening_maps(moments, w))
        params, stats = editor.init(jax.random.key(0))
        t0 = time.time()
        res = evaluate(model, dev, editor=editor, eparams=params, stats=stats, progress=False)["mend"]
        row = {"whiten": w, "lr": lr, **{k: res[k] for k in ("reliability_token", "generalization_token",
                                                              "locality_token", "locality_whole")}}
        results.append(row)
        print(f"whiten {w:6g} lr {lr:8g}: rel {row['reliability_token']:.3f} gen {row['generalization_token']:.3f} "
              f"loc {row['locality_token']:.3f}/{row['locality_whole']:.3f}  ({time.time() - t0:.0f} s)", flush=True)
        if args.json:  # after every point: a long grid can be stopped at any time
            with open(args.json, "w") as fh:
                json.dump({"run": args.run, "data": args.data, "records": args.records,
                           "projection_inputs": args.projection_inputs, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
