"""Hidden states of the frozen blocks, computed once per distinct training input instead of once per step.

The base model is frozen and an edit changes only the edited blocks, so the hidden state entering the lowest edited
block is a function of an input's tokens alone (right padding and a causal model: a real token never sees the
padding). In a meta-training step those frozen blocks (27 of SmolLM2's 30) run over the edit, rephrase and locality
inputs of every problem, although the same records come back epoch after epoch (zsRE is repeated 5 times in the
mix). :class:`FrozenHiddenCache` runs them once over every input the data can produce (:func:`training_inputs`) at
the start of a run, trimmed to each input's real length, and hands each step its hidden states
(:class:`FrozenHidden`), so the step runs only the edited blocks and the head (``training.step`` takes them through
``hidden=``).

The cache is filled in one fixed order (inputs sorted by length and tokens, fixed-size chunks), so every run and
every resumption of a run computes the same values. Against the step that recomputes the frozen blocks the result
differs only by float rounding (matrix products of other shapes; test ``test_step_on_cached_hidden_states_...``).
Memory: real tokens x hidden size x 4 bytes (zsRE + CounterFact train on SmolLM2, float32: about 1 GB).
One device only, like the row compaction: a mesh run recomputes the frozen blocks inside its sharded step.

A run keeps its cache in its folder (:meth:`FrozenHiddenCache.save` / :meth:`FrozenHiddenCache.load`, checked
against a digest of the base weights and the lowest edited block), so a resumed run reads it back in seconds instead
of spending the minutes of training budget it cost to build (about 17 for zsRE + CounterFact train on 2 cores).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mend_jax.data import EditRecord
from mend_jax.data.loaders import _training_loc_pair
from mend_jax.editing.batch import TokenBatch, tokenize_pair
from mend_jax.errors import InputTooLongError, InvalidEditError


@dataclasses.dataclass(frozen=True)
class FrozenHidden:
    """Hidden states entering the lowest edited block for the three inputs of a MetaBatch: [N, k, T, D] each."""
    edit: jax.Array
    equiv: jax.Array
    loc: jax.Array


jax.tree_util.register_dataclass(FrozenHidden, data_fields=["edit", "equiv", "loc"], meta_fields=[])


def _key(ids: np.ndarray) -> bytes:
    return np.asarray(ids, np.int32).tobytes()


def frozen_weights_digest(model, first_layer: int) -> str:
    """A digest of what the cached hidden states depend on: the architecture, the lowest edited block, and every
    base weight (each leaf's shape, dtype and a strided sample of its values; cheap on any model size)."""
    h = hashlib.sha256(json.dumps([model.config.to_hf(), first_layer], sort_keys=True, default=str).encode())
    for path, leaf in jax.tree_util.tree_leaves_with_path(model.params):
        a = np.asarray(jax.device_get(leaf)).reshape(-1)
        h.update(jax.tree_util.keystr(path).encode())
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(np.ascontiguousarray(a[:: max(1, a.size // 4096)]).tobytes())
    return h.hexdigest()


class FrozenHiddenCache:
    """Token sequence -> hidden state entering block ``first_layer`` of ``model`` (one row per token, in the
    model's activation dtype).

    ``add`` computes the sequences it does not hold yet, in chunks of ``chunk`` sequences padded to a multiple of
    ``multiple`` tokens (so a few compilations serve all lengths); ``batch_hidden`` / ``for_batch`` assemble the
    padded arrays a step takes. A sequence the cache was not given is computed on first use (and counted in
    ``misses``): correct, but the run's data should have been announced through :func:`training_inputs`."""

    def __init__(self, model, first_layer: int, chunk: int = 64, multiple: int = 8):
        self.model = model
        self.first_layer = first_layer
        self.chunk = chunk
        self.multiple = multiple
        self.dim = model.config.hidden_size
        self._index: dict[bytes, tuple[int, int]] = {}  # key -> (offset, length) in the flat store
        self._parts: list[np.ndarray] = []
        self._store = None  # [rows, D] in the model's activation dtype, allocated on the first add
        self._fill = 0
        self.misses = 0
        fam, cfg = model.family, model.config
        self._hidden = jax.jit(lambda params, ids, mask: fam.hidden_before(params, cfg, ids, mask, first_layer))

    def __len__(self) -> int:
        return len(self._index)

    @property
    def nbytes(self) -> int:
        return 0 if self._store is None else self._fill * self.dim * self._store.dtype.itemsize

    def add(self, sequences: Iterable[Sequence[int]], progress: bool = False) -> int:
        """Compute and keep the hidden states of the sequences not held yet; returns how many were added."""
        todo: dict[bytes, np.ndarray] = {}
        for s in sequences:
            a = np.asarray(s, np.int32)
            if a.ndim != 1 or a.size == 0:
                raise InvalidEditError("FrozenHiddenCache.add takes non-empty 1-D token sequences")
            k = _key(a)
            if k not in self._index:
                todo.setdefault(k, a)
        if not todo:
            return 0
        seqs = sorted(todo.values(), key=lambda a: (a.size, a.tobytes()))  # one fixed order: same values each run
        total = sum(a.size for a in seqs)
        from tqdm import tqdm
        chunks = range(0, len(seqs), self.chunk)
        for c in tqdm(chunks, disable=not progress, desc="frozen blocks, once per input", unit="chunk"):
            part = seqs[c:c + self.chunk]
            t = -(-part[-1].size // self.multiple) * self.multiple  # sorted by length: the last is the longest
            ids = np.zeros((self.chunk, t), np.int32)
            mask = np.zeros((self.chunk, t), np.int32)
            for i, a in enumerate(part):
                ids[i, : a.size], mask[i, : a.size] = a, 1
            h = np.asarray(jax.device_get(self._hidden(self.model.params, ids, mask)))
            self._grow(self._fill + total, h.dtype)
            total -= sum(a.size for a in part)
            for i, a in enumerate(part):
                self._store[self._fill: self._fill + a.size] = h[i, : a.size]
                self._index[_key(a)] = (self._fill, a.size)
                self._fill += a.size
        return len(seqs)

    # ------------------------------------------------------------------------------------------- on disk
    def save(self, folder: str | Path, digest: str) -> None:
        """Write the cache to ``folder`` (the hidden states as raw rows, the token sequences they belong to, and
        ``digest`` = :func:`frozen_weights_digest`); atomic per file, the metadata last."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        keys = list(self._index)
        seqs = [np.frombuffer(k, np.int32) for k in keys]
        meta = {"digest": digest, "first_layer": self.first_layer, "dim": self.dim, "rows": self._fill,
                "dtype": str(self._store.dtype) if self._store is not None else "float32", "sequences": len(keys)}
        arrays = {"tokens": np.concatenate(seqs) if seqs else np.zeros((0,), np.int32),
                  "lengths": np.asarray([a.size for a in seqs], np.int64),
                  "offsets": np.asarray([self._index[k][0] for k in keys], np.int64)}
        store = self._store[: self._fill] if self._store is not None else np.zeros((0, self.dim), np.float32)
        arrays["hidden"] = store.view(np.uint8)  # raw bytes: bfloat16 has no numpy file type of its own
        (folder / "meta.json").unlink(missing_ok=True)
        for name, a in arrays.items():
            tmp = folder / f"{name}.tmp.npy"
            np.save(tmp, a)
            tmp.rename(folder / f"{name}.npy")
        (folder / "meta.json").write_text(json.dumps(meta))

    def load(self, folder: str | Path, digest: str) -> bool:
        """Read a cache written by :meth:`save` if it belongs to these base weights and this first layer (else
        leave this cache as it is and return False). Sequences held already are kept."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError):
            return False
        if (meta.get("digest"), meta.get("first_layer"), meta.get("dim")) != (digest, self.first_layer, self.dim):
            return False
        dtype = jnp.dtype(meta["dtype"])
        hidden = np.load(folder / "hidden.npy").view(dtype).reshape(meta["rows"], self.dim)
        tokens, lengths, offsets = (np.load(folder / f"{n}.npy") for n in ("tokens", "lengths", "offsets"))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self._grow(self._fill + meta["rows"], dtype)
        base = self._fill
        self._store[base: base + meta["rows"]] = hidden
        for start, n, off in zip(starts, lengths, offsets):
            self._index.setdefault(_key(tokens[start: start + n]), (base + int(off), int(n)))
        self._fill += meta["rows"]
        return True

    def _grow(self, rows: int, dtype) -> None:
        if self._store is None:
            self._store = np.zeros((rows, self.dim), dtype)
        elif rows > self._store.shape[0]:
            new = np.zeros((max(rows, int(self._store.shape[0] * 1.5)), self.dim), self._store.dtype)
            new[: self._fill] = self._store[: self._fill]
            self._store = new

    def batch_hidden(self, batch: TokenBatch) -> np.ndarray:
        """[..., T, D] for a TokenBatch of any leading axes (zeros at padding)."""
        ids = np.asarray(batch.input_ids)
        mask = np.asarray(batch.attention_mask)
        flat_ids, flat_mask = ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, ids.shape[-1])
        lengths = flat_mask.sum(-1)
        missing = [flat_ids[r, :n] for r, n in enumerate(lengths) if _key(flat_ids[r, :n]) not in self._index]
        if missing:
            self.misses += self.add(missing)
            warnings.warn(f"FrozenHiddenCache: {len(missing)} inputs were not announced; computed on first use",
                          stacklevel=2)
        out = np.zeros(flat_ids.shape + (self.dim,), self._store.dtype)
        for r, n in enumerate(lengths):
            off, length = self._index[_key(flat_ids[r, :n])]
            out[r, :length] = self._store[off: off + length]
        return out.reshape(ids.shape + (self.dim,))

    def for_batch(self, meta) -> FrozenHidden:
        """The :class:`FrozenHidden` of a ``training.step.MetaBatch``."""
        return FrozenHidden(self.batch_hidden(meta.edit), self.batch_hidden(meta.equiv), self.batch_hidden(meta.loc))


def training_inputs(tokenizer, records: Sequence[EditRecord], train_loc: str,
                    own_loc_ok: frozenset[int] | None = None, max_tokens: int | None = None,
                    extra_pairs: Sequence[tuple[str, str]] = ()) -> list[list[int]]:
    """Every token sequence a training problem of ``records`` can hold (see ``batches.problem_for``): each record's
    edit prompt and each of its rephrases with the new target, its own locality pair, and, when a problem can borrow
    another record's locality pair (``train_loc`` other/mix, or a record without a fitting own pair), every record's
    lendable pair. Pairs that do not tokenise or are longer than ``max_tokens`` (the step's longest shape) are
    skipped: ``filter_records`` and ``own_loc_fits`` keep them out of every problem. ``extra_pairs``: further
    pairs a problem may hold (the text-locality passages)."""
    seen: set[int] = set()
    pairs: list[tuple[str, str]] = []
    borrow = train_loc != "own" or own_loc_ok is None or len(own_loc_ok) < len(records)
    for r in records:
        if id(r) in seen:
            continue
        seen.add(id(r))
        pairs += [(p, r.target) for p in (r.prompt, *(r.rephrases or ()))]
        if r.loc_prompt and r.loc_answer and train_loc != "other":
            pairs.append((r.loc_prompt, r.loc_answer))
        if borrow:
            pairs.append(_training_loc_pair(r))
    pairs += list(extra_pairs)
    out = []
    for p, t in dict.fromkeys(pairs):
        if not (p and t):
            continue
        try:
            a, b = tokenize_pair(tokenizer, p, t)
        except (InvalidEditError, InputTooLongError):
            continue
        if max_tokens is None or len(a) + len(b) <= max_tokens:
            out.append(a + b)
    return out
