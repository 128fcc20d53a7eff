"""Editing data: the :class:`EditRecord` type and loaders for zsRE, CounterFact and the demo set.

Pure Python (numpy + datasets); no JAX. See :mod:`mend_jax.data.loaders` for formats,
the data-quirks rule and the demo split convention.
"""

from .errors import DataError, DataWarning
from .loaders import (
    DATA_DIR_ENV,
    DEMO_DEV,
    DEMO_FACTS_PATH,
    DEMO_TRAIN,
    KINDS,
    LoadedRecords,
    load_indices_file,
    load_records,
    nq_question_to_prompt,
    parse_record_range,
    resolve_data_path,
    sample_training_loc,
    training_locality,
)
from .records import EditRecord, RngOrSeed, as_generator

__all__ = [
    "DATA_DIR_ENV",
    "DEMO_DEV",
    "DEMO_FACTS_PATH",
    "DEMO_TRAIN",
    "KINDS",
    "DataError",
    "DataWarning",
    "EditRecord",
    "LoadedRecords",
    "RngOrSeed",
    "as_generator",
    "load_indices_file",
    "load_records",
    "nq_question_to_prompt",
    "parse_record_range",
    "resolve_data_path",
    "sample_training_loc",
    "training_locality",
]
