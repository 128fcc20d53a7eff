"""Keeping edits away from unrelated inputs: project the editor's pseudo-inputs off the directions that unrelated
inputs occupy (in the spirit of AlphaEdit's null-space projection, Fang et al., ICLR 2025; not part of MEND).

An edit ``Delta W = -alpha * sum_r u~_r^T delta~_r`` changes a layer's output on an input ``x`` by
``-alpha * sum_r (x . u~_r) delta~_r``. The inputs of a transformer's MLP matrices share a few dominant directions
(SmolLM2-135M, blocks 27-29: the top 4 directions of the uncentred second moment hold 37-99.8% of the energy of
unrelated questions' inputs), so any component of ``u~`` along them moves every input. With ``U`` [in, r] the top-r
eigenvectors of ``E[x x^T]`` over unrelated inputs, :func:`project_inputs` replaces ``u~`` by
``u~ - (u~ U) U^T``: the edit then reads only the directions in which inputs differ. It is an edit transformation
composed after any editor (``Editor -> Editor``), so it applies to a trained MEND editor as is; because it also
removes part of the edit prompt's own signal, the learned step sizes are usually scaled up with it
(``edit_scale`` in :func:`scaled_step_sizes`; tuned on dev records like the fine-tuning baseline's learning rate).

The second moments are computed with a forward pass only (no gradients), on inputs from the *training* split.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mend_jax.editing.batch import encode_examples
from mend_jax.editing.editor import Editor
from mend_jax.errors import MendJaxError
from mend_jax.models import LinearHooks, family_for


@functools.partial(jax.jit, static_argnames=("cfg", "layers"))
def _moment_sums(params, cfg, input_ids, attention_mask, layers: tuple[str, ...]):
    """Per layer ``sum over real tokens of x x^T`` (f32) from one forward pass that records the layers' inputs."""
    hooks = LinearHooks(capture=frozenset(layers))
    family_for(cfg).forward(params, cfg, input_ids, attention_mask, hooks=hooks,
                            logits_at=jnp.zeros((input_ids.shape[0], 1), jnp.int32))
    m = attention_mask.astype(jnp.float32).reshape(-1, 1)
    out = {}
    for n in layers:
        x = hooks.captured[n].astype(jnp.float32)
        x = x.reshape(-1, x.shape[-1]) * m
        out[n] = x.T @ x
    return out


def input_second_moments(model, layers: Sequence[str], prompts: Sequence[str], answers: Sequence[str], *,
                         batch_size: int = 32) -> dict[str, np.ndarray]:
    """``E[x x^T]`` [in, in] of every layer's inputs over the real tokens of the ``prompt + " " + answer`` texts
    (float64 on the host). Inputs are batched in order of length and each batch is padded to its own power-of-two
    bucket (a few compilations instead of padding every input to the longest)."""
    from mend_jax.editing.batch import tokenize_pair
    if not prompts or len(prompts) != len(answers):
        raise MendJaxError(f"need one answer per unrelated prompt and at least one of them "
                           f"({len(prompts)} prompts, {len(answers)} answers)")
    cfg = model.config
    layers = tuple(layers)
    lengths = [sum(map(len, tokenize_pair(model.tokenizer, p, a))) for p, a in zip(prompts, answers)]
    order = np.argsort(lengths, kind="stable")
    sums = {n: 0.0 for n in layers}
    count = 0.0
    for i in range(0, len(order), batch_size):
        idx = list(order[i:i + batch_size])
        pad = batch_size - len(idx)  # the same batch size every time: pad with copies, masked out below
        idx = idx + idx[:1] * pad
        b = encode_examples(model.tokenizer, [prompts[j] for j in idx], [answers[j] for j in idx],
                            max_length=cfg.max_position_embeddings)  # T: the batch's own bucket
        mask = np.asarray(b.attention_mask).copy()
        if pad:
            mask[batch_size - pad:] = 0
        s = _moment_sums(model.params, cfg, jnp.asarray(b.input_ids), jnp.asarray(mask), layers)
        for n in layers:
            sums[n] = sums[n] + np.asarray(s[n], np.float64)
        count += float(mask.sum())
    return {n: s / count for n, s in sums.items()}


