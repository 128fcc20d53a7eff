"""Training configuration: MEND's paper defaults where they work on 2 CPU cores, changed where measured otherwise
(see TRAINING_NOTES.md for the evidence behind every changed value)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass
class TrainConfig:
    # what to edit
    model: str = "smollm2-135m"
    edit_blocks: int = 3  # MLP matrices of the last N blocks (MEND's convention)
    # the first of the edited blocks, counted from 0 (the edited blocks are then edit_first_block ..
    # edit_first_block + edit_blocks - 1); None: the last edit_blocks blocks (MEND)
    edit_first_block: int | None = None
    # only these matrices of each edited block's MLP (e.g. ("down_proj",): the MLP's output matrix, whose inputs are
    # its sparser activations); None: all of them (MEND)
    edit_matrices: tuple[str, ...] | None = None
    # data: kinds and files; several may be mixed (e.g. zsre + counterfact)
    data: tuple[str, ...] = ("demo",)
    train_files: tuple[str | None, ...] = (None,)
    train_records: str | None = None  # "A:B" of every train file
    repeats: tuple[int, ...] = (1,)  # per train file: how often its records enter the data order (balances mixes)
    train_loc: str = "mix"  # training locality: "other" records' questions (original), the record's "own"
    #                         unrelated prompt (NQ for zsRE, as in evaluation), or a 50/50 "mix" (see notes)
    dev_data: str = "demo"
    dev_file: str | None = None
    dev_records: str | None = "0:100"
    # editor (paper: rank 1920, n_hidden 1, id init, norm, combine, shared). Rank 512 here: on SmolLM2 it trains as
    # well as 1920 and keeps edits and training steps within 1.3x of their passes (TRAINING_NOTES.md, run 5)
    rank: int = 512
    n_hidden: int = 1
    combine: bool = True
    shared: bool = True
    # optimisation
    steps: int = 2000
    edits_per_step: int = 8  # independent edit problems per optimizer step (paper: 10 via accumulation)
    edits_per_problem: int = 1  # edits applied at once in each problem (train for batched editing with k > 1)
    # steps of several shapes in turn, "NxK,..." (N problems of K edits at once each): e.g. "8x1,1x10" alternates
    # steps of 8 single edits with steps of one 10-edit problem, so one editor learns both; overrides the two above
    schedule: str | None = None
    # where the edit loss is taken: on the rephrase only ("equiv", MEND's L_edit) or on the rephrase and the edit
    # prompt itself ("both": the mean of the two NLLs; reliability is measured on the prompt)
    edit_loss_on: str = "equiv"
    # where the locality KL is taken on each locality input: over "all" its tokens (MEND) or over its "answer" tokens
    # only, where evaluation compares the argmax before and after the edit
    loc_loss_on: str = "all"
    # > 0: add c_flip * the argmax-margin hinge over the same locality positions (editing.losses.argmax_margin_hinge:
    # an edit may take at most half of the pre-edit argmax's margin over the runner-up without cost; the KL hardly
    # sees near-ties flipping, which whole-answer locality counts); 0: MEND's loss
    c_flip: float = 0.0
    lr: float = 1e-5  # editor nets (paper 1e-6)
    lr_lr: float = 1e-5  # step sizes (paper 1e-4, but in effect 1e-6 in the original code)
    # N > 0: both learning rates fall linearly to 0 over the last N of ``steps`` (counted from the warm start of an
    # --init-from run), a cool-down that settles the editor instead of leaving it where the last noisy batches put
    # it; Adam's moments are unchanged (the schedule scales Adam's updates). 0: constant learning rates (MEND)
    lr_decay_steps: int = 0
    edit_lr_init: float = 1e-4  # alpha_0 > 0 with W~ = W - alpha * update: first edits descend
    edit_lr_k_power: bool = False  # step sizes alpha_l * k**p_l for k edits at once, p_l learned (EditorConfig)
    # editor steps per edit, in training and (by default) whenever the editor is loaded: step s > 1 edits from the
    # factors at the weights steps 1..s-1 left (editing.edit.iterated_mend_edits; not MEND, which applies it once)
    edit_steps: int = 1
    # which token rows of an edit's factors the editor sees, in training and whenever the editor is loaded: "all"
    # (MEND) or "target" (only the positions whose logits predict a target token; editing.factors.capture_factors)
    factor_positions: str = "all"
    c_edit: float = 0.1
    c_loc: float = 1.0
    # c_loc for the problems of k > 1 edits at once of a schedule (e.g. "8x1,1x10"), in training and validation;
    # None: c_loc for every problem. A heavier locality weight for single edits need not bind the batched ones,
    # whose ten summed edits trade reliability for locality differently (TRAINING_NOTES.md, session 19)
    c_loc_batched: float | None = None
    grad_clip: float = 100.0
    # shapes (fixed, so one compilation)
    seq_len: int = 32
    target_len: int = 8
    loc_len: int = 32
    # the longest answer (tokens) of a locality input in training and validation; 0: target_len. Locality inputs
    # whose answer is longer (or whose question + answer exceed loc_len) are replaced by another record's (train) or
    # leave the record out (validation)
    loc_answer_len: int = 0
    # plain-text locality (data/text.py): a text file or Hub id (e.g. ../shared/data/wikitext/wiki.test.raw); every
    # training problem then also gets ``loc_text_rows`` passages of it (16-word runs of running text, the first
    # ``loc_text_passages`` that fit the locality shapes) as further locality inputs, generic text positions being
    # where whole-answer locality is lost. None: the records' locality pairs only (MEND). Validation is unchanged
    loc_text: str | None = None
    loc_text_rows: int = 1
    loc_text_passages: int = 4096
    # validation / early stopping / checkpoints
    val_every: int = 100
    val_size: int = 100
    patience: int = 1000  # steps without dev improvement
    ckpt_every: int = 50
    # wall-clock budget of this invocation, set-up and compilation included (the summary's "minutes"); the run stops
    # after the first step that ends past it, with a checkpoint, so it overshoots by one step (plus validation)
    max_minutes: float | None = None
    seed: int = 0
    out: str = "runs/editor"
    # base model weights: "float32", or "bfloat16" for large models (the editor and its math stay float32)
    base_dtype: str = "float32"
    # device mesh "data,fsdp,tensor" (e.g. "1,4,2"), "auto", or None for one device; a run may resume on another
    mesh: str | None = None
    # run the frozen blocks below the edited ones once per distinct training input at the start, instead of in
    # every step (training.frozen_cache; one device only; costs real tokens x hidden size x 4 bytes of memory)
    hidden_cache: bool = False
    # warm start: editor parameters and statistics (not the optimizer state) of another run's checkpoint
    # (``init_which``: its "best" by dev loss or its "latest"); only read when --out holds no checkpoint yet
    init_from: str | None = None
    init_which: str = "best"
    # with init_from: also take that checkpoint's optimizer state (Adam's moments; the optimizer settings must be the
    # same), so the warm start goes on with that run's optimisation instead of restarting Adam from zero moments
    init_optimizer: bool = False
    # R > 0: train (and later edit) with the editor's pseudo-inputs projected off the top-R directions of unrelated
    # inputs of the training records (editing/projection.py; not MEND): the directions are measured once at the start
    # on ``projection_inputs`` of them and saved beside the checkpoints (projection_bases.npz), so every command that
    # loads the editor applies the same projection. 0: plain MEND
    project_out: int = 0
    projection_inputs: int = 1024
    # W > 0: train (and later edit) with the pseudo-inputs whitened at strength W by the same unrelated inputs'
    # second moments (editing/projection.py whitening_maps; saved as whitening_maps.npz beside the checkpoints,
    # applied after the projection). 0: off
    whiten: float = 0.0

    def __post_init__(self):
        # checked here, before any model is loaded (a bad flag should not cost a model load)
        from mend_jax.errors import MendJaxError
        if self.edit_loss_on not in ("equiv", "both"):
            raise MendJaxError(f"edit_loss_on must be 'equiv' or 'both', not {self.edit_loss_on!r}")
        if self.loc_loss_on not in ("all", "answer"):
            raise MendJaxError(f"loc_loss_on must be 'all' or 'answer', not {self.loc_loss_on!r}")
        if self.init_optimizer and not self.init_from:
            raise MendJaxError("--init-optimizer takes the optimizer state of --init-from's checkpoint: give "
                               "--init-from too (or leave out --init-optimizer)")
        if self.factor_positions not in ("all", "target"):
            raise MendJaxError(f"--factor-positions must be 'all' or 'target', not {self.factor_positions!r}")
        if self.edit_blocks < 1 or (self.edit_first_block is not None and self.edit_first_block < 0):
            raise MendJaxError(f"--edit-blocks must be >= 1 and --edit-first-block >= 0 (or left out: the last "
                               f"blocks), not {self.edit_blocks} and {self.edit_first_block}")
        if self.edit_matrices is not None and not self.edit_matrices:
            raise MendJaxError("--edit-matrices names no matrix: give MLP matrix names (e.g. down_proj) or leave it "
                               "out (all of them)")
        if self.init_which not in ("best", "latest"):
            raise MendJaxError(f"--init-which must be 'best' or 'latest', not {self.init_which!r}")
        if self.c_loc_batched is not None and not self.c_loc_batched >= 0:
            raise MendJaxError(f"--c-loc-batched must be >= 0 (or left out: --c-loc for every problem), not "
                               f"{self.c_loc_batched}")
        if self.loc_answer_len < 0 or self.loc_answer_len > self.loc_len:
            raise MendJaxError(f"--loc-answer-len must be between 0 (: --target-len) and --loc-len ({self.loc_len}), "
                               f"not {self.loc_answer_len}")
        if self.c_flip < 0:
            raise MendJaxError(f"--c-flip must be >= 0 (0: off), not {self.c_flip}")
        if self.loc_text and (self.loc_text_rows < 1 or self.loc_text_passages < 1):
            raise MendJaxError(f"--loc-text needs --loc-text-rows >= 1 and --loc-text-passages >= 1, not "
                               f"{self.loc_text_rows} and {self.loc_text_passages}")
        if self.lr_decay_steps < 0:
            raise MendJaxError(f"--lr-decay-steps must be >= 0 (0: constant learning rates), not "
                               f"{self.lr_decay_steps}")
        if self.edit_steps < 1:
            raise MendJaxError(f"--edit-steps must be >= 1 (1: MEND's one editor step per edit), not {self.edit_steps}")
        if self.schedule:
            parse_schedule(self.schedule)
        if self.project_out < 0 or (self.project_out and self.projection_inputs < 1):
            raise MendJaxError(f"--project-out must be >= 0 (0: off) and --projection-inputs >= 1, not "
                               f"{self.project_out} and {self.projection_inputs}")
        if not self.whiten >= 0 or (self.whiten and self.projection_inputs < 1):
            raise MendJaxError(f"--whiten must be >= 0 (0: off) and --projection-inputs >= 1, not "
                               f"{self.whiten} and {self.projection_inputs}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        d = dict(d)
        d.setdefault("train_loc", "other")  # runs saved before the option existed trained this way
        d.setdefault("init_from", None)
        d.setdefault("init_which", "best")
        d.setdefault("init_optimizer", False)
        d.setdefault("mesh", None)
        d.setdefault("edits_per_problem", 1)
        d.setdefault("base_dtype", "float32")
        d.setdefault("schedule", None)
        d.setdefault("edit_loss_on", "equiv")
        d.setdefault("hidden_cache", False)
        d.setdefault("project_out", 0)
        d.setdefault("projection_inputs", 1024)
        d.setdefault("whiten", 0.0)
        d.setdefault("edit_lr_k_power", False)
        d.setdefault("edit_steps", 1)
        d.setdefault("loc_loss_on", "all")
        d.setdefault("c_flip", 0.0)
        d.setdefault("c_loc_batched", None)
        d.setdefault("factor_positions", "all")
        d.setdefault("loc_answer_len", 0)
        d.setdefault("lr_decay_steps", 0)
        d.setdefault("loc_text", None)
        d.setdefault("loc_text_rows", 1)
        d.setdefault("loc_text_passages", 4096)
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in fields}
        return cls(**d)

    def step_shapes(self) -> tuple[tuple[int, int], ...]:
        """The (problems, edits per problem) of the steps, in turn: ``schedule`` or one shape."""
        if not self.schedule:
            return ((self.edits_per_step, self.edits_per_problem),)
        return parse_schedule(self.schedule)

    def c_loc_for(self, edits_per_problem: int) -> float:
        """The locality weight of problems of ``edits_per_problem`` edits at once."""
        if edits_per_problem > 1 and self.c_loc_batched is not None:
            return self.c_loc_batched
        return self.c_loc

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2))


def parse_schedule(text: str) -> tuple[tuple[int, int], ...]:
    """``"8x1,1x10"`` -> ``((8, 1), (1, 10))``."""
    from mend_jax.errors import MendJaxError
    out = []
    for part in text.split(","):
        try:
            n, k = (int(x) for x in part.strip().lower().split("x"))
        except ValueError:
            n = k = 0
        if n < 1 or k < 1:
            raise MendJaxError(f"--schedule {text!r}: each entry is PROBLEMSxEDITS with both >= 1, e.g. 8x1,1x10")
        out.append((n, k))
    return tuple(out)
