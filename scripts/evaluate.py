"""Evaluate a model on verl parquet files: avg@k per benchmark, every sample graded by every grader.

    python scripts/evaluate.py --model PATH \\
        --data exgrpo_verl/data/eval/math_test_id.parquet exgrpo_verl/data/eval/arc_c.parquet --out results/run1
    python scripts/evaluate.py --out results/run1 --regrade   # re-score results/run1/samples.jsonl only

Repeated rows (the release's files repeat AIME/AMC questions 32 times for avg@32) are
deduplicated first; each unique question is then sampled k times (--avg-k: "paper" = 32 for
aime/aime25/amc, 1 elsewhere). Writes to --out:
- samples.jsonl: one line per sample: question_id, data_source, index, sample, prompt,
  ground_truth, response, num_tokens, finish_reason, grades {grader: {score, outcome, extracted,
  detail}}, grader (the one that counts) and score.
- summary.json: settings, per-benchmark avg@k (+ by grader, outcome counts, truncation rate),
  in-distribution / OOD averages, and generation throughput.
The paper's protocol is the default: maths counts the boxed grader (the release's OAT-style
one; math-verify is kept as a column), multiple choice the strict choice grader (only
`\\boxed{X}` counts), and the system prompt is dropped for every model (--system-prompt drop),
as the release's evaluation script does for every model it scores (--system-prompt keep keeps
the rows' system prompt, e.g. to evaluate a checkpoint as it was trained; not the paper's).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from exgrpo_verl.best_model import resolve_model
from exgrpo_verl.data import unique_questions
from exgrpo_verl.evaluation.generation import CPUFallbackRefused, checked_backend, generate, resolve_backend
from exgrpo_verl.evaluation.graders import CHOICE_GRADERS, MATH_GRADERS, grade, grader_for, graders_for
from exgrpo_verl.evaluation.metrics import k_for, samples_per_question, summarize


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder or HF id, or a run's checkpoint folder: its best/huggingface "
                        "(the best-by-validation model) is evaluated (not needed with --regrade)")
    parser.add_argument("--data", nargs="+", default=[], help="verl parquet files")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--avg-k", default="paper", help="samples per question: 'paper', K, or 'aime=32,*=1'")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grader", choices=MATH_GRADERS, default="boxed", help="the grader that counts for maths")
    parser.add_argument(
        "--choice-grader", choices=CHOICE_GRADERS, default="choice", help="multiple choice: strict (boxed) or lenient"
    )
    parser.add_argument(
        "--backend", choices=["auto", "vllm", "hf"], default="auto",
        help="auto: vLLM if it imports, else the CPU engine (refused for models over 1B parameters; hf forces it)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per forward pass (CPU engine)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per model (vLLM)")
    parser.add_argument(
        "--dtype",
        choices=["auto", "bfloat16", "float16", "float32"],
        default="auto",
        help="vLLM's compute dtype (auto: vLLM's choice, bfloat16 for a float32 checkpoint); the CPU engine computes in float32",
    )
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        help="vLLM's share of accelerator memory (default: vLLM's, 0.92); on vLLM's CPU build, the share of RAM it reserves",
    )
    parser.add_argument("--limit", type=int, help="evaluate only the first N unique questions of each data source")
    parser.add_argument(
        "--system-prompt",
        choices=["drop", "keep"],
        default="drop",
        help="drop (the paper's): the release's --remove_system True, for every model; keep: the rows' system prompt",
    )
    parser.add_argument("--regrade", action="store_true", help="re-score --out/samples.jsonl without generating")
    args = parser.parse_args(argv)
    if not args.regrade and (not args.model or not args.data):
        parser.error("--model and --data are required unless --regrade")
    if args.model:
        resolved = resolve_model(args.model)
        if resolved != args.model:
            print(f"evaluating the best-by-validation model of {args.model}: {resolved}")
        args.model = resolved
    return args


def load_questions(paths: list[str], limit: int | None) -> pd.DataFrame:
    rows = pd.concat([pd.read_parquet(path) for path in paths], ignore_index=True)
    questions = unique_questions(rows)
    if limit is not None:
        questions = questions.groupby("data_source", sort=False).head(limit).reset_index(drop=True)
    print(f"{len(rows)} rows -> {len(questions)} unique questions: {questions['data_source'].value_counts().to_dict()}")
    return questions


def drops_system_prompt(system_prompt: str) -> bool:
    """Whether the prompts lose their system message: "drop" (the release's evaluation, every model)."""
    return system_prompt == "drop"


def chat_messages(prompt, drop_system_prompt: bool) -> list[dict]:
    messages = [{"role": message["role"], "content": message["content"]} for message in prompt]
    return [m for m in messages if m["role"] != "system"] if drop_system_prompt else messages


def sample_records(questions: pd.DataFrame, args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Generate k responses per question; one ungraded record per sample, plus throughput."""
    ks = samples_per_question(args.avg_k)
    counts = [k_for(source, ks) for source in questions["data_source"]]
    drop = drops_system_prompt(args.system_prompt)
    prompts = [chat_messages(prompt, drop) for prompt in questions["prompt"]]
    started = time.perf_counter()
    responses = generate(
        args.model,
        prompts,
        n=counts,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        seed=args.seed,
        backend=args.backend,
        batch_size=args.batch_size,
        tensor_parallel_size=args.tensor_parallel_size,
        dtype=args.dtype,
        gpu_memory_utilization=args.gpu_memory_utilization,
    )
    seconds = time.perf_counter() - started
    records = []
    for question, prompt, samples in zip(questions.to_dict("records"), prompts, responses):
        for number, response in enumerate(samples):
            records.append(
                {
                    "question_id": question["question_id"],
                    "data_source": question["data_source"],
                    "index": int(question["extra_info"]["index"]),
                    "sample": number,
                    "prompt": prompt,
                    "ground_truth": question["reward_model"]["ground_truth"],
                    "response": response.text,
                    "num_tokens": response.num_tokens,
                    "finish_reason": response.finish_reason,
                }
            )
    generation = {
        "backend": resolve_backend(args.backend),
        "samples": len(records),
        "seconds_with_model_load": round(seconds, 2),
        "samples_per_second_with_model_load": round(len(records) / seconds, 3),
    }
    return records, generation


def grade_record(record: dict, grader: str, choice_grader: str = "choice") -> dict:
    """The record with grades by every grader that applies, and the score of the one that counts."""
    grades = {}
    for name in graders_for(record["data_source"]):
        result = grade(record["response"], record["ground_truth"], name)
        grades[name] = {"score": result.score, **asdict(result)}
    counted = grader_for(record["data_source"], grader, choice_grader)
    return {**record, "grades": grades, "grader": counted, "score": grades[counted]["score"]}


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def print_results(summary: dict) -> None:
    for name, result in summary["benchmarks"].items():
        counts = f"{result['questions']} questions, {result['samples']} samples"
        print(f"{name:>14}: {100 * result['accuracy']:5.1f}  ({counts})")
    for domain, average in summary["averages"].items():
        if average["accuracy"] is not None:
            missing = f"  (missing {', '.join(average['missing'])})" if average["missing"] else ""
            print(f"{domain:>14}: {100 * average['accuracy']:5.1f}{missing}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    samples_path, summary_path = out / "samples.jsonl", out / "summary.json"
    if args.regrade:
        records = read_jsonl(samples_path)
        previous = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        settings, generation = previous.get("settings", {}), previous.get("generation")
    else:
        try:
            args.backend = checked_backend(args.backend, args.model)
        except CPUFallbackRefused as error:
            raise SystemExit(f"evaluate.py: {error}") from None
        out.mkdir(parents=True, exist_ok=True)
        records, generation = sample_records(load_questions(args.data, args.limit), args)
        settings = {
            key: getattr(args, key)
            for key in ("model", "data", "avg_k", "temperature", "top_p", "max_tokens", "seed", "system_prompt", "dtype")
        }
        settings["drop_system_prompt"] = drops_system_prompt(args.system_prompt)
    print(f"grading {len(records)} samples")
    records = [grade_record(record, args.grader, args.choice_grader) for record in records]
    write_jsonl(samples_path, records)
    graders = {"grader": args.grader, "choice_grader": args.choice_grader}
    summary = {"settings": {**settings, **graders}, **summarize(records), "generation": generation}
    summary_path.write_text(json.dumps(summary, indent=2))
    print_results(summary)
    print(f"wrote {samples_path} and {summary_path}")
    return summary


if __name__ == "__main__":
    main()
