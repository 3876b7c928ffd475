"""Trajectory selection: candidates, argmin of caller scores, and the forward-pass-free metrics."""

import numpy as np
import pytest
from experience_testkit import group

from exgrpo_verl.experience import ExperienceBuffer, ExperienceConfig


def buffer_with_history(metric, max_candidates=3, entropies=True):
    """Question 1 holds 4 trajectories collected at steps 1..4, stored entropy means 0.4, 0.1, 0.3, 0.2."""
    buf = ExperienceBuffer(ExperienceConfig(group_size=2, selection_metric=metric, seed=0,
                                            max_candidates_per_question=max_candidates))
    for step, entropy in zip(range(1, 5), [0.4, 0.1, 0.3, 0.2]):
        extra = {"entropies": [np.full(2, entropy, np.float32), np.zeros(2, np.float32)]} if entropies else {}
        buf.update(step, [group(1, [1, 0], tokens=[[step, 0], [9, 9]], **extra)])
    return buf


def test_candidates_are_the_most_recent_ones_oldest_first():
    buf = buffer_with_history("entropy", max_candidates=3)
    assert [c.step for c in buf.candidates(1)] == [2, 3, 4]
    assert [c.response_ids.tolist() for c in buf.candidates(1)] == [[2, 0], [3, 0], [4, 0]]
    assert buf.candidates(12345) == []


@pytest.mark.parametrize("metric", ["entropy", "perplexity"])
def test_forward_pass_metrics_pick_the_argmin_of_the_callers_scores(metric):
    buf = buffer_with_history(metric)
    assert buf.config.needs_forward_pass
    assert buf.select(1, [0.9, 0.2, 0.5]).step == 3
    assert buf.select(1, np.array([0.1, 0.1, 0.5])).step == 2  # ties go to the oldest
    with pytest.raises(ValueError, match="needs one score per candidate"):
        buf.select(1)
    with pytest.raises(ValueError, match="expected \\(3,\\)"):
        buf.select(1, [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        buf.select(1, [0.1, np.nan, 0.2])


def test_stored_entropy_picks_the_lowest_entropy_among_candidates():
    buf = buffer_with_history("stored_entropy", max_candidates=4)
    assert not buf.config.needs_forward_pass
    traj = buf.select(1)
    assert traj.step == 2 and traj.entropy_mean == pytest.approx(0.1)
    buf3 = buffer_with_history("stored_entropy", max_candidates=2)  # candidates: steps 3 and 4
    assert buf3.select(1).step == 4


def test_stored_entropy_names_the_problem_when_a_candidate_has_none(tmp_path):
    # Collected without entropies, then resumed with selection_metric="stored_entropy".
    buffer_with_history("recent", entropies=False).save(tmp_path / "exp")
    buf = ExperienceBuffer.load(tmp_path / "exp", ExperienceConfig(group_size=2, selection_metric="stored_entropy"))
    with pytest.raises(ValueError, match="collected without entropies"):
        buf.select(1)


def test_recent_picks_the_newest_and_refuses_scores():
    buf = buffer_with_history("recent")
    assert buf.select(1).step == 4
    with pytest.raises(ValueError, match="pass scores=None"):
        buf.select(1, [1.0, 2.0, 3.0])


def test_random_is_seeded_and_reaches_every_candidate():
    a, b = buffer_with_history("random"), buffer_with_history("random")
    picks = [a.select(1).step for _ in range(60)]
    assert picks == [b.select(1).step for _ in range(60)]
    assert set(picks) == {2, 3, 4}


def test_select_without_trajectories_raises():
    buf = buffer_with_history("recent")
    with pytest.raises(ValueError, match="question 77 has no stored trajectories"):
        buf.select(77)
