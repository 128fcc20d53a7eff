"""CLI glue for ``eval``, ``edit`` and ``demo`` (the algorithms live elsewhere)."""
from __future__ import annotations

import dataclasses

import json
import time
from pathlib import Path

from mend_jax.errors import MendJaxError


def register(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a trained editor (and the unedited model and fine-tuning) on records")
    _editor_args(e)
    e.add_argument("--data", required=True, help="zsre | counterfact | demo")
    e.add_argument("--file", default=None, help="local JSON file or hub id (demo: leave out)")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--records", default=None, help="A:B positions in the file")
    g.add_argument("--indices", default=None, help="JSON file with a list of record positions")
    e.add_argument("--edits-at-once", type=int, default=1)
    e.add_argument("--finetune-lr", type=float, default=3e-4, help="fine-tuning baseline learning rate")
    e.add_argument("--finetune-steps", type=int, default=5)
    e.add_argument("--no-finetune", action="store_true")
    e.add_argument("--json", required=True, help="where to write the results")
    e.add_argument("--per-record", action="store_true", help="also write every record's metrics (per_record)")
    _transform_args(e)
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("edit", help="apply one edit with a trained editor and show answers before/after")
    d.add_argument("--editor", required=True)
    d.add_argument("--model", default=None)
    d.add_argument("--prompt", required=True)
    d.add_argument("--target", required=True)
    d.add_argument("--rephrase", default=None, help="a paraphrase of the prompt to check generality")
    d.add_argument("--unrelated", default="The capital of France is", help="an unrelated prompt (locality)")
    d.add_argument("--max-new-tokens", type=int, default=8)
    d.add_argument("--journal", default=None, help="append the edit to this journal folder")
    _transform_args(d)
    d.set_defaults(func=cmd_edit)

    r = sub.add_parser("revert", help="remove one edit from an edit journal")
    r.add_argument("--journal", required=True)
    r.add_argument("--id", required=True, help="edit id (see journal.json)")
    r.set_defaults(func=cmd_revert)

    x = sub.add_parser("export", help="write base model + an edit journal as a transformers-format folder")
    x.add_argument("--editor", required=True)
    x.add_argument("--model", default=None)
    x.add_argument("--journal", required=True)
    x.add_argument("--out", required=True)
    x.set_defaults(func=cmd_export)

    v = sub.add_parser("save-editor", help="save a run's editor for editing only (parameters + statistics, no "
                                           "optimizer state, never base weights) as a new --editor folder")
    _editor_args(v)
    v.add_argument("--out", required=True)
    v.set_defaults(func=cmd_save_editor)

    i = sub.add_parser("inspect", help="load an editor against its base model (fingerprint check) and print its "
                                       "step, layers and size on disk beside the base model's")
    _editor_args(i)
    i.set_defaults(func=cmd_inspect)

    m = sub.add_parser("demo", help="train a small editor on the shipped demo facts for a few minutes, then edit")
    m.add_argument("--model", default="smollm2-135m")
    m.add_argument("--out", default="runs/demo")
    m.add_argument("--steps", type=int, default=200,
                   help="training steps (a fixed number: the same editor on every run of the demo)")
    m.add_argument("--minutes", type=float, default=30.0,
                   help="a safety cap: stop training earlier than --steps after this many minutes")
    m.add_argument("--data", default="demo", help="demo (shipped) or zsre/counterfact with --train-file")
    m.add_argument("--train-file", default=None)
    m.set_defaults(func=cmd_demo)


def _editor_args(p) -> None:
    """--editor / --which / --model, shared by the commands that load a trained editor."""
    p.add_argument("--editor", required=True, help="--out folder of `mend-jax train` (or of save-editor)")
    p.add_argument("--which", default="best", choices=["best", "latest"])
    p.add_argument("--model", default=None, help="base model (default: the one the editor was trained on)")


def _transform_args(p) -> None:
    """--project-out / --projection-inputs / --edit-scale / --edit-steps, shared by eval and edit."""
    p.add_argument("--project-out", type=int, default=0, metavar="R",
                   help="remove from the editor's pseudo-inputs the top R directions of unrelated inputs of the "
                        "editor's training data (editing/projection.py; 0: off, plain MEND)")
    p.add_argument("--whiten", type=float, default=0.0, metavar="W",
                   help="multiply the editor's pseudo-inputs by a map that damps the directions unrelated inputs of "
                        "the editor's training data use most and amplifies the rarest, at strength W (editing/"
                        "projection.py whitening_maps; 0: off; large: ROME's C^-1)")
    p.add_argument("--projection-inputs", type=int, default=1024,
                   help="unrelated training inputs the directions of --project-out / --whiten are measured on")
    p.add_argument("--edit-scale", type=float, default=1.0,
                   help="multiply the editor's learned step sizes (tune on dev records; 1: as trained)")
    p.add_argument("--layer-scale", action="append", default=[], metavar="PATTERN=S",
                   help="multiply the step sizes of the edited layers whose names match PATTERN (fnmatch, e.g. "
                        "'model.layers.29.*=0': the last block left unedited) by S as well; repeatable")
    p.add_argument("--factor-positions", choices=["all", "target"], default=None,
                   help="token rows of an edit's factors the editor is given: all (MEND) or only the positions "
                        "whose logits predict a target token (default: as the editor was trained, `mend-jax train "
                        "--factor-positions`)")
    p.add_argument("--edit-steps", type=int, default=None,
                   help="apply the editor this many times per edit, each time to the factors at the weights edited "
                        "so far (editing/edit.py iterated_mend_edits; 1: MEND as in the paper; default: as many "
                        "as the editor was trained with, `mend-jax train --edit-steps`)")
    p.add_argument("--edit-max-rank", type=int, default=None, metavar="K",
                   help="cut each edited layer's update to its best rank-K approximation after every editor step "
                        "(editing/edit.py truncated_edits; default: off, one row per token as in MEND)")
    p.add_argument("--edit-until-margin", type=float, default=None, metavar="M",
                   help="adaptive editor steps: the steps after the first take only the edits whose target does "
                        "not yet lead every other token by M logits on the edit's own prompt, and stop once all "
                        "do (--edit-steps is then the most; editing/edit.py iterated_mend_edits; default: off)")
    p.add_argument("--edit-min-steps", type=int, default=1, metavar="N",
                   help="with --edit-until-margin: the first N editor steps take every edit whatever its margin, "
                        "e.g. the steps the editor was trained with (`mend-jax train --edit-steps`); default 1")


def _load(args, editor_dir):
    from mend_jax.checkpoints import checkpoints_dir, load_editor, read_meta, trained_edit_steps
    from mend_jax.weights import load_model
    _, meta = read_meta(checkpoints_dir(editor_dir), getattr(args, "which", "best"))
    model = load_model(args.model or meta["config"]["model"])
    editor, params, stats, meta = load_editor(editor_dir, model, which=getattr(args, "which", "best"))
    if getattr(args, "edit_steps", 0) is None:  # not given: the editor is applied as it was trained
        args.edit_steps = trained_edit_steps(meta)
    return model, editor, params, stats, meta


def layer_scales(specs: list[str]) -> dict[str, float]:
    """``--layer-scale PATTERN=S`` (repeatable) as ``{PATTERN: S}``."""
    out = {}
    for spec in specs:
        pattern, sep, value = spec.rpartition("=")
        try:
            out[pattern] = float(value)
        except ValueError:
            sep = ""
        if not (sep and pattern):
            raise MendJaxError(f"--layer-scale {spec!r}: write PATTERN=S, e.g. 'model.layers.29.*=0'")
    return out


def _transformed_editor(args, model, editor, params, meta):
    """--project-out / --whiten / --edit-scale: the trained editor composed with the projection and the whitening
    of its pseudo-inputs, its step sizes scaled."""
    from mend_jax.editing.projection import scaled_step_sizes, transformed_editor
    from mend_jax.training.config import TrainConfig
    editor = transformed_editor(args.editor, model, editor, TrainConfig.from_json(meta["config"]),
                                project_out=args.project_out, whiten=args.whiten, n_inputs=args.projection_inputs)
    if args.edit_scale != 1.0 or args.layer_scale:
        params = scaled_step_sizes(params, args.edit_scale, layer_scales=layer_scales(args.layer_scale),
                                   layers=editor.spec.layers)
    if args.factor_positions is not None:
        editor = dataclasses.replace(editor, factor_positions=args.factor_positions)
    return editor, params


def cmd_eval(args) -> int:
    from mend_jax.data import load_indices_file, load_records
    from mend_jax.evaluation import FineTuneConfig, evaluate
    model, editor, params, stats, meta = _load(args, args.editor)
    editor, params = _transformed_editor(args, model, editor, params, meta)
    indices = load_indices_file(args.indices) if args.indices else None
    records = list(load_records(args.data, args.file, records=args.records, indices=indices))
    if len(records) < args.edits_at_once:
        raise MendJaxError(f"{len(records)} records but --edits-at-once {args.edits_at_once}")
    ft = None if args.no_finetune else FineTuneConfig(args.finetune_lr, args.finetune_steps)
    t0 = time.time()
    res = evaluate(model, records, editor=editor, eparams=params, stats=stats, edits_at_once=args.edits_at_once,
                   finetune_cfg=ft, per_record=args.per_record, edit_steps=args.edit_steps,
                   edit_until_margin=args.edit_until_margin, edit_max_rank=args.edit_max_rank,
                   edit_min_steps=args.edit_min_steps)
    res.update({"data": args.data, "file": args.file, "records": args.records, "indices": args.indices,
                "editor": str(args.editor), "editor_step": int(meta["step"]), "model": model.name,
                "trained_project_out": int(meta["config"].get("project_out", 0)),  # part of the trained editor
                "project_out": args.project_out, "whiten": args.whiten,
                "projection_inputs": args.projection_inputs if (args.project_out or args.whiten) else 0,
                "edit_scale": args.edit_scale, "layer_scales": layer_scales(args.layer_scale),
                "edit_steps": args.edit_steps,
                "edit_until_margin": args.edit_until_margin, "edit_min_steps": args.edit_min_steps,
                "factor_positions": editor.factor_positions, "seconds": time.time() - t0})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2))
    for m in ("unedited", "mend", "finetune"):
        if m in res:
            r = res[m]
            print(f"{m:9s} rel {r['reliability_token']:.3f}/{r['reliability_exact']:.3f}  "
                  f"gen {r['generalization_token']:.3f}/{r['generalization_exact']:.3f}  "
                  f"loc {r['locality_token']:.3f}/{r['locality_whole']:.3f}  drawdown {r['drawdown_token']:.3f}"
                  + (f"  editor steps {r['editor_steps']:.2f}" if "editor_steps" in r else ""))
    print(json.dumps({k: res[k] for k in ("n_records", "edits_at_once", "seconds")}))
    return 0


