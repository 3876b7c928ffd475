"""Rewards for the reward-sandbox tests, by question id (extra_info.index):

    index 0   STUCK: spins in the regex engine's C code, never releasing the GIL (the probe's
              catastrophic regular expression, ~2^60 backtracking steps)
    index 1   SLOW: a math-verify comparison that runs into math-verify's own 5 s timeouts
              (10^(10^10)), longer than the tests' time limit
    others    a fast math-verify comparison of "1" with the ground truth
"""

import re

import math_verify  # noqa: F401  (imported here, not on the first call: that call has the tests' 2 s limit)

from exgrpo_verl.evaluation import math_verify_worker


def stuck_in_c_code() -> bool:
    return re.match(r"(a+)+$", "a" * 60 + "b") is not None


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    index = extra_info["index"]
    if index == 0:
        return float(stuck_in_c_code())
    if index == 1:
        return math_verify_worker.compare(r"10^{10^{10}}", r"\boxed{100}").score
    return math_verify_worker.compare(str(ground_truth), r"\boxed{1}").score
