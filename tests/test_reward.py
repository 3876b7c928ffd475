"""The release's format-gated training reward against hand-written responses (real math-verify)."""

import pytest

from exgrpo_verl import reward
from exgrpo_verl.evaluation import reward_function

# (response as the model wrote it after the prompt's "<think>\n", ground truth,
#  reward under think_rule "last" (default), under "release" (the preset), lenient reward)
CASES = [
    ("7-1=6 6+3=9</think>\\boxed{9}", "9", 1.0, 1.0, 1.0),
    ("7-1=6 6+3=9</think>The answer is $\\frac{18}{2}$.", "9", 1.0, 1.0, 1.0),
    ("7-1=6 6+3=9 \\boxed{9}", "9", 0.0, 0.0, 1.0),  # thinking never closed: the release scores 0
    # Two closes: the default grades after the last, the release between the first and the second.
    ("7-1=6</think>\\boxed{6}</think>\\boxed{9}", "9", 1.0, 0.0, 1.0),
    ("7-1=6</think>\\boxed{6}</think>\\boxed{9}", "6", 0.0, 1.0, 0.0),
    ("7-1=6 6+3=9</think>\\boxed{8}", "9", 0.0, 0.0, 0.0),
    ("</think>", "9", 0.0, 0.0, 0.0),
    ("work \\boxed{1/2} </think> so \\boxed{0.5}", "\\frac{1}{2}", 1.0, 1.0, 1.0),
]


@pytest.mark.parametrize("response, truth, last, release, lenient", CASES)
def test_format_gated_rewards_under_each_think_rule_and_the_lenient_reward(response, truth, last, release, lenient):
    assert reward.compute_score("math", response, truth) == last
    assert reward.compute_score("math", response, truth, think_rule="release") == release
    assert reward_function.compute_score("math", response, truth) == lenient


def test_answer_text_after_the_last_close_or_between_the_first_two():
    assert reward.release_answer_text("a</think>b</think>c") == "c"
    assert reward.release_answer_text("a</think>b</think>c", "release") == "b"
    assert reward.release_answer_text("a</think>b", "release") == "b"
    assert reward.release_answer_text("no close \\boxed{1}") is None


def test_an_unknown_think_rule_names_the_setting():
    with pytest.raises(ValueError, match="reward_kwargs.think_rule='first'"):
        reward.compute_score("math", "</think>1", "1", think_rule="first")


def test_the_preset_passes_the_release_rule_as_verl_calls_the_function(tmp_path):
    """verl loads compute_score by path and merges reward_kwargs into every call."""
    from hydra import compose, initialize_config_dir

    from exgrpo_verl.main import CONFIG_DIR
    from verl.trainer.ppo.reward import get_custom_reward_fn

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        config = compose(config_name="exgrpo", overrides=["+preset=release", f"reward.custom_reward_function.path={reward.__file__}"])
    score = get_custom_reward_fn(config)
    assert score(data_source="math", solution_str=CASES[3][0], ground_truth="9") == 0.0
    assert score(data_source="math", solution_str=CASES[3][0], ground_truth="6") == 1.0


def test_release_reward_scores_off_the_main_thread_as_verl_calls_it():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        scores = list(pool.map(lambda case: reward.compute_score("math", case[0], case[1]), CASES))
    assert scores == [case[2] for case in CASES]


def _release_integer_answers() -> set[str]:
    import re
    from pathlib import Path

    import pandas as pd

    folder = Path(reward.__file__).parent / "data" / "eval"
    truths = {row["ground_truth"] for name in ("math_valid", "math_test_id") for row in pd.read_parquet(folder / f"{name}.parquet")["reward_model"]}
    return {truth for truth in truths if re.fullmatch(r"0|-?[1-9][0-9]{0,8}", truth)}


def test_the_integer_fast_path_gives_math_verifys_verdict_on_every_answer_it_applies_to():
    """Every answer of the miniature (the task keeps every value in [0, value_max]) and every
    integer answer of the release's math evaluation sets, against a right and a wrong integer
    answer: the fast path's verdict is math-verify's own (called directly, no fast path)."""
    from exgrpo_verl.evaluation.math_verify_worker import math_verify_compare
    from exgrpo_verl.tasks.arithmetic import ArithmeticTask

    miniature = {str(value) for value in range(ArithmeticTask().value_max + 1)}
    release = _release_integer_answers()
    assert len(release) > 300  # 318 distinct integer answers in math_valid + math_test_id
    for truth in sorted(miniature | release):
        for predicted in (truth, str(int(truth) + 1)):
            graded = f"</think>so \\boxed{{{predicted}}}"
            fast = reward.canonical_integer_verdict(graded, truth)
            assert fast == math_verify_compare(truth, f"\\boxed{{{predicted}}}", 5).score, (truth, predicted)


@pytest.mark.parametrize("graded, truth", [
    ("</think>\\boxed{007}", "7"), ("</think>\\boxed{-0}", "0"), ("</think>\\boxed{+7}", "7"),
    ("</think>\\boxed{7.0}", "7"), ("</think>\\boxed{1,000}", "1000"), ("</think>the answer is 7", "7"),
    ("</think>\\boxed{7}", "\\frac{14}{2}"), ("</think>\\boxed{1234567890}", "1234567890"),
])
def test_the_integer_fast_path_leaves_everything_else_to_math_verify(graded, truth):
    assert reward.canonical_integer_verdict(graded, truth) is None
