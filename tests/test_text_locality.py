"""Plain-text locality passages (mend_jax/data/text.py) and their use as extra locality inputs in training."""
import dataclasses
import json
import warnings

import numpy as np
import pytest

from mend_jax.data import DataError, load_records
from mend_jax.data.text import clean_text_line, load_text_passages, text_passages

WIKI_LINES = [
    "",
    " = Robert Boulter = ",
    "",
    " Robert Boulter is an English film , television and theatre actor . He had a guest @-@ starring role on "
    "the television series The Bill in 2000 , which sold 1 @,@ 000 copies at 3 @.@ 5 pounds each . ",
    " = = Career = = ",
    " Short line . ",
]


def test_passages_follow_the_stated_rule():
    assert clean_text_line(" a guest @-@ starring role , 1 @,@ 000 at 3 @.@ 5 ") == "a guest-starring role , 1,000 at 3.5"
    words = clean_text_line(WIKI_LINES[3]).split()
    got = text_passages(WIKI_LINES, words=8)
    # headings and empty / short lines give nothing; each full run of 8 words of the long line gives one pair
    assert len(got) == len(words) // 8
    for i, (q, a) in enumerate(got):
        assert q.split() == words[8 * i: 8 * i + 4] and a.split() == words[8 * i + 4: 8 * i + 8]
    assert got[1] == ("and theatre actor .", "He had a guest-starring")
    assert text_passages(WIKI_LINES, words=8, limit=2) == got[:2]
    with pytest.raises(DataError, match="at least 2 words"):
        text_passages(WIKI_LINES, words=1)


def test_passages_load_from_a_local_file_and_bad_sources_are_named(tmp_path):
    path = tmp_path / "wiki.raw"
    path.write_text("\n".join(WIKI_LINES) + "\n")
    assert load_text_passages(str(path), words=8) == text_passages(WIKI_LINES, words=8)
    with pytest.raises(DataError, match="no such file"):
        load_text_passages(str(tmp_path / "missing.raw"))
    with pytest.raises(DataError, match="no line of at least 40 words"):
        load_text_passages(str(path), words=40)


@pytest.mark.smollm2
def test_training_batches_take_passages_as_further_locality_rows(tiny_lm):
    from mend_jax.training.batches import DataOrder, Shapes, filter_records, fitting_passages, training_batch
    shapes = Shapes(16, 4, 24, 12)
    records = filter_records(tiny_lm.tokenizer, list(load_records("demo", records="0:40")), shapes, train=True)
    passages = fitting_passages(tiny_lm.tokenizer, text_passages(WIKI_LINES, words=8), shapes)
    assert len(passages) >= 2
    order = DataOrder(len(records), seed=0)
    for k in (1, 3):
        plain = training_batch(tiny_lm.tokenizer, records, order, 1, 2, shapes, 128, edits_per_problem=k)
        more = training_batch(tiny_lm.tokenizer, records, order, 1, 2, shapes, 128, edits_per_problem=k,
                              loc_text=passages, loc_text_rows=2)
        assert more.loc.input_ids.shape == (2, k + 2, shapes.loc_len)
        for a, b in ((plain.edit, more.edit), (plain.equiv, more.equiv)):  # the problems themselves unchanged
            np.testing.assert_array_equal(a.input_ids, b.input_ids)
        np.testing.assert_array_equal(plain.loc.input_ids, more.loc.input_ids[:, :k])
        from mend_jax.editing.batch import tokenize_pair
        allowed = {tuple(sum(tokenize_pair(tiny_lm.tokenizer, q, a), [])) for q, a in passages}
        for ids, m in zip(more.loc.input_ids[:, k:].reshape(-1, shapes.loc_len),
                          more.loc.attention_mask[:, k:].reshape(-1, shapes.loc_len)):
            assert tuple(int(t) for t in ids[m > 0]) in allowed  # each extra row is one whole passage
        again = training_batch(tiny_lm.tokenizer, records, order, 1, 2, shapes, 128, edits_per_problem=k,
                               loc_text=passages, loc_text_rows=2)
        np.testing.assert_array_equal(again.loc.input_ids, more.loc.input_ids)  # a function of (seed, step)


@pytest.mark.smollm2
def test_a_run_with_text_locality_caches_the_passages_and_resumes_exactly(tiny_lm, tmp_path):
    from test_training import _tiny_cfg
    from mend_jax.training.loop import train
    path = tmp_path / "wiki.raw"
    path.write_text("\n".join(WIKI_LINES * 3) + "\n")

    def cfg(out, steps):
        return dataclasses.replace(_tiny_cfg(out, steps), hidden_cache=True, loc_len=32, loc_answer_len=16,
                                   loc_text=str(path), loc_text_rows=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*were not announced.*")  # every passage is in the cache
        train(cfg(tmp_path / "once", 3), model=tiny_lm, progress=False)
        train(cfg(tmp_path / "twice", 2), model=tiny_lm, progress=False)
        train(cfg(tmp_path / "twice", 3), model=tiny_lm, progress=False)
    rows = {name: [json.loads(r) for r in (tmp_path / name / "log.jsonl").read_text().splitlines()]
            for name in ("once", "twice")}
    assert [r["step"] for r in rows["twice"]] == [1, 2, 3]
    for key in ("loss", "loss/loc", "grad_norm"):
        assert [r[key] for r in rows["twice"]] == [r[key] for r in rows["once"]], key
    plain = tmp_path / "plain"
    train(dataclasses.replace(_tiny_cfg(plain, 1), hidden_cache=True, loc_len=32, loc_answer_len=16), model=tiny_lm,
          progress=False)
    first = json.loads((plain / "log.jsonl").read_text().splitlines()[0])
    assert first["loss/loc"] != rows["once"][0]["loss/loc"]  # the passages enter the locality loss
    with pytest.raises(DataError, match="no passage fits the locality shapes"):  # 8-word answers, 4-token shapes
        train(dataclasses.replace(_tiny_cfg(tmp_path / "short", 1), loc_text=str(path)), model=tiny_lm,
              progress=False)


def test_text_locality_flags_are_checked():
    from mend_jax.errors import MendJaxError
    from mend_jax.training.config import TrainConfig
    with pytest.raises(MendJaxError, match="--loc-text-rows"):
        TrainConfig(loc_text="x.raw", loc_text_rows=0)
