"""One question group's rollout results, as the trainer hands them to the buffer, and their checks.

`check_group` validates a `GroupResult` and extracts the rollouts that may be stored, without
changing anything, so that the buffer can validate a whole step before it applies any of it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

INT32_MIN, INT32_MAX = np.iinfo(np.int32).min, np.iinfo(np.int32).max


@dataclass
class GroupResult:
    """The rollouts of one question in one step.

    question_id: the dataset row's id (extra_info.index).
    response_ids: one 1-D integer array of token ids per rollout (values must fit int32).
    log_probs: one 1-D float array per rollout, the behaviour policy's per-token log-probs.
    rewards: shape (n,); a rollout is correct iff its reward == 1.
    ended_with_eos: shape (n,) bool; False means the response was truncated.
    entropies: optional, one 1-D float array per rollout (per-token entropy at collection).
    prompt_ids: optional 1-D integer array, the prompt's token ids.
    payload: optional JSON-serialisable dict the caller needs to rebuild the prompt row.

    replayed_correct: members of the group replayed from the buffer (0, or 1 for an experience
        question). They are not passed as rollouts (they are stored already) but count for the
        accuracy as correct members: a question is graded on the K members it trained with, so
        k fresh successes of K-1 plus the replayed one give k+1 of K (the release's count, and
        the only rule under which every bucket 1..K-1 is reachable after a replay:
        docs/experience.md).
    """

    question_id: int
    response_ids: list
    log_probs: list
    rewards: np.ndarray
    ended_with_eos: np.ndarray
    entropies: list | None = None
    prompt_ids: np.ndarray | None = None
    payload: dict | None = None
    replayed_correct: int = 0


class StorableRollout(NamedTuple):
    """A correct, complete rollout, in the dtypes the buffer stores. Whether its log-probs are
    finite is checked by the buffer on its stored copy, which is still in the cache (a pass
    less over the input)."""

    token_ids: np.ndarray  # int32
    log_probs: np.ndarray  # float32
    entropy_mean: float | None  # token-mean entropy, if entropies were given
    reward: float = 1.0


@dataclass
class CheckedGroup:
    question_id: int
    num_correct: int  # k, the replayed members included
    num_rollouts: int  # n, the replayed members included
    storable: list[StorableRollout]
    prompt_ids: np.ndarray | None  # int32, a private copy
    payload: dict | None  # a private copy


def check_group(group: GroupResult, group_size: int, require_entropies: bool, store_failures: bool = False) -> CheckedGroup:
    """Validate one group (raise ValueError naming the field) and pick its storable rollouts.

    Every array's type, shape and dtype is checked; values are examined (int32 range, finite
    entropy mean) only for the rollouts that could be stored: ended with EOS, non-empty, and
    correct (reward 1) unless `store_failures`, which keeps the failed ones too, with their rewards.
    """
    name = f"GroupResult(question_id={group.question_id!r})"
    qid = group.question_id
    if isinstance(qid, (bool, np.bool_)) or not isinstance(qid, (int, np.integer)):
        raise ValueError(f"{name}.question_id: must be an int, got {type(qid).__name__}")
    rewards = _vector(group.rewards, f"{name}.rewards", kinds="biuf")
    n = rewards.shape[0]
    replayed = group.replayed_correct
    if isinstance(replayed, (bool, np.bool_)) or not isinstance(replayed, (int, np.integer)) or replayed < 0:
        raise ValueError(f"{name}.replayed_correct: must be an int >= 0, got {replayed!r}")
    if not 1 <= n <= group_size - replayed:
        raise ValueError(f"{name}.rewards: has {n} rollouts besides {replayed} replayed, expected "
                         f"1..group_size - replayed = {group_size - replayed}")
    if not np.isfinite(rewards).all():
        raise ValueError(f"{name}.rewards: contains non-finite values {rewards.tolist()}")
    eos = _vector(group.ended_with_eos, f"{name}.ended_with_eos", kinds="b")
    if eos.shape[0] != n:
        raise ValueError(f"{name}.ended_with_eos: length {eos.shape[0]} != {n} rewards")
    response_ids = _array_list(group.response_ids, f"{name}.response_ids", n, kinds="iu")
    lengths = [ids.shape[0] for ids in response_ids]
    log_probs = _array_list(group.log_probs, f"{name}.log_probs", n, kinds="f", lengths=lengths)
    entropies = None
    if group.entropies is not None:
        entropies = _array_list(group.entropies, f"{name}.entropies", n, kinds="f", lengths=lengths)
    elif require_entropies:
        raise ValueError(f"{name}.entropies: required when selection_metric='stored_entropy'")

    correct = rewards == 1
    storable = []
    kept = (correct | store_failures) & eos & (np.array(lengths) > 0)
    for i in np.flatnonzero(kept).tolist():
        entropy_mean = None
        if entropies is not None:
            entropy_mean = float(np.add.reduce(entropies[i])) / lengths[i]  # pairwise sum, in the input's dtype
            if not math.isfinite(entropy_mean):  # a NaN or inf entropy (or a float32 sum past 3e38)
                continue
        token_ids = _int32(response_ids[i], name, f".response_ids[{i}]")
        storable.append(StorableRollout(token_ids, log_probs[i].astype(np.float32, copy=False), entropy_mean, float(rewards[i])))

    prompt_ids = None
    if group.prompt_ids is not None:
        prompt_ids = _int32(_vector(group.prompt_ids, f"{name}.prompt_ids", kinds="iu"), name, ".prompt_ids").copy()
    payload = None if group.payload is None else _copy_payload(group.payload, f"{name}.payload")
    return CheckedGroup(int(qid), int(correct.sum()) + int(replayed), n + int(replayed), storable, prompt_ids, payload)


def _vector(values, name, kinds):
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name}: must be 1-D, got shape {array.shape}")
    if array.dtype.kind not in kinds:
        raise ValueError(f"{name}: dtype {array.dtype} not allowed (allowed kinds: {kinds!r})")
    return array


def _array_list(values, name, n, kinds, lengths=None):
    """A list of n 1-D numpy arrays of the given dtype kinds (and lengths)."""
    if not isinstance(values, (list, tuple)) or len(values) != n:
        got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise ValueError(f"{name}: must be a list of {n} arrays (one per reward), got {got}")
    for i, value in enumerate(values):
        if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype.kind not in kinds:
            raise ValueError(f"{name}[{i}]: must be a 1-D numpy array of dtype kind {kinds!r}, got "
                             f"{type(value).__name__} {getattr(value, 'dtype', '')} {getattr(value, 'shape', '')}")
        if lengths is not None and value.shape[0] != lengths[i]:
            raise ValueError(f"{name}[{i}]: length {value.shape[0]} != response length {lengths[i]}")
    return values


def _int32(ids: np.ndarray, group_name: str, field: str) -> np.ndarray:
    if ids.dtype != np.int32 and ids.size and (ids.min() < INT32_MIN or ids.max() > INT32_MAX):
        raise ValueError(f"{group_name}{field}: token ids outside the int32 range")
    return ids.astype(np.int32, copy=False)


def _copy_payload(payload, name):
    """A private copy of the payload; it is saved as JSON, so it must survive a JSON round trip."""
    if not isinstance(payload, dict):
        raise ValueError(f"{name}: must be a dict, got {type(payload).__name__}")
    try:
        copy = json.loads(json.dumps(payload, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: not JSON-serialisable ({error})") from None
    if copy != payload:
        raise ValueError(f"{name}: does not survive a JSON round trip (use str keys, lists not tuples)")
    return copy
