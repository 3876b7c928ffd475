"""Graders: is a model's response a correct answer to a question?

All graders return a `GradeResult`: an outcome (correct / incorrect / no_answer / grader_error),
the answer text that was compared, and a detail saying why. A grader never raises on odd input
text: a parse failure or a timeout becomes a "grader_error" outcome, scored 0.

- `grade_math_verify`: the paper's grader. Takes the text after the last `</think>`, prefers its
  last `\\boxed{}`, and asks math-verify whether it equals the ground truth (sympy-level
  equality: 1/2 == 0.5 == \\frac{1}{2}, intervals, sets, matrices).
- `grade_boxed`: the string grader the release re-grades its final tables with. The last
  `\\boxed{}` only, normalised (spaces, \\left/\\right, \\text{}, \\dfrac, degrees, units,
  thousands separators), then exact match, or equality within a relative tolerance when both
  sides read as numbers.
- `grade_choice`: multiple choice (ARC-c, GPQA, MMLU-Pro). The ground truth is an option label,
  A-J (or 1-9: a few ARC-c questions number their options); the chosen label is read from
  `\\boxed{C}`, "the answer is (C)", or a last line such as "C." / "(C)".

`compute_score` is the verl reward function (`reward.custom_reward_function.path/name`).

How math-verify is called, and why. math-verify bounds its sympy work with `signal.alarm`,
which works only on a process's main thread. verl's own wrapper gets around that with a
`spawn` process pool, which scores 0 without a word in any script lacking an
`if __name__ == "__main__":` guard; and verl's reward loop calls the reward function from a
thread pool, off the main thread. So: on the main thread we call math-verify directly, with its
own timeouts; on any other thread we send the comparison to a child process (one per process,
started with `python -m`, so it never re-imports the caller's script), which runs math-verify on
its own main thread, answers in JSON lines over pipes, and is killed and restarted if it misses
its deadline. No pool, no pickling, no `__main__` guard needed by callers. POSIX only.
"""

# No `from __future__ import annotations`: verl may load this file by path without registering it
# in sys.modules, and dataclasses cannot resolve string annotations of such a module.
import atexit
import json
import logging
import math
import os
import re
import select
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from fractions import Fraction
from itertools import product
from pathlib import Path

logger = logging.getLogger(__name__)

CORRECT = "correct"
INCORRECT = "incorrect"
NO_ANSWER = "no_answer"
GRADER_ERROR = "grader_error"

THINK_END = "</think>"
MATH_VERIFY_TIMEOUT_S = 5  # per parse / per comparison; an int because signal.alarm takes whole seconds
NUMERIC_REL_TOL = 1e-6


@dataclass(frozen=True)
class GradeResult:
    outcome: str  # CORRECT, INCORRECT, NO_ANSWER or GRADER_ERROR
    extracted: str | None = None  # the answer text the grader compared, when it found one
    detail: str = ""  # why: for no_answer and grader_error

    @property
    def score(self) -> float:
        return 1.0 if self.outcome == CORRECT else 0.0


# ----------------------------------------------------------------------------------------------
# Finding the answer in a response


def final_answer_text(response: str) -> str:
    """The part of a response after its last `</think>`; the whole response if there is none."""
    return response.rsplit(THINK_END, 1)[-1]


