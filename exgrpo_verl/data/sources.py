"""Where the training and evaluation questions come from, and how their records become rows.

Each `Source` names a Hugging Face dataset and a converter from one of its records (a plain
dict) to (question, ground truth). Conversion never touches the network, so it runs the same on
downloaded records and on local JSONL / parquet files; only `download_records` imports
`datasets`, and only when called.

Sources, matched to the release's evaluation files where those exist:
- openr1: Elliott/Openr1-Math-46k-8192, the training questions. Its records are already verl
  rows (prompt messages, reward_model.ground_truth, and an R1 trace under `target` that is not
  used); plain records with problem/question and answer (or a solution with a \\boxed answer)
  are accepted too.
- aime24 / aime25 / amc23 / math500 / minerva / olympiad_bench: the in-distribution benchmarks.
  amc23 is AI-MO/aimo-validation-amc (83 AMC 2022-23 problems, float answers such as "142.0"),
  which is what the release's "amc" rows hold.
- arc_c / mmlu_pro: multiple choice, written as the release's ARC-c rows are:
  "question\\n\\nA) option\\nB) option\\n", ground truth the option label.
- gpqa_diamond: written as the release's GPQA rows are (its `data/valid.gpqa.parquet`): its
  instruction, the question, then "A) ..." to "D) ..." with the incorrect answers in the
  dataset's order and the correct one at the release's position for that question
  (`eval/gpqa_diamond_answer_positions.json`: a hash of the question -> its letter; questions
  not listed get a position drawn with a fixed seed per question).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from exgrpo_verl.answers import last_boxed
from exgrpo_verl.data.rows import make_row

EVAL_DATA_DIR = Path(__file__).resolve().parent / "eval"  # the release's files shipped with the package
GPQA_SHUFFLE_SEED = 0
GPQA_INSTRUCTION = (  # the release's GPQA prompt, verbatim
    "Answer the following multiple choice question. The last line of your response should be of the following "
    "format: 'ANSWER: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step before answering."
)
OLYMPIAD = "OE_TO_maths_en_COMP"  # OlympiadBench's open-ended, text-only, English maths part: 675 questions
OPTION_LABELS = "ABCDEFGHIJ"


class RecordError(ValueError):
    """A source record lacks what its converter needs; the message names record, fields and fix."""


@dataclass(frozen=True)
class Source:
    name: str  # the name used on the command line
    data_source: str  # the rows' data_source
    hf_path: str
    hf_config: str | None
    hf_split: str
    to_question_answer: Callable[[Mapping], tuple[str, str]]
    split: str = "test"  # the rows' extra_info.split


def _field(record: Mapping, *names: str):
    """The first of `names` that the record has (and is not None)."""
    for name in names:
        if record.get(name) is not None:
            return record[name]
    raise RecordError(
        f"no field {' / '.join(names)} (record has {sorted(record)}); fix: map your column to one of these"
    )


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]


def answer_text(value) -> str:
    """A ground truth as text: strings stripped, numbers as Python prints them (142.0 stays
    "142.0", as in the release's AMC rows), several answers joined with commas."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ",".join(answer_text(item) for item in value)
    return value.strip() if isinstance(value, str) else str(value)


def multiple_choice_question(question: str, options: list[str], labels: Iterable[str] = OPTION_LABELS) -> str:
    """The release's multiple-choice layout: the question, a blank line, one "X) option" per line."""
    return question.strip() + "\n\n" + "".join(f"{label}) {option.strip()}\n" for label, option in zip(labels, options))


# ----------------------------------------------------------------------------------------------
# Converters: record -> (question, ground truth)


def openr1_question_answer(record: Mapping) -> tuple[str, str]:
    if record.get("prompt") is not None and not isinstance(record["prompt"], str):
        question = _as_list(record["prompt"])[-1]["content"]  # a verl row: the last message is the user's
    else:
        question = _field(record, "problem", "question", "prompt")
    if isinstance(record.get("reward_model"), Mapping):
        return question, answer_text(record["reward_model"]["ground_truth"])
    if record.get("answer") is not None:
        return question, answer_text(record["answer"])
    boxed = last_boxed(str(_field(record, "solution")))
    if boxed is None:
        raise RecordError("the solution has no \\boxed{} answer; fix: add an `answer` field or drop the record")
    return question, boxed


def problem_answer(record: Mapping) -> tuple[str, str]:
    return _field(record, "problem", "question"), answer_text(_field(record, "answer"))


def olympiad_question_answer(record: Mapping) -> tuple[str, str]:
    context = record.get("context")
    question = _field(record, "question", "problem")
    question = f"{context}\n{question}" if context else question
    return question, answer_text(_field(record, "final_answer", "answer"))


def arc_question_answer(record: Mapping) -> tuple[str, str]:
    choices = _field(record, "choices")
    options, labels = _as_list(choices["text"]), _as_list(choices["label"])  # a few ARC questions use 1-4
    question = multiple_choice_question(_field(record, "question"), options, labels)
    return question, answer_text(_field(record, "answerKey"))


def gpqa_question_answer(record: Mapping) -> tuple[str, str]:
    question = _field(record, "Question")
    correct = _field(record, "Correct Answer")
    options = [_field(record, f"Incorrect Answer {i}") for i in (1, 2, 3)]
    position = _gpqa_answer_positions().get(question_hash(question))
    if position is None:
        position = random.Random(f"{GPQA_SHUFFLE_SEED}:{question.strip()}").choice(OPTION_LABELS[:4])
    options.insert(OPTION_LABELS.index(position), correct)
    # Question and options as published (not stripped), joined as the release's rows are.
    lines = "\n".join(f"{label}) {option}" for label, option in zip(OPTION_LABELS, options))
    return f"{GPQA_INSTRUCTION}\n\n{question}\n\n{lines}", position


def question_hash(question: str) -> str:
    return hashlib.sha1(question.strip().encode()).hexdigest()[:12]


@cache
def _gpqa_answer_positions() -> dict[str, str]:
    with (EVAL_DATA_DIR / "gpqa_diamond_answer_positions.json").open(encoding="utf-8") as file:
        return json.load(file)


def mmlu_pro_question_answer(record: Mapping) -> tuple[str, str]:
    options = _as_list(_field(record, "options"))
    if len(options) > len(OPTION_LABELS):
        raise RecordError(f"{len(options)} options, more than the labels A-J; fix: drop the record")
    return multiple_choice_question(_field(record, "question"), options), answer_text(_field(record, "answer"))


OPENR1 = Source("openr1", "openr1", "Elliott/Openr1-Math-46k-8192", None, "train", openr1_question_answer, "train")

EVAL_SOURCES = {
    source.name: source
    for source in (
        Source("aime24", "aime", "HuggingFaceH4/aime_2024", None, "train", problem_answer),
        Source("aime25", "aime25", "math-ai/aime25", None, "test", problem_answer),
        Source("amc23", "amc", "AI-MO/aimo-validation-amc", None, "train", problem_answer),
        Source("math500", "math", "HuggingFaceH4/MATH-500", None, "test", problem_answer),
        Source("minerva", "minerva", "math-ai/minervamath", None, "test", problem_answer),
        Source("olympiad_bench", "olympiad_bench", "Hothan/OlympiadBench", OLYMPIAD, "train", olympiad_question_answer),
        Source("arc_c", "arc_c", "allenai/ai2_arc", "ARC-Challenge", "test", arc_question_answer),
        Source("gpqa_diamond", "gpqa_diamond", "Idavidrein/gpqa", "gpqa_diamond", "train", gpqa_question_answer),
        Source("mmlu_pro", "mmlu_pro", "TIGER-Lab/MMLU-Pro", None, "test", mmlu_pro_question_answer),
    )
}

SOURCES = {OPENR1.name: OPENR1, **EVAL_SOURCES}


# ----------------------------------------------------------------------------------------------
# Records in, rows out


def records_to_rows(records: Iterable[Mapping], source: Source, start_index: int = 0) -> list[dict]:
    """One verl row per record, with the release's system prompt and indices start_index, start_index+1, ..."""
    rows = []
    for number, record in enumerate(records):
        try:
            question, ground_truth = source.to_question_answer(record)
        except (RecordError, KeyError, TypeError) as error:
            raise RecordError(f"{source.name} record {number}: {error}") from error
        rows.append(make_row(source.data_source, question, ground_truth, start_index + number, source.split))
    return rows


def read_records(path: str | Path) -> list[dict]:
    """Records from a local .jsonl / .json (one object per line) or .parquet file."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path).to_dict("records")
    if path.suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as lines:
            return [json.loads(line) for line in lines if line.strip()]
    raise ValueError(f"{path}: expected a .jsonl, .json or .parquet file")


def download_records(source: Source, limit: int | None = None) -> list[dict]:
    """A source's records from the Hugging Face Hub (needs network and the `datasets` package)."""
    try:
        import datasets
    except ImportError as error:
        raise ImportError("downloading needs the `datasets` package: pip install datasets") from error
    split = source.hf_split if limit is None else f"{source.hf_split}[:{limit}]"
    return list(datasets.load_dataset(source.hf_path, source.hf_config, split=split))
