"""Editor checkpoints with Orbax, kept apart from the base weights (which are never written).

A checkpoint step holds composite items:
- ``params``   editor nets + per-layer step sizes        (``StandardSave``: structure-strict restore)
- ``stats``    running normalisation statistics (count > 0 marks them initialised)
- ``opt_state`` optax state
- ``meta``     JSON: step, full training configuration, editor layout, base-model fingerprint, metrics

Orbax writes each step to a temporary folder and renames it when finalized, so a run killed mid-save (even by
SIGKILL) never leaves a step that restores half-written; ``latest_step()`` only sees finalized steps.
Restoring checks the base-model fingerprint first and names the field that differs.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Mapping

import jax
import numpy as np

from mend_jax.errors import CheckpointError
from mend_jax.models import get_module


def model_fingerprint(model, layers) -> dict:
    """What an editor depends on: base model identity, architecture, edited layers/shapes, edited weights' hash."""
    fam = model.family
    shapes = fam.linear_layers(model.config)
    h = hashlib.sha256()
    for n in layers:
        k = np.asarray(jax.device_get(get_module(model.params, n)["kernel"]), np.float32)
        h.update(n.encode())
        h.update(np.ascontiguousarray(k).tobytes())
    return {"model_name": model.name, "architecture": model.config.to_hf(),
            "edited_layers": list(layers), "edited_shapes": [list(shapes[n]) for n in layers],
            "edited_weights_sha256": h.hexdigest()}


def check_fingerprint(saved: Mapping, current: Mapping, where: str) -> None:
    for key in ("architecture", "edited_layers", "edited_shapes", "edited_weights_sha256", "model_name"):
        if saved.get(key) != current.get(key):
            if key == "model_name" and saved.get("edited_weights_sha256") == current.get("edited_weights_sha256"):
                continue  # same weights under another name (e.g. a local folder vs the registry name)
            raise CheckpointError(
                f"the editor in {where} was trained for another base model: fingerprint field {key!r} differs "
                f"(checkpoint: {str(saved.get(key))[:120]}; this model: {str(current.get(key))[:120]}). "
                f"Use the base model the editor was trained on, or train a new editor")


class EditorCheckpoints:
    """Latest-N and best-by-dev editor checkpoints under ``directory/{latest,best}``."""

    def __init__(self, directory: str | Path, keep_latest: int = 2, async_save: bool = True):
        import orbax.checkpoint as ocp
        self.ocp = ocp
        self.directory = Path(directory).resolve()
        opts = lambda n: ocp.CheckpointManagerOptions(max_to_keep=n, enable_async_checkpointing=async_save,  # noqa
                                                       create=True)
        names = ("params", "stats", "opt_state", "meta")
        self.latest = ocp.CheckpointManager(self.directory / "latest", options=opts(keep_latest), item_names=names)
        self.best = ocp.CheckpointManager(self.directory / "best", options=opts(1), item_names=names)

    def _args(self, train_state: Mapping, meta: Mapping, save: bool):
        A = self.ocp.args
        kind = A.StandardSave if save else A.StandardRestore
        return A.Composite(params=kind(train_state["params"]), stats=kind(train_state["stats"]),
                           opt_state=kind(train_state["opt_state"]),
                           meta=A.JsonSave(dict(meta)) if save else A.JsonRestore())

    def save(self, step: int, train_state: Mapping, meta: Mapping, best: bool = False) -> None:
        self.latest.save(step, args=self._args(train_state, meta, True))
        if best:
            self.best.wait_until_finished()
            self.best.save(step, args=self._args(train_state, meta, True), force=True)

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, abstract_state: Mapping, step: int | None = None, which: str = "latest"):
        """``(train_state, meta)`` restored into ``abstract_state``'s shapes, dtypes and shardings (so a state
        placed on another mesh restores straight into it). An editor-only checkpoint (:func:`save_editor`) has
        no optimizer state: ``opt_state`` comes back as ``abstract_state``'s own."""
        mgr = self.latest if which == "latest" else self.best
        step = mgr.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no finalized checkpoint in {self.directory / which}")
        abstract = jax.tree.map(self.ocp.utils.to_shape_dtype_struct, dict(abstract_state))
        A = self.ocp.args
        with_opt = (self.directory / which / str(step) / "opt_state").is_dir()
        items = dict(params=A.StandardRestore(abstract["params"]), stats=A.StandardRestore(abstract["stats"]),
                     meta=A.JsonRestore())
        if with_opt:
            items["opt_state"] = A.StandardRestore(abstract["opt_state"])
        try:
            r = mgr.restore(step, args=A.Composite(**items))
        except FileNotFoundError as e:
            raise CheckpointError(f"checkpoint step {step} not found in {self.directory / which}") from e
        except ValueError as e:
            raise CheckpointError(f"checkpoint in {self.directory / which} (step {step}) does not match this "
                                  f"editor's structure ({str(e)[:300]})") from e
        except Exception as e:  # noqa: BLE001  (tensorstore/zarr errors of cut or foreign files have many types)
            raise CheckpointError(f"checkpoint in {self.directory / which} (step {step}) could not be read "
                                  f"({type(e).__name__}: {str(e)[:200]}); it may be truncated or not written by "
                                  f"mend-jax. Use another step or --which, or retrain") from e
        state = {"params": r.params, "stats": r.stats,
                 "opt_state": r.opt_state if with_opt else abstract_state["opt_state"],
                 "step": np.asarray(step, np.int32)}
        return state, dict(r.meta)

    def close(self) -> None:
        self.wait()
        self.latest.close()
        self.best.close()


