"""Graders on hand-written answer pairs, on the release files' real ground truths, and off the main thread."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest

from exgrpo_verl.answers import boxed_choice, extract_choice, last_boxed, normalize_answer, numbers_equal
from exgrpo_verl.evaluation import reward_function
from exgrpo_verl.evaluation.graders import grade, grade_math_verify
from exgrpo_verl.evaluation.math_verify_worker import MathVerifyWorker
from exgrpo_verl.evaluation.outcomes import CORRECT, GRADER_ERROR, INCORRECT, NO_ANSWER
from exgrpo_verl.evaluation.reward_function import compute_score, reward_error_counts

# (response, ground truth): equivalent answers both string-level and math-level graders accept.
EQUIVALENT = [
    (r"so the answer is \boxed{\dfrac{1}{2}}", r"\frac12"),
    (r"\boxed{\frac{3}{4}}", r"\tfrac34"),
    (r"\boxed{0.5}", r"\frac{1}{2}"),
    (r"\boxed{90}", r"90^\circ"),
    (r"\boxed{90^{\circ}}", r"90^\circ"),
    (r"\boxed{(3, 4]}", r"(3,4]"),
    (r"\boxed{(-\infty, 2) \cup (3, \infty)}", r"(-\infty, 2) \cup (3, \infty)"),
    (r"\boxed{[-2,7]}", r"x \in [-2,7]"),
    (r"\boxed{10080}", r"10,\!080"),
    (r"\boxed{10,080}", r"10080"),
    (r"\boxed{32348}", r"\$32,\!348"),
    (r"\boxed{\left(3, \frac{\pi}{2}\right)}", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"\boxed{\frac{270}{7}}", r"\frac{270}7\text{ degrees}"),
    (r"\boxed{142}", "142.0"),
    (r"\boxed{25}", "025"),
    (r"\boxed{x=5}", "5"),
    (r"\boxed{1.8}", r"1\frac{4}{5}"),
    (r"\boxed{864}", r"864 \mbox{ inches}^2"),
    (r"\boxed{\sqrt{2}}", r"\sqrt2"),
    (r"\boxed{\text{(C)}}", r"\text{(C)}"),
    (r"<think>maybe \boxed{7}?</think> The final answer is \boxed{12}.", "12"),
    (r"first \boxed{3}, then on reflection \boxed{4}", "4"),
]

WRONG = [
    (r"\boxed{3}", "4"),
    (r"\boxed{\frac{1}{3}}", r"\frac{1}{2}"),
    (r"\boxed{(3,4)}", r"(3,4]"),
    (r"\boxed{91^\circ}", r"90^\circ"),
    (r"<think>\boxed{12}</think> so \boxed{11}", "12"),
]


@pytest.mark.parametrize("grader", ["math_verify", "boxed"])
@pytest.mark.parametrize("response, ground_truth", EQUIVALENT)
def test_equivalent_answers_are_correct(grader, response, ground_truth):
    result = grade(response, ground_truth, grader)
    assert result.outcome == CORRECT, result
    assert result.score == 1.0


@pytest.mark.parametrize("grader", ["math_verify", "boxed"])
@pytest.mark.parametrize("response, ground_truth", WRONG)
def test_wrong_answers_are_incorrect(grader, response, ground_truth):
    result = grade(response, ground_truth, grader)
    assert result.outcome == INCORRECT, result
    assert result.score == 0.0


# Answers only the boxed grader's slow tier (math-verify on the box) or its case-folding accepts.
BOXED_BEYOND_STRINGS = [
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}"),
    (r"\boxed{x^2+2x}", r"2x+x^2"),
    (r"\boxed{\frac{\pi}{4}}", r"\dfrac{\pi}4"),
    (r"\boxed{Yes}", r"\text{yes}"),
    (r"\boxed{5}", r"\boxed{5}"),  # a boxed ground truth is unboxed first, as in the release
]


@pytest.mark.parametrize("response, ground_truth", BOXED_BEYOND_STRINGS)
def test_boxed_grader_tiers_beyond_string_equality(response, ground_truth):
    assert grade(response, ground_truth, "boxed").outcome == CORRECT


def test_boxed_grader_needs_a_box_even_when_the_prose_is_right():
    # The release's grader gives no credit without a box (OAT: "formatted": False).
    for response in ("The answer is 42", "<think>\\boxed{42}</think> so 42", "answer: \\frac{1}{2}"):
        assert grade(response, "42", "boxed").outcome == NO_ANSWER


def test_missing_box():
    # The boxed grader needs a box; math-verify falls back to the last answer it can find.
    assert grade("The answer is 42", "42", "boxed").outcome == NO_ANSWER
    assert grade("The answer is 42", "42", "math_verify").outcome == CORRECT
    assert grade("I do not know.", "42", "math_verify").outcome == NO_ANSWER
    # A box inside the thinking does not count when the solution after </think> has none.
    assert grade(r"<think>\boxed{5}</think> nothing here", "5", "boxed").outcome == NO_ANSWER
    assert grade(r"<think>\boxed{5}</think>", "5", "math_verify").outcome == NO_ANSWER


def test_last_boxed():
    assert last_boxed(r"\boxed{\frac{1}{2}} and \boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed(r"so $\boxed 5$.") == "5"
    assert last_boxed(r"\boxed{3} then cut off \boxed{\frac{1}{") == "3"  # the unfinished box is skipped
    assert last_boxed("no box") is None


@pytest.mark.parametrize(
    "text, normal",
    [
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        (r"\dfrac{17}{50}", r"\frac{17}{50}"),
        (r"\frac 59", r"\frac{5}{9}"),
        (r"\frac9{19}", r"\frac{9}{19}"),
        (r"11\sqrt2", r"11\sqrt{2}"),
        (r"5.4 \text{ cents}", "5.4"),
        (r"\text{Evelyn}", "Evelyn"),
        (r"$\frac{1}{2 n+2}$", r"\frac{1}{2n+2}"),
        (r"11,\! 111,\! 111,\! 100", "11111111100"),
        ("1,-2", "1,-2"),  # a list, not a thousands separator
        ("3, 5, 7", "3,5,7"),
        ("x = 5.", "5"),
        (r"\text{(B)}", "B"),
    ],
)
def test_normalize_answer(text, normal):
    assert normalize_answer(text) == normal


def test_numbers_equal_within_tolerance():
    assert numbers_equal("4.5e33", r"4.5\times10^{33}")
    assert numbers_equal(r"-\frac{3}{8}", "-0.375")
    assert numbers_equal("0.33333333", "1/3", rel_tol=1e-6)
    assert not numbers_equal("0.333", "1/3", rel_tol=1e-6)
    assert not numbers_equal("x", "1")
    assert not numbers_equal("1/0", "1")


def test_strict_choice_reads_only_the_box():
    assert boxed_choice(r"so \boxed{C}") == "C"
    assert boxed_choice(r"\boxed{(B) 10^-4 eV}") == "B"
    assert boxed_choice(r"<think>\boxed{A}</think> The answer is (B).") is None
    assert boxed_choice("The answer is (C).") is None
    assert boxed_choice(r"\boxed{3}", "digit") == "3"


@pytest.mark.parametrize(
    "response, label",
    [
        (r"\boxed{C}", "C"),
        (r"\boxed{(C)}", "C"),
        (r"\boxed{\text{C}}", "C"),
        (r"\boxed{C. Planetary days will become shorter.}", "C"),
        ("Therefore, the answer is (B).", "B"),
        ("The correct answer is: D", "D"),
        ("**Answer: (A)**", "A"),
        ("Answer: option E", "E"),
        ("reasoning...\n\nC.", "C"),
        ("reasoning...\n(J)", "J"),
        ("<think>the answer is (A)</think>\nThe answer is (B)", "B"),
        ("I think it is Carbon", None),
        ("A lot of thinking without a choice", None),
    ],
)
def test_extract_choice(response, label):
    assert extract_choice(response) == label


def test_choice_graders_strict_and_lenient():
    # Strict (the default, as the release): only the boxed label counts; lenient reads prose too.
    assert grade("The answer is (C).", "C", "choice").outcome == NO_ANSWER
    assert grade("The answer is (C).", "C", "choice_lenient").outcome == CORRECT
    assert grade(r"\boxed{C}", "C", "choice").outcome == CORRECT
    for grader in ("choice", "choice_lenient"):
        assert grade(r"The answer is (B). \boxed{B}", "C", grader).outcome == INCORRECT
        assert grade("no choice made", "C", grader).outcome == NO_ANSWER
        assert grade(r"\boxed{2}", "2", grader).outcome == CORRECT  # ARC-c questions numbered 1-4
        assert grade(r"\boxed{3}", "2", grader).outcome == INCORRECT
        result = grade(r"\boxed{C}", r"\frac{1}{2}", grader)
        assert result.outcome == GRADER_ERROR and "not an option label" in result.detail


def test_grade_rejects_unknown_grader_and_non_text():
    with pytest.raises(ValueError, match="choice_lenient"):
        grade(r"\boxed{1}", "1", "exact")
    with pytest.raises(TypeError, match="response must be a str"):
        grade(None, "1")


def test_compute_score_picks_the_grader_by_data_source():
    assert compute_score("math", r"<think>...</think> \boxed{\frac{1}{2}}", "0.5") == 1.0
    assert compute_score("math", r"<think>...</think> the answer is 1/2", "0.5") == 1.0  # math-verify: no box needed
    assert compute_score("aime", r"\boxed{204}", "205") == 0.0
    # Multiple choice: the strict choice grader, which math-verify alone would not apply.
    assert compute_score("arc_c", r"The answer is \boxed{C}.", "C") == 1.0
    assert compute_score("arc_c", "The answer is (C).", "C") == 0.0
    assert compute_score("gpqa_diamond", r"\boxed{C}", "D") == 0.0
    assert compute_score("TIGER-Lab/MMLU-Pro", r"\boxed{J}", "J") == 1.0


@pytest.mark.parametrize("path", ["pkg://exgrpo_verl.evaluation.reward_function", reward_function.__file__])
def test_verl_loads_compute_score_from_its_reward_config(path):
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create({"reward": {"custom_reward_function": {"path": path, "name": "compute_score"}}})
    reward_fn = get_custom_reward_fn(config)
    assert reward_fn(data_source="math", solution_str=r"\boxed{2}", ground_truth="2", extra_info={"index": 0}) == 1.0
    assert reward_fn(data_source="arc_c", solution_str="The answer is (A)", ground_truth="B", extra_info=None) == 0.0


def test_compute_score_never_raises_and_counts_errors():
    before = reward_error_counts().get("math", 0)
    assert compute_score("math", None, "3") == 0.0
    assert compute_score("math", r"\boxed{3}", None) == 0.0
    assert reward_error_counts()["math"] == before + 2


def test_math_verify_timeout_is_a_grader_error_on_the_main_thread():
    # sympy tries to evaluate 10^(10^10); math-verify's alarm stops it.
    result = grade_math_verify(r"\boxed{10^{10^{10}}}", "100", timeout_s=1)
    assert result.outcome == GRADER_ERROR and "Timeout" in result.detail


def test_math_verify_off_the_main_thread():
    # verl's reward loop calls compute_score from a thread pool: the child worker grades there.
    with ThreadPoolExecutor(max_workers=3) as pool:
        correct = list(pool.map(lambda _: grade_math_verify(r"\boxed{\dfrac{1}{2}}", "0.5"), range(6)))
        wrong = pool.submit(grade_math_verify, r"\boxed{3}", "4").result()
        slow = pool.submit(grade_math_verify, r"\boxed{10^{10^{10}}}", "100", 1).result()
    assert [result.outcome for result in correct] == [CORRECT] * 6
    assert wrong.outcome == INCORRECT
    assert slow.outcome == GRADER_ERROR and "Timeout" in slow.detail


def test_math_verify_worker_is_replaced_after_missing_its_deadline(monkeypatch):
    # The child needs >= 1 s (its first comparison runs into the 1 s alarm); the parent waits 0.2 s.
    monkeypatch.setattr(MathVerifyWorker, "DEADLINE_PER_TIMEOUT", 0.2)
    with ThreadPoolExecutor(max_workers=1) as pool:
        late = pool.submit(grade_math_verify, r"\boxed{10^{10^{10}}}", "100", 1).result()
        monkeypatch.undo()
        recovered = pool.submit(grade_math_verify, r"\boxed{1}", "1").result()
    assert late.outcome == GRADER_ERROR and "TimeoutError" in late.detail
    assert recovered.outcome == CORRECT


def test_reward_works_in_a_script_without_a_main_guard(tmp_path):
    # verl's math-verify wrapper returns 0 here (its spawn pool re-runs the unguarded script).
    script = tmp_path / "score.py"
    script.write_text(
        textwrap.dedent(
            r"""
            import json
            from concurrent.futures import ThreadPoolExecutor
            from exgrpo_verl.evaluation.reward_function import compute_score

            def score(answer):
                return compute_score("math", "<think>x</think> \\boxed{" + answer + "}", "\\frac{1}{2}")

            with ThreadPoolExecutor(2) as pool:
                threaded = list(pool.map(score, ["0.5", "1/2", "0.4"]))
            print(json.dumps({"main": [score("0.5"), score("0.4")], "threaded": threaded}))
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"main": [1.0, 0.0], "threaded": [1.0, 1.0, 0.0]}


