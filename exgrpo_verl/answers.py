"""Finding the final answer in a text, and writing short answers canonically.

Pure string functions with no dependencies, shared by data preparation (the answer of a worked
solution), the graders and the training reward:

- `final_answer_text`: the part of a response after its last `</think>`.
- `last_boxed`: the content of the last complete `\\boxed{...}`.
- `normalize_answer`, `parse_number`, `numbers_equal`: equivalent spellings of a short LaTeX
  answer compare equal (`\\dfrac12` == `\\frac{1}{2}`, `10,\\!080` == `10080`, `90^\\circ` == `90`).
- `choice_label`, `boxed_choice`, `extract_choice`: the option label (A-J, or 1-9) of a
  multiple-choice answer, from the box only (strict) or also from prose (lenient).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

THINK_END = "</think>"
NUMERIC_REL_TOL = 1e-6


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
# Canonical spelling of a short answer


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
# Multiple-choice labels


_LABEL = {"letter": "[A-J]", "digit": "[1-9]"}


def choice_label(ground_truth: str) -> str | None:
    """'C', '(C)', '\\text{C}', ' c ' -> 'C'; '2' -> '2'; anything else -> None."""
    label = normalize_answer(ground_truth).upper()
    return label if re.fullmatch(r"[A-J]|[1-9]", label) else None


def boxed_choice(response: str, kind: str = "letter") -> str | None:
    """The option label in the last box after `</think>`: `\\boxed{C}`, `\\boxed{(C)}`,
    `\\boxed{\\text{C}}`, `\\boxed{C. the option's text}`. `kind`: "letter" (A-J) or "digit" (1-9)."""
    boxed = last_boxed(final_answer_text(response))
    if boxed is None:
        return None
    in_box = re.match(rf"\(?({_LABEL[kind]})\)?(?![A-Za-z0-9])", normalize_answer(boxed))
    return in_box.group(1) if in_box else None


def extract_choice(response: str, kind: str = "letter") -> str | None:
    """The option label a response chose, read leniently from (in this order of trust) its last
    box, its last "answer is (C)" / "answer: C" phrase, or a last line that is just a label."""
    label = _LABEL[kind]
    if (in_box := boxed_choice(response, kind)) is not None:
        return in_box
    text = final_answer_text(response)
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
