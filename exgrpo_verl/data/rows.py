"""The verl parquet row this project trains and evaluates on, and its validator.

One row per question, the schema of the release's files and of verl's RLHFDataset:

    data_source   str   the dataset or benchmark ("openr1", "aime", "math", "arc_c", ...)
    prompt        list  [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    ability       str   "math" (the release uses it for every row, ARC-c included)
    reward_model  dict  {"ground_truth": str, "style": "rule"}
    extra_info    dict  {"index": int, unique in the file; "split": str; anything else}

verl's RLHFDataset renders `prompt` with the model's chat template; its reward loop passes
data_source, reward_model.ground_truth and extra_info to the reward function.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

# The release's training and evaluation system prompt, verbatim (the shared eval files carry it).
SYSTEM_PROMPT = (
    "Your task is to follow a systematic, thorough reasoning process before providing the final solution. "
    "This involves analyzing, summarizing, exploring, reassessing, and refining your thought process through "
    "multiple iterations. Structure your response into two sections: Thought and Solution. In the Thought "
    'section, present your reasoning using the format: "<think>\n {thoughts} </think>\n". Each thought should '
    "include detailed analysis, brainstorming, verification, and refinement of ideas. After \"</think>\n,\" in "
    "the Solution section, provide the final, logical, and accurate answer, clearly derived from the "
    "exploration in the Thought section. If applicable, include the answer in \\boxed{} for closed-form "
    "results like multiple choices or mathematical solutions."
)

ROLES = ("system", "user", "assistant")


def chat_prompt(question: str, system_prompt: str | None = SYSTEM_PROMPT) -> list[dict]:
    """The release's prompt: its system prompt, then the question as the user message, unchanged."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return system + [{"role": "user", "content": question}]


def make_row(
    data_source: str,
    question: str,
    ground_truth: str,
    index: int,
    split: str,
    ability: str = "math",
    system_prompt: str | None = SYSTEM_PROMPT,
    **extra_info,
) -> dict:
    return {
        "data_source": data_source,
        "prompt": chat_prompt(question, system_prompt),
        "ability": ability,
        "reward_model": {"ground_truth": ground_truth, "style": "rule"},
        "extra_info": {"index": index, "split": split, **extra_info},
    }


class RowValidationError(ValueError):
    """A row does not have the schema above; the message names row, field and fix."""


def validate_rows(rows: pd.DataFrame | Sequence[Mapping], require_unique_index: bool = True) -> None:
    """Raise RowValidationError listing the first problems (row position, field, fix); else return.

    Accepts a DataFrame as read from parquet (nested lists come back as numpy arrays) or a list
    of row dicts. require_unique_index: extra_info.index must differ between rows (the release's
    eval files repeat questions for avg@k and share the index, so they pass only without it).
    """
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
    if not records:
        raise RowValidationError("no rows: the file is empty; check the input and any filters")
    problems = []
    first_row_of_index: dict[int, int] = {}
    for position, row in enumerate(records):
        row_problems = _row_problems(row)
        problems += [f"row {position}: {problem}" for problem in row_problems]
        index = row_index(row)
        if require_unique_index and index is not None:
            if index in first_row_of_index:
                problems.append(
                    f"row {position}: extra_info.index={index} repeats row {first_row_of_index[index]}; "
                    "fix: give every row its own index (e.g. its position)"
                )
            first_row_of_index.setdefault(index, position)
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise RowValidationError(f"{len(problems)} problem(s) in {len(records)} rows:\n  {shown}{more}")


def _row_problems(row: Mapping) -> list[str]:
    problems = []
    for field in ("data_source", "prompt", "ability", "reward_model", "extra_info"):
        if field not in row:
            problems.append(f"{field} is missing; fix: add the column (see exgrpo_verl.data.rows.make_row)")
    if problems:
        return problems
    if not _is_nonempty_str(row["data_source"]):
        problems.append(f"data_source={row['data_source']!r}; fix: a non-empty string naming the dataset")
    if not isinstance(row["ability"], str):
        problems.append(f"ability={row['ability']!r}; fix: a string such as 'math'")
    problems += _prompt_problems(row["prompt"])
    problems += _reward_model_problems(row["reward_model"])
    problems += _extra_info_problems(row["extra_info"])
    return problems


