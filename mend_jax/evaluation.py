"""Evaluating edits: MEND, the unedited model and a fine-tuning baseline, measured in the same run.

For each group of ``k`` records (``k`` edits applied at once, undone before the next group):
- **edit success (exact match)**: every target token is the argmax under teacher forcing, on the edit prompt
  (reliability) and on the rephrase (generalization); **token-level** versions average the fraction of target
  tokens that are the argmax (EasyEdit's numbers);
- **locality**: on the record's unrelated prompt + its answer, the fraction of answer tokens whose argmax is
  unchanged by the edit (per token) and the fraction of answers with every token unchanged (whole answers);
- **accuracy drawdown** (the paper's): accuracy on the locality answers before minus after the edit.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mend_jax.editing.batch import TokenBatch, edit_row_bucket, encode_examples
from mend_jax.editing.edit import iterated_mend_edits
from mend_jax.editing.editor import Editor, stats_initialised
from mend_jax.editing.losses import masked_nll, token_accuracy
from mend_jax.errors import MendJaxError, unknown_layers
from mend_jax.models import LinearHooks, family_for, get_module, layer_index, replace_module


@dataclasses.dataclass(frozen=True)
class FineTuneConfig:
    lr: float = 3e-4
    steps: int = 5


def _encode(tok, prompts, targets, max_len):
    b = encode_examples(tok, prompts, targets, max_length=max_len, min_seq=16, min_target=4)
    return jax.tree.map(jnp.asarray, b)


@functools.partial(jax.jit, static_argnames=("cfg", "first"))
def hidden_states(params, cfg, batch: TokenBatch, first: int):
    return family_for(cfg).hidden_before(params, cfg, batch.input_ids, batch.attention_mask, first)


@functools.partial(jax.jit, static_argnames=("cfg", "first"))
def score_targets(params, cfg, batch: TokenBatch, hidden, edits, first: int):
    """argmax ids [B,K] and (token acc, exact) vs targets, from a forward that resumes at block ``first``."""
    logits = family_for(cfg).forward(params, cfg, batch.input_ids, batch.attention_mask,
                                     hooks=LinearHooks(edits=edits), logits_at=batch.target_pos,
                                     first_layer=first, hidden=hidden)
    tok, exact = token_accuracy(logits, batch.target_ids, batch.target_mask)
    return jnp.argmax(logits, -1), tok, exact


@functools.partial(jax.jit, static_argnames=("cfg", "layers", "steps", "lr"))
def finetune(base_params, cfg, batch: TokenBatch, layers: tuple[str, ...], lr: float, steps: int):
    """Baseline: ``steps`` Adam steps on the edited matrices (only) minimising the target NLL of the edit batch.
    Returns the weight changes as dense ``[in, out]`` deltas per layer."""
    fam = family_for(cfg)
    kernels = {n: get_module(base_params, n)["kernel"].astype(jnp.float32) for n in layers}
    first = min(layer_index(n) for n in layers)
    hidden = fam.hidden_before(base_params, cfg, batch.input_ids, batch.attention_mask, first)

    def loss(ks):
        p = base_params
        for n in layers:
            p = replace_module(p, n, {**get_module(p, n), "kernel": ks[n]})
        logits = fam.forward(p, cfg, batch.input_ids, batch.attention_mask, logits_at=batch.target_pos,
                             first_layer=first, hidden=hidden)
        return masked_nll(logits, batch.target_ids, batch.target_mask)

    tx = optax.adam(lr)
    state = tx.init(kernels)

    def body(carry, _):
        ks, st = carry
        g = jax.grad(loss)(ks)
        upd, st = tx.update(g, st, ks)
        return (optax.apply_updates(ks, upd), st), None

    (new, _), _ = jax.lax.scan(body, (kernels, state), None, length=steps)
    return {n: new[n] - kernels[n] for n in layers}


def _dense_as_params(base_params, deltas):
    out = base_params
    for n, d in deltas.items():
        mod = get_module(out, n)
        out = replace_module(out, n, {**mod, "kernel": (mod["kernel"].astype(jnp.float32) + d).astype(mod["kernel"].dtype)})
    return out


def evaluate(model, records: Sequence, *, editor: Editor | None = None, eparams=None, stats=None,
             edits_at_once: int = 1, finetune_cfg: FineTuneConfig | None = None, progress: bool = True,
             seed: int = 0, per_record: bool = False, edit_steps: int = 1,
             edit_until_margin: float | None = None, edit_max_rank: int | None = None,
             layers: Sequence[str] | None = None, edit_min_steps: int = 1) -> dict:
    """Evaluate on ``records`` (``EditRecord``); returns a JSON-able dict with per-method aggregate metrics, and
    with ``per_record`` also every record's values (``out["per_record"]``: the records' ``index`` and, per method,
    one list per metric in the same order) for looking at which edits fail. ``edit_steps``: the editor applied
    that many times per edit group (:func:`mend_jax.editing.edit.iterated_mend_edits`; 1 = MEND), at most, with
    ``edit_until_margin``: the further steps only for the edits that do not hold yet on their own prompt by that
    many logits (``iterated_mend_edits(until_margin=...)``) after the first ``edit_min_steps`` steps, which every
    edit takes (``iterated_mend_edits(min_steps=...)``); ``edit_max_rank``: each layer's edit cut to its best
    approximation of that rank after every step (``iterated_mend_edits(max_rank=...)``); ``layers``: the matrices
    the fine-tuning baseline edits where no editor is given (default: the family's, MEND's last three blocks; with
    an editor its own layers, and any other ``layers`` is an error)."""
    from tqdm import tqdm
    if editor is not None and editor.norm and not stats_initialised(stats):
        raise MendJaxError("the editor's normalisation statistics are not initialised (no training edit was seen): "
                           "evaluate a trained editor checkpoint")
    cfg = model.config
    tok = model.tokenizer
    max_len = cfg.max_position_embeddings
    if editor is not None and layers is not None and tuple(layers) != tuple(editor.spec.layers):
        raise MendJaxError(f"layers={list(layers)} differ from the editor's {list(editor.spec.layers)}: an editor "
                           "edits the layers it was trained for; leave layers out, or evaluate without the editor")
    if editor is not None:
        layers = editor.spec.layers
    elif layers is None:
        layers = model.family.default_edit_layers(cfg)
    else:
        known = model.family.linear_layers(cfg)
        if not layers or any(n not in known for n in layers):
            raise unknown_layers([n for n in layers if n not in known] or ["(none given)"], known)
        layers = tuple(layers)
    first = min(layer_index(n) for n in layers)
    k = edits_at_once
    groups = [records[i:i + k] for i in range(0, len(records) - k + 1, k)]
    methods = ["unedited"] + (["mend"] if editor is not None else []) + (["finetune"] if finetune_cfg else [])
    acc = {m: {} for m in methods}

    def add(m, key, values):
        acc[m].setdefault(key, []).extend(np.asarray(values, np.float64).tolist())

    for group in tqdm(groups, disable=not progress, desc=f"evaluating ({k} at once)", unit="group"):
        prompts = [r.prompt for r in group]
        targets = [r.target for r in group]
        rephr = [r.rephrase(np.random.default_rng([seed, r.index])) for r in group]
        edit_b = _encode(tok, prompts, targets, max_len)
        rel_b = edit_b
        gen_b = _encode(tok, rephr, targets, max_len)
        loc_b = _encode(tok, [r.loc_prompt for r in group], [r.loc_answer for r in group], max_len)
        hid = {name: hidden_states(model.params, cfg, b, first) for name, b in (("rel", rel_b), ("gen", gen_b), ("loc", loc_b))}
        batches = {"rel": rel_b, "gen": gen_b, "loc": loc_b}
        pre = {name: score_targets(model.params, cfg, b, hid[name], {}, first) for name, b in batches.items()}
        variants = {"unedited": (model.params, {})}
        if editor is not None:
            rows = edit_row_bucket(edit_b)
            edits = iterated_mend_edits(editor, cfg, model.params, eparams, stats, edit_b, steps=edit_steps,
                                        rows=rows, until_margin=edit_until_margin, max_rank=edit_max_rank,
                                        min_steps=edit_min_steps)
            variants["mend"] = (model.params, edits)
            # every step adds `rows` rows per layer: how many steps this group took (fewer with adaptive steps)
            add("mend", "editor_steps", [next(iter(edits.values())).a.shape[0] // rows] * len(group))
        if finetune_cfg:
            deltas = finetune(model.params, cfg, edit_b, tuple(layers), finetune_cfg.lr, finetune_cfg.steps)
            variants["finetune"] = (_dense_as_params(model.params, deltas), {})
        for m, (params, edits) in variants.items():
            post = pre if m == "unedited" else {name: score_targets(params, cfg, b, hid[name], edits, first)
                                                for name, b in batches.items()}
            add(m, "reliability_token", post["rel"][1])
            add(m, "reliability_exact", post["rel"][2])
            add(m, "generalization_token", post["gen"][1])
            add(m, "generalization_exact", post["gen"][2])
            same = (np.asarray(post["loc"][0]) == np.asarray(pre["loc"][0])).astype(np.float64)
            tmask = np.asarray(loc_b.target_mask)
            add(m, "locality_token", (same * tmask).sum(-1) / tmask.sum(-1))
            add(m, "locality_whole", ((same * tmask).sum(-1) == tmask.sum(-1)).astype(np.float64))
            add(m, "loc_acc_token", post["loc"][1])
            add(m, "loc_acc_exact", post["loc"][2])
    out = {"n_records": len(groups) * k, "edits_at_once": k, "edited_layers": list(layers), "edit_steps": edit_steps,
           "edit_until_margin": edit_until_margin, "edit_min_steps": edit_min_steps, "edit_max_rank": edit_max_rank}
    for m in methods:
        res = {key: float(np.mean(v)) for key, v in acc[m].items()}
        base = {key: float(np.mean(v)) for key, v in acc["unedited"].items()}
        res["drawdown_token"] = base["loc_acc_token"] - res["loc_acc_token"]
        res["drawdown_exact"] = base["loc_acc_exact"] - res["loc_acc_exact"]
        out[m] = res
    if finetune_cfg:
        out["finetune_config"] = dataclasses.asdict(finetune_cfg)
    if per_record:
        out["per_record"] = {"index": [r.index for g in groups for r in g], **acc}
    return out
