"""Meta-examples from edit records, on fixed shapes, in an order fully determined by ``(seed, step)``.

Each problem is (edit: prompt -> new target, equivalence: a rephrase -> new target, locality: an unrelated prompt
-> its true answer). During training the locality example is another training record's question, as in MEND's
original zsRE setup; in validation/evaluation it is the record's own held-out locality prompt (NQ for zsRE).
Rephrases and locality partners are drawn from a generator seeded by ``(seed, example index)``, so a resumed run
sees exactly the examples an uninterrupted run would.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Sequence

import numpy as np

from mend_jax.data import EditRecord, sample_training_loc
from mend_jax.editing.batch import encode_examples, stack_batches, tokenize_pair
from mend_jax.errors import InputTooLongError, InvalidEditError
from mend_jax.training.step import MetaBatch


@dataclasses.dataclass(frozen=True)
class Shapes:
    seq_len: int = 32
    target_len: int = 8
    loc_len: int = 32
    # the longest locality answer (tokens) a training/validation locality input may have; 0: target_len. Long
    # answers are where whole-answer locality is lost (TRAINING_NOTES.md, session 20)
    loc_answer_len: int = 0

    @property
    def loc_target_len(self) -> int:
        return self.loc_answer_len or self.target_len


@dataclasses.dataclass(frozen=True)
class Problem:
    prompt: str
    target: str
    equiv_prompt: str
    loc_prompt: str
    loc_answer: str


TRAIN_LOC_MODES = ("other", "own", "mix")


def problem_for(records: Sequence[EditRecord], i: int, rng: np.random.Generator, train: bool,
                train_loc: str = "other", own_loc_ok: frozenset[int] | None = None) -> Problem:
    """The edit problem of record ``i``. Training locality (``train_loc``):

    - ``other``: another training record's question (MEND's original zsRE training);
    - ``own``: the record's own unrelated prompt (NQ for zsRE, a neighbourhood prompt for CounterFact) when it fits
      the shapes (``own_loc_ok``), else ``other``;
    - ``mix``: ``own`` or ``other`` with probability 1/2 each.
    Evaluation always uses the record's own locality prompt."""
    r = records[i]
    equiv = r.rephrase(rng)
    if not train:
        return Problem(r.prompt, r.target, equiv, r.loc_prompt, r.loc_answer)
    if train_loc not in TRAIN_LOC_MODES:
        raise ValueError(f"train_loc must be one of {TRAIN_LOC_MODES}, not {train_loc!r}")
    use_own = train_loc == "own" or (train_loc == "mix" and rng.random() < 0.5)
    if use_own and (own_loc_ok is None or i in own_loc_ok) and r.loc_prompt and r.loc_answer:
        return Problem(r.prompt, r.target, equiv, r.loc_prompt, r.loc_answer)
    loc_prompt, loc_answer = sample_training_loc(records, i, rng)
    return Problem(r.prompt, r.target, equiv, loc_prompt, loc_answer)


def own_loc_fits(tokenizer, records: Sequence[EditRecord], shapes: Shapes) -> frozenset[int]:
    """Positions of the records whose own locality example fits the shapes."""
    return frozenset(i for i, r in enumerate(records)
                     if r.loc_prompt and r.loc_answer
                     and fits(tokenizer, Problem(r.prompt, r.target, r.prompt, r.loc_prompt, r.loc_answer), shapes))


def loc_fits(n_question: int, n_answer: int, shapes: Shapes) -> bool:
    """Whether a locality input of these token counts fits the shapes (training and validation keep only those)."""
    return n_question + n_answer <= shapes.loc_len and n_answer <= shapes.loc_target_len


def fits(tokenizer, p: Problem, shapes: Shapes) -> bool:
    try:
        a, t = tokenize_pair(tokenizer, p.prompt, p.target)
        b, _ = tokenize_pair(tokenizer, p.equiv_prompt, p.target)
        c, lt = tokenize_pair(tokenizer, p.loc_prompt, p.loc_answer)
    except (InvalidEditError, InputTooLongError):
        return False
    return (len(a) + len(t) <= shapes.seq_len and len(b) + len(t) <= shapes.seq_len and len(t) <= shapes.target_len
            and loc_fits(len(c), len(lt), shapes))


