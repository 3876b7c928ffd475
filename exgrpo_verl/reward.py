"""Training rewards for verifiable math, as verl reward functions (`compute_score` signature).

`compute_score` is the reward the authors' release trained with (its reward version 3): the
rendered prompt ends with `<think>\\n`, so the release puts `<think>\\n` back in front of the
decoded response, gives 0 when `</think>` is missing, and grades only the text after the *first*
`</think>` with math-verify. The format gate matters: a response that never closes its thinking
scores 0 however right its last number is, which is the format pressure the release's solve
rates (and so the start of replay and what is stored) were measured under.

The lenient reward (no format gate) stays available as
`exgrpo_verl.evaluation.reward_function.compute_score`.

Recipes point at this file:
    reward.custom_reward_function.path=<this file> reward.custom_reward_function.name=compute_score
It never raises: a grader error or timeout scores 0.
"""

# No `from __future__ import annotations`: verl may load this file by path (see graders.py).
import re

from exgrpo_verl.answers import final_answer_text, last_boxed
from exgrpo_verl.evaluation import graders

THINK_OPEN = "<think>\n"
THINK_CLOSE = "</think>"


def release_answer_text(response: str) -> str | None:
    """The part of a response the release grades: the text after the first `</think>` of
    `<think>\\n` + response, or None when the thinking is never closed (reward 0)."""
    text = THINK_OPEN + response
    if THINK_CLOSE not in text:
        return None
    return text.split(THINK_CLOSE, 1)[1]


# A canonical integer of at most 9 digits: no sign but a minus, no leading zero, no "-0".
_CANONICAL_INTEGER = re.compile(r"0|-?[1-9][0-9]{0,8}")


def canonical_integer_verdict(graded_text: str, ground_truth: str) -> float | None:
    """math-verify's verdict without math-verify, where it is a string comparison: when the ground
    truth and the last box of the graded text (the answer `grade_math_verify` would send to
    math-verify) are both canonical integers, each denotes one integer and distinct strings
    denote distinct integers, so the verdict is 1.0 iff they are equal. None otherwise (ask
    math-verify). tests/test_reward.py checks it against math-verify on every answer of the
    miniature's sets and on the release's integer evaluation answers."""
    if not _CANONICAL_INTEGER.fullmatch(ground_truth):
        return None
    boxed = last_boxed(final_answer_text(graded_text))
    if boxed is None or not _CANONICAL_INTEGER.fullmatch(boxed):
        return None
    return float(boxed == ground_truth)


def release_reward(response: str, ground_truth: str) -> float:
    """1.0 when the thinking is closed and math-verify finds the ground truth after it, else 0.0."""
    answer = release_answer_text(response)
    if answer is None:
        return 0.0
    # The project's math-verify grader reads the text after the last `</think>` and prefers its last
    # box; on the release's answer text that is the same final answer.
    graded = THINK_CLOSE + answer
    verdict = canonical_integer_verdict(graded, str(ground_truth))  # ~8 ms of math-verify saved per sample
    return verdict if verdict is not None else graders.grade_math_verify(graded, str(ground_truth)).score


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """verl reward function: the release's format-gated math reward (`release_reward`)."""
    return release_reward(solution_str, ground_truth)