def show_edit(model, editor, params, stats, prompt, target, rephrase, unrelated, max_new_tokens, journal=None,
              edit_steps=1, edit_until_margin=None, edit_max_rank=None, edit_min_steps=1):
    from mend_jax.api import EditSession
    session = EditSession(model, editor, params, stats, edit_steps=edit_steps, edit_until_margin=edit_until_margin,
                          edit_max_rank=edit_max_rank, edit_min_steps=edit_min_steps)
    probes = [("prompt", prompt)] + ([("rephrase", rephrase)] if rephrase else []) + [("unrelated", unrelated)]
    before = {k: session.generate(p, max_new_tokens) for k, p in probes}
    rec = session.edit([prompt], [target])
    after = {k: session.generate(p, max_new_tokens) for k, p in probes}
    print(f"edit: {prompt!r} -> {target!r}  (edit success on the prompt: {rec.metrics['reliability_exact']:.0f})")
    for k, p in probes:
        print(f"  [{k}] {p}")
        print(f"      before: {before[k]!r}")
        print(f"      after:  {after[k]!r}")
    if journal:
        session.journal_to(journal)
        print(f"journal: {journal}")
    return before, after


def cmd_edit(args) -> int:
    model, editor, params, stats, meta = _load(args, args.editor)
    editor, params = _transformed_editor(args, model, editor, params, meta)
    show_edit(model, editor, params, stats, args.prompt, args.target, args.rephrase, args.unrelated,
              args.max_new_tokens, args.journal, edit_steps=args.edit_steps, edit_until_margin=args.edit_until_margin,
              edit_max_rank=args.edit_max_rank, edit_min_steps=args.edit_min_steps)
    return 0


