"""How a step's batch is mixed, and when replay starts: small pure functions.

Notation: B questions per step, K rollouts per question, rho the replay ratio.
"""

from __future__ import annotations

import numpy as np


def experience_question_count(pool_size: int, replay_ratio: float, batch_size: int) -> int:
    """Experience questions in a step of B questions:

        n_exp = min(pool size, round(rho * B))

    The other B - n_exp questions are fresh, so the batch stays B questions even while the
    pool is small. Each experience question gets K - 1 fresh rollouts plus one replayed
    trajectory, each fresh question K rollouts."""
    return int(min(pool_size, round(replay_ratio * batch_size)))


def solve_rate(rewards: np.ndarray) -> float:
    """Fraction of a step's fresh rollouts with reward 1 (0 for an empty step)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    return float((rewards == 1).mean()) if rewards.size else 0.0


def replay_starts(already_started: bool, step_solve_rate: float, threshold: float, replay_ratio: float) -> bool:
    """Delayed start, one-way: replay is on once any step's solve rate exceeded the threshold
    (release: 0.35). With rho = 0 it never starts."""
    return replay_ratio > 0 and (already_started or step_solve_rate > threshold)


def stores_successes(was_started: bool, started: bool, collect_during_warmup: bool, from_switch_step: bool) -> bool:
    """Whether a step's successes go into the buffer:

        store = collect_during_warmup or (started if from_switch_step else was_started)

    `started` is the phase after this step's solve rate was seen, `was_started` the one before:
    ours stores the step whose solve rate switched replay on, the release from the next step."""
    return collect_during_warmup or (started if from_switch_step else was_started)
