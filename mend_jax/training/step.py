"""One meta-training step as a single ``jax.jit``-ted pure function over fixed shapes.

For N independent edit problems (stacked on a leading axis), each with an edit example, an equivalence example and
a locality example:

1. factors ``(u, delta)`` of the edit example (first order: no gradient flows through them, as in MEND);
2. the editor's running statistics absorb the new rows *before* they are used (MEND's order, training only);
   (``StepHParams.edit_steps`` > 1: further editor steps on the factors at the weights edited so far, their updates
   added; the same statistics, which only step 1's rows update);
3. ``L = c_edit * NLL(target | equivalence input, edited model) + c_loc * KL(p_pre || p_post)`` on the locality
   input, averaged over the N problems (``edit_on_prompt``: the edit term is the mean of the NLL on the equivalence
   input and on the edit prompt itself; ``loc_on_answer``: the KL over the locality answer's tokens only; ``c_flip``:
   plus ``c_flip`` times the argmax-margin hinge on the same positions); gradients with respect to the editor nets
   and step sizes only;
4. optax update (global-norm clipping, Adam with separate learning rates for nets and step sizes, skipped when
   non-finite).

The blocks below the lowest edited layer do not depend on the edit: their hidden states are computed once per
input (no gradient) and reused by the pre- and post-edit passes; or the step is handed them (``hidden=``, a
``training.frozen_cache.FrozenHidden``, computed once per distinct input of the whole run) and runs only the edited
blocks and the head.

``StepHParams.rows`` (static): run the editor once over the first ``rows`` real factor rows of all N problems
together, gathered into a fixed-size buffer, instead of over every padded position of every problem. The editor
is per-row, so the result is the same (see :func:`problem_edits`); its cost then follows the real tokens (about a
quarter to a half of the padded positions in zsRE/CounterFact batches), which is most of a step's cost beyond the
base model's passes. The host picks ``rows`` from the data (:func:`mend_jax.training.batches.row_budget`) and
falls back to the full step for a batch with more real rows (:func:`mend_jax.training.batches.factor_rows`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from mend_jax.editing.batch import TokenBatch
from mend_jax.editing.edit import compute_edits, edit_rows, gather_real_rows, merge_edits, n_edits
from mend_jax.editing.editor import Editor, step_sizes
from mend_jax.editing.factors import capture_factors
from mend_jax.editing.losses import argmax_margin_hinge, kl_pre_post, masked_nll, token_accuracy
from mend_jax.models import LinearHooks, LowRankEdit, family_for, layer_index


@dataclasses.dataclass(frozen=True)
class MetaBatch:
    """Leading axis N (independent edit problems); each field is a TokenBatch of shape [N, B, ...]."""
    edit: TokenBatch
    equiv: TokenBatch
    loc: TokenBatch


jax.tree_util.register_dataclass(MetaBatch, data_fields=["edit", "equiv", "loc"], meta_fields=[])


@dataclasses.dataclass(frozen=True)
class StepHParams:
    c_edit: float = 0.1
    c_loc: float = 1.0
    update_stats: bool = True
    edit_on_prompt: bool = False  # L_edit = mean of the NLLs on the rephrase and on the edit prompt
    rows: int | None = None  # editor on this many compacted real rows of the whole step (None: every position)
    # editor steps per edit (``editing.edit.iterated_mend_edits``): step s > 1 takes the edit example's factors at
    # the weights edited by steps 1..s-1 (first order: those factors are gradient-stopped) and adds its update; the
    # losses are taken under the sum of all steps' updates. 1: MEND
    edit_steps: int = 1
    # the locality KL over the locality input's answer tokens only (where evaluation compares argmaxes), not over
    # all its tokens (MEND)
    loc_on_answer: bool = False
    # weight of the argmax-margin hinge on the same locality positions (``editing.losses.argmax_margin_hinge``:
    # penalises an edit that takes more than half the margin of the pre-edit argmax, i.e. that flips near-ties,
    # which the KL hardly sees); 0: off (MEND)
    c_flip: float = 0.0
    # learning-rate cool-down: with ``decay_steps`` > 0, the optimizer's updates of step s (the train state's step
    # counter) are scaled by min(1, (total_steps - s) / decay_steps), i.e. both learning rates fall linearly to 0
    # over the last ``decay_steps`` steps before ``total_steps``; 0: constant (TrainConfig.lr_decay_steps)
    decay_steps: int = 0
    total_steps: int = 0


def lr_multiplier(hp: StepHParams, step):
    """The factor on step ``step``'s learning rates under ``hp``'s cool-down (1 without one)."""
    if hp.decay_steps <= 0:
        return jnp.ones((), jnp.float32)
    left = (hp.total_steps - step).astype(jnp.float32)
    return jnp.clip(left / hp.decay_steps, 0.0, 1.0)


def make_optimizer(lr: float, lr_lr: float, grad_clip: float, max_consecutive_nonfinite: int = 100):
    """Adam for the editor nets (``lr``) and, separately, for the step sizes (``lr_lr``: ``edit_lrs`` and, if the
    editor has them, their exponents in the number of edits); one joint global-norm clip; updates with a
    non-finite gradient are skipped (``optax.apply_if_finite``)."""
    labels = lambda params: {k: (jax.tree.map(lambda _: "nets", v) if k == "nets" else "edit_lrs")  # noqa
                             for k, v in params.items()}
    tx = optax.chain(optax.clip_by_global_norm(grad_clip),
                     optax.multi_transform({"nets": optax.adam(lr), "edit_lrs": optax.adam(lr_lr)}, labels))
    return optax.apply_if_finite(tx, max_consecutive_nonfinite)


def init_train_state(editor: Editor, tx, key) -> dict:
    params, state = editor.init(key)
    return {"params": params, "stats": state, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def problem_edits(editor: Editor, eparams, stats, factors, rows: int | None = None) -> dict:
    """Per problem, the low-rank edits of its factors (fields with a leading axis N): ``{layer: LowRankEdit}`` with
    ``a``/``b`` of shape [N, W, ...].

    ``rows=None``: the editor runs on every position of every problem (``W`` = positions per problem).
    ``rows``: the real rows (mask 1) of all problems are gathered in order into one buffer of ``rows`` rows, the
    editor runs on it once, and each problem takes back its own rows as a window of ``W = min(positions per
    problem, rows)`` rows starting at its first one (rows stay in problem order, and a problem has at most its
    positions' count of real rows). Equal to ``rows=None`` up to summation order. A step with more real rows than
    ``rows`` gets NaN step sizes (the optimizer skips it) rather than silently losing rows."""
    if rows is None:
        return jax.vmap(lambda f: compute_edits(editor, eparams, stats, f))(factors)
    names = editor.spec.layers
    n_prob, per = factors.mask[names[0]].shape[0], factors.mask[names[0]][0].size
    us, ds, ms, pids, overflow = {}, {}, {}, {}, {}
    for name in names:
        u, d, m = edit_rows(factors, name)
        idx, valid, overflow[name] = gather_real_rows(m, rows)
        us[name], ds[name], ms[name] = u[idx], d[idx], jnp.where(valid, m[idx], 0.0)
        pids[name] = jnp.where(valid, idx // per, n_prob)  # padding rows belong to no problem
    out = editor.apply_all(eparams["nets"], stats, us, ds)
    alpha = step_sizes(eparams, jax.vmap(n_edits)(factors.mask[names[0]]))  # [N, L]: each problem's k
    edits = {}
    for i, name in enumerate(names):
        a, b = out[name][0] * ms[name][:, None], out[name][1] * ms[name][:, None]
        counts = jnp.sum(pids[name][None, :] == jnp.arange(n_prob)[:, None], axis=1)  # [N]
        starts = jnp.cumsum(counts) - counts
        w = min(per, rows)
        win = jnp.minimum(starts[:, None] + jnp.arange(w)[None, :], rows - 1)  # [N, W]
        keep = (jnp.arange(w)[None, :] < counts[:, None]).astype(a.dtype)[..., None]
        scale = jnp.where(overflow[name], jnp.nan, -alpha[:, i])
        edits[name] = LowRankEdit(a=a[win] * keep, b=b[win] * keep, scale=scale)
    return edits


def edit_problem_losses(editor: Editor, cfg, base_params, edits, equiv: TokenBatch, h_equiv,
                        loc: TokenBatch, h_loc, pre_loc_logits, first_layer: int, edit: TokenBatch | None = None,
                        h_edit=None, loc_on_answer: bool = False, flip: bool = False):
    """Losses and metrics of one edit problem (no leading N axis) under its ``edits`` (see :func:`problem_edits`).
    With ``edit`` (and its hidden states before ``first_layer``), the edit loss is the mean of the NLLs on the
    equivalence input and on the edit prompt. ``loc_on_answer``: the locality KL (and ``loc_same``) over the
    locality input's answer tokens only (``pre_loc_logits`` then taken at ``loc.target_pos``), else over all its
    tokens. ``flip``: also the argmax-margin hinge over the same positions (metric ``loss/flip``)."""
    fam = family_for(cfg)
    hooks = LinearHooks(edits=edits)
    post_equiv = fam.forward(base_params, cfg, equiv.input_ids, equiv.attention_mask, hooks=hooks,
                             logits_at=equiv.target_pos, first_layer=first_layer, hidden=h_equiv)
    l_edit = masked_nll(post_equiv, equiv.target_ids, equiv.target_mask)
    extra = {}
    if edit is not None:
        post_edit = fam.forward(base_params, cfg, edit.input_ids, edit.attention_mask, hooks=hooks,
                                logits_at=edit.target_pos, first_layer=first_layer, hidden=h_edit)
        l_edit = 0.5 * (l_edit + masked_nll(post_edit, edit.target_ids, edit.target_mask))
        extra["prompt_acc"] = token_accuracy(post_edit, edit.target_ids, edit.target_mask)[0].mean()
    post_loc = fam.forward(base_params, cfg, loc.input_ids, loc.attention_mask, hooks=LinearHooks(edits=edits),
                           first_layer=first_layer, hidden=h_loc, logits_at=loc.target_pos if loc_on_answer else None)
    loc_mask = (loc.target_mask if loc_on_answer else loc.attention_mask).astype(jnp.float32)
    l_loc = kl_pre_post(pre_loc_logits, post_loc, loc_mask)
    if flip:
        extra["loss/flip"] = argmax_margin_hinge(pre_loc_logits, post_loc, loc_mask)
    tok_acc, exact = token_accuracy(post_equiv, equiv.target_ids, equiv.target_mask)
    loc_same = (jnp.argmax(post_loc, -1) == jnp.argmax(pre_loc_logits, -1)).astype(jnp.float32)
    loc_same = (loc_same * loc_mask).sum() / jnp.maximum(loc_mask.sum(), 1)
    return l_edit, l_loc, {"edit_acc": tok_acc.mean(), "edit_exact": exact.mean(), "loc_same": loc_same, **extra}


def meta_forward(editor: Editor, cfg, hp: StepHParams, base_params, eparams, stats, batch: MetaBatch,
                 update_stats: bool, hidden=None):
    """Shared by the training step and validation: returns (new_stats, loss_fn(eparams) -> (loss, metrics)).
    ``hidden``: the frozen blocks' output on the batch's three inputs (``FrozenHidden``), if computed already."""
    fam = family_for(cfg)
    layers = editor.spec.layers
    first = min(layer_index(n) for n in layers)

    # the frozen blocks' output on the edit batch comes back too: the prompt edit loss starts from it
    pos = editor.factor_positions
    pre_loss, factors, h_edit = jax.vmap(lambda b, h: capture_factors(base_params, cfg, b, layers, positions=pos,
                                                                      return_hidden=True, hidden=h))(
        batch.edit, None if hidden is None else hidden.edit)
    if update_stats and editor.norm:
        rows = {n: edit_rows(factors, n) for n in layers}
        stats = editor.update_state(stats, {n: r[0] for n, r in rows.items()}, {n: r[1] for n, r in rows.items()},
                                    {n: r[2] for n, r in rows.items()})

    def hidden_of(tb):
        return jax.vmap(lambda b: fam.hidden_before(base_params, cfg, b.input_ids, b.attention_mask, first))(tb)

    h_equiv = jax.lax.stop_gradient(hidden_of(batch.equiv) if hidden is None else hidden.equiv)
    h_loc = jax.lax.stop_gradient(hidden_of(batch.loc) if hidden is None else hidden.loc)
    pre_loc = jax.vmap(lambda b, h: fam.forward(base_params, cfg, b.input_ids, b.attention_mask, first_layer=first,
                                                logits_at=b.target_pos if hp.loc_on_answer else None,
                                                hidden=h))(batch.loc, h_loc)
    pre_loc = jax.lax.stop_gradient(pre_loc)

    def loss_fn(ep):
        edits = problem_edits(editor, ep, stats, factors, hp.rows)
        for _ in range(hp.edit_steps - 1):  # further editor steps from the factors at the weights edited so far
            _, more = jax.vmap(lambda b, h, e: capture_factors(base_params, cfg, b, layers, hidden=h, edits=e,
                                                                    positions=pos))(
                batch.edit, h_edit, edits)
            edits = jax.vmap(merge_edits)(edits, problem_edits(editor, ep, stats, more, hp.rows))
        prompt = (batch.edit, h_edit) if hp.edit_on_prompt else (None, None)  # None: no prompt term
        l_edit, l_loc, m = jax.vmap(
            lambda e, eq, he, lo, hl, pl, ed, hd: edit_problem_losses(
                editor, cfg, base_params, e, eq, he, lo, hl, pl, first, edit=ed, h_edit=hd,
                loc_on_answer=hp.loc_on_answer, flip=hp.c_flip > 0)
        )(edits, batch.equiv, h_equiv, batch.loc, h_loc, pre_loc, *prompt)
        loss = hp.c_edit * l_edit + hp.c_loc * l_loc + (hp.c_flip * m["loss/flip"] if hp.c_flip > 0 else 0.0)
        per = {"loss": loss, "loss/edit": l_edit, "loss/loc": l_loc,
               # capture_factors' loss sums the problem's k edits: report the mean per edit, comparable across k
               "loss/pre_edit": pre_loss / batch.edit.input_ids.shape[1], **m}
        metrics = {k: v.mean() for k, v in per.items()}
        return metrics["loss"], (metrics, per)

    return stats, loss_fn


def make_train_step(editor: Editor, cfg, tx, hp: StepHParams = StepHParams(), donate: bool = True, jit: bool = True):
    """``step(train_state, base_params, batch, hidden=None) -> (train_state, metrics)``, jitted (``train_state``
    donated), or the plain function with ``jit=False`` (``sharded_steps.sharded_train_step`` jits it with explicit
    shardings). ``hidden``: the batch's ``FrozenHidden`` from a ``FrozenHiddenCache`` (the frozen blocks are then
    not run; one more compilation than without)."""

    def step(ts: dict, base_params: Any, batch: MetaBatch, hidden=None):
        stats, loss_fn = meta_forward(editor, cfg, hp, base_params, ts["params"], ts["stats"], batch,
                                      hp.update_stats, hidden)
        (loss, (metrics, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(ts["params"])
        updates, opt_state = tx.update(grads, ts["opt_state"], ts["params"])
        scale = lr_multiplier(hp, ts["step"])  # Adam's update is linear in its learning rate
        updates = jax.tree.map(lambda u: u * scale, updates)
        params = optax.apply_updates(ts["params"], updates)
        metrics = dict(metrics)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["finite"] = jnp.isfinite(metrics["grad_norm"]).astype(jnp.float32)
        metrics["edit_lr_mean"] = params["edit_lrs"].mean()
        metrics["lr_multiplier"] = scale
        if "edit_lr_k_power" in params:
            metrics["edit_lr_k_power_mean"] = params["edit_lr_k_power"].mean()
        return {"params": params, "stats": stats, "opt_state": opt_state, "step": ts["step"] + 1}, metrics

    if not jit:
        return step
    return jax.jit(step, donate_argnums=(0,) if donate else ())


def make_eval_step(editor: Editor, cfg, hp: StepHParams = StepHParams(), out_shardings=None):
    """Per-problem validation losses/metrics [N] of a MetaBatch with frozen statistics (eval mode). Jitted
    (``out_shardings``: e.g. replicated on a multi-host mesh, so every process can read the metrics)."""

    def evaluate(eparams, stats, base_params, batch: MetaBatch):
        _, loss_fn = meta_forward(editor, cfg, hp, base_params, eparams, stats, batch, update_stats=False)
        return loss_fn(eparams)[1][1]

    return jax.jit(evaluate) if out_shardings is None else jax.jit(evaluate, out_shardings=out_shardings)
