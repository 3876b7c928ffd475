"""Value checks shared by every settings section: `exgrpo:`, `exgrpo.experience` and the CPU runtime's.

Each `*_problem` returns None, or one line naming the key, the value and what is allowed (and,
given a reason, the fix as a hydra override); `check_*` raise that line as ValueError. Sections that
gather every problem before raising (the CPU checks) use the first form, dataclasses the second.
No imports: the framework-free experience package uses it too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence


def real_problem(key: str, value, allowed: str, is_ok: Callable[[float], bool] = math.isfinite) -> str | None:
    """A real number (int or float, not bool) for which is_ok holds; `allowed` says which in words."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not is_ok(value):
        return f"{key}={value!r}: must be {allowed}"
    return None


def int_problem(key: str, value, minimum: int) -> str | None:
    """An integer (not bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return f"{key}={value!r}: must be an integer >= {minimum}"
    return None


def choice_problem(key: str, value, choices: Sequence, reason: str | None = None) -> str | None:
    """One of `choices`. With a reason, the message gives it and the fix `set key=choices[0]`."""
    if value in choices:
        return None
    if reason is None:
        return f"{key}={value!r}: must be one of {list(choices)}"
    return f"{key}={value}: {reason}; set {key}={choices[0]}"


def bool_problem(key: str, value) -> str | None:
    return None if isinstance(value, bool) else f"{key}={value!r}: must be true or false"


def raise_problems(problems: Iterable[str | None], heading: str, error: type[ValueError] = ValueError) -> None:
    """Raise `error` listing every problem under `heading`; return when there is none."""
    problems = [p for p in problems if p]
    if problems:
        raise error(heading + "\n- " + "\n- ".join(problems))


def _raise(problem: str | None) -> None:
    if problem:
        raise ValueError(problem)


def check_real(key: str, value, allowed: str, is_ok: Callable[[float], bool] = math.isfinite) -> None:
    _raise(real_problem(key, value, allowed, is_ok))


def check_int(key: str, value, minimum: int) -> None:
    _raise(int_problem(key, value, minimum))


def check_choice(key: str, value, choices: Sequence) -> None:
    _raise(choice_problem(key, value, choices))


def check_bool(key: str, value) -> None:
    _raise(bool_problem(key, value))