# ----------------------------------------------------------------------------------------------
# Real ground truths from the release's evaluation files


def _unique_ground_truths(path) -> list[tuple[str, str]]:
    rows = pd.read_parquet(path)
    pairs = {(row["data_source"], row["reward_model"]["ground_truth"]) for row in rows.to_dict("records")}
    return sorted(pairs)


def _failures(pairs, response_of, grader) -> list[tuple[str, str]]:
    return [(source, truth) for source, truth in pairs if grade(response_of(truth), truth, grader).outcome != CORRECT]


@pytest.fixture(scope="module")
def math_ground_truths(eval_data_dir) -> list[tuple[str, str]]:
    pairs = _unique_ground_truths(eval_data_dir / "math_test_id.parquet")
    return random.Random(0).sample(pairs, 300)


@pytest.mark.parametrize("grader", ["math_verify", "boxed"])
def test_real_ground_truths_grade_themselves_correct(math_ground_truths, grader):
    failures = _failures(math_ground_truths, lambda truth: f"<think>...</think> \\boxed{{{truth}}}", grader)
    assert len(failures) <= 0.01 * len(math_ground_truths), failures


def test_real_ground_truths_in_another_spelling(math_ground_truths):
    # \frac -> \dfrac, $...$ wrappers dropped, a space after commas: still the same answer.
    def respell(truth: str) -> str:
        return "\\boxed{" + truth.replace("\\frac", "\\dfrac").replace("$", "").replace(",", ", ") + "}"

    for grader in ("math_verify", "boxed"):
        failures = _failures(math_ground_truths, respell, grader)
        assert len(failures) <= 0.03 * len(math_ground_truths), (grader, failures)


