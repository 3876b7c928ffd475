"""avg@k, domain averages, the avg@k spec, and the paper's numbers."""

from __future__ import annotations

import pytest

from exgrpo_verl.evaluation.metrics import (
    IN_DISTRIBUTION,
    OUT_OF_DISTRIBUTION,
    PAPER_AVERAGES_PCT,
    PAPER_QWEN_MATH_7B_EXGRPO_PCT,
    avg_at_k,
    domain_averages,
    k_for,
    samples_per_question,
    summarize,
)


def test_avg_at_k_averages_per_question_first():
    records = [
        *({"data_source": "aime", "question_id": "a", "score": s} for s in (1, 0)),  # 0.5
        *({"data_source": "aime", "question_id": "b", "score": s} for s in (1, 1, 1, 1)),  # 1.0
        {"data_source": "math", "question_id": "c", "score": 0},
    ]
    results = avg_at_k(records)
    assert results["aime"] == {"benchmark": "AIME24", "accuracy": 0.75, "questions": 2, "samples": 6}  # not 5/6
    assert results["math"]["accuracy"] == 0.0 and results["math"]["benchmark"] == "MATH-500"


def test_domain_averages_are_unweighted_and_report_missing_benchmarks():
    accuracies = {name: 0.1 * (number + 1) for number, name in enumerate(IN_DISTRIBUTION)}
    accuracies["ARC-c"] = 0.9
    averages = domain_averages(accuracies)
    assert averages["in_distribution"]["accuracy"] == pytest.approx(0.35)
    assert averages["in_distribution"]["missing"] == []
    assert averages["out_of_distribution"] == {
        "accuracy": 0.9,
        "benchmarks": ["ARC-c"],
        "missing": ["GPQA-diamond", "MMLU-Pro"],
    }
    assert domain_averages({})["in_distribution"]["accuracy"] is None


def test_paper_per_benchmark_row_matches_its_headline_averages():
    row = PAPER_QWEN_MATH_7B_EXGRPO_PCT
    headline = PAPER_AVERAGES_PCT["Qwen2.5-Math-7B"]
    assert set(row) == set(IN_DISTRIBUTION + OUT_OF_DISTRIBUTION)
    for domain, average in domain_averages(row).items():
        assert average["accuracy"] == pytest.approx(headline[domain]["exgrpo"], abs=0.06)  # the paper rounds
    assert len(PAPER_AVERAGES_PCT) == 6
    assert PAPER_AVERAGES_PCT["Llama3.1-8B"]["out_of_distribution"] == {"on_policy": 1.2, "exgrpo": 30.8}


def test_samples_per_question_spec():
    paper = samples_per_question("paper")
    assert [k_for(source, paper) for source in ("aime", "aime25", "amc", "math", "arc_c")] == [32, 32, 32, 1, 1]
    assert k_for("minerva", samples_per_question("4")) == 4
    custom = samples_per_question("aime=8, *=2")
    assert (k_for("aime", custom), k_for("math", custom)) == (8, 2)
    with pytest.raises(ValueError, match="bad part 'aime:8'"):
        samples_per_question("aime:8")
    with pytest.raises(ValueError, match=">= 1"):
        samples_per_question("0")


def test_summarize_counts_graders_outcomes_and_truncation():
    def sample(question, math_verify, boxed, finish_reason="stop"):
        grades = {
            "math_verify": {"score": math_verify, "outcome": "correct" if math_verify else "incorrect"},
            "boxed": {"score": boxed, "outcome": "correct" if boxed else "no_answer"},
        }
        return {
            "data_source": "math",
            "question_id": question,
            "finish_reason": finish_reason,
            "grader": "math_verify",
            "score": math_verify,
            "grades": grades,
        }

    records = [sample("q1", 1.0, 0.0), sample("q2", 0.0, 0.0, "length"), sample("q3", 1.0, 1.0), sample("q4", 0.0, 1.0)]
    summary = summarize(records)
    result = summary["benchmarks"]["MATH-500"]
    assert result["accuracy"] == 0.5
    assert result["accuracy_by_grader"] == {"math_verify": 0.5, "boxed": 0.5}
    assert result["outcomes"] == {"correct": 2, "incorrect": 2}
    assert result["truncated"] == 0.25
    assert summary["averages"]["in_distribution"]["benchmarks"] == ["MATH-500"]
