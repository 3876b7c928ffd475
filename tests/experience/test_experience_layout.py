"""The checkpoint's column layout: records to columns and back, None stand-ins, ragged arrays, checks."""

from dataclasses import dataclass

import numpy as np
import pytest

from exgrpo_verl.experience import checkpoint_layout as layout


@dataclass
class Record:
    id: int
    score: float | None
    last: int | None


COLUMNS = (layout.Column("r_id", "id", np.int64), layout.Column("r_score", "score", np.float64, none_as=np.nan),
           layout.Column("r_last", "last", np.int64, none_as=-1))


def test_records_round_trip_with_none_as_their_stand_ins():
    records = [Record(3, 0.5, None), Record(7, None, 4), Record(9, -1.25, 0)]
    arrays = layout.to_columns(COLUMNS, records)
    assert arrays["r_last"].tolist() == [-1, 4, 0] and np.isnan(arrays["r_score"][1])
    assert arrays["r_id"].dtype == np.int64 and arrays["r_score"].dtype == np.float64
    values = layout.from_columns(arrays, COLUMNS)
    assert [Record(*row) for row in zip(values["id"], values["score"], values["last"])] == records


def test_ragged_sequences_round_trip_with_missing_ones():
    sequences = [np.array([1, 2, 3], dtype=np.int32), None, np.zeros(0, dtype=np.int32), np.array([4], dtype=np.int32)]
    arrays = layout.to_ragged(layout.PROMPTS, sequences)
    assert arrays[layout.PROMPTS.lengths].tolist() == [3, -1, 0, 1]
    back = layout.from_ragged(arrays, layout.PROMPTS)
    assert back[1] is None and [b.tolist() for b in back if b is not None] == [[1, 2, 3], [], [4]]


@pytest.mark.parametrize("edit, message", [
    (lambda a: a.pop("r_last"), "'r_last' is missing"),
    (lambda a: a.update(r_id=a["r_id"].astype(np.int32)), "'r_id': int32"),
    (lambda a: a.update(r_score=a["r_score"][:1]), "differ in length"),
    (lambda a: a.update(r_id=a["r_id"].reshape(2, 1)), "expected 1-D"),
])
def test_bad_columns_are_named(edit, message):
    arrays = layout.to_columns(COLUMNS, [Record(1, 0.0, 1), Record(2, 1.0, 2)])
    edit(arrays)
    with pytest.raises(ValueError, match=message):
        layout.from_columns(arrays, COLUMNS)


def test_a_column_newer_than_the_checkpoint_reads_as_its_missing_value():
    columns = (*COLUMNS, layout.Column("r_visits", "visits", np.int64, missing_as=0))
    arrays = layout.to_columns(COLUMNS, [Record(1, 0.0, 1), Record(2, 1.0, 2)])  # written without r_visits
    assert layout.from_columns(arrays, columns)["visits"] == [0, 0]
    arrays["r_visits"] = np.array([3, 4], dtype=np.int64)
    assert layout.from_columns(arrays, columns)["visits"] == [3, 4]
    arrays["r_visits"] = np.array([3], dtype=np.int64)
    with pytest.raises(ValueError, match="differ in length"):
        layout.from_columns(arrays, columns)


def test_ragged_lengths_that_do_not_add_up_are_refused():
    arrays = layout.to_ragged(layout.POOL, [np.array([1, 2]), np.array([3])])
    arrays[layout.POOL.lengths][0] = 5
    with pytest.raises(ValueError, match="pool_sizes does not add up"):
        layout.from_ragged(arrays, layout.POOL)