def test_real_ground_truths_do_not_match_other_answers(math_ground_truths):
    # Pair each ground truth with another question's; different values must not grade correct.
    shuffled = random.Random(1).sample(math_ground_truths, len(math_ground_truths))
    pairs = []
    for (_, truth), (_, other) in zip(math_ground_truths, shuffled):
        a, b = normalize_answer(truth), normalize_answer(other)
        if a != b and not numbers_equal(a, b):
            pairs.append((truth, other))
    assert len(pairs) > 200
    for grader in ("math_verify", "boxed"):
        false_matches = [(t, o) for t, o in pairs if grade(f"\\boxed{{{o}}}", t, grader).outcome == CORRECT]
        assert len(false_matches) <= 0.01 * len(pairs), (grader, false_matches)


def test_real_choice_labels(eval_data_dir):
    pairs = _unique_ground_truths(eval_data_dir / "arc_c.parquet")
    labels = {truth for _, truth in pairs}
    assert labels == {"A", "B", "C", "D", "1", "2", "3", "4"}
    for label in labels:
        assert grade(f"The answer is \\boxed{{{label}}}", label, "choice").outcome == CORRECT
        other = "2" if label == "1" else ("1" if label.isdigit() else ("B" if label == "A" else "A"))
        assert grade(f"The answer is \\boxed{{{other}}}", label, "choice").outcome == INCORRECT
        assert grade(f"The answer is ({other})", label, "choice_lenient").outcome == INCORRECT