def save_editor(source: str | Path, out: str | Path, model, which: str = "best") -> Path:
    """Write what editing needs (editor parameters, normalisation statistics, metadata; no optimizer state, no
    base weights) of a training run's checkpoint as a new editor folder that ``load_editor`` and every command
    taking ``--editor`` read. About a third of the training checkpoint (Adam keeps two moments per parameter)."""
    import orbax.checkpoint as ocp
    editor, params, stats, meta = load_editor(source, model, which)
    out = Path(out)
    if (out / "checkpoints").exists():
        raise CheckpointError(f"{out} already holds an editor; choose another --out (nothing was written)")
    step = int(meta.get("step", 0))
    meta = dict(meta, saved_from=f"{Path(source).resolve()}@{which}:{step}", editor_only=True)
    names = ("params", "stats", "meta")
    for sub in ("best",):  # one copy; ``--which latest`` reads it too (see load_editor)
        mgr = ocp.CheckpointManager(out.resolve() / "checkpoints" / sub, item_names=names,
                                    options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                                                         enable_async_checkpointing=False))
        mgr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                               stats=ocp.args.StandardSave(stats), meta=ocp.args.JsonSave(meta)))
        mgr.wait_until_finished()
        mgr.close()
    from mend_jax.editing.projection import BASES_FILE, WHITEN_FILE
    src_dir = editor_folder(source)
    for name in (BASES_FILE, WHITEN_FILE):  # the transformation the editor was trained with (load_editor checked it)
        if (src_dir / name).is_file():
            shutil.copyfile(src_dir / name, out / name)
    return out


def editor_folder(path: str | Path) -> Path:
    """The editor's folder (a ``mend-jax train --out`` or ``save-editor`` folder, which holds ``checkpoints/`` and
    the files beside them) for ``path``: that folder itself or its ``checkpoints`` subfolder."""
    path = Path(path)
    return path if (path / "checkpoints").is_dir() else path.parent


def checkpoints_dir(path: str | Path) -> Path:
    """The folder holding an editor's ``best/`` and ``latest/`` steps for ``path`` (a ``mend-jax train --out`` or
    ``save-editor`` folder, or that folder's ``checkpoints`` subfolder itself)."""
    path = Path(path)
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def _has_steps(folder: Path) -> bool:
    return folder.is_dir() and any(p.name.isdigit() and (p / "meta").exists() for p in folder.iterdir())


