"""Data preparation: converters, the validator, and the rows loaded by verl's own RLHFDataset."""

from __future__ import annotations

import json
import re
from collections import Counter
import subprocess
import sys

import pandas as pd
import pytest

from exgrpo_verl.data import (
    EVAL_SOURCES,
    OPENR1,
    SYSTEM_PROMPT,
    RecordError,
    RowValidationError,
    make_row,
    read_records,
    records_to_rows,
    repeat_rows,
    unique_questions,
    validate_rows,
)
from exgrpo_verl.data import sources
from exgrpo_verl.data.sources import GPQA_INSTRUCTION, arc_question_answer, gpqa_question_answer
from exgrpo_verl.evaluation.graders import grade, is_multiple_choice
from exgrpo_verl.evaluation.metrics import BENCHMARK_NAMES

# Records in the shapes the Hugging Face sources publish (one each) and plain local ones.
OPENR1_RECORDS = [
    {  # Elliott/Openr1-Math-46k-8192: already a verl row, with an R1 trace under `target`
        "data_source": "openr1",
        "prompt": [{"role": "system", "content": "old prompt"}, {"role": "user", "content": "What is 1+1?"}],
        "target": [{"role": "assistant", "content": "<think>1+1=2</think> \\boxed{2}"}],
        "ability": "math",
        "reward_model": {"ground_truth": "2", "style": "rule"},
        "extra_info": {"index": 7, "split": "train"},
    },
    {"problem": "Compute $3 \\cdot 4$.", "answer": "12"},
    {"problem": "Halve 3.", "solution": "Half of 3 is \\boxed{\\frac{3}{2}}."},
]

EVAL_RECORDS = {
    "aime24": {"problem": "Find $x$.", "answer": "204"},
    "aime25": {"problem": "Find $y$.", "answer": "70"},
    "amc23": {"problem": "Find $m+n$.", "answer": 142.0},
    "math500": {"problem": "Convert $(0,3)$.", "answer": "\\left( 3, \\frac{\\pi}{2} \\right)"},
    "minerva": {"question": "Compute the focal length.", "answer": "1.6"},
    "olympiad_bench": {"question": "Find all pairs.", "final_answer": ["$69$", "$84$"], "context": None},
    "arc_c": {
        "question": "Which is a planet?",
        "choices": {"text": ["Moon", "Mars", "Sun"], "label": ["A", "B", "C"]},
        "answerKey": "B",
    },
    "gpqa_diamond": {
        "Question": "Which particle is a lepton?",
        "Correct Answer": "electron",
        "Incorrect Answer 1": "proton",
        "Incorrect Answer 2": "neutron",
        "Incorrect Answer 3": "pion",
    },
    "mmlu_pro": {"question": "2+2?", "options": ["3", "4", "5", "6", "7", "8", "9", "10", "11", "12"], "answer": "B"},
}


def test_system_prompt_is_the_release_prompt(eval_data_dir):
    for name in ("math_test_id", "math_valid", "arc_c"):
        prompts = pd.read_parquet(eval_data_dir / f"{name}.parquet")["prompt"]
        assert {prompt[0]["content"] for prompt in prompts} == {SYSTEM_PROMPT}


def test_arc_conversion_reproduces_the_release_rows(eval_data_dir):
    # Rebuild the HF record behind each of the first ARC-c rows and convert it again.
    for row in pd.read_parquet(eval_data_dir / "arc_c.parquet").head(20).to_dict("records"):
        question, options = row["prompt"][-1]["content"].split("\n\n", 1)
        labels, texts = zip(*re.findall(r"^(\w)\) (.*)$", options, flags=re.M))
        record = {"question": question, "choices": {"text": list(texts), "label": list(labels)}}
        record["answerKey"] = row["reward_model"]["ground_truth"]
        assert arc_question_answer(record) == (row["prompt"][-1]["content"], row["reward_model"]["ground_truth"])


def test_openr1_records_become_rows():
    rows = records_to_rows(OPENR1_RECORDS, OPENR1)
    validate_rows(rows)
    assert [row["prompt"][-1]["content"] for row in rows] == ["What is 1+1?", "Compute $3 \\cdot 4$.", "Halve 3."]
    assert [row["reward_model"]["ground_truth"] for row in rows] == ["2", "12", "\\frac{3}{2}"]
    assert all(row["prompt"][0] == {"role": "system", "content": SYSTEM_PROMPT} for row in rows)
    assert [row["extra_info"] for row in rows] == [{"index": i, "split": "train"} for i in range(3)]
    assert {row["data_source"] for row in rows} == {"openr1"}


@pytest.mark.parametrize("name", sorted(EVAL_RECORDS))
def test_eval_records_become_rows(name):
    source = EVAL_SOURCES[name]
    (row,) = records_to_rows([EVAL_RECORDS[name]], source)
    validate_rows([row])
    assert row["data_source"] in BENCHMARK_NAMES
    assert is_multiple_choice(row["data_source"]) == (name in ("arc_c", "gpqa_diamond", "mmlu_pro"))
    assert row["extra_info"]["split"] == "test"


