"""Where in the unrelated (locality) answers an editor's edits flip the argmax: per position of the answer token
(0 = the first answer token, predicted from the question's last token), how many teacher-forced argmax tokens
change under each record's edit, MEND only, single edits. Answers the question whether edits leak through the
features of "the end of a question" (position 0) or through generic text positions.

    .venv/bin/python experiments/locality_flip_positions.py --editor runs/run17 --which latest --records 0:100 \
        --edit-scale 0.7 --edit-steps 6 --edit-until-margin 1.5 --json experiments/results/flip_positions.json
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from mend_jax.checkpoints import load_editor
from mend_jax.data import load_records
from mend_jax.editing.batch import edit_row_bucket
from mend_jax.editing.edit import iterated_mend_edits
from mend_jax.editing.projection import scaled_step_sizes
from mend_jax.evaluation import _encode, hidden_states, score_targets
from mend_jax.models import layer_index
from mend_jax.weights import load_model

DEV = "../shared/data/zsre/zsre_mend_eval_portability_gpt4.json"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--editor", required=True)
    ap.add_argument("--which", default="latest")
    ap.add_argument("--file", default=DEV, help="zsRE dev file (records 0-499 are dev)")
    ap.add_argument("--records", default="0:100")
    ap.add_argument("--edit-scale", type=float, default=1.0)
    ap.add_argument("--edit-steps", type=int, default=1)
    ap.add_argument("--edit-until-margin", type=float, default=None)
    ap.add_argument("--last-position", type=int, default=5, help="positions from this one on are pooled")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    model = load_model("smollm2-135m", progress=False)
    editor, params, stats, meta = load_editor(args.editor, model, which=args.which)
    eparams = scaled_step_sizes(params, args.edit_scale)
    cfg = model.config
    first = min(layer_index(n) for n in editor.spec.layers)
    flips = np.zeros(args.last_position + 1, int)
    tokens = np.zeros(args.last_position + 1, int)
    for r in load_records("zsre", args.file, records=args.records):
        edit_b = _encode(model.tokenizer, [r.prompt], [r.target], cfg.max_position_embeddings)
        loc_b = _encode(model.tokenizer, [r.loc_prompt], [r.loc_answer], cfg.max_position_embeddings)
        edits = iterated_mend_edits(editor, cfg, model.params, eparams, stats, edit_b, steps=args.edit_steps,
                                    rows=edit_row_bucket(edit_b), until_margin=args.edit_until_margin)
        hid = hidden_states(model.params, cfg, loc_b, first)
        pre = np.asarray(score_targets(model.params, cfg, loc_b, hid, {}, first)[0])[0]
        post = np.asarray(score_targets(model.params, cfg, loc_b, hid, edits, first)[0])[0]
        for j in range(int(np.asarray(loc_b.target_mask).sum())):
            p = min(j, args.last_position)
            tokens[p] += 1
            flips[p] += int(pre[j] != post[j])
    for p in range(args.last_position + 1):
        label = f"{p}+" if p == args.last_position else str(p)
        print(f"answer position {label:>3s}: {flips[p]:4d} of {tokens[p]:5d} argmax tokens changed")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"editor": args.editor, "which": args.which, "step": int(meta["step"]), "records": args.records,
                       "edit_scale": args.edit_scale, "edit_steps": args.edit_steps,
                       "edit_until_margin": args.edit_until_margin, "flips": flips.tolist(),
                       "tokens": tokens.tolist()}, fh, indent=2)


if __name__ == "__main__":
    main()
