"""End to end on real rows with the tiny model on the CPU: evaluate -> regrade -> table.

The tiny model's accuracy is ~0; what is tested is the pipeline: deduplication, k samples per
question, the JSONL and summary formats, regrading from the JSONL, and the table and plot.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_qwen2, small_eval_parquet, load_script):
    out = tmp_path_factory.mktemp("run")
    argv = ["--model", str(tiny_qwen2), "--data", str(small_eval_parquet), "--out", str(out)]
    argv += ["--avg-k", "2", "--max-tokens", "16", "--backend", "hf"]
    summary = load_script("evaluate").main(argv)
    return out, summary


def read_samples(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_every_unique_question_is_sampled_k_times(evaluated):
    out, _ = evaluated
    samples = read_samples(out)
    per_question = Counter(sample["question_id"] for sample in samples)
    # 99 math rows (AIME/AMC question 0 repeated 32 times) + 2 ARC-c rows -> 8 unique questions.
    assert len(per_question) == 8 and set(per_question.values()) == {2}
    per_source = Counter(sample["data_source"] for sample in samples)
    assert per_source == {"aime": 2, "aime25": 2, "amc": 2, "math": 2, "minerva": 2, "olympiad_bench": 2, "arc_c": 4}


def test_samples_record_prompt_response_truth_and_every_graders_score(evaluated):
    out, _ = evaluated
    for sample in read_samples(out):
        assert [m["role"] for m in sample["prompt"]] == ["user"] and isinstance(sample["response"], str)  # system dropped
        assert sample["ground_truth"] and 1 <= sample["num_tokens"] <= 16
        choice = {"choice", "choice_lenient"} if sample["data_source"] == "arc_c" else set()
        assert set(sample["grades"]) == {"math_verify", "boxed"} | choice
        # The paper's protocol: the boxed grader for maths, the strict choice grader for ARC-c.
        assert sample["grader"] == ("choice" if sample["data_source"] == "arc_c" else "boxed")
        assert sample["score"] == sample["grades"][sample["grader"]]["score"] in (0.0, 1.0)


def test_summary(evaluated):
    out, summary = evaluated
    assert json.loads((out / "summary.json").read_text()) == summary
    benchmarks = summary["benchmarks"]
    assert list(benchmarks) == ["AIME24", "AIME25", "AMC23", "MATH-500", "Minerva", "OlympiadBench", "ARC-c"]
    assert benchmarks["ARC-c"]["questions"] == 2 and benchmarks["AIME24"]["samples"] == 2
    assert summary["averages"]["in_distribution"]["missing"] == []
    assert summary["averages"]["out_of_distribution"]["missing"] == ["GPQA-diamond", "MMLU-Pro"]
    settings = summary["settings"]
    assert settings["avg_k"] == "2" and (settings["grader"], settings["choice_grader"]) == ("boxed", "choice")
    assert settings["system_prompt"] == "drop" and settings["drop_system_prompt"] is True  # the paper's, every model
    generation = summary["generation"]
    assert generation["backend"] == "hf" and generation["samples"] == 16
    assert generation["samples_per_second_with_model_load"] > 0


def test_regrade_rescores_the_jsonl_without_generating(evaluated, load_script, tmp_path):
    out, _ = evaluated
    rerun = tmp_path / "rerun"
    rerun.mkdir()
    samples = read_samples(out)
    for sample in samples:  # the first AIME24 sample now answers correctly
        if sample["data_source"] == "aime" and sample["sample"] == 0:
            sample["response"] = f"<think>...</think> The answer is \\boxed{{{int(sample['ground_truth'])}}}."
    (rerun / "samples.jsonl").write_text("".join(json.dumps(sample) + "\n" for sample in samples))
    (rerun / "summary.json").write_text((out / "summary.json").read_text())

    argv = ["--out", str(rerun), "--regrade", "--grader", "math_verify", "--choice-grader", "choice_lenient"]
    summary = load_script("evaluate").main(argv)
    aime = summary["benchmarks"]["AIME24"]
    assert aime["accuracy"] == 0.5  # one of its two samples
    assert aime["grader"] == "math_verify" and aime["accuracy_by_grader"] == {"math_verify": 0.5, "boxed": 0.5}
    assert summary["generation"]["samples"] == 16  # kept from the generating run
    assert summary["benchmarks"]["ARC-c"]["grader"] == "choice_lenient"


@pytest.mark.parametrize("choice, drops", [("drop", True), ("keep", False)])
def test_system_prompt_is_dropped_unless_kept(load_script, choice, drops):
    evaluate = load_script("evaluate")
    assert evaluate.drops_system_prompt(choice) is drops
    prompt = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    assert [m["role"] for m in evaluate.chat_messages(prompt, drops)] == (["user"] if drops else ["system", "user"])


def test_the_paper_route_drops_the_system_prompt_for_our_own_checkpoints_too(load_script):
    """The default (no --system-prompt): dropped whatever the model, as the release's evaluation
    asserts for every run; it used to be kept for anything not named ExGRPO-*."""
    args = load_script("evaluate").parse_args(["--model", "outputs/qwen2.5-math-7b-exgrpo/checkpoints", "--data", "x.parquet", "--out", "o"])
    assert args.system_prompt == "drop"


def test_table_and_plot(evaluated, load_script, tmp_path):
    out, _ = evaluated
    load_script("make_table").main(["--run", f"tiny={out / 'summary.json'}", "--out", str(tmp_path)])
    markdown = (tmp_path / "results.md").read_text()
    assert "| tiny | 0.0 |" in markdown and "| tiny [math_verify] | 0.0 |" in markdown
    paper_row = "31.6 | 18.7 | 66.3 | 87.4 | 36.0 | 50.1 | 48.3 | 84.7 | 37.4 | 52.9 | 58.3"
    assert f"| paper: ExGRPO Qwen2.5-Math-7B | {paper_row} |" in markdown
    assert "0.0\u2020 |" in markdown  # the OOD average lacks GPQA and MMLU-Pro
    latex = (tmp_path / "results.tex").read_text()
    assert latex.startswith("\\begin{tabular}{l" + "r" * 11 + "}") and "0.0$^\\dagger$" in latex
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_rescores_maths_with_the_other_grader(load_script):
    def benchmark(accuracy, grader, by_grader):
        return {"accuracy": accuracy, "grader": grader, "accuracy_by_grader": by_grader}

    summary = {
        "benchmarks": {
            "AIME24": benchmark(0.5, "boxed", {"boxed": 0.5, "math_verify": 0.25}),
            "ARC-c": benchmark(0.8, "choice", {"boxed": 0.1, "math_verify": 0.1, "choice": 0.8, "choice_lenient": 0.9}),
        }
    }
    make_table = load_script("make_table")
    counted, regraded = make_table.run_row(summary), make_table.run_row(summary, "math_verify")
    assert counted["AIME24"] == (50.0, False) and regraded["AIME24"] == (25.0, False)
    assert counted["ARC-c"] == regraded["ARC-c"] == (80.0, False)  # multiple choice keeps its choice grader
    assert regraded[make_table.IN_AVERAGE] == (25.0, True)  # five in-distribution benchmarks missing
