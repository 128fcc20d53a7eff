"""``train(config)``: meta-train an editor with validation, early stopping, Orbax checkpoints, a JSONL log and a
progress bar. Restarting with the same configuration resumes from the last finalized checkpoint and (on the same
machine) ends bitwise-identical to an uninterrupted run: the data order and all randomness derive from
``(seed, step)``, and the train state (editor, statistics, optimizer) is checkpointed whole."""
from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mend_jax.checkpoints import EditorCheckpoints, check_fingerprint, model_fingerprint
from mend_jax.data import DataError, load_records
from mend_jax.editing.editor import EditorConfig, EditorSpec, mend_editor
from mend_jax.editing.projection import training_projection
from mend_jax.errors import CheckpointError, MendJaxError
from mend_jax.editing.batch import factor_rows
from mend_jax.training.batches import (DataOrder, Shapes, filter_records, fitting_passages, own_loc_fits,
                                      row_budget, step_layout, training_batch, validation_batches)
from mend_jax.models import layer_index
from mend_jax.models.layers import select_matrices
from mend_jax.training.config import TrainConfig
from mend_jax.training.frozen_cache import FrozenHiddenCache, frozen_weights_digest, training_inputs
from mend_jax.training.step import StepHParams, init_train_state, make_eval_step, make_optimizer, make_train_step

VAL_KEY = "loss"  # early stopping on c_edit * L_edit + c_loc * L_loc on dev (MEND's loss/total_edit_val)


def build_editor(model, cfg: TrainConfig):
    fam = model.family
    layers = select_matrices(fam.default_edit_layers(model.config, cfg.edit_blocks, first=cfg.edit_first_block),
                             cfg.edit_matrices)
    spec = EditorSpec.from_model(fam.linear_layers(model.config), layers, shared=cfg.shared)
    ecfg = EditorConfig(rank=cfg.rank, n_hidden=cfg.n_hidden, combine=cfg.combine, shared=cfg.shared,
                        edit_lr_init=cfg.edit_lr_init, edit_lr_k_power=cfg.edit_lr_k_power,
                        factor_positions=cfg.factor_positions)
    return mend_editor(spec, ecfg), ecfg