def test_eval_ground_truth_formats():
    truths = {name: records_to_rows([record], EVAL_SOURCES[name])[0] for name, record in EVAL_RECORDS.items()}
    assert truths["amc23"]["reward_model"]["ground_truth"] == "142.0"  # as in the release's amc rows
    assert truths["olympiad_bench"]["reward_model"]["ground_truth"] == "$69$,$84$"
    assert truths["mmlu_pro"]["prompt"][-1]["content"].endswith("I) 11\nJ) 12\n")
    assert truths["arc_c"]["prompt"][-1]["content"] == "Which is a planet?\n\nA) Moon\nB) Mars\nC) Sun\n"


def test_gpqa_rows_have_the_releases_prompt_and_answer_position(monkeypatch):
    record = {**EVAL_RECORDS["gpqa_diamond"], "Question": "Which particle is a lepton?\n"}
    # The release's position for this question (the shipped table holds GPQA-diamond's 198 questions).
    monkeypatch.setitem(sources._gpqa_answer_positions(), sources.question_hash(record["Question"]), "C")
    question, label = gpqa_question_answer(record)
    assert label == "C"
    assert question == (
        f"{GPQA_INSTRUCTION}\n\nWhich particle is a lepton?\n\n\nA) proton\nB) neutron\nC) electron\nD) pion"
    )
    assert GPQA_INSTRUCTION.startswith("Answer the following multiple choice question.")


def test_gpqa_answer_positions_cover_the_diamond_set():
    positions = sources._gpqa_answer_positions()
    assert len(positions) == 198
    assert Counter(positions.values()) == {"A": 53, "B": 42, "C": 52, "D": 51}  # as in the release's file


def test_gpqa_questions_outside_the_table_get_a_reproducible_position():
    record = EVAL_RECORDS["gpqa_diamond"]
    question, label = gpqa_question_answer(record)
    assert gpqa_question_answer(dict(record)) == (question, label)
    assert f"{label}) electron" in question
    labels = {gpqa_question_answer({**record, "Question": f"Which particle is a lepton? ({i})"})[1] for i in range(12)}
    assert len(labels) > 1  # the correct answer is not always A


def test_record_errors_name_the_record_and_the_fields():
    with pytest.raises(RecordError, match=r"openr1 record 1: no field problem / question / prompt"):
        records_to_rows([{"problem": "ok", "answer": "1"}, {"answer": "2"}], OPENR1)
    with pytest.raises(RecordError, match=r"no \\boxed\{\} answer"):
        records_to_rows([{"problem": "p", "solution": "no box"}], OPENR1)


GOOD_ROW = make_row("math", "What is 1+1?", "2", index=0, split="test")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda row: row["extra_info"].pop("index"), r"row 0: extra_info.index=None is missing or not an integer; fix"),
        (lambda row: row["extra_info"].update(index="0"), r"row 0: extra_info.index='0'"),
        (lambda row: row["reward_model"].update(ground_truth="  "), r"row 0: reward_model.ground_truth='  '.*fix"),
        (lambda row: row["reward_model"].pop("ground_truth"), r"row 0: reward_model.ground_truth=None"),
        (lambda row: row.update(prompt="What is 1+1?"), r"row 0: prompt is str .*not a non-empty list.*fix"),
        (lambda row: row.update(prompt=[{"role": "user"}]), r"row 0: prompt\[0\].*not a \{role, content\}"),
        (lambda row: row.update(prompt=[{"role": "human", "content": "hi"}]), r"prompt\[0\].role='human'"),
        (lambda row: row.pop("extra_info"), r"row 0: extra_info is missing; fix"),
        (lambda row: row.update(data_source=""), r"row 0: data_source=''"),
    ],
)
def test_validate_rows_names_row_field_and_fix(change, message):
    validate_rows([GOOD_ROW])
    row = json.loads(json.dumps(GOOD_ROW))  # a deep copy
    change(row)
    with pytest.raises(RowValidationError, match=message):
        validate_rows([row])


def test_validate_rows_finds_the_bad_row_among_good_ones_and_repeated_indices():
    rows = records_to_rows([{"problem": f"q{i}", "answer": str(i)} for i in range(5)], OPENR1)
    rows[3]["reward_model"]["ground_truth"] = ""
    rows[4]["extra_info"]["index"] = 1
    with pytest.raises(RowValidationError) as error:
        validate_rows(rows)
    assert "2 problem(s) in 5 rows" in str(error.value)
    assert "row 3: reward_model.ground_truth" in str(error.value)
    assert "row 4: extra_info.index=1 repeats row 1" in str(error.value)


