"""A reward function that misbehaves on purpose, by question id (extra_info.index), for the
reward guard's end-to-end test; every other question gets the toy task's reward.

    index % 8 == 0   raises
    index % 8 == 1   returns a string
    index % 8 == 2   returns NaN
    index == 3       hangs in C code: a catastrophic regular expression (~2^60 backtracking steps)
                     that never releases the GIL, so no thread-based time limit can interrupt it
"""

import math
import re

from exgrpo_verl.tasks import char_hunt


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    index = extra_info["index"]
    if index % 8 == 0:
        raise ValueError(f"the grader broke on question {index}")
    if index % 8 == 1:
        return "1"
    if index % 8 == 2:
        return math.nan
    if index == 3:
        re.match(r"(a+)+$", "a" * 60 + "b")
    return char_hunt.compute_score(data_source, solution_str, ground_truth, extra_info)
