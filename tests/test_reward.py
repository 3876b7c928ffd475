"""The release's format-gated training reward against hand-written responses (real math-verify)."""

import pytest

from exgrpo_verl import reward
from exgrpo_verl.evaluation import reward_function

# (response as the model wrote it after the prompt's "<think>\n", ground truth, release reward, lenient reward)
CASES = [
    ("7-1=6 6+3=9</think>\\boxed{9}", "9", 1.0, 1.0),
    ("7-1=6 6+3=9</think>The answer is $\\frac{18}{2}$.", "9", 1.0, 1.0),
    ("7-1=6 6+3=9 \\boxed{9}", "9", 0.0, 1.0),  # thinking never closed: the release scores 0
    ("7-1=6</think>\\boxed{6}</think>\\boxed{9}", "9", 1.0, 1.0),  # graded after the first close
    ("7-1=6 6+3=9</think>\\boxed{8}", "9", 0.0, 0.0),
    ("</think>", "9", 0.0, 0.0),
    ("work \\boxed{1/2} </think> so \\boxed{0.5}", "\\frac{1}{2}", 1.0, 1.0),
]


@pytest.mark.parametrize("response, truth, release, lenient", CASES)
def test_release_and_lenient_rewards(response, truth, release, lenient):
    assert reward.compute_score("math", response, truth) == release
    assert reward_function.compute_score("math", response, truth) == lenient


def test_release_answer_text_is_after_the_first_close():
    assert reward.release_answer_text("a</think>b</think>c") == "b</think>c"
    assert reward.release_answer_text("no close \\boxed{1}") is None


def test_release_reward_scores_off_the_main_thread_as_verl_calls_it():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        scores = list(pool.map(lambda case: reward.compute_score("math", case[0], case[1]), CASES))
    assert scores == [case[2] for case in CASES]
