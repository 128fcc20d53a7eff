"""Tune the fine-tuning baseline's learning rate on dev records (no editor involved), on MEND's edited matrices or on
the MLP matrices of other blocks.

    .venv/bin/python experiments/tune_finetune.py --data zsre \
        --file ../shared/data/zsre/zsre_mend_eval_portability_gpt4.json --records 450:500 \
        --lrs 1e-4,3e-4,1e-3 --json experiments/results/finetune_lr_zsre.json

Prints, per learning rate, reliability / generalization (token / exact) and locality (token / whole answers) of 5
Adam steps on the edited matrices; pick the best reliability that keeps locality reasonable.

``--blocks 27-29,21-23,15-17`` runs the same grid on the MLP matrices of each block range instead of MEND's default
layers (results keyed ``BLOCKS@LR``; ``--matrices down_proj`` keeps only those matrices of each block, as ``mend-jax
train --edit-matrices`` does): which blocks an editor could edit with fewer unrelated answers flipped, compared at
matched reliability before any editor is trained for them. Each result lists the records whose whole locality
answer changed (``lost_whole_answers``).

``--method gradient --steps N --until-margin M`` replaces Adam by plain gradient descent in MEND's own form: the
identity editor (``identity_editor``: the edit is the sum of the raw factors' outer products ``delta u^T`` times the
step size ``LR``, one gradient-descent step), applied up to N times, each further step only for the edits that do
not hold yet by M logits, as the trained editors are evaluated (``evaluate(edit_until_margin=)``).

``--layers-of RUN`` tunes on the matrices a trained editor edits (read from its last checkpoint's metadata), and
``--stop-at-reliability R`` ends an ascending grid at the first learning rate whose token reliability reaches R: the
baseline's learning rate for that editor is then the smallest one that makes the edits, written as ``picked_lr``
(else the most reliable one; eval_lineage.sh uses both).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax

from mend_jax.checkpoints import checkpoints_dir, read_meta
from mend_jax.data import load_records
from mend_jax.editing.editor import EditorSpec, identity_editor
from mend_jax.evaluation import FineTuneConfig, evaluate
from mend_jax.models.layers import select_matrices
from mend_jax.weights import load_model


def block_layers(model, first: int, last: int) -> tuple[str, ...]:
    """The MLP matrices of blocks ``first``..``last`` (inclusive), as an editor trained with ``--edit-first-block
    first --edit-blocks (last - first + 1)`` edits them."""
    return model.family.default_edit_layers(model.config, last - first + 1, first=first)


def editor_layers(run: str) -> tuple[str, ...]:
    """The matrices the editor in ``run`` (a ``mend-jax train --out`` folder) edits, from its last checkpoint."""
    return tuple(read_meta(checkpoints_dir(run), "latest")[1]["editor_layers"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", required=True)
    ap.add_argument("--file", default=None)
    ap.add_argument("--records", required=True, help="dev records only (zsRE eval 0-499, CounterFact val)")
    ap.add_argument("--lrs", default="1e-4,3e-4,1e-3")
    ap.add_argument("--steps", type=int, default=5, help="Adam steps; with --method gradient the most steps")
    ap.add_argument("--method", choices=("adam", "gradient"), default="adam")
    ap.add_argument("--until-margin", type=float, default=None,
                    help="--method gradient: further steps only for edits not holding by this many logits")
    ap.add_argument("--blocks", default=None, help="comma-separated FIRST-LAST block ranges (default: MEND's layers)")
    ap.add_argument("--matrices", default=None, metavar="NAMES",
                    help="with --blocks: only these MLP matrices of each block (comma-separated, e.g. down_proj)")
    ap.add_argument("--layers-of", default=None, metavar="RUN",
                    help="tune on the matrices the editor in RUN edits (instead of --blocks)")
    ap.add_argument("--stop-at-reliability", type=float, default=None, metavar="R",
                    help="stop the grid (give --lrs ascending) at the first lr with token reliability >= R")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    if args.blocks and args.layers_of:
        ap.error("--blocks and --layers-of both choose the matrices: give one")
    model = load_model(args.model)
    records = list(load_records(args.data, args.file, records=args.records))
    out = {"data": args.data, "file": args.file, "records": args.records, "steps": args.steps,
           "method": args.method, "matrices": args.matrices, "until_margin": args.until_margin, "results": {}}
    spans = args.blocks.split(",") if args.blocks else [None]
    fixed = None  # MEND's default layers, unless --layers-of names an editor's
    if args.layers_of:
        fixed = editor_layers(args.layers_of)
        out["layers_of"] = args.layers_of
    for span in spans:
        layers = block_layers(model, *(int(x) for x in span.split("-"))) if span else fixed
        if span and args.matrices:
            layers = select_matrices(layers, tuple(args.matrices.split(",")))
        for lr in [float(x) for x in args.lrs.split(",")]:
            t = time.time()
            if args.method == "adam":
                res = evaluate(model, records, finetune_cfg=FineTuneConfig(lr, args.steps), layers=layers,
                               progress=False, per_record=True)
                method = "finetune"
            else:
                fam, cfg = model.family, model.config
                spec = EditorSpec.from_model(fam.linear_layers(cfg), layers or fam.default_edit_layers(cfg))
                editor = identity_editor(spec, edit_lr=lr)
                eparams, stats = editor.init(jax.random.key(0))
                res = evaluate(model, records, editor=editor, eparams=eparams, stats=stats, edit_steps=args.steps,
                               edit_until_margin=args.until_margin, progress=False, per_record=True)
                method = "mend"
            ft = res[method]
            rows = res["per_record"]
            out["results"][f"{span}@{lr}" if span else str(lr)] = {
                **ft, "edited_layers": res["edited_layers"], "seconds": time.time() - t,
                "lost_whole_answers": [i for i, w in zip(rows["index"], rows[method]["locality_whole"]) if w < 1]}
            print(f"{f'blocks {span} ' if span else ''}lr {lr:g}: reliability {ft['reliability_token']:.3f}/"
                  f"{ft['reliability_exact']:.3f}  generalization {ft['generalization_token']:.3f}/"
                  f"{ft['generalization_exact']:.3f}  locality {ft['locality_token']:.3f}/{ft['locality_whole']:.3f}"
                  + (f"  steps {ft['editor_steps']:.2f}" if "editor_steps" in ft else "")
                  + f"  ({time.time() - t:.0f} s)", flush=True)
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(out, indent=2))  # after every point: a long grid can be cut short
            if args.stop_at_reliability is not None and ft["reliability_token"] >= args.stop_at_reliability:
                break
        if args.stop_at_reliability is not None and not span:
            out["picked_lr"] = picked_lr(out["results"], args.stop_at_reliability)
            Path(args.json).write_text(json.dumps(out, indent=2))
            print(f"picked lr {out['picked_lr']:g} (first to reach reliability {args.stop_at_reliability:g}, "
                  "else the most reliable)", flush=True)


def picked_lr(results: dict, reliability: float) -> float:
    """The baseline's learning rate from an ascending grid: the first whose token reliability reaches
    ``reliability``, else the most reliable one."""
    for lr, res in results.items():
        if res["reliability_token"] >= reliability:
            return float(lr)
    return float(max(results, key=lambda lr: results[lr]["reliability_token"]))


if __name__ == "__main__":
    main()
