"""Example: plug your own edit transformation into mend-jax.

The transformation below keeps ``u`` and replaces each ``delta`` by its projection onto the top-``k`` right singular
directions of the edit's own delta rows (a rank-k, delta-only transformation), scaled to unit RMS. It is compared
with the plain gradient step (identity transformation) on a few CounterFact-style demo facts, for SmolLM2-135M.

    .venv/bin/python experiments/custom_transform.py [--k 2] [--lr 1e-3] [--n 8]
"""
from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

from mend_jax.data import load_records
from mend_jax.editing import EditorSpec, custom_editor, identity_editor
from mend_jax.evaluation import evaluate
from mend_jax.weights import load_model


def rank_k_delta(k: int):
    def apply(nets, state, u, delta, layer):
        # rows that are all zero (masked tokens) stay zero: the projection is linear and has no bias
        _, _, vt = jnp.linalg.svd(delta, full_matrices=False)
        basis = vt[:k]  # [k, out]
        projected = (delta @ basis.T) @ basis
        rms = jnp.sqrt(jnp.mean(jnp.square(projected)) + 1e-12)
        return u, projected / rms
    return apply


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3, help="step size of the custom transformation")
    ap.add_argument("--sgd-lr", type=float, default=3.0, help="step size of the plain gradient step")
    ap.add_argument("--n", type=int, default=8, help="demo dev records to edit")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()

    model = load_model(args.model)
    fam = model.family
    spec = EditorSpec.from_model(fam.linear_layers(model.config), fam.default_edit_layers(model.config))
    records = list(load_records("demo", records=f"100:{100 + args.n}"))
    results = {}
    for name, editor in {"gradient step": identity_editor(spec, edit_lr=args.sgd_lr),
                         f"delta-only rank-{args.k}": custom_editor(spec, rank_k_delta(args.k), edit_lr=args.lr,
                                                                    name="rank-k delta")}.items():
        params, stats = editor.init(jax.random.key(0))
        res = evaluate(model, records, editor=editor, eparams=params, stats=stats, progress=False)
        results[name] = res["mend"]
        r = res["mend"]
        print(f"{name:22s} reliability {r['reliability_token']:.3f}  generalization {r['generalization_token']:.3f}"
              f"  locality {r['locality_token']:.3f}")
    print(json.dumps({"n": args.n, "results": results})[:2000])


if __name__ == "__main__":
    main()