def test_release_files_pass_validation_and_dedupe(eval_data_dir):
    rows = pd.read_parquet(eval_data_dir / "math_test_id.parquet")
    validate_rows(rows, require_unique_index=False)
    with pytest.raises(RowValidationError, match="repeats row"):
        validate_rows(rows)  # the release repeats AIME/AMC questions under one index
    unique = unique_questions(rows)
    assert len(unique) == 1590
    per_source = unique.groupby("data_source").agg(questions=("question_id", "size"), repeats=("repeats", "max"))
    assert per_source.loc["aime"].tolist() == [30, 32]
    assert per_source.loc["amc"].tolist() == [83, 32]
    assert per_source.loc["math"].tolist() == [500, 1]
    validate_rows(pd.read_parquet(eval_data_dir / "arc_c.parquet"))


def test_repeat_rows_keeps_indices_unique():
    rows = [make_row("aime", "q", "1", 0, "test"), make_row("math", "p", "2", 1, "test")]
    repeated = repeat_rows(rows, {"aime": 3, "*": 1})
    validate_rows(repeated)
    assert [row["data_source"] for row in repeated] == ["aime", "aime", "aime", "math"]
    assert [row["extra_info"]["question_index"] for row in repeated] == [0, 0, 0, 1]


def test_prepare_data_cli_output_loads_in_verls_rlhf_dataset(tmp_path, tiny_qwen2, load_script):
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    local = tmp_path / "openr1.jsonl"
    local.write_text("".join(json.dumps(record) + "\n" for record in OPENR1_RECORDS))
    load_script("prepare_data").main(["--from-jsonl", str(local), "--source", "openr1", "--out", str(tmp_path / "d")])
    path = tmp_path / "d" / "openr1.parquet"
    assert len(read_records(path)) == 3

    config = OmegaConf.create(
        {
            "prompt_key": "prompt",
            "max_prompt_length": 2048,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": 1,
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    dataset = RLHFDataset(str(path), AutoTokenizer.from_pretrained(tiny_qwen2), config)
    assert len(dataset) == 3  # nothing filtered out as malformed or too long
    item = dataset[2]
    assert [message["role"] for message in item["raw_prompt"]] == ["system", "user"]
    assert item["raw_prompt"][0]["content"] == SYSTEM_PROMPT
    assert item["index"] == 2 and item["data_source"] == "openr1"
    assert grade("\\boxed{1.5}", item["reward_model"]["ground_truth"]).score == 1.0


def test_prepare_data_cli_repeats_eval_rows(tmp_path, load_script):
    local = tmp_path / "aime.jsonl"
    local.write_text("".join(json.dumps({"problem": f"p{i}", "answer": str(i)}) + "\n" for i in range(2)))
    prepare = load_script("prepare_data")
    prepare.main(["--from-jsonl", str(local), "--source", "aime24", "--out", str(tmp_path), "--repeat", "paper"])
    rows = pd.read_parquet(tmp_path / "aime24.parquet")
    validate_rows(rows)
    assert len(rows) == 64 and len(unique_questions(rows)) == 2


def test_importing_the_data_package_does_not_import_datasets():
    code = "import sys, exgrpo_verl.data, exgrpo_verl.evaluation.graders; print('datasets' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_prepare_data_writes_the_releases_validation_mix(tmp_path, tiny_qwen2, load_script):
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    load_script("prepare_data").main(["--dataset", "valid", "--out", str(tmp_path)])
    path = tmp_path / "math_valid.parquet"
    rows = pd.read_parquet(path)
    assert len(rows) == 2259
    assert rows["data_source"].value_counts().to_dict() == {
        "olympiad_bench": 675, "math": 500, "amc": 332, "minerva": 272, "aime": 240, "aime25": 240
    }
    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 4096, "filter_overlong_prompts": False})
    dataset = RLHFDataset(str(path), AutoTokenizer.from_pretrained(tiny_qwen2), config)
    assert len(dataset) == 2259 and dataset[0]["data_source"] == rows["data_source"][0]


def test_validation_mix_check_names_what_is_off(load_script, eval_data_dir):
    prepare = load_script("prepare_data")
    rows = pd.read_parquet(eval_data_dir / "math_valid.parquet")
    prepare.check_validation_mix(rows, eval_data_dir / "math_valid.parquet")
    first_amc = rows.index[rows["data_source"] == "amc"][0]
    with pytest.raises(RowValidationError, match=r"'amc': \(83, 331\).*expected the release's.*fix: restore"):
        prepare.check_validation_mix(rows.drop(first_amc), eval_data_dir / "math_valid.parquet")
    broken = rows.copy()
    broken.at[5, "reward_model"] = {"ground_truth": "", "style": "rule"}
    with pytest.raises(RowValidationError, match="row 5: reward_model.ground_truth"):
        prepare.check_validation_mix(broken, eval_data_dir / "math_valid.parquet")