def projection_bases(moments: Mapping[str, np.ndarray], rank: int) -> dict[str, jax.Array]:
    """Per layer the top-``rank`` eigenvectors [in, rank] (float32) of its input second moment."""
    if rank < 1:
        raise MendJaxError(f"the projection rank must be >= 1, not {rank}")
    out = {}
    for n, c in moments.items():
        if rank > c.shape[0]:
            raise MendJaxError(f"projection rank {rank} exceeds the input size {c.shape[0]} of {n}")
        _, vecs = np.linalg.eigh(c)
        out[n] = jnp.asarray(vecs[:, ::-1][:, :rank].copy(), jnp.float32)
    return out


def _check_layers(editor: Editor, maps: Mapping[str, jax.Array], what: str) -> None:
    """Every map names a layer the editor edits and has one row per input feature of it."""
    unknown = [n for n in maps if n not in editor.spec.layers]
    if unknown:
        raise MendJaxError(f"{what} for layers the editor does not edit: {unknown}")
    for i, n in enumerate(editor.spec.layers):
        if n in maps and maps[n].shape[0] != editor.spec.shapes[i][0]:
            raise MendJaxError(f"{what} of {n} has {maps[n].shape[0]} rows; the layer's input size is "
                               f"{editor.spec.shapes[i][0]}")


def map_pseudo_inputs(editor: Editor, fns: Mapping[str, Callable[[jax.Array], jax.Array]], label: str) -> Editor:
    """``editor`` followed by ``u~ -> fns[name](u~)`` on every layer named in ``fns`` (rows [R, in] -> [R, in]);
    ``delta~``, the editor's parameters, state and step sizes are unchanged. The edit transformations of this
    module are built on it; it is also the hook for a user's own map of the pseudo-inputs."""
    def apply(nets, state, u, delta, layer):
        ut, dt = editor.apply(nets, state, u, delta, layer)
        fn = fns.get(editor.spec.layers[layer])
        return (ut if fn is None else fn(ut)), dt

    def apply_layers(nets, state, u_by, d_by):
        out = editor.apply_all(nets, state, u_by, d_by)
        return {n: ((ut if n not in fns else fns[n](ut)), dt) for n, (ut, dt) in out.items()}

    return dataclasses.replace(editor, apply=apply, apply_layers=apply_layers, name=f"{editor.name}+{label}")


def project_inputs(editor: Editor, bases: Mapping[str, jax.Array]) -> Editor:
    """``editor`` followed by ``u~ -> u~ - (u~ U) U^T`` on every layer with a basis ``U`` [in, r] in ``bases``
    (orthonormal columns). ``delta~``, the editor's parameters, state and step sizes are unchanged."""
    bases = {n: jnp.asarray(u, jnp.float32) for n, u in bases.items()}
    _check_layers(editor, bases, "projection bases")
    fns = {n: (lambda ut, b=b: ut - (ut @ b) @ b.T) for n, b in bases.items()}
    return map_pseudo_inputs(editor, fns, "projection")


def whitening_maps(moments: Mapping[str, np.ndarray], strength: float) -> dict[str, jax.Array]:
    """Per layer the symmetric map ``P = V diag(g) V^T`` [in, in] (float32) of the pseudo-inputs, from the
    eigendecomposition ``V diag(lambda) V^T`` of the layer's unrelated-input second moment ``C``:

        g_i = (w + 1) m / (w lambda_i + m),   w = ``strength``, m = the median eigenvalue.

    ``w = 0`` is the identity; as ``w`` grows, ``P`` tends to ``m C^{-1}`` (ROME's choice of update direction,
    Meng et al. 2022: for a given change on the edit's own input, ``C^{-1} u`` is the direction that moves
    unrelated inputs least in mean square). In between, directions that unrelated inputs use more than the median
    one are damped and those they use less are amplified, by at most ``w + 1``. Unlike :func:`projection_bases`
    (a hard cut of the top ``r`` directions), every direction is weighed by how much unrelated inputs use it."""
    if not strength >= 0:
        raise MendJaxError(f"the whitening strength must be >= 0 (0: off), not {strength}")
    out = {}
    for n, c in moments.items():
        lam, vecs = np.linalg.eigh(np.asarray(c, np.float64))
        lam = np.clip(lam, 0.0, None)
        m = float(np.median(lam))
        if not m > 0:
            raise MendJaxError(f"the unrelated inputs of {n} span fewer than half of its {c.shape[0]} input "
                               f"directions (median eigenvalue 0): measure the moments on more inputs")
        g = (strength + 1.0) * m / (strength * lam + m)
        out[n] = jnp.asarray((vecs * g) @ vecs.T, jnp.float32)
    return out


