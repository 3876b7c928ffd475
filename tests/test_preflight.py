"""`python -m exgrpo_verl.main` checks the model path and every data row before Ray starts:
each bad input fails in seconds with the key, the file, the row, the field and the fix
(finding 6 of the reliability issue; finding 2's rows without ground truth or prompt)."""

import resource
import subprocess
import sys

import pandas as pd
import pytest
from omegaconf import OmegaConf

from exgrpo_verl import metrics_history
from exgrpo_verl.cpu_runtime.launch import cpu_env, cpu_run_overrides
from exgrpo_verl.preflight import PreflightError, check_model_path, check_run_inputs, prompt_token_counter
from exgrpo_verl.tasks import char_hunt


def _config(model, train, val, **data):
    return OmegaConf.create({
        "actor_rollout_ref": {"model": {"path": str(model)}},
        "data": {"train_files": str(train), "val_files": str(val), "max_prompt_length": 64, "prompt_key": "prompt",
                 "filter_overlong_prompts": False, "truncation": "error", **data},
    })


def _write(path, rows):
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_good_inputs_pass_and_are_counted(tiny_qwen2, char_hunt_files):
    train, val = char_hunt_files
    reports = check_run_inputs(_config(tiny_qwen2, train, val))
    assert [(r.key, r.rows, r.overlong) for r in reports] == [("data.train_files", 64, []), ("data.val_files", 8, [])]


@pytest.mark.parametrize("change, message", [
    (lambda rows: rows[3]["reward_model"].pop("ground_truth"), r"row 3: reward_model.ground_truth is missing"),
    (lambda rows: rows[5]["prompt"].clear(), r"row 5: prompt=.* is not a non-empty list of messages"),
    (lambda rows: rows[6]["prompt"][0].update(content="  "), r"row 6: prompt\[0\].content=.* is empty"),
    (lambda rows: rows[7]["extra_info"].update(index=2), r"row 7: extra_info.index=2 repeats row 2"),
    # A parquet column holds one type: ids that are not integers are all strings.
    (lambda rows: [row["extra_info"].update(index=f"q{i}") for i, row in enumerate(rows)], r"row 0: extra_info.index='q0' is not an integer"),
])
def test_bad_training_rows_are_named_with_their_fix(tiny_qwen2, char_hunt_files, tmp_path, change, message):
    rows = char_hunt.make_rows(16)
    change(rows)
    train = _write(tmp_path / "train.parquet", rows)
    with pytest.raises(PreflightError, match=rf"data.train_files: .*train.parquet: \d+ problem\(s\):\n  {message}.*fix:"):
        check_run_inputs(_config(tiny_qwen2, train, char_hunt_files[1]))


def test_missing_files_and_models_are_named(tiny_qwen2, char_hunt_files, tmp_path, monkeypatch):
    train, val = char_hunt_files
    with pytest.raises(PreflightError, match=r"data.val_files: .*nope.parquet does not exist; fix"):
        check_run_inputs(_config(tiny_qwen2, train, tmp_path / "nope.parquet"))
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(PreflightError, match=r"data.train_files: .*text.parquet is not a readable parquet file"):
        check_run_inputs(_config(tiny_qwen2, tmp_path / "text.parquet", val))
    with pytest.raises(PreflightError, match=r"data.train_files: .*empty.parquet has no rows"):
        check_run_inputs(_config(tiny_qwen2, _write(tmp_path / "empty.parquet", {"prompt": []}), val))
    with pytest.raises(PreflightError, match=r"actor_rollout_ref.model.path='/no/such/model': no such directory"):
        check_model_path("/no/such/model", "actor_rollout_ref.model.path")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PreflightError, match=r"HF_HUB_OFFLINE=1 the hub id is not in the local cache"):
        check_model_path("someone/never-downloaded-model", "actor_rollout_ref.model.path")


def test_over_long_prompts_fail_or_are_counted_when_skipping_is_asked_for(tiny_qwen2, char_hunt_files):
    train, val = char_hunt_files
    with pytest.raises(PreflightError, match=r"data.train_files: 64 of 64 prompts are longer than data.max_prompt_length=8"):
        check_run_inputs(_config(tiny_qwen2, train, val, max_prompt_length=8))
    lengths = prompt_token_counter(str(tiny_qwen2), {})([r["prompt"] for r in char_hunt.make_rows(64)])
    limit = int(sorted(lengths)[32])
    reports = check_run_inputs(_config(tiny_qwen2, train, val, max_prompt_length=limit, filter_overlong_prompts=True))
    assert len(reports[0].overlong) == int((lengths > limit).sum()) > 0


def test_the_token_count_is_the_one_transformers_gives(tiny_qwen2):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_qwen2))
    prompts = [row["prompt"] for row in char_hunt.make_rows(10)]
    expected = [len(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)) for p in prompts]
    assert prompt_token_counter(str(tiny_qwen2), {})(prompts).tolist() == expected


def test_the_entry_point_reports_a_bad_row_in_seconds_without_the_trainer_stack(tiny_qwen2, char_hunt_files, tmp_path):
    rows = char_hunt.make_rows(16)
    rows[4]["reward_model"].pop("ground_truth")
    train = _write(tmp_path / "train.parquet", rows)
    overrides = cpu_run_overrides(str(tiny_qwen2), str(train), str(char_hunt_files[1]), output_dir=str(tmp_path))
    command = [sys.executable, "-X", "importtime", "-m", "exgrpo_verl.main", *overrides]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, env=cpu_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "row 4: reward_model.ground_truth is missing or empty" in result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert not {"torch", "verl", "ray"} & imported, "the checks ran after importing the trainer stack"
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The child's CPU time (its wall time depends on how loaded the machine is): ~3.5 s measured.
    assert (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime) < 20


def test_metrics_history_survives_a_resume(tmp_path):
    """Finding 7: verl's file logger reopens metrics.jsonl with mode wb on resume."""
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(f'{{"step": {s}, "data": {{"loss": {s}}}}}\n' for s in (1, 2, 3)))
    metrics_history.prepare(path, resuming=True)
    path.write_text("".join(f'{{"step": {s}, "data": {{"loss": {10 * s}}}}}\n' for s in (3, 4)))  # step 3 run again
    assert [(row["step"], row["loss"]) for row in metrics_history.read_history(path)] == [(1, 1), (2, 2), (3, 30), (4, 40)]
    metrics_history.prepare(path, resuming=False)  # a fresh run: verl truncates the file, old parts go
    path.write_text('{"step": 1, "data": {"loss": 7}}\n')
    assert [(row["step"], row["loss"]) for row in metrics_history.read_history(path)] == [(1, 7)]