def folder_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def read_meta(directory: str | Path, which: str = "best") -> tuple[int, dict]:
    """(step, meta) of the newest finalized checkpoint in ``directory/which`` without restoring arrays."""
    root = Path(directory) / which
    if which == "latest" and not _has_steps(root) and _has_steps(Path(directory) / "best"):
        root = Path(directory) / "best"  # an editor-only folder (save_editor) holds one step
    if not root.is_dir():
        raise CheckpointError(f"{directory} is not an editor checkpoint folder (no {which}/ inside); pass the "
                              f"--out folder of `mend-jax train`")
    steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "meta").exists())
    if not steps:
        raise CheckpointError(f"no finalized checkpoint in {root}")
    step = steps[-1]
    mfile = next((p for p in (root / str(step) / "meta").iterdir() if p.suffix == ".json" or p.is_file()), None)
    try:
        return step, json.loads(Path(mfile).read_text())
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint metadata in {root / str(step)} is unreadable ({e})") from e


def load_editor(directory: str | Path, model, which: str = "best"):
    """Rebuild a trained editor for ``model`` from a ``mend-jax train --out`` folder.

    Returns ``(editor, params, stats, meta)``. Refuses an editor trained for another base model."""
    from mend_jax.editing.editor import EditorConfig, EditorSpec, mend_editor
    from mend_jax.training.config import TrainConfig
    from mend_jax.training.step import init_train_state, make_optimizer
    directory = Path(directory)
    ckdir = checkpoints_dir(directory)
    if which == "latest" and not _has_steps(ckdir / "latest") and _has_steps(ckdir / "best"):
        which = "best"  # an editor-only folder (save_editor) holds one step
    if not (ckdir / which).is_dir():
        raise CheckpointError(f"{directory} is not an editor folder (expected {ckdir / which}); pass the --out "
                              f"folder of `mend-jax train`")
    _, meta = read_meta(ckdir, which)
    for key in ("editor_layers", "editor_config", "fingerprint", "config"):
        if key not in meta:
            raise CheckpointError(f"checkpoint metadata in {ckdir / which} lacks {key!r}: not a mend-jax editor")
    layers = tuple(meta["editor_layers"])
    fam = model.family
    shapes = fam.linear_layers(model.config)
    if any(n not in shapes for n in layers):
        raise CheckpointError(f"the editor edits layers {list(layers)} which this model does not have; it was "
                              f"trained for {meta['fingerprint'].get('model_name')!r}")
    check_fingerprint(meta["fingerprint"], model_fingerprint(model, layers), str(directory))
    ecfg = EditorConfig(**meta["editor_config"])
    editor = mend_editor(EditorSpec.from_model(shapes, layers, shared=ecfg.shared), ecfg)
    tcfg = TrainConfig.from_json(meta["config"])
    tx = make_optimizer(tcfg.lr, tcfg.lr_lr, tcfg.grad_clip)
    abstract = jax.eval_shape(lambda: init_train_state(editor, tx, jax.random.key(0)))
    ck = EditorCheckpoints(ckdir, async_save=False)
    try:
        ts, meta = ck.restore(abstract, which=which)
    finally:
        ck.close()
    from mend_jax.editing.projection import trained_projection
    editor = trained_projection(editor_folder(directory), editor, tcfg)
    return editor, ts["params"], ts["stats"], meta


def trained_edit_steps(meta: Mapping) -> int:
    """The editor steps per edit an editor was trained with (``mend-jax train --edit-steps``; 1 for runs saved
    before the option), from :func:`load_editor`'s ``meta``: the default of every command that applies it."""
    from mend_jax.training.config import TrainConfig
    return TrainConfig.from_json(meta["config"]).edit_steps
