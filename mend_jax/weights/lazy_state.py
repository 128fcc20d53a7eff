"""A transformers state dict whose tensors are read from safetensors only when (and as far as) they are needed.

``LazyStateDict(folder)`` maps each tensor name to a :class:`LazyTensor`: it knows its shape, and reads
only the slice it is indexed with (``safetensors``' ``get_slice``). The model families' ``from_hf_state`` only
index and transpose the tensors they are given, so the same conversion code builds a params tree of lazy leaves;
``load_model`` then fills each device's shard of a sharded parameter from exactly its slice of the file
(``sharding.place_from_callback``). A process never holds a whole sharded tensor in host memory, and on a multi-host
mesh each process reads only the shards of its own devices: what a checkpoint larger than one host's memory needs.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Iterator

import numpy as np

from mend_jax.errors import WeightFileError


def _normalise(index, ndim: int) -> tuple[slice, ...]:
    if not isinstance(index, tuple):
        index = (index,)
    if len(index) > ndim or any(not isinstance(i, slice) or i.step not in (None, 1) for i in index):
        raise TypeError(f"LazyTensor takes up to {ndim} contiguous slices, got {index!r}")
    return tuple(index) + (slice(None),) * (ndim - len(index))


class LazyTensor:
    """One tensor of a safetensors file (or its transpose), read on indexing: ``t[idx]`` -> numpy slice,
    ``np.asarray(t)`` -> the whole tensor."""

    def __init__(self, handle, name: str, transposed: bool = False):
        self._handle, self.name, self._transposed = handle, name, transposed
        self._slice = handle.get_slice(name)
        shape = tuple(self._slice.get_shape())
        self.shape = shape[::-1] if transposed else shape

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def T(self) -> "LazyTensor":  # noqa: N802 (numpy's name)
        if self.ndim != 2:
            raise TypeError(f"LazyTensor {self.name}: only 2-D tensors are transposed lazily, got {self.shape}")
        return LazyTensor(self._handle, self.name, not self._transposed)

    def __getitem__(self, index) -> np.ndarray:
        index = _normalise(index, self.ndim)
        try:
            if self._transposed:
                out = np.asarray(self._slice[index[::-1]]).T
            else:
                out = np.asarray(self._slice[index] if self.ndim else self._handle.get_tensor(self.name))
        except Exception as e:
            raise WeightFileError(f"cannot read tensor {self.name} ({type(e).__name__}: {e}); the file is truncated "
                                  f"or corrupt: delete it (or the cache folder) and load again") from e
        return out

    def __array__(self, dtype=None, copy=None):
        out = np.ascontiguousarray(self[()] if self.ndim == 0 else self[(slice(None),) * self.ndim])
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyTensor({self.name!r}, shape={self.shape}{', transposed' if self._transposed else ''})"


class LazyStateDict(Mapping):
    """``{tensor name: LazyTensor}`` over the safetensors files of a transformers folder; use as a context manager
    (the files stay open until it exits)."""

    def __init__(self, folder: Path):
        from safetensors import safe_open
        folder = Path(folder)
        index, single = folder / "model.safetensors.index.json", folder / "model.safetensors"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif single.is_file():
            files = ["model.safetensors"]
        else:
            raise WeightFileError(f"no model.safetensors or model.safetensors.index.json in {folder}; "
                                  f"a transformers model folder needs its safetensors weights")
        self._stack = contextlib.ExitStack()
        self._where: dict[str, object] = {}
        for fname in files:
            fpath = folder / fname
            if not fpath.is_file():
                self.close()
                raise WeightFileError(f"weight shard {fname} listed in the index is missing from {folder}")
            try:
                handle = self._stack.enter_context(safe_open(str(fpath), framework="numpy"))
            except Exception as e:
                self.close()
                raise WeightFileError(f"cannot read {fpath} ({type(e).__name__}: {e}); the file is truncated or "
                                      f"corrupt: delete it (or the cache folder) and load again") from e
            for k in handle.keys():
                self._where[k] = handle

    def __getitem__(self, name: str) -> LazyTensor:
        if name not in self._where:
            raise KeyError(name)
        return LazyTensor(self._where[name], name)

    def __contains__(self, name) -> bool:  # without opening the tensor (Mapping's default would)
        return name in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "LazyStateDict":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

