"""``mend-jax train``."""
from __future__ import annotations

import argparse
import dataclasses
import json

from mend_jax.training.config import TrainConfig


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def register(sub) -> None:
    d = TrainConfig()
    p = sub.add_parser("train", help="meta-train a MEND editor (resumes from --out if it holds a checkpoint)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=d.model)
    p.add_argument("--data", default=",".join(d.data),
                   help="comma-separated kinds (zsre, counterfact, demo), one per --train-file")
    p.add_argument("--train-file", default=None,
                   help="comma-separated local JSON files or hub ids, one per --data kind (demo: leave out)")
    p.add_argument("--train-records", default=None, help="A:B slice of each train file")
    p.add_argument("--dev-data", default=None, help="kind of the dev file (default: the first --data kind)")
    p.add_argument("--dev-file", default=None)
    p.add_argument("--dev-records", default=None, help="A:B slice of the dev file (demo default: 100:)")
    p.add_argument("--out", default=d.out)
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("model", "data", "train_files", "train_records", "dev_data", "dev_file", "dev_records", "out"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name == "repeats":
            p.add_argument(flag, type=lambda s: tuple(int(x) for x in s.split(",")), default=f.default,
                           help="per train file, how often its records enter the data order, e.g. 5,1")
        elif f.name == "train_loc":
            p.add_argument(flag, choices=["other", "own", "mix"], default=f.default,
                           help="training locality: other records' questions, the record's own unrelated prompt "
                                "(NQ for zsRE), or a 50/50 mix")
        elif f.type in ("bool", bool):
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=f.default)
        elif f.name == "max_minutes":
            p.add_argument(flag, type=float, default=None)
        elif f.name == "edit_first_block":
            p.add_argument(flag, type=int, default=None,
                           help="edit the MLPs of blocks N .. N + --edit-blocks - 1 (counted from 0) instead of the "
                                "last --edit-blocks blocks (MEND's convention)")
        elif f.name == "edit_matrices":
            p.add_argument(flag, type=_csv, default=None,
                           help="only these MLP matrices of each edited block, comma-separated (e.g. down_proj; "
                                "default: all of them, MEND's convention)")
        elif f.name == "c_loc_batched":
            p.add_argument(flag, type=float, default=None,
                           help="--c-loc for the schedule's problems of several edits at once (default: --c-loc)")
        elif f.name == "base_dtype":
            p.add_argument(flag, choices=["float32", "bfloat16"], default=f.default,
                           help="base model weights in memory (the editor always computes in float32)")
        elif f.name == "mesh":
            p.add_argument(flag, default=None, help="spread the base model over a device mesh: data,fsdp,tensor "
                                                   "sizes (e.g. 1,4,2) or 'auto'; on several hosts, start the same "
                                                   "command on every host (see tpu_scripts/)")
        elif f.name == "schedule":
            p.add_argument(flag, default=None, help="steps of several shapes in turn, PROBLEMSxEDITS,...: e.g. "
                                                   "8x1,1x10 alternates 8 single edits with one 10-edit problem "
                                                   "(one editor for single and batched editing); overrides "
                                                   "--edits-per-step/--edits-per-problem")
        elif f.name == "edit_loss_on":
            p.add_argument(flag, choices=["equiv", "both"], default=f.default,
                           help="edit loss on the rephrase only (MEND) or on the rephrase and the edit prompt")
        elif f.name == "loc_loss_on":
            p.add_argument(flag, choices=["all", "answer"], default=f.default,
                           help="locality KL over all tokens of each locality input (MEND) or over its answer "
                                "tokens only (where evaluation compares the argmax before and after)")
        elif f.name == "loc_answer_len":
            p.add_argument(flag, type=int, default=f.default,
                           help="the longest locality answer (tokens) of a training/validation locality input "
                                "(0: --target-len); longer ones are swapped for another record's (training) or "
                                "leave the record out (validation)")
        elif f.name == "init_optimizer":
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=f.default,
                           help="with --init-from: also take its checkpoint's optimizer state (Adam's moments), "
                                "so the warm start goes on with that run's optimisation")
        elif f.name == "factor_positions":
            p.add_argument(flag, choices=["all", "target"], default=f.default,
                           help="token rows of an edit's factors the editor sees: all (MEND) or only the positions "
                                "whose logits predict a target token")
        elif f.name == "hidden_cache":
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=f.default,
                           help="compute the frozen blocks' hidden states once per distinct training input at the "
                                "start (memory: real tokens x hidden size x 4 bytes) instead of in every step; "
                                "one device only")
        elif f.name == "edit_lr_k_power":
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=f.default,
                           help="learn per edited layer an exponent p so that k edits at once take the step "
                                "alpha * k**p (p = 0 at start; trained by the k > 1 problems of --schedule)")
        elif f.name == "loc_text":
            p.add_argument(flag, default=None,
                           help="plain text (a file, e.g. ../shared/data/wikitext/wiki.test.raw, or a Hub id "
                                "ID[:CONFIG]) whose passages are added to every training problem as further "
                                "locality inputs (--loc-text-rows of them)")
        elif f.name == "lr_decay_steps":
            p.add_argument(flag, type=int, default=f.default,
                           help="both learning rates fall linearly to 0 over the last N of --steps (a cool-down; "
                                "with --init-from, steps count from the warm start); 0: constant")
        elif f.name == "init_from":
            p.add_argument(flag, default=None, help="warm start: the editor (not the optimizer state) of another "
                                                   "run's checkpoint (--init-which), e.g. its --out folder")
        elif f.name == "init_which":
            p.add_argument(flag, choices=["best", "latest"], default=f.default,
                           help="which checkpoint of --init-from: best by dev loss, or the last one")
        else:
            p.add_argument(flag, type=type(f.default), default=f.default)
    p.set_defaults(func=run)


def config_from_args(args) -> TrainConfig:
    kinds = _csv(args.data)
    files = _csv(args.train_file) if args.train_file else (None,) * len(kinds)
    if len(files) != len(kinds):
        from mend_jax.errors import MendJaxError
        raise MendJaxError(f"--data names {len(kinds)} kinds but --train-file gives {len(files)} files")
    dev_data = args.dev_data or kinds[0]
    dev_records = args.dev_records or ("100:" if dev_data == "demo" else None)
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    kw.update(data=kinds, train_files=tuple(files), dev_data=dev_data, dev_records=dev_records,
              train_records=args.train_records or ("0:100" if kinds == ("demo",) else None))
    return TrainConfig(**kw)


def run(args) -> int:
    from mend_jax.training.loop import train
    summary = train(config_from_args(args))
    print(json.dumps(summary))
    return 0
