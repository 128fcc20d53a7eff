"""Plain-text locality passages (e.g. WikiText) for meta-training: extra locality inputs on generic text.

Whole-answer locality is lost at near-tie tokens inside long answers, i.e. at generic text positions
(TRAINING_NOTES.md, sessions 18 and 20); question-and-answer locality inputs hold few of those. A passage here is a
``(prompt, continuation)`` pair cut from running text, used exactly like a locality pair (the KL is taken over all of
its tokens with ``--loc-loss-on all``).

Reading: a local file goes through ``datasets.load_dataset("text", data_files=path)`` (one example per line); any
other string is a Hugging Face Hub id, ``ID`` or ``ID:CONFIG`` (e.g. ``wikitext:wikitext-2-raw-v1``), whose
``train`` split has a ``text`` column. Rule for WikiText's markup: heading lines (`` = Title = ``) and empty lines are
skipped, and the tokeniser's split markers `` @-@ ``, `` @,@ ``, `` @.@ `` are joined back to ``-``, ``,``, ``.``.
Passages are consecutive runs of ``words`` words of a line (the last, shorter run of a line is dropped), split in
half into prompt and continuation; the first ``limit`` of them in file order are kept.
"""
from __future__ import annotations

import os
import re

from .errors import DataError

_JOINS = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))
_HEADING = re.compile(r"^\s*=.*=\s*$")


def clean_text_line(line: str) -> str:
    """A WikiText line with its split markers joined back (``"1 @,@ 000"`` -> ``"1,000"``); other text unchanged."""
    for a, b in _JOINS:
        line = line.replace(a, b)
    return line.strip()


def _read_lines(source: str) -> list[str]:
    import datasets
    if os.path.isfile(source):
        ds = datasets.load_dataset("text", data_files=source, split="train")
    elif source.startswith((".", "/", "~")) or source.endswith((".txt", ".raw", ".text")):
        raise DataError(f"locality text {source!r}: no such file (give a local text file, or a Hub id such as "
                        f"'wikitext:wikitext-2-raw-v1')")
    else:
        hub_id, _, config = source.partition(":")
        try:
            ds = datasets.load_dataset(hub_id, config or None, split="train")
        except Exception as e:  # network, unknown id: name the source and the way out
            raise DataError(f"locality text {source!r}: could not load it from the Hugging Face Hub ({e}); "
                            f"give a local text file instead") from e
        if "text" not in ds.column_names:
            raise DataError(f"locality text {source!r}: the dataset has no 'text' column ({ds.column_names})")
    return list(ds["text"])


def text_passages(lines, words: int = 16, limit: int | None = None) -> list[tuple[str, str]]:
    """``(prompt, continuation)`` pairs from text lines by the module's rule (see above)."""
    if words < 2:
        raise DataError(f"a locality passage needs at least 2 words (a prompt and a continuation), not {words}")
    out: list[tuple[str, str]] = []
    half = words // 2
    for line in lines:
        if not line or not line.strip() or _HEADING.match(line):
            continue
        ws = clean_text_line(line).split()
        for s in range(0, len(ws) - words + 1, words):
            out.append((" ".join(ws[s:s + half]), " ".join(ws[s + half:s + words])))
            if limit is not None and len(out) >= limit:
                return out
    return out


def load_text_passages(source: str, words: int = 16, limit: int | None = None) -> list[tuple[str, str]]:
    """Locality passages of a text file or Hub dataset (see the module docstring); raises :class:`DataError` when
    the source holds none."""
    passages = text_passages(_read_lines(source), words, limit)
    if not passages:
        raise DataError(f"locality text {source!r} holds no line of at least {words} words")
    return passages
