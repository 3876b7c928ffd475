"""The lenient verl reward function: 1.0 when the response's final answer is correct, else 0.0.

Use with `reward.custom_reward_function.path=pkg://exgrpo_verl.evaluation.reward_function`
and `reward.custom_reward_function.name=compute_score`. Maths is graded by math-verify on the
text after the last `</think>` (the whole response when there is none: no format pressure);
multiple choice by the strict choice grader. The release's format-gated training reward is
`exgrpo_verl/reward.py`.
"""

# No `from __future__ import annotations`: verl may load this file by path (see outcomes.py).
import logging
import threading
from collections import Counter

from exgrpo_verl.evaluation.graders import grade, grader_for
from exgrpo_verl.evaluation.outcomes import GRADER_ERROR, GradeResult

logger = logging.getLogger(__name__)

_reward_errors: Counter = Counter()
_reward_errors_lock = threading.Lock()


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """verl reward function: 1.0 when the response's final answer is correct, else 0.0.

    It never raises: a grader error or an exception scores 0.0, is counted per data source
    (see `reward_error_counts`), and is logged at WARNING on the 1st, 10th, 100th... occurrence.
    """
    try:
        result = grade(solution_str, ground_truth, grader_for(data_source, math_grader="math_verify"))
    except Exception as error:  # a reward function must not take training down
        result = GradeResult(GRADER_ERROR, detail=f"{type(error).__name__}: {error}")
    if result.outcome == GRADER_ERROR:
        _count_reward_error(str(data_source), result.detail)
    return result.score


def _count_reward_error(data_source: str, detail: str) -> None:
    with _reward_errors_lock:
        _reward_errors[data_source] += 1
        total = sum(_reward_errors.values())
    if total == 10 ** (len(str(total)) - 1):  # 1, 10, 100, ...: visible without flooding the log
        logger.warning(
            "reward grader error #%d (data_source=%s), scored 0.0: %s. Counts so far: %s",
            total,
            data_source,
            detail,
            dict(_reward_errors),
        )


def reward_error_counts() -> dict[str, int]:
    """How many rewards in this process were scored 0.0 because grading failed, per data source."""
    with _reward_errors_lock:
        return dict(_reward_errors)