def cmd_demo(args) -> int:
    from mend_jax.checkpoints import load_editor
    from mend_jax.training.config import TrainConfig
    from mend_jax.training.loop import train
    from mend_jax.weights import load_model
    model = load_model(args.model)
    cfg = TrainConfig(model=args.model, data=(args.data,), train_files=(args.train_file,),
                      train_records="0:100" if args.data == "demo" else None, dev_data="demo", dev_file=None,
                      dev_records="100:", rank=256, steps=args.steps, edits_per_step=4, lr=1e-4, lr_lr=1e-5,
                      edit_lr_init=1e-4, val_every=25, val_size=16, ckpt_every=25, max_minutes=args.minutes,
                      out=args.out, seq_len=16, target_len=4, loc_len=16, edit_loss_on="both", hidden_cache=True)
    print(f"training a small editor (rank 256) on {args.data} facts for {args.steps} steps (at most "
          f"{args.minutes} minutes) -> {args.out}")
    summary = train(cfg, model=model)
    print(json.dumps(summary))
    editor, params, stats, meta = load_editor(args.out, model, which="latest")
    from mend_jax.data import load_records
    rec = load_records("demo", records="100:101")[0]
    show_edit(model, editor, params, stats, rec.prompt, rec.target, rec.rephrases[0], rec.loc_prompt, 6,
              edit_steps=cfg.edit_steps)
    return 0