_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)\s*")


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`) in text.

    Braces are matched, so `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`. A box cut off by the
    token limit is skipped in favour of an earlier complete one. None when there is no box.
    """
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        content = _command_argument(text, match.end())
        if content is not None:
            return content.strip()
    return None


def _command_argument(text: str, start: int) -> str | None:
    if start >= len(text):
        return None
    if text[start] != "{":
        unbraced = re.match(r"[^\s$]+", text[start:])  # `\boxed 5`: up to the next space or `$`
        return unbraced.group(0) if unbraced else None
    depth = 0
    for position in range(start, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : position]
    return None  # unbalanced: the response stopped inside the box


# ----------------------------------------------------------------------------------------------
# math-verify grader


def grade_math_verify(response: str, ground_truth: str, timeout_s: int = MATH_VERIFY_TIMEOUT_S) -> GradeResult:
    """math-verify's verdict on the response's final answer (its last box, else the text after `</think>`).

    timeout_s bounds each parse and each comparison (whole seconds: math-verify uses signal.alarm).
    """
    if not isinstance(timeout_s, int) or timeout_s < 1:
        raise ValueError(f"timeout_s={timeout_s!r}: must be a whole number of seconds >= 1 (signal.alarm)")
    answer_text = final_answer_text(response)
    boxed = last_boxed(answer_text)
    prediction = "\\boxed{" + boxed + "}" if boxed is not None else answer_text
    if not prediction.strip():
        return GradeResult(NO_ANSWER, detail="nothing after </think>")
    if threading.current_thread() is threading.main_thread():
        return math_verify_compare(ground_truth, prediction, timeout_s)
    return _math_verify_worker.compare(ground_truth, prediction, timeout_s)


def math_verify_compare(ground_truth: str, prediction: str, timeout_s: int) -> GradeResult:
    """Parse both sides with math-verify and compare every pair of parses.

    Runs math-verify with its SIGALRM timeouts, so it must run on the main thread (the child
    worker calls it on its own main thread). Errors and timeouts become GRADER_ERROR.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException  # a BaseException: `except Exception` misses it

    try:
        gold = parse(
            "\\boxed{" + ground_truth + "}", [LatexExtractionConfig()], parsing_timeout=timeout_s, raise_on_error=True
        )
        predicted = parse(
            prediction,
            [LatexExtractionConfig(), ExprExtractionConfig()],
            parsing_timeout=timeout_s,
            raise_on_error=True,
        )
    except (Exception, TimeoutException) as error:
        return GradeResult(GRADER_ERROR, detail=f"math-verify parse: {type(error).__name__}: {error}"[:500])
    if not gold:
        return GradeResult(GRADER_ERROR, detail=f"math-verify cannot parse the ground truth {ground_truth!r}")
    if not predicted:
        return GradeResult(NO_ANSWER, detail="math-verify found no answer in the response")

    extracted = str(predicted[-1])  # parse returns [sympy value, the text it came from]
    errors = []
    for gold_value, predicted_value in product(gold, predicted):
        try:
            if verify(gold_value, predicted_value, timeout_seconds=timeout_s, raise_on_error=True):
                return GradeResult(CORRECT, extracted)
        except (Exception, TimeoutException) as error:
            errors.append(f"{type(error).__name__}: {error}")
    if errors:
        return GradeResult(GRADER_ERROR, extracted, ("math-verify compare: " + "; ".join(errors))[:500])
    return GradeResult(INCORRECT, extracted)


class _MathVerifyWorker:
    """A child process that runs `math_verify_compare` on its main thread, for callers on other threads.

    One per process, started on first use, shared by all threads (one request at a time: sympy
    holds the GIL anyway). A reply later than the deadline kills the child; the next call starts
    a new one.
    """

    STARTUP_TIMEOUT_S = 120
    DEADLINE_PER_TIMEOUT = 8  # two parses and up to four comparisons, each bounded by timeout_s, plus slack

    def __init__(self):
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._owner_pid = 0

    def compare(self, ground_truth: str, prediction: str, timeout_s: int) -> GradeResult:
        request = json.dumps({"ground_truth": ground_truth, "prediction": prediction, "timeout_s": timeout_s})
        with self._lock:
            try:
                process = self._running_process()
                process.stdin.write(request + "\n")
                process.stdin.flush()
                return GradeResult(**json.loads(self._read_line(process, self.DEADLINE_PER_TIMEOUT * timeout_s)))
            except (OSError, TimeoutError, EOFError, ValueError) as error:
                self._stop()
                return GradeResult(GRADER_ERROR, detail=f"math-verify worker: {type(error).__name__}: {error}")

    def _running_process(self) -> subprocess.Popen:
        # After a fork the handle belongs to the parent process: start our own child.
        if self._process is not None and self._owner_pid == os.getpid() and self._process.poll() is None:
            return self._process
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "exgrpo_verl.evaluation.graders", "--serve-math-verify"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._owner_pid = os.getpid()
        self._read_line(self._process, self.STARTUP_TIMEOUT_S)  # the child's "ready" line
        return self._process

    @staticmethod
    def _read_line(process: subprocess.Popen, deadline_s: float) -> str:
        ready, _, _ = select.select([process.stdout], [], [], deadline_s)
        if not ready:
            raise TimeoutError(f"no reply within {deadline_s} s")
        line = process.stdout.readline()
        if not line:
            raise EOFError(f"the worker exited with code {process.wait()}")
        return line

    def _stop(self) -> None:
        if self._process is not None and self._owner_pid == os.getpid():
            self._process.kill()
            self._process.wait()
        self._process = None

    def close(self) -> None:
        with self._lock:
            self._stop()


_math_verify_worker = _MathVerifyWorker()
atexit.register(_math_verify_worker.close)


def _serve_math_verify() -> None:
    """The child's loop: one JSON request per stdin line, one JSON GradeResult per stdout line."""
    import math_verify  # noqa: F401  (import before announcing readiness: it takes a second or two)

    protocol = sys.stdout
    sys.stdout = sys.stderr  # stray prints from libraries must not corrupt the protocol
    protocol.write('{"ready": true}\n')
    protocol.flush()
    for line in sys.stdin:
        request = json.loads(line)
        result = math_verify_compare(request["ground_truth"], request["prediction"], request["timeout_s"])
        protocol.write(json.dumps(asdict(result)) + "\n")
        protocol.flush()


# ----------------------------------------------------------------------------------------------
# Boxed-answer string grader


def grade_boxed(response: str, ground_truth: str, rel_tol: float = NUMERIC_REL_TOL) -> GradeResult:
    """Exact match of the normalised last box, or numeric equality within rel_tol."""
    boxed = last_boxed(final_answer_text(response))
    if boxed is None:
        return GradeResult(NO_ANSWER, detail="no \\boxed{} answer after </think>")
    predicted, expected = normalize_answer(boxed), normalize_answer(ground_truth)
    if not predicted:
        return GradeResult(NO_ANSWER, boxed, "the \\boxed{} is empty")
    if not expected:
        return GradeResult(GRADER_ERROR, boxed, f"the ground truth {ground_truth!r} is empty after normalisation")
    correct = predicted == expected or numbers_equal(predicted, expected, rel_tol)
    return GradeResult(CORRECT if correct else INCORRECT, boxed)


_TEXT_COMMANDS = re.compile(r"\\(?:text|textbf|textrm|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_TRAILING_UNIT = re.compile(r"\s*\\(?:text|mbox|mathrm)\{\s+[^{}]*\}(?:\^\{?\d\}?)?\s*$")  # "5 \text{ cm}^2"
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\degree|°")
_LATEX_SPACING = re.compile(r"\\[,;:! ]|\\q?quad|~|\\displaystyle")
_ASSIGNMENT = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?(?:=|\\in)(.+)$")  # "x=5", "x\in[-2,7]"
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def normalize_answer(text: str) -> str:
    """A canonical string for a short LaTeX answer, so that equivalent spellings compare equal.

    Drops `$`, units written as `\\text{ unit}`, `\\text{}` wrappers, `\\left`/`\\right`,
    degree marks, LaTeX spacing, whitespace, trailing periods, a leading `x=` / `x\\in`, and
    thousands separators; writes `\\dfrac`/`\\tfrac` as `\\frac` and braces single-character
    `\\frac`/`\\sqrt` arguments (`\\frac12` -> `\\frac{1}{2}`); `(C)` -> `C`.
    """
    s = text.strip().replace("\\$", "").replace("$", "")
    without_unit = _TRAILING_UNIT.sub("", s)
    s = without_unit if without_unit.strip() else s
    while _TEXT_COMMANDS.search(s):
        s = _TEXT_COMMANDS.sub(r"\1", s)
    s = re.sub(r"\\(?:left|right)\b", "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = _DEGREES.sub("", s)
    s = _LATEX_SPACING.sub("", s)
    s = _brace_single_character_arguments(s)
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"degrees?$", "", s).rstrip(".")
    assignment = _ASSIGNMENT.match(s)
    if assignment:
        s = assignment.group(1)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return re.sub(r"^\(([A-Za-z])\)$", r"\1", s)


def _brace_single_character_arguments(s: str) -> str:
    # Runs before whitespace is removed, where `\frac 5 9` still shows its argument boundaries.
    s = re.sub(r"\\(frac|sqrt)(?:\s+([0-9A-Za-z])|(\d))", lambda m: f"\\{m.group(1)}{{{m.group(2) or m.group(3)}}}", s)
    return re.sub(r"(\\frac\{[^{}]*\})\s*([0-9A-Za-z])", r"\1{\2}", s)


_FRACTION = re.compile(r"(-?)\\frac\{([^{}]+)\}\{([^{}]+)\}")
_MIXED_NUMBER = re.compile(r"(\d+)\\frac\{(\d+)\}\{(\d+)\}")  # 1\frac{4}{5} is 9/5 in competition answers
_TIMES_TEN = re.compile(r"(.+?)(?:\\times|\\cdot)10\^\{?(-?\d+)\}?")


def parse_number(s: str) -> Fraction | None:
    """The exact value of a normalised numeric answer: 12, -0.5, .35, 4.5e33, 3\\times10^{8},
    3/4, \\frac{3}{4}, 1\\frac{4}{5}, 62.5%. None when s is not a plain number."""
    s = s.removesuffix("\\%").removesuffix("%")
    try:
        if mixed := _MIXED_NUMBER.fullmatch(s):
            return int(mixed.group(1)) + Fraction(int(mixed.group(2)), int(mixed.group(3)))
        if fraction := _FRACTION.fullmatch(s):
            value = Fraction(fraction.group(2)) / Fraction(fraction.group(3))
            return -value if fraction.group(1) else value
        if scientific := _TIMES_TEN.fullmatch(s):
            return Fraction(scientific.group(1)) * Fraction(10) ** int(scientific.group(2))
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_equal(a: str, b: str, rel_tol: float = NUMERIC_REL_TOL) -> bool:
    """True when both strings read as numbers that agree within rel_tol (exactly, for 0)."""
    x, y = parse_number(a), parse_number(b)
    if x is None or y is None:
        return False
    return x == y or math.isclose(float(x), float(y), rel_tol=rel_tol)


# ----------------------------------------------------------------------------------------------
# Multiple-choice grader


_LABEL = {"letter": "[A-J]", "digit": "[1-9]"}


def grade_choice(response: str, ground_truth: str) -> GradeResult:
    """Correct when the option label the response chose equals the ground-truth label."""
    expected = choice_label(ground_truth)
    if expected is None:
        detail = f"the ground truth {ground_truth!r} is not an option label (A-J or 1-9)"
        return GradeResult(GRADER_ERROR, detail=detail)
    chosen = extract_choice(response, "digit" if expected.isdigit() else "letter")
    if chosen is None:
        return GradeResult(NO_ANSWER, detail="no option label found in the answer")
    return GradeResult(CORRECT if chosen == expected else INCORRECT, chosen)


def choice_label(ground_truth: str) -> str | None:
    """'C', '(C)', '\\text{C}', ' c ' -> 'C'; '2' -> '2'; anything else -> None."""
    label = normalize_answer(ground_truth).upper()
    return label if re.fullmatch(r"[A-J]|[1-9]", label) else None


def extract_choice(response: str, kind: str = "letter") -> str | None:
    """The option label a response chose, read from (in this order of trust) its last box,
    its last "answer is (C)" / "answer: C" phrase, or a last line that is just a label.
    `kind` is "letter" (A-J) or "digit" (1-9)."""
    label = _LABEL[kind]
    text = final_answer_text(response)
    boxed = last_boxed(text)
    if boxed is not None:
        in_box = re.match(rf"\(?({label})\)?(?![A-Za-z0-9])", normalize_answer(boxed))
        if in_box:
            return in_box.group(1)
    # "answer is (C)", "Answer: C", "correct option is C", "answer: option C", "**Answer: (A)**"
    keyword = r"(?i:answer|option|choice)\s*(?:(?i:is)\s*)?[:\-]?\s*(?:(?i:option|choice)\s*)?"
    phrases = re.findall(rf"{keyword}\**\s*\(?({label})\)?(?![A-Za-z0-9])", text)
    if phrases:
        return phrases[-1]
    lines = [line.strip().strip("*").strip() for line in text.strip().splitlines() if line.strip()]
    if lines:
        last_line = re.fullmatch(rf"\(?({label})\)?(?:[.):](?:\s.*)?)?", lines[-1])
        if last_line:
            return last_line.group(1)
    return None


# ----------------------------------------------------------------------------------------------
# Dispatch and the verl reward function


GRADERS = {"math_verify": grade_math_verify, "boxed": grade_boxed, "choice": grade_choice}

# Data sources (or the last part of an HF path) that are multiple choice, matched as prefixes.
MULTIPLE_CHOICE_DATA_SOURCES = ("arc_c", "arc-c", "ai2_arc", "gpqa", "mmlu_pro", "mmlu-pro")


def is_multiple_choice(data_source: str) -> bool:
    return str(data_source).lower().rsplit("/", 1)[-1].startswith(MULTIPLE_CHOICE_DATA_SOURCES)


def grader_for(data_source: str) -> str:
    """The grader that scores a data source: "choice" for multiple choice, "math_verify" otherwise."""
    return "choice" if is_multiple_choice(data_source) else "math_verify"


def graders_for(data_source: str) -> tuple[str, ...]:
    """Every grader that applies to a data source (evaluation records all of them)."""
    return ("math_verify", "boxed", "choice") if is_multiple_choice(data_source) else ("math_verify", "boxed")


def grade(response: str, ground_truth: str, grader: str = "math_verify") -> GradeResult:
    """Grade one response with the named grader ("math_verify", "boxed" or "choice")."""
    if grader not in GRADERS:
        raise ValueError(f"grader={grader!r}: expected one of {sorted(GRADERS)}")
    for name, value in (("response", response), ("ground_truth", ground_truth)):
        if not isinstance(value, str):
            raise TypeError(f"grade: {name} must be a str, got {type(value).__name__}; decode token ids first")
    return GRADERS[grader](response, ground_truth)


_reward_errors: Counter = Counter()
_reward_errors_lock = threading.Lock()


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """verl reward function: 1.0 when the response's final answer is correct, else 0.0.

    Multiple-choice data sources (ARC-c, GPQA, MMLU-Pro) use the choice grader, all others
    math-verify. It never raises: a grader error or an exception scores 0.0, is counted per
    data source (see `reward_error_counts`), and is logged at WARNING on the 1st, 10th, 100th...
    occurrence. Use with
    `reward.custom_reward_function.path=<this file> reward.custom_reward_function.name=compute_score`.
    """
    try:
        result = grade(solution_str, ground_truth, grader_for(data_source))
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


if __name__ == "__main__":
    if sys.argv[1:] != ["--serve-math-verify"]:
        sys.exit("usage: python -m exgrpo_verl.evaluation.graders --serve-math-verify (started by the graders)")
    _serve_math_verify()
