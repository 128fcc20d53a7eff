"""Load model-editing data files into :class:`~mend_jax.data.records.EditRecord` lists.

Supported kinds (``load_records(kind, path_or_id, ...)``):

* ``"zsre"``: the MEND/ROME/EasyEdit zsRE format (``zsre_mend_{train,eval}*.json``):
  ``subject, src, pred, rephrase, alt, answers, loc, loc_ans, cond`` and, in the EasyEdit
  portability files, ``portability{"Recalled Relation", "New Question", "New Answer"}``.
  prompt = ``src``, target = ``alt``, rephrases = ``(rephrase,)``, true_target = ``answers[0]``,
  loc = (``loc`` turned into an NQ-style question, ``loc_ans``): the ``"nq question: "``
  prefix is removed, the first letter capitalised and a ``"?"`` appended, which is how
  MEND's own NQ file stores its questions (spec section 5.1).
* ``"counterfact"``: either CounterFact format, detected from the keys of the first record:

  - *flat* EasyEdit format (``counterfact-{train,val,edit}.json``): ``case_id, prompt,
    target_new, subject, ground_truth, rephrase_prompt, locality_prompt,
    locality_ground_truth``;
  - *full ROME* format (``counterfact_portability_gpt4.json``): ``requested_rewrite{prompt
    with "{}", subject, target_new{str}, target_true{str}}, paraphrase_prompts,
    neighborhood_prompts`` (+ ``portability``). prompt = ``requested_rewrite.prompt`` with
    ``"{}"`` replaced by the subject; rephrases = all paraphrase prompts; loc =
    (``neighborhood_prompts[0]``, ``target_true``) since neighbourhood prompts share the
    true object; every neighbourhood prompt is kept in ``EditRecord.neighborhood``.
* ``"demo"``: ``demo_facts.json``, shipped inside this package (flat CounterFact schema).
  Its 134 counterfactual edits about well-known entities were written by hand for this
  project; no third-party data is in it. Split convention: records 0-99 are *train*
  (:data:`DEMO_TRAIN`), records 100-end are *dev* (:data:`DEMO_DEV`).

Reading. Local files go through ``datasets.load_dataset("json", data_files=path,
split="train", keep_in_memory=True)`` (with a temporary ``cache_dir``, so nothing is cached
on disk). A ``path_or_id`` that is not an existing file (also
looked up under ``$MEND_JAX_DATA_DIR``) and does not look like a file name is treated as a
Hugging Face Hub dataset id: ``datasets.load_dataset(path_or_id, split=split)``; a failure
there raises :class:`DataError` telling the user to pass a local JSON file or set
``MEND_JAX_DATA_DIR``.

Data-quirks rule (the same for every kind):

* targets (and true targets / locality answers) are ``.strip()``-ped: some zsRE ``alt``
  values carry a leading space (10 in the 1k train file, 15 in the eval file). The
  tokenisation layer adds the single separating space itself.
* a record whose target (or prompt) is empty after stripping is **skipped**, never a crash:
  zsRE train records 534 and 723 have ``alt == ""``. The positions of skipped records are
  in ``LoadedRecords.skipped`` and a :class:`DataWarning` says how many were skipped.
* prompts (edit, rephrase, locality, neighbourhood, portability) are stripped of
  surrounding whitespace: some ROME paraphrase prompts start with spaces left over from
  their random-text prefix (e.g. ``"     . Jesse Saunders was originally from"``).
* the ROME-format CounterFact file has had every non-ASCII character stripped upstream
  (e.g. ``"Kyto Prefecture"`` for ``"Kyōto Prefecture"``); this is a known quirk of the
  source and is **not** repaired.

Record selection (``records=`` / ``indices=``) is applied to positions in the file
*before* skipping, so record numbers always mean file positions (``EditRecord.index``).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import DataError, DataWarning
from .records import EditRecord, RngOrSeed, as_generator

__all__ = [
    "DATA_DIR_ENV",
    "DEMO_DEV",
    "DEMO_FACTS_PATH",
    "DEMO_TRAIN",
    "KINDS",
    "LoadedRecords",
    "load_indices_file",
    "load_records",
    "nq_question_to_prompt",
    "parse_record_range",
    "resolve_data_path",
    "sample_training_loc",
    "training_locality",
]

#: Environment variable naming a folder that relative data paths are also looked up in.
DATA_DIR_ENV = "MEND_JAX_DATA_DIR"
#: The hand-written demo set shipped with the package.
DEMO_FACTS_PATH = Path(__file__).with_name("demo_facts.json")
#: Demo split convention: records 0-99 train, 100-end dev.
DEMO_TRAIN = slice(0, 100)
DEMO_DEV = slice(100, None)

KINDS = ("zsre", "counterfact", "demo")

ZSRE_KEYS = ("subject", "src", "rephrase", "alt", "answers", "loc", "loc_ans")
COUNTERFACT_FLAT_KEYS = (
    "case_id",
    "prompt",
    "target_new",
    "subject",
    "ground_truth",
    "rephrase_prompt",
    "locality_prompt",
    "locality_ground_truth",
)
COUNTERFACT_ROME_KEYS = ("case_id", "requested_rewrite", "paraphrase_prompts", "neighborhood_prompts")

NQ_PREFIX = "nq question: "
_FILE_SUFFIXES = (".json", ".jsonl")
# Training-locality draws retried when the drawn record's prompt equals the edit prompt.
_MAX_LOC_TRIES = 16


class LoadedRecords(list):
    """A ``list[EditRecord]`` that also says where it came from and what was skipped.

    Attributes:
        origin: the file path or hub id that was read.
        skipped: file positions of records skipped by the quirks rule (empty target/prompt).
        fmt: ``"zsre"``, ``"counterfact-flat"`` or ``"counterfact-rome"``.
        reader: ``"datasets"`` normally; ``"json"`` if the json-module fallback was used.
        n_in_file: number of records in the file (before selection and skipping).
    """

    def __init__(
        self,
        items: Iterable[EditRecord] = (),
        *,
        origin: str = "",
        skipped: Sequence[int] = (),
        fmt: str = "",
        reader: str = "",
        n_in_file: int = 0,
    ) -> None:
        super().__init__(items)
        self.origin = origin
        self.skipped = tuple(skipped)
        self.fmt = fmt
        self.reader = reader
        self.n_in_file = n_in_file


# --------------------------------------------------------------------------- arguments


def parse_record_range(text: str) -> slice:
    """Parse a CLI record range ``"A:B"`` (file positions A..B-1) into ``slice(A, B)``.

    ``"A:"`` and ``":B"`` leave one end open. Numbers must be non-negative integers and
    ``A < B``. Raises :class:`DataError` for anything else (``"5:2"``, ``"x:y"``, ``"7"``).
    """
    if not isinstance(text, str):
        raise DataError(f"record range must be a string like '0:500', got {type(text).__name__}")
    m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
    if m is None:
        raise DataError(
            f"bad record range {text!r}: expected 'A:B' with non-negative whole numbers "
            "(e.g. '0:500'; 'A:' or ':B' leave that end open)"
        )
    start = int(m.group(1)) if m.group(1) else None
    stop = int(m.group(2)) if m.group(2) else None
    if start is not None and stop is not None and start >= stop:
        raise DataError(
            f"bad record range {text!r}: start {start} must be smaller than end {stop} "
            "(the end is exclusive)"
        )
    return slice(start, stop)


def load_indices_file(path: str | os.PathLike[str]) -> list[int]:
    """Read record positions from a file.

    Accepted contents: a JSON list of ints, a JSON object with an ``"indices"`` list, or
    plain text with integers separated by whitespace or commas. Order is kept. Range and
    duplicate checks happen when the indices are applied (``load_records(indices=...)``).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read indices file {str(p)!r}: {exc}") from exc
    try:
        obj: Any = json.loads(text)
    except json.JSONDecodeError:
        tokens = [t for t in re.split(r"[\s,]+", text.strip()) if t]
        try:
            obj = [int(t) for t in tokens]
        except ValueError:
            raise DataError(
                f"indices file {str(p)!r} is neither JSON nor a list of whole numbers "
                "separated by spaces/commas/newlines"
            ) from None
    if isinstance(obj, dict):
        if "indices" not in obj:
            raise DataError(
                f"indices file {str(p)!r} holds a JSON object without an 'indices' key "
                f"(keys found: {sorted(obj)})"
            )
        obj = obj["indices"]
    if not isinstance(obj, list):
        raise DataError(f"indices file {str(p)!r} must hold a list of ints, got {type(obj).__name__}")
    bad = [v for v in obj if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise DataError(f"indices file {str(p)!r} has non-integer entries, e.g. {bad[0]!r}")
    return list(obj)


def _select_positions(
    n: int, records: slice | str | None, indices: Sequence[int] | None, origin: str
) -> list[int]:
    if records is not None and indices is not None:
        raise DataError("pass either records= (a range) or indices= (a list), not both")
    if records is not None:
        if isinstance(records, str):
            records = parse_record_range(records)
        if not isinstance(records, slice):
            raise DataError(f"records= must be a slice or an 'A:B' string, got {type(records).__name__}")
        start = 0 if records.start is None else records.start
        stop = n if records.stop is None else records.stop
        step = 1 if records.step is None else records.step
        for name, v in (("start", start), ("stop", stop), ("step", step)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise DataError(f"record range {name} must be an int, got {v!r}")
        if start < 0 or stop < 0 or step <= 0:
            raise DataError(
                f"record range {start}:{stop} (step {step}) must use non-negative positions "
                "and a positive step"
            )
        if start > n or stop > n:
            raise DataError(
                f"record range {start}:{stop} is outside {origin!r}, which has {n} records "
                f"(positions 0..{n - 1})"
            )
        if start >= stop:
            raise DataError(f"record range {start}:{stop} selects no records of {origin!r}")
        return list(range(start, stop, step))
    if indices is not None:
        out = list(indices)
        bad = [v for v in out if isinstance(v, bool) or not isinstance(v, int)]
        if bad:
            raise DataError(f"indices must be ints, got {bad[0]!r}")
        outside = [v for v in out if not 0 <= v < n]
        if outside:
            raise DataError(
                f"indices {outside[:5]}{'...' if len(outside) > 5 else ''} are outside "
                f"{origin!r}, which has {n} records (positions 0..{n - 1})"
            )
        if len(set(out)) != len(out):
            dup = sorted({v for v in out if out.count(v) > 1})
            raise DataError(f"indices contain duplicates: {dup[:5]}")
        return out
    return list(range(n))


# --------------------------------------------------------------------------- reading


def resolve_data_path(path_or_id: str | os.PathLike[str]) -> Path | None:
    """Return the local file ``path_or_id`` names, or None if there is none.

    Looks at the path as given, then (for a relative path) under ``$MEND_JAX_DATA_DIR``.
    """
    p = Path(os.path.expanduser(os.fspath(path_or_id)))
    if p.exists():
        return p
    base = os.environ.get(DATA_DIR_ENV)
    if base and not p.is_absolute():
        q = Path(os.path.expanduser(base)) / p
        if q.exists():
            return q
    return None


def _looks_like_file(s: str) -> bool:
    return (
        s.lower().endswith(_FILE_SUFFIXES)
        or s.startswith((".", "/", "~"))
        or "\\" in s
        or os.path.isabs(s)
    )


def _read_local_json(path: Path) -> tuple[list[dict[str, Any]], str]:
    """Rows of a local JSON / JSON-lines file, and which reader produced them."""
    import datasets

    if path.is_dir():
        raise DataError(f"{str(path)!r} is a folder; pass the JSON file inside it")
    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # no "Generating train split" bars for small local files
    try:
        # keep_in_memory + a throw-away cache_dir: nothing is left in ~/.cache for small local
        # files (no stale Arrow caches, no lock files); re-parsing a 10k-record file takes ~0.5 s.
        with tempfile.TemporaryDirectory(prefix="mend_jax_json_") as cache_dir:
            ds = datasets.load_dataset(
                "json", data_files=str(path), split="train", keep_in_memory=True, cache_dir=cache_dir
            )
            return ds.to_list(), "datasets"
    except Exception as exc:  # noqa: BLE001 - any datasets/Arrow failure triggers the fallback
        # Fallback, so valid JSON is never refused: Arrow wants one type per column, and older
        # datasets releases raise on a field whose type differs between records (e.g. a
        # ``portability`` dict in one record and a string in another; datasets 5.x stores
        # such a column as a ``Json`` feature instead). datasets also refuses a file holding
        # an empty list. Such files are read with the json module; the result has the same
        # shape (a list of dicts), and a DataWarning says the fallback was used.
        try:
            rows = _read_with_json_module(path)
        except DataError as exc2:
            raise DataError(
                f"cannot read {str(path)!r}: datasets failed ({type(exc).__name__}: {exc}); "
                f"json fallback failed too ({exc2})"
            ) from exc
        warnings.warn(
            f"{path}: datasets could not read the file ({type(exc).__name__}); "
            "read it with the json module instead",
            DataWarning,
            stacklevel=3,
        )
        return rows, "json"
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


def _read_with_json_module(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        try:  # JSON lines
            obj = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise DataError(f"not valid JSON or JSON lines: {exc}") from None
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise DataError("expected a JSON list of objects")
    return obj


def _read_hub(dataset_id: str, split: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split=split)
        rows = ds.to_list() if hasattr(ds, "to_list") else list(ds)
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, bad split, ...
        base = os.environ.get(DATA_DIR_ENV)
        where = f" (also looked under ${DATA_DIR_ENV}={base!r})" if base else ""
        raise DataError(
            f"cannot load {dataset_id!r}: it is not an existing local file{where}, and loading "
            f"it as a Hugging Face Hub dataset id (split {split!r}) failed: "
            f"{type(exc).__name__}: {exc}. Pass a local JSON file path with --train-file/--file, "
            f"or set {DATA_DIR_ENV} to the folder that holds the data files."
        ) from exc
    return [dict(r) for r in rows]


def _read_rows(path_or_id: str | os.PathLike[str], split: str) -> tuple[list[dict[str, Any]], str, str]:
    """(rows, origin, reader) for a local file or a hub dataset id."""
    local = resolve_data_path(path_or_id)
    if local is not None:
        rows, reader = _read_local_json(local)
        return rows, str(local), reader
    s = os.fspath(path_or_id)
    if _looks_like_file(s):
        base = os.environ.get(DATA_DIR_ENV)
        where = f" or under ${DATA_DIR_ENV}={base!r}" if base else f" (${DATA_DIR_ENV} is not set)"
        raise DataError(
            f"data file {s!r} not found (looked at the path as given{where}). Pass an existing "
            f"local JSON file path with --train-file/--file, or set {DATA_DIR_ENV} to the folder "
            "that holds the data files."
        )
    return _read_hub(s, split), s, "datasets-hub"


# --------------------------------------------------------------------------- parsing


def _text(v: Any) -> str:
    """A stripped string; None (an Arrow-filled missing value) becomes ""."""
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):  # e.g. KnowEdit-style ground_truth lists
        return _text(v[0]) if v else ""
    return str(v).strip()


def _present_keys(row: dict[str, Any]) -> set[str]:
    # datasets fills keys that are missing in some records with None; ignore those.
    return {k for k, v in row.items() if v is not None}


def nq_question_to_prompt(loc: str) -> str:
    """``"nq question: who played x"`` -> ``"Who played x?"`` (MEND's NQ question style)."""
    q = loc.strip()
    head = NQ_PREFIX.rstrip()  # "nq question:"; the strip above may have eaten the space
    if q.lower().startswith(head):
        q = q[len(head):].strip()
    if not q:
        return ""
    q = q[0].upper() + q[1:]
    return q if q.endswith("?") else q + "?"


def _portability_pairs(port: Any) -> tuple[tuple[str, str], ...]:
    """EasyEdit ``portability`` dict ("New Question"/"New Answer") -> ((q, a),) or ()."""
    if not isinstance(port, dict):
        return ()
    q, a = _text(port.get("New Question")), _text(port.get("New Answer"))
    return ((q, a),) if q and a else ()


def _case_id(v: Any) -> int | None:
    if v is None:
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _parse_zsre(row: dict[str, Any], pos: int, source: str) -> EditRecord | None:
    prompt, target = _text(row.get("src")), _text(row.get("alt"))
    if not prompt or not target:
        return None
    rephrase = _text(row.get("rephrase"))
    answers = row.get("answers")
    true_target = _text(answers) or None
    return EditRecord(
        prompt=prompt,
        target=target,
        rephrases=(rephrase,) if rephrase else (),
        loc_prompt=nq_question_to_prompt(_text(row.get("loc"))),
        loc_answer=_text(row.get("loc_ans")),
        subject=_text(row.get("subject")) or None,
        true_target=true_target,
        portability=_portability_pairs(row.get("portability")),
        source=source,
        index=pos,
    )


def _parse_cf_flat(row: dict[str, Any], pos: int, source: str) -> EditRecord | None:
    prompt, target = _text(row.get("prompt")), _text(row.get("target_new"))
    if not prompt or not target:
        return None
    rephrase = _text(row.get("rephrase_prompt"))
    return EditRecord(
        prompt=prompt,
        target=target,
        rephrases=(rephrase,) if rephrase else (),
        loc_prompt=_text(row.get("locality_prompt")),
        loc_answer=_text(row.get("locality_ground_truth")),
        subject=_text(row.get("subject")) or None,
        true_target=_text(row.get("ground_truth")) or None,
        portability=_portability_pairs(row.get("portability")),
        source=source,
        index=pos,
        case_id=_case_id(row.get("case_id")),
    )


def _parse_cf_rome(row: dict[str, Any], pos: int, source: str, origin: str) -> EditRecord | None:
    rr = row.get("requested_rewrite")
    if not isinstance(rr, dict):
        raise DataError(f"{origin}: record {pos} has no 'requested_rewrite' object")
    subject = _text(rr.get("subject"))
    template = rr.get("prompt") or ""
    if "{}" not in template:
        raise DataError(
            f"{origin}: record {pos}: requested_rewrite.prompt {template!r} has no '{{}}' "
            "placeholder for the subject"
        )
    # str.replace rather than str.format: a literal brace elsewhere in a prompt must not break it.
    prompt = template.replace("{}", subject).strip()
    target = _text((rr.get("target_new") or {}).get("str"))
    if not prompt or not target:
        return None
    true_target = _text((rr.get("target_true") or {}).get("str"))
    rephrases = tuple(t for t in (_text(p) for p in row.get("paraphrase_prompts") or ()) if t)
    neighborhood = tuple(
        (t, true_target) for t in (_text(p) for p in row.get("neighborhood_prompts") or ()) if t
    )
    loc_prompt, loc_answer = neighborhood[0] if neighborhood else ("", "")
    return EditRecord(
        prompt=prompt,
        target=target,
        rephrases=rephrases,
        loc_prompt=loc_prompt,
        loc_answer=loc_answer,
        subject=subject or None,
        true_target=true_target or None,
        portability=_portability_pairs(row.get("portability")),
        source=source,
        index=pos,
        case_id=_case_id(row.get("case_id")),
        neighborhood=neighborhood,
    )


def _detect_format(kind: str, keys: set[str], origin: str) -> str:
    if kind == "zsre":
        if set(ZSRE_KEYS) <= keys:
            return "zsre"
        raise DataError(
            f"{origin} is not a zsRE (MEND/ROME/EasyEdit) file: expected keys {list(ZSRE_KEYS)}, "
            f"found keys {sorted(keys)}"
        )
    if set(COUNTERFACT_ROME_KEYS) <= keys:
        return "counterfact-rome"
    if set(COUNTERFACT_FLAT_KEYS) <= keys:
        return "counterfact-flat"
    raise DataError(
        f"{origin} is not a CounterFact file: expected the flat EasyEdit keys "
        f"{list(COUNTERFACT_FLAT_KEYS)} or the ROME keys {list(COUNTERFACT_ROME_KEYS)}, "
        f"found keys {sorted(keys)}"
    )


def load_records(
    kind: str,
    path_or_id: str | os.PathLike[str] | None = None,
    *,
    split: str = "train",
    records: slice | str | None = None,
    indices: Sequence[int] | None = None,
) -> LoadedRecords:
    """Load an editing dataset as a list of :class:`EditRecord` (see the module docstring).

    Args:
        kind: ``"zsre"``, ``"counterfact"`` (flat or ROME format, auto-detected) or ``"demo"``.
        path_or_id: a local JSON/JSON-lines file (also looked up under ``$MEND_JAX_DATA_DIR``)
            or a Hugging Face Hub dataset id. For ``"demo"`` it may be None (the shipped file).
        split: the split to load for a hub id (local files always have one split).
        records: a slice or ``"A:B"`` string of file positions to keep.
        indices: file positions to keep, in this order (e.g. from :func:`load_indices_file`).

    Returns:
        :class:`LoadedRecords` (a list) whose ``skipped`` attribute lists the file positions
        skipped by the quirks rule. Raises :class:`DataError` for unusable input.
    """
    if kind not in KINDS:
        raise DataError(f"unknown data kind {kind!r}; expected one of {list(KINDS)}")
    if path_or_id is None or (isinstance(path_or_id, str) and not path_or_id.strip()):
        if kind != "demo":
            raise DataError(
                f"no data file given for kind {kind!r}: pass a local JSON file path with "
                f"--train-file/--file, or set {DATA_DIR_ENV}"
            )
        path_or_id = DEMO_FACTS_PATH
    rows, origin, reader = _read_rows(path_or_id, split)
    n = len(rows)
    if n == 0:
        raise DataError(f"{origin} holds no records")
    fmt = _detect_format(kind, _present_keys(rows[0]), origin)
    if kind == "demo" and fmt != "counterfact-flat":
        raise DataError(
            f"{origin}: demo files use the flat CounterFact keys {list(COUNTERFACT_FLAT_KEYS)}"
        )
    positions = _select_positions(n, records, indices, origin)
    source = "demo" if kind == "demo" else ("zsre" if fmt == "zsre" else "counterfact")

    out: list[EditRecord] = []
    skipped: list[int] = []
    for pos in positions:
        row = rows[pos]
        try:
            if fmt == "zsre":
                rec = _parse_zsre(row, pos, source)
            elif fmt == "counterfact-flat":
                rec = _parse_cf_flat(row, pos, source)
            else:
                rec = _parse_cf_rome(row, pos, source, origin)
        except DataError:
            raise
        except (AttributeError, TypeError, KeyError, IndexError) as exc:
            raise DataError(f"{origin}: record {pos} is malformed ({type(exc).__name__}: {exc})") from exc
        if rec is None:
            skipped.append(pos)
        else:
            out.append(rec)
    if skipped:
        warnings.warn(
            f"{origin}: skipped {len(skipped)} record(s) whose prompt or target is empty after "
            f"stripping whitespace, at file positions {skipped[:20]}{'...' if len(skipped) > 20 else ''}",
            DataWarning,
            stacklevel=2,
        )
    return LoadedRecords(out, origin=origin, skipped=skipped, fmt=fmt, reader=reader, n_in_file=n)


# --------------------------------------------------------------------------- training locality


def _training_loc_pair(rec: EditRecord) -> tuple[str, str]:
    # zsRE: MEND meta-trains with other zsRE questions and their true answer (spec 5.1, 7.7).
    if rec.source == "zsre" and rec.true_target:
        return rec.prompt, rec.true_target
    # CounterFact / demo (and a zsRE record without answers): that record's locality pair.
    return rec.loc_prompt, rec.loc_answer


def sample_training_loc(records: Sequence[EditRecord], i: int, rng: RngOrSeed) -> tuple[str, str]:
    """A training locality example for edit ``records[i]`` taken from another record ``j != i``.

    As in MEND's training, x_loc comes from *other records of the training set*:
    zsRE -> (record j's question ``prompt``, its true answer ``true_target``);
    CounterFact / demo -> (record j's ``loc_prompt``, ``loc_answer``).

    ``i`` indexes ``records`` (the list, not ``EditRecord.index``). ``j`` is drawn uniformly
    from the other positions with the seeded ``rng`` (Generator or int seed); a draw whose
    prompt equals the edit prompt (duplicate prompts exist in CounterFact) is redrawn up to
    16 times. Raises :class:`DataError` with fewer than two records.
    """
    n = len(records)
    if n < 2:
        raise DataError("sample_training_loc needs at least 2 records (j must differ from i)")
    if not -n <= i < n:
        raise IndexError(f"record {i} out of range for {n} records")
    i %= n
    gen = as_generator(rng)
    edit_prompt = records[i].prompt
    pair = ("", "")
    for _ in range(_MAX_LOC_TRIES):
        j = int(gen.integers(n - 1))
        j += j >= i  # uniform over {0..n-1} \ {i}
        pair = _training_loc_pair(records[j])
        if pair[0] and pair[1] and pair[0] != edit_prompt:
            break
    return pair


def training_locality(records: Sequence[EditRecord], rng: RngOrSeed) -> list[tuple[str, str]]:
    """One :func:`sample_training_loc` pair per record, drawn in order from one seeded stream."""
    gen = as_generator(rng)
    return [sample_training_loc(records, i, gen) for i in range(len(records))]
