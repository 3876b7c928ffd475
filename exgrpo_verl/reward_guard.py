"""The reward guard: every reward call has a time limit, and every failure is counted.

A reward function that raises, hangs, or returns something that is not a finite number must
neither stall the run nor silently thin it (verl drops a whole question's group when one of
its reward calls raises, and waits forever on one that hangs). The guard runs the reward function in
child processes it can kill (`exgrpo_verl.reward_sandbox`) and turns each failed call
into reward 0 with a warning naming the question, flags the sample, and the trainer sums the
flags of a step into `exgrpo/reward_errors` and `exgrpo/reward_timeouts`; when more than
`max_failed_fraction` of a step's samples failed, the run stops before the update instead of
training on noise.

This module is framework-free; `exgrpo_verl.verl_adapters.reward_manager` applies it inside
verl's reward loop, the trainer calls `step_reward_failures` on each step's rows.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

ERROR_FLAG = "exgrpo_reward_error"  # per-sample keys of verl's reward_extra_info
TIMEOUT_FLAG = "exgrpo_reward_timeout"


class RewardFailureError(RuntimeError):
    """Too many of a step's reward calls failed; the message says how many and what to do."""


@dataclass(frozen=True)
class RewardGuardConfig:
    """`exgrpo.reward`.

    manager: the verl reward manager the guard wraps (a name in verl's reward-manager
        registry: naive, dapo, ...); set it here, not in reward.reward_manager.
    timeout_s: the limit on one sample's reward call. math-verify bounds its own parsing and
        verification at a few seconds each, so 30 s only catches real hangs.
    max_failed_fraction: the share of a step's samples whose reward call may fail (raise, time
        out, return a non-number) before the run stops; 0 stops at the first failure.
    processes: the child processes per reward worker that run reward.custom_reward_function
        (exgrpo_verl.reward_sandbox); the time limit runs from when one of them takes a call.
    """

    manager: str = "naive"
    timeout_s: float = 30.0
    max_failed_fraction: float = 0.1
    processes: int = 4

    def __post_init__(self):
        if not isinstance(self.manager, str) or not self.manager:
            raise ValueError(f"exgrpo.reward.manager={self.manager!r}: must name a verl reward manager (e.g. naive)")
        if not _is_number(self.timeout_s) or not self.timeout_s > 0:
            raise ValueError(f"exgrpo.reward.timeout_s={self.timeout_s!r}: must be a number of seconds > 0")
        if not _is_number(self.max_failed_fraction) or not 0 <= self.max_failed_fraction <= 1:
            raise ValueError(f"exgrpo.reward.max_failed_fraction={self.max_failed_fraction!r}: must be a number in [0, 1]")
        if isinstance(self.processes, bool) or not isinstance(self.processes, int) or self.processes < 1:
            raise ValueError(f"exgrpo.reward.processes={self.processes!r}: must be an integer >= 1")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "RewardGuardConfig":
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        if set(values) - known:
            raise ValueError(f"exgrpo.reward: unknown keys {sorted(set(values) - known)}; allowed: {sorted(known)}")
        return cls(**values)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def checked_score(score) -> float:
    """The reward as a float; ValueError for anything but a finite real number (bools count as 0/1)."""
    if isinstance(score, bool):
        return float(score)
    try:
        value = float(score)
    except (TypeError, ValueError):
        raise ValueError(f"reward is {type(score).__name__} {str(score)[:40]!r}, not a number") from None
    if isinstance(score, str) or not math.isfinite(value):
        raise ValueError(f"reward is {type(score).__name__} {str(score)[:40]!r}, not a finite number")
    return value


def sample_flags(failure: str | None) -> dict[str, int]:
    """The per-sample flags: failure is None (the call succeeded), "error" or "timeout"."""
    return {ERROR_FLAG: int(failure == "error"), TIMEOUT_FLAG: int(failure == "timeout")}


def step_reward_failures(reward_infos: list[dict], questions: list, max_failed_fraction: float) -> dict[str, float]:
    """Sum a step's per-sample failure flags into metrics; raise RewardFailureError when the
    failed share exceeds `max_failed_fraction`.

    reward_infos: each sample's reward_extra_info (samples the guard never saw count as fine);
    questions: each sample's question, for the error message."""
    errors = [bool(info.get(ERROR_FLAG)) for info in reward_infos]
    timeouts = [bool(info.get(TIMEOUT_FLAG)) for info in reward_infos]
    failed = [q for q, e, t in zip(questions, errors, timeouts) if e or t]
    if reward_infos and len(failed) / len(reward_infos) > max_failed_fraction:
        raise RewardFailureError(
            f"reward calls failed for {len(failed)} of {len(reward_infos)} samples this step "
            f"({sum(errors)} errors, {sum(timeouts)} timeouts; questions {sorted(set(map(str, failed)))[:8]}), more than "
            f"exgrpo.reward.max_failed_fraction={max_failed_fraction}: fix the reward function "
            "(reward.custom_reward_function; the reward workers' warnings give each failure) or raise the limit"
        )
    return {"exgrpo/reward_errors": float(sum(errors)), "exgrpo/reward_timeouts": float(sum(timeouts))}
