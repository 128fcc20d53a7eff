"""Python API in the spirit of EasyEdit, on the pure functions underneath.

    from mend_jax.api import EditSession
    session = EditSession.from_pretrained("runs/editor")          # base model + trained editor
    record = session.edit(["The Eiffel Tower is in"], ["Rome"])    # applied; returns an EditRecord with metrics
    session.generate("The Eiffel Tower is in")
    session.revert(record.id)                                      # weights exactly as without that edit
    session.export("edited-model/")                                # transformers-format folder

The session keeps the base parameters untouched and an ordered journal of edits (per edited layer the low-rank
factors and step size); the current parameters are always ``base + the journal's updates``, recomputed in order,
so reverting an edit is exact.
"""
from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mend_jax.editing.batch import encode_examples
from mend_jax.editing.edit import apply_edits
from mend_jax.editing.editor import Editor
from mend_jax.errors import CheckpointError, InvalidEditError
from mend_jax.models import LowRankEdit


@dataclasses.dataclass
class EditRecord:
    id: str
    prompts: list[str]
    targets: list[str]
    time: float
    editor: str
    edits: dict[str, LowRankEdit]
    metrics: dict[str, float]

    def compact_edits(self) -> dict[str, dict[str, np.ndarray]]:
        return {name: {"a": np.asarray(e.a), "b": np.asarray(e.b), "scale": np.asarray(e.scale, np.float32)}
                for name, e in self.edits.items()}


def compact(edits: dict[str, LowRankEdit]) -> dict[str, LowRankEdit]:
    """Drop the all-zero (masked) rows of each layer's factors: they contribute nothing to the update."""
    out = {}
    for name, e in edits.items():
        a, b = np.asarray(e.a), np.asarray(e.b)
        keep = np.any(a != 0, -1) & np.any(b != 0, -1)
        out[name] = LowRankEdit(jnp.asarray(a[keep]), jnp.asarray(b[keep]), jnp.asarray(e.scale, jnp.float32))
    return out


