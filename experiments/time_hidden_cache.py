"""Measure the frozen-block hidden cache (``--hidden-cache``) on SmolLM2 with the run-6 training data, side by side:
one training step (8 single edits, rank 512, compacted rows, prompt in the edit loss) with and without the cached
hidden states, and the cache's build throughput (tokens per second in its 64-input chunks), with the estimated time
to cache every distinct training input. Writes JSON.

    .venv/bin/python experiments/time_hidden_cache.py --json experiments/results/hidden_cache_cpu_smollm2.json
"""
from __future__ import annotations

import argparse
import json
import random
import time

import jax

from mend_jax.models import layer_index
from mend_jax.training.batches import DataOrder, Shapes, own_loc_fits, row_budget, training_batch
from mend_jax.training.config import TrainConfig
from mend_jax.training.frozen_cache import FrozenHiddenCache, training_inputs
from mend_jax.training.loop import build_editor, load_training_data
from mend_jax.training.step import StepHParams, init_train_state, make_optimizer, make_train_step
from mend_jax.weights import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    d = args.data_dir
    m = load_model("smollm2-135m", progress=False)
    cfg = TrainConfig(data=("zsre", "counterfact"), repeats=(5, 1), train_loc="own", dev_data="zsre",
                      train_files=(f"{d}/zsre/zsre_mend_train-1k.json", f"{d}/counterfact/counterfact-train.json"),
                      dev_file=f"{d}/zsre/zsre_mend_eval_portability_gpt4.json", dev_records="0:50")
    shapes = Shapes()
    editor, _ = build_editor(m, cfg)
    records, _ = load_training_data(m.tokenizer, cfg, shapes)
    own = own_loc_fits(m.tokenizer, records, shapes)
    inputs = training_inputs(m.tokenizer, records, "own", own, shapes.seq_len)
    total_tokens = sum(map(len, inputs))
    cache = FrozenHiddenCache(m, min(layer_index(n) for n in editor.spec.layers))
    sample = random.Random(0).sample(inputs, 2048)
    cache.add(sample[:1024])  # compiles every chunk length
    t = time.time()
    cache.add(sample[1024:])
    build_s = time.time() - t
    tok_s = sum(map(len, sample[1024:])) / build_s

    tx = make_optimizer(cfg.lr, cfg.lr_lr, cfg.grad_clip)
    ts = init_train_state(editor, tx, jax.random.key(0))
    order = DataOrder(len(records), 0)
    hp = StepHParams(0.1, 2.0, edit_on_prompt=True, rows=row_budget(m.tokenizer, records, 8, shapes))
    step = make_train_step(editor, m.config, tx, hp, donate=False)
    batches = [training_batch(m.tokenizer, records, order, s, 8, shapes, 8192, "own", own) for s in range(4)]
    hidden = [cache.for_batch(b) for b in batches]  # inputs outside the sample are computed on first use
    times = {}
    for mode in ("plain", "cached", "plain", "cached"):
        extra = (lambda i: ()) if mode == "plain" else (lambda i: (hidden[i],))
        jax.block_until_ready(step(ts, m.params, batches[0], *extra(0)))
        t = time.time()
        for i in range(1, 4):
            jax.block_until_ready(step(ts, m.params, batches[i], *extra(i)))
        times.setdefault(mode, []).append((time.time() - t) / 3)
    plain, cached = min(times["plain"]), min(times["cached"])
    out = {"step_plain_s": plain, "step_cached_s": cached, "step_ratio_cached_over_plain": cached / plain,
           "build_tokens_per_s": tok_s, "distinct_inputs": len(inputs), "distinct_tokens": total_tokens,
           "build_all_minutes_est": total_tokens / tok_s / 60,
           "steps_to_repay_build_est": total_tokens / tok_s / max(plain - cached, 1e-9)}
    print(json.dumps(out, indent=2))
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
