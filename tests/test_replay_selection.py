"""Filter, then score, then select: which stored trajectory an experience group replays.

The real experience buffer and the trainer's filter (`replayable_candidates`) on hand-built
steps: a candidate that cannot be replayed is never scored, and its question replays the best
of the others instead of losing its group.
"""

import numpy as np
import pytest

from exgrpo_verl.experience import ExperienceBuffer, ExperienceConfig, GroupResult
from exgrpo_verl.verl_adapters.rows import replayable_candidates

EOS = 2
PROMPT = np.array([5, 6, 7])


def _buffer_with(responses_and_entropies, metric="stored_entropy", prompt=PROMPT) -> ExperienceBuffer:
    """Question 1 with one correct rollout per (response, entropy) and one wrong one (K = 8)."""
    buffer = ExperienceBuffer(ExperienceConfig(group_size=8, selection_metric=metric))
    for step, (response, entropy) in enumerate(responses_and_entropies, start=1):
        responses = [np.array(response), np.array([9, EOS])]
        buffer.update(step, [GroupResult(
            question_id=1, response_ids=responses, log_probs=[np.full(len(r), -0.5) for r in responses],
            rewards=np.array([1.0, 0.0]), ended_with_eos=np.array([True, True]),
            entropies=[np.full(len(r), entropy) for r in responses], prompt_ids=prompt)])
    return buffer


def test_a_question_whose_preferred_trajectory_is_too_long_replays_its_next_best():
    # Lowest stored entropy first: the long one (0.1), then 0.3, then 0.7.
    buffer = _buffer_with([([3, 3, 3, 3, 3, 3, EOS], 0.1), ([4, EOS], 0.7), ([5, 5, EOS], 0.3)])
    assert buffer.select(1).response_ids.tolist() == [3, 3, 3, 3, 3, 3, EOS]  # preferred without a length limit

    usable = replayable_candidates(buffer, 1, buffer.candidates(1), PROMPT, max_response_length=4)
    assert [c.response_ids.tolist() for c in usable] == [[4, EOS], [5, 5, EOS]]
    chosen = buffer.select(1, among=[c.id for c in usable])
    assert chosen.response_ids.tolist() == [5, 5, EOS]


def test_scores_follow_the_usable_candidates_only():
    buffer = _buffer_with([([3, 3, 3, 3, EOS], 0.0), ([4, EOS], 0.0), ([5, 5, EOS], 0.0)], metric="entropy")
    usable = replayable_candidates(buffer, 1, buffer.candidates(1), PROMPT, max_response_length=3)
    assert len(usable) == 2 < len(buffer.candidates(1))
    chosen = buffer.select(1, scores=[0.9, 0.2], among=[c.id for c in usable])  # one score per usable candidate
    assert chosen.id == usable[1].id
    with pytest.raises(ValueError, match="one per candidate"):
        buffer.select(1, scores=[0.9, 0.2, 0.1], among=[c.id for c in usable])


def test_nothing_is_replayable_on_another_prompt_or_when_all_are_too_long():
    buffer = _buffer_with([([4, 4, EOS], 0.2), ([5, 5, 5, EOS], 0.1)])
    assert replayable_candidates(buffer, 1, buffer.candidates(1), np.array([5, 6, 8]), max_response_length=100) == []
    assert replayable_candidates(buffer, 1, buffer.candidates(1), PROMPT, max_response_length=2) == []
    assert replayable_candidates(buffer, 99, buffer.candidates(99), PROMPT, max_response_length=100) == []  # never seen


def test_select_refuses_ids_that_are_not_candidates():
    buffer = _buffer_with([([4, EOS], 0.2)])
    with pytest.raises(ValueError, match="not candidates of question 1"):
        buffer.select(1, among=[12345])
    with pytest.raises(ValueError, match="among those given"):
        buffer.select(1, among=[])


def test_pool_size_without_the_metrics():
    buffer = _buffer_with([([4, EOS], 0.2)])
    assert buffer.pool_size == buffer.metrics()["pool_size"] == 1


def test_trajectory_keys_round_trip_and_parse_like_verls_agent_loop_keys():
    import uuid

    from exgrpo_verl.verl_adapters.rows import trajectory_key, uid_of_key

    uid = str(uuid.uuid4())
    assert trajectory_key(uid, 7) == f"{uid}_7_0"  # verl's agent loop: f"{uid}_{session_id}_{i}"
    assert uid_of_key(trajectory_key(uid, 7, 2)) == uid
    assert uid_of_key("exgrposelectabc_12_0") == "exgrposelectabc"