def filter_records(tokenizer, records: Sequence[EditRecord], shapes: Shapes, train: bool) -> list[EditRecord]:
    """Records whose edit and every rephrase fit the fixed shapes, and whose locality example fits too: for
    ``train``, the (question, true answer) pair other problems borrow from this record (see
    ``sample_training_loc``); otherwise the record's own locality prompt. Others are dropped, counted."""
    from mend_jax.data.loaders import _training_loc_pair
    kept = []
    for r in records:
        loc = _training_loc_pair(r) if train else (r.loc_prompt, r.loc_answer)
        ok = all(fits(tokenizer, Problem(r.prompt, r.target, e, loc[0], loc[1]), shapes)
                 for e in (r.rephrases or (r.prompt,)))
        if ok:
            kept.append(r)
    if len(kept) < len(records):
        warnings.warn(f"{len(records) - len(kept)} of {len(records)} records do not fit the shapes {shapes} "
                      f"and are left out", stacklevel=2)
    return kept


def encode_problems(tokenizer, problems: Sequence[Problem], shapes: Shapes, max_length: int) -> MetaBatch:
    """N problems of one edit each -> MetaBatch with fields [N, 1, ...]."""
    return encode_problem_groups(tokenizer, [[p] for p in problems], shapes, max_length)


def encode_problem_groups(tokenizer, groups: Sequence[Sequence[Problem]], shapes: Shapes,
                          max_length: int, extra_loc: Sequence[Sequence[tuple[str, str]]] | None = None) -> MetaBatch:
    """N problems of k edits each (applied at once: their factors are summed into one update) -> MetaBatch with
    fields [N, k, ...]; the edit loss averages over the k rephrases, the locality KL over the k locality inputs.
    ``extra_loc``: per problem, E more locality pairs (e.g. text passages) after its k own: ``loc`` is then
    [N, k + E, ...] and the KL is over all of them."""
    def one(prompts, targets, seq, target_len=shapes.target_len):
        return encode_examples(tokenizer, prompts, targets, max_length=max_length, seq_len=seq,
                               target_len=target_len)
    edit = stack_batches([one([p.prompt for p in g], [p.target for p in g], shapes.seq_len) for g in groups])
    equiv = stack_batches([one([p.equiv_prompt for p in g], [p.target for p in g], shapes.seq_len) for g in groups])
    extra = extra_loc or [()] * len(groups)
    if len(extra) != len(groups):
        raise ValueError(f"extra_loc has {len(extra)} entries for {len(groups)} problems")
    loc = stack_batches([one([p.loc_prompt for p in g] + [q for q, _ in x],
                             [p.loc_answer for p in g] + [a for _, a in x], shapes.loc_len,
                             shapes.loc_target_len) for g, x in zip(groups, extra)])
    return MetaBatch(edit, equiv, loc)


class DataOrder:
    """Example ``g`` of the run is record ``perm_epoch[g % n]`` with ``perm_epoch`` a permutation seeded by
    ``(seed, epoch)``; its generator is seeded by ``(seed, g)``."""

    def __init__(self, n_records: int, seed: int):
        if n_records < 2:
            raise InvalidEditError("training needs at least 2 records")
        self.n = n_records
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    def record(self, g: int) -> int:
        epoch = g // self.n
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, 7, epoch]).permutation(self.n)}
        return int(self._perms[epoch][g % self.n])

    def rng(self, g: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 11, g])

    def text_rng(self, g: int) -> np.random.Generator:
        """The generator of the text-locality passages of the problem whose first example is ``g`` (a stream of its
        own: the problem's rephrase and locality draws do not change when passages are added)."""
        return np.random.default_rng([self.seed, 17, g])


def fitting_passages(tokenizer, passages: Sequence[tuple[str, str]], shapes: Shapes) -> list[tuple[str, str]]:
    """The text-locality passages that fit the locality shapes as a (prompt, answer) pair (others are dropped)."""
    out = []
    for q, a in passages:
        try:
            tq, ta = tokenize_pair(tokenizer, q, a)
        except (InvalidEditError, InputTooLongError):
            continue
        if loc_fits(len(tq), len(ta), shapes):
            out.append((q, a))
    return out


def step_layout(step_shapes: Sequence[tuple[int, int]], step: int) -> tuple[int, int, int]:
    """``(problems, edits per problem, first example)`` of ``step`` when steps take the shapes in turn: step ``s``
    uses ``step_shapes[s % len]`` and the examples that follow those of every earlier step."""
    per_cycle = sum(n * k for n, k in step_shapes)
    cycle, pos = divmod(step, len(step_shapes))
    n, k = step_shapes[pos]
    return n, k, cycle * per_cycle + sum(a * b for a, b in step_shapes[:pos])


