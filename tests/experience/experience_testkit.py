"""Builders and checks shared by the experience-manager tests."""

from __future__ import annotations

from contextlib import contextmanager
from unittest import mock

import numpy as np

from exgrpo_verl.experience import GroupResult, arena
from exgrpo_verl.experience.persistence import ArrayChunks


def rollout(tokens, logp=None):
    """(int32 token ids, float32 log-probs) for a list of token ids; log-probs default to -0.1 * position."""
    ids = np.asarray(tokens, dtype=np.int32)
    if logp is None:
        logp = -0.1 * np.arange(1, len(ids) + 1)
    return ids, np.asarray(logp, dtype=np.float32)


def group(qid, rewards, tokens=None, eos=None, logps=None, **extra) -> GroupResult:
    """A GroupResult; rollout i has tokens `tokens[i]` (default: [qid, i, i]) and ends with EOS unless told."""
    n = len(rewards)
    tokens = tokens if tokens is not None else [[qid, i, i] for i in range(n)]
    logps = logps if logps is not None else [None] * n
    pairs = [rollout(t, lp) for t, lp in zip(tokens, logps)]
    return GroupResult(
        question_id=qid,
        response_ids=[ids for ids, _ in pairs],
        log_probs=[lp for _, lp in pairs],
        rewards=np.asarray(rewards, dtype=np.float64),
        ended_with_eos=np.ones(n, dtype=bool) if eos is None else np.asarray(eos, dtype=bool),
        **extra,
    )


def partial_group(qid, group_size, num_correct, tag=0, **extra) -> GroupResult:
    """K rollouts, the first `num_correct` correct, with tokens unique to (qid, tag, rollout)."""
    rewards = [1.0] * num_correct + [0.0] * (group_size - num_correct)
    tokens = [[qid, tag, i, 7] for i in range(group_size)]
    return group(qid, rewards, tokens=tokens, **extra)


def exported(buf) -> tuple[dict[str, np.ndarray], dict]:
    """The buffer's saved state, with the streamed arrays materialised (for exact comparisons)."""
    arrays, state = buf._export_state()
    arrays = {name: np.concatenate([np.asarray(p) for p in value.pieces] or [np.zeros(0, value.dtype)])
              .astype(value.dtype) if isinstance(value, ArrayChunks) else value for name, value in arrays.items()}
    return arrays, state


def assert_same_state(a, b) -> None:
    arrays_a, state_a = exported(a)
    arrays_b, state_b = exported(b)
    assert state_a == state_b
    assert sorted(arrays_a) == sorted(arrays_b)
    for name in arrays_a:
        assert arrays_a[name].dtype == arrays_b[name].dtype, name
        assert np.array_equal(arrays_a[name], arrays_b[name], equal_nan=arrays_a[name].dtype.kind == "f"), name


@contextmanager
def small_segments(tokens: int = 16):
    """Arena segments of a few tokens, so that small tests exercise segment freeing and compaction."""
    with mock.patch.object(arena, "SEGMENT_TOKENS", tokens):
        yield
