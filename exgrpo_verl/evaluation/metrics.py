"""avg@k per benchmark, the paper's in-distribution / out-of-distribution averages, and its numbers.

avg@k (the paper's metric): sample k responses per question, score each 0/1, take the mean
over a question's samples, then the mean over the benchmark's questions. With k = 1 it is plain
accuracy. The paper uses k = 32 for AIME24, AIME25 and AMC, k = 1 elsewhere.

Accuracies are fractions in [0, 1] in code and files; the paper's numbers are percentages and
their names end in `_PCT`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

# data_source (as in the release's parquet files and ours) -> the benchmark's name in the paper.
BENCHMARK_NAMES = {
    "aime": "AIME24",
    "aime25": "AIME25",
    "amc": "AMC23",
    "math": "MATH-500",
    "minerva": "Minerva",
    "olympiad_bench": "OlympiadBench",
    "arc_c": "ARC-c",
    "gpqa_diamond": "GPQA-diamond",
    "gpqa": "GPQA-diamond",  # the release's own GPQA file names it so
    "mmlu_pro": "MMLU-Pro",
}
IN_DISTRIBUTION = ("AIME24", "AIME25", "AMC23", "MATH-500", "Minerva", "OlympiadBench")
OUT_OF_DISTRIBUTION = ("ARC-c", "GPQA-diamond", "MMLU-Pro")
DOMAINS = {"in_distribution": IN_DISTRIBUTION, "out_of_distribution": OUT_OF_DISTRIBUTION}

# Samples per question in the paper's protocol; benchmarks not listed use 1.
PAPER_AVG_K = {"aime": 32, "aime25": 32, "amc": 32}

# The paper's headline table: average accuracy (%) of on-policy RLVR and ExGRPO per backbone.
PAPER_AVERAGES_PCT = {
    model: {
        "in_distribution": {"on_policy": in_on_policy, "exgrpo": in_exgrpo},
        "out_of_distribution": {"on_policy": ood_on_policy, "exgrpo": ood_exgrpo},
    }
    for model, in_on_policy, in_exgrpo, ood_on_policy, ood_exgrpo in (
        ("Qwen2.5-Math-7B", 45.3, 48.3, 56.4, 58.3),
        ("LUFFY-Qwen-Math-7B", 48.7, 51.4, 60.7, 60.2),
        ("Qwen2.5-Math-1.5B", 30.0, 35.3, 38.9, 40.2),
        ("Qwen2.5-7B-Instruct", 35.2, 39.3, 56.0, 62.2),
        ("Llama3.1-8B", 3.4, 6.1, 1.2, 30.8),
        ("Llama3.1-8B-Instruct", 19.9, 23.0, 44.9, 52.0),
    )
}

# The paper's per-benchmark row for ExGRPO on Qwen2.5-Math-7B (zero RL), accuracy in %.
PAPER_QWEN_MATH_7B_EXGRPO_PCT = {
    "AIME24": 31.6,
    "AIME25": 18.7,
    "AMC23": 66.3,
    "MATH-500": 87.4,
    "Minerva": 36.0,
    "OlympiadBench": 50.1,
    "ARC-c": 84.7,
    "GPQA-diamond": 37.4,
    "MMLU-Pro": 52.9,
}


def benchmark_name(data_source: str) -> str:
    """The paper's name for a data source; unknown sources keep their own name."""
    return BENCHMARK_NAMES.get(data_source, data_source)


def paper_order(benchmark: str) -> tuple[int, str]:
    """Sort key: the paper's benchmark order, unknown benchmarks after, by name."""
    order = IN_DISTRIBUTION + OUT_OF_DISTRIBUTION
    return (order.index(benchmark), "") if benchmark in order else (len(order), benchmark)


