"""Tests for mend_jax.data: EditRecord, the zsRE/CounterFact/demo loaders, ranges and locality sampling.

Real-data tests read ``../shared/data`` (next to the repo root) or ``$MEND_JAX_DATA_DIR`` and are
skipped when neither exists. Reserved files are loaded here for format/parsing checks only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import datasets
from mend_jax.data import (
    DATA_DIR_ENV,
    DEMO_DEV,
    DEMO_FACTS_PATH,
    DEMO_TRAIN,
    DataError,
    DataWarning,
    EditRecord,
    load_indices_file,
    load_records,
    nq_question_to_prompt,
    parse_record_range,
    sample_training_loc,
    training_locality,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _data_dir() -> Path | None:
    env = os.environ.get(DATA_DIR_ENV)
    for cand in ([Path(env)] if env else []) + [REPO_ROOT / ".." / "shared" / "data"]:
        if (cand / "zsre" / "zsre_mend_train-1k.json").is_file():
            return cand.resolve()
    return None


DATA_DIR = _data_dir()
needs_data = pytest.mark.skipif(
    DATA_DIR is None,
    reason=f"real editing data not found: set {DATA_DIR_ENV} or put it at ../shared/data next to the repo",
)

ZSRE_TRAIN = "zsre/zsre_mend_train-1k.json"
ZSRE_EVAL = "zsre/zsre_mend_eval_portability_gpt4.json"  # 0-499 dev, 500-1036 reserved
CF_TRAIN = "counterfact/counterfact-train.json"
CF_VAL = "counterfact/counterfact-val.json"
CF_EDIT = "counterfact/counterfact-edit.json"  # reserved: format test only
CF_ROME = "counterfact/counterfact_portability_gpt4.json"  # reserved: format test only


def _load(kind, rel, **kw):
    assert DATA_DIR is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return load_records(kind, str(DATA_DIR / rel), **kw)


def _write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _zsre_row(src="What is X?", alt="Y", **kw):
    row = {
        "subject": "X",
        "src": src,
        "pred": "Z",
        "rephrase": "What's X?",
        "alt": alt,
        "answers": ["Z"],
        "loc": "nq question: who wrote hamlet",
        "loc_ans": "Shakespeare",
        "cond": f"Z >> {alt} || {src}",
    }
    row.update(kw)
    return row


def _assert_clean(recs):
    for r in recs:
        assert r.target and r.target == r.target.strip(), r
        assert r.prompt and r.prompt == r.prompt.strip(), r
        assert all(p == p.strip() and p for p in r.rephrases), r
        assert r.loc_prompt == r.loc_prompt.strip() and r.loc_answer == r.loc_answer.strip(), r
    idx = [r.index for r in recs]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)


# --------------------------------------------------------------------------- real files


@needs_data
def test_zsre_train_skips_the_two_empty_alts():
    with pytest.warns(DataWarning, match=r"skipped 2 record"):
        recs = load_records("zsre", str(DATA_DIR / ZSRE_TRAIN))
    assert recs.n_in_file == 1000 and len(recs) == 998
    assert recs.skipped == (534, 723)
    assert recs.reader == "datasets" and recs.fmt == "zsre"
    _assert_clean(recs)
    assert {r.source for r in recs} == {"zsre"}
    assert all(len(r.rephrases) == 1 and r.true_target for r in recs)
    assert all(r.loc_prompt.endswith("?") and not r.loc_prompt.lower().startswith("nq question") for r in recs)
    assert recs[0].prompt == "What is the product made by UniFirst?"
    assert recs[0].target == "unmanned aircraft" and recs[0].true_target == "uniform"
    assert recs[0].loc_prompt == "John goodman's character in the big lebowski?"
    # 10 alts carry a leading space in the file; they are stripped, not skipped
    raw = json.loads((DATA_DIR / ZSRE_TRAIN).read_text())
    padded = [i for i, r in enumerate(raw) if r["alt"] and r["alt"] != r["alt"].strip()]
    assert len(padded) == 10
    by_index = {r.index: r for r in recs}
    assert all(by_index[i].target == raw[i]["alt"].strip() for i in padded)


@needs_data
def test_zsre_eval_portability():
    recs = _load("zsre", ZSRE_EVAL)
    assert len(recs) == 1037 and recs.skipped == ()
    _assert_clean(recs)
    assert all(len(r.portability) == 1 for r in recs)
    q, a = recs[0].portability[0]
    assert q.startswith("What type of sports event") and a == "Athletics"
    dev = _load("zsre", ZSRE_EVAL, records=parse_record_range("0:500"))
    assert len(dev) == 500 and dev[-1].index == 499


@needs_data
def test_counterfact_flat_files():
    val = _load("counterfact", CF_VAL)
    assert len(val) == 1919 and val.fmt == "counterfact-flat" and val.reader == "datasets"
    _assert_clean(val)
    assert [r.index for r in val] == list(range(1919))
    assert val[0].case_id == 10 and val[0].prompt == "BBC One, by" and val[0].target == "Sega"
    assert val[0].loc_prompt == "BBC Radio, by" and val[0].loc_answer == "BBC"
    assert all(r.case_id is not None and r.true_target for r in val)
    for rel in (CF_TRAIN, CF_EDIT):  # CF_EDIT is reserved: parsing check only
        recs = _load("counterfact", rel)
        assert len(recs) == 10000 and recs.skipped == ()
        _assert_clean(recs)


@needs_data
def test_counterfact_rome_format():
    recs = _load("counterfact", CF_ROME)  # reserved: parsing check only
    assert len(recs) == 1031 and recs.fmt == "counterfact-rome" and recs.reader == "datasets"
    _assert_clean(recs)
    r = recs[0]
    assert r.prompt == "Spike Hughes originates from" and r.target == "Philadelphia"
    assert r.true_target == "London" and r.case_id == 4482 and r.subject == "Spike Hughes"
    assert len(r.rephrases) == 2 and len(r.neighborhood) == 10
    assert (r.loc_prompt, r.loc_answer) == r.neighborhood[0] == ("Max Mosley originates from", "London")
    assert all(a == rec.true_target for rec in recs for _, a in rec.neighborhood)
    assert all(len(rec.portability) == 1 for rec in recs)
    assert all("{}" not in rec.prompt and rec.subject in rec.prompt for rec in recs)
    # known quirk: non-ASCII was stripped upstream; nothing is repaired
    assert all(rec.prompt.isascii() and rec.target.isascii() for rec in recs)


@needs_data
def test_record_range_counts_file_positions_before_skipping():
    recs = _load("zsre", ZSRE_TRAIN, records=slice(530, 540))
    assert [r.index for r in recs] == [530, 531, 532, 533, 535, 536, 537, 538, 539]
    assert recs.skipped == (534,)
    assert len(_load("zsre", ZSRE_TRAIN, records="990:")) == 10
    assert len(_load("zsre", ZSRE_TRAIN, records="0:1000")) == 998
    with pytest.raises(DataError, match="1000 records"):
        _load("zsre", ZSRE_TRAIN, records="0:1001")


@needs_data
def test_indices_file(tmp_path):
    p = _write_json(tmp_path / "idx.json", [723, 5, 0])
    idx = load_indices_file(p)
    assert idx == [723, 5, 0]
    recs = _load("zsre", ZSRE_TRAIN, indices=idx)
    assert [r.index for r in recs] == [5, 0] and recs.skipped == (723,)
    with pytest.raises(DataError, match="outside"):
        _load("zsre", ZSRE_TRAIN, indices=[0, 1000])


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "text, expected",
    [("0:500", slice(0, 500)), ("500:1037", slice(500, 1037)), ("10:", slice(10, None)), (":5", slice(None, 5)), (" 1 : 2 ", slice(1, 2))],
)
def test_parse_record_range_ok(text, expected):
    assert parse_record_range(text) == expected


@pytest.mark.parametrize("text", ["5:2", "3:3", "x:y", "5", "", "-1:3", "1:2:3", "0.5:2", "a:10"])
def test_parse_record_range_bad(text):
    with pytest.raises(DataError, match="record range"):
        parse_record_range(text)


def test_load_indices_file_formats(tmp_path):
    assert load_indices_file(_write_json(tmp_path / "a.json", {"indices": [3, 1]})) == [3, 1]
    (tmp_path / "b.txt").write_text("4\n2, 7\n")
    assert load_indices_file(tmp_path / "b.txt") == [4, 2, 7]
    for name, content in [("c.json", '["a", 1]'), ("d.json", '{"idx": [1]}'), ("e.txt", "1 two 3"), ("f.json", "[true]")]:
        (tmp_path / name).write_text(content)
        with pytest.raises(DataError, match=name):
            load_indices_file(tmp_path / name)
    with pytest.raises(DataError, match="cannot read"):
        load_indices_file(tmp_path / "missing.json")


def test_selection_errors_on_demo():
    with pytest.raises(DataError, match="not both"):
        load_records("demo", records="0:5", indices=[1])
    with pytest.raises(DataError, match="duplicates"):
        load_records("demo", indices=[1, 1])
    with pytest.raises(DataError, match="outside"):
        load_records("demo", indices=[-1])
    with pytest.raises(DataError, match="record range"):
        load_records("demo", records="x:y")
    with pytest.raises(DataError, match="unknown data kind"):
        load_records("fever", "x.json")
    with pytest.raises(DataError, match="no data file"):
        load_records("zsre", None)


# --------------------------------------------------------------------------- formats and quirks


def test_foreign_format_names_the_keys(tmp_path):
    p = _write_json(tmp_path / "foreign.json", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as ei:
        load_records("counterfact", str(p))
    msg = str(ei.value)
    assert "question" in msg and "answer" in msg and "target_new" in msg and "requested_rewrite" in msg
    with pytest.raises(DataError, match=r"'src'.*found keys.*question"):
        load_records("zsre", str(p))
    # a CounterFact file given as zsRE (and vice versa) is refused, not misparsed
    with pytest.raises(DataError, match="not a zsRE"):
        load_records("zsre", str(DEMO_FACTS_PATH))
    z = _write_json(tmp_path / "z.json", [_zsre_row()])
    with pytest.raises(DataError, match="not a CounterFact"):
        load_records("counterfact", str(z))


def test_zsre_quirks_rule_synthetic(tmp_path):
    rows = [_zsre_row(alt=" Foo "), _zsre_row(src="What is W?", alt="   "), _zsre_row(src="Who is V? ", alt="Bar")]
    p = _write_json(tmp_path / "z.json", rows)
    with pytest.warns(DataWarning, match=r"skipped 1 record.*\[1\]"):
        recs = load_records("zsre", str(p))
    assert [r.index for r in recs] == [0, 2] and recs.skipped == (1,)
    assert recs[0].target == "Foo" and recs[1].prompt == "Who is V?"
    assert recs[0].loc_prompt == "Who wrote hamlet?" and recs[0].loc_answer == "Shakespeare"
    assert recs[0].portability == ()


def test_nq_question_to_prompt():
    assert nq_question_to_prompt("nq question: who played desmond doss father") == "Who played desmond doss father?"
    assert nq_question_to_prompt("Is it raining?") == "Is it raining?"
    assert nq_question_to_prompt("nq question: ") == ""


def test_rome_prompt_without_placeholder(tmp_path):
    row = {
        "case_id": 1,
        "requested_rewrite": {"prompt": "no placeholder", "subject": "S", "target_new": {"str": "A"}, "target_true": {"str": "B"}},
        "paraphrase_prompts": ["p"],
        "neighborhood_prompts": ["n"],
    }
    p = _write_json(tmp_path / "rome.json", [row])
    with pytest.raises(DataError, match="placeholder"):
        load_records("counterfact", str(p))


def test_empty_and_missing_files(tmp_path, monkeypatch):
    p = _write_json(tmp_path / "empty.json", [])
    with pytest.raises(DataError, match="no records"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # datasets refuses an empty list; json reads it
        load_records("counterfact", str(p))

    def no_hub(*a, **k):  # a missing *.json path must not be sent to the hub
        raise AssertionError("hub called")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    with pytest.raises(DataError, match=r"not found.*--train-file"):
        load_records("zsre", str(tmp_path / "nope.json"))


def test_data_dir_env_resolves_relative_paths(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    _write_json(tmp_path / "sub" / "z.json", [_zsre_row()])
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    recs = load_records("zsre", "sub/z.json")
    assert len(recs) == 1 and recs.origin == str(tmp_path / "sub" / "z.json")


def test_json_module_fallback(tmp_path, monkeypatch):
    p = _write_json(tmp_path / "z.json", [_zsre_row()])
    real = datasets.load_dataset

    def broken_json_builder(path, *a, **k):
        if path == "json":
            raise TypeError("simulated Arrow type clash")
        return real(path, *a, **k)

    monkeypatch.setattr(datasets, "load_dataset", broken_json_builder)
    with pytest.warns(DataWarning, match="json module"):
        recs = load_records("zsre", str(p))
    assert recs.reader == "json" and len(recs) == 1 and recs[0].target == "Y"
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        load_records("zsre", str(tmp_path / "bad.json"))


def test_hub_id_failure_is_a_clear_data_error(monkeypatch):
    calls = []

    def offline(path, *a, **k):
        calls.append((path, k.get("split")))
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(DataError) as ei:
        load_records("counterfact", "someone/counterfact-edits", split="validation")
    msg = str(ei.value)
    assert "someone/counterfact-edits" in msg and "--train-file" in msg and DATA_DIR_ENV in msg
    assert "ConnectionError" in msg
    assert calls == [("someone/counterfact-edits", "validation")]


def test_hub_id_success_path(monkeypatch):
    rows = [
        {"case_id": 7, "prompt": "P is in", "target_new": " Q ", "subject": "P", "ground_truth": "R",
         "rephrase_prompt": "P lies in", "locality_prompt": "S is in", "locality_ground_truth": "T"},
    ]

    class FakeDataset:
        def to_list(self):
            return rows

    monkeypatch.setattr(datasets, "load_dataset", lambda path, *a, **k: FakeDataset())
    recs = load_records("counterfact", "someone/cf")
    assert recs.origin == "someone/cf" and recs[0].target == "Q" and recs[0].case_id == 7


# --------------------------------------------------------------------------- demo set


def test_demo_set():
    recs = load_records("demo")
    raw = json.loads(DEMO_FACTS_PATH.read_text())
    assert len(recs) == len(raw) >= 120 and recs.skipped == () and recs.reader == "datasets"
    _assert_clean(recs)
    assert {r.source for r in recs} == {"demo"}
    assert len({r.prompt for r in recs}) == len(recs), "duplicate demo prompts"
    assert len({r.rephrases[0] for r in recs}) == len(recs)
    assert [r.case_id for r in recs] == list(range(len(recs)))
    for r in recs:
        assert r.target != r.true_target and r.loc_answer and r.true_target
        assert r.subject and r.subject.lower() in r.prompt.lower()
        assert r.subject.lower() not in r.loc_prompt.lower()
        assert 1 <= len(r.target.split()) <= 3
        assert all(s.isascii() for s in (r.prompt, r.target, r.rephrases[0], r.loc_prompt, r.loc_answer))
    train, dev = load_records("demo", records=DEMO_TRAIN), load_records("demo", records=DEMO_DEV)
    assert len(train) == 100 and len(dev) == len(recs) - 100 and dev[0].index == 100


# --------------------------------------------------------------------------- EditRecord and sampling


def _rec(i, n_reph=2, source="counterfact"):
    return EditRecord(
        prompt=f"prompt {i}", target=f"t{i}", rephrases=tuple(f"reph {i}.{k}" for k in range(n_reph)),
        loc_prompt=f"loc {i}", loc_answer=f"la{i}", subject=f"s{i}", true_target=f"true{i}",
        source=source, index=i,
    )


def test_edit_record_is_frozen():
    r = _rec(0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.target = "x"  # type: ignore[misc]


def test_rephrase_choice_is_seeded():
    r = _rec(0, n_reph=5)
    assert all(r.rephrase(123) == r.rephrase(123) for _ in range(3))
    a = [r.rephrase(g) for g in [np.random.default_rng(5)] * 20]
    b = [r.rephrase(g) for g in [np.random.default_rng(5)] * 20]
    assert a == b and set(a) <= set(r.rephrases) and len(set(a)) > 1
    assert {r.rephrase(s) for s in range(50)} == set(r.rephrases)
    assert _rec(1, n_reph=0).rephrase(0) == "prompt 1"
    # the generator advances by exactly one draw whatever the number of rephrases
    g, h = np.random.default_rng(3), np.random.default_rng(3)
    _rec(2, n_reph=1).rephrase(g)
    h.random()
    assert g.random() == h.random()
    with pytest.raises(TypeError):
        r.rephrase(None)  # type: ignore[arg-type]


def test_sample_training_loc_never_same_record():
    recs = [_rec(i) for i in range(5)]
    rng = np.random.default_rng(0)
    seen = set()
    for i in range(5):
        for _ in range(200):
            p, a = sample_training_loc(recs, i, rng)
            assert (p, a) != ("loc %d" % i, "la%d" % i)
            seen.add((i, p))
    assert len(seen) == 5 * 4  # every other record is reachable
    two = [_rec(0), _rec(1)]
    assert all(sample_training_loc(two, 0, s) == ("loc 1", "la1") for s in range(20))
    with pytest.raises(DataError):
        sample_training_loc(two[:1], 0, 0)
    assert sample_training_loc(recs, 2, 9) == sample_training_loc(recs, 2, 9)
    assert training_locality(recs, 3) == training_locality(recs, 3)


def test_sample_training_loc_zsre_uses_other_questions():
    recs = [_rec(i, source="zsre") for i in range(4)]
    for s in range(30):
        p, a = sample_training_loc(recs, 1, s)
        j = int(p.split()[1])
        assert j != 1 and a == f"true{j}"


@needs_data
def test_sample_training_loc_real_zsre():
    recs = _load("zsre", ZSRE_TRAIN)
    rng = np.random.default_rng(1)
    for i in range(0, len(recs), 7):
        p, a = sample_training_loc(recs, i, rng)
        assert p != recs[i].prompt
        assert any(r.prompt == p and r.true_target == a for r in recs)