def whiten_inputs(editor: Editor, maps: Mapping[str, jax.Array]) -> Editor:
    """``editor`` followed by ``u~ -> u~ P`` on every layer with a map ``P`` [in, in] in ``maps``
    (:func:`whitening_maps`). Composes with :func:`project_inputs` in either order when both come from the same
    moments (``P`` and the projection share eigenvectors)."""
    maps = {n: jnp.asarray(p, jnp.float32) for n, p in maps.items()}
    _check_layers(editor, maps, "whitening maps")
    return map_pseudo_inputs(editor, {n: (lambda ut, p=p: ut @ p) for n, p in maps.items()}, "whitening")


def scaled_step_sizes(params: Mapping, edit_scale: float = 1.0, *, layer_scales: Mapping[str, float] | None = None,
                      layers: Sequence[str] = ()) -> dict:
    """The editor parameters with every learned step size multiplied by ``edit_scale``, and those of the layers
    matching a pattern of ``layer_scales`` (``fnmatch`` patterns over ``layers``, the editor's ``spec.layers``, e.g.
    ``{"model.layers.29.*": 0}``) multiplied by its factor as well: 0 leaves that layer unedited (its factors are
    still computed, the backward pass stops at the lowest edited layer either way)."""
    import fnmatch
    if not edit_scale > 0:
        raise MendJaxError(f"edit_scale must be > 0, not {edit_scale}")
    factors = np.ones(len(params["edit_lrs"]), np.float32)
    if layer_scales:
        if len(layers) != len(factors):
            raise MendJaxError(f"layer_scales needs the editor's {len(factors)} edited layers (layers=editor.spec."
                               f"layers), got {len(layers)}")
        for pattern, f in layer_scales.items():
            hit = [i for i, n in enumerate(layers) if fnmatch.fnmatchcase(n, pattern)]
            if not hit:
                raise MendJaxError(f"layer scale pattern {pattern!r} matches none of the edited layers "
                                   f"{list(layers)}")
            if not (np.isfinite(f) and f >= 0):
                raise MendJaxError(f"layer scale for {pattern!r} must be finite and >= 0, not {f}")
            factors[hit] *= f
        if not factors.any():
            raise MendJaxError(f"layer_scales {dict(layer_scales)} leave no layer edited")
    return {**params, "edit_lrs": params["edit_lrs"] * edit_scale * jnp.asarray(factors)}