def cmd_save_editor(args) -> int:
    from mend_jax.checkpoints import checkpoints_dir, folder_bytes, read_meta, save_editor
    from mend_jax.weights import load_model
    _, meta = read_meta(checkpoints_dir(args.editor), args.which)
    model = load_model(args.model or meta["config"]["model"])  # save_editor loads (and checks) the editor once
    out = save_editor(args.editor, args.out, model, which=args.which)
    print(f"saved the editor of {args.editor} ({args.which}) to {out}: {folder_bytes(out) / 1e6:.1f} MB")
    return 0


def cmd_inspect(args) -> int:
    import jax
    from mend_jax.checkpoints import checkpoints_dir, folder_bytes, read_meta
    model, editor, params, stats, _ = _load(args, args.editor)
    step, meta = read_meta(checkpoints_dir(args.editor), args.which)
    step_dir = checkpoints_dir(args.editor) / args.which / str(step)
    base_files = [p for p in Path(model.folder).iterdir() if p.suffix in (".safetensors", ".bin", ".gguf")]
    base_bytes = sum(p.stat().st_size for p in base_files)
    info = {"editor": str(args.editor), "which": args.which, "step": step, "base_model": model.name,
            "edited_layers": list(editor.spec.layers), "editor_config": meta.get("editor_config"),
            "editor_param_bytes": int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))),
            "checkpoint_step_bytes_on_disk": folder_bytes(step_dir),
            "checkpoint_items": sorted(p.name for p in step_dir.iterdir() if p.is_dir()),
            "base_model_bytes_on_disk": base_bytes, "base_model_files": [str(p) for p in base_files]}
    info["checkpoint_over_base"] = info["checkpoint_step_bytes_on_disk"] / max(base_bytes, 1)
    print(json.dumps(info, indent=2))
    return 0


def cmd_revert(args) -> int:
    from mend_jax.api import journal_remove
    journal_remove(args.journal, args.id)
    print(f"removed edit {args.id} from {args.journal}")
    return 0


def cmd_export(args) -> int:
    from mend_jax.api import EditSession
    session = EditSession.from_pretrained(args.editor, model=args.model)
    session.load_journal(args.journal)
    folder = session.export(args.out)
    print(f"exported {session.model.name} with {len(session.journal)} edits to {folder}")
    return 0
