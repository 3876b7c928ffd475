"""The column layout of an experience buffer's checkpoint: which named array holds what.

The buffer keeps one record per stored trajectory and per known question. A checkpoint holds
them as same-length columns, one per record field, with a stand-in value where a field is None;
the variable-length parts (each question's prompt token ids, each bucket's members in pool
order) as one flat array plus the lengths; the response tokens and log-probs as the two large
arrays (persistence.LARGE_ARRAYS), concatenated in collection order. This module names those
arrays and converts records to columns and back, checking what it reads; what the fields mean
is buffer.py's business, and how the arrays reach the disk is persistence.py's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class Column:
    """A record field saved as the array `name`; `none_as` is saved where the field is None.
    `missing_as`: the value of every record when the array is absent, for a column that
    checkpoints of an older format version do not have (None: the array must be there)."""

    name: str
    field: str
    dtype: type
    none_as: float | int | None = None  # None: the field is never None
    missing_as: float | int | None = None


@dataclass(frozen=True)
class Ragged:
    """Sequences saved flat (`values`) with their lengths (`lengths`; -1 for a missing sequence)."""

    values: str
    lengths: str
    dtype: type


TRAJECTORY_COLUMNS = (
    Column("traj_id", "id", np.int64),
    Column("traj_question_id", "question_id", np.int64),
    Column("traj_step", "step", np.int64),
    Column("traj_length", "length", np.int64),
    Column("traj_reward", "reward", np.float64),
    Column("traj_entropy_mean", "entropy_mean", np.float64, none_as=math.nan),
    Column("traj_replay_count", "replay_count", np.int64),
    Column("traj_last_replayed_step", "last_replayed_step", np.int64, none_as=-1),
)
QUESTION_COLUMNS = (
    Column("question_id", "question_id", np.int64),
    Column("question_accuracy", "accuracy", np.float64),
    Column("question_last_step", "last_step", np.int64),
    Column("question_bucket", "bucket", np.int64, none_as=-1),
    Column("question_fresh_visits", "fresh_visits", np.int64, missing_as=0),  # since format version 2
    Column("question_replays", "replays", np.int64, missing_as=0),  # since format version 2
)
PROMPTS = Ragged("prompt_tokens", "question_prompt_length", np.int32)  # one per question, in question order
POOL = Ragged("pool_members", "pool_sizes", np.int64)  # one per bucket 1..K-1
RETIRED = "retired"  # sorted ids of retired questions
TOKENS, LOG_PROBS = "tokens", "log_probs"  # int32 / float32, the stored spans in collection order


def to_columns(columns: Sequence[Column], records: Sequence) -> dict[str, np.ndarray]:
    return {c.name: np.array([_saved(getattr(r, c.field), c.none_as) for r in records], dtype=c.dtype)
            for c in columns}


def from_columns(arrays: dict[str, np.ndarray], columns: Sequence[Column]) -> dict[str, list]:
    """Field name -> the column's values as Python objects (None restored; `missing_as` for an
    absent column that has one); raises ValueError if a column without `missing_as` is missing,
    if one is of another dtype or shape, or if the columns differ in length."""
    values = {c.field: array(arrays, c.name, c.dtype).tolist() for c in columns
              if c.missing_as is None or c.name in arrays}
    check(len({len(v) for v in values.values()}) <= 1, f"columns {', '.join(c.name for c in columns)} differ in length")
    records = len(next(iter(values.values()), []))
    for c in columns:
        values.setdefault(c.field, [c.missing_as] * records)
    for c in columns:
        if c.none_as is not None:
            values[c.field] = [None if _is_stand_in(v, c.none_as) else v for v in values[c.field]]
    return values


def to_ragged(ragged: Ragged, sequences: Iterable[np.ndarray | None]) -> dict[str, np.ndarray]:
    sequences = list(sequences)
    present = [np.asarray(s, dtype=ragged.dtype) for s in sequences if s is not None]
    return {ragged.values: np.concatenate(present) if present else np.zeros(0, dtype=ragged.dtype),
            ragged.lengths: np.array([-1 if s is None else len(s) for s in sequences], dtype=np.int64)}


def from_ragged(arrays: dict[str, np.ndarray], ragged: Ragged) -> list[np.ndarray | None]:
    """The sequences (views of the flat array; None where the length is -1)."""
    values, lengths = array(arrays, ragged.values, ragged.dtype), array(arrays, ragged.lengths, np.int64)
    present = lengths >= 0
    check(bool(np.all(lengths >= -1)) and lengths[present].sum() == values.size,
          f"{ragged.lengths} does not add up to the size of {ragged.values}")
    pieces = iter(np.split(values, np.cumsum(lengths[present])[:-1]))
    return [next(pieces) if is_present else None for is_present in present.tolist()]


def array(arrays: dict[str, np.ndarray], name: str, dtype, ndim: int = 1) -> np.ndarray:
    check(name in arrays, f"array {name!r} is missing")
    value = arrays[name]
    check(value.dtype == dtype and value.ndim == ndim,
          f"array {name!r}: {value.dtype} {value.shape}, expected {ndim}-D {np.dtype(dtype)}")
    return value


def check(condition, what: str) -> None:
    if not condition:
        raise ValueError(what)


def _saved(value, none_as):
    return none_as if value is None else value


def _is_stand_in(value, none_as) -> bool:
    return math.isnan(value) if isinstance(none_as, float) and math.isnan(none_as) else value == none_as
