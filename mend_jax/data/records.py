"""The one record type every data source is turned into: :class:`EditRecord`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

__all__ = ["EditRecord", "RngOrSeed", "as_generator"]

#: A seeded source of randomness: a ``numpy.random.Generator`` or an ``int`` seed.
RngOrSeed = Union[np.random.Generator, int, np.integer]


def as_generator(rng_or_seed: RngOrSeed) -> np.random.Generator:
    """Return ``rng_or_seed`` if it is a Generator, else a fresh Generator seeded with it.

    ``None`` is refused on purpose: every random choice in the data layer must be seeded
    (MEND's original resamples rephrases with unseeded ``random.choice``; spec section 7.8).
    """
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    if isinstance(rng_or_seed, (bool, np.bool_)) or not isinstance(rng_or_seed, (int, np.integer)):
        raise TypeError(
            f"expected a numpy.random.Generator or an int seed, got {type(rng_or_seed).__name__}"
        )
    return np.random.default_rng(int(rng_or_seed))


@dataclass(frozen=True)
class EditRecord:
    """One edit request plus what is needed to evaluate it.

    Text fields are already cleaned by the loaders (see ``mend_jax.data.loaders``):
    targets and prompts carry no surrounding whitespace. Targets are stored *without* the
    leading space that ROME/GPT-style tokenisation puts before a continuation; the
    tokenisation layer joins ``prompt + " " + target``.

    Attributes:
        prompt: edit prompt x_e (a question for zsRE, a sentence prefix for CounterFact).
        target: new target y_e.
        rephrases: equivalence prompts x'_e (one for zsRE / flat CounterFact, two for the
            ROME format); empty only if the source has none.
        loc_prompt, loc_answer: an unrelated prompt and its (true) answer, used for
            *evaluation* locality. For training locality see ``sample_training_loc``.
        subject: the edited entity, if the source names it.
        true_target: the old/true answer, if known.
        portability: (prompt, answer) pairs for multi-hop/portability evaluation.
        source: ``"zsre"``, ``"counterfact"`` or ``"demo"``.
        index: position of the record in its file (0-based, counted *before* any skipping,
            so it matches record ranges such as ``--records 0:500``).
        case_id: CounterFact ``case_id`` (None for zsRE).
        neighborhood: all neighbourhood (prompt, true answer) pairs (ROME-format CounterFact;
            empty otherwise).
    """

    prompt: str
    target: str
    rephrases: tuple[str, ...]
    loc_prompt: str
    loc_answer: str
    subject: str | None = None
    true_target: str | None = None
    portability: tuple[tuple[str, str], ...] = ()
    source: str = ""
    index: int = -1
    case_id: int | None = None
    neighborhood: tuple[tuple[str, str], ...] = ()

    def rephrase(self, rng_or_seed: RngOrSeed) -> str:
        """Pick one equivalence prompt with a seeded choice.

        ``rng_or_seed`` is a ``numpy.random.Generator`` (advanced by one draw, even when
        there is a single rephrase, so the stream does not depend on the data) or an int
        seed (same seed, same choice). Falls back to ``prompt`` when the record has no
        rephrase, which is what MEND does with ``data.rephrase=False``.
        """
        u = float(as_generator(rng_or_seed).random())  # always exactly one draw
        n = len(self.rephrases)
        if n == 0:
            return self.prompt
        return self.rephrases[min(int(u * n), n - 1)]
