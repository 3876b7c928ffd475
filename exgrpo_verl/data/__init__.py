"""Data preparation: training and evaluation questions as verl parquet rows.

- `rows`: the row schema, the release's system prompt, `validate_rows`, dedupe and repeats.
- `sources`: the Hugging Face sources and their record -> row converters; downloads are lazy.
- `eval/`: the release's evaluation files, shipped with the package (`EVAL_DATA_DIR`, README there).

`scripts/prepare_data.py` is the command line over these functions.
"""

from exgrpo_verl.data.rows import (
    SYSTEM_PROMPT,
    RowValidationError,
    chat_prompt,
    make_row,
    question_id,
    repeat_rows,
    unique_questions,
    validate_rows,
    write_rows,
)
from exgrpo_verl.data.sources import (
    EVAL_DATA_DIR,
    EVAL_SOURCES,
    OPENR1,
    SOURCES,
    RecordError,
    Source,
    download_records,
    read_records,
    records_to_rows,
)

__all__ = [
    "EVAL_DATA_DIR",
    "EVAL_SOURCES",
    "OPENR1",
    "SOURCES",
    "SYSTEM_PROMPT",
    "RecordError",
    "RowValidationError",
    "Source",
    "chat_prompt",
    "download_records",
    "make_row",
    "question_id",
    "read_records",
    "records_to_rows",
    "repeat_rows",
    "unique_questions",
    "validate_rows",
    "write_rows",
]
