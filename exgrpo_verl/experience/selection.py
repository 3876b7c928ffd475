"""Trajectory selection: which stored trajectory of a sampled question is replayed."""

from __future__ import annotations

import numpy as np

from .config import FORWARD_PASS_METRICS, SELECTION_METRICS


def select_index(metric: str, entropy_means: list[float | None], scores, rng: np.random.Generator) -> int:
    """Index of the candidate to replay; candidates are in collection order, oldest first.

    "entropy" / "entropy_sum" / "perplexity": argmin of `scores`, one per candidate, computed by the
        caller under the current policy (token-mean or summed entropy, or exp(-token-mean log-prob));
        lower = more confident.
    "stored_entropy": argmin of the token-mean entropy recorded when the trajectory was collected.
    "recent": the most recently collected candidate.
    "random": uniform over the candidates.
    Ties go to the oldest candidate (np.argmin returns the first minimum).
    """
    count = len(entropy_means)
    if metric in FORWARD_PASS_METRICS:
        if scores is None:
            raise ValueError(f"select: selection_metric={metric!r} needs one score per candidate, got None")
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (count,):
            raise ValueError(f"select: scores has shape {scores.shape}, expected ({count},), one per candidate")
        if not np.isfinite(scores).all():
            raise ValueError(f"select: scores must be finite, got {scores.tolist()}")
        return int(np.argmin(scores))
    if scores is not None:
        raise ValueError(f"select: selection_metric={metric!r} computes no forward pass; pass scores=None")
    if metric == "stored_entropy":
        if any(value is None for value in entropy_means):
            raise ValueError("select: selection_metric='stored_entropy' but a candidate was collected "
                             "without entropies; pass entropies to update() or choose another metric")
        return int(np.argmin(entropy_means))
    if metric == "recent":
        return count - 1
    if metric == "random":
        return int(rng.integers(count))
    raise ValueError(f"select: unknown selection_metric {metric!r}; known: {', '.join(SELECTION_METRICS)}")