def row_budget(tokenizer, records: Sequence[EditRecord], n_examples: int, shapes: Shapes,
               sigmas: float = 4.0, multiple: int = 16) -> int:
    """The static number of editor rows for steps of ``n_examples`` edit examples (``StepHParams.rows``): their
    expected factor rows plus ``sigmas`` standard deviations (an edit example of record ``r`` always has
    ``len(prompt + target) - 1`` rows), rounded up to ``multiple``, at most every position. A step whose batch has
    more (:func:`mend_jax.editing.batch.factor_rows`) runs the full step instead, so the bound only decides speed,
    never the result."""
    seen: dict[int, int | None] = {}  # a record repeated in the mix is tokenised once
    rows = []
    for r in records:
        if id(r) not in seen:
            try:
                p, t = tokenize_pair(tokenizer, r.prompt, r.target)
                seen[id(r)] = min(len(p) + len(t), shapes.seq_len) - 1
            except (InvalidEditError, InputTooLongError):
                seen[id(r)] = None
        if seen[id(r)] is not None:
            rows.append(seen[id(r)])
    full = n_examples * shapes.seq_len
    if not rows:
        return full
    c = np.asarray(rows, np.float64)
    need = n_examples * c.mean() + sigmas * c.std() * np.sqrt(n_examples)
    return int(min(full, multiple * np.ceil(need / multiple)))


def training_batch(tokenizer, records, order: DataOrder, step: int, n: int, shapes: Shapes,
                   max_length: int, train_loc: str = "other", own_loc_ok: frozenset[int] | None = None,
                   problems: slice | None = None, edits_per_problem: int = 1, start: int | None = None,
                   loc_text: Sequence[tuple[str, str]] = (), loc_text_rows: int = 0) -> MetaBatch:
    """The ``n`` problems of ``step`` (or only those in ``problems``, a slice of them: one process's share), each
    of ``edits_per_problem`` edits applied at once (MEND's batched editing). Example ``g`` of the run is the
    ``g``-th of the data order, so one edit per problem gives the same examples whatever the slicing. ``start``:
    the step's first example (default ``step * n * edits_per_problem``; see :func:`step_layout` for mixed shapes).
    ``loc_text``/``loc_text_rows``: each problem also gets that many passages (drawn with replacement by
    :meth:`DataOrder.text_rng` of its first example) as further locality inputs."""
    sl = problems or slice(0, n)
    k = edits_per_problem
    start = step * n * k if start is None else start
    groups = [[problem_for(records, order.record(g), order.rng(g), train=True, train_loc=train_loc,
                           own_loc_ok=own_loc_ok) for g in range(start + j * k, start + (j + 1) * k)]
              for j in range(sl.start, sl.stop)]
    extra = None
    if loc_text_rows:
        if not loc_text:
            raise InvalidEditError("loc_text_rows > 0 needs locality passages (loc_text)")
        extra = [[loc_text[i] for i in order.text_rng(start + j * k).integers(0, len(loc_text), loc_text_rows)]
                 for j in range(sl.start, sl.stop)]
    return encode_problem_groups(tokenizer, groups, shapes, max_length, extra)


def validation_batches(tokenizer, records, n: int, shapes: Shapes, max_length: int, seed: int,
                       edits_per_problem: int = 1):
    """Fixed validation problems (the same every time) of ``edits_per_problem`` consecutive records each, in
    batches of ``n`` problems (the last one padded by repetition, with weight 0)."""
    k = edits_per_problem
    problems = [problem_for(records, i, np.random.default_rng([seed, 13, i]), train=False)
                for i in range(len(records) - len(records) % k)]
    groups = [problems[i:i + k] for i in range(0, len(problems), k)]
    if not groups:
        raise InvalidEditError(f"validation needs at least {k} dev records (edits per problem)")
    out = []
    for s in range(0, len(groups), n):
        chunk = groups[s:s + n]
        weight = np.zeros(n, np.float32)
        weight[: len(chunk)] = 1
        chunk = chunk + [chunk[-1]] * (n - len(chunk))
        out.append((encode_problem_groups(tokenizer, chunk, shapes, max_length), weight))
    return out