def load_training_data(tokenizer, cfg: TrainConfig, shapes: Shapes):
    records = []
    repeats = tuple(cfg.repeats) + (1,) * (len(cfg.data) - len(cfg.repeats))
    for kind, f, rep in zip(cfg.data, cfg.train_files, repeats):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            recs = load_records(kind, f, records=cfg.train_records)
            records += filter_records(tokenizer, list(recs), shapes, train=True) * int(rep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dev = load_records(cfg.dev_data, cfg.dev_file, records=cfg.dev_records)
        dev = filter_records(tokenizer, list(dev), shapes, train=False)
    if not records:
        raise MendJaxError("no training records fit the shapes; raise --seq-len")
    return records, dev[: cfg.val_size]


class Placement:
    """Where the run's arrays live: one device (``mesh=None``), or a ``data x fsdp x tensor`` mesh over every
    device of every host (``mend_jax.sharding``): the base model in its parameter shardings (placed while loading),
    the train state in ``sharded_steps.train_state_shardings``, each ``MetaBatch`` split on its problem axis, with
    every process encoding only its own problems. Process 0 logs; all processes save and restore checkpoints."""

    def __init__(self, mesh=None):
        self.mesh = mesh
        self.main = jax.process_index() == 0

    @classmethod
    def for_config(cls, cfg: TrainConfig) -> "Placement":
        if not cfg.mesh:
            return cls(None)
        from mend_jax import sharding as shd
        shd.initialize_distributed()
        shape = shd.auto_mesh_shape(len(jax.devices())) if cfg.mesh == "auto" else cfg.mesh.replace(",", "x")
        return cls(shd.make_mesh(shape))

    def log(self, *args) -> None:
        if self.main:
            print(*args)

    @property
    def loader_shardings(self):
        from mend_jax import sharding as shd
        return None if self.mesh is None else shd.loader_shardings(self.mesh)

    @property
    def replicated(self):
        from mend_jax import sharding as shd
        return None if self.mesh is None else shd.replicated(self.mesh)

    def model(self, model):
        """A model loaded elsewhere (tests, notebooks), moved into this mesh's parameter shardings."""
        if self.mesh is None:
            return model
        from mend_jax import sharding as shd
        sh = shd.param_shardings(model.config, self.mesh)
        return dataclasses.replace(model, params=shd.shard_params(model.params, sh))

    def train_step(self, editor, cfg, tx, hp, n_problems: int):
        if self.mesh is None:
            return make_train_step(editor, cfg, tx, hp)
        from mend_jax.sharded_steps import sharded_train_step
        return sharded_train_step(editor, cfg, tx, self.mesh, n_problems=n_problems, hp=hp)

    def eval_step(self, editor, cfg, hp):
        if self.mesh is None:
            return make_eval_step(editor, cfg, hp)
        from mend_jax.sharded_steps import constrain_editor
        return make_eval_step(constrain_editor(editor, self.mesh), cfg, hp, out_shardings=self.replicated)

    def train_state(self, ts: dict, editor, cfg, tx) -> dict:
        if self.mesh is None:
            return ts
        from mend_jax.sharded_steps import place_train_state, train_state_shardings
        return place_train_state(ts, train_state_shardings(editor, cfg, tx, self.mesh))

    def rows(self, n_problems: int) -> slice:
        """The problems of each step that this process encodes."""
        if self.mesh is None:
            return slice(0, n_problems)
        from mend_jax import sharding as shd
        return shd.process_batch_slice(n_problems)

    def batch(self, local, n_problems: int):
        """This process's problems (all of them on one host) -> global arrays split on the problem axis."""
        if self.mesh is None:
            return local
        from mend_jax import sharding as shd
        from mend_jax.sharded_steps import meta_batch_shardings
        if jax.tree.leaves(local)[0].shape[0] == n_problems and jax.process_count() > 1:
            local = jax.tree.map(lambda x: x[self.rows(n_problems)], local)  # validation: built whole
        return shd.global_batch_from_process_rows(local, meta_batch_shardings(self.mesh, n_problems), n_problems)


def _log(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows past a resumed step (they were never checkpointed)."""
    if not path.is_file():
        return
    rows = [r for r in path.read_text().splitlines() if r.strip() and json.loads(r).get("step", 0) <= step]
    path.write_text("".join(r + "\n" for r in rows))


def validate(eval_step, ts, base_params, val_batches, prefix: str = "val") -> dict:
    """Weighted means of the per-problem validation metrics, as ``{prefix}/{metric}``."""
    sums: dict[str, float] = {}
    total = 0.0
    for batch, weight in val_batches:
        per = jax.device_get(eval_step(ts["params"], ts["stats"], base_params, batch))
        for k, v in per.items():
            sums[k] = sums.get(k, 0.0) + float((np.asarray(v) * weight).sum())
        total += float(weight.sum())
    return {f"{prefix}/{k}": v / total for k, v in sums.items()}


def warm_start(ts: dict, source: str, model, editor, which: str = "best", optimizer: bool = False) -> dict:
    """Editor parameters and normalisation statistics from another run's ``which`` ("best" or "latest")
    checkpoint, and step 0; a fresh optimizer state, or with ``optimizer`` the source's (same optimizer settings
    needed; an editor-only folder has none). The source must edit the same layers of the same base model with the
    same editor."""
    from mend_jax.checkpoints import load_editor
    src_editor, params, stats, meta = load_editor(source, model, which)
    if tuple(src_editor.spec.layers) != tuple(editor.spec.layers):
        raise CheckpointError(f"--init-from {source} edits {list(src_editor.spec.layers)}, this run edits "
                              f"{list(editor.spec.layers)}")
    want = jax.tree.map(lambda x: (x.shape, x.dtype), (ts["params"], ts["stats"]))
    got = jax.tree.map(lambda x: (x.shape, x.dtype), (params, stats))
    if want != got:
        raise CheckpointError(f"--init-from {source} holds an editor of another shape (rank/n_hidden/sharing); "
                              f"use the same editor options as that run")
    out = {**ts, "params": params, "stats": stats}
    if optimizer:
        from mend_jax.checkpoints import checkpoints_dir
        ckdir = checkpoints_dir(source)
        if not _has_optimizer_state(ckdir, which):
            raise CheckpointError(f"--init-optimizer: {source} holds no optimizer state in its {which} checkpoint "
                                  f"(an editor-only folder?); leave out --init-optimizer to start Adam afresh")
        ck = EditorCheckpoints(ckdir, async_save=False)
        try:
            full, _ = ck.restore(ts, which=which)
        finally:
            ck.close()
        out["opt_state"] = full["opt_state"]
    if jax.process_index() == 0:
        print(f"warm start from {source} (its {which} checkpoint, step {meta.get('step')}"
              f"{', with its optimizer state' if optimizer else ''})")
    return out


def _has_optimizer_state(ckdir: Path, which: str) -> bool:
    root = Path(ckdir) / which
    steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []
    return bool(steps) and (root / str(steps[-1]) / "opt_state").is_dir()


def next_step_passes_limit(minutes_now: float, max_minutes: float, step_s: float, val_s: float = 0.0,
                           save_s: float = 0.0) -> bool:
    """Whether the next step would end past ``--max-minutes``: the step's last measured time, its validation if one
    is due and the checkpoint a time-limit stop writes, added to the minutes used so far. The loop stops *before*
    such a step, so a run given the rest of a budget (a lineage's three hours) ends inside it instead of a step,
    a validation and a save past it."""
    return minutes_now + (step_s + val_s + save_s) / 60 > max_minutes


def train(cfg: TrainConfig, model=None, progress: bool = True) -> dict:
    from tqdm import tqdm
    from mend_jax.weights import load_model

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "train_config.json"
    if cfg_path.is_file():
        saved = TrainConfig.from_json(json.loads(cfg_path.read_text()))
        # may change between a run and its resumption (hidden_cache: the same step up to float rounding; out: a
        # run folder may move)
        free = ("steps", "max_minutes", "patience", "mesh", "hidden_cache", "out")
        same = {k: v for k, v in saved.to_json().items() if k not in free}
        now = {k: v for k, v in cfg.to_json().items() if k not in free}
        if same != now:
            diff = [k for k in now if now[k] != same.get(k)]
            raise CheckpointError(f"{out} holds a run with another configuration (differs in {diff}); "
                                  f"use another --out or the same options")
    placement = Placement.for_config(cfg)
    progress = progress and placement.main
    if placement.main:
        cfg.save(cfg_path)

    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[cfg.base_dtype]
    model = placement.model(model or load_model(cfg.model, progress=progress, dtype=dtype,
                                                shardings=placement.loader_shardings))
    shapes = Shapes(cfg.seq_len, cfg.target_len, cfg.loc_len, cfg.loc_answer_len)
    editor, ecfg = build_editor(model, cfg)
    projection_s = 0.0
    if cfg.project_out or cfg.whiten:  # measured once (counted as training time below), read back on resumption
        t_proj = time.time()
        editor = training_projection(out, model, editor, cfg, progress=progress)
        projection_s = time.time() - t_proj
    records, dev = load_training_data(model.tokenizer, cfg, shapes)
    order = DataOrder(len(records), cfg.seed)
    own_ok = own_loc_fits(model.tokenizer, records, shapes)
    passages: list[tuple[str, str]] = []
    t_text = time.time()
    if cfg.loc_text:
        from mend_jax.data.text import load_text_passages
        passages = fitting_passages(model.tokenizer, load_text_passages(cfg.loc_text, limit=cfg.loc_text_passages),
                                    shapes)
        if not passages:
            raise DataError(f"--loc-text {cfg.loc_text}: no passage fits the locality shapes (--loc-len "
                            f"{cfg.loc_len}, --loc-answer-len {cfg.loc_answer_len})")
        placement.log(f"{len(passages)} locality passages from {cfg.loc_text}, {cfg.loc_text_rows} per problem")
    text_s = time.time() - t_text
    tx = make_optimizer(cfg.lr, cfg.lr_lr, cfg.grad_clip)
    hp = StepHParams(cfg.c_edit, cfg.c_loc, edit_on_prompt=cfg.edit_loss_on == "both", edit_steps=cfg.edit_steps,
                     loc_on_answer=cfg.loc_loss_on == "answer", c_flip=cfg.c_flip,
                     decay_steps=cfg.lr_decay_steps, total_steps=cfg.steps)
    step_shapes = cfg.step_shapes()
    # one jitted step per shape; on one device the editor runs on the step's real rows only (a static budget from
    # the data; a batch over it takes the full step, compiled when first needed): see StepHParams.rows
    budgets = {}
    for n, k in step_shapes:
        b = row_budget(model.tokenizer, records, n * k, shapes) if placement.mesh is None else None
        budgets[(n, k)] = b if b is not None and b < n * k * shapes.seq_len else None
    hp_k = {k: dataclasses.replace(hp, c_loc=cfg.c_loc_for(k)) for _, k in step_shapes}  # --c-loc-batched
    step_fns = {s: placement.train_step(editor, model.config, tx, dataclasses.replace(hp_k[s[1]], rows=b), s[0])
                for s, b in budgets.items()}
    full_fns = {}  # (n, k) -> the step over every position, for batches over the budget

    def step_fn(n, k, batch):
        b = budgets[(n, k)]
        if b is None or factor_rows(batch.edit) <= b:
            return step_fns[(n, k)]
        if (n, k) not in full_fns:
            full_fns[(n, k)] = placement.train_step(editor, model.config, tx, hp_k[k], n)
        return full_fns[(n, k)]
    # the frozen blocks once per distinct input (one device): each step then runs only the edited blocks and the head
    cache, cache_s = None, 0.0
    setup_s = projection_s + text_s  # training time before the first step: counted in --max-minutes and the summary
    if cfg.hidden_cache and placement.mesh is not None:
        placement.log("--hidden-cache is for one device: the mesh step recomputes the frozen blocks itself")
    elif cfg.hidden_cache:
        first = min(layer_index(name) for name in editor.spec.layers)
        cache = FrozenHiddenCache(model, first)
        t_cache = time.time()
        # kept in the run folder: a resumed run reads it back instead of spending its budget on it again
        digest, cache_dir = frozen_weights_digest(model, first), out / "hidden_cache"
        loaded = cache.load(cache_dir, digest)
        added = cache.add(training_inputs(model.tokenizer, records, cfg.train_loc, own_ok,
                                          max(shapes.seq_len, shapes.loc_len), passages), progress=progress)
        if added:
            cache.save(cache_dir, digest)
        cache_s = time.time() - t_cache
        setup_s += cache_s
        placement.log(f"frozen blocks 0-{first - 1} cached for {len(cache)} distinct inputs "
                      f"({cache.nbytes / 2**30:.2f} GiB, {cache_s:.0f} s; "
                      f"{'read from' if loaded else 'written to'} {cache_dir}, {added} computed)")
    placement.log("editor rows per step: " + ", ".join(f"{n}x{k}: {b or n * k * shapes.seq_len} of "
                                                        f"{n * k * shapes.seq_len}" for (n, k), b in budgets.items()))
    eval_fns = {k: placement.eval_step(editor, model.config, h) for k, h in hp_k.items()}
    fingerprint = model_fingerprint(model, editor.spec.layers)
    ckpt = EditorCheckpoints(out / "checkpoints")
    log_path = out / "log.jsonl"

    ts = placement.train_state(init_train_state(editor, tx, jax.random.key(cfg.seed)), editor, model.config, tx)
    best = math.inf
    since_best = 0
    earlier_minutes = 0.0  # the minutes of the earlier invocations of this run folder, up to its last checkpoint
    if ckpt.latest_step() is not None:
        ts, meta = ckpt.restore(ts)  # restored straight into ``ts``'s shardings (this run's mesh)
        check_fingerprint(meta["fingerprint"], fingerprint, str(out))
        ts["step"] = jnp.asarray(ts["step"], jnp.int32)
        best, since_best = meta.get("best", math.inf), meta.get("since_best", 0)
        earlier_minutes = meta.get("minutes_total", 0.0)  # 0 for checkpoints written before it was recorded
        if placement.main:
            _truncate_log(log_path, int(ts["step"]))
        placement.log(f"resumed from step {int(ts['step'])} in {out}")
    elif cfg.init_from:
        ts = warm_start(ts, cfg.init_from, model, editor, cfg.init_which, cfg.init_optimizer)
        ts = placement.train_state(ts, editor, model.config, tx)
    start = int(ts["step"])

    def meta_dict(step, val=None):
        return {"step": step, "config": cfg.to_json(), "editor_config": ecfg.__dict__,
                "editor_layers": list(editor.spec.layers), "fingerprint": fingerprint, "best": best,
                "since_best": since_best, "val": val or {}, "n_train_records": len(records),
                "minutes_total": earlier_minutes + minutes()}

    # validation on every edits-per-problem k of the steps (first shape: "val/...", others: "val_k{k}/...")
    val_sets = {}
    for n, k in step_shapes:
        if k not in val_sets:
            val_sets[k] = [(placement.batch(b, n), w) for b, w in
                           validation_batches(model.tokenizer, dev, n, shapes, model.config.max_position_embeddings,
                                              cfg.seed, k)]
    first_k = step_shapes[0][1]
    prefix = {k: "val" if k == first_k else f"val_k{k}" for k in val_sets}

    def validate_all() -> dict:
        out = {}
        for k, vb in val_sets.items():
            out.update(validate(eval_fns[k], ts, model.params, vb, prefix[k]))
        if len(val_sets) > 1:  # early stopping on the mean over the shapes
            out[f"val/{VAL_KEY}_all"] = float(np.mean([out[f"{prefix[k]}/{VAL_KEY}"] for k in val_sets]))
        return out
    stop_key = f"val/{VAL_KEY}_all" if len(val_sets) > 1 else f"val/{VAL_KEY}"
    t0 = time.time()

    def minutes() -> float:  # one clock for --max-minutes and the summary: set-up, compilation and every step
        return (time.time() - t0 + setup_s) / 60
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, desc="meta-training", unit="step")
    step = start
    last_saved = start
    stopped = "steps"
    step_s: dict[tuple[int, int], float] = {}  # wall time of the last step of each shape (problems, edits each)
    val_s = save_s = 0.0  # wall time of the last validation and of the last checkpoint save
    while step < cfg.steps:
        n, k, first_example = step_layout(step_shapes, step)
        if cfg.max_minutes and step_s and next_step_passes_limit(
                minutes(), cfg.max_minutes, step_s.get((n, k), max(step_s.values())),
                val_s if (step + 1) % cfg.val_every == 0 or step + 1 == cfg.steps else 0.0, save_s):
            stopped = "time limit"  # stop before the step that would end past the limit, not after it
            if last_saved != step:
                ckpt.save(step, ts, meta_dict(step))
            break
        t_step = time.time()
        batch = placement.batch(training_batch(model.tokenizer, records, order, step, n, shapes,
                                               model.config.max_position_embeddings, cfg.train_loc, own_ok,
                                               problems=placement.rows(n), edits_per_problem=k,
                                               start=first_example, loc_text=passages,
                                               loc_text_rows=cfg.loc_text_rows if passages else 0), n)
        hidden = (cache.for_batch(batch),) if cache is not None else ()
        ts, metrics = step_fn(n, k, batch)(ts, model.params, batch, *hidden)
        step += 1
        bar.update(1)
        row = {"step": step, "time": time.time() - t0, "edits_per_problem": k,
               **{key: float(v) for key, v in jax.device_get(metrics).items()}}
        step_s[(n, k)] = time.time() - t_step  # the metrics' device_get above waited for the step
        is_val = step % cfg.val_every == 0 or step == cfg.steps
        if is_val:
            t_val = time.time()
            val = validate_all()
            row.update(val)
            improved = val[stop_key] < best
            if improved:
                best, since_best = val[stop_key], 0
            else:
                since_best += cfg.val_every
            t_save = time.time()
            ckpt.save(step, ts, meta_dict(step, val), best=improved)
            val_s, save_s = t_save - t_val, time.time() - t_save
            last_saved = step
            bar.set_postfix(val_loss=f"{val['val/loss']:.3f}", val_acc=f"{val['val/edit_acc']:.3f}",
                            val_loc=f"{val['val/loc_same']:.3f}")
            if since_best >= cfg.patience:
                stopped = "early stop"
        elif step % cfg.ckpt_every == 0:
            t_save = time.time()
            ckpt.save(step, ts, meta_dict(step))
            save_s = time.time() - t_save
            last_saved = step
        if placement.main:
            _log(log_path, row)
        if stopped != "steps":
            break
        if cfg.max_minutes and minutes() > cfg.max_minutes:
            stopped = "time limit"
            if last_saved != step:
                ckpt.save(step, ts, meta_dict(step))
            break
    bar.close()
    ckpt.close()
    summary = {"steps": step, "stopped": stopped, "best_val_loss": best if math.isfinite(best) else None,
               "minutes": minutes(),
               # this folder's invocations together: a killed invocation counts up to its last checkpoint (the steps
               # after it are done again, and counted, by the next one)
               "minutes_total": earlier_minutes + minutes(), "hidden_cache_minutes": cache_s / 60,
               "projection_minutes": projection_s / 60,
               "n_train_records": len(records), "out": str(out)}
    if placement.main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
