"""Edit cost measured side by side with the passes it is made of (one process, one run).

    .venv/bin/python benchmarks/bench.py [--model smollm2-135m] [--repeats 7] [--json experiments/results/bench_cpu.json]

Measures, with warm-up and medians over repeats (spread = min..max):
  (a) forward + backward of the base model on the edit example, the backward stopping at the lowest edited block
  (b) one MEND edit of the same example: factors + editor + materialised update
  (c) the same with 10 and 100 edits at once
  (d) one meta-training step (8 edit problems, as trained: the editor on the real rows; also on every position)
  (e) the forward/backward passes that step must do, timed one by one and summed
and prints b/a, c/a, d/e, peak RSS over parameter bytes, and the number of compilations after warm-up.
Runs on the tiny random model too (``--model tiny``).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from mend_jax.data import load_records
from mend_jax.editing import (EditorConfig, EditorSpec, capture_factors, compute_edits, edit_row_bucket, edited_kernels,
                              mend_edits, mend_editor)
from mend_jax.editing.batch import encode_examples, factor_rows
from mend_jax.editing.losses import masked_nll
from mend_jax.models import family_for, layer_index
from mend_jax.training.batches import DataOrder, Shapes, filter_records, row_budget, training_batch
from mend_jax.training.config import TrainConfig
from mend_jax.training.step import StepHParams, init_train_state, make_optimizer, make_train_step


def timeit(fn, *args, repeats=7):
    out = fn(*args)
    jax.block_until_ready(out)  # warm-up (compilation)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def load(name):
    from mend_jax.weights import load_model
    if name != "tiny":
        return load_model(name, progress=False)
    import dataclasses
    from mend_jax.models import LlamaConfig
    base = load_model("smollm2-135m", progress=False)
    cfg = LlamaConfig(vocab_size=base.config.vocab_size, hidden_size=64, intermediate_size=128, num_layers=4,
                      num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=128, tie_word_embeddings=True)
    params = family_for(cfg).init_params(cfg, jax.random.key(0))
    return dataclasses.replace(base, name="tiny", config=cfg, params=params)


def memory(jitted, *args) -> dict:
    """XLA's memory analysis of the compiled function: argument, output and temporary bytes."""
    m = jitted.lower(*args).compile().memory_analysis()
    return {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
            "temp_bytes": int(m.temp_size_in_bytes), "alias_bytes": int(m.alias_size_in_bytes)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rank", type=int, default=TrainConfig().rank,
                    help="editor rank (default: `mend-jax train`'s; the paper's is 1920; see README)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="base model weights (the editor always computes in float32)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    model = load(args.model)
    cfg, fam = model.config, model.family
    params = jax.tree.map(lambda x: x.astype(args.dtype), model.params)
    layers = fam.default_edit_layers(cfg)
    first = min(layer_index(n) for n in layers)
    editor = mend_editor(EditorSpec.from_model(fam.linear_layers(cfg), layers), EditorConfig(rank=args.rank))
    eparams, estate = editor.init(jax.random.key(0))
    records = filter_records(model.tokenizer, list(load_records("demo")), Shapes(), train=True)

    def batch_of(k):  # bucketed as the API / evaluation do (smallest power-of-two length >= 16)
        recs = [records[i % len(records)] for i in range(k)]
        return jax.tree.map(jnp.asarray, encode_examples(model.tokenizer, [r.prompt for r in recs],
                                                         [r.target for r in recs], max_length=128))

    @jax.jit
    def fwd_bwd(p, b):  # (a): full forward (logits at the targets only), backward down to the lowest edited block
        h = fam.hidden_before(p, cfg, b.input_ids, b.attention_mask, first)
        def loss(h):
            lg = fam.forward(p, cfg, b.input_ids, b.attention_mask, logits_at=b.target_pos, first_layer=first, hidden=h)
            return masked_nll(lg, b.target_ids, b.target_mask)
        return jax.value_and_grad(loss)(h)

    @functools.partial(jax.jit, static_argnames="rows")
    def mend_edit(p, ep, es, b, rows):  # (b)/(c): factors + editor (real rows) + the edited kernels
        return edited_kernels(p, mend_edits(editor, cfg, p, ep, es, b, rows=rows))

    # the pieces of (b), for the breakdown
    capture = jax.jit(lambda p, b: capture_factors(p, cfg, b, layers)[1])
    run_editor = jax.jit(lambda ep, es, f, rows: compute_edits(editor, ep, es, f, rows=rows), static_argnames="rows")
    update = jax.jit(edited_kernels)

    res = {"model": model.name, "machine": {"platform": platform.platform(), "processor": platform.processor(),
                                            "cpu_count": os.cpu_count(),
                                            "devices": [str(d) for d in jax.devices()], "jax": jax.__version__},
           "edited_layers": list(layers), "rank": args.rank, "dtype": args.dtype}
    b1 = batch_of(1)
    r1 = edit_row_bucket(b1)
    res["edit_example_shape"] = list(b1.input_ids.shape)
    res["a_fwd_bwd"] = timeit(fwd_bwd, params, b1, repeats=args.repeats)
    res["b_edit_1"] = timeit(mend_edit, params, eparams, estate, b1, r1, repeats=args.repeats)
    f1 = capture(params, b1)
    e1 = run_editor(eparams, estate, f1, r1)
    res["b_breakdown"] = {"factors": timeit(capture, params, b1, repeats=args.repeats),
                          "editor": timeit(run_editor, eparams, estate, f1, r1, repeats=args.repeats),
                          "update": timeit(update, params, e1, repeats=args.repeats)}
    for k in (10, 100):
        bk = batch_of(k)
        res[f"c_edit_{k}"] = timeit(mend_edit, params, eparams, estate, bk, edit_row_bucket(bk),
                                    repeats=max(3, args.repeats // 2))
        res[f"a_fwd_bwd_{k}"] = timeit(fwd_bwd, params, bk, repeats=max(3, args.repeats // 2))

    # memory of one edit against parameter bytes + the activations of (a), from XLA's memory analysis
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    mem_edit = memory(mend_edit, params, eparams, estate, b1, r1)
    mem_a = memory(fwd_bwd, params, b1)
    edit_peak = mem_edit["argument_bytes"] + mem_edit["output_bytes"] + mem_edit["temp_bytes"]
    res["memory"] = {"edit": mem_edit, "fwd_bwd": mem_a, "param_bytes": param_bytes,
                     "editor_param_bytes": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(eparams)),
                     "edit_peak_over_params_plus_activations": edit_peak / (param_bytes + mem_a["temp_bytes"])}

    # (d) one meta-training step and (e) its passes
    tx = make_optimizer(1e-5, 1e-5, 100.0)
    ts = init_train_state(editor, tx, jax.random.key(0))
    mb = training_batch(model.tokenizer, records, DataOrder(len(records), 0), 0, 8, Shapes(), 128)
    # the step as `mend-jax train` runs it: the editor on the real rows (budget from the data, as the loop sets it)
    budget = row_budget(model.tokenizer, records, 8, Shapes())
    assert factor_rows(mb.edit) <= budget
    step = make_train_step(editor, cfg, tx, StepHParams(rows=budget), donate=False)
    step_full = make_train_step(editor, cfg, tx, StepHParams(), donate=False)
    res["d_rows"] = {"budget": budget, "real_upper_bound": factor_rows(mb.edit), "padded": int(mb.edit.input_ids.size)}
    res["d_train_step"] = timeit(step, ts, params, mb, repeats=max(3, args.repeats // 2))
    res["d_train_step_every_position"] = timeit(step_full, ts, params, mb, repeats=max(3, args.repeats // 2))
    flat = lambda tb: jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), tb)  # noqa: E731
    e, q, lo = flat(mb.edit), flat(mb.equiv), flat(mb.loc)

    @jax.jit
    def fwd_lower(p, b):
        return fam.hidden_before(p, cfg, b.input_ids, b.attention_mask, first)

    @jax.jit
    def fwd_upper(p, b, h):
        return fam.forward(p, cfg, b.input_ids, b.attention_mask, first_layer=first, hidden=h)

    @functools.partial(jax.jit, static_argnames="at_targets")
    def fwd_bwd_upper(p, b, h, at_targets):  # gradient through the edited blocks (as the meta-gradient needs)
        def loss(h):
            return fam.forward(p, cfg, b.input_ids, b.attention_mask, first_layer=first, hidden=h,
                               logits_at=b.target_pos if at_targets else None).sum()
        return jax.value_and_grad(loss)(h)

    hq, hl = fwd_lower(params, q), fwd_lower(params, lo)
    passes = {"factors (fwd+bwd)": timeit(fwd_bwd, params, e, repeats=3),
              "equiv lower fwd": timeit(fwd_lower, params, q, repeats=3),
              "loc lower fwd": timeit(fwd_lower, params, lo, repeats=3),
              "loc pre upper fwd": timeit(fwd_upper, params, lo, hl, repeats=3),
              "equiv post upper fwd+bwd (target logits)": timeit(fwd_bwd_upper, params, q, hq, True, repeats=3),
              "loc post upper fwd+bwd (all logits, KL)": timeit(fwd_bwd_upper, params, lo, hl, False, repeats=3)}
    res["e_passes"] = passes
    e_sum = sum(v["median_s"] for v in passes.values())
    res["e_sum_s"] = e_sum
    caches_before = (fwd_bwd._cache_size(), mend_edit._cache_size(), step._cache_size())
    for _ in range(2):
        jax.block_until_ready(mend_edit(params, eparams, estate, b1, r1))
        jax.block_until_ready(step(ts, params, mb))
    caches_after = (fwd_bwd._cache_size(), mend_edit._cache_size(), step._cache_size())
    a = res["a_fwd_bwd"]["median_s"]
    res["ratios"] = {"b/a": res["b_edit_1"]["median_s"] / a,
                     "c10/a": res["c_edit_10"]["median_s"] / a, "c100/a": res["c_edit_100"]["median_s"] / a,
                     "c10/a10": res["c_edit_10"]["median_s"] / res["a_fwd_bwd_10"]["median_s"],
                     "c100/a100": res["c_edit_100"]["median_s"] / res["a_fwd_bwd_100"]["median_s"],
                     "d/e": res["d_train_step"]["median_s"] / e_sum,
                     "d_every_position/e": res["d_train_step_every_position"]["median_s"] / e_sum,
                     "edit_mem/(params+act)": res["memory"]["edit_peak_over_params_plus_activations"]}
    res["peak_rss_over_param_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / param_bytes
    res["compilations_after_warmup"] = int(sum(caches_after) - sum(caches_before))
    print(f"model {model.name}  dtype {args.dtype}  editor rank {args.rank}  edit example {tuple(b1.input_ids.shape)}")
    for k, v in res["ratios"].items():
        print(f"{k:22s} {v:6.2f}")
    ms = lambda d: f"{d['median_s'] * 1e3:.1f} ms [{d['min_s'] * 1e3:.1f}..{d['max_s'] * 1e3:.1f}]"  # noqa: E731
    print(f"a (fwd+bwd)   {ms(res['a_fwd_bwd'])}")
    print(f"b (1 edit)    {ms(res['b_edit_1'])}  = factors {ms(res['b_breakdown']['factors'])}"
          f" + editor {ms(res['b_breakdown']['editor'])} + update {ms(res['b_breakdown']['update'])}")
    print(f"d (train step) {ms(res['d_train_step'])} (editor on {res['d_rows']['budget']} rows of "
          f"{res['d_rows']['padded']} positions; on every position {ms(res['d_train_step_every_position'])}); "
          f"e (its passes) {e_sum * 1e3:.1f} ms")
    print(f"peak RSS / parameter bytes {res['peak_rss_over_param_bytes']:.2f}; compilations after warm-up "
          f"{res['compilations_after_warmup']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
