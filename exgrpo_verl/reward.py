"""Training rewards for verifiable math, as verl reward functions (`compute_score` signature).

`compute_score` is the format-gated reward of the authors' release (its reward version 3): the
rendered prompt ends with `<think>\\n`, so `<think>\\n` goes back in front of the decoded
response, a response whose thinking is never closed (no `</think>`) scores 0, and math-verify
grades the answer text that follows the thinking. The format gate matters: a response that
never closes its thinking scores 0 however right its last number is, which is the format
pressure the release's solve rates (and so the start of replay and what is stored) were
measured under.

Which text is the answer when a response closes its thinking more than once (`think_rule`,
set through `reward.custom_reward_function.reward_kwargs.think_rule`):
  "last" (default): the text after the last `</think>`, the final answer;
  "release" (`+preset=release`): the text between the first and the second `</think>`, as the
      release's `split("</think>")[1]` takes it (so `...</think>\\boxed{6}</think>\\boxed{9}`
      is graded on `\\boxed{6}`).
With a single `</think>` both are the text after it.

The lenient reward (no format gate) stays available as
`exgrpo_verl.evaluation.reward_function.compute_score`.

Recipes point at this file:
    reward.custom_reward_function.path=<this file> reward.custom_reward_function.name=compute_score
It never raises on a response: a grader error or timeout scores 0. An unknown think_rule raises
ValueError naming the setting.
"""

# No `from __future__ import annotations`: verl may load this file by path (see graders.py).
import re

from exgrpo_verl.answers import final_answer_text, last_boxed
from exgrpo_verl.evaluation import graders

THINK_OPEN = "<think>\n"
THINK_CLOSE = "</think>"
THINK_RULES = ("last", "release")


def release_answer_text(response: str, think_rule: str = "last") -> str | None:
    """The part of `<think>\\n` + response that is graded under `think_rule` (see the module
    docstring), or None when the thinking is never closed (reward 0)."""
    if think_rule not in THINK_RULES:
        raise ValueError(f"reward.custom_reward_function.reward_kwargs.think_rule={think_rule!r}: "
                         f"use one of {list(THINK_RULES)}")
    parts = (THINK_OPEN + response).split(THINK_CLOSE)
    if len(parts) < 2:
        return None
    return parts[1] if think_rule == "release" else parts[-1]


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


def release_reward(response: str, ground_truth: str, think_rule: str = "last") -> float:
    """1.0 when the thinking is closed and math-verify finds the ground truth in the answer text
    (`release_answer_text`), else 0.0."""
    answer = release_answer_text(response, think_rule)
    if answer is None:
        return 0.0
    # The grader reads the text after the last `</think>` (here, exactly the answer text) and
    # prefers its last box.
    graded = THINK_CLOSE + answer
    verdict = canonical_integer_verdict(graded, str(ground_truth))  # ~8 ms of math-verify saved per sample
    return verdict if verdict is not None else graders.grade_math_verify(graded, str(ground_truth)).score


def compute_score(data_source, solution_str, ground_truth, extra_info=None, think_rule="last", **kwargs) -> float:
    """verl reward function: the format-gated math reward (`release_reward`)."""
    return release_reward(solution_str, ground_truth, think_rule)