# ------------------------------------------------------------------------------------ from an editor's training data
def training_unrelated_inputs(train_config, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` unrelated (locality) prompts and answers of the records an editor was *trained* on (its
    ``TrainConfig``'s data kinds and train files; an equal share from each file), sampled with ``seed``."""
    from mend_jax.data import load_records
    files = list(zip(train_config.data, train_config.train_files))
    prompts, answers = [], []
    rng = np.random.default_rng(seed)
    for j, (kind, path) in enumerate(files):
        recs = list(load_records(kind, path, records=train_config.train_records))
        share = n // len(files) + (1 if j < n % len(files) else 0)
        for i in rng.permutation(len(recs))[:share]:
            prompts.append(recs[i].loc_prompt)
            answers.append(recs[i].loc_answer)
    return prompts, answers


def _measure_moments(model, editor: Editor, prompts, answers, progress: bool) -> dict[str, np.ndarray]:
    if progress:
        print(f"measuring the input directions of {len(prompts)} unrelated training inputs ...", flush=True)
    return input_second_moments(model, editor.spec.layers, prompts, answers)


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    if jax.process_index() == 0:  # every process measured the same arrays; one writes them
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **{n: np.asarray(b) for n, b in arrays.items()})
        tmp.rename(path)


def editor_input_moments(editor_dir: str | Path, model, editor: Editor, train_config, n_inputs: int = 1024,
                         seed: int = 0, progress: bool = True) -> dict[str, np.ndarray]:
    """The unrelated-input second moments of a trained editor's layers, from ``n_inputs`` unrelated inputs of its
    training data, cached in ``<editor_dir>/projections/`` (keyed by the inputs, the layers and the base model)."""
    prompts, answers = training_unrelated_inputs(train_config, n_inputs, seed)
    key = hashlib.sha256(json.dumps([prompts, answers, list(editor.spec.layers), model.name]).encode()).hexdigest()[:16]
    path = Path(editor_dir) / "projections" / f"moments_{key}.npz"
    if path.is_file():
        data = np.load(path)
        return {n: data[n] for n in editor.spec.layers}
    moments = _measure_moments(model, editor, prompts, answers, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_npz(path, moments)
    return moments


def transformed_editor(editor_dir: str | Path, model, editor: Editor, train_config, *, project_out: int = 0,
                       whiten: float = 0.0, n_inputs: int = 1024, seed: int = 0, progress: bool = True) -> Editor:
    """A trained editor composed, at test time, with the projection off the top ``project_out`` directions and the
    whitening of strength ``whiten`` (both from the same cached moments; 0: that one off)."""
    if not (project_out or whiten):
        return editor
    moments = editor_input_moments(editor_dir, model, editor, train_config, n_inputs, seed, progress)
    if project_out:
        editor = project_inputs(editor, projection_bases(moments, project_out))
    if whiten:
        editor = whiten_inputs(editor, whitening_maps(moments, whiten))
    return editor


# ------------------------------------------------------------------------- a projection trained with the editor
BASES_FILE = "projection_bases.npz"
WHITEN_FILE = "whitening_maps.npz"


def training_projection(run_dir: str | Path, model, editor: Editor, train_config, progress: bool = True) -> Editor:
    """``mend-jax train --project-out R`` / ``--whiten W``: the editor composed with the projection and the
    whitening it is trained (and later edits) with. Both come from one measurement of the second moments, on
    ``train_config.projection_inputs`` unrelated inputs of the training records (seeded by the run's seed), written
    to ``<run_dir>/projection_bases.npz`` and ``<run_dir>/whitening_maps.npz``; a resumed run reads them back, so
    its editor sees exactly the transformation it was trained with."""
    run_dir = Path(run_dir)
    need = ([BASES_FILE] if train_config.project_out else []) + ([WHITEN_FILE] if train_config.whiten else [])
    if any(not (run_dir / f).is_file() for f in need):
        prompts, answers = training_unrelated_inputs(train_config, train_config.projection_inputs,
                                                     train_config.seed)
        moments = _measure_moments(model, editor, prompts, answers, progress)
        if train_config.project_out and not (run_dir / BASES_FILE).is_file():
            _write_npz(run_dir / BASES_FILE, projection_bases(moments, train_config.project_out))
        if train_config.whiten and not (run_dir / WHITEN_FILE).is_file():
            _write_npz(run_dir / WHITEN_FILE, whitening_maps(moments, train_config.whiten))
    return trained_projection(run_dir, editor, train_config)


def _read_layer_arrays(path: Path, editor: Editor, flag: str) -> dict[str, jax.Array]:
    if not path.is_file():
        raise MendJaxError(f"{path.parent} holds an editor trained with {flag} but not its {path.name}; copy that "
                           f"file from the training run's --out folder")
    data = np.load(path)
    missing = [n for n in editor.spec.layers if n not in data.files]
    if missing:
        raise MendJaxError(f"{path} has no array for {missing}: it belongs to another editor")
    return {n: jnp.asarray(data[n], jnp.float32) for n in editor.spec.layers}


def trained_projection(editor_dir: str | Path, editor: Editor, train_config) -> Editor:
    """The editor of a folder as it was trained: composed with the projection in its ``projection_bases.npz``
    when its training configuration has ``project_out > 0`` and then with the whitening in its
    ``whitening_maps.npz`` when it has ``whiten > 0``; else unchanged."""
    editor_dir = Path(editor_dir)
    if getattr(train_config, "project_out", 0):
        path = editor_dir / BASES_FILE
        bases = _read_layer_arrays(path, editor, f"--project-out {train_config.project_out}")
        ranks = {b.shape[1] for b in bases.values()}
        if ranks != {train_config.project_out}:
            raise MendJaxError(f"{path} holds bases of rank {sorted(ranks)}, the editor was trained with "
                               f"--project-out {train_config.project_out}: it belongs to another run")
        editor = project_inputs(editor, bases)
    if getattr(train_config, "whiten", 0.0):
        editor = whiten_inputs(editor, _read_layer_arrays(editor_dir / WHITEN_FILE, editor,
                                                          f"--whiten {train_config.whiten:g}"))
    return editor
