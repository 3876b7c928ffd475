"""Graders: is a model's response a correct answer to a question?

All graders return a `GradeResult` (`outcomes.py`): correct / incorrect / no_answer /
grader_error, the answer text that was compared, and why. A grader never raises on odd input
text: a parse failure or a timeout becomes a "grader_error" outcome, scored 0.

- `grade_boxed`: the grader behind the paper's tables. The release scores its evaluations with
  OAT's `boxed_reward_fn(fast=False)` (its `eval_scripts/oat_math_grader.py`); this is our own
  code after it: the answer must be in a `\\boxed{}` after `</think>` (none: no_answer, whatever
  the prose says), and it is correct when its normalised string equals the ground truth's, when
  both read as the same number, or, the slow tier, when math-verify finds them equal.
- `grade_math_verify`: math-verify on the text after `</think>`, preferring its last box but
  falling back to whatever answer math-verify finds there. Recorded as a column.
- `grade_choice`: multiple choice (ARC-c, GPQA, MMLU-Pro), strict as the release is: only the
  label in `\\boxed{C}` counts. The ground truth is an option label, A-J (or 1-9: a few ARC-c
  questions number their options).
- `grade_choice_lenient`: also reads "the answer is (C)", "Answer: C" or a last line "C.".
"""

from exgrpo_verl.answers import (
    NUMERIC_REL_TOL,
    boxed_choice,
    choice_label,
    extract_choice,
    final_answer_text,
    last_boxed,
    normalize_answer,
    numbers_equal,
)
from exgrpo_verl.evaluation import math_verify_worker
from exgrpo_verl.evaluation.math_verify_worker import MATH_VERIFY_TIMEOUT_S
from exgrpo_verl.evaluation.outcomes import CORRECT, GRADER_ERROR, INCORRECT, NO_ANSWER, GradeResult


def grade_math_verify(response: str, ground_truth: str, timeout_s: int = MATH_VERIFY_TIMEOUT_S) -> GradeResult:
    """math-verify's verdict on the response's final answer (its last box, else the text after `</think>`).

    timeout_s bounds each parse and each comparison (whole seconds: math-verify uses signal.alarm).
    """
    answer_text = final_answer_text(response)
    boxed = last_boxed(answer_text)
    prediction = "\\boxed{" + boxed + "}" if boxed is not None else answer_text
    if not prediction.strip():
        return GradeResult(NO_ANSWER, detail="nothing after </think>")
    return math_verify_worker.compare(ground_truth, prediction, timeout_s)


def grade_boxed(
    response: str, ground_truth: str, rel_tol: float = NUMERIC_REL_TOL, timeout_s: int = MATH_VERIFY_TIMEOUT_S
) -> GradeResult:
    """The paper's grader: the last box after `</think>` must equal the ground truth as a
    normalised string, as a number within rel_tol, or, failing both, by math-verify.

    As in the release, a boxed ground truth is unboxed first, and a response without a box
    gets no credit (no_answer) even when its prose holds the right answer.
    """
    boxed = last_boxed(final_answer_text(response))
    if boxed is None:
        return GradeResult(NO_ANSWER, detail="no \\boxed{} answer after </think>")
    truth = last_boxed(ground_truth) if "\\boxed" in ground_truth else ground_truth
    predicted, expected = normalize_answer(boxed), normalize_answer(truth or "")
    if not predicted:
        return GradeResult(NO_ANSWER, boxed, "the \\boxed{} is empty")
    if not expected:
        return GradeResult(GRADER_ERROR, boxed, f"the ground truth {ground_truth!r} is empty after normalisation")
    # Text answers ("Yes", "Evelyn") compare case-insensitively, as the release's normaliser lowercases.
    if predicted.lower() == expected.lower() or numbers_equal(predicted, expected, rel_tol):
        return GradeResult(CORRECT, boxed)
    verdict = math_verify_worker.compare(truth, "\\boxed{" + boxed + "}", timeout_s)
    if verdict.outcome == NO_ANSWER:  # math-verify cannot read the box: the string tiers said no
        return GradeResult(INCORRECT, boxed, verdict.detail)
    return GradeResult(verdict.outcome, boxed, verdict.detail)


def grade_choice(response: str, ground_truth: str) -> GradeResult:
    """Correct when the label in the response's last box equals the ground-truth label."""
    return _grade_label(response, ground_truth, boxed_choice, "no option label in a \\boxed{} after </think>")


def grade_choice_lenient(response: str, ground_truth: str) -> GradeResult:
    """Correct when the label the response chose, in a box or in prose, equals the ground truth's."""
    return _grade_label(response, ground_truth, extract_choice, "no option label found in the answer")


def _grade_label(response: str, ground_truth: str, read_label, none_found: str) -> GradeResult:
    expected = choice_label(ground_truth)
    if expected is None:
        detail = f"the ground truth {ground_truth!r} is not an option label (A-J or 1-9)"
        return GradeResult(GRADER_ERROR, detail=detail)
    chosen = read_label(response, "digit" if expected.isdigit() else "letter")
    if chosen is None:
        return GradeResult(NO_ANSWER, detail=none_found)
    return GradeResult(CORRECT if chosen == expected else INCORRECT, chosen)


# ----------------------------------------------------------------------------------------------
# Which grader for which data


GRADERS = {
    "boxed": grade_boxed,
    "math_verify": grade_math_verify,
    "choice": grade_choice,
    "choice_lenient": grade_choice_lenient,
}
MATH_GRADERS = ("boxed", "math_verify")
CHOICE_GRADERS = ("choice", "choice_lenient")

# Data sources (or the last part of an HF path) that are multiple choice, matched as prefixes.
MULTIPLE_CHOICE_DATA_SOURCES = ("arc_c", "arc-c", "ai2_arc", "gpqa", "mmlu_pro", "mmlu-pro")


def is_multiple_choice(data_source: str) -> bool:
    return str(data_source).lower().rsplit("/", 1)[-1].startswith(MULTIPLE_CHOICE_DATA_SOURCES)


def grader_for(data_source: str, math_grader: str = "boxed", choice_grader: str = "choice") -> str:
    """The grader that counts for a data source: choice_grader for multiple choice, else math_grader."""
    for name, allowed in ((math_grader, MATH_GRADERS), (choice_grader, CHOICE_GRADERS)):
        if name not in allowed:
            raise ValueError(f"grader {name!r}: expected one of {allowed}")
    return choice_grader if is_multiple_choice(data_source) else math_grader


def graders_for(data_source: str) -> tuple[str, ...]:
    """Every grader that applies to a data source (evaluation records all of them)."""
    return MATH_GRADERS + CHOICE_GRADERS if is_multiple_choice(data_source) else MATH_GRADERS


def grade(response: str, ground_truth: str, grader: str = "boxed") -> GradeResult:
    """Grade one response with the named grader (a key of GRADERS)."""
    if grader not in GRADERS:
        raise ValueError(f"grader={grader!r}: expected one of {sorted(GRADERS)}")
    for name, value in (("response", response), ("ground_truth", ground_truth)):
        if not isinstance(value, str):
            raise TypeError(f"grade: {name} must be a str, got {type(value).__name__}; decode token ids first")
    return GRADERS[grader](response, ground_truth)