def _prompt_problems(prompt) -> list[str]:
    fix = "fix: a list of {'role': 'system'|'user'|'assistant', 'content': str} ending with the user message"
    if not isinstance(prompt, (list, tuple, np.ndarray)) or len(prompt) == 0:
        return [f"prompt is {type(prompt).__name__} {str(prompt)[:60]!r}, not a non-empty list of messages; {fix}"]
    for number, message in enumerate(prompt):
        if not isinstance(message, Mapping) or not {"role", "content"} <= set(message):
            return [f"prompt[{number}]={str(message)[:60]!r} is not a {{role, content}} message; {fix}"]
        if message["role"] not in ROLES:
            return [f"prompt[{number}].role={message['role']!r}; {fix}"]
        if not _is_nonempty_str(message["content"]):
            return [f"prompt[{number}].content is empty or not a string; {fix}"]
    if prompt[-1]["role"] != "user":
        return [f"prompt ends with a {prompt[-1]['role']!r} message; {fix}"]
    return []


def _reward_model_problems(reward_model) -> list[str]:
    if not isinstance(reward_model, Mapping):
        return [f"reward_model={str(reward_model)[:60]!r}; fix: {{'ground_truth': str, 'style': 'rule'}}"]
    problems = []
    if not _is_nonempty_str(reward_model.get("ground_truth")):
        problems.append(
            f"reward_model.ground_truth={reward_model.get('ground_truth')!r} is missing or empty; "
            "fix: the reference answer as a non-empty string (drop questions without one)"
        )
    if reward_model.get("style") != "rule":
        problems.append(f"reward_model.style={reward_model.get('style')!r}; fix: 'rule' (a rule-based verifier)")
    return problems


def _extra_info_problems(extra_info) -> list[str]:
    if not isinstance(extra_info, Mapping):
        return [f"extra_info={str(extra_info)[:60]!r}; fix: {{'index': int, 'split': str}}"]
    problems = []
    if row_index({"extra_info": extra_info}) is None:
        problems.append(
            f"extra_info.index={extra_info.get('index')!r} is missing or not an integer; "
            "fix: a unique integer per row (e.g. its position)"
        )
    if not _is_nonempty_str(extra_info.get("split")):
        problems.append(f"extra_info.split={extra_info.get('split')!r}; fix: a string such as 'train' or 'test'")
    return problems


def row_index(row: Mapping) -> int | None:
    """A row's question id, extra_info.index, when it is an integer; else None."""
    extra_info = row.get("extra_info")
    index = extra_info.get("index") if isinstance(extra_info, Mapping) else None
    if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
        return None
    return int(index)


def _is_nonempty_str(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def question_id(row: Mapping) -> str:
    """A stable id for a row's question: data source plus a hash of its prompt and ground truth.
    The release's files repeat a question (for avg@k) under one index; this id survives that."""
    messages = [[message["role"], message["content"]] for message in row["prompt"]]
    key = json.dumps([row["data_source"], messages, row["reward_model"]["ground_truth"]], ensure_ascii=False)
    return f"{row['data_source']}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def unique_questions(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct question, in first-seen order, with columns question_id and repeats."""
    rows = rows.assign(question_id=[question_id(row) for row in rows.to_dict("records")])
    repeats = rows.groupby("question_id", sort=False).size()
    unique = rows.drop_duplicates("question_id").reset_index(drop=True)
    return unique.assign(repeats=unique["question_id"].map(repeats).to_numpy())


def repeat_rows(rows: Sequence[Mapping], repeats: Mapping[str, int] | int) -> list[dict]:
    """Copy each row k times (k per data source, or one k), as the release's eval files do for
    avg@k under a one-sample-per-row evaluator (verl's validation). Copies get new, unique
    indices; extra_info.question_index keeps the original's."""
    repeated = []
    for row in rows:
        k = repeats if isinstance(repeats, int) else repeats.get(row["data_source"], repeats.get("*", 1))
        for _ in range(k):
            extra_info = {**row["extra_info"], "index": len(repeated), "question_index": row["extra_info"]["index"]}
            repeated.append({**row, "extra_info": extra_info})
    return repeated


def write_rows(rows: Sequence[Mapping], path: str | Path) -> Path:
    """Validate rows and write them as a parquet file verl reads."""
    validate_rows(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(list(rows)).to_parquet(path, index=False)
    return path
