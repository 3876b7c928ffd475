"""scripts/evaluate.py --backend vllm on the CPU (vLLM's CPU build) against the project's HF
engine, on the same prompts of the toy task with the tiny model, both in float32 (`--dtype
float32`: vLLM's "auto" computes a float32 checkpoint in bfloat16): greedy answers equal, and
solve rates at temperature 1 within sampling noise.

Both run the real command line in a subprocess: vLLM spawns its engine process, which needs the
script's `if __name__ == "__main__"` guard."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from exgrpo_verl.tasks import char_hunt

REPO_ROOT = Path(__file__).resolve().parents[1]
QUESTIONS, MAX_TOKENS, SAMPLES_AT_T1 = 48, 32, 8


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> Path:
    return char_hunt.write_parquet(tmp_path_factory.mktemp("eval") / "questions.parquet", QUESTIONS, seed=3, split="test")


def _evaluate(model, data, out: Path, backend: str, temperature: float, k: int) -> list[dict]:
    command = [sys.executable, str(REPO_ROOT / "scripts" / "evaluate.py"), "--model", str(model), "--data", str(data),
               "--out", str(out), "--backend", backend, "--temperature", str(temperature), "--avg-k", str(k),
               "--max-tokens", str(MAX_TOKENS), "--seed", "0", "--dtype", "float32",
               # On vLLM's CPU build this is the share of RAM reserved at start (default 0.92).
               "--gpu-memory-utilization", "0.1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generation"]["backend"] == backend
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def _by_question(samples: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for sample in samples:
        grouped.setdefault(sample["question_id"], []).append(sample)
    return grouped


def test_greedy_answers_equal_the_hf_engine(tiny_qwen2, questions, tmp_path):
    hf = _by_question(_evaluate(tiny_qwen2, questions, tmp_path / "hf", "hf", 0.0, 1))
    vllm = _by_question(_evaluate(tiny_qwen2, questions, tmp_path / "vllm", "vllm", 0.0, 1))
    assert set(hf) == set(vllm) and len(hf) > 10
    answers = {qid: [(s["response"], s["num_tokens"], s["finish_reason"]) for s in samples] for qid, samples in hf.items()}
    mismatches = {qid: (answers[qid], [(s["response"], s["num_tokens"], s["finish_reason"]) for s in samples])
                  for qid, samples in vllm.items() if answers[qid] != [(s["response"], s["num_tokens"], s["finish_reason"]) for s in samples]}
    print(f"greedy: {len(hf) - len(mismatches)}/{len(hf)} questions give the same answer")
    assert not mismatches, mismatches


def _solve_rate(samples: list[dict]) -> tuple[float, int]:
    scores = [char_hunt.compute_score(s["data_source"], s["response"], s["ground_truth"]) for s in samples]
    return sum(scores) / len(scores), len(scores)


def test_solve_rates_at_temperature_one_agree_within_sampling_noise(tiny_qwen2, questions, tmp_path):
    hf_rate, n = _solve_rate(_evaluate(tiny_qwen2, questions, tmp_path / "hf", "hf", 1.0, SAMPLES_AT_T1))
    vllm_rate, m = _solve_rate(_evaluate(tiny_qwen2, questions, tmp_path / "vllm", "vllm", 1.0, SAMPLES_AT_T1))
    # Two independent samplers of one model: the difference of two proportions, 4 standard errors.
    pooled = (hf_rate * n + vllm_rate * m) / (n + m)
    tolerance = 4 * math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / m))
    print(f"T=1 solve rate: hf {hf_rate:.3f} vs vllm {vllm_rate:.3f} over {n} samples each (tolerance {tolerance:.3f})")
    assert 0.05 < pooled < 0.95, "the toy task must be partly solved for the comparison to mean anything"
    assert abs(hf_rate - vllm_rate) <= tolerance
