"""The reward guard's killable reward processes (exgrpo_verl.reward_sandbox), through verl's own
reward loading and the guard, as in a reward worker (no Ray: tests/e2e_support/guarded_scoring.py
in a subprocess, so that a hang on a thread-based guard is killed by the timeout here).

- a reward stuck in C code (catastrophic regex, never releases the GIL) is a counted timeout
  within the limit, and the other samples are scored;
- one slow sample among many fast ones costs one timeout, not the calls queued behind it (the
  time limit runs from when a process takes the call; no shared math-verify child to wait for).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exgrpo_verl.child_process import ChildStartError
from exgrpo_verl.reward_sandbox import RewardCallError, RewardSandbox

SUPPORT = Path(__file__).parent / "e2e_support"
SAMPLES, LIMIT_S, PROCESSES = 12, 2.0, 2
SLACK_S = 1.5  # killing the child and answering, on a loaded 2-core machine


def _score_rounds(tiny_qwen2) -> list[dict]:
    command = [sys.executable, str(SUPPORT / "guarded_scoring.py"), str(tiny_qwen2), str(SUPPORT / "stuck_reward.py"),
               str(SAMPLES), str(LIMIT_S), str(PROCESSES)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=150)
        output = done.stdout
    except subprocess.TimeoutExpired as timeout:
        output = timeout.stdout.decode() if isinstance(timeout.stdout, bytes) else (timeout.stdout or "")
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def _failures(round_: dict) -> dict[int, tuple[int, int]]:
    return {s["index"]: (s["exgrpo_reward_error"], s["exgrpo_reward_timeout"]) for s in round_["samples"]
            if s["exgrpo_reward_error"] or s["exgrpo_reward_timeout"]}


def test_a_slow_sample_costs_one_timeout_and_a_stuck_one_cannot_hang_the_worker(tiny_qwen2):
    rounds = _score_rounds(tiny_qwen2)
    assert len(rounds) == 2, f"the scoring process hung or failed after {len(rounds)} round(s)"
    slow_among_fast, with_stuck = rounds
    # Round 1: index 1 runs into math-verify's 5 s timeouts; the 11 fast ones are scored 1.
    assert _failures(slow_among_fast) == {1: (0, 1)}
    assert sorted(s["score"] for s in slow_among_fast["samples"]) == [0.0] + [1.0] * (SAMPLES - 1)
    # Round 2: index 0 spins in the regex engine; it times out within the limit on a warm process.
    assert _failures(with_stuck) == {0: (0, 1), 1: (0, 1)}
    stuck = next(s for s in with_stuck["samples"] if s["index"] == 0)
    assert stuck["seconds"] < LIMIT_S + SLACK_S
    assert [s["score"] for s in with_stuck["samples"] if s["index"] > 1] == [1.0] * (SAMPLES - 2)


def test_errors_and_results_cross_the_process_boundary(tmp_path):
    reward = tmp_path / "reward.py"
    reward.write_text(
        "import numpy as np\n"
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None, scale=1):\n"
        "    if solution_str == 'raise':\n"
        "        raise KeyError('no such answer')\n"
        "    return {'score': np.float32(scale), 'steps': np.arange(2), 'seen': extra_info['index']}\n"
    )
    sandbox = RewardSandbox(str(reward), "compute_score", {"scale": 3}, processes=1, timeout_s=10)
    try:
        result = sandbox.call(data_source="d", solution_str="x", ground_truth="1", extra_info={"index": 7})
        assert result == {"score": 3.0, "steps": [0, 1], "seen": 7}
        with pytest.raises(RewardCallError, match="KeyError: 'no such answer'"):
            sandbox.call(data_source="d", solution_str="raise", ground_truth="1", extra_info={"index": 7})
    finally:
        sandbox.close()
    missing = RewardSandbox(str(reward), "score_fn", {}, processes=1, timeout_s=10)
    try:
        with pytest.raises(ChildStartError, match="reward.custom_reward_function.name=score_fn"):
            missing.call(data_source="d", solution_str="x", ground_truth="1", extra_info={})
    finally:
        missing.close()
