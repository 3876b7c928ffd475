"""The miniature study's pieces: the chain-arithmetic task, the warm start, the study's summaries,
and a smoke run of the whole pipeline (tiny warm start, GRPO and ExGRPO through verl's trainer)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from exgrpo_verl.miniature import (
    REGIMES, RunSpec, RunSummary, StudySettings, comparison_table, compute_per_step, first_crossing, generated_rollouts_per_step,
    interpolate, load_summaries, render_tables, run_overrides, save_summaries, screening_finals,
    question_visits, screening_table, seed_differences, t_interval_95,
)
from exgrpo_verl.reward import compute_score
from exgrpo_verl.tasks import arithmetic
from exgrpo_verl.tasks.arithmetic import ArithmeticTask, draw_questions, in_reserved_half, sample_question, solution

REPO = Path(__file__).resolve().parents[1]


def test_questions_are_well_formed_chains_with_values_in_range():
    task = ArithmeticTask()
    rng = __import__("random").Random(0)
    for level in range(1, len(task.levels) + 1):
        for _ in range(200):
            question = sample_question(task, level, rng)
            assert len(question.steps) == task.levels[level - 1]
            assert eval(question.expression) == question.answer  # left-to-right +/- is Python's order
            assert all(0 <= result <= task.value_max for *_, result in question.steps)
            assert all(1 <= right <= task.operand_max for _, _, right, _ in question.steps)


def test_worked_solution_earns_the_release_reward_and_an_imperfect_one_does_not():
    question = sample_question(ArithmeticTask(), 3, __import__("random").Random(1))
    assert compute_score(arithmetic.DATA_SOURCE, solution(question), str(question.answer)) == 1.0
    wrong = solution(question, error_step=1, error=2)
    assert wrong.endswith(f"\\boxed{{{question.answer + 2}}}")  # the error is carried to the answer
    assert compute_score(arithmetic.DATA_SOURCE, wrong, str(question.answer)) == 0.0
    without_close = solution(question).replace("</think>", " ")
    assert compute_score(arithmetic.DATA_SOURCE, without_close, str(question.answer)) == 0.0


def test_splits_are_deterministic_disjoint_and_kept_from_the_warm_up(tmp_path):
    task = ArithmeticTask()
    paths = arithmetic.write_splits(task, tmp_path, train_per_level=50, test_per_level=20, seed=3)
    again = arithmetic.write_splits(task, tmp_path / "again", train_per_level=50, test_per_level=20, seed=3)
    train, test = pd.read_parquet(paths["train"]), pd.read_parquet(paths["test"])
    assert train.equals(pd.read_parquet(again["train"])) and test.equals(pd.read_parquet(again["test"]))
    expressions = lambda frame: {p[0]["content"].removeprefix("Compute ") for p in frame["prompt"]}  # noqa: E731
    assert not expressions(train) & expressions(test)
    assert all(in_reserved_half(e) for e in expressions(train) | expressions(test))
    assert len(train) == 50 * len(task.levels) and train["extra_info"].map(lambda e: e["index"]).is_unique
    assert sorted(train["extra_info"].map(lambda e: e["level"]).unique()) == list(range(1, len(task.levels) + 1))


def test_a_level_without_enough_questions_is_refused_with_the_fix():
    tiny = ArithmeticTask(levels=(1,), first_max=2, operand_max=1, value_max=3)
    with pytest.raises(ValueError, match="fewer than 50 distinct questions"):
        draw_questions(tiny, 50, seed=0, reserved=True)


def test_warm_start_examples_come_from_the_warm_up_half_and_mask_the_prompt():
    from transformers import AutoTokenizer

    from exgrpo_verl.tasks.warm_start import reasoner_model_spec, supervised_example
    from exgrpo_verl.tiny_models import build_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(reasoner_model_spec()))
    rng = __import__("random").Random(0)
    for _ in range(50):
        ids, prompt_length = supervised_example(tokenizer, ArithmeticTask(), rng, (0.4, 0.3, 0.2, 0.1), 0.1)
        prompt = tokenizer.decode(ids[:prompt_length])
        assert prompt.endswith("<|im_start|>assistant\n<think>\n")  # the release's prompt ending
        expression = prompt.split("Compute ")[1].split("<|im_end|>")[0]
        assert not in_reserved_half(expression)
        assert ids[-1] == tokenizer.eos_token_id and "</think>\\boxed{" in tokenizer.decode(ids[prompt_length:])
    digits = tokenizer.convert_ids_to_tokens(tokenizer("57+38", add_special_tokens=False)["input_ids"])
    assert digits == ["5", "7", "+", "3", "8"]


def test_interpolation_and_first_crossing():
    x, y = np.array([0.0, 100.0, 200.0]), np.array([0.3, 0.4, 0.5])
    assert interpolate(x, y, 150.0) == pytest.approx(0.45)
    assert np.isnan(interpolate(x, y, 250.0))
    assert first_crossing(x, y, 0.42) == pytest.approx(120.0)
    assert first_crossing(x, y, 0.2) == 0.0
    assert np.isnan(first_crossing(x, y, 0.6))


def _summary(method: str, accuracy: list[float], seed: int = 0, regime: str = "medium", compute_scale: float = 1.0) -> RunSummary:
    rows = [{"step": i + 1, "actor/entropy": 0.1, "timing_s/step": 2.0, "exgrpo/buffer/bucket/1": 3.0,
             "exgrpo/buffer/bucket/3": 1.0, "actor/pg_loss": 0.5} for i in range(20)]
    return RunSummary(RunSpec(method, seed, regime), steps=[0, 10, 20], rollouts=[0.0, 640.0, 1280.0],
                      compute=[0.0, 1e5 * compute_scale, 2e5 * compute_scale], accuracy=accuracy,
                      standard_error=[0.01] * 3, by_level=[{}] * 3, train_rows=rows,
                      cumulative_rollouts=np.arange(1, 21) * 64.0, eval_length=30.0, seconds_per_step=2.0)


def test_t_interval_uses_n_minus_one_degrees_of_freedom():
    # The main study's per-seed differences at equal rollouts (points): -2.4, -1.9, -2.3.
    mean, half = t_interval_95([-2.4, -1.9, -2.3])
    assert mean == pytest.approx(-2.2)
    assert half == pytest.approx(4.303 * np.std([-2.4, -1.9, -2.3], ddof=1) / np.sqrt(3))  # t_{0.975, 2}, not 1.96
    assert half == pytest.approx(0.657, abs=1e-3)
    with pytest.raises(ValueError, match="at least 2 values"):
        t_interval_95([1.0])


def test_tables_regenerate_from_saved_summaries(tmp_path):
    """A results page is rebuilt from its committed summaries alone: same tables, same plots."""
    finished = {"medium/release": {"grpo": [_summary("grpo", [0.3, 0.4, 0.5], s) for s in (0, 1)],
                                   "exgrpo": [_summary("exgrpo", [0.3, 0.38, 0.47], s) for s in (0, 1)]},
                "hard/release": {"grpo": [_summary("grpo", [0.3, 0.32, 0.33], 0, "hard")],
                                 "repo": [_summary("repo", [0.3, 0.35, 0.37], 0, "hard")]}}
    starts = {"medium": {"accuracy": 0.3, "standard_error": 0.01, "by_level": {"L1": 0.5}}}
    direct = render_tables("settings", starts, finished, tmp_path / "direct")
    save_summaries(tmp_path / "summaries", "settings", starts, finished)
    assert "actor/pg_loss" not in (tmp_path / "summaries" / "grpo-medium-release-s0.json").read_text()  # only what tables read
    again = render_tables(*load_summaries(tmp_path / "summaries"), tmp_path / "again")
    assert again == direct and "95% interval (t, 1 d.f.)" in again
    assert again.index("## medium/release") < again.index("## hard/release") < again.index("## Screening")
    for plot in ("buckets_medium_release.png", "accuracy_medium_release.png", "accuracy_hard_release.png"):
        assert (tmp_path / "again" / plot).stat().st_size > 10_000
    with pytest.raises(FileNotFoundError, match="study.json"):
        load_summaries(tmp_path / "again")


def test_question_visits_read_the_buffers_histograms_from_each_runs_last_row(tmp_path):
    from exgrpo_verl.experience import ExperienceBuffer, ExperienceConfig, GroupResult

    def final_buffer_row(replays_of_question_1: int) -> dict:
        buf = ExperienceBuffer(ExperienceConfig(group_size=2, selection_metric="recent"))
        for step in (1, 2):  # questions 1 and 2: two fresh groups each, one success stored per group
            buf.update(step, [GroupResult(question_id=q, response_ids=[np.array([q, step])] * 2, log_probs=[np.zeros(2)] * 2,
                                          rewards=np.array([1.0, 0.0]), ended_with_eos=np.ones(2, bool)) for q in (1, 2)])
        for step in range(3, 3 + replays_of_question_1):
            buf.mark_replayed([buf.select(1).id], step)
        buf.mark_replayed([buf.select(2).id], 10)
        return {f"exgrpo/buffer/{key}": value for key, value in buf.metrics().items()}

    grpo = [_summary("grpo", [0.3, 0.4, 0.5], seed) for seed in (0, 1)]
    exgrpo = [_summary("exgrpo", [0.3, 0.4, 0.5], seed) for seed in (0, 1)]
    for run, replays in zip(exgrpo, (3, 9)):
        run.train_rows[-1].update(final_buffer_row(replays))
        run.train_rows[-1]["exgrpo/replayed_rows"] = replays + 1.0  # the rows the trainer logged: all the buffer's
    rlep = [_summary("rlep", [0.3, 0.4, 0.5])]  # replays a frozen set: its rows are not this buffer's replays
    rlep[0].train_rows[-1].update(final_buffer_row(0), **{"exgrpo/replayed_rows": 5.0})
    table = question_visits({"grpo": grpo, "exgrpo": exgrpo, "rlep": rlep})
    header, _, row, frozen = table.splitlines()
    assert frozen == "| rlep | 1 | 0.0 | 2.0 | 0.0 | 0.0 | - | - | - | - | - | not counted (replays another run's buffer) |"
    assert header.startswith("| method | seeds | fresh groups: 1 | fresh groups: 2 | fresh groups: 3-4 | fresh groups: 5+ | replays: 1 |")
    # 2 questions seen twice; question 2 replayed once, question 1 3 times (seed 0) and 9 times (seed 1)
    assert row == "| exgrpo | 2 | 0.0 | 2.0 | 0.0 | 0.0 | 1.0 | 0.0 | 0.5 | 0.0 | 0.5 | 3.500 ± 2.121 |"
    assert question_visits({"grpo": grpo}) is None  # runs without the counts get no table
    text = render_tables("settings", {}, {"medium/release": {"grpo": grpo, "exgrpo": exgrpo}}, tmp_path)
    assert "### Per-question visits by the end" in text and "![per-question visits](visits_medium_release.png)" in text
    assert (tmp_path / "visits_medium_release.png").stat().st_size > 10_000


def test_comparison_table_columns_are_the_evaluation_steps():
    """The demo evaluates at 2 checkpoints, the study at 4: each column is one checkpoint, named by its step."""
    summary = _summary

    table = comparison_table({"grpo": [summary("grpo", [0.30, 0.40, 0.50])], "exgrpo": [summary("exgrpo", [0.30, 0.35, 0.45])]})
    header, rule, grpo, exgrpo = table.splitlines()
    assert header.startswith("| method | seeds | start | 10 steps | 20 steps | at equal rollouts")
    assert header.count("|") == rule.count("|") == grpo.count("|") == exgrpo.count("|")
    assert grpo.startswith("| grpo | 1 | 0.300 | 0.400 | 0.500 |")
    assert exgrpo.startswith("| exgrpo | 1 | 0.300 | 0.350 | 0.450 |")


def test_differences_are_paired_by_seed_at_each_budget():
    """At equal rollouts both curves are read at the smaller budget; at equal compute too, so a
    method that spends twice the compute per rollout is compared at half its rollouts."""
    grpo = [_summary("grpo", [0.3, 0.4, 0.5], 0), _summary("grpo", [0.3, 0.4, 0.6], 1)]
    costly = [_summary("repo", [0.3, 0.5, 0.6], 0, compute_scale=2.0), _summary("repo", [0.3, 0.5, 0.7], 2, compute_scale=2.0)]
    d = seed_differences(costly, grpo)
    assert d["seed"] == [0]  # seed 2 has no GRPO partner
    assert d["steps"] == pytest.approx([0.1]) and d["rollouts"] == pytest.approx([0.1])
    # At compute 2e5 GRPO is at its end (0.5); repo, spending 2x, is at its step 10 (0.5): no difference.
    assert d["compute"] == pytest.approx([0.0])
    table = screening_table({"medium/release": {"grpo": grpo, "repo": costly}})
    assert table.splitlines()[2] == "| medium/release | 0.550 ± 0.071 (2 seeds) | +0.100 / +0.000 (1 seed) |"
    # The finals table tells a strategy that replayed nothing from one that did.
    for step, row in enumerate(costly[0].train_rows):
        row["exgrpo/replayed_rows"] = 4.0 if step < 5 else 0.0  # 20 steps: 5 with 4 rows, a mean of 1
    finals = screening_finals({"medium/release": {"grpo": grpo, "repo": costly}})
    assert finals.splitlines()[2] == "| medium/release | 0.550 | 0.650 (0.50 rows; 2 steps) |"  # seed 2 replayed nothing


def test_compute_counts_generation_old_log_probs_update_and_selection():
    """C = R_gen (P + L) + 4 T + S per step."""
    rows = [{"exgrpo/generated_rollouts": 60.0, "prompt_length/mean": 30.0, "response_length/mean": 20.0,
             "perf/total_num_tokens": 3000.0, "exgrpo/selection_tokens": 500.0}]
    assert compute_per_step(rows, batch=8, rollouts=8).tolist() == [60 * 50 + 4 * 3000 + 500]


def test_runs_name_their_regime_and_configuration_and_take_their_overrides(tmp_path):
    run = RunSpec("exgrpo", 2, "weak", "release")
    assert run.name == "exgrpo-weak-release-s2" and RunSpec.from_name(run.name) == run and run.start == "weak"
    overrides = run_overrides(StudySettings(), run, tmp_path / "model", {"train": "t", "test": "v"}, tmp_path / "runs" / run.name)
    assert "+preset=release" in overrides and "exgrpo.start_solve_rate=0.0" in overrides
    defaults = run_overrides(StudySettings(), RunSpec("grpo", config="defaults"), tmp_path, {"train": "t", "test": "v"}, tmp_path / "r")
    assert "+preset=release" not in defaults and "exgrpo.replay_ratio=0" in defaults
    with pytest.raises(ValueError, match="RunSpec.regime='easy': unknown; known: medium, weak, hard, scarce"):
        RunSpec("grpo", regime="easy")
    # RLEP replays the same cell's ExGRPO run (the script waits for it), which must exist.
    assert RunSpec("rlep", 1, "hard").replays_from == RunSpec("exgrpo", 1, "hard") and RunSpec("repo").replays_from is None
    with pytest.raises(FileNotFoundError, match="run the same cell's exgrpo first"):
        run_overrides(StudySettings(), RunSpec("rlep"), tmp_path, {"train": "t", "test": "v"}, tmp_path / "runs" / "rlep-medium-release-s0")
    source = tmp_path / "runs" / "exgrpo-medium-release-s0" / "checkpoints" / "global_step_160"
    source.mkdir(parents=True)
    rlep = run_overrides(StudySettings(), RunSpec("rlep"), tmp_path, {"train": "t", "test": "v"}, tmp_path / "runs" / "rlep-medium-release-s0")
    assert f"+exgrpo.strategy_settings.source={source}" in rlep and "exgrpo.strategy=rlep" in rlep


def test_regime_pools_draw_their_levels_and_sizes_and_share_the_held_out_set(tmp_path):
    task = ArithmeticTask()
    hard = arithmetic.write_splits(task, tmp_path / "hard", 100, 10, train_levels=REGIMES["hard"].train_levels)
    medium = arithmetic.write_splits(task, tmp_path / "medium", 20, 10)
    hard_train = pd.read_parquet(hard["train"])
    assert {info["level"] for info in hard_train["extra_info"]} == {4} and len(hard_train) == 100
    assert pd.read_parquet(hard["test"]).equals(pd.read_parquet(medium["test"]))
    with pytest.raises(ValueError, match="level 5 does not exist"):
        draw_questions(task, 5, seed=0, reserved=True, levels=(5,))


def test_generated_rollouts_exclude_replayed_slots():
    rows = [{}, {"exgrpo/replayed_questions": 3.0}]
    assert generated_rollouts_per_step(rows, batch=4, rollouts=8).tolist() == [32.0, 29.0]


@pytest.mark.slow  # two trainer launches and three evaluations: `make test-slow`
def test_quick_study_runs_grpo_and_exgrpo_through_verl_and_writes_tables(tmp_path):
    """The pipeline end to end on a few steps: warm start, two trainings through python -m
    exgrpo_verl.main on the CPU runtime, held-out evaluation, tables and plots."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "miniature.py"), "--plan", "main", "--seeds", "0", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tables = (tmp_path / "tables.md").read_text()
    assert "| grpo | 1 |" in tables and "| exgrpo | 1 |" in tables
    visits = tables.split("### Per-question visits by the end")[1].split("###")[0]  # the buffer's counts reach the page
    assert "| exgrpo | 1 |" in visits and "| grpo |" not in visits
    for name in ("accuracy_medium_release.png", "buckets_medium_release.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    evals = sorted((tmp_path / "runs" / "exgrpo-medium-release-s0" / "eval").glob("step_*.json"))
    assert [p.name for p in evals] == ["step_2.json", "step_4.json"]


def test_warm_starts_are_saved_at_each_step_and_reused_from_the_cache(tmp_path):
    from transformers import AutoModelForCausalLM

    from exgrpo_verl.tasks.warm_start import WarmStartSpec, warm_start, warm_starts

    spec = WarmStartSpec(steps=2, batch_size=4, warmup_steps=1)
    folders = warm_starts(spec, [1, 2], cache_dir=tmp_path, progress=False)
    assert folders[1] != folders[2]
    marker = folders[1] / "exgrpo_warm_start.json"
    written = marker.stat().st_mtime_ns
    assert warm_start(WarmStartSpec(steps=1, batch_size=4, warmup_steps=1), cache_dir=tmp_path, progress=False) == folders[1]
    assert marker.stat().st_mtime_ns == written  # reused, not retrained
    one, two = (AutoModelForCausalLM.from_pretrained(folders[n]) for n in (1, 2))
    assert any(not (a == b).all() for a, b in zip(one.parameters(), two.parameters()))  # step 2 trained further
    assert not list(tmp_path.glob(".*"))  # no staging folder left behind


def test_the_study_starts_are_installed_from_the_shipped_weights_after_a_hash_check(tmp_path):
    """The same start on every machine: a fresh cache gets the shipped bytes (no training), and a
    damaged shipped file is refused by name."""
    import json
    import shutil

    from exgrpo_verl.tasks.warm_start import SHIPPED_DIR, STRENGTHS, WarmStartSpec, file_sha256, shipped_starts, warm_start, warm_starts

    manifest = shipped_starts(SHIPPED_DIR)
    assert sorted(entry["steps"] for entry in manifest.values()) == sorted(STRENGTHS.values())
    spec = WarmStartSpec(steps=STRENGTHS["medium"])
    entry = manifest[spec.digest()]
    folder = warm_start(spec, cache_dir=tmp_path / "cache", progress=False)
    assert file_sha256(folder / "model.safetensors") == entry["weights_sha256"]
    assert json.loads((folder / "exgrpo_warm_start.json").read_text())["source"] == "shipped"

    damaged = tmp_path / "shipped"
    shutil.copytree(SHIPPED_DIR, damaged)
    weights = damaged / entry["weights"]
    content = weights.read_bytes()
    weights.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))

    with pytest.raises(ValueError, match=f"{weights}: sha256 .* the shipped warm start is damaged"):
        warm_starts(spec, [spec.steps], cache_dir=tmp_path / "other", progress=False, shipped_dir=damaged)


def test_replayed_weight_share_weighs_replayed_tokens_by_their_shaped_weight():
    from exgrpo_verl.miniature import replayed_weight_share

    # 1 token in 10 replayed at f(w) = 1/11: its share of the weights is (0.1/11) / (0.1/11 + 0.9) = 1/100.
    assert replayed_weight_share(0.1, 1 / 11) == pytest.approx(1 / 100)
    assert replayed_weight_share(0.0, 0.5) == 0.0
