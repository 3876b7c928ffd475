"""Checks on the model and data files that `python -m exgrpo_verl.main` runs before Ray starts.

verl finds a missing model or data file, a row without a ground truth or an over-long prompt
only inside a Ray worker, a minute into the run, or not at all (the row drops out of its step).
Here every training and validation row is read once, up front:

    model path      actor_rollout_ref.model.path exists (or is a hub id that may be downloaded)
    files           data.train_files / data.val_files exist and are parquet files with rows
    prompt          data.prompt_key holds a non-empty list of {role, content} messages, non-empty content
    ground truth    reward_model.ground_truth is present and not empty
    question id     extra_info.index is an integer, unique among the training rows (ExGRPO's key)
    length          the prompt after the chat template fits data.max_prompt_length

Each problem raises PreflightError naming the file, the row, the field and the fix. Over-long
prompts are the one skip a user can ask for (`data.filter_overlong_prompts=true`, verl's
filter): then they are counted and reported, not refused.

Only pandas/pyarrow and, for the length check, the tokenizer are imported: no torch, no
trainer stack.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from exgrpo_verl.data.rows import row_index

MAX_LISTED = 5  # problems quoted in one error; the count says how many there are
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class PreflightError(ValueError):
    """The model or data of a run cannot work; the message names key, file, row, field and fix."""


@dataclass(frozen=True)
class DataReport:
    """What the checks found in one config key's files."""

    key: str  # data.train_files or data.val_files
    rows: int
    overlong: list[tuple[str, int, int]]  # (file, row, prompt tokens) of prompts verl will skip


def check_run_inputs(config) -> list[DataReport]:
    """Check the model path and every training and validation row of a trainer config."""
    model_path = check_model_path(config.actor_rollout_ref.model.path, "actor_rollout_ref.model.path")
    data = config.data
    tables = {key: _read_files(key, data.get(key.split(".")[1])) for key in ("data.train_files", "data.val_files")}
    prompt_key = data.get("prompt_key", "prompt")
    for key, files in tables.items():
        for path, rows in files:
            _raise_if(key, path, _row_problems(rows, prompt_key, unique_index=key == "data.train_files"))
    tokenizer_path = config.actor_rollout_ref.model.get("tokenizer_path") or model_path
    count_tokens = prompt_token_counter(tokenizer_path, dict(data.get("apply_chat_template_kwargs") or {}))
    skip = bool(data.get("filter_overlong_prompts", False))
    reports = []
    for key, files in tables.items():
        overlong = []
        for path, rows in files:
            lengths = count_tokens([_messages(p) for p in rows[prompt_key]])
            overlong += [(path, int(i), int(lengths[i])) for i in np.flatnonzero(lengths > data.max_prompt_length)]
        total = sum(len(rows) for _, rows in files)
        if overlong and not skip and data.get("truncation", "error") == "error":
            listed = [f"{path} row {row}: prompt is {length} tokens" for path, row, length in overlong[:MAX_LISTED]]
            raise PreflightError(
                f"{key}: {len(overlong)} of {total} prompts are longer than data.max_prompt_length="
                f"{data.max_prompt_length} after the chat template:\n  " + "\n  ".join(listed) + "\n"
                "fix: raise data.max_prompt_length, remove those rows, or skip them with data.filter_overlong_prompts=true"
            )
        if skip and len(overlong) == total:
            raise PreflightError(f"{key}: all {total} prompts are longer than data.max_prompt_length="
                                 f"{data.max_prompt_length}; fix: raise data.max_prompt_length")
        reports.append(DataReport(key, total, overlong if skip else []))
    return reports


def check_model_path(path, key: str) -> str:
    """A local model directory, or a hub id that may be fetched (not when HF_HUB_OFFLINE=1)."""
    path = str(path) if path is not None else ""
    if os.path.isdir(os.path.expanduser(path)):
        return os.path.expanduser(path)
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if not path or os.path.isabs(path) or path.startswith(".") or not HUB_ID.match(path):
        raise PreflightError(f"{key}={path!r}: no such directory; fix: the path of a local model folder "
                             "(config.json, weights, tokenizer) or a hub id such as Qwen/Qwen2.5-Math-7B")
    if offline:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(path, "config.json"), str):
            raise PreflightError(f"{key}={path!r}: not a local folder, and with HF_HUB_OFFLINE=1 the hub id is not in "
                                 "the local cache; fix: a local model folder, or download it first")
    return path


def _read_files(key: str, value) -> list[tuple]:
    """(path, pandas.DataFrame) for each file of a data key."""
    import pandas as pd

    if value is None:
        raise PreflightError(f"{key} is not set; fix: {key}=<parquet file> (scripts/prepare_data.py writes them)")
    paths = [value] if isinstance(value, str) else list(value)
    if not paths:
        raise PreflightError(f"{key}=[]: no files; fix: {key}=<parquet file> (scripts/prepare_data.py writes them)")
    files = []
    for path in map(str, paths):
        local = os.path.expanduser(path)
        if not os.path.isfile(local):
            raise PreflightError(f"{key}: {path} does not exist; fix: the path of a parquet file "
                                 "(scripts/prepare_data.py writes them; the toy task: exgrpo_verl.tasks.char_hunt)")
        try:
            rows = pd.read_parquet(local)
        except Exception as error:  # pyarrow raises several types for a file that is not parquet
            raise PreflightError(f"{key}: {path} is not a readable parquet file ({type(error).__name__}: "
                                 f"{str(error)[:120]}); fix: write it with pandas.DataFrame.to_parquet") from None
        if len(rows) == 0:
            raise PreflightError(f"{key}: {path} has no rows; fix: a file with at least one question")
        files.append((path, rows))
    return files


