"""Question sampling: accuracy buckets, their Gaussian weights, and the draw of one step's questions."""

from __future__ import annotations

import numpy as np

from .pool import QuestionPool


def bucket_of(num_correct: int, num_rollouts: int, group_size: int) -> int:
    """Bucket of a partly solved question: b = clip(floor(k K / n + 1/2), 1, K - 1).

    The accuracy k/n as the nearest success count out of K (halves round up), in exact integer
    arithmetic. The trainer passes whole groups, n = K (a replayed question's replayed member
    counts, GroupResult.replayed_correct), so b = k; the rounding serves partial groups only.
    """
    nearest = (2 * num_correct * group_size + num_rollouts) // (2 * num_rollouts)
    return min(max(nearest, 1), group_size - 1)


def gaussian_log_weights(buckets: np.ndarray, group_size: int, mu: float, sigma: float) -> np.ndarray:
    """Unnormalised log-weights of buckets: log w_b = -(b/K - mu)^2 / (2 sigma^2).

    w_b is the density N(b/K; mu, sigma) up to its constant 1/(sigma sqrt(2 pi)), which cancels
    once the weights are normalised. Kept in log space so that far buckets cannot all underflow.
    """
    accuracy = np.asarray(buckets, dtype=np.float64) / group_size
    return -((accuracy - mu) ** 2) / (2.0 * sigma**2)


def normalise(log_weights: np.ndarray) -> np.ndarray:
    """p_b = exp(log w_b - max log w) / sum_c exp(log w_c - max log w), i.e. w_b / sum_c w_c."""
    weights = np.exp(log_weights - log_weights.max())
    return weights / weights.sum()


def allocate_draws(rng: np.random.Generator, n: int, capacities: np.ndarray, log_weights: np.ndarray) -> np.ndarray:
    """How many questions to draw from each bucket; requires n <= sum(capacities).

    counts ~ Multinomial(n, p) with p = normalise(log_weights) over buckets with room. A bucket
    asked for more than it holds is filled, and the excess is drawn again, multinomially over
    the buckets that still have room with their weights renormalised, until all n are placed.
    Each round places at least one draw, so this ends after at most n rounds.
    """
    counts = np.zeros(len(capacities), dtype=np.int64)
    remaining = n
    while remaining > 0:
        room = capacities - counts
        open_buckets = np.flatnonzero(room > 0)
        drawn = rng.multinomial(remaining, normalise(log_weights[open_buckets]))
        placed = np.minimum(drawn, room[open_buckets])
        counts[open_buckets] += placed
        remaining -= int(placed.sum())
    return counts


def sample_questions(pool: QuestionPool, n: int, strategy: str, mu: float, sigma: float,
                     rng: np.random.Generator) -> list[int]:
    """min(n, pool size) distinct question ids.

    "gaussian": bucket counts from `allocate_draws` with Gaussian bucket weights over the
    non-empty buckets, then uniform without replacement inside each bucket.
    "uniform": uniform without replacement over the whole pool.
    """
    n = min(n, len(pool))
    if n == 0:
        return []
    buckets = np.arange(1, pool.group_size)
    if strategy == "uniform":
        everyone = [qid for b in buckets for qid in pool.members(b)]
        return [everyone[i] for i in rng.choice(len(everyone), size=n, replace=False)]
    sizes = pool.sizes()
    non_empty = sizes > 0
    counts = allocate_draws(rng, n, sizes[non_empty],
                            gaussian_log_weights(buckets[non_empty], pool.group_size, mu, sigma))
    chosen = []
    for bucket, count in zip(buckets[non_empty], counts):
        members = pool.members(int(bucket))
        chosen.extend(members[i] for i in rng.choice(len(members), size=int(count), replace=False))
    return chosen
