"""A reward function that misbehaves on purpose, by question id (extra_info.index), for the
reward guard's end-to-end test; every other question gets the toy task's reward.

    index % 8 == 0   raises
    index % 8 == 1   returns a string
    index % 8 == 2   returns NaN
    index == 3       hangs (sleeps HANG_S, longer than the test's exgrpo.reward.timeout_s)
"""

import math
import time

from exgrpo_verl.tasks import char_hunt

HANG_S = 30


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    index = extra_info["index"]
    if index % 8 == 0:
        raise ValueError(f"the grader broke on question {index}")
    if index % 8 == 1:
        return "1"
    if index % 8 == 2:
        return math.nan
    if index == 3:
        time.sleep(HANG_S)
    return char_hunt.compute_score(data_source, solution_str, ground_truth, extra_info)