def samples_per_question(spec: str) -> dict[str, int] | int:
    """Parse an avg@k spec: "paper" (32 for aime/aime25/amc, 1 elsewhere), "K" (K everywhere),
    or "aime=32,amc=16,*=4" (per data source; "*" sets the rest, default 1).

    Returns an int for a uniform K, else a dict data_source -> K with "*" for the rest.
    """
    spec = spec.strip()
    if spec == "paper":
        return {**PAPER_AVG_K, "*": 1}
    if spec.isdigit():
        return _positive(int(spec), spec)
    ks = {"*": 1}
    for part in spec.split(","):
        source, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(
                f"avg@k spec {spec!r}: expected 'paper', an integer, or 'source=K,...' (bad part {part!r})"
            )
        ks[source.strip()] = _positive(int(value), spec)
    return ks


def _positive(k: int, spec: str) -> int:
    if k < 1:
        raise ValueError(f"avg@k spec {spec!r}: samples per question must be >= 1")
    return k


def k_for(data_source: str, ks: dict[str, int] | int) -> int:
    """Samples per question for a data source under a parsed spec."""
    return ks if isinstance(ks, int) else ks.get(data_source, ks.get("*", 1))


def avg_at_k(records: Iterable[Mapping], score_key: str = "score") -> dict[str, dict]:
    """Per data source: avg@k over the records, each with data_source, question_id and a 0/1 score.

    Returns {data_source: {"benchmark", "accuracy", "questions", "samples"}}: the mean over each
    question's samples, then over questions, so a question with more samples does not weigh more.
    """
    by_question: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        by_question[record["data_source"]][record["question_id"]].append(float(record[score_key]))
    results = {}
    for data_source, questions in sorted(by_question.items()):
        per_question = [sum(scores) / len(scores) for scores in questions.values()]
        results[data_source] = {
            "benchmark": benchmark_name(data_source),
            "accuracy": sum(per_question) / len(per_question),
            "questions": len(per_question),
            "samples": sum(len(scores) for scores in questions.values()),
        }
    return results


def domain_averages(accuracy_by_benchmark: Mapping[str, float]) -> dict[str, dict]:
    """The paper's in-distribution and out-of-distribution averages: the unweighted mean over a
    domain's benchmarks. Benchmarks absent from the input are listed under "missing", and the
    mean is over those present (None when none is)."""
    averages = {}
    for domain, benchmarks in DOMAINS.items():
        present = [name for name in benchmarks if name in accuracy_by_benchmark]
        averages[domain] = {
            "accuracy": sum(accuracy_by_benchmark[name] for name in present) / len(present) if present else None,
            "benchmarks": present,
            "missing": [name for name in benchmarks if name not in accuracy_by_benchmark],
        }
    return averages


def summarize(records: Sequence[Mapping]) -> dict:
    """Per-benchmark results and domain averages for graded samples (the records of
    scripts/evaluate.py: data_source, question_id, finish_reason, grader (the one that counts),
    score (its 0/1), grades {grader name: {"score", "outcome", ...}}).

    Returns {"benchmarks": {name: {data_source, accuracy, questions, samples, grader,
    accuracy_by_grader, outcomes, truncated}}, "averages": domain_averages(...)}.
    """
    by_source: dict[str, list[Mapping]] = defaultdict(list)
    for record in records:
        by_source[record["data_source"]].append(record)
    benchmarks = {}
    for data_source, samples in sorted(by_source.items(), key=lambda item: paper_order(benchmark_name(item[0]))):
        result = avg_at_k(samples)[data_source]
        grader = samples[0]["grader"]
        result.update(
            data_source=data_source,
            grader=grader,
            accuracy_by_grader={name: _accuracy_by(samples, name) for name in samples[0]["grades"]},
            outcomes=dict(Counter(sample["grades"][grader]["outcome"] for sample in samples)),
            truncated=sum(sample["finish_reason"] == "length" for sample in samples) / len(samples),
        )
        benchmarks[result.pop("benchmark")] = result
    accuracies = {name: result["accuracy"] for name, result in benchmarks.items()}
    return {"benchmarks": benchmarks, "averages": domain_averages(accuracies)}


def _accuracy_by(samples: Sequence[Mapping], grader: str) -> float:
    scored = [{**sample, "score": sample["grades"][grader]["score"]} for sample in samples]
    return next(iter(avg_at_k(scored).values()))["accuracy"]