class EditSession:
    def __init__(self, model, editor: Editor, editor_params, editor_stats, editor_id: str = "", edit_steps: int = 1,
                 edit_until_margin: float | None = None, edit_max_rank: int | None = None, edit_min_steps: int = 1):
        if edit_steps < 1:
            raise InvalidEditError(f"edit_steps must be >= 1 (1: MEND as in the paper), not {edit_steps}")
        if not 1 <= edit_min_steps <= edit_steps:
            raise InvalidEditError(f"edit_min_steps must be between 1 and edit_steps ({edit_steps}), not "
                                   f"{edit_min_steps}")
        self.model = model
        self.edit_steps = edit_steps  # editor applications per edit (editing.edit.iterated_mend_edits)
        self.edit_until_margin = edit_until_margin  # adaptive steps (iterated_mend_edits(until_margin=...))
        self.edit_max_rank = edit_max_rank  # each layer's edit cut to this rank (iterated_mend_edits(max_rank=...))
        self.edit_min_steps = edit_min_steps  # steps taken whatever the margin (iterated_mend_edits(min_steps=...))
        self.editor = editor
        self.editor_params = editor_params
        self.editor_stats = editor_stats
        self.editor_id = editor_id
        self.base_params = model.params
        self.params = model.params
        self.journal: list[EditRecord] = []

    @classmethod
    def from_pretrained(cls, editor_dir: str, model: str | None = None, which: str = "best",
                        edit_steps: int | None = None, edit_until_margin: float | None = None,
                        edit_max_rank: int | None = None, edit_min_steps: int = 1) -> "EditSession":
        from mend_jax.checkpoints import checkpoints_dir, load_editor, read_meta, trained_edit_steps
        from mend_jax.weights import load_model
        step, meta = read_meta(checkpoints_dir(editor_dir), which)
        base = load_model(model or meta["config"]["model"], progress=False)
        editor, params, stats, meta = load_editor(editor_dir, base, which)
        if edit_steps is None:  # as the editor was trained (`mend-jax train --edit-steps`)
            edit_steps = trained_edit_steps(meta)
        return cls(base, editor, params, stats, editor_id=f"{Path(editor_dir).resolve()}@{which}:{step}",
                   edit_steps=edit_steps, edit_until_margin=edit_until_margin, edit_max_rank=edit_max_rank,
                   edit_min_steps=edit_min_steps)

    # ------------------------------------------------------------------------------------------ editing
    def edit(self, prompts: Sequence[str], targets: Sequence[str]) -> EditRecord:
        """Apply ``len(prompts)`` edits at once (their factors summed) to the current model."""
        from mend_jax.editing.batch import edit_row_bucket
        from mend_jax.editing.edit import iterated_mend_edits
        from mend_jax.evaluation import hidden_states, score_targets
        from mend_jax.models import layer_index
        cfg = self.model.config
        batch = jax.tree.map(jnp.asarray, encode_examples(self.model.tokenizer, list(prompts), list(targets),
                                                          max_length=cfg.max_position_embeddings))
        edits = iterated_mend_edits(self.editor, cfg, self.params, self.editor_params, self.editor_stats, batch,
                                    steps=self.edit_steps, rows=edit_row_bucket(batch),
                                    until_margin=self.edit_until_margin, max_rank=self.edit_max_rank,
                                    min_steps=self.edit_min_steps)
        edits = compact(edits)  # what the journal stores is exactly what is applied (so replay is bitwise equal)
        self.params = apply_edits(self.params, edits)
        first = min(layer_index(n) for n in self.editor.spec.layers)
        _, tok, exact = score_targets(self.params, cfg, batch, hidden_states(self.params, cfg, batch, first), {}, first)
        rec = EditRecord(uuid.uuid4().hex[:12], list(prompts), list(targets), time.time(), self.editor_id, edits,
                         {"reliability_token": float(jnp.mean(tok)), "reliability_exact": float(jnp.mean(exact))})
        self.journal.append(rec)
        return rec

    def revert(self, edit_id: str) -> None:
        """Remove one edit: the weights become base + the remaining edits, applied in order (exact)."""
        ids = [r.id for r in self.journal]
        if edit_id not in ids:
            raise InvalidEditError(f"no edit {edit_id!r} in this session (edits: {ids})")
        self.journal = [r for r in self.journal if r.id != edit_id]
        self._rebuild()

    def _rebuild(self) -> None:
        params = self.base_params
        for r in self.journal:
            params = apply_edits(params, r.edits)
        self.params = params

    def generate(self, prompt: str, max_new_tokens: int = 8) -> str:
        from mend_jax.inference import greedy_generate
        return greedy_generate(dataclasses.replace(self.model, params=self.params), prompt, max_new_tokens)

    # ------------------------------------------------------------------------------------------ journal
    def journal_to(self, folder: str | Path) -> Path:
        """Write (append) the journal: ``journal.json`` plus one ``<id>.npz`` of factors per edit."""
        from mend_jax.checkpoints import model_fingerprint
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        index_path = folder / "journal.json"
        fp = model_fingerprint(self.model, self.editor.spec.layers)
        index = json.loads(index_path.read_text()) if index_path.is_file() else {"fingerprint": fp, "edits": []}
        if index["fingerprint"].get("edited_weights_sha256") != fp["edited_weights_sha256"]:
            raise CheckpointError(f"journal {folder} belongs to another base model; use a new journal folder")
        known = {e["id"] for e in index["edits"]}
        for r in self.journal:
            if r.id in known:
                continue
            arrays = {f"{name}|{k}": v for name, d in r.compact_edits().items() for k, v in d.items()}
            tmp = folder / f".{r.id}.npz.tmp"
            with tmp.open("wb") as fh:
                np.savez_compressed(fh, **arrays)
            tmp.rename(folder / f"{r.id}.npz")
            index["edits"].append({"id": r.id, "prompts": r.prompts, "targets": r.targets, "time": r.time,
                                   "editor": r.editor, "layers": list(r.edits), "metrics": r.metrics})
        tmp = folder / ".journal.json.tmp"
        tmp.write_text(json.dumps(index, indent=2))
        tmp.rename(index_path)
        return folder

    def load_journal(self, folder: str | Path) -> None:
        """Replay a journal onto the base model (replacing this session's journal)."""
        from mend_jax.checkpoints import check_fingerprint, model_fingerprint
        folder = Path(folder)
        index_path = folder / "journal.json"
        if not index_path.is_file():
            raise CheckpointError(f"{folder} is not an edit journal (no journal.json)")
        index = json.loads(index_path.read_text())
        check_fingerprint(index["fingerprint"], model_fingerprint(self.model, index["fingerprint"]["edited_layers"]),
                          str(folder))
        self.journal = []
        for e in index["edits"]:
            path = folder / f"{e['id']}.npz"
            if not path.is_file():
                raise CheckpointError(f"journal {folder} lists edit {e['id']} but {path.name} is missing")
            data = np.load(path)
            edits = {name: LowRankEdit(jnp.asarray(data[f"{name}|a"]), jnp.asarray(data[f"{name}|b"]),
                                       jnp.asarray(data[f"{name}|scale"])) for name in e["layers"]}
            self.journal.append(EditRecord(e["id"], e["prompts"], e["targets"], e["time"], e["editor"], edits,
                                           e.get("metrics", {})))
        self._rebuild()

    # ------------------------------------------------------------------------------------------ export
    def export(self, folder: str | Path) -> Path:
        """The edited model as a transformers-format folder (config.json, model.safetensors, tokenizer)."""
        from mend_jax.weights.export import export_model
        return export_model(dataclasses.replace(self.model, params=self.params), folder)


def journal_remove(folder: str | Path, edit_id: str) -> None:
    """Remove one edit from a journal folder (the rebuilt model is then exactly base + the other edits)."""
    folder = Path(folder)
    index_path = folder / "journal.json"
    if not index_path.is_file():
        raise CheckpointError(f"{folder} is not an edit journal (no journal.json)")
    index = json.loads(index_path.read_text())
    ids = [e["id"] for e in index["edits"]]
    if edit_id not in ids:
        raise InvalidEditError(f"no edit {edit_id!r} in journal {folder} (edits: {ids})")
    index["edits"] = [e for e in index["edits"] if e["id"] != edit_id]
    tmp = folder / ".journal.json.tmp"
    tmp.write_text(json.dumps(index, indent=2))
    tmp.rename(index_path)  # the index is the truth; the factor file goes after it
    (folder / f"{edit_id}.npz").unlink(missing_ok=True)