def _row_problems(rows, prompt_key: str, unique_index: bool) -> list[str]:
    problems = []
    for column, fix in ((prompt_key, "data.prompt_key names the column of chat messages"),
                        ("reward_model", "a reward_model column of {ground_truth: str}")):
        if column not in rows.columns:
            problems.append(f"column {column!r} is missing; fix: {fix}")
    if unique_index and "extra_info" not in rows.columns:
        problems.append("column 'extra_info' is missing; fix: extra_info = {index: a unique integer per row}")
    if problems:
        return problems
    first_row_of: dict[int, int] = {}
    for position, row in enumerate(rows.to_dict("records")):
        problems += [f"row {position}: {problem}" for problem in _prompt_problems(row[prompt_key], prompt_key)]
        truth = row["reward_model"].get("ground_truth") if isinstance(row["reward_model"], Mapping) else None
        if truth is None or (isinstance(truth, str) and not truth.strip()):
            problems.append(f"row {position}: reward_model.ground_truth is missing or empty; fix: the reference "
                            "answer the reward function compares with (drop questions without one)")
        if unique_index:
            index = row_index(row)
            if index is None:
                problems.append(f"row {position}: extra_info.index={_index_of(row)!r} is not an integer; fix: a "
                                "unique integer question id per row (e.g. its position)")
            elif index in first_row_of:
                problems.append(f"row {position}: extra_info.index={index} repeats row {first_row_of[index]}; fix: "
                                "a unique integer question id per row")
            else:
                first_row_of[index] = position
    return problems


def _prompt_problems(prompt, prompt_key: str) -> list[str]:
    fix = "fix: a non-empty list of {role, content} messages with non-empty text"
    if not isinstance(prompt, list | tuple | np.ndarray) or len(prompt) == 0:
        return [f"{prompt_key}={str(prompt)[:60]!r} is not a non-empty list of messages; {fix}"]
    for number, message in enumerate(prompt):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            return [f"{prompt_key}[{number}]={str(message)[:60]!r} is not a {{role, content}} message; {fix}"]
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            return [f"{prompt_key}[{number}].content={str(content)[:60]!r} is empty or not text; {fix}"]
    return []


def _index_of(row):
    extra_info = row.get("extra_info")
    return extra_info.get("index") if isinstance(extra_info, Mapping) else None


def _messages(prompt) -> list[dict]:
    return [{"role": message["role"], "content": message["content"]} for message in prompt]


def _raise_if(key: str, path: str, problems: list[str]) -> None:
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise PreflightError(f"{key}: {path}: {len(problems)} problem(s):\n  {listed}{more}")


def prompt_token_counter(tokenizer_path: str, chat_template_kwargs: dict):
    """A function: list of chat prompts -> their token counts after the chat template, as verl
    counts them for data.max_prompt_length (generation prompt added, no extra special tokens).

    A model folder with `tokenizer.json` and a chat template is read with the `tokenizers`
    library and transformers' template renderer, which import no torch (seconds, not tens of
    seconds); anything else goes through transformers' AutoTokenizer."""
    fast = _fast_tokenizer(tokenizer_path)
    if fast is not None:
        from transformers.utils.chat_template_utils import render_jinja_template

        tokenizer, template, special_tokens = fast

        def count(prompts: list[list[dict]]) -> np.ndarray:
            texts, _ = render_jinja_template(prompts, chat_template=template, add_generation_prompt=True,
                                             **special_tokens, **chat_template_kwargs)
            return _lengths([encoding.ids for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)])

        return count

    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=True)
    except Exception as error:  # transformers raises OSError, ValueError, ... for a folder without one
        raise PreflightError(f"actor_rollout_ref.model.path: no tokenizer loads from {tokenizer_path} "
                             f"({type(error).__name__}: {str(error)[:160]}); fix: a model folder with its tokenizer files, "
                             "or actor_rollout_ref.model.tokenizer_path") from None

    def count(prompts: list[list[dict]]) -> np.ndarray:
        texts = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=False, **chat_template_kwargs)
        return _lengths(tokenizer(texts, add_special_tokens=False)["input_ids"])

    return count


def _fast_tokenizer(folder: str):
    """(tokenizers.Tokenizer, chat template, special-token strings) of a local folder, or None."""
    import json

    folder = os.path.expanduser(folder)
    config_file, tokenizer_file = os.path.join(folder, "tokenizer_config.json"), os.path.join(folder, "tokenizer.json")
    if not (os.path.isfile(config_file) and os.path.isfile(tokenizer_file)):
        return None
    config = json.load(open(config_file))
    template = config.get("chat_template")
    if os.path.isfile(os.path.join(folder, "chat_template.jinja")):
        template = open(os.path.join(folder, "chat_template.jinja")).read()
    if not isinstance(template, str):  # none, or a list of named templates: leave it to transformers
        return None
    from tokenizers import Tokenizer

    special_tokens = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        token = config.get(name)
        special_tokens[name] = token.get("content") if isinstance(token, dict) else token
    return Tokenizer.from_file(tokenizer_file), template, special_tokens


def _lengths(token_ids: list) -> np.ndarray:
    return np.fromiter((len(ids) for ids in token_ids), dtype=np.int64, count=len(token_ids))
